#!/usr/bin/env bash
# deploy/kstreams-bench.sh — Kafka Streams baseline for paystream's order-view ingest.
#
#   deploy/kstreams-bench.sh [--events N] [--threads T] [options]
#
# Builds deploy/kstreams-bench (a Kafka Streams 4.1.1 app doing paystream's order-view work:
# parse JSON, RocksDB get, fold, RocksDB put + changelog record, at-least-once commits every
# 1000 ms) with Maven if needed, produces a fresh 12-partition topic with `paystream produce`,
# runs the app until it has processed every event, and prints
#   kafka streams ingest (T thread(s)): X events/s
# measured from the first processed record to the N-th (start-up and rebalance excluded), as
# `paystream bench` measures "ingest into the view".
#
# Options:
#   --events N             events to produce and process (default 1000000)
#   --orders N             orders they belong to (default 200000)
#   --threads T            num.stream.threads (default 1; paystream runs one stream thread)
#   --heap SIZE            JVM -Xms and -Xmx (default 1g)
#   --caching              turn on Kafka Streams' record cache for the store (the DSL default;
#                          paystream has none, so off by default)
#   --compression C        producer compression.type (default lz4, as paystream's producer)
#   --verify               afterwards, check every order's final view (from the changelog)
#                          against `paystream produce --model-out`
#   --keep-topics          do not delete the run's topics afterwards
#   --bootstrap-servers B  broker (default: `deploy/kafka.sh bootstrap`)
#
# Needs a running broker (deploy/kafka.sh start), Java 17+, Maven, and the paystream binary at
# $PAYSTREAM_BIN (default ~/.cache/paystream/target/debug/paystream); this script never runs cargo.
# Everything it writes lives under $PAYSTREAM_CACHE/kstreams-bench (default
# ~/.cache/paystream/kstreams-bench): the Maven build (target/), per-run state dirs, and results.log.
# Idempotent: each run uses a fresh topic and application id; the jar is rebuilt only when a
# source file is newer than it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${PAYSTREAM_CACHE:-$HOME/.cache/paystream}"
BENCH="$CACHE/kstreams-bench"
BUILD="$BENCH/target"
JAR="$BUILD/kstreams-bench-1.jar"
PAYSTREAM="${PAYSTREAM_BIN:-$CACHE/target/debug/paystream}"

log() { printf 'kstreams-bench.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

events=1000000 orders=200000 threads=1 heap=1g caching="" compression=lz4 verify=0 keep=0
bootstrap=""
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events="${2:?--events needs a number}"; shift 2 ;;
    --orders) orders="${2:?--orders needs a number}"; shift 2 ;;
    --threads) threads="${2:?--threads needs a number}"; shift 2 ;;
    --heap) heap="${2:?--heap needs a size such as 1g}"; shift 2 ;;
    --caching) caching="--caching"; shift ;;
    --compression) compression="${2:?--compression needs a codec}"; shift 2 ;;
    --verify) verify=1; shift ;;
    --keep-topics) keep=1; shift ;;
    --bootstrap-servers) bootstrap="${2:?--bootstrap-servers needs HOST:PORT}"; shift 2 ;;
    -h|--help|help) sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option: $1 (try --help)" ;;
  esac
done
case "$events$orders$threads" in *[!0-9]*) die "--events, --orders and --threads take numbers" ;; esac

command -v java >/dev/null || die "java not found: install a JDK 17+"
[ -x "$PAYSTREAM" ] || die "no paystream binary at $PAYSTREAM (build it with deploy/test-all.sh, or set PAYSTREAM_BIN)"
if [ -z "$bootstrap" ]; then
  bootstrap="$("$HERE/kafka.sh" status 2>/dev/null)" || die "no broker running: deploy/kafka.sh start"
fi

# 1. Build the jar if it is missing or older than its sources (output outside the repo).
mkdir -p "$BENCH"
if [ ! -f "$JAR" ] || [ ! -d "$BUILD/lib" ] || [ -n "$(find "$HERE/kstreams-bench" -newer "$JAR" -type f | head -1)" ]; then
  command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven)"
  log "building $JAR with Maven (log: $BENCH/mvn.log)"
  rm -rf "$BUILD/lib" # copy-dependencies never removes a jar that is no longer a dependency
  mvn -q -B -f "$HERE/kstreams-bench/pom.xml" -Dkstreams.build.dir="$BUILD" package \
      >"$BENCH/mvn.log" 2>&1 || { tail -30 "$BENCH/mvn.log" >&2; die "maven build failed (log: $BENCH/mvn.log)"; }
fi
cat > "$BENCH/log4j2.xml" <<'L4J'
<Configuration status="WARN">
  <Appenders>
    <Console name="STDERR" target="SYSTEM_ERR"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="STDERR"/></Root>
  </Loggers>
</Configuration>
L4J

# 2. A fresh topic and application id per run.
stamp="$(date +%s%3N)"
topic="kstreams-bench-$stamp"
app="kstreams-bench-$stamp-t$threads"
state="$BENCH/state-$stamp"
model="$BENCH/model-$stamp.jsonl"
cleanup() {
  rm -rf "$state" "$model"
  if [ "$keep" = 0 ]; then
    "$HERE/kafka.sh" java org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" \
      --delete --topic "$topic|$topic\\.DLQ|$app-.*" >/dev/null 2>&1 || log "could not delete the run's topics"
  fi
}
trap cleanup EXIT

log "producing $events events for $orders orders into $topic (12 partitions)"
model_args=()
[ "$verify" = 1 ] && model_args=(--model-out "$model")
"$PAYSTREAM" produce --bootstrap-servers "$bootstrap" --topic "$topic" --create-topic \
  --partitions 12 --orders "$orders" --events "$events" "${model_args[@]}" >&2

# 3. Run the app until it has processed every event.
cp="$JAR:$BUILD/lib/*"
verify_args=()
[ "$verify" = 1 ] && verify_args=(--verify-model "$model")
log "running Kafka Streams ($threads thread(s), heap $heap, caching ${caching:-off}, compression $compression)"
out="$(java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -Dlog4j2.configurationFile="$BENCH/log4j2.xml" \
  -cp "$cp" paystream.bench.OrderViewBench \
  --bootstrap-servers "$bootstrap" --topic "$topic" --events "$events" --threads "$threads" \
  --application-id "$app" --state-dir "$state" --compression "$compression" $caching \
  "${verify_args[@]}")" || { printf '%s\n' "$out" >&2; die "the Kafka Streams app failed"; }
printf '%s\n' "$out" | grep -v '^kafka streams ingest' >&2 || true
line="$(printf '%s\n' "$out" | grep '^kafka streams ingest')"
printf '%s  events=%s threads=%s heap=%s caching=%s compression=%s  %s\n' "$(date -Is)" "$events" \
  "$threads" "$heap" "$([ -n "$caching" ] && echo on || echo off)" "$compression" "$line" >> "$BENCH/results.log"
echo "$line"
