#!/usr/bin/env bash
# `npm test`: install what is missing, start Redis, PostgreSQL and Mosquitto
# when they are not running, type-check, then run every test against them.
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_deps
ensure_redis
ensure_postgres
ensure_mosquitto
echo "services: redis :6379, postgresql ($DATABASE_URL), mosquitto :1883"
npx tsc -p tsconfig.json --noEmit
npx vitest run "$@"
