#!/usr/bin/env bash
# deploy/jaeger.sh — build and run a real Jaeger (v2: OTLP in, query API and UI out) on loopback.
#
#   deploy/jaeger.sh fetch                      build the jaeger binary once into the cache
#   deploy/jaeger.sh path                       fetch, then print the binary's path (for tests)
#   deploy/jaeger.sh config OTLP_PORT API_PORT  print an in-memory all-in-one config on those ports
#   deploy/jaeger.sh run [OTLP_PORT] [API_PORT] run it in the foreground (defaults 4318 and 16686)
#
# Jaeger is a Go program: the Go toolchain fetches it from the module proxy and builds it
# (about 10 minutes on 2 cores, once). Everything lives under $PAYSTREAM_CACHE (default
# ~/.cache/paystream): jaeger/jaeger-$VERSION (the binary), jaeger/module (the Go module that
# pins it). v1.75.0: the newest version approved on the module proxy here (v1.76.0 is served
# but not an approved release).
#
# Point paystream at it with `--otlp-endpoint http://127.0.0.1:4318`, and read traces through
# its HTTP API at http://127.0.0.1:16686 (/api/services, /api/traces/<trace id>,
# /api/traces?service=paystream). A binary built this way has no UI assets (they come from a
# separate npm build): the page at / is a placeholder; the release images have the full UI.
set -euo pipefail

JAEGER_VERSION="${PAYSTREAM_JAEGER_VERSION:-v1.75.0}"
CACHE="${PAYSTREAM_CACHE:-$HOME/.cache/paystream}"
DIR="$CACHE/jaeger"
BIN="$DIR/jaeger-$JAEGER_VERSION"

log() { printf 'jaeger.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

fetch() {
  if [ -x "$BIN" ]; then return 0; fi
  command -v go >/dev/null || die "go not found: install the Go toolchain (1.26+)"
  mkdir -p "$DIR/module"
  log "building Jaeger $JAEGER_VERSION with Go into $BIN (once; ~10 minutes on 2 cores)"
  (
    cd "$DIR/module"
    [ -f go.mod ] || go mod init paystream.local/jaeger >/dev/null 2>&1
    go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" >&2
    go build -o "$BIN.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2
  ) || die "building Jaeger $JAEGER_VERSION failed (see above)"
  mv "$BIN.tmp" "$BIN"
}

config() {
  local otlp="$1" ui="$2"
  cat <<YAML
# All-in-one Jaeger on loopback, traces kept in memory (written by deploy/jaeger.sh).
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
    traces:
      level: none
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:$ui
    grpc:
      endpoint: 127.0.0.1:0
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:$otlp
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
YAML
}

case "${1:-}" in
  fetch) fetch ;;
  path) fetch; printf '%s\n' "$BIN" ;;
  config) [ $# -eq 3 ] || die "usage: jaeger.sh config OTLP_PORT UI_PORT"; config "$2" "$3" ;;
  run)
    fetch
    cfg="$(mktemp "${TMPDIR:-/tmp}/jaeger.XXXXXX.yaml")"
    config "${2:-4318}" "${3:-16686}" > "$cfg"
    log "OTLP/HTTP on 127.0.0.1:${2:-4318}, UI and API on http://127.0.0.1:${3:-16686}"
    exec "$BIN" --config "file:$cfg"
    ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
