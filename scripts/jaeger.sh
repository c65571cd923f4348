#!/usr/bin/env bash
# Jaeger v2 on loopback with in-memory storage, built from the Go module
# proxy through the wrapper module tools/jaeger (the first build takes
# minutes, later ones come from the Go build cache).
#
#   bash scripts/jaeger.sh build   # just build tools/jaeger/bin/jaeger
#   bash scripts/jaeger.sh start   # build if needed, start, wait until healthy
#   bash scripts/jaeger.sh stop    # stop it cleanly (SIGTERM, then wait)
#
# Ports (127.0.0.1 only): OTLP 4317 (gRPC) and 4318 (HTTP), query API
# 16686, health 13133. This build serves the HTTP API (/api/traces…) but
# no UI: the UI's assets are not part of the Go module.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=tools/jaeger
bin=$dir/bin/jaeger
state=${JAEGER_STATE_DIR:-${TMPDIR:-/tmp}/vatactor-jaeger}
pidfile=$state/pid
log=$state/jaeger.log

build() {
  (cd "$dir" && go build -o bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger)
}

healthy() {
  curl -fsS http://127.0.0.1:13133/status 2>/dev/null | grep -q '"status":"StatusOK"\|"healthy":true\|StatusOK'
}

start() {
  [ -x "$bin" ] || { echo "building Jaeger (first time: several minutes)…"; build; }
  mkdir -p "$state"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "Jaeger already running (pid $(cat "$pidfile"))"
    return
  fi
  OTEL_TRACES_EXPORTER=none "$bin" --config "$dir/config.yaml" >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if healthy; then
      echo "Jaeger up (pid $(cat "$pidfile")): OTLP 127.0.0.1:4317/4318, API http://127.0.0.1:16686"
      return
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "Jaeger exited; its log:" >&2; cat "$log" >&2; exit 1
    fi
    sleep 0.5
  done
  echo "Jaeger not healthy after 60s; its log:" >&2; cat "$log" >&2; exit 1
}

stop() {
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && { echo "Jaeger did not stop on SIGTERM; killing" >&2; kill -KILL "$pid"; }
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
