//! The fast path of [`super::parse_event`]: a reader for the plain shape every well-behaved
//! producer writes, and nothing else.
//!
//! `serde_json` was about a sixth of the order view's CPU per record (profile in BENCHMARKS.md,
//! "Per-record CPU"). An order event is a flat object of eight known fields (and whatever plain
//! fields other teams add) whose strings rarely hold an escape, so this reader accepts exactly
//! that *subset* of JSON and answers `None` for anything outside it: bytes that are not UTF-8, a
//! backslash or control byte in a string, a repeated known field, an unknown field whose value
//! is an object, an array or a non-integer number, a number that is not a plain integer within
//! i64, a `null` where a field is required, a missing required field, anything after the closing
//! brace. The caller then parses with `serde_json`, which gives the event or the exact error.
//!
//! So the fast path never decides whether a record is valid; it only has to agree with
//! `serde_json` on what it accepts, which the property tests in `fast_json_tests.rs` check against
//! `serde_json` itself (the independent model) over generated and mutated inputs.

use super::{EventType, OrderEvent};

/// The event in `value`, if `value` is in the plain subset (see the module docs); `None` means
/// "ask `serde_json`", never "invalid".
pub(super) fn parse_plain(value: &[u8]) -> Option<OrderEvent> {
    // Checked once for the whole value, so each string is a slice between two ASCII quotes.
    let text = std::str::from_utf8(value).ok()?;
    let mut r = Reader {
        s: value,
        text,
        i: 0,
    };
    let mut f = Fields::default();
    r.skip_ws();
    r.eat(b'{')?;
    r.skip_ws();
    if r.peek()? == b'}' {
        return None; // required fields missing: serde_json names the first
    }
    loop {
        let name = r.string()?;
        r.skip_ws();
        r.eat(b':')?;
        r.skip_ws();
        f.read(name, &mut r)?;
        r.skip_ws();
        match r.next()? {
            b',' => r.skip_ws(),
            b'}' => break,
            _ => return None,
        }
    }
    r.skip_ws();
    if r.i != value.len() {
        return None;
    }
    Some(OrderEvent {
        order_id: f.order_id?.to_owned(),
        event_id: f.event_id?.to_owned(),
        event_type: f.event_type?,
        amount: f.amount.flatten(),
        currency: f.currency.flatten().map(str::to_owned),
        member_id: f.member_id.flatten().map(str::to_owned),
        phone: f.phone.flatten().map(str::to_owned),
        ts: f.ts?,
    })
}

/// The fields read so far (`None` = not seen, so a repeat is refused; the inner `Option` of an
/// optional field is its `null`).
#[derive(Default)]
struct Fields<'a> {
    order_id: Option<&'a str>,
    event_id: Option<&'a str>,
    event_type: Option<EventType>,
    amount: Option<Option<i64>>,
    currency: Option<Option<&'a str>>,
    member_id: Option<Option<&'a str>>,
    phone: Option<Option<&'a str>>,
    ts: Option<i64>,
}

impl<'a> Fields<'a> {
    /// Read the value of field `name`; `None` if the field is unknown, repeated, or its value is
    /// outside the subset.
    fn read(&mut self, name: &str, r: &mut Reader<'a>) -> Option<()> {
        fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
            if slot.is_some() {
                return None;
            }
            *slot = Some(value);
            Some(())
        }
        match name {
            "order_id" => once(&mut self.order_id, r.string()?),
            "event_id" => once(&mut self.event_id, r.string()?),
            "type" => once(&mut self.event_type, r.string()?.parse().ok()?),
            "ts" => once(&mut self.ts, r.integer()?),
            "amount" => once(&mut self.amount, r.nullable(Reader::integer)?),
            "currency" => once(&mut self.currency, r.nullable(Reader::string)?),
            "member_id" => once(&mut self.member_id, r.nullable(Reader::string)?),
            "phone" => once(&mut self.phone, r.nullable(Reader::string)?),
            // A field this binary does not know (serde skips any value of one, repeats too):
            // other teams add fields, which must not cost the fast path.
            _ => r.skip_scalar(),
        }
    }
}

struct Reader<'a> {
    s: &'a [u8],
    /// `s` as text (valid UTF-8).
    text: &'a str,
    i: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string without escapes or control bytes.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let len = self.s[start..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        self.i = start + len;
        self.eat(b'"')?;
        // Both ends are ASCII quotes, so this is a char boundary slice of valid text.
        self.text.get(start..start + len)
    }

    /// `-?(0|[1-9][0-9]*)` within i64, followed by a byte that ends a JSON number; `-0`,
    /// fractions, exponents and numbers out of range are left to serde_json.
    fn integer(&mut self) -> Option<i64> {
        let negative = self.peek()? == b'-';
        if negative {
            self.i += 1;
        }
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && self.s[start] == b'0') || (negative && n == 0) {
            return None;
        }
        let n = if negative {
            i64::try_from(-i128::from(n)).ok()?
        } else {
            i64::try_from(n).ok()?
        };
        match self.peek()? {
            b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r' => Some(n),
            _ => None,
        }
    }

    /// Skip a plain scalar: a string as [`Self::string`] reads it, an integer as
    /// [`Self::integer`] does, `null`, `true` or `false`. Objects, arrays and other numbers are
    /// left to serde_json.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.integer().map(drop),
            _ => {
                let word = [&b"null"[..], b"true", b"false"]
                    .into_iter()
                    .find(|w| self.s[self.i..].starts_with(w))?;
                self.i += word.len();
                Some(())
            }
        }
    }

    /// `null` as `None`, else what `read` reads.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.s[self.i..].starts_with(b"null") {
            self.i += 4;
            return Some(None);
        }
        read(self).map(Some)
    }
}

#[cfg(test)]
#[path = "fast_json_tests.rs"]
mod tests;
