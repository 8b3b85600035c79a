#!/usr/bin/env bash
# `npm start`: install what running needs and Redis if needed, build the
# server and the dashboard when missing or stale, then run the server with its
# embedded broker and database. Settings: see README.md.
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_runtime_deps
ensure_build
ensure_web
case "${REDIS_URL:-redis://127.0.0.1:6379}" in
  redis://127.0.0.1:6379*|redis://localhost:6379*) ensure_redis ;;
esac
exec node bin/iothub-ota.js serve
