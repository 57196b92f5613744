package paystream.bench;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.atomic.LongAdder;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.kstream.Windowed;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.StoreBuilder;
import org.apache.kafka.streams.state.Stores;
import org.apache.kafka.streams.state.WindowStore;
import org.apache.kafka.streams.state.WindowStoreIterator;
import paystream.bench.OrderViewBench.EventType;
import paystream.bench.OrderViewBench.OrderEvent;

/**
 * The windowed half of paystream's default pipeline, as Kafka Streams Processor API nodes: the SMS
 * notification topology ({@code topology/src/sms.rs}) and the missing-completion detector
 * ({@code topology/src/approval.rs}), with the same rules, the same store contents and the same
 * output records.
 *
 * <p>Chain (as {@code topology/src/shipped.rs}): order view → {@link SmsProcessor} →
 * {@link ApprovalTimeoutProcessor}. The order view forwards each valid record with its parsed
 * {@link OrderEvent} as the value (paystream attaches the parsed event to the record the same way:
 * one parse per record, not one per node); the record timestamp is the event's {@code ts} (the
 * source's timestamp extractor reads it, as paystream's {@code EventTime}).
 *
 * <p>Stores: Kafka Streams persistent (RocksDB, segmented) window stores with changelogs and no
 * record cache, one per paystream window store, same keys (UTF-8 of {@code template/order_id},
 * phone, order id) at the same window starts and the same values (request JSON, u32 big-endian
 * counts, postcard {@code ApprovalState}, alert JSON). Retention follows paystream's window store
 * exactly ({@code state/src/window.rs}): an entry is kept while {@code window start >= observed -
 * retention}, where observed is the largest window start the store accepted, and a put older than
 * that is refused. Kafka Streams' segmented store expires by segment and its fetch hides entries
 * older than {@code observed - retention + 1}, so each store is created with paystream's retention
 * + 1 ms and {@link PaystreamWindow} applies paystream's bound itself (and knows whether a put was
 * refused, which paystream's {@code put} returns and Kafka Streams' does not).
 */
final class DefaultPipeline {
  private DefaultPipeline() {}

  // ---------------------------------------------------------------------------------------------
  // Configuration: SmsConfig::default() and ApprovalTimeoutConfig::default().
  // ---------------------------------------------------------------------------------------------

  static final String SMS_SENT_STORE = "sms-sent";
  static final String SMS_SUPPRESSED_STORE = "sms-suppressed";
  static final String SMS_RATE_STORE = "sms-rate";
  static final String APPROVAL_STATE_STORE = "approval-state";
  static final String APPROVAL_ALERTS_STORE = "approval-alerts";

  static final long SMS_DEDUP_WINDOW_MS = 24 * 3_600_000L;
  static final int SMS_RATE_LIMIT = 5;
  static final long SMS_RATE_WINDOW_MS = 3_600_000L;
  static final long SMS_GRACE_MS = 3_600_000L;

  static final long APPROVAL_TIMEOUT_MS = 5 * 60_000L;
  static final long APPROVAL_GRACE_MS = 10_000L;
  static final long APPROVAL_CHECK_INTERVAL_MS = 5_000L;
  static final long APPROVAL_ALERT_RETENTION_MS = 7 * 24 * 3_600_000L;

  /** {@code ApprovalTimeoutConfig::retention_ms}. */
  static long approvalRetentionMs() {
    return satAdd(satMul2(satAdd(APPROVAL_TIMEOUT_MS, APPROVAL_GRACE_MS)),
        APPROVAL_CHECK_INTERVAL_MS);
  }

  /** {@code due_after}: timeout + grace + one check interval. */
  static long dueAfterMs() {
    return satAdd(satAdd(APPROVAL_TIMEOUT_MS, APPROVAL_GRACE_MS), APPROVAL_CHECK_INTERVAL_MS);
  }

  /** Names of the sink nodes (and the output topics they write, set by the caller). */
  static final String SMS_SINK = "send-sms";
  static final String SUPPRESSED_SINK = "send-sms-suppressed";
  static final String ALERTS_SINK = "approval-timeout";
  static final String SMS_NODE = "sms";
  static final String APPROVAL_NODE = "approval-timeout-detector";

  /** How the detector's checks are clocked (see {@link ApprovalTimeoutProcessor}). */
  enum DetectorClock {
    /**
     * paystream's task clock ({@code topology/src/clock.rs}): after each record, once stream time
     * has passed the next check time; the next check is one interval after the stream time that
     * fired it. Same checks at the same stream times as paystream, hence the same alerts.
     */
    RECORD,
    /**
     * A Kafka Streams {@code STREAM_TIME} punctuator: fires when the stream thread punctuates
     * (after a batch of records, on a grid aligned to 0). Same work, but alerts can differ from
     * paystream's in {@code detected_at} and, for completions arriving within one check of their
     * deadline, in whether a TIMEOUT (+ RESOLVED) is raised at all.
     */
    PUNCTUATION
  }

  // Outcome counters (printed at the end; LongAdder: several stream threads).
  static final LongAdder SMS_SENT = new LongAdder();
  static final LongAdder SMS_SUPPRESSED = new LongAdder();
  static final LongAdder SMS_LATE = new LongAdder();
  static final LongAdder APPROVAL_LATE = new LongAdder();
  static final LongAdder ALERTS_TIMEOUT = new LongAdder();
  static final LongAdder ALERTS_RESOLVED = new LongAdder();
  static final LongAdder CHECKS = new LongAdder();

  // ---------------------------------------------------------------------------------------------
  // Saturating i64 arithmetic (Rust's saturating_add / saturating_sub).
  // ---------------------------------------------------------------------------------------------

  static long satAdd(long a, long b) {
    long r = a + b;
    if (((a ^ r) & (b ^ r)) < 0) {
      return a < 0 ? Long.MIN_VALUE : Long.MAX_VALUE;
    }
    return r;
  }

  static long satSub(long a, long b) {
    long r = a - b;
    if (((a ^ b) & (a ^ r)) < 0) {
      return a < 0 ? Long.MIN_VALUE : Long.MAX_VALUE;
    }
    return r;
  }

  static long satMul2(long a) {
    return satAdd(a, a);
  }

  /** {@code paystream_state::window::oldest_retained}. */
  static long oldestRetained(long observed, long retentionMs) {
    return observed == Long.MIN_VALUE ? Long.MIN_VALUE : satSub(observed, retentionMs);
  }

  // ---------------------------------------------------------------------------------------------
  // Stores.
  // ---------------------------------------------------------------------------------------------

  /** A Kafka Streams window store for a paystream window store of {@code retentionMs}. */
  static StoreBuilder<WindowStore<Bytes, byte[]>> windowStore(String name, long retentionMs) {
    // Persistent RocksDB window store, changelog on (the builder's default), record cache off
    // (the builder's default; paystream has none). Window size is irrelevant here (entries are
    // fetched by window start); 1 ms. retainDuplicates=false: a put overwrites, as paystream's.
    return Stores.windowStoreBuilder(
        Stores.persistentWindowStore(name, Duration.ofMillis(retentionMs + 1),
            Duration.ofMillis(1), false),
        Serdes.Bytes(), Serdes.ByteArray());
  }

  /** Every store of the SMS node and the detector: (store builder, node that uses it). */
  static List<Map.Entry<StoreBuilder<WindowStore<Bytes, byte[]>>, String>> stores() {
    long dedupRetention = satAdd(SMS_DEDUP_WINDOW_MS, SMS_GRACE_MS);
    return List.of(
        Map.entry(windowStore(SMS_SENT_STORE, dedupRetention), SMS_NODE),
        Map.entry(windowStore(SMS_SUPPRESSED_STORE, dedupRetention), SMS_NODE),
        Map.entry(windowStore(SMS_RATE_STORE, satAdd(SMS_RATE_WINDOW_MS, SMS_GRACE_MS)), SMS_NODE),
        Map.entry(windowStore(APPROVAL_STATE_STORE, approvalRetentionMs()), APPROVAL_NODE),
        Map.entry(windowStore(APPROVAL_ALERTS_STORE, APPROVAL_ALERT_RETENTION_MS), APPROVAL_NODE));
  }

  /** One window entry: window start and value. */
  record Entry(long time, byte[] value) {}

  /**
   * A Kafka Streams window store seen through paystream's {@code WindowStore} semantics:
   * observed time = largest accepted window start, {@code put} refuses (and reports) a window
   * older than observed - retention, {@code fetch} returns nothing older than that.
   */
  static final class PaystreamWindow {
    final WindowStore<Bytes, byte[]> store;
    final long retentionMs;
    long observed = Long.MIN_VALUE;

    PaystreamWindow(WindowStore<Bytes, byte[]> store, long retentionMs) {
      this.store = store;
      this.retentionMs = retentionMs;
      // After a restore the store holds entries already: observed time is the newest of them,
      // as paystream's RocksDB window store recomputes it when reopened.
      try (KeyValueIterator<Windowed<Bytes>, byte[]> it = store.all()) {
        while (it.hasNext()) {
          observed = Math.max(observed, it.next().key.window().start());
        }
      }
    }

    long oldest() {
      return oldestRetained(observed, retentionMs);
    }

    boolean put(byte[] key, long windowStart, byte[] value) {
      if (windowStart < oldest()) {
        return false;
      }
      store.put(Bytes.wrap(key), value, windowStart);
      if (windowStart > observed) {
        observed = windowStart;
      }
      return true;
    }

    /** Entries of {@code key} with {@code from <= window start <= to}, oldest first. */
    List<Entry> fetch(byte[] key, long from, long to) {
      from = Math.max(from, oldest());
      if (from > to) {
        return List.of();
      }
      List<Entry> out = null;
      try (WindowStoreIterator<byte[]> it = store.fetch(Bytes.wrap(key), from, to)) {
        while (it.hasNext()) {
          KeyValue<Long, byte[]> kv = it.next();
          if (out == null) {
            out = new ArrayList<>(2);
          }
          out.add(new Entry(kv.key, kv.value));
        }
      }
      return out == null ? List.of() : out;
    }

    boolean isEmpty(byte[] key, long from, long to) {
      from = Math.max(from, oldest());
      if (from > to) {
        return true;
      }
      try (WindowStoreIterator<byte[]> it = store.fetch(Bytes.wrap(key), from, to)) {
        return !it.hasNext();
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // JSON of the output records, field for field as serde_json writes the Rust structs
  // (Option::None is written as null; same field order).
  // ---------------------------------------------------------------------------------------------

  static final JsonFactory JSON = new JsonFactory();
  static final ObjectMapper MAPPER = new ObjectMapper();

  /** A reusable JSON writer (one per processor). */
  static final class JsonOut {
    final ByteArrayOutputStream buf = new ByteArrayOutputStream(256);

    JsonGenerator start() {
      buf.reset();
      try {
        JsonGenerator g = JSON.createGenerator(buf);
        g.writeStartObject();
        return g;
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
    }

    byte[] finish(JsonGenerator g) {
      try {
        g.writeEndObject();
        g.close();
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
      return buf.toByteArray();
    }
  }

  static void str(JsonGenerator g, String name, String v) throws IOException {
    if (v == null) {
      g.writeNullField(name);
    } else {
      g.writeStringField(name, v);
    }
  }

  static void num(JsonGenerator g, String name, Long v) throws IOException {
    if (v == null) {
      g.writeNullField(name);
    } else {
      g.writeNumberField(name, v.longValue());
    }
  }

  /** {@code SmsRequest} fields (then, for {@code SuppressedSms}, reason and detail). */
  static void smsRequestFields(JsonGenerator g, OrderEvent e, String template, long ts)
      throws IOException {
    g.writeStringField("order_id", e.order_id);
    str(g, "member_id", e.member_id);
    str(g, "phone", e.phone);
    g.writeStringField("template", template);
    num(g, "amount", e.amount);
    str(g, "currency", e.currency);
    g.writeNumberField("event_ts", ts);
    g.writeStringField("event_id", e.event_id);
  }

  /** {@code ApprovalAlert}. */
  static final class Alert {
    String orderId;
    String status; // TIMEOUT | RESOLVED
    String memberId;
    Long amount;
    String currency;
    long requestedTs;
    long deadlineTs;
    long detectedAt;
    String resolvedBy;
    Long resolvedTs;

    byte[] toJson(JsonOut out) {
      JsonGenerator g = out.start();
      try {
        g.writeStringField("order_id", orderId);
        g.writeStringField("status", status);
        str(g, "member_id", memberId);
        num(g, "amount", amount);
        str(g, "currency", currency);
        g.writeNumberField("requested_ts", requestedTs);
        g.writeNumberField("deadline_ts", deadlineTs);
        g.writeNumberField("detected_at", detectedAt);
        str(g, "resolved_by", resolvedBy);
        num(g, "resolved_ts", resolvedTs);
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
      return out.finish(g);
    }

    static Alert fromJson(byte[] bytes) {
      JsonNode n;
      try {
        n = MAPPER.readTree(bytes);
      } catch (IOException e) {
        throw new IllegalStateException("store " + APPROVAL_ALERTS_STORE + ": bad alert: " + e);
      }
      Alert a = new Alert();
      a.orderId = n.get("order_id").asText();
      a.status = n.get("status").asText();
      a.memberId = textOrNull(n.get("member_id"));
      a.amount = longOrNull(n.get("amount"));
      a.currency = textOrNull(n.get("currency"));
      a.requestedTs = n.get("requested_ts").asLong();
      a.deadlineTs = n.get("deadline_ts").asLong();
      a.detectedAt = n.get("detected_at").asLong();
      a.resolvedBy = textOrNull(n.get("resolved_by"));
      a.resolvedTs = longOrNull(n.get("resolved_ts"));
      return a;
    }

    private static String textOrNull(JsonNode n) {
      return n == null || n.isNull() ? null : n.asText();
    }

    private static Long longOrNull(JsonNode n) {
      return n == null || n.isNull() ? null : n.asLong();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // ApprovalState, stored as paystream stores it: version byte 1 + postcard of
  //   enum ApprovalState { Pending(Pending { member_id: Option<String>, amount: Option<i64>,
  //                                          currency: Option<String> }), Settled(EventType) }
  // (variant index varint; Option = 0 | 1 + value; String = varint len + UTF-8; i64 zigzag
  // varint; EventType = its name as a string).
  // ---------------------------------------------------------------------------------------------

  /** {@code Pending}: what is kept for a pending request. */
  record Pending(String memberId, Long amount, String currency) {}

  /** Decoded ApprovalState: {@code pending != null} for Pending, else {@code settledBy}. */
  record ApprovalState(Pending pending, EventType settledBy) {}

  static final class StateCodec {
    private byte[] buf = new byte[128];
    private int len;

    byte[] pending(Pending p) {
      len = 0;
      put((byte) 1); // FORMAT_VERSION
      varint(0);
      optString(p.memberId());
      if (p.amount() == null) {
        put((byte) 0);
      } else {
        put((byte) 1);
        long v = p.amount();
        varint((v << 1) ^ (v >> 63));
      }
      optString(p.currency());
      return Arrays.copyOf(buf, len);
    }

    byte[] settled(EventType t) {
      len = 0;
      put((byte) 1);
      varint(1);
      string(t.name());
      return Arrays.copyOf(buf, len);
    }

    static ApprovalState decode(byte[] b) {
      int[] pos = {0};
      if (b.length == 0 || b[0] != 1) {
        throw new IllegalStateException("store " + APPROVAL_STATE_STORE + ": bad format version");
      }
      pos[0] = 1;
      long variant = readVarint(b, pos);
      ApprovalState s;
      if (variant == 0) {
        String member = readOptString(b, pos);
        Long amount = null;
        if (b[pos[0]++] == 1) {
          long v = readVarint(b, pos);
          amount = (v >>> 1) ^ -(v & 1);
        }
        String currency = readOptString(b, pos);
        s = new ApprovalState(new Pending(member, amount, currency), null);
      } else if (variant == 1) {
        String name = readString(b, pos);
        EventType t = EventType.parse(name);
        if (t == null) {
          throw new IllegalStateException("store " + APPROVAL_STATE_STORE + ": bad type " + name);
        }
        s = new ApprovalState(null, t);
      } else {
        throw new IllegalStateException("store " + APPROVAL_STATE_STORE + ": bad variant");
      }
      if (pos[0] != b.length) {
        throw new IllegalStateException("store " + APPROVAL_STATE_STORE + ": trailing bytes");
      }
      return s;
    }

    private void optString(String s) {
      if (s == null) {
        put((byte) 0);
      } else {
        put((byte) 1);
        string(s);
      }
    }

    private void string(String s) {
      byte[] b = s.getBytes(StandardCharsets.UTF_8);
      varint(b.length);
      ensure(b.length);
      System.arraycopy(b, 0, buf, len, b.length);
      len += b.length;
    }

    private void varint(long v) {
      while ((v & ~0x7FL) != 0) {
        put((byte) ((v & 0x7F) | 0x80));
        v >>>= 7;
      }
      put((byte) v);
    }

    private void put(byte x) {
      ensure(1);
      buf[len++] = x;
    }

    private void ensure(int extra) {
      if (len + extra > buf.length) {
        buf = Arrays.copyOf(buf, Math.max(buf.length * 2, len + extra));
      }
    }

    private static long readVarint(byte[] b, int[] pos) {
      long v = 0;
      for (int shift = 0; shift < 64; shift += 7) {
        byte x = b[pos[0]++];
        v |= (long) (x & 0x7F) << shift;
        if ((x & 0x80) == 0) {
          return v;
        }
      }
      throw new IllegalStateException("varint too long");
    }

    private static String readString(byte[] b, int[] pos) {
      int n = (int) readVarint(b, pos);
      String s = new String(b, pos[0], n, StandardCharsets.UTF_8);
      pos[0] += n;
      return s;
    }

    private static String readOptString(byte[] b, int[] pos) {
      return b[pos[0]++] == 0 ? null : readString(b, pos);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The SMS node (SmsProcessor in topology/src/sms.rs).
  // ---------------------------------------------------------------------------------------------

  /** {@code template_for}. */
  static String templateFor(EventType t) {
    switch (t) {
      case APPROVAL_COMPLETED: return "payment_approved";
      case CANCELLED: return "payment_cancelled";
      default: return null;
    }
  }

  static final class SmsProcessor implements Processor<Object, Object, Object, Object> {
    private ProcessorContext<Object, Object> context;
    private PaystreamWindow sent;
    private PaystreamWindow suppressed;
    private PaystreamWindow rate;
    private final JsonOut json = new JsonOut();

    @Override
    public void init(ProcessorContext<Object, Object> context) {
      this.context = context;
      long dedupRetention = satAdd(SMS_DEDUP_WINDOW_MS, SMS_GRACE_MS);
      sent = new PaystreamWindow(context.getStateStore(SMS_SENT_STORE), dedupRetention);
      suppressed = new PaystreamWindow(context.getStateStore(SMS_SUPPRESSED_STORE), dedupRetention);
      rate = new PaystreamWindow(context.getStateStore(SMS_RATE_STORE),
          satAdd(SMS_RATE_WINDOW_MS, SMS_GRACE_MS));
    }

    @Override
    public void process(Record<Object, Object> record) {
      OrderEvent event = (OrderEvent) record.value();
      String template = templateFor(event.eventType);
      if (template != null) {
        handle(event, template, record.timestamp());
      }
      context.forward(record, APPROVAL_NODE);
    }

    private void handle(OrderEvent event, String template, long ts) {
      byte[] key = (template + "/" + event.order_id).getBytes(StandardCharsets.UTF_8);
      long lo = satSub(ts, SMS_DEDUP_WINDOW_MS);
      long hi = satAdd(ts, SMS_DEDUP_WINDOW_MS);
      for (PaystreamWindow seen : new PaystreamWindow[] {sent, suppressed}) {
        if (lo < seen.oldest()) {
          SMS_LATE.increment(); // ctx.record_late(): beyond grace, dropped
          return;
        }
        if (!seen.isEmpty(key, lo, hi)) {
          return;
        }
      }
      String phone = event.phone;
      if (phone == null || phone.isEmpty()) {
        suppress(event, template, ts, key, "no_phone", "the event has no phone number");
        return;
      }
      byte[] phoneKey = phone.getBytes(StandardCharsets.UTF_8);
      long windowStart = satSub(ts, SMS_RATE_WINDOW_MS - 1);
      long sentCount = 0;
      int atTs = 0;
      for (Entry e : rate.fetch(phoneKey, windowStart, ts)) {
        int n = decodeCount(e.value());
        sentCount += Integer.toUnsignedLong(n);
        if (e.time() == ts) {
          atTs = n;
        }
      }
      if (sentCount >= SMS_RATE_LIMIT) {
        String detail = sentCount + " SMS to this phone in the last " + SMS_RATE_WINDOW_MS
            + " ms; the limit is " + SMS_RATE_LIMIT;
        suppress(event, template, ts, key, "rate_limited", detail);
        return;
      }
      JsonGenerator g = json.start();
      try {
        smsRequestFields(g, event, template, ts);
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
      byte[] bytes = json.finish(g);
      context.forward(new Record<>(event.order_id.getBytes(StandardCharsets.UTF_8), bytes, ts),
          SMS_SINK);
      sent.put(key, ts, bytes);
      rate.put(phoneKey, ts, encodeCount(atTs + 1));
      SMS_SENT.increment();
    }

    private void suppress(OrderEvent event, String template, long ts, byte[] key, String reason,
        String detail) {
      JsonGenerator g = json.start();
      try {
        smsRequestFields(g, event, template, ts); // #[serde(flatten)] request
        g.writeStringField("reason", reason);
        g.writeStringField("detail", detail);
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
      byte[] bytes = json.finish(g);
      context.forward(new Record<>(event.order_id.getBytes(StandardCharsets.UTF_8), bytes, ts),
          SUPPRESSED_SINK);
      suppressed.put(key, ts, bytes);
      SMS_SUPPRESSED.increment();
    }

    /** {@code decode_count}: u32 big-endian, 0 if malformed. */
    static int decodeCount(byte[] v) {
      if (v == null || v.length != 4) {
        return 0;
      }
      return ((v[0] & 0xFF) << 24) | ((v[1] & 0xFF) << 16) | ((v[2] & 0xFF) << 8) | (v[3] & 0xFF);
    }

    static byte[] encodeCount(int n) {
      return new byte[] {(byte) (n >>> 24), (byte) (n >>> 16), (byte) (n >>> 8), (byte) n};
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The missing-completion detector (ApprovalTimeoutProcessor in topology/src/approval.rs).
  // ---------------------------------------------------------------------------------------------

  /** Key of the due index: (requested time, order id), ordered as paystream's BTreeMap. */
  record DueKey(long ts, String orderId) implements Comparable<DueKey> {
    @Override
    public int compareTo(DueKey o) {
      int c = Long.compare(ts, o.ts);
      // paystream orders by the id's bytes; for UTF-16 strings without surrogates, and for
      // ASCII ids in particular, String order is the same.
      return c != 0 ? c : orderId.compareTo(o.orderId);
    }
  }

  /** Value of the due index: the pending request, and whether this processor added it. */
  record DueValue(Pending pending, boolean fresh) {}

  static final class ApprovalTimeoutProcessor implements Processor<Object, Object, Object, Object> {
    private final DetectorClock clockKind;
    private ProcessorContext<Object, Object> context;
    private PaystreamWindow state;
    private PaystreamWindow alerts;
    private final StateCodec codec = new StateCodec();
    private final JsonOut json = new JsonOut();
    /** Requests at or before this time have been checked (MIN: none yet). */
    private long checkedUpTo = Long.MIN_VALUE;
    private final TreeMap<DueKey, DueValue> due = new TreeMap<>();
    // paystream's TaskClock for this task (DetectorClock.RECORD): stream time = largest record
    // time processed, next check time (MIN until the first record).
    private long streamTime = Long.MIN_VALUE;
    private long nextCheck = Long.MIN_VALUE;

    ApprovalTimeoutProcessor(DetectorClock clockKind) {
      this.clockKind = clockKind;
    }

    @Override
    public void init(ProcessorContext<Object, Object> context) {
      this.context = context;
      state = new PaystreamWindow(context.getStateStore(APPROVAL_STATE_STORE),
          approvalRetentionMs());
      alerts = new PaystreamWindow(context.getStateStore(APPROVAL_ALERTS_STORE),
          APPROVAL_ALERT_RETENTION_MS);
      // Rebuild the due index from the (restored) store.
      try (KeyValueIterator<Windowed<Bytes>, byte[]> it = state.store.all()) {
        while (it.hasNext()) {
          KeyValue<Windowed<Bytes>, byte[]> kv = it.next();
          long t = kv.key.window().start();
          if (t < state.oldest()) {
            continue;
          }
          ApprovalState s = StateCodec.decode(kv.value);
          if (s.pending() != null) {
            due.put(new DueKey(t, new String(kv.key.key().get(), StandardCharsets.UTF_8)),
                new DueValue(s.pending(), false));
          }
        }
      }
      if (clockKind == DetectorClock.PUNCTUATION) {
        context.schedule(Duration.ofMillis(APPROVAL_CHECK_INTERVAL_MS), PunctuationType.STREAM_TIME,
            this::check);
      }
    }

    /** {@code ctx.stream_time()}: the task's stream time, including the current record. */
    private long streamTime() {
      return clockKind == DetectorClock.RECORD ? streamTime : context.currentStreamTimeMs();
    }

    @Override
    public void process(Record<Object, Object> record) {
      OrderEvent event = (OrderEvent) record.value();
      long ts = record.timestamp();
      if (clockKind == DetectorClock.RECORD && ts > streamTime) {
        streamTime = ts; // what paystream shows the nodes: max(stream time, record time)
      }
      switch (event.eventType) {
        case APPROVAL_REQUESTED:
          requested(event, ts);
          break;
        case APPROVAL_COMPLETED:
        case APPROVAL_FAILED:
          settled(event, ts);
          break;
        default:
          break;
      }
      // Last node: nothing to forward to. Then paystream's TaskClock: observe the record's time
      // and fire the stream-time schedule if it is due (once; next = stream time + interval).
      if (clockKind == DetectorClock.RECORD) {
        if (nextCheck == Long.MIN_VALUE) {
          nextCheck = satAdd(streamTime, APPROVAL_CHECK_INTERVAL_MS);
        } else if (nextCheck <= streamTime) {
          nextCheck = satAdd(streamTime, APPROVAL_CHECK_INTERVAL_MS);
          check(streamTime);
        }
      }
    }

    /** The alert raised for {@code orderId} (its latest state), looking around {@code around}. */
    private Alert alertOf(byte[] orderKey, long around) {
      List<Entry> found = alerts.fetch(orderKey, satSub(around, APPROVAL_ALERT_RETENTION_MS),
          satAdd(around, APPROVAL_ALERT_RETENTION_MS));
      if (found.isEmpty()) {
        return null;
      }
      return Alert.fromJson(found.get(found.size() - 1).value());
    }

    private void emit(Alert alert, long ts) {
      byte[] bytes = alert.toJson(json);
      byte[] key = alert.orderId.getBytes(StandardCharsets.UTF_8);
      context.forward(new Record<>(key, bytes, ts), ALERTS_SINK);
      alerts.put(key, alert.requestedTs, bytes);
      if (alert.status.equals("TIMEOUT")) {
        ALERTS_TIMEOUT.increment();
      } else {
        ALERTS_RESOLVED.increment();
      }
    }

    private List<Map.Entry<Long, ApprovalState>> entries(byte[] key, long from, long to) {
      List<Entry> raw = state.fetch(key, from, to);
      if (raw.isEmpty()) {
        return List.of();
      }
      List<Map.Entry<Long, ApprovalState>> out = new ArrayList<>(raw.size());
      for (Entry e : raw) {
        out.add(Map.entry(e.time(), StateCodec.decode(e.value())));
      }
      return out;
    }

    private void raise(String orderId, long requestedTs, Pending pending, long streamTime) {
      if (alertOf(orderId.getBytes(StandardCharsets.UTF_8), requestedTs) != null) {
        return;
      }
      long deadlineTs = satAdd(requestedTs, APPROVAL_TIMEOUT_MS);
      Alert a = new Alert();
      a.orderId = orderId;
      a.status = "TIMEOUT";
      a.memberId = pending.memberId();
      a.amount = pending.amount();
      a.currency = pending.currency();
      a.requestedTs = requestedTs;
      a.deadlineTs = deadlineTs;
      a.detectedAt = streamTime;
      a.resolvedBy = null;
      a.resolvedTs = null;
      emit(a, deadlineTs);
    }

    /** Alert every pending request that became due at {@code streamTime}. */
    private void check(long streamTime) {
      CHECKS.increment();
      long cutoff = satSub(satSub(streamTime, APPROVAL_TIMEOUT_MS), APPROVAL_GRACE_MS);
      if (cutoff <= checkedUpTo) {
        return;
      }
      checkedUpTo = cutoff;
      while (!due.isEmpty()) {
        Map.Entry<DueKey, DueValue> first = due.firstEntry();
        if (first.getKey().ts() > cutoff) {
          break;
        }
        due.pollFirstEntry();
        raise(first.getKey().orderId(), first.getKey().ts(), first.getValue().pending(),
            streamTime);
      }
    }

    private void requested(OrderEvent event, long ts) {
      if (satSub(ts, approvalRetentionMs()) > checkedUpTo) {
        check(streamTime());
      }
      byte[] key = event.order_id.getBytes(StandardCharsets.UTF_8);
      if (alertOf(key, ts) != null) {
        return;
      }
      long from = satSub(ts, dueAfterMs());
      long to = satAdd(ts, approvalRetentionMs());
      if (!state.isEmpty(key, from, to)) {
        return;
      }
      Pending pending = new Pending(event.member_id, event.amount, event.currency);
      if (!state.put(key, ts, codec.pending(pending))) {
        APPROVAL_LATE.increment();
        return;
      }
      if (ts <= checkedUpTo) {
        raise(event.order_id, ts, pending, streamTime());
      } else {
        due.put(new DueKey(ts, event.order_id), new DueValue(pending, true));
      }
    }

    private void settled(OrderEvent event, long ts) {
      byte[] key = event.order_id.getBytes(StandardCharsets.UTF_8);
      long dueAfter = dueAfterMs();
      // As paystream: a completion whose request is older than the lookup below, not yet
      // checked, is overdue already (this record moved stream time past it): check first, so it
      // is alerted now and resolved below, not alerted after its completion and left open.
      if (satSub(ts, dueAfter) > checkedUpTo) {
        check(streamTime());
      }
      List<Map.Entry<Long, ApprovalState>> found =
          entries(key, satSub(ts, dueAfter), satAdd(ts, dueAfter));
      byte[] settled = null;
      boolean marked = false;
      boolean unalerted = false;
      for (Map.Entry<Long, ApprovalState> e : found) {
        if (e.getValue().pending() != null) {
          if (settled == null) {
            settled = codec.settled(event.eventType);
          }
          state.put(key, e.getKey(), settled);
          DueValue d = due.remove(new DueKey(e.getKey(), event.order_id));
          if (d != null) {
            unalerted |= d.fresh();
          }
        }
        marked = true;
      }
      if (!marked && ts >= state.oldest()) {
        state.put(key, ts, codec.settled(event.eventType));
      }
      if (unalerted) {
        return;
      }
      Alert alert = alertOf(key, ts);
      if (alert != null && alert.status.equals("TIMEOUT")) {
        alert.status = "RESOLVED";
        alert.detectedAt = streamTime();
        alert.resolvedBy = event.eventType.name();
        alert.resolvedTs = ts;
        emit(alert, ts);
      }
    }
  }
}
