package paystream.bench;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Properties;
import java.util.SplittableRandom;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.utils.Utils;

/**
 * Traffic that exercises the default pipeline's rules where {@code paystream produce} does not:
 * `paystream produce` gives every event a phone drawn from 10^8 numbers and completes approvals
 * within seconds, so its runs raise no suppressed SMS, no late drop and no RESOLVED alert. Here:
 * <ul>
 *   <li>a handful of phones shared by all orders (the per-phone cap suppresses SMS, rate_limited),
 *       events without a phone or with an empty one (no_phone), events without member or amount
 *       (null fields in the outputs);</li>
 *   <li>completions just before and after timeout + grace (TIMEOUT and RESOLVED alerts, and the
 *       borderline cases where the check timing decides), very late completions, orders never
 *       completed, a second request of the same order, completions without a request;</li>
 *   <li>duplicates arriving at once and up to 100 minutes later, stragglers 50-80 minutes late
 *       (beyond the SMS grace of 1 h: dropped as late), cancellations of failed orders, a second
 *       cancellation two hours later (inside the 24 h dedup window);</li>
 *   <li>optionally malformed records (bad JSON, unknown type, missing field, negative and future
 *       times, key mismatch, a field too long, a record on the wrong partition).</li>
 * </ul>
 * Event times start 30 hours ago; records arrive in arrival-time order (event time + delay),
 * keyed by order id, partitioned by the Java producer's murmur2 (as paystream's generator).
 *
 * <p>Usage: {@code EdgeTraffic --bootstrap-servers B --topic T [--partitions 12] [--orders 4000]
 * [--seed 7] [--malformed 0]}. Creates the topic and prints the number of records written.
 */
public final class EdgeTraffic {
  private EdgeTraffic() {}

  record Ev(long arrival, long seq, String key, byte[] value, long ts, Integer partition) {}

  public static void main(String[] args) throws Exception {
    String bootstrap = null;
    String topic = null;
    int partitions = 12;
    int orders = 4000;
    long seed = 7;
    int malformed = 0;
    for (int i = 0; i + 1 < args.length; i += 2) {
      String v = args[i + 1];
      switch (args[i]) {
        case "--bootstrap-servers": bootstrap = v; break;
        case "--topic": topic = v; break;
        case "--partitions": partitions = Integer.parseInt(v); break;
        case "--orders": orders = Integer.parseInt(v); break;
        case "--seed": seed = Long.parseLong(v); break;
        case "--malformed": malformed = Integer.parseInt(v); break;
        default: throw new IllegalArgumentException("unknown argument " + args[i]);
      }
    }
    long now = System.currentTimeMillis();
    long base = now - 30 * 3_600_000L;
    SplittableRandom rnd = new SplittableRandom(seed);
    ObjectMapper json = new ObjectMapper();
    List<Ev> out = new ArrayList<>();
    long[] seq = {0};
    for (int i = 0; i < orders; i++) {
      String id = String.format("E-%06d", i);
      String member = rnd.nextInt(100) < 95 ? "M-" + rnd.nextInt(500) : null;
      String phone;
      int ph = rnd.nextInt(100);
      if (ph < 90) {
        phone = String.format("+82100000%04d", rnd.nextInt(8));
      } else if (ph < 95) {
        phone = null;
      } else if (ph < 98) {
        phone = "";
      } else {
        phone = String.format("+8210%08d", rnd.nextInt(100_000_000));
      }
      Long amount = rnd.nextInt(100) < 97 ? 1_000L + 100L * rnd.nextInt(5_000) : null;
      String currency = amount == null ? null : (rnd.nextInt(10) < 9 ? "KRW" : "USD");
      long t0 = base + i * 3_000L + rnd.nextInt(1_000);
      List<Object[]> walk = new ArrayList<>(); // {type, ts}
      walk.add(new Object[] {"APPROVAL_REQUESTED", t0});
      int shape = rnd.nextInt(100);
      long t = t0;
      if (shape < 3) {
        // never completed
        if (rnd.nextBoolean()) {
          walk.add(new Object[] {"APPROVAL_CALLBACK_COMPLETED", t + 50 + rnd.nextInt(3_000)});
        }
      } else {
        t += 50 + rnd.nextInt(3_000);
        walk.add(new Object[] {"APPROVAL_CALLBACK_COMPLETED", t});
        if (shape < 9) {
          t = t0 + 290_000 + rnd.nextInt(50_000); // around timeout + grace (310 s)
        } else if (shape < 12) {
          t = t0 + 360_000 + rnd.nextInt(1_500_000); // long after the deadline
        } else if (shape < 14) {
          t = t0 - 1_000 - rnd.nextInt(20_000); // completion timed before its request
        } else {
          t += 50 + rnd.nextInt(3_000);
        }
        boolean failed = rnd.nextInt(100) < 12;
        walk.add(new Object[] {failed ? "APPROVAL_FAILED" : "APPROVAL_COMPLETED", t});
        int c = rnd.nextInt(100);
        if (c < 15 || (failed && c < 25)) {
          t += 1_000 + rnd.nextInt(60_000);
          walk.add(new Object[] {"CANCEL_REQUESTED", t});
          t += 50 + rnd.nextInt(3_000);
          walk.add(new Object[] {"CANCELLED", t});
          if (rnd.nextInt(100) < 5) {
            walk.add(new Object[] {"CANCELLED", t + 2 * 3_600_000L});
          }
        }
      }
      if (rnd.nextInt(100) < 2) {
        walk.add(new Object[] {"APPROVAL_REQUESTED", t0 + 60_000 + rnd.nextInt(1_200_000)});
      }
      for (Object[] w : walk) {
        long ts = (Long) w[1];
        ObjectNode e = json.createObjectNode();
        e.put("order_id", id);
        e.put("event_id", Long.toHexString(rnd.nextLong()));
        e.put("type", (String) w[0]);
        if (amount != null) {
          e.put("amount", amount);
        }
        if (currency != null) {
          e.put("currency", currency);
        }
        if (member != null && rnd.nextInt(100) < 97) {
          e.put("member_id", member);
        }
        if (phone != null) {
          e.put("phone", phone);
        }
        e.put("ts", ts);
        byte[] value = json.writeValueAsBytes(e);
        int d = rnd.nextInt(1000);
        long delay = rnd.nextInt(2_000);
        if (d < 20) {
          delay = 50 * 60_000L + rnd.nextInt(30 * 60_000); // straggler
        }
        out.add(new Ev(ts + delay, seq[0]++, id, value, ts, null));
        int dup = rnd.nextInt(1000);
        if (dup < 50) {
          out.add(new Ev(ts + delay + rnd.nextInt(5_000), seq[0]++, id, value, ts, null));
        } else if (dup < 70) {
          out.add(new Ev(ts + delay + 20 * 60_000L + rnd.nextInt(80 * 60_000), seq[0]++, id,
              value, ts, null));
        }
      }
    }
    for (int m = 0; m < malformed; m++) {
      long ts = base + rnd.nextLong(Math.max(1, orders * 3_000L));
      String id = String.format("X-%06d", m);
      String v;
      String key = id;
      Integer partition = null;
      switch (m % 9) {
        case 0: v = "{not json"; break;
        case 1: v = "{\"order_id\":\"" + id + "\",\"event_id\":\"x\",\"type\":\"REFUND\",\"ts\":"
            + ts + "}"; break;
        case 2: v = "{\"order_id\":\"" + id + "\",\"type\":\"APPROVAL_REQUESTED\",\"ts\":" + ts
            + "}"; break;
        case 3: v = "{\"order_id\":\"" + id + "\",\"event_id\":\"x\",\"type\":"
            + "\"APPROVAL_REQUESTED\",\"ts\":-5}"; break;
        case 4: v = "{\"order_id\":\"" + id + "\",\"event_id\":\"x\",\"type\":"
            + "\"APPROVAL_REQUESTED\",\"ts\":" + (now + 3 * 3_600_000L) + "}"; break;
        case 5: v = "{\"order_id\":\"Y-" + m + "\",\"event_id\":\"x\",\"type\":"
            + "\"APPROVAL_REQUESTED\",\"ts\":" + ts + "}"; break;
        case 6: v = "{\"order_id\":\"" + id + "\",\"event_id\":\"x\",\"type\":"
            + "\"APPROVAL_COMPLETED\",\"phone\":\"" + "9".repeat(300) + "\",\"ts\":" + ts + "}";
          break;
        case 7: {
          v = "{\"order_id\":\"" + id + "\",\"event_id\":\"x\",\"type\":\"APPROVAL_REQUESTED\","
              + "\"ts\":" + ts + "}";
          int right = Utils.toPositive(Utils.murmur2(id.getBytes(StandardCharsets.UTF_8)))
              % partitions;
          partition = (right + 1) % partitions;
          break;
        }
        default: v = "[1,2,3]"; break;
      }
      out.add(new Ev(ts, seq[0]++, key, v.getBytes(StandardCharsets.UTF_8), ts, partition));
    }
    out.sort(Comparator.comparingLong(Ev::arrival).thenComparingLong(Ev::seq));

    Properties ap = new Properties();
    ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    try (Admin admin = Admin.create(ap)) {
      admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get();
    }
    Properties pp = new Properties();
    pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    pp.put(ProducerConfig.LINGER_MS_CONFIG, 5);
    pp.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, "lz4");
    try (KafkaProducer<byte[], byte[]> producer =
        new KafkaProducer<>(pp, new ByteArraySerializer(), new ByteArraySerializer())) {
      for (Ev e : out) {
        // The broker refuses timestamps more than an hour ahead: such records carry "now".
        long recordTs = e.ts() >= 0 && e.ts() <= now ? e.ts() : now;
        producer.send(new ProducerRecord<>(topic, e.partition(), recordTs,
            e.key().getBytes(StandardCharsets.UTF_8), e.value()));
      }
      producer.flush();
    }
    System.out.println(out.size());
  }
}
