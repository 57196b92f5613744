//! What a drill found, as a human summary or JSON, and whether it passed.

use std::fmt::Write as _;

use serde::Serialize;

use super::faults::RoundReport;
use super::load::LoadReport;
use super::model::SmsAudit;
use crate::config::ProcessingGuarantee;

/// The drill's findings.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub instances: usize,
    pub processing_guarantee: ProcessingGuarantee,
    pub standby_replicas: u32,
    pub load: LoadReport,
    pub rounds: Vec<RoundReport>,
    pub orders: usize,
    /// Orders whose final view (asked with `consistency=active`) differs from the model: lost
    /// or twice-applied events.
    pub views_differing: usize,
    pub first_differing: Vec<String>,
    pub sms: SmsAudit,
}

impl DrillReport {
    /// SMS sent twice count against the drill only under exactly-once: at-least-once promises
    /// no more than "never lost".
    fn sms_passed(&self) -> bool {
        match self.processing_guarantee {
            ProcessingGuarantee::ExactlyOnceV2 => self.sms.passed(),
            ProcessingGuarantee::AtLeastOnce => self.sms.missing == 0 && self.sms.unexpected == 0,
        }
    }

    /// No wrong answer, no failed query, nothing lost or applied twice, every SMS once.
    pub fn passed(&self) -> bool {
        self.load.wrong == 0
            && self.load.failed == 0
            && self.views_differing == 0
            && self.sms_passed()
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "drill: {} instances, {} standby replica(s), {}, {} round(s), {} orders",
            self.instances,
            self.standby_replicas,
            self.processing_guarantee.as_str(),
            self.rounds.len(),
            self.orders
        );
        for (i, r) in self.rounds.iter().enumerate() {
            let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"));
            if let (super::Fault::Rolling, Some(moved)) = (r.fault, r.partitions_moved) {
                let _ = writeln!(
                    s,
                    "  round {} (rolling restart of every instance): done after {}, {moved} partitions moved (generation {} -> {})",
                    i + 1,
                    ms(r.all_active_ms),
                    r.generation_before,
                    r.generation_after
                );
                continue;
            }
            let _ = write!(
                s,
                "  round {} ({:?} {}): every partition answered after {}, had an active after {}, processed again after {}",
                i + 1,
                r.fault,
                r.target,
                ms(r.answers_again_ms),
                ms(r.all_active_ms),
                if r.traffic_ended_first {
                    "- (the drill's traffic had ended)".to_owned()
                } else {
                    ms(r.processing_resumed_ms)
                },
            );
            if let Some(m) = r.partitions_moved {
                let _ = write!(s, ", {m} partitions moved");
            }
            let _ = writeln!(
                s,
                " (generation {} -> {})",
                r.generation_before, r.generation_after
            );
        }
        let l = &self.load;
        let _ = writeln!(
            s,
            "  queries: {} sent, {} fresh, {} stale (at most {} events behind), {} WRONG, {} failed; {} attempts retried on another instance, {} consistency=active queries fell back to a standby",
            l.queries, l.fresh, l.stale, l.max_stale_behind, l.wrong, l.failed, l.retried_attempts, l.active_fell_back
        );
        for w in &l.first_wrong {
            let _ = writeln!(s, "    wrong: {w}");
        }
        for f in &l.first_failed {
            let _ = writeln!(s, "    failed: {f}");
        }
        let _ = writeln!(
            s,
            "  final views: {}",
            if self.views_differing == 0 {
                "all equal the model (nothing lost, nothing applied twice)".to_owned()
            } else {
                format!(
                    "{} orders differ from the model, e.g. {:?}",
                    self.views_differing, self.first_differing
                )
            }
        );
        let _ = writeln!(
            s,
            "  SMS: {} expected, {} sent twice, {} never sent, {} not asked for{}",
            self.sms.expected,
            self.sms.duplicates,
            self.sms.missing,
            self.sms.unexpected,
            if self.sms.duplicates > 0 && self.sms_passed() {
                " (duplicates are allowed by at_least_once)"
            } else {
                ""
            }
        );
        for e in &self.sms.examples {
            let _ = writeln!(s, "    {e}");
        }
        let _ = writeln!(
            s,
            "  result: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }
}
