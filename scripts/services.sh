# Sourced by start.sh and test.sh: make sure the local services are there,
# starting them if they are installed and installing them (Debian/Ubuntu) if not.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  echo "service on port $1 did not come up" >&2
  return 1
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Every dependency, development tools included (the tests, codegen, benchmarks).
ensure_deps() {
  if [ ! -x node_modules/.bin/vitest ]; then npm ci --no-audit --no-fund; fi
}

# The linters (npm run lint): a package of their own under tools/lint, with the TypeScript that
# typescript-eslint supports (the project's TypeScript 7 has no classic compiler API).
ensure_lint_deps() {
  if [ ! -x tools/lint/node_modules/.bin/eslint ] || [ ! -x tools/lint/node_modules/.bin/depcruise ]; then
    echo "installing the linters (npm ci --prefix tools/lint)"
    npm ci --prefix tools/lint --no-audit --no-fund --loglevel=error
  fi
}

# What running from a clone needs: the runtime and what builds it (TypeScript, Vite);
# npm's warnings about development tools stay off a newcomer's first screen.
ensure_runtime_deps() {
  if [ ! -x node_modules/.bin/tsc ] || [ ! -x node_modules/.bin/vite ]; then
    echo "installing dependencies (npm ci --omit=dev)"
    npm ci --omit=dev --no-audit --no-fund --loglevel=error
  fi
}

# The server's build (dist/), when it is missing or older than any source: bin/iothub-ota.js runs it.
ensure_build() {
  if [ ! -f dist/main.js ] || [ -n "$(find src -type f -newer dist/main.js -print -quit)" ]; then
    echo "building the server (dist)"
    npx tsc -p tsconfig.build.json
  fi
}

ensure_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null || apt_install redis-server
  as_root mkdir -p /var/lib/redis /var/log/redis
  port_open 6379 || as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379
}

ensure_postgres() {
  if ! port_open 5432; then
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
    wait_port 5432
  fi
  # Connect over the Unix socket as a superuser role named after this OS user (peer or trust auth).
  local me; me=$(id -un)
  if ! psql -h /var/run/postgresql -d postgres -U "$me" -Atc 'select 1' >/dev/null 2>&1; then
    as_root su postgres -c "psql -qc \"create role \\\"$me\\\" superuser login\"" >/dev/null
  fi
  export DATABASE_URL="${DATABASE_URL:-postgresql://$me@localhost/postgres?host=/var/run/postgresql}"
}

ensure_mosquitto() {
  port_open 1883 && return 0
  command -v mosquitto >/dev/null || apt_install mosquitto
  as_root mkdir -p /run/mosquitto
  as_root chown mosquitto /run/mosquitto 2>/dev/null || true
  port_open 1883 || as_root mosquitto -d -c /etc/mosquitto/mosquitto.conf
  wait_port 1883
}

# The dashboard (web/dist), when it is missing or older than any of its sources (web/, the generated operations).
web_stale() {
  [ -f web/dist/index.html ] || return 0
  [ -n "$(find web src/client/generated -path web/dist -prune -o -type f -newer web/dist/index.html -print -quit)" ]
}

ensure_web() {
  if web_stale; then
    echo "building the dashboard (web/dist)"
    npm run --silent build:web >/dev/null
  fi
}
