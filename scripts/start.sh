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
# glibc's allocator raises its mmap threshold by itself (up to 32 MB) as the process frees large blocks, and keeps
# what it frees below it: memory the server used once (PGlite's start, a device login's 16 MB scrypt) stays resident.
# A fixed threshold returns it (bench/memory.ts, one device: PostgreSQL 94 MB idle instead of 115, PGlite 170 after a
# restart instead of 229); ingest and queries measured unchanged. Other C libraries ignore it; one set by the caller is kept.
GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=131072}" exec node bin/iothub-ota.js serve
