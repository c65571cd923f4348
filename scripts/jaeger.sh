#!/usr/bin/env bash
# Jaeger v2 on loopback with in-memory storage, built from the Go module
# proxy through the wrapper module tools/jaeger (the first build takes
# minutes; the binary is kept in a cache directory outside the checkout,
# by the hash of tools/jaeger's go.sum, so every clone shares it).
#
#   bash scripts/jaeger.sh build            # just build (and print) the binary
#   bash scripts/jaeger.sh start            # build if needed, start, wait until healthy
#   bash scripts/jaeger.sh stop             # stop it cleanly (SIGTERM, then wait)
#   bash scripts/jaeger.sh trace SERVICE    # print SERVICE's newest trace as a span tree
#
# Ports (127.0.0.1 only), from the environment:
#   JAEGER_OTLP_GRPC_PORT (4317), JAEGER_OTLP_HTTP_PORT (4318),
#   JAEGER_API_PORT (16686: the query API /api/traces…), JAEGER_HEALTH_PORT (13133),
#   JAEGER_QUERY_GRPC_PORT (16685).
# Its pid, log and configuration live in a state directory per API port
# (JAEGER_STATE_DIR, default $TMPDIR/vatactor-jaeger-<API port>), so two
# Jaegers on different ports do not meet. VATACTOR_CACHE (default
# $XDG_CACHE_HOME/vatactor, or ~/.cache/vatactor) holds the binary.
# This build serves the HTTP API but no UI: the UI's assets are not part
# of the Go module.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/tools/jaeger
grpc_port=${JAEGER_OTLP_GRPC_PORT:-4317}
http_port=${JAEGER_OTLP_HTTP_PORT:-4318}
api_port=${JAEGER_API_PORT:-16686}
health_port=${JAEGER_HEALTH_PORT:-13133}
query_grpc_port=${JAEGER_QUERY_GRPC_PORT:-16685}
cache=${VATACTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vatactor}
bin=$cache/jaeger/$(sha256sum "$dir/go.sum" | cut -c1-16)/jaeger
state=${JAEGER_STATE_DIR:-${TMPDIR:-/tmp}/vatactor-jaeger-$api_port}
pidfile=$state/pid
log=$state/jaeger.log
config=$state/config.yaml

build() {
  if [ ! -x "$bin" ]; then
    echo "building Jaeger into $bin (first time: several minutes)…" >&2
    mkdir -p "$(dirname "$bin")"
    (cd "$dir" && go build -o "$bin.tmp" github.com/jaegertracing/jaeger/cmd/jaeger)
    mv "$bin.tmp" "$bin"
  fi
  echo "$bin"
}

healthy() {
  curl -fsS "http://127.0.0.1:$health_port/status" 2>/dev/null | grep -q '"status":"StatusOK"\|"healthy":true\|StatusOK'
}

# configure writes tools/jaeger/config.yaml with this run's ports.
configure() {
  sed -e "s/127.0.0.1:4317/127.0.0.1:$grpc_port/" -e "s/127.0.0.1:4318/127.0.0.1:$http_port/" \
    -e "s/127.0.0.1:16686/127.0.0.1:$api_port/" -e "s/127.0.0.1:16685/127.0.0.1:$query_grpc_port/" \
    -e "s/127.0.0.1:13133/127.0.0.1:$health_port/" "$dir/config.yaml" >"$config"
}

start() {
  build >/dev/null
  mkdir -p "$state"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "Jaeger already running (pid $(cat "$pidfile"))"
    return
  fi
  if healthy; then
    echo "something already answers on 127.0.0.1:$health_port (another Jaeger?); set JAEGER_*_PORT" >&2
    exit 1
  fi
  configure
  OTEL_TRACES_EXPORTER=none "$bin" --config "$config" >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if healthy; then
      echo "Jaeger up (pid $(cat "$pidfile")): OTLP 127.0.0.1:$grpc_port/$http_port, API http://127.0.0.1:$api_port"
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
  trace)
    [ -n "${2:-}" ] || { echo "usage: $0 trace SERVICE" >&2; exit 2; }
    cd "$root" && go run ./scripts/jaegertrace -api "http://127.0.0.1:$api_port" "$2" ;;
  *) echo "usage: $0 build|start|stop|trace SERVICE" >&2; exit 2 ;;
esac
