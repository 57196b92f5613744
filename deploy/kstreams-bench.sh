#!/usr/bin/env bash
# deploy/kstreams-bench.sh — Kafka Streams baseline for paystream's ingest: the order view alone,
# or paystream's default pipeline (order view + SMS + missing-completion detector).
#
#   deploy/kstreams-bench.sh [--topology view|default] [--guarantee G] [--threads T] [options]
#
# Builds deploy/kstreams-bench (a Kafka Streams 4.1.1 Processor API app doing paystream's work
# with paystream's rules) with Maven if needed, produces a fresh 12-partition topic with
# `paystream produce`, runs the app until it has processed every event, and prints
#   kafka streams ingest (T thread(s)): X events/s                                  (view)
#   kafka streams ingest (default topology, G, T thread(s)): X events/s, peak RSS M MiB  (default)
# measured from the first processed record to the N-th (start-up and rebalance excluded), as
# `paystream bench` measures "ingest into the view"; peak RSS is the JVM's VmHWM at that point.
#
# Per record, both topologies: the task's wrong-partition check (murmur2), the event time read
# from the JSON `ts` (a timestamp extractor; records without a usable time are dead-lettered, as
# paystream's --timestamp-source event / --max-future-ms 3600000), parse + checks + fold into a
# RocksDB key-value store with a changelog, no record cache. `--topology default` adds paystream's
# SMS node (sms-sent / sms-suppressed / sms-rate window stores: dedup, per-phone cap, grace) and
# missing-completion detector (approval-state / approval-alerts window stores, due index, a check
# every 5000 ms of stream time), with SmsConfig / ApprovalTimeoutConfig defaults, writing
# <app>-SEND_SMS, <app>-SEND_SMS.SUPPRESSED and <app>-APPROVAL_TIMEOUT.
#
# Options:
#   --topology view|default  what to run (default view: the order view alone)
#   --guarantee G          at_least_once (default) or exactly_once_v2; the commit interval is
#                          paystream's default for it: 1000 ms, resp. 100 ms
#   --events N             events to produce and process (default 1000000)
#   --orders N             orders they belong to (default 200000)
#   --threads T            num.stream.threads (default 1; paystream runs one stream thread)
#   --heap SIZE            JVM -Xms and -Xmx (default 1g)
#   --detector-clock C     record (default): the detector checks after the record whose stream
#                          time made a check due, as paystream's task clock does (same alerts);
#                          punctuation: a Kafka Streams STREAM_TIME punctuator instead (fires after
#                          a batch of records on a grid aligned to 0; alerts may differ, see below)
#   --caching              turn on Kafka Streams' record cache for the stores (the DSL's default;
#                          paystream has none, so off by default)
#   --compression C        producer compression.type (default lz4, as paystream's producer)
#   --input generated|edge generated (default): `paystream produce` traffic; edge: EdgeTraffic,
#                          a smaller input built to hit every rule (shared phones over the cap, no
#                          phone, late and very late completions, stragglers beyond grace, late
#                          duplicates, ...); --events/--orders are ignored, --edge-orders N sets
#                          its size (default 4000 orders, about 17,000 records)
#   --malformed N          also mix N malformed records into the input (dead-lettered)
#   --verify               afterwards, check every order's final view (from the changelog)
#                          against `paystream produce --model-out` (--input generated only)
#   --verify-paystream     afterwards, run `paystream run --standalone` (same guarantee) on the
#                          same input topic and compare the two applications' outputs, read with
#                          read_committed: SEND_SMS, SEND_SMS.SUPPRESSED, APPROVAL_TIMEOUT (key
#                          and JSON value as parsed JSON; not the record timestamp: both sides'
#                          output topics use LogAppendTime, as paystream creates them) and the
#                          dead-letter topic (key, value, reason); prints counts and mismatches,
#                          exits 3 on any mismatch. With --detector-clock punctuation,
#                          detected_at is not compared
#   --keep-topics          do not delete the run's topics afterwards
#   --bootstrap-servers B  broker (default: `deploy/kafka.sh bootstrap`)
#
# Needs a running broker (deploy/kafka.sh start), Java 17+, Maven, and the paystream binary at
# $PAYSTREAM_BIN (default ~/.cache/paystream/target/debug/paystream); this script never runs cargo.
# If $BENCH_LOCK names a file, every heavy step (Maven, produce, the app, paystream) runs under
# `flock $BENCH_LOCK`, one at a time, so that runs sharing a machine do not overlap.
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
# Heavy steps, one at a time on a shared machine when $BENCH_LOCK is set.
# Works for shell functions too (the lock is held by a subshell on fd 9).
heavy() { if [ -n "${BENCH_LOCK:-}" ]; then ( flock 9 && "$@" ) 9>"$BENCH_LOCK"; else ( "$@" ); fi; }

events=1000000 orders=200000 threads=1 heap=1g caching="" compression=lz4 verify=0 keep=0
bootstrap="" topology=view guarantee=at_least_once clock=record input=generated malformed=0
edge_orders=4000 verify_ps=0
while [ $# -gt 0 ]; do
  case "$1" in
    --topology) topology="${2:?--topology needs view or default}"; shift 2 ;;
    --guarantee) guarantee="${2:?--guarantee needs at_least_once or exactly_once_v2}"; shift 2 ;;
    --events) events="${2:?--events needs a number}"; shift 2 ;;
    --orders) orders="${2:?--orders needs a number}"; shift 2 ;;
    --threads) threads="${2:?--threads needs a number}"; shift 2 ;;
    --heap) heap="${2:?--heap needs a size such as 1g}"; shift 2 ;;
    --detector-clock) clock="${2:?--detector-clock needs record or punctuation}"; shift 2 ;;
    --caching) caching="--caching"; shift ;;
    --compression) compression="${2:?--compression needs a codec}"; shift 2 ;;
    --input) input="${2:?--input needs generated or edge}"; shift 2 ;;
    --edge-orders) edge_orders="${2:?--edge-orders needs a number}"; shift 2 ;;
    --malformed) malformed="${2:?--malformed needs a number}"; shift 2 ;;
    --verify) verify=1; shift ;;
    --verify-paystream) verify_ps=1; shift ;;
    --keep-topics) keep=1; shift ;;
    --bootstrap-servers) bootstrap="${2:?--bootstrap-servers needs HOST:PORT}"; shift 2 ;;
    -h|--help|help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown option: $1 (try --help)" ;;
  esac
done
case "$events$orders$threads$malformed$edge_orders" in
  *[!0-9]*) die "--events, --orders, --threads, --malformed and --edge-orders take numbers" ;;
esac
case "$topology" in view|default) ;; *) die "--topology is view or default" ;; esac
case "$guarantee" in at_least_once|exactly_once_v2) ;; *) die "--guarantee is at_least_once or exactly_once_v2" ;; esac
case "$clock" in record|punctuation) ;; *) die "--detector-clock is record or punctuation" ;; esac
case "$input" in generated|edge) ;; *) die "--input is generated or edge" ;; esac
[ "$verify_ps" = 1 ] && [ "$topology" != default ] && die "--verify-paystream needs --topology default"
[ "$verify" = 1 ] && [ "$input" != generated ] && die "--verify needs --input generated"

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
  heavy mvn -q -B -f "$HERE/kstreams-bench/pom.xml" -Dkstreams.build.dir="$BUILD" package \
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
cp="$JAR:$BUILD/lib/*"
javaq() { java -Dlog4j2.configurationFile="$BENCH/log4j2.xml" -cp "$cp" "$@"; }

# 2. A fresh topic and application id per run (paystream's, for --verify-paystream, too).
stamp="$(date +%s%3N)"
topic="kstreams-bench-$stamp"
app="kstreams-bench-$stamp-t$threads"
papp="kstreams-bench-$stamp-paystream"
state="$BENCH/state-$stamp"
pstate="$BENCH/paystream-state-$stamp"
model="$BENCH/model-$stamp.jsonl"
cleanup() {
  rm -rf "$state" "$pstate" "$model"
  if [ "$keep" = 0 ]; then
    "$HERE/kafka.sh" java org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" \
      --delete --topic "$topic|$topic\\.DLQ|$app-.*|$papp-.*" >/dev/null 2>&1 || log "could not delete the run's topics"
  fi
}
trap cleanup EXIT

if [ "$input" = generated ]; then
  log "producing $events events for $orders orders (+$malformed malformed) into $topic (12 partitions)"
  model_args=()
  [ "$verify" = 1 ] && model_args=(--model-out "$model")
  heavy "$PAYSTREAM" produce --bootstrap-servers "$bootstrap" --topic "$topic" --create-topic \
    --partitions 12 --orders "$orders" --events "$events" --malformed "$malformed" "${model_args[@]}" >&2
  records=$((events + malformed))
else
  log "producing edge-case traffic ($edge_orders orders, +$malformed malformed) into $topic (12 partitions)"
  records="$(heavy javaq paystream.bench.EdgeTraffic --bootstrap-servers "$bootstrap" --topic "$topic" \
    --partitions 12 --orders "$edge_orders" --malformed "$malformed" | tail -1)"
  log "produced $records records"
fi

# 3. Run the app until it has processed every record.
verify_args=()
[ "$verify" = 1 ] && verify_args=(--verify-model "$model")
log "running Kafka Streams ($topology, $guarantee, $threads thread(s), heap $heap, caching ${caching:-off}, compression $compression)"
out="$(heavy java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -Dlog4j2.configurationFile="$BENCH/log4j2.xml" \
  -cp "$cp" paystream.bench.OrderViewBench \
  --bootstrap-servers "$bootstrap" --topic "$topic" --events "$records" --threads "$threads" \
  --application-id "$app" --state-dir "$state" --compression "$compression" $caching \
  --topology "$topology" --guarantee "$guarantee" --detector-clock "$clock" \
  "${verify_args[@]}")" || { printf '%s\n' "$out" >&2; die "the Kafka Streams app failed"; }
printf '%s\n' "$out" | grep -v '^kafka streams ingest' >&2 || true
line="$(printf '%s\n' "$out" | grep '^kafka streams ingest')"
printf '%s  topology=%s guarantee=%s input=%s events=%s threads=%s heap=%s caching=%s compression=%s clock=%s  %s\n' \
  "$(date -Is)" "$topology" "$guarantee" "$input" "$records" "$threads" "$heap" \
  "$([ -n "$caching" ] && echo on || echo off)" "$compression" "$clock" "$line" >> "$BENCH/results.log"
echo "$line"

# 4. --verify-paystream: paystream's default pipeline on the same topic, then compare outputs.
if [ "$verify_ps" = 1 ]; then
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  log "running paystream ($guarantee, standalone) on $topic as $papp"
  run_paystream() {
    RUST_LOG=warn "$PAYSTREAM" run --bootstrap-servers "$bootstrap" --application-id "$papp" \
      --input-topic "$topic" --state-dir "$pstate" --http-addr "127.0.0.1:$port" --standalone \
      --processing-guarantee "$guarantee" --dlq-topic "$papp-DLQ" \
      --sms-topic "$papp-SEND_SMS" --approval-timeout-topic "$papp-APPROVAL_TIMEOUT" \
      >"$BENCH/paystream-$stamp.log" 2>&1 &
    ps_pid=$!
    # heavy runs this in a subshell: its own trap stops paystream if the run is interrupted.
    trap 'kill -TERM "$ps_pid" 2>/dev/null || true' EXIT
    local deadline=$((SECONDS + 1800)) processed=0
    while :; do
      kill -0 "$ps_pid" 2>/dev/null || { tail -20 "$BENCH/paystream-$stamp.log" >&2; return 1; }
      processed="$(curl -s --max-time 2 "http://127.0.0.1:$port/health" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin).get("records_processed", 0))' 2>/dev/null || echo 0)"
      [ "${processed:-0}" -ge "$records" ] && break
      [ "$SECONDS" -lt "$deadline" ] || { log "paystream processed only $processed of $records records in 30 minutes"; return 1; }
      sleep 0.5
    done
    log "paystream processed $processed records; peak RSS $(awk '/VmHWM/ {printf "%d MiB", $2/1024}' /proc/$ps_pid/status); stopping it (final commit)"
    kill -TERM "$ps_pid"
    wait "$ps_pid" || true
    trap - EXIT
  }
  heavy run_paystream || die "paystream failed (log: $BENCH/paystream-$stamp.log)"
  ignore=()
  [ "$clock" = punctuation ] && ignore=(--ignore alerts:detected_at)
  log "comparing the outputs (read_committed)"
  set +e
  javaq paystream.bench.CompareOutputs --bootstrap-servers "$bootstrap" \
    --pair "SEND_SMS:json:$app-SEND_SMS:$papp-SEND_SMS" \
    --pair "SEND_SMS.SUPPRESSED:json:$app-SEND_SMS.SUPPRESSED:$papp-SEND_SMS.SUPPRESSED" \
    --pair "alerts:json:$app-APPROVAL_TIMEOUT:$papp-APPROVAL_TIMEOUT" \
    --pair "DLQ:dlq:$topic.DLQ:$papp-DLQ" "${ignore[@]}"
  rc=$?
  set -e
  [ "$rc" = 0 ] || { log "the outputs differ (paystream's log: $BENCH/paystream-$stamp.log)"; exit 3; }
  rm -f "$BENCH/paystream-$stamp.log"
  log "the outputs are equal"
fi
