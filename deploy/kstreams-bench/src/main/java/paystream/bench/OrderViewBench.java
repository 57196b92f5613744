package paystream.bench;

import com.fasterxml.jackson.annotation.JsonIgnoreProperties;
import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.MapperFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.ObjectReader;
import com.fasterxml.jackson.databind.json.JsonMapper;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.common.utils.Utils;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.StoreBuilder;
import org.apache.kafka.streams.state.Stores;

/**
 * Kafka Streams baseline for paystream's order-view ingest ("ingest into the view" in
 * BENCHMARKS.md): the same per-record work as topology/src/order.rs, done by a Kafka Streams 4.1
 * Processor API app.
 *
 * <p>Per record: parse the JSON event (same checks and order as {@code parse_event}; invalid
 * records go to {@code <input>.DLQ} with the reason in a header), read the order's stored value from
 * a persistent RocksDB key-value store, fold the event with the same rules as {@code apply}, and put
 * the result back. The store is Kafka Streams' default persistent store with changelog logging on
 * (a compacted {@code <app-id>-orders-changelog} topic) and, like paystream's, no record cache, so
 * every put is one RocksDB write and one changelog record. Offsets are committed at-least-once every
 * 1000 ms.
 *
 * <p>Stored value format: byte-for-byte what paystream stores, i.e. one format-version byte (1)
 * followed by the postcard encoding of {@code StoredOrder} (varint lengths, zigzag varint i64,
 * event types as their names). So both systems write the same number of bytes to RocksDB and to
 * the changelog.
 *
 * <p>Measurement: the clock starts when the first record has been processed and stops when the
 * N-th has (start-up, the group rebalance and the final commit are excluded), as paystream's bench
 * does. Then the app closes (final commit) and exits.
 *
 * <p>Usage: {@code OrderViewBench --bootstrap-servers B --topic T --events N --threads K
 * --application-id A --state-dir D [--caching] [--compression lz4|none] [--timeout-s S]
 * [--verify-model FILE]}
 */
public final class OrderViewBench {

  static final String ORDERS_STORE = "orders";
  static final String DLQ_SINK = "dlq";
  /** Applied event ids remembered per order for dedup; paystream's {@code SEEN_CAPACITY}. */
  static final int SEEN_CAPACITY = 64;
  /** paystream's {@code codec::FORMAT_VERSION}. */
  static final byte FORMAT_VERSION = 1;
  /** paystream's {@code MAX_ID_BYTES}, {@code MAX_TEXT_BYTES}, {@code MAX_EVENT_BYTES}. */
  static final int MAX_ID_BYTES = 256;
  static final int MAX_TEXT_BYTES = 256;
  static final int MAX_EVENT_BYTES = 64 * 1024;
  /** paystream's {@code DEFAULT_MAX_FUTURE_MS} ({@code --max-future-ms}). */
  static final long MAX_FUTURE_MS = 3_600_000L;
  /** The default pipeline's first node forwards valid records to this node. */
  static final String NEXT_NODE = DefaultPipeline.SMS_NODE;

  // ---------------------------------------------------------------------------------------------
  // Progress shared by all stream threads: how many records were processed, and when.
  // ---------------------------------------------------------------------------------------------

  static final AtomicLong PROCESSED = new AtomicLong();
  static final AtomicLong FIRST_NANOS = new AtomicLong(0);
  static volatile long lastNanos = 0;
  static volatile long target = Long.MAX_VALUE;
  static final CountDownLatch DONE = new CountDownLatch(1);
  static final AtomicReference<String> FAILURE = new AtomicReference<>();
  /** Outcome counters, to check the run did what paystream would (printed at the end). */
  static final AtomicLong APPLIED = new AtomicLong();
  static final AtomicLong DUPLICATES = new AtomicLong();
  static final AtomicLong IGNORED = new AtomicLong();
  static final AtomicLong DEAD_LETTERED = new AtomicLong();

  /** Called after each record has been fully processed (paystream counts at the same point). */
  static void recordProcessed() {
    long n = PROCESSED.incrementAndGet();
    if (n == 1) {
      FIRST_NANOS.compareAndSet(0, System.nanoTime());
    }
    if (n == target) {
      lastNanos = System.nanoTime();
      DONE.countDown();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The domain: event types, events, stored orders (mirrors topology/src/order.rs).
  // ---------------------------------------------------------------------------------------------

  /** {@code EventType}: wire name and lifecycle rank. */
  enum EventType {
    APPROVAL_REQUESTED(0),
    APPROVAL_CALLBACK_COMPLETED(1),
    APPROVAL_COMPLETED(2),
    APPROVAL_FAILED(2),
    CANCEL_REQUESTED(3),
    CANCELLED(4);

    final int rank;
    final byte[] wireName;

    EventType(int rank) {
      this.rank = rank;
      this.wireName = name().getBytes(StandardCharsets.UTF_8);
    }

    /** The type for a wire name, or null (a switch: no exception on the hot path). */
    static EventType parse(String s) {
      switch (s) {
        case "APPROVAL_REQUESTED": return APPROVAL_REQUESTED;
        case "APPROVAL_CALLBACK_COMPLETED": return APPROVAL_CALLBACK_COMPLETED;
        case "APPROVAL_COMPLETED": return APPROVAL_COMPLETED;
        case "APPROVAL_FAILED": return APPROVAL_FAILED;
        case "CANCEL_REQUESTED": return CANCEL_REQUESTED;
        case "CANCELLED": return CANCELLED;
        default: return null;
      }
    }
  }

  /**
   * The JSON of one event, bound by Jackson databind in one pass (like paystream's serde derive).
   * Unknown fields are dropped, as in paystream. Boxed types so that a missing or null field can be
   * told apart (paystream: {@code null} counts as missing).
   */
  @JsonIgnoreProperties(ignoreUnknown = true)
  static final class OrderEvent {
    public String order_id;
    public String event_id;
    public String type;
    public Long amount;
    public String currency;
    public String member_id;
    public String phone;
    public Long ts;
    /** {@link #type} parsed; set by {@link #parseEvent}. */
    EventType eventType;
  }

  /** {@code InvalidEvent}: a stable reason code (DLQ header) and a detail for humans. */
  static final class InvalidEvent extends Exception {
    final String reason;

    InvalidEvent(String reason, String detail) {
      super(detail, null, false, false); // no stack trace: this is data, not a bug
      this.reason = reason;
    }
  }

  /** {@code StoredOrder}: the view plus the ids of the last applied events (oldest first). */
  static final class StoredOrder {
    String orderId;
    EventType state;
    long amount;
    String currency;
    String memberId;
    long createdTs;
    long updatedTs;
    long events; // u32 in paystream; kept in a long and saturated at 2^32-1 like saturating_add
    String lastEventId;
    ArrayList<String> seen;
  }

  /** JSON reader shared by all threads (ObjectReader is immutable and thread-safe). */
  static final ObjectReader EVENT_READER;

  static {
    ObjectMapper mapper = JsonMapper.builder()
        // serde_json rejects "123" for an i64 and 123 for a String; so does this.
        .disable(MapperFeature.ALLOW_COERCION_OF_SCALARS)
        // serde_json rejects 1.5 for an i64.
        .disable(DeserializationFeature.ACCEPT_FLOAT_AS_INT)
        // serde_json::from_slice rejects trailing characters after the object.
        .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
        .build();
    EVENT_READER = mapper.readerFor(OrderEvent.class);
  }

  /**
   * {@code parse_event}: the same checks in the same order; the first failure is the reason.
   * {@code decoder} is a strict UTF-8 decoder owned by the calling processor.
   */
  static OrderEvent parseEvent(byte[] key, byte[] value, CharsetDecoder decoder)
      throws InvalidEvent {
    if (key == null) {
      throw new InvalidEvent("missing_key", "record has no key");
    }
    if (value == null) {
      throw new InvalidEvent("missing_value", "record has no value (a tombstone)");
    }
    if (value.length > MAX_EVENT_BYTES) {
      throw new InvalidEvent("record_too_large", "value is " + value.length
          + " bytes; at most " + MAX_EVENT_BYTES + " are accepted");
    }
    String keyStr;
    try {
      // new String(key, UTF_8) would replace bad bytes silently; paystream rejects them.
      keyStr = decoder.decode(ByteBuffer.wrap(key)).toString();
    } catch (CharacterCodingException e) {
      throw new InvalidEvent("invalid_utf8_key", "key is not utf-8: " + e);
    }
    OrderEvent event;
    try {
      event = EVENT_READER.readValue(value);
    } catch (JsonProcessingException e) {
      // Not JSON, not an object, or a field of the wrong JSON type.
      throw new InvalidEvent("invalid_json", e.getOriginalMessage());
    } catch (IOException e) { // cannot happen reading a byte[]; kept for the compiler
      throw new InvalidEvent("invalid_json", String.valueOf(e.getMessage()));
    }
    if (event == null) { // the JSON literal `null`
      throw new InvalidEvent("invalid_json", "expected a json object, got null");
    }
    if (event.order_id == null) {
      throw new InvalidEvent("missing_field", "required field \"order_id\" is missing");
    }
    if (event.event_id == null) {
      throw new InvalidEvent("missing_field", "required field \"event_id\" is missing");
    }
    if (event.type == null) {
      throw new InvalidEvent("missing_field", "required field \"type\" is missing");
    }
    if (event.ts == null) {
      throw new InvalidEvent("missing_field", "required field \"ts\" is missing");
    }
    event.eventType = EventType.parse(event.type);
    if (event.eventType == null) {
      throw new InvalidEvent("unknown_type", "unknown event type \"" + event.type + "\"");
    }
    if (event.order_id.isEmpty()) {
      throw new InvalidEvent("empty_id", "order_id is empty");
    }
    if (event.event_id.isEmpty()) {
      throw new InvalidEvent("empty_id", "event_id is empty");
    }
    checkLength("order_id", event.order_id, MAX_ID_BYTES);
    checkLength("event_id", event.event_id, MAX_ID_BYTES);
    checkLength("currency", event.currency, MAX_TEXT_BYTES);
    checkLength("member_id", event.member_id, MAX_TEXT_BYTES);
    checkLength("phone", event.phone, MAX_TEXT_BYTES);
    if (!keyStr.equals(event.order_id)) {
      throw new InvalidEvent("key_mismatch",
          "record key \"" + keyStr + "\" differs from order_id \"" + event.order_id + "\"");
    }
    return event;
  }

  /** {@code check_lengths}: {@code field_too_long} for a field over its bound (in UTF-8 bytes). */
  static void checkLength(String name, String value, int max) throws InvalidEvent {
    if (value == null || value.length() * 3 <= max) {
      return; // a UTF-16 unit is at most 3 UTF-8 bytes: surely within the bound
    }
    int len = value.getBytes(StandardCharsets.UTF_8).length;
    if (len > max) {
      throw new InvalidEvent("field_too_long",
          name + " is " + len + " bytes; at most " + max + " are accepted");
    }
  }

  /** Rules 3 and 4 of {@code apply} ({@code may_follow}): null if allowed, else the reason. */
  static String mayFollow(EventType state, EventType next) {
    if (state == EventType.APPROVAL_FAILED || state == EventType.CANCELLED) {
      return "terminal";
    }
    if (state == EventType.APPROVAL_COMPLETED) {
      // A completed payment can still be cancelled; nothing else changes it.
      return (next == EventType.CANCEL_REQUESTED || next == EventType.CANCELLED) ? null : "terminal";
    }
    return next.rank >= state.rank ? null : "stale";
  }

  /**
   * {@code apply}, updating {@code current} in place (the caller owns it: it was just decoded).
   * Returns null if applied, "duplicate" if the event id was already applied, else the reason it
   * was ignored ("terminal" or "stale").
   */
  static String apply(StoredOrder current, OrderEvent event) {
    // Rule 2: duplicate (linear scan of at most 64 ids, as paystream's Vec::contains).
    if (current.seen.contains(event.event_id)) {
      return "duplicate";
    }
    String why = mayFollow(current.state, event.eventType);
    if (why != null) {
      return why;
    }
    current.state = event.eventType;
    current.events = Math.min(current.events + 1, 0xFFFF_FFFFL);
    current.lastEventId = event.event_id;
    current.createdTs = Math.min(current.createdTs, event.ts);
    current.updatedTs = Math.max(current.updatedTs, event.ts);
    if (event.amount != null) {
      current.amount = event.amount;
    }
    if (event.currency != null) {
      current.currency = event.currency;
    }
    if (event.member_id != null) {
      current.memberId = event.member_id;
    }
    current.seen.add(event.event_id);
    if (current.seen.size() > SEEN_CAPACITY) {
      current.seen.subList(0, current.seen.size() - SEEN_CAPACITY).clear();
    }
    return null;
  }

  /** Rule 1 of {@code apply} ({@code first_event}): the first event creates the view. */
  static StoredOrder firstEvent(OrderEvent event) {
    StoredOrder o = new StoredOrder();
    o.orderId = event.order_id;
    o.state = event.eventType;
    o.amount = event.amount == null ? 0 : event.amount;
    o.currency = event.currency == null ? "" : event.currency;
    o.memberId = event.member_id == null ? "" : event.member_id;
    o.createdTs = event.ts;
    o.updatedTs = event.ts;
    o.events = 1;
    o.lastEventId = event.event_id;
    o.seen = new ArrayList<>(4);
    o.seen.add(event.event_id);
    return o;
  }

  // ---------------------------------------------------------------------------------------------
  // Stored bytes: version byte + postcard layout of StoredOrder (same bytes as paystream's).
  // Field order = struct order: view { order_id, state, amount, currency, member_id, created_ts,
  // updated_ts, events, last_event_id }, seen. Strings: varint length + UTF-8; i64: zigzag varint;
  // u32: varint; Vec: varint length + elements; EventType: its name as a string.
  // ---------------------------------------------------------------------------------------------

  /** Growable output buffer reused per processor (one copy out per record). */
  static final class Encoder {
    byte[] buf = new byte[512];
    int len;

    byte[] encode(StoredOrder o) {
      len = 0;
      put(FORMAT_VERSION);
      string(o.orderId);
      bytes(o.state.wireName);
      varint(zigzag(o.amount));
      string(o.currency);
      string(o.memberId);
      varint(zigzag(o.createdTs));
      varint(zigzag(o.updatedTs));
      varint(o.events);
      string(o.lastEventId);
      varint(o.seen.size());
      for (String id : o.seen) {
        string(id);
      }
      return Arrays.copyOf(buf, len); // the store and the changelog producer get their own copy
    }

    private static long zigzag(long v) {
      return (v << 1) ^ (v >> 63);
    }

    private void varint(long v) { // unsigned LEB128
      while ((v & ~0x7FL) != 0) {
        put((byte) ((v & 0x7F) | 0x80));
        v >>>= 7;
      }
      put((byte) v);
    }

    private void string(String s) {
      bytes(s.getBytes(StandardCharsets.UTF_8));
    }

    private void bytes(byte[] b) {
      varint(b.length);
      ensure(b.length);
      System.arraycopy(b, 0, buf, len, b.length);
      len += b.length;
    }

    private void put(byte b) {
      ensure(1);
      buf[len++] = b;
    }

    private void ensure(int extra) {
      if (len + extra > buf.length) {
        buf = Arrays.copyOf(buf, Math.max(buf.length * 2, len + extra));
      }
    }
  }

  /** Inverse of {@link Encoder}; throws on anything malformed (paystream stops the task then). */
  static final class Decoder {
    private final byte[] b;
    private int pos;

    private Decoder(byte[] b) {
      this.b = b;
    }

    static StoredOrder decode(byte[] bytes) {
      if (bytes.length == 0) {
        throw new IllegalStateException("empty value: missing format version byte");
      }
      if (bytes[0] != FORMAT_VERSION) {
        throw new IllegalStateException("unsupported value format version " + bytes[0]);
      }
      Decoder d = new Decoder(bytes);
      d.pos = 1;
      StoredOrder o = new StoredOrder();
      o.orderId = d.string();
      String state = d.string();
      o.state = EventType.parse(state);
      if (o.state == null) {
        throw new IllegalStateException("malformed value: unknown event type " + state);
      }
      o.amount = unzigzag(d.varint());
      o.currency = d.string();
      o.memberId = d.string();
      o.createdTs = unzigzag(d.varint());
      o.updatedTs = unzigzag(d.varint());
      o.events = d.varint();
      o.lastEventId = d.string();
      int n = (int) d.varint();
      o.seen = new ArrayList<>(n + 1);
      for (int i = 0; i < n; i++) {
        o.seen.add(d.string());
      }
      if (d.pos != bytes.length) {
        throw new IllegalStateException("malformed value: trailing bytes");
      }
      return o;
    }

    private static long unzigzag(long v) {
      return (v >>> 1) ^ -(v & 1);
    }

    private long varint() {
      long v = 0;
      for (int shift = 0; shift < 64; shift += 7) {
        byte x = b[pos++];
        v |= (long) (x & 0x7F) << shift;
        if ((x & 0x80) == 0) {
          return v;
        }
      }
      throw new IllegalStateException("malformed value: varint too long");
    }

    private String string() {
      int n = (int) varint();
      String s = new String(b, pos, n, StandardCharsets.UTF_8);
      pos += n;
      return s;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The processor: glue between parseEvent/apply and the store (OrderViewProcessor in order.rs).
  // ---------------------------------------------------------------------------------------------

  /** No readable {@code ts} (see {@link #readTs}). */
  static final long NO_TS = Long.MIN_VALUE;
  static final JsonFactory TS_JSON = new JsonFactory();

  /**
   * The event's {@code ts} alone, as paystream's {@code EventTime} extractor reads it (serde into
   * {@code struct Ts { ts: i64 }}: the whole value must be one JSON object, other fields are
   * skipped but scanned), or {@link #NO_TS}.
   */
  static long readTs(byte[] value) {
    if (value == null || value.length > MAX_EVENT_BYTES) {
      return NO_TS;
    }
    try (JsonParser p = TS_JSON.createParser(value)) {
      if (p.nextToken() != JsonToken.START_OBJECT) {
        return NO_TS;
      }
      long ts = NO_TS;
      boolean seen = false;
      JsonToken t;
      while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
        String name = p.currentName();
        JsonToken v = p.nextToken();
        if (name.equals("ts")) {
          if (seen || v != JsonToken.VALUE_NUMBER_INT
              || p.getNumberType() == JsonParser.NumberType.BIG_INTEGER) {
            return NO_TS; // duplicate field, null, not an integer, or beyond i64
          }
          seen = true;
          ts = p.getLongValue();
        } else {
          p.skipChildren();
        }
      }
      if (t != JsonToken.END_OBJECT || p.nextToken() != null) {
        return NO_TS;
      }
      return seen ? ts : NO_TS;
    } catch (IOException e) {
      return NO_TS;
    }
  }

  /**
   * {@code TimePolicy::time_of} for a readable time: null if {@code ts} is usable at wall clock
   * {@code now}, else {reason, detail}.
   */
  static String[] refusedTime(long ts, long now) {
    if (ts < 0) {
      return new String[] {"invalid_timestamp", "record time " + ts + " is negative"};
    }
    long ahead = DefaultPipeline.satSub(ts, now);
    if (ahead > MAX_FUTURE_MS) {
      return new String[] {"timestamp_in_future", "record time " + ts + " is " + ahead
          + " ms ahead of the wall clock " + now + "; at most " + MAX_FUTURE_MS
          + " ms are accepted (--max-future-ms)"};
    }
    return null;
  }

  /**
   * The source's timestamp extractor: the event's JSON {@code ts} (paystream's default
   * {@code --timestamp-source event}). Kafka Streams drops a record whose extracted time is
   * negative without telling anyone; paystream dead-letters a record it cannot time and does not
   * let it move stream time. So a record without a usable time gets the partition's current time
   * here (it does not move stream time either), and the order-view node dead-letters it.
   */
  static final class EventTimeExtractor implements TimestampExtractor {
    @Override
    public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
      long ts = readTs((byte[]) record.value());
      if (ts == NO_TS || refusedTime(ts, System.currentTimeMillis()) != null) {
        return Math.max(partitionTime, 0);
      }
      return ts;
    }
  }

  /**
   * The first node: the task's record checks (wrong partition, time policy), then
   * {@code OrderViewProcessor} of order.rs. In the default pipeline it forwards each valid record,
   * with its parsed event as the value, to the SMS node.
   */
  static final class OrderViewProcessor implements Processor<byte[], byte[], Object, Object> {
    private final boolean forward;
    private final int inputPartitions;
    private ProcessorContext<Object, Object> context;
    private KeyValueStore<Bytes, byte[]> store;
    private final Encoder encoder = new Encoder();
    // One per processor instance; a processor runs on one stream thread at a time.
    private final CharsetDecoder utf8 = StandardCharsets.UTF_8.newDecoder()
        .onMalformedInput(CodingErrorAction.REPORT)
        .onUnmappableCharacter(CodingErrorAction.REPORT);

    OrderViewProcessor(boolean forward, int inputPartitions) {
      this.forward = forward;
      this.inputPartitions = inputPartitions;
    }

    @Override
    public void init(ProcessorContext<Object, Object> context) {
      this.context = context;
      this.store = context.getStateStore(ORDERS_STORE);
    }

    private void deadLetter(Record<byte[], byte[]> record, String reason, String detail) {
      // Dead-letter with the reason in headers (paystream: paystream.dlq.reason / .detail).
      Record<byte[], byte[]> dead = record.withHeaders(record.headers());
      dead.headers().add("paystream.dlq.reason", reason.getBytes(StandardCharsets.UTF_8));
      dead.headers().add("paystream.dlq.detail",
          String.valueOf(detail).getBytes(StandardCharsets.UTF_8));
      context.forward(dead, DLQ_SINK);
      DEAD_LETTERED.incrementAndGet();
      recordProcessed();
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
      // The task's check (engine/task.rs): a key that hashes to another partition (murmur2, as
      // the Java producer) is dead-lettered before any node sees it.
      byte[] k = record.key();
      if (k != null && k.length > 0) {
        int expected = Utils.toPositive(Utils.murmur2(k)) % inputPartitions;
        int actual = context.recordMetadata().map(m -> m.partition()).orElse(expected);
        if (expected != actual) {
          deadLetter(record, "wrong_partition", "the key hashes to partition " + expected
              + " (murmur2, as Java's default partitioner) but the record is on partition "
              + actual + ": queries look for it on " + expected);
          return;
        }
      }
      OrderEvent event;
      try {
        event = parseEvent(k, record.value(), utf8);
      } catch (InvalidEvent invalid) {
        // paystream times the record first (TimePolicy, ts alone) and only then parses it: a
        // readable but refused time is the reason even when the rest is invalid too.
        long ts = readTs(record.value());
        String[] refused = ts == NO_TS ? null : refusedTime(ts, System.currentTimeMillis());
        if (refused != null) {
          deadLetter(record, refused[0], refused[1]);
        } else {
          deadLetter(record, invalid.reason, invalid.getMessage());
        }
        return;
      }
      String[] refused = refusedTime(event.ts, System.currentTimeMillis());
      if (refused != null) {
        deadLetter(record, refused[0], refused[1]);
        return;
      }
      // The key is the record key's bytes, which equal order_id's UTF-8 (checked above).
      Bytes key = Bytes.wrap(k);
      byte[] stored = store.get(key);
      if (stored == null) {
        store.put(key, encoder.encode(firstEvent(event)));
        APPLIED.incrementAndGet();
      } else {
        // Undecodable bytes throw, which stops the thread (and the app): like paystream, never
        // overwrite a value this code cannot read.
        StoredOrder current = Decoder.decode(stored);
        String outcome = apply(current, event);
        if (outcome == null) {
          store.put(key, encoder.encode(current));
          APPLIED.incrementAndGet();
        } else if (outcome.equals("duplicate")) {
          // Duplicate or ignored: nothing to write (paystream since the exactly-once engine: the
          // store only holds committed state, which its changelog holds too).
          DUPLICATES.incrementAndGet();
        } else {
          IGNORED.incrementAndGet();
        }
      }
      if (forward) {
        // The record time is the event's ts (the extractor read it; the checks above passed).
        context.forward(new Record<Object, Object>(k, event, event.ts, record.headers()),
            NEXT_NODE);
      }
      recordProcessed();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring and measurement.
  // ---------------------------------------------------------------------------------------------

  /** Output topics of the default pipeline (paystream's SEND_SMS, SEND_SMS.SUPPRESSED, ...). */
  record Outputs(String sms, String suppressed, String alerts) {}

  /**
   * The topology: order view alone ({@code outputs == null}), or paystream's default chain
   * order view → SMS → missing-completion detector (topology/src/shipped.rs).
   */
  static Topology topology(String inputTopic, String dlqTopic, boolean caching,
      int inputPartitions, Outputs outputs, DefaultPipeline.DetectorClock clock) {
    Topology t = new Topology();
    // The record time is the event's JSON ts, as paystream's default --timestamp-source event.
    t.addSource(org.apache.kafka.streams.AutoOffsetReset.earliest(), "source",
        new EventTimeExtractor(), new ByteArrayDeserializer(), new ByteArrayDeserializer(),
        inputTopic);
    boolean chain = outputs != null;
    t.addProcessor("order-view", () -> new OrderViewProcessor(chain, inputPartitions), "source");
    // Default persistent (RocksDB) store; logging (changelog) is on by default. Caching is off by
    // default for Processor API stores, which matches paystream (every put reaches RocksDB and the
    // changelog). --caching turns on Kafka Streams' record cache (the DSL's default) for reference.
    StoreBuilder<KeyValueStore<Bytes, byte[]>> store = Stores.keyValueStoreBuilder(
        Stores.persistentKeyValueStore(ORDERS_STORE), Serdes.Bytes(), Serdes.ByteArray());
    if (caching) {
      store = store.withCachingEnabled();
    }
    t.addStateStore(store, "order-view");
    t.addSink(DLQ_SINK, dlqTopic, new ByteArraySerializer(), new ByteArraySerializer(),
        "order-view");
    if (chain) {
      t.addProcessor(DefaultPipeline.SMS_NODE, DefaultPipeline.SmsProcessor::new, "order-view");
      t.addProcessor(DefaultPipeline.APPROVAL_NODE,
          () -> new DefaultPipeline.ApprovalTimeoutProcessor(clock), DefaultPipeline.SMS_NODE);
      for (var e : DefaultPipeline.stores()) {
        StoreBuilder<?> b = e.getKey();
        if (caching) {
          b = e.getKey().withCachingEnabled();
        }
        t.addStateStore(b, e.getValue());
      }
      t.addSink(DefaultPipeline.SMS_SINK, outputs.sms(), new ByteArraySerializer(),
          new ByteArraySerializer(), DefaultPipeline.SMS_NODE);
      t.addSink(DefaultPipeline.SUPPRESSED_SINK, outputs.suppressed(), new ByteArraySerializer(),
          new ByteArraySerializer(), DefaultPipeline.SMS_NODE);
      t.addSink(DefaultPipeline.ALERTS_SINK, outputs.alerts(), new ByteArraySerializer(),
          new ByteArraySerializer(), DefaultPipeline.APPROVAL_NODE);
    }
    return t;
  }

  /**
   * Create the DLQ and the default pipeline's output topics with the input's partition count, as
   * paystream does (src/instance.rs; the broker has auto.create.topics.enable=false): the outputs
   * with {@code message.timestamp.type=LogAppendTime} (so their retention follows when they were
   * written, not the event times they carry), the DLQ with the broker's default. Returns the
   * input's partition count.
   */
  static int ensureTopics(String bootstrap, String input, String dlq, List<String> outputs)
      throws Exception {
    Properties p = new Properties();
    p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    try (Admin admin = Admin.create(p)) {
      int partitions = admin.describeTopics(List.of(input)).allTopicNames().get()
          .get(input).partitions().size();
      List<NewTopic> wanted = new ArrayList<>();
      wanted.add(new NewTopic(dlq, partitions, (short) 1));
      for (String topic : outputs) {
        wanted.add(new NewTopic(topic, partitions, (short) 1)
            .configs(Map.of("message.timestamp.type", "LogAppendTime")));
      }
      for (NewTopic topic : wanted) {
        try {
          admin.createTopics(List.of(topic)).all().get();
        } catch (ExecutionException e) {
          if (!(e.getCause() instanceof TopicExistsException)) {
            throw e;
          }
        }
      }
      return partitions;
    }
  }

  /** Peak resident set size of this JVM in MiB (Linux VmHWM), or -1. */
  static long peakRssMiB() {
    try {
      for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
        if (line.startsWith("VmHWM:")) {
          return Long.parseLong(line.replaceAll("[^0-9]", "")) / 1024;
        }
      }
    } catch (IOException | NumberFormatException e) {
      // not Linux: no figure
    }
    return -1;
  }

  /**
   * Check the run's result: read the store's changelog topic to its end (last value per key wins,
   * as in a restore), decode every order, and compare its view with the expected final views that
   * {@code paystream produce --model-out} wrote (JSON lines of {@code OrderView}). Returns the
   * number of mismatches (missing, extra or different orders), printing the first few.
   */
  static long verify(String bootstrap, String changelog, Path modelFile) throws IOException {
    Map<String, byte[]> latest = new HashMap<>();
    Properties p = new Properties();
    p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
    try (KafkaConsumer<byte[], byte[]> c =
        new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
      List<TopicPartition> parts = new ArrayList<>();
      for (PartitionInfo pi : c.partitionsFor(changelog)) {
        parts.add(new TopicPartition(changelog, pi.partition()));
      }
      c.assign(parts);
      c.seekToBeginning(parts);
      Map<TopicPartition, Long> end = c.endOffsets(parts);
      while (parts.stream().anyMatch(tp -> c.position(tp) < end.get(tp))) {
        for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(500))) {
          String k = new String(r.key(), StandardCharsets.UTF_8);
          if (r.value() == null) {
            latest.remove(k);
          } else {
            latest.put(k, r.value());
          }
        }
      }
    }
    ObjectMapper json = new ObjectMapper();
    long mismatches = 0;
    long expected = 0;
    for (String line : Files.readAllLines(modelFile)) {
      if (line.isBlank()) {
        continue;
      }
      expected++;
      JsonNode m = json.readTree(line);
      String id = m.get("order_id").asText();
      byte[] bytes = latest.remove(id);
      String got;
      if (bytes == null) {
        got = "missing";
      } else {
        StoredOrder o = Decoder.decode(bytes);
        boolean same = o.orderId.equals(id)
            && o.state.name().equals(m.get("state").asText())
            && o.amount == m.get("amount").asLong()
            && o.currency.equals(m.get("currency").asText())
            && o.memberId.equals(m.get("member_id").asText())
            && o.createdTs == m.get("created_ts").asLong()
            && o.updatedTs == m.get("updated_ts").asLong()
            && o.events == m.get("events").asLong()
            && o.lastEventId.equals(m.get("last_event_id").asText());
        got = same ? null : String.format("state=%s amount=%d currency=%s member_id=%s created_ts=%d"
            + " updated_ts=%d events=%d last_event_id=%s", o.state, o.amount, o.currency,
            o.memberId, o.createdTs, o.updatedTs, o.events, o.lastEventId);
      }
      if (got != null) {
        if (++mismatches <= 5) {
          System.err.printf("verify: %s expected %s, got %s%n", id, line, got);
        }
      }
    }
    for (String extra : latest.keySet()) {
      if (++mismatches <= 5) {
        System.err.printf("verify: unexpected order %s in the changelog%n", extra);
      }
    }
    System.out.printf("verify: %d orders expected, %d mismatches%n", expected, mismatches);
    return mismatches;
  }

  static Map<String, String> parseArgs(String[] args) {
    Map<String, String> m = new HashMap<>();
    for (int i = 0; i < args.length; i++) {
      String a = args[i];
      if (!a.startsWith("--")) {
        throw new IllegalArgumentException("unexpected argument " + a);
      }
      if (a.equals("--caching")) {
        m.put("caching", "true");
      } else if (i + 1 < args.length) {
        m.put(a.substring(2), args[++i]);
      } else {
        throw new IllegalArgumentException(a + " needs a value");
      }
    }
    return m;
  }

  static String need(Map<String, String> m, String k) {
    String v = m.get(k);
    if (v == null) {
      throw new IllegalArgumentException("missing --" + k);
    }
    return v;
  }

  public static void main(String[] args) throws Exception {
    Map<String, String> a = parseArgs(args);
    String bootstrap = need(a, "bootstrap-servers");
    String topic = need(a, "topic");
    long events = Long.parseLong(need(a, "events"));
    int threads = Integer.parseInt(a.getOrDefault("threads", "1"));
    String appId = need(a, "application-id");
    String stateDir = need(a, "state-dir");
    boolean caching = a.containsKey("caching");
    String compression = a.getOrDefault("compression", "lz4");
    long timeoutS = Long.parseLong(a.getOrDefault("timeout-s", "1800"));
    String topologyName = a.getOrDefault("topology", "view");
    boolean full;
    switch (topologyName) {
      case "view": full = false; break;
      case "default": full = true; break;
      default: throw new IllegalArgumentException("--topology is view or default");
    }
    String guarantee = a.getOrDefault("guarantee", StreamsConfig.AT_LEAST_ONCE);
    // paystream's --commit-interval-ms defaults (src/config.rs): 100 ms under exactly_once_v2,
    // 1000 ms under at_least_once. (Kafka Streams' own defaults: 100 and 30000.)
    long commitMs;
    switch (guarantee) {
      case StreamsConfig.AT_LEAST_ONCE: commitMs = 1000; break;
      case StreamsConfig.EXACTLY_ONCE_V2: commitMs = 100; break;
      default: throw new IllegalArgumentException("--guarantee is at_least_once or exactly_once_v2");
    }
    commitMs = Long.parseLong(a.getOrDefault("commit-interval-ms", Long.toString(commitMs)));
    DefaultPipeline.DetectorClock clock =
        DefaultPipeline.DetectorClock.valueOf(a.getOrDefault("detector-clock", "record")
            .toUpperCase(java.util.Locale.ROOT));
    String outPrefix = a.getOrDefault("output-prefix", appId + "-");
    String dlq = a.getOrDefault("dlq-topic", topic + ".DLQ");
    Outputs outputs = full ? new Outputs(outPrefix + "SEND_SMS", outPrefix + "SEND_SMS.SUPPRESSED",
        outPrefix + "APPROVAL_TIMEOUT") : null;
    target = events;

    int partitions = ensureTopics(bootstrap, topic, dlq, full
        ? List.of(outputs.sms(), outputs.suppressed(), outputs.alerts()) : List.of());

    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
    p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, commitMs);
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
    // paystream's producer compresses changelog batches with lz4 (src/kafka/client.rs); Kafka's
    // default is none. acks=all + idempotence are already the Kafka 4 producer defaults, as in
    // paystream. Everything else is Kafka Streams' default.
    p.put(StreamsConfig.producerPrefix(ProducerConfig.COMPRESSION_TYPE_CONFIG), compression);

    Topology topology = topology(topic, dlq, caching, partitions, outputs, clock);
    KafkaStreams streams = new KafkaStreams(topology, p);
    streams.setUncaughtExceptionHandler(e -> {
      FAILURE.compareAndSet(null, "stream thread died: " + e);
      DONE.countDown();
      return StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
    });
    streams.setStateListener((now, before) -> {
      if (now == KafkaStreams.State.ERROR) {
        FAILURE.compareAndSet(null, "kafka streams went to ERROR");
        DONE.countDown();
      }
    });

    String what = full ? "default topology" : "order view";
    System.err.printf("kstreams-bench: app %s, %s, %s (commit every %d ms), %d thread(s),"
        + " topic %s, %d events, caching %s, compression %s%s, max heap %d MiB%n", appId, what,
        guarantee, commitMs, threads, topic, events, caching, compression,
        full ? ", detector clock " + clock.name().toLowerCase(java.util.Locale.ROOT) : "",
        Runtime.getRuntime().maxMemory() >> 20);
    long startNanos = System.nanoTime();
    streams.start();
    boolean finished = DONE.await(timeoutS, TimeUnit.SECONDS);
    long first = FIRST_NANOS.get();
    String failure = FAILURE.get();
    if (!finished || failure != null) {
      System.err.printf("kstreams-bench: FAILED (%s) after %d of %d records%n",
          failure != null ? failure : "timeout after " + timeoutS + " s", PROCESSED.get(), events);
      streams.close(Duration.ofSeconds(30));
      System.exit(1);
    }
    double seconds = (lastNanos - first) / 1e9;
    long rss = peakRssMiB();
    // Close outside the measured window: final commit and changelog flush.
    long closeStart = System.nanoTime();
    streams.close(Duration.ofSeconds(120));
    double closeS = (System.nanoTime() - closeStart) / 1e9;
    long rssAfterClose = peakRssMiB();

    System.out.printf("start-up (start → first record processed): %.2f s%n",
        (first - startNanos) / 1e9);
    System.out.printf("processed %d records: applied %d, duplicate %d, ignored %d,"
        + " dead-lettered %d%n", PROCESSED.get(), APPLIED.get(), DUPLICATES.get(), IGNORED.get(),
        DEAD_LETTERED.get());
    if (full) {
      System.out.printf("sms: sent %d, suppressed %d, late %d; approval: TIMEOUT %d,"
          + " RESOLVED %d, late %d, checks %d%n", DefaultPipeline.SMS_SENT.sum(),
          DefaultPipeline.SMS_SUPPRESSED.sum(), DefaultPipeline.SMS_LATE.sum(),
          DefaultPipeline.ALERTS_TIMEOUT.sum(), DefaultPipeline.ALERTS_RESOLVED.sum(),
          DefaultPipeline.APPROVAL_LATE.sum(), DefaultPipeline.CHECKS.sum());
    }
    System.out.printf("first → %d-th record: %.3f s%n", events, seconds);
    System.out.printf("close (final commit): %.2f s%n", closeS);
    System.out.printf("peak RSS (VmHWM) at the N-th record: %d MiB (after close: %d MiB)%n", rss,
        rssAfterClose);
    long mismatches = 0;
    if (a.containsKey("verify-model")) {
      mismatches = verify(bootstrap, appId + "-" + ORDERS_STORE + "-changelog",
          Path.of(a.get("verify-model")));
    }
    if (full) {
      System.out.printf("kafka streams ingest (default topology, %s, %d thread(s)): %.0f events/s,"
          + " peak RSS %d MiB%n", guarantee, threads, events / seconds, rss);
    } else {
      System.out.printf("kafka streams ingest (%d thread(s)): %.0f events/s%n", threads,
          events / seconds);
    }
    System.exit(mismatches == 0 ? 0 : 2);
  }
}
