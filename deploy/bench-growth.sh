#!/usr/bin/env bash
# deploy/bench-growth.sh — how ingest, restore and memory move as the work grows.
#
#   deploy/bench-growth.sh [--orders "100000 1000000 10000000"] [--events-per-order 4]
#                          [--partitions "12 48"] [--bootstrap-servers B] [--out docs/bench-growth.png]
#
# Runs `paystream bench` (events = orders x --events-per-order; the generator needs about 3.2) (one instance, default pipeline, exactly_once_v2, --state-memory-mb
# default 256) once per order count with 12 partitions, and once more with each extra partition
# count at the middle order count; appends every figure to
# $PAYSTREAM_CACHE/bench-growth/results.csv (run id, orders, events, partitions, figure, value,
# unit) and draws the PNG (ingest events/s and peak RSS against orders in state, one line per
# partition count) with matplotlib, installed into a virtualenv under $PAYSTREAM_CACHE the first
# time. Each bench run deletes its topics afterwards. To draw several runs' points together:
#   ~/.cache/paystream/venv-plot/bin/python deploy/bench-growth-plot.py RESULTS.csv RUN1,RUN2 OUT.png
#
# Needs a running broker (deploy/kafka.sh start) and the paystream binary at $PAYSTREAM_BIN
# (default ~/.cache/paystream/target/debug/paystream); this script never runs cargo. The largest
# default run (10 million orders, 40 million events) takes about 20 minutes and ~20 GB of broker
# disk while it runs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${PAYSTREAM_CACHE:-$HOME/.cache/paystream}"
PAYSTREAM="${PAYSTREAM_BIN:-$CACHE/target/debug/paystream}"
OUT_DIR="$CACHE/bench-growth"
CSV="$OUT_DIR/results.csv"

log() { printf 'bench-growth.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

orders_list="100000 1000000 10000000" per_order=4 partitions_list="12 48" bootstrap=""
png="$HERE/../docs/bench-growth.png"
while [ $# -gt 0 ]; do
  case "$1" in
    --orders) orders_list="${2:?--orders needs a list such as \"100000 1000000\"}"; shift 2 ;;
    --events-per-order) per_order="${2:?--events-per-order needs a number}"; shift 2 ;;
    --partitions) partitions_list="${2:?--partitions needs a list such as \"12 48\"}"; shift 2 ;;
    --bootstrap-servers) bootstrap="${2:?--bootstrap-servers needs HOST:PORT}"; shift 2 ;;
    --out) png="${2:?--out needs a file name}"; shift 2 ;;
    -h|--help|help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option: $1 (try --help)" ;;
  esac
done
case "$orders_list $per_order $partitions_list" in *[!0-9\ ]*) die "--orders, --events-per-order and --partitions take numbers" ;; esac
[ -x "$PAYSTREAM" ] || die "no paystream binary at $PAYSTREAM (build it with deploy/test-all.sh, or set PAYSTREAM_BIN)"
if [ -z "$bootstrap" ]; then
  bootstrap="$("$HERE/kafka.sh" status 2>/dev/null)" || die "no broker running: deploy/kafka.sh start"
fi

# matplotlib in a virtualenv of our own (the system Python has none).
venv="$CACHE/venv-plot"
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib into $venv"
  python3 -m venv "$venv" >/dev/null
  "$venv/bin/pip" install -q matplotlib >"$OUT_DIR.pip.log" 2>&1 || { mkdir -p "$OUT_DIR"; die "pip install matplotlib failed (log: $OUT_DIR.pip.log)"; }
fi

mkdir -p "$OUT_DIR"
[ -f "$CSV" ] || echo "run,orders,events,partitions,figure,value,unit" >"$CSV"
run_id="$(date -u +%Y%m%dT%H%M%SZ)"
work="$OUT_DIR/work-$run_id"

# The table is shown on stderr as it comes. Not `tee /dev/stderr`: that opens the file anew, and
# when stderr is a file (`> log 2>&1`) it writes at its own offset, over the log lines.
bench() { # orders partitions
  local orders=$1 parts=$2 events=$(( $1 * per_order ))
  log "orders=$orders events=$events partitions=$parts"
  "$PAYSTREAM" bench --bootstrap-servers "$bootstrap" --events "$events" --orders "$orders" \
      --partitions "$parts" --work-dir "$work" | tee >(cat >&2) |
    awk -v run="$run_id" -v o="$orders" -v e="$events" -v p="$parts" '
      { unit=$NF; value=$(NF-1); $NF=""; $(NF-1)=""; sub(/^ +/, ""); sub(/ +$/, "");
        printf "%s,%s,%s,%s,\"%s\",%s,%s\n", run, o, e, p, $0, value, unit }' >>"$CSV"
}

first_parts="${partitions_list%% *}"
for o in $orders_list; do bench "$o" "$first_parts"; done
set -- $orders_list
middle="${2:-$1}"
for p in ${partitions_list#"$first_parts"}; do bench "$middle" "$p"; done
rm -rf "$work"

"$venv/bin/python" "$HERE/bench-growth-plot.py" "$CSV" "$run_id" "$png"
log "results: $CSV (run $run_id); plot: $png"
