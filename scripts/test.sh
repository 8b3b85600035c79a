#!/usr/bin/env bash
# `npm test`: install what is missing, start Redis, PostgreSQL and Mosquitto
# when they are not running, build the dashboard when stale, type-check (the
# server and the dashboard), then run every test against them (the browser
# tests drive Debian's chromium, installed when absent).
cd "$(dirname "$0")/.."
. scripts/services.sh
. scripts/web.sh
ensure_deps
ensure_redis
ensure_postgres
ensure_mosquitto
[ -x /usr/bin/chromium ] || apt_install chromium
ensure_web
echo "services: redis :6379, postgresql ($DATABASE_URL), mosquitto :1883"
npx tsc -p tsconfig.json --noEmit
npx tsc -p web/tsconfig.json --noEmit
npx vitest run "$@"
