//! Kafka's key partitioning rule, in one place.
//!
//! Entry point: [`partition_for_key`]. Producers of `PAYMENT.ORDER` are Java services using the
//! default partitioner, so a keyed record lives in partition
//! `(murmur2(key) & 0x7fffffff) % partitions`. Everything in paystream that routes by key (the
//! in-memory [`crate::driver::TestDriver`], interactive-query routing, records paystream produces
//! itself) must use exactly this rule, or a query would look for an order on the wrong instance.
//!
//! Implemented here rather than taken from a crate because it is twenty lines, it is a contract
//! (Kafka's `Utils.murmur2` bit for bit, signed result), and the test vectors below are Kafka's own.
//!
//! # What is *not* routed this way
//! - Records without a key (`null` in Java): the Java producer spreads them with its sticky
//!   partitioner and librdkafka's `murmur2_random` picks a random partition. Callers decide what to
//!   do with them; the test driver sends them to partition 0.
//! - Empty keys: the Java producer and librdkafka's `murmur2_random` *do* hash a non-null empty key
//!   (`murmur2(b"")`), but librdkafka's default partitioner, `consistent_random` (CRC32, empty and
//!   null keys random), does not, and it puts non-empty keys elsewhere too. paystream's producers
//!   must therefore set `partitioner=murmur2_random`.

/// Kafka's `org.apache.kafka.common.utils.Utils.murmur2`: MurmurHash2, 32 bits, seed `0x9747b28c`,
/// returned as Java's signed `int`.
///
/// Java does this arithmetic on wrapping 32-bit `int`s with logical shifts (`>>>`); the same is
/// done here on `u32` and the bits reinterpreted as `i32` at the end.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java: `int h = seed ^ length`; the length is an `int`, so it wraps like one.
    let mut h: u32 = SEED ^ (data.len() as u32);

    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    // The Java `switch` falls through from case 3 to case 1.
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java `DefaultPartitioner` (and librdkafka's `murmur2_random`) picks for a
/// record with a non-null `key`: `(murmur2(key) & 0x7fffffff) % partitions`.
///
/// The mask (Kafka's `Utils.toPositive`) rather than `abs` matters: `abs(i32::MIN)` overflows,
/// and masking maps negative hashes to different partitions than `abs` would.
///
/// # Panics
/// If `partitions <= 0`: a topic always has at least one partition, so this is a caller bug
/// (validate user input such as `--partitions` before calling).
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    assert!(
        partitions > 0,
        "partition count must be positive, got {partitions}"
    );
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn matches_kafka_test_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, expected) in cases {
            assert_eq!(
                murmur2(data),
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(data)
            );
        }
    }

    /// Every tail length (0..=3 bytes after the 4-byte blocks) goes through a different branch.
    #[test]
    fn covers_every_tail_length() {
        let hashes: Vec<i32> = (0..8).map(|n| murmur2(&b"abcdefgh"[..n])).collect();
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn partition_masks_rather_than_abs() {
        // murmur2("21") is negative; the mask keeps the low 31 bits.
        let expected = (-973_932_308_i32 & 0x7fff_ffff) % 12;
        assert_eq!(partition_for_key(b"21", 12), expected);
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }

    #[test]
    #[should_panic(expected = "partition count must be positive")]
    fn zero_partitions_is_a_caller_bug() {
        partition_for_key(b"k", 0);
    }

    proptest! {
        #[test]
        fn partition_is_always_in_range(
            key in proptest::collection::vec(any::<u8>(), 0..64),
            partitions in 1..=i32::MAX,
        ) {
            let p = partition_for_key(&key, partitions);
            prop_assert!((0..partitions).contains(&p));
        }
    }
}
