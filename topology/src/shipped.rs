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
//! Sharing one chain means one consumer, one parse check and one commit for all three; the order
//! view dead-letters bad input once, and the others never see it.

use crate::approval::{approval_stores, ApprovalTimeoutConfig, ApprovalTimeoutProcessor};
use crate::dsl::StreamsBuilder;
use crate::order::{OrderViewProcessor, ORDERS_STORE};
use crate::sms::{sms_stores, SmsConfig, SmsProcessor};
use crate::topology::{Topology, TopologyError};

/// Which shipped topologies run, and how.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShippedTopologies {
    /// `None`: no SMS.
    pub sms: Option<SmsConfig>,
    /// `None`: no missing-completion detector.
    pub approval_timeout: Option<ApprovalTimeoutConfig>,
}

impl ShippedTopologies {
    /// Every shipped topology with its defaults.
    pub fn all() -> Self {
        Self {
            sms: Some(SmsConfig::default()),
            approval_timeout: Some(ApprovalTimeoutConfig::default()),
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
        .stream(input_topic)
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
