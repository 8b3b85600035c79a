# Sourced by start.sh and test.sh: build the dashboard (web/dist) when it is
# missing or older than any of its sources (web/, the generated operations).
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
