#!/usr/bin/env bash
# `npm test`: install what is missing, start Redis, PostgreSQL and Mosquitto
# when they are not running, build the server and the dashboard when stale
# (the process tests run the build), type-check both, lint (scripts/lint.sh), then run every test
# against them (the browser tests drive Debian's chromium, installed when absent).
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_deps
ensure_redis
ensure_postgres
ensure_mosquitto
[ -x /usr/bin/chromium ] || apt_install chromium
ensure_build
ensure_web
echo "services: redis :6379, postgresql ($DATABASE_URL), mosquitto :1883"
npx tsc -p tsconfig.json --noEmit
npx tsc -p web/tsconfig.json --noEmit
bash scripts/lint.sh
npx vitest run "$@"
