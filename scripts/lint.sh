#!/usr/bin/env bash
# `npm run lint`: typescript-eslint (promises, exhaustive switches, hooks) with type information, then
# dependency-cruiser (the layers of DESIGN.md). Both run from tools/lint, a package of their own with
# TypeScript 5.9: typescript-eslint needs TypeScript's classic compiler API, which the project's
# TypeScript 7 (the native compiler) does not have. Installed here when missing.
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_lint_deps
bin=tools/lint/node_modules/.bin
"$bin/eslint" --config tools/lint/eslint.config.js --max-warnings 0 "$@"
"$bin/depcruise" src test bench scripts web/src --config tools/lint/.dependency-cruiser.cjs
