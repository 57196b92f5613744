//! The topology `paystream run` executes: the order view, plus the SMS and missing-completion
//! topologies when they are switched on.
//!
//! One source, one chain. Each node passes every valid record on unchanged, and the windowed
//! nodes write their results to their own output topics with `ctx.send`:
//!
//! ```text
//! PAYMENT.ORDER ─▶ order view (orders; invalid → DLQ) ─▶ SMS (sms-*) ─▶ approval timeout (approval-*)
//!                                                          │                 │
//!                                                          ▼                 ▼
//!                                          SEND_SMS, SEND_SMS.SUPPRESSED   PAYMENT.APPROVAL_TIMEOUT
//! ```
//!
//! Every node runs on one clock, [`ShippedTopologies::time_policy`]: the event's `ts` by default
//! (or the Kafka timestamp), checked against the future bound before the first node.
//!
//! Sharing one chain means one consumer, one parse check and one commit for all three; the order
//! view dead-letters bad input once, and the others never see it.

use std::sync::Arc;

use crate::approval::{approval_stores, ApprovalTimeoutConfig, ApprovalTimeoutProcessor};
use crate::dsl::StreamsBuilder;
use crate::order::{EventTime, OrderViewProcessor, ORDERS_STORE};
use crate::sms::{sms_stores, SmsConfig, SmsProcessor};
use crate::time::{RecordTime, TimePolicy, TimestampExtractor};
use crate::topology::{Topology, TopologyError};

/// Where the one clock of every shipped topology comes from (`--timestamp-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampSource {
    /// The event's JSON `ts`: replays of old history keep their original times.
    #[default]
    Event,
    /// The Kafka record timestamp (set by the producer or the broker).
    Record,
}

impl TimestampSource {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            TimestampSource::Event => "event",
            TimestampSource::Record => "record",
        }
    }
}

/// Default bound on how far ahead of the wall clock a record's time may be (`--max-future-ms`).
pub const DEFAULT_MAX_FUTURE_MS: i64 = 3_600_000;

/// Which shipped topologies run, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippedTopologies {
    /// `None`: no SMS.
    pub sms: Option<SmsConfig>,
    /// `None`: no missing-completion detector.
    pub approval_timeout: Option<ApprovalTimeoutConfig>,
    /// The clock of every node: stream time, windows, grace, deadlines, punctuation.
    pub timestamp_source: TimestampSource,
    /// Records timed further ahead of the wall clock than this are dead-lettered
    /// (`timestamp_in_future`).
    pub max_future_ms: i64,
}

impl Default for ShippedTopologies {
    /// The order view alone, on event time, with the default future bound.
    fn default() -> Self {
        Self {
            sms: None,
            approval_timeout: None,
            timestamp_source: TimestampSource::Event,
            max_future_ms: DEFAULT_MAX_FUTURE_MS,
        }
    }
}

impl ShippedTopologies {
    /// Every shipped topology with its defaults.
    pub fn all() -> Self {
        Self {
            sms: Some(SmsConfig::default()),
            approval_timeout: Some(ApprovalTimeoutConfig::default()),
            ..Self::default()
        }
    }

    /// The time policy these settings describe.
    pub fn time_policy(&self) -> TimePolicy {
        let extractor: Arc<dyn TimestampExtractor> = match self.timestamp_source {
            TimestampSource::Event => Arc::new(EventTime),
            TimestampSource::Record => Arc::new(RecordTime),
        };
        TimePolicy {
            extractor,
            max_future_ms: self.max_future_ms,
        }
    }
}

/// Build the chain for `input_topic`; errors only for illegal topic names.
pub fn shipped_topology(
    input_topic: &str,
    which: &ShippedTopologies,
) -> Result<Topology, TopologyError> {
    let mut builder = StreamsBuilder::new();
    let mut stream = builder
        .stream_timed(input_topic, which.time_policy())
        .process(&[ORDERS_STORE], || Box::new(OrderViewProcessor));
    if let Some(sms) = which.sms.clone() {
        let outputs = [sms.topic.clone(), sms.suppressed_topic.clone()];
        let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        stream = stream.process_with(sms_stores(&sms), &outputs, move || {
            Box::new(SmsProcessor::new(sms.clone()))
        });
    }
    if let Some(approval) = which.approval_timeout.clone() {
        let topic = approval.topic.clone();
        stream = stream.process_with(approval_stores(&approval), &[&topic], move || {
            Box::new(ApprovalTimeoutProcessor::new(approval.clone()))
        });
    }
    let _ = stream;
    builder.build()
}
