#!/usr/bin/env bash
# deploy/kafka.sh — fetch, start and stop a real Apache Kafka (KRaft) on loopback.
#
#   deploy/kafka.sh fetch                 download Kafka's jars with Maven into the cache
#   deploy/kafka.sh start [--brokers N]   format storage and start 1 (default) or 3 brokers
#   deploy/kafka.sh start --secure        1 broker that also has SASL_PLAINTEXT (port BASE+2) and
#                                         SASL_SSL (BASE+3) listeners: PLAIN, SCRAM-SHA-256 and
#                                         SCRAM-SHA-512 for user "paystream", password
#                                         "paystream-secret"; TLS with a CA made at start-up,
#                                         $RUN/tls/ca.pem (certificate for 127.0.0.1 and localhost);
#                                         SASL_PLAINTEXT sessions end after 10 s (KIP-368)
#   deploy/kafka.sh stop                  stop every broker this script started
#   deploy/kafka.sh kill-broker N         SIGKILL broker N (node.id N; a fault for drills)
#   deploy/kafka.sh start-broker N        start broker N again on its existing data
#   deploy/kafka.sh status                print bootstrap servers if running, exit 1 if not
#   deploy/kafka.sh bootstrap             print the bootstrap servers (for scripts)
#   deploy/kafka.sh classpath             print the classpath of the fetched jars
#   deploy/kafka.sh java CLASS ARGS...    run a Java tool (e.g. kafka.tools.ConsumerGroupCommand)
#
# Idempotent: `start` on a running cluster of the same size does nothing; `fetch` reuses the cache.
# Everything lives under $PAYSTREAM_CACHE (default ~/.cache/paystream), outside the clone:
#   kafka-$VERSION/lib/*.jar   the jars (kafka_2.13 + runtime dependencies + log4j2 binding)
#   kafka-run/broker-N/        data, server.properties, broker.log, pid
#                              ($PAYSTREAM_KAFKA_RUN overrides kafka-run: a second cluster, e.g.
#                              3 brokers for the broker drill, beside the test suite's one)
# Ports: broker N listens on 127.0.0.1:$((BASE + 2*(N-1))) and its controller on the next port;
# BASE is $PAYSTREAM_KAFKA_PORT (default 19092). $PAYSTREAM_KAFKA_START_TIMEOUT: seconds a broker
# may take to open its port (default 300).
set -euo pipefail

KAFKA_VERSION="${PAYSTREAM_KAFKA_VERSION:-4.1.1}"
LOG4J_VERSION="2.24.3"
# log4j-slf4j2-impl binds SLF4J 2 only: without an explicit slf4j-api 2, Maven picks Kafka's 1.7
# and the brokers log nothing at all (SLF4J falls back to its no-op logger).
SLF4J_VERSION="2.0.16"
CACHE="${PAYSTREAM_CACHE:-$HOME/.cache/paystream}"
KHOME="$CACHE/kafka-$KAFKA_VERSION"
RUN="${PAYSTREAM_KAFKA_RUN:-$CACHE/kafka-run}"
BASE="${PAYSTREAM_KAFKA_PORT:-19092}"
# How long a broker may take to open its port. A JVM started on a busy 2-core machine (a drill's
# instances and load beside it) was seen taking 110 s; after a SIGKILL it also recovers its logs.
START_TIMEOUT="${PAYSTREAM_KAFKA_START_TIMEOUT:-300}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

fetch() {
  # .complete-2: the jar set with slf4j-api 2 (an older cache without it is fetched again).
  if [ -f "$KHOME/.complete-2" ]; then return 0; fi
  command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven)"
  command -v java >/dev/null || die "java not found: install a JDK 17+"
  mkdir -p "$KHOME"
  log "fetching Apache Kafka $KAFKA_VERSION with Maven into $KHOME (once)"
  cat > "$KHOME/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>paystream</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-clients</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$KHOME/lib"
  (cd "$KHOME" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=lib \
      >"$KHOME/mvn.log" 2>&1) || { tail -30 "$KHOME/mvn.log" >&2; die "maven could not fetch Kafka (log: $KHOME/mvn.log)"; }
  cat > "$KHOME/log4j2.yaml" <<'L4J'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: WARN
      - name: state.change.logger
        level: WARN
L4J
  touch "$KHOME/.complete-2"
  log "fetched $(ls "$KHOME/lib" | wc -l) jars"
}

classpath() { fetch; ls "$KHOME"/lib/*.jar | tr '\n' ':' | sed 's/:$//'; }

java_run() {
  local cp; cp="$(classpath)"
  java -Xshare:auto -Dlog4j2.configurationFile="$KHOME/log4j2.yaml" -cp "$cp" "$@"
}

port_of() { echo $((BASE + 2 * ($1 - 1))); }
bootstrap_of() {
  local n=$1 out="" i
  for i in $(seq 1 "$n"); do out="$out${out:+,}127.0.0.1:$(port_of "$i")"; done
  echo "$out"
}
running_count() { cat "$RUN/brokers" 2>/dev/null || echo 0; }

alive() { local pidf="$RUN/broker-$1/pid"; [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_ready() {
  local n=$1 deadline=$((SECONDS + START_TIMEOUT)) i
  for i in $(seq 1 "$n"); do
    until port_open "$(port_of "$i")"; do
      alive "$i" || { tail -40 "$RUN/broker-$i/broker.log" >&2; die "broker $i exited during start-up (log: $RUN/broker-$i/broker.log)"; }
      [ $SECONDS -lt $deadline ] || die "broker $i did not open its port within $START_TIMEOUT s (log: $RUN/broker-$i/broker.log)"
      sleep 0.5
    done
  done
  # A port that accepts is not yet a broker that serves metadata: ask it to list topics.
  until java_run org.apache.kafka.tools.TopicCommand --bootstrap-server "$(bootstrap_of "$n")" --list >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "cluster did not answer metadata within $START_TIMEOUT s (logs under $RUN)"
    sleep 1
  done
}

# Start broker $1's JVM on its formatted storage (appending to its log).
launch() {
  local d="$RUN/broker-$1"
  # setsid: the broker must not die with the shell (or test) that started it.
  setsid java -Xms256m -Xmx1g -XX:+UseG1GC -Dlog4j2.configurationFile="$KHOME/log4j2.yaml" \
    -cp "$(classpath)" kafka.Kafka "$d/server.properties" >>"$d/broker.log" 2>&1 < /dev/null &
  echo $! > "$d/pid"
}

valid_broker() {
  local cur; cur="$(running_count)"
  [[ "${1:-}" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$cur" ] \
    || die "broker must be a number in 1..$cur (the cluster has $cur), got '${1:-}'"
}

kill_broker() {
  valid_broker "${1:-}"
  if alive "$1"; then kill -9 "$(cat "$RUN/broker-$1/pid")"; fi
  while alive "$1"; do sleep 0.1; done
  log "killed broker $1"
}

start_broker() {
  valid_broker "${1:-}"
  if alive "$1"; then log "broker $1 is already running"; return 0; fi
  launch "$1"
  local deadline=$((SECONDS + START_TIMEOUT))
  until port_open "$(port_of "$1")"; do
    alive "$1" || die "broker $1 exited during start-up (log: $RUN/broker-$1/broker.log)"
    [ $SECONDS -lt $deadline ] || die "broker $1 did not open its port within $START_TIMEOUT s (log: $RUN/broker-$1/broker.log)"
    sleep 0.5
  done
  log "started broker $1 again"
}

start() {
  local n=1 secure=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --brokers) n="${2:?--brokers needs a number}"; shift 2 ;;
      --secure) secure=1; shift ;;
      *) die "unknown option for start: $1" ;;
    esac
  done
  case "$n" in 1|3) ;; *) die "--brokers must be 1 or 3, got $n" ;; esac
  [ "$secure" = 0 ] || [ "$n" = 1 ] || die "--secure starts 1 broker (its listeners use the ports of brokers 2 and 3)"
  fetch
  local cur; cur="$(running_count)"
  if [ "$cur" != 0 ]; then
    local all=1 i was_secure=0
    for i in $(seq 1 "$cur"); do alive "$i" || all=0; done
    [ -f "$RUN/secure" ] && was_secure=1
    if [ "$all" = 1 ] && [ "$cur" = "$n" ] && [ "$was_secure" = "$secure" ]; then log "already running: $(bootstrap_of "$n")"; bootstrap_of "$n"; return 0; fi
    log "a different or broken cluster is up; restarting it"
    stop
  fi
  rm -rf "$RUN"; mkdir -p "$RUN"
  local voters="" i
  for i in $(seq 1 "$n"); do voters="$voters${voters:+,}$i@127.0.0.1:$(( $(port_of "$i") + 1 ))"; done
  local rf=$(( n >= 3 ? 3 : 1 )) isr=$(( n >= 3 ? 2 : 1 ))
  # A single broker is its own controller: when the machine stalls (2 cores shared with three
  # instances, RocksDB and the test; load averages above 20 were seen) it missed its own session
  # (default 9 s), fenced itself and left every partition without a leader for tens of seconds
  # (clients: NotCoordinator, leader -1, AllBrokersDown). Alone it has nobody to fail over to, so
  # it waits longer; a multi-broker cluster keeps the default for prompt failover.
  local session_ms=$(( n == 1 ? 30000 : 9000 ))
  local cluster_id; cluster_id="$(java_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
  for i in $(seq 1 "$n"); do
    local d="$RUN/broker-$i" p; p="$(port_of "$i")"
    mkdir -p "$d/data"
    local listeners="PLAINTEXT://127.0.0.1:$p,CONTROLLER://127.0.0.1:$((p + 1))"
    local advertised="PLAINTEXT://127.0.0.1:$p" protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if [ "$secure" = 1 ]; then
      make_tls "$RUN/tls"
      listeners="$listeners,SASL_PLAINTEXT://127.0.0.1:$((p + 2)),SASL_SSL://127.0.0.1:$((p + 3))"
      advertised="$advertised,SASL_PLAINTEXT://127.0.0.1:$((p + 2)),SASL_SSL://127.0.0.1:$((p + 3))"
      protocols="$protocols,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL"
    fi
    cat > "$d/server.properties" <<PROPS
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
log.dirs=$d/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
auto.create.topics.enable=false
log.cleaner.backoff.ms=1000
log.segment.bytes=104857600
broker.session.timeout.ms=$session_ms
# A transaction left open by a killed instance is aborted this long after its timeout (default
# 10 s) instead of up to 10 s later: its partitions' readers (standbys, read_committed consumers)
# wait for that abort. Worth setting on production brokers too (see ARCHITECTURE.md).
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
PROPS
    local scram=()
    if [ "$secure" = 1 ]; then
      secure_properties "$RUN/tls" >> "$d/server.properties"
      scram=(--add-scram "SCRAM-SHA-256=[name=$SASL_USER,password=$SASL_PASSWORD]"
             --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]")
    fi
    java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$d/server.properties" "${scram[@]}" >"$d/format.log" 2>&1 \
      || { cat "$d/format.log" >&2; die "formatting storage of broker $i failed"; }
    launch "$i"
  done
  echo "$n" > "$RUN/brokers"
  if [ "$secure" = 1 ]; then touch "$RUN/secure"; fi
  wait_ready "$n"
  log "started $n broker(s): $(bootstrap_of "$n") (logs under $RUN)"
  bootstrap_of "$n"
}

# The user every secure listener knows (PLAIN from the JAAS line, SCRAM from format --add-scram).
SASL_USER=paystream
SASL_PASSWORD=paystream-secret

# A CA and a broker certificate for 127.0.0.1 and localhost, under $1 (made once per start).
make_tls() {
  local t=$1
  command -v openssl >/dev/null || die "openssl not found: install it (apt-get install openssl)"
  mkdir -p "$t"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=paystream test CA" \
    -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$t/broker.key" -out "$t/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$t/san.ext"
  openssl x509 -req -in "$t/broker.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -days 30 -extfile "$t/san.ext" -out "$t/broker.pem" 2>/dev/null
  # Kafka's PEM keystore: the (unencrypted PKCS#8) key, then the certificate chain.
  openssl pkcs8 -topk8 -nocrypt -in "$t/broker.key" -out "$t/broker.p8"
  cat "$t/broker.p8" "$t/broker.pem" "$t/ca.pem" > "$t/keystore.pem"
}

# Broker settings of the SASL_PLAINTEXT and SASL_SSL listeners (TLS files under $1).
secure_properties() {
  local t=$1 l m
  echo "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
  # Sessions on SASL_PLAINTEXT last 10 s (KIP-368): clients must re-authenticate or reconnect.
  echo "listener.name.sasl_plaintext.connections.max.reauth.ms=10000"
  echo "ssl.keystore.type=PEM"
  echo "ssl.keystore.location=$t/keystore.pem"
  for l in sasl_plaintext sasl_ssl; do
    echo "listener.name.$l.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER=\"$SASL_PASSWORD\";"
    for m in scram-sha-256 scram-sha-512; do
      echo "listener.name.$l.$m.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
    done
  done
}

stop() {
  local cur i; cur="$(running_count)"
  for i in $(seq 1 "${cur:-0}"); do
    if alive "$i"; then kill "$(cat "$RUN/broker-$i/pid")" 2>/dev/null || true; fi
  done
  local deadline=$((SECONDS + 60))
  for i in $(seq 1 "${cur:-0}"); do
    while alive "$i"; do
      if [ $SECONDS -ge $deadline ]; then kill -9 "$(cat "$RUN/broker-$i/pid")" 2>/dev/null || true; break; fi
      sleep 0.5
    done
  done
  [ -d "$RUN" ] && echo 0 > "$RUN/brokers" && rm -f "$RUN/secure"
  log "stopped"
}

status() {
  local cur i; cur="$(running_count)"
  [ "$cur" != 0 ] || { log "not running"; return 1; }
  for i in $(seq 1 "$cur"); do alive "$i" || { log "broker $i is down"; return 1; }; done
  bootstrap_of "$cur"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  fetch) fetch ;;
  start) start "$@" ;;
  stop) stop ;;
  kill-broker) kill_broker "$@" ;;
  start-broker) start_broker "$@" ;;
  status) status ;;
  bootstrap) status ;;
  classpath) classpath ;;
  java) java_run "$@" ;;
  ""|-h|--help|help) sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command: $cmd (try --help)" ;;
esac
