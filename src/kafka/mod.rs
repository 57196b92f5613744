//! rdkafka plumbing: client configurations, topic administration, the output producer.
//!
//! Everything that talks to Kafka's data plane goes through here, so the rest of the runtime
//! deals in records, offsets and typed errors.

pub mod admin;
pub mod client;
pub mod failpoint;
pub mod producer;
pub mod transaction;
pub mod watchdog;

use thiserror::Error;

/// Kafka-side failures, with enough context to act on.
#[derive(Debug, Error)]
pub enum KafkaError {
    #[error("kafka client for {what}: {source}")]
    Client {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error("delivery to {topic} failed: {message}")]
    Delivery { topic: String, message: String },
    /// librdkafka refused the record as larger than `message.max.bytes`.
    #[error("a record of {bytes} bytes is too large for {topic}")]
    TooLarge { topic: String, bytes: usize },
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout { what: String, seconds: u64 },
    /// The broker refused the credentials or the certificate (`--kafka-property` security
    /// settings): asking again cannot help.
    #[error("the broker refused the connection's credentials or certificate: {reason}")]
    Refused { reason: String },
}

impl KafkaError {
    pub(crate) fn client(
        what: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let what = what.into();
        move |source| KafkaError::Client { what, source }
    }
}
