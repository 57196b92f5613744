//! Peers that just failed to answer a forwarded query (refused, timed out), remembered for a
//! few seconds so the next queries go straight to another copy instead of each waiting out
//! `--peer-timeout-ms` on a paused or dead instance.
//!
//! A suspect is still asked when nothing else can answer (`consistency=active`, or every other
//! copy failed too), and one answer from it clears it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a peer that failed to answer is asked last.
pub const SUSPECT_FOR: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct Suspects {
    until: Mutex<HashMap<String, Instant>>,
}

impl Suspects {
    /// `endpoint` failed to answer just now.
    pub fn mark(&self, endpoint: &str) {
        if let Ok(mut m) = self.until.lock() {
            m.insert(endpoint.to_owned(), Instant::now() + SUSPECT_FOR);
        }
    }

    /// `endpoint` answered.
    pub fn clear(&self, endpoint: &str) {
        if let Ok(mut m) = self.until.lock() {
            m.remove(endpoint);
        }
    }

    /// Whether `endpoint` failed to answer within the last [`SUSPECT_FOR`].
    pub fn is_suspect(&self, endpoint: &str) -> bool {
        let Ok(mut m) = self.until.lock() else {
            return false;
        };
        match m.get(endpoint) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                m.remove(endpoint);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_peer_is_suspect_until_it_answers() {
        let s = Suspects::default();
        assert!(!s.is_suspect("a:1"));
        s.mark("a:1");
        assert!(s.is_suspect("a:1"));
        assert!(!s.is_suspect("b:1"));
        s.clear("a:1");
        assert!(!s.is_suspect("a:1"));
    }
}
