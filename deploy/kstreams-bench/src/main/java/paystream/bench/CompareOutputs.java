package paystream.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Compares what two applications wrote: for each pair of topics (Kafka Streams', paystream's),
 * reads both to their end with {@code isolation.level=read_committed} (what a downstream reader
 * sees) and compares them as multisets of records. Order is not compared (the two engines
 * interleave partitions and commit differently); everything else is.
 *
 * <p>A JSON record is (key, value as parsed JSON: same fields, same values, key order ignored;
 * not the record timestamp, which is the broker's append time on both sides); fields named with {@code --ignore NAME:FIELD} are removed from pair NAME's
 * values first. A dead-letter record ({@code dlq} kind) is (key, value bytes, the
 * {@code paystream.dlq.reason} header).
 *
 * <p>Usage: {@code CompareOutputs --bootstrap-servers B --pair NAME:KIND:KS_TOPIC:PS_TOPIC ...
 * [--ignore NAME:FIELD ...]} with KIND {@code json} or {@code dlq}. Prints one line per pair and
 * up to 5 examples of each difference; exits 3 if any pair differs.
 */
public final class CompareOutputs {
  private CompareOutputs() {}

  static final ObjectMapper MAPPER = new ObjectMapper();

  record Pair(String name, String kind, String ksTopic, String psTopic) {}

  public static void main(String[] args) throws Exception {
    String bootstrap = null;
    List<Pair> pairs = new ArrayList<>();
    Map<String, Set<String>> ignore = new HashMap<>();
    for (int i = 0; i < args.length; i++) {
      String v = i + 1 < args.length ? args[i + 1] : null;
      switch (args[i]) {
        case "--bootstrap-servers": bootstrap = v; i++; break;
        case "--pair": {
          String[] p = v.split(":", 4);
          pairs.add(new Pair(p[0], p[1], p[2], p[3]));
          i++;
          break;
        }
        case "--ignore": {
          String[] p = v.split(":", 2);
          ignore.computeIfAbsent(p[0], k -> new TreeSet<>()).add(p[1]);
          i++;
          break;
        }
        default: throw new IllegalArgumentException("unknown argument " + args[i]);
      }
    }
    long differing = 0;
    for (Pair pair : pairs) {
      Set<String> ignored = ignore.getOrDefault(pair.name(), Set.of());
      Map<String, Integer> ks = read(bootstrap, pair.ksTopic(), pair.kind(), ignored);
      Map<String, Integer> ps = read(bootstrap, pair.psTopic(), pair.kind(), ignored);
      long ksCount = ks.values().stream().mapToLong(Integer::longValue).sum();
      long psCount = ps.values().stream().mapToLong(Integer::longValue).sum();
      List<String> onlyKs = minus(ks, ps);
      List<String> onlyPs = minus(ps, ks);
      System.out.printf("verify %-20s kafka streams %7d records, paystream %7d records:"
          + " %d only in kafka streams, %d only in paystream%s%n", pair.name(), ksCount,
          psCount, onlyKs.size(), onlyPs.size(),
          ignored.isEmpty() ? "" : " (not compared: " + String.join(", ", ignored) + ")");
      for (int i = 0; i < Math.min(5, onlyKs.size()); i++) {
        System.out.println("  only in kafka streams: " + onlyKs.get(i));
      }
      for (int i = 0; i < Math.min(5, onlyPs.size()); i++) {
        System.out.println("  only in paystream:     " + onlyPs.get(i));
      }
      differing += onlyKs.size() + onlyPs.size();
    }
    System.out.printf("verify: %d mismatches%n", differing);
    System.exit(differing == 0 ? 0 : 3);
  }

  /** Records of {@code a} not matched by one in {@code b} (with multiplicity), sorted. */
  static List<String> minus(Map<String, Integer> a, Map<String, Integer> b) {
    List<String> out = new ArrayList<>();
    for (Map.Entry<String, Integer> e : new TreeMap<>(a).entrySet()) {
      int extra = e.getValue() - b.getOrDefault(e.getKey(), 0);
      for (int i = 0; i < extra; i++) {
        out.add(e.getKey());
      }
    }
    return out;
  }

  /** Every committed record of {@code topic} as a canonical string → how many times. */
  static Map<String, Integer> read(String bootstrap, String topic, String kind,
      Set<String> ignored) throws Exception {
    Properties p = new Properties();
    p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
    p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
    Map<String, Integer> out = new HashMap<>();
    try (KafkaConsumer<byte[], byte[]> c =
        new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
      List<TopicPartition> parts = new ArrayList<>();
      List<PartitionInfo> infos = c.partitionsFor(topic, Duration.ofSeconds(30));
      if (infos == null || infos.isEmpty()) {
        throw new IllegalStateException("no topic " + topic);
      }
      for (PartitionInfo pi : infos) {
        parts.add(new TopicPartition(topic, pi.partition()));
      }
      c.assign(parts);
      c.seekToBeginning(parts);
      // Under read_committed, the end offsets are the last stable offsets: nothing of an open
      // transaction is read (the writers have closed, so none should be open).
      Map<TopicPartition, Long> end = c.endOffsets(parts);
      long deadline = System.currentTimeMillis() + 300_000;
      while (parts.stream().anyMatch(tp -> c.position(tp) < end.get(tp))) {
        if (System.currentTimeMillis() > deadline) {
          throw new IllegalStateException("could not read " + topic + " to its end in 300 s");
        }
        for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(500))) {
          out.merge(canonical(r, kind, ignored), 1, Integer::sum);
        }
      }
    }
    return out;
  }

  static String canonical(ConsumerRecord<byte[], byte[]> r, String kind, Set<String> ignored)
      throws Exception {
    String key = r.key() == null ? "<null>" : new String(r.key(), StandardCharsets.UTF_8);
    String value = r.value() == null ? "<null>" : new String(r.value(), StandardCharsets.UTF_8);
    if (kind.equals("dlq")) {
      Header reason = r.headers().lastHeader("paystream.dlq.reason");
      return "key=" + key + " reason="
          + (reason == null ? "<none>" : new String(reason.value(), StandardCharsets.UTF_8))
          + " value=" + value;
    }
    JsonNode node = MAPPER.readTree(r.value());
    if (node instanceof ObjectNode o) {
      o.remove(ignored);
    }
    // The record timestamp is not compared: both applications' output topics are created with
    // message.timestamp.type=LogAppendTime (as paystream does), so it is when the broker appended
    // the record. The event times are in the values (event_ts, requested_ts, deadline_ts, ...).
    return "key=" + key + " value=" + sorted(node);
  }

  /** JSON text with object keys sorted (recursively), so field order does not matter. */
  static String sorted(JsonNode n) {
    if (n.isObject()) {
      StringBuilder b = new StringBuilder("{");
      TreeMap<String, JsonNode> fields = new TreeMap<>();
      for (Iterator<Map.Entry<String, JsonNode>> it = n.fields(); it.hasNext(); ) {
        Map.Entry<String, JsonNode> e = it.next();
        fields.put(e.getKey(), e.getValue());
      }
      boolean firstField = true;
      for (Map.Entry<String, JsonNode> e : fields.entrySet()) {
        if (!firstField) {
          b.append(',');
        }
        firstField = false;
        b.append('"').append(e.getKey()).append("\":").append(sorted(e.getValue()));
      }
      return b.append('}').toString();
    }
    if (n.isArray()) {
      StringBuilder b = new StringBuilder("[");
      for (int i = 0; i < n.size(); i++) {
        if (i > 0) {
          b.append(',');
        }
        b.append(sorted(n.get(i)));
      }
      return b.append(']').toString();
    }
    return n.toString();
  }
}
