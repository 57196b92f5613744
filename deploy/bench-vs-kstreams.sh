#!/usr/bin/env bash
# deploy/bench-vs-kstreams.sh — paystream against Kafka Streams doing the same work, side by side
# in one sequence of runs on one broker, with the ratios the speed issue asks for.
#
#   deploy/bench-vs-kstreams.sh [--topologies "default view"] [--guarantees "exactly_once_v2 at_least_once"]
#                               [--threads "1 2"] [--runs N] [--events N] [--orders N]
#
# For each topology and guarantee: Kafka Streams (deploy/kstreams-bench.sh) with each thread
# count, then `paystream bench` N times (default 2) on a fresh topic of the same size. The
# default topology is the whole default pipeline (order view + SMS + missing-completion
# detector); view is the order view alone (paystream with PAYSTREAM_SMS_ENABLED=false and
# PAYSTREAM_APPROVAL_TIMEOUT_ENABLED=false). Prints one markdown table:
#
#   | topology | guarantee | Kafka Streams best (threads) | paystream best | ratio | raw consume | paystream / raw | peak RSS KS / paystream | RSS ratio |
#
# Ingest rates are timed from the first processed record to the last, as both benches do; "raw
# consume" is a bare librdkafka consumer of the same topic in the same `paystream bench` run (the
# limit). Every row is also appended to $PAYSTREAM_CACHE/bench-vs-kstreams/results.md with the
# date and the commit. The raw output of every run is kept next to it (runs/<stamp>/).
#
# Needs what deploy/kstreams-bench.sh needs: a running broker (deploy/kafka.sh start), Java 17+,
# Maven, and the paystream binary at $PAYSTREAM_BIN (default ~/.cache/paystream/target/debug/
# paystream); it never runs cargo. $BENCH_LOCK is passed on (one heavy step at a time). Run it on
# a quiet machine: figures of one binary move by 20% and more with other load.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${PAYSTREAM_CACHE:-$HOME/.cache/paystream}"
OUT="$CACHE/bench-vs-kstreams"
PAYSTREAM="${PAYSTREAM_BIN:-$CACHE/target/debug/paystream}"

log() { printf 'bench-vs-kstreams.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

topologies="default view" guarantees="exactly_once_v2 at_least_once" threads="1 2" runs=2
events=1000000 orders=200000 bootstrap=""
while [ $# -gt 0 ]; do
  case "$1" in
    --topologies) topologies="${2:?--topologies needs a list: default view}"; shift 2 ;;
    --guarantees) guarantees="${2:?--guarantees needs a list}"; shift 2 ;;
    --threads) threads="${2:?--threads needs a list of thread counts}"; shift 2 ;;
    --runs) runs="${2:?--runs needs a number}"; shift 2 ;;
    --events) events="${2:?--events needs a number}"; shift 2 ;;
    --orders) orders="${2:?--orders needs a number}"; shift 2 ;;
    --bootstrap-servers) bootstrap="${2:?--bootstrap-servers needs host:port}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
for t in $topologies; do case "$t" in default|view) ;; *) die "--topologies: $t is not default or view" ;; esac; done
for g in $guarantees; do case "$g" in exactly_once_v2|at_least_once) ;; *) die "--guarantees: $g is not exactly_once_v2 or at_least_once" ;; esac; done
for n in $runs $events $orders $threads; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "expected a positive number, got $n"
done
[ -x "$PAYSTREAM" ] || die "no paystream binary at $PAYSTREAM (build it: cargo build --workspace --all-targets, or set PAYSTREAM_BIN)"
[ -n "$bootstrap" ] || bootstrap="$("$HERE/kafka.sh" bootstrap)"

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
runs_dir="$OUT/runs/$stamp"
mkdir -p "$runs_dir"
commit="$(git -C "$HERE/.." rev-parse --short HEAD 2>/dev/null || echo unknown)"

# The first number after $2 on the line matching $1 in file $3 (empty if none).
field() { grep -E "$1" "$3" | head -1 | sed -E "s/.*$2[^0-9]*([0-9]+).*/\1/" | grep -E '^[0-9]+$' || true; }
max() { local best=""; for v in "$@"; do [ -z "$v" ] && continue; if [ -z "$best" ] || [ "$v" -gt "$best" ]; then best="$v"; fi; done; echo "$best"; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}x' if b else '-')" "$1" "$2"; }
pct() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{100*a/b:.0f}%' if b else '-')" "$1" "$2"; }

header='| topology | guarantee | Kafka Streams best (threads) | paystream best (runs) | ratio | raw consume | paystream / raw | peak RSS Kafka Streams / paystream | RSS ratio |'
rule='| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |'
rows=()
for topology in $topologies; do
  for guarantee in $guarantees; do
    ks_best="" ks_threads="" ks_rss=""
    for t in $threads; do
      f="$runs_dir/kstreams-$topology-$guarantee-$t.log"
      log "Kafka Streams: $topology, $guarantee, $t thread(s)"
      "$HERE/kstreams-bench.sh" --topology "$topology" --guarantee "$guarantee" --threads "$t" \
        --events "$events" --orders "$orders" --bootstrap-servers "$bootstrap" > "$f" 2>&1 \
        || { tail -20 "$f" >&2; die "kstreams-bench.sh failed (log: $f)"; }
      rate="$(field '^kafka streams ingest' '\):' "$f")"
      rss="$(grep '^kafka streams ingest' "$f" | sed -nE 's/.*peak RSS ([0-9]+) MiB.*/\1/p')"
      [ -z "$rss" ] && rss="$(sed -nE 's/^peak RSS \(VmHWM\)[^:]*: ([0-9]+) MiB.*/\1/p' "$f" | head -1)"
      [ -n "$rate" ] || die "no ingest rate in $f"
      log "  $rate events/s, peak RSS ${rss:-?} MiB"
      if [ -z "$ks_best" ] || [ "$rate" -gt "$ks_best" ]; then ks_best="$rate" ks_threads="$t" ks_rss="$rss"; fi
    done
    ps_rates=() raw_rates=() ps_rss=()
    for i in $(seq 1 "$runs"); do
      f="$runs_dir/paystream-$topology-$guarantee-$i.log"
      log "paystream: $topology, $guarantee, run $i of $runs"
      env_args=()
      [ "$topology" = view ] && env_args=(PAYSTREAM_SMS_ENABLED=false PAYSTREAM_APPROVAL_TIMEOUT_ENABLED=false)
      env "${env_args[@]}" RUST_LOG=warn "$PAYSTREAM" bench --bootstrap-servers "$bootstrap" \
        --events "$events" --orders "$orders" --processing-guarantee "$guarantee" \
        --work-dir "$runs_dir/work" > "$f" 2>&1 \
        || { tail -20 "$f" >&2; die "paystream bench failed (log: $f)"; }
      ps_rates+=("$(field '^ingest into the view' 'instance\)' "$f")")
      raw_rates+=("$(field '^raw librdkafka consume \(the limit\)' 'limit\)' "$f")")
      ps_rss+=("$(field '^peak RSS of the instance during ingest' 'ingest' "$f")")
      log "  ${ps_rates[-1]} events/s, peak RSS ${ps_rss[-1]} MiB, raw consume ${raw_rates[-1]} events/s"
    done
    best="$(max "${ps_rates[@]}")"
    [ -n "$best" ] || die "no paystream ingest rate in $runs_dir"
    # The raw consume and RSS of the run that gave the best rate.
    raw="" rss=""
    for i in "${!ps_rates[@]}"; do
      [ "${ps_rates[$i]}" = "$best" ] && { raw="${raw_rates[$i]}"; rss="${ps_rss[$i]}"; break; }
    done
    row="| $topology | $guarantee | $ks_best ($ks_threads) | $best ($(IFS=/; echo "${ps_rates[*]}")) | $(ratio "$best" "$ks_best") | ${raw:-?} | $([ -n "$raw" ] && pct "$best" "$raw" || echo -) | ${ks_rss:-?} / ${rss:-?} MiB | $([ -n "$ks_rss" ] && [ -n "$rss" ] && ratio "$rss" "$ks_rss" || echo -) |"
    rows+=("$row")
    mkdir -p "$OUT"
    printf '%s commit=%s events=%s orders=%s %s\n' "$stamp" "$commit" "$events" "$orders" "$row" >> "$OUT/results.md"
  done
done

echo "paystream $commit vs Kafka Streams, $events events / $orders orders, $(date -u +%Y-%m-%dT%H:%MZ) (logs: $runs_dir)"
echo
echo "$header"
echo "$rule"
printf '%s\n' "${rows[@]}"
