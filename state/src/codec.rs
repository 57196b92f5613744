//! Versioned binary values: how typed values become the bytes a store keeps.
//!
//! Entry points: [`encode`] and [`decode`]. Every stored value is one format-version byte
//! ([`FORMAT_VERSION`]) followed by the value in [postcard](https://docs.rs/postcard) encoding.
//!
//! Why postcard: it is maintained, documented (its wire format has a written specification and is
//! stable across 1.x), compact (varints, no field names), fast, and works with plain serde derives.
//! `bincode`, the usual choice, is unmaintained.
//!
//! Why a version byte: stored bytes outlive the binary that wrote them. They sit in RocksDB files
//! and, more importantly, in compacted changelog topics that are replayed by whatever binary
//! restores the store next, possibly an older one during a rolling upgrade or rollback. postcard
//! is not self-describing, so a reader with a different idea of the layout would silently misread
//! the bytes. With the version byte, an old binary refuses new bytes with a clear error, and a new
//! binary can keep a decoder for each older version it still has to read.

use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

use crate::store::StoreError;

/// The version byte written in front of every value by this binary.
pub const FORMAT_VERSION: u8 = 1;

/// Why bytes could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// Zero bytes: not even a version byte. Stored values are never empty.
    #[error("empty value: missing format version byte")]
    Empty,
    /// Written by a binary with a format this one does not know (usually a newer one).
    #[error("unsupported value format version {found} (this binary reads version {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
    /// The right version byte, but the payload does not decode as the expected type
    /// (truncated, trailing bytes, or a different type).
    #[error("malformed value: {0}")]
    Malformed(String),
}

impl CodecError {
    /// Attach the store name, for callers that decode what a store returned.
    pub fn in_store(self, store: &str) -> StoreError {
        StoreError::Codec {
            store: store.to_owned(),
            message: self.to_string(),
        }
    }
}

/// Encode `value` as one [`FORMAT_VERSION`] byte followed by its postcard bytes.
///
/// Encoding plain data cannot fail in practice; the error exists for serde types whose
/// `Serialize` impl reports one (e.g. a map with a failing key, or an unsized sequence).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    // Straight into one buffer sized for a typical stored value (an order is ~100–300 bytes):
    // encoding is on every write of the hot path, and growing from empty reallocates 5 times.
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT_VERSION);
    postcard::to_extend(value, out).map_err(|e| CodecError::Malformed(format!("encode: {e}")))
}

/// Decode bytes written by [`encode`]. Rejects an empty input, any version byte other than
/// [`FORMAT_VERSION`], truncated payloads and trailing bytes (which would mean the bytes were
/// written for a different type).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, payload) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes(payload).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the value",
            rest.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Order {
        order_id: String,
        state: String,
        amount: i64,
        events: u32,
        last_event_id: Option<String>,
        tags: Vec<String>,
    }

    fn order_strategy() -> impl Strategy<Value = Order> {
        (
            ".{0,20}",
            "[A-Z_]{0,30}",
            any::<i64>(),
            any::<u32>(),
            proptest::option::of(".{0,40}"),
            proptest::collection::vec(".{0,8}", 0..4),
        )
            .prop_map(
                |(order_id, state, amount, events, last_event_id, tags)| Order {
                    order_id,
                    state,
                    amount,
                    events,
                    last_event_id,
                    tags,
                },
            )
    }

    fn sample() -> Order {
        Order {
            order_id: "O-000123".into(),
            state: "APPROVAL_COMPLETED".into(),
            amount: 12000,
            events: 3,
            last_event_id: Some("6f1c".into()),
            tags: vec!["a".into()],
        }
    }

    proptest! {
        #[test]
        fn round_trip(order in order_strategy()) {
            let bytes = encode(&order).unwrap();
            prop_assert_eq!(bytes[0], FORMAT_VERSION);
            prop_assert_eq!(decode::<Order>(&bytes).unwrap(), order);
        }

        #[test]
        fn every_strict_prefix_is_rejected(order in order_strategy()) {
            let bytes = encode(&order).unwrap();
            for len in 0..bytes.len() {
                prop_assert!(decode::<Order>(&bytes[..len]).is_err(), "prefix of {} bytes decoded", len);
            }
        }
    }

    #[test]
    fn empty_is_rejected() {
        assert_eq!(decode::<Order>(&[]), Err(CodecError::Empty));
    }

    #[test]
    fn wrong_version_is_rejected_with_both_versions() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[0] = FORMAT_VERSION + 1;
        let err = decode::<Order>(&bytes).unwrap_err();
        assert_eq!(
            err,
            CodecError::UnsupportedVersion {
                found: FORMAT_VERSION + 1,
                supported: FORMAT_VERSION
            }
        );
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn truncated_is_malformed() {
        let bytes = encode(&sample()).unwrap();
        let err = decode::<Order>(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut bytes = encode(&sample()).unwrap();
        bytes.push(0);
        let err = decode::<Order>(&bytes).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    #[test]
    fn codec_error_names_the_store() {
        let err = CodecError::Empty.in_store("orders");
        assert_eq!(
            err.to_string(),
            "store orders: cannot decode value: empty value: missing format version byte"
        );
    }
}
