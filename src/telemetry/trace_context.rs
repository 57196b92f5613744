//! Trace context on Kafka records: the W3C `traceparent` header and the single-header `b3`
//! form Brave writes, read from input records and written on every record made from them.
//!
//! Pure parsing and formatting, no OpenTelemetry: the processor reads a record's context with
//! [`TraceContext::from_headers`] whether or not spans are exported, so a context passes through
//! paystream even with tracing off (the outputs then carry the input's own context).
//!
//! ```text
//!  traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
//!               ver trace id (16 bytes)             parent id (8)    flags (01 = sampled)
//!  b3:          80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1[-05e3ac9a4f6e3b90]
//!               trace id (8 or 16 bytes)         span id          sampled (0, 1, d) [parent]
//! ```
//!
//! Both formats name the span of the record's *producer*; `traceparent` wins when a record has
//! both. Invalid values (wrong lengths, upper-case or non-hex digits, all-zero ids, version
//! `ff`) are ignored, as the W3C specification asks: the record is processed untraced.

/// The W3C Trace Context header.
pub const TRACEPARENT: &str = "traceparent";
/// Brave's single-header B3 form.
pub const B3: &str = "b3";

/// A span's identity as it travels between services: trace id, span id, sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// The context of `headers` (name, value): `traceparent` if valid, else `b3` if valid.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Option<Self> {
        let mut b3 = None;
        for (name, value) in headers {
            if name.eq_ignore_ascii_case(TRACEPARENT) {
                if let Some(c) = Self::parse_traceparent(value) {
                    return Some(c);
                }
            } else if name.eq_ignore_ascii_case(B3) && b3.is_none() {
                b3 = Self::parse_b3(value);
            }
        }
        b3
    }

    /// A `traceparent` value (W3C Trace Context, level 1; later versions by their first fields).
    pub fn parse_traceparent(value: &[u8]) -> Option<Self> {
        let v = std::str::from_utf8(value).ok()?.trim();
        let version = lower_hex::<1>(v.get(0..2)?)?[0];
        if version == 0xff || (version == 0 && v.len() != 55) {
            return None;
        }
        // Later versions may append fields after a dash; version 00 has exactly four.
        if v.len() > 55 && v.as_bytes()[55] != b'-' {
            return None;
        }
        let dashes = [2, 35, 52]
            .iter()
            .all(|&i| v.as_bytes().get(i) == Some(&b'-'));
        if !dashes {
            return None;
        }
        let trace_id = lower_hex::<16>(&v[3..35])?;
        let span_id = lower_hex::<8>(&v[36..52])?;
        let flags = lower_hex::<1>(v.get(53..55)?)?[0];
        Self::valid(trace_id, span_id, flags & 1 == 1)
    }

    /// A single-header `b3` value. `0`, `1` and `d` alone carry no ids: no context.
    pub fn parse_b3(value: &[u8]) -> Option<Self> {
        let v = std::str::from_utf8(value).ok()?.trim();
        let mut parts = v.split('-');
        let trace = parts.next()?;
        let span_id = lower_hex::<8>(parts.next()?)?;
        let sampled = match parts.next() {
            None | Some("1") | Some("d") => true,
            Some("0") => false,
            Some(_) => return None,
        };
        if let Some(parent) = parts.next() {
            lower_hex::<8>(parent)?;
        }
        if parts.next().is_some() {
            return None;
        }
        let trace_id = match trace.len() {
            32 => lower_hex::<16>(trace)?,
            16 => {
                let low = lower_hex::<8>(trace)?;
                let mut id = [0; 16];
                id[8..].copy_from_slice(&low);
                id
            }
            _ => return None,
        };
        Self::valid(trace_id, span_id, sampled)
    }

    fn valid(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> Option<Self> {
        let zero = trace_id.iter().all(|&b| b == 0) || span_id.iter().all(|&b| b == 0);
        (!zero).then_some(Self {
            trace_id,
            span_id,
            sampled,
        })
    }

    /// The `traceparent` value naming this span as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex(&self.trace_id),
            hex(&self.span_id),
            if self.sampled { "01" } else { "00" }
        )
    }

    /// The single-header `b3` value naming this span as the parent.
    pub fn b3(&self) -> String {
        format!(
            "{}-{}-{}",
            hex(&self.trace_id),
            hex(&self.span_id),
            if self.sampled { "1" } else { "0" }
        )
    }

    /// The trace id as Jaeger and the W3C format print it (32 lower-case hex digits).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `N` bytes from exactly `2N` lower-case hex digits.
fn lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W3C: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn the_specifications_examples_parse() {
        let c = TraceContext::parse_traceparent(W3C.as_bytes()).unwrap();
        assert_eq!(c.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(c.span_id_hex(), "b7ad6b7169203331");
        assert!(c.sampled);
        let b = TraceContext::parse_b3(
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )
        .unwrap();
        assert_eq!(b.trace_id_hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(b.span_id_hex(), "e457b5a2e4d86bd1");
        assert!(b.sampled);
        // A 64-bit B3 trace id is the low half of a 128-bit one.
        let short = TraceContext::parse_b3(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-0").unwrap();
        assert_eq!(short.trace_id_hex(), "000000000000000064fe8b2a57d3eff7");
        assert!(!short.sampled);
        // A later version with an extra field keeps its first four.
        let later = format!("cc{}-what-comes-next", &W3C[2..]);
        assert!(TraceContext::parse_traceparent(later.as_bytes()).is_some());
    }

    #[test]
    fn invalid_values_carry_no_context() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0",
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
        ] {
            assert_eq!(
                TraceContext::parse_traceparent(bad.as_bytes()),
                None,
                "{bad}"
            );
        }
        for bad in [
            "0",
            "1",
            "d",
            "80f198ee56343ba864fe8b2a57d3eff7",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x",
            "80f198ee56343ba8-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-extra",
            "80f198ee56343ba864fe8b2a57d3ef-e457b5a2e4d86bd1",
            "80f198ee56343ba864fe8b2a57d3eff7-0000000000000000-1",
        ] {
            assert_eq!(TraceContext::parse_b3(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn traceparent_wins_over_b3_and_bad_headers_are_skipped() {
        let b3 = b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".as_slice();
        let both = [("b3", b3), ("traceparent", W3C.as_bytes())];
        let c = TraceContext::from_headers(both).unwrap();
        assert_eq!(c.span_id_hex(), "b7ad6b7169203331");
        let broken = [("traceparent", b"junk".as_slice()), ("B3", b3)];
        let c = TraceContext::from_headers(broken).unwrap();
        assert_eq!(c.span_id_hex(), "e457b5a2e4d86bd1");
        assert_eq!(TraceContext::from_headers([("other", b3)]), None);
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back(
            trace_id in any::<[u8; 16]>(),
            span_id in any::<[u8; 8]>(),
            sampled: bool,
        ) {
            let c = TraceContext { trace_id, span_id, sampled };
            let valid = trace_id != [0; 16] && span_id != [0; 8];
            let tp = TraceContext::parse_traceparent(c.traceparent().as_bytes());
            let b3 = TraceContext::parse_b3(c.b3().as_bytes());
            prop_assert_eq!(tp, valid.then_some(c));
            prop_assert_eq!(b3, valid.then_some(c));
            prop_assert_eq!(c.traceparent().len(), 55);
        }

        #[test]
        fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = TraceContext::parse_traceparent(&bytes);
            let _ = TraceContext::parse_b3(&bytes);
        }
    }
}
