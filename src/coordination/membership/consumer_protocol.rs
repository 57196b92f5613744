//! The standard embedded consumer protocol: `ConsumerProtocolSubscription` as the JoinGroup
//! member metadata and `ConsumerProtocolAssignment` as the SyncGroup assignment, each prefixed
//! with its version, so Kafka's own tools can read the group.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopicPartition;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTopicPartition;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::MembershipError;
use crate::coordination::wire::peek_i16;

/// Version of the embedded `ConsumerProtocolSubscription` / `ConsumerProtocolAssignment` we write.
pub(super) const CONSUMER_PROTOCOL_VERSION: i16 = 3;

/// `ConsumerProtocolSubscription` with its version prefix, as the JoinGroup member metadata.
pub(super) fn encode_subscription(
    topic: &str,
    user_data: &Bytes,
    owned: &[i32],
    generation_id: i32,
) -> Result<Bytes, MembershipError> {
    let topic_name = StrBytes::from_string(topic.to_string());
    let mut sub = ConsumerProtocolSubscription::default();
    sub.topics = vec![topic_name.clone()];
    sub.user_data = Some(user_data.clone());
    if !owned.is_empty() {
        let mut tp = OwnedTopicPartition::default();
        tp.topic = TopicName(topic_name);
        tp.partitions = owned.to_vec();
        sub.owned_partitions = vec![tp];
    }
    sub.generation_id = generation_id;
    encode_versioned(&sub, "subscription")
}

pub(super) fn decode_subscription(
    metadata: &Bytes,
) -> Result<ConsumerProtocolSubscription, String> {
    let (mut body, version) = split_version(metadata)?;
    ConsumerProtocolSubscription::decode(&mut body, version.min(CONSUMER_PROTOCOL_VERSION))
        .map_err(|e| format!("decoding consumer subscription v{version}: {e}"))
}

/// `ConsumerProtocolAssignment` with its version prefix, as a SyncGroup assignment.
pub(super) fn encode_assignment(
    topic: &str,
    partitions: &[i32],
    user_data: &Bytes,
) -> Result<Bytes, MembershipError> {
    let mut a = ConsumerProtocolAssignment::default();
    let mut tp = AssignedTopicPartition::default();
    tp.topic = TopicName(StrBytes::from_string(topic.to_string()));
    tp.partitions = partitions.to_vec();
    a.assigned_partitions = vec![tp];
    a.user_data = Some(user_data.clone());
    encode_versioned(&a, "assignment")
}

/// Partitions of `topic` and user data from a SyncGroup assignment; zero bytes means nothing.
pub(super) fn decode_assignment(topic: &str, bytes: &Bytes) -> Result<(Vec<i32>, Bytes), String> {
    if bytes.is_empty() {
        return Ok((Vec::new(), Bytes::new()));
    }
    let (mut body, version) = split_version(bytes)?;
    let a = ConsumerProtocolAssignment::decode(&mut body, version.min(CONSUMER_PROTOCOL_VERSION))
        .map_err(|e| format!("decoding consumer assignment v{version}: {e}"))?;
    let mut partitions = Vec::new();
    for tp in a.assigned_partitions {
        if tp.topic.0.as_str() == topic {
            partitions.extend(tp.partitions);
        } else {
            tracing::warn!(topic = %tp.topic.0, "ignoring assigned partitions of a foreign topic");
        }
    }
    Ok((partitions, a.user_data.unwrap_or_default()))
}

fn encode_versioned<M: Encodable>(m: &M, what: &str) -> Result<Bytes, MembershipError> {
    let mut buf = BytesMut::new();
    buf.put_i16(CONSUMER_PROTOCOL_VERSION);
    m.encode(&mut buf, CONSUMER_PROTOCOL_VERSION)
        .map_err(|e| MembershipError::Protocol {
            addr: String::new(),
            message: format!("encoding consumer {what}: {e}"),
        })?;
    Ok(buf.freeze())
}

fn split_version(bytes: &Bytes) -> Result<(Bytes, i16), String> {
    let version = peek_i16(bytes, 0).ok_or("consumer protocol message shorter than its version")?;
    if version < 0 {
        return Err(format!("negative consumer protocol version {version}"));
    }
    Ok((bytes.slice(2..), version))
}
