//! The transactional calls paystream makes straight to librdkafka: source offsets into a
//! transaction with paystream's own group generation, and a commit without rdkafka's slow flush.
//!
//! ## Offsets, fenced by the group generation
//!
//! Kafka Streams' eos-v2 (KIP-447) commits a task's consumed offsets inside the producer's
//! transaction together with the consumer group's metadata (group id, generation, member id);
//! the group coordinator refuses the commit when the generation is stale, and the transaction
//! is then aborted: a member that lost its partitions (a paused or cut-off instance) cannot
//! commit output for them. rdkafka can only build that metadata from a consumer that joined its
//! group through librdkafka (`ConsumerGroupMetadata` has no public constructor), but paystream's
//! group is joined by its own membership client. This module builds the metadata from
//! paystream's generation with librdkafka's C API and hands it to
//! `rd_kafka_send_offsets_to_transaction`. It is the only `unsafe` code in paystream.
//!
//! ## Commit
//!
//! rdkafka's `commit_transaction` first calls its own `flush`, which polls in 100 ms steps: every
//! commit took at least 100 ms longer than needed (measured: ~130 ms per commit, half of the
//! stream thread's time at a 100 ms commit interval). [`flush`] waits in 1 ms steps, and
//! [`commit_transaction`] calls `rd_kafka_commit_transaction` itself.
//!
//! Ownership, in C terms: the metadata is created here and destroyed here (a guard drops it on
//! every path); the topic-partition list stays owned by rdkafka's `TopicPartitionList`; a
//! returned `rd_kafka_error_t` is read into [`TxnError`] and destroyed at once.

use std::ffi::{CStr, CString};
use std::time::Duration;

use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use rdkafka_sys as sys;

/// The group membership a transactional offset commit speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    pub group_id: String,
    /// `-1` with an empty member id: a commit outside any generation (standalone instances).
    pub generation: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

impl GroupMetadata {
    /// Metadata for an instance that is not a group member (standalone): the coordinator accepts
    /// its commits only while the group has no members.
    pub fn standalone(group_id: &str) -> Self {
        Self {
            group_id: group_id.to_owned(),
            generation: -1,
            member_id: String::new(),
            group_instance_id: None,
        }
    }
}

/// A failed transactional call, read from librdkafka's `rd_kafka_error_t`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct TxnError {
    pub code: RDKafkaErrorCode,
    pub message: String,
    /// The producer cannot be used any more (e.g. fenced by a newer producer with its id).
    pub fatal: bool,
    /// The transaction must be aborted before the producer can go on.
    pub requires_abort: bool,
    pub retriable: bool,
}

impl TxnError {
    /// A local error (bad argument) that never reached librdkafka.
    fn local(message: impl Into<String>) -> Self {
        Self {
            code: RDKafkaErrorCode::InvalidArgument,
            message: message.into(),
            fatal: false,
            requires_abort: false,
            retriable: false,
        }
    }

    /// The group coordinator refused the generation or member: this instance is a zombie.
    pub fn is_group_fencing(&self) -> bool {
        matches!(
            self.code,
            RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::FencedInstanceId
        )
    }

    /// Read and destroy a non-null `rd_kafka_error_t`.
    ///
    /// # Safety
    /// `err` must be a valid error returned by librdkafka and not used afterwards.
    unsafe fn take(err: *mut sys::rd_kafka_error_t) -> Self {
        // SAFETY: the caller passes a valid, owned error; it is destroyed exactly once below.
        let (code, message, fatal, requires_abort, retriable) = unsafe {
            let msg = sys::rd_kafka_error_string(err);
            let message = if msg.is_null() {
                String::new()
            } else {
                CStr::from_ptr(msg).to_string_lossy().into_owned()
            };
            let out = (
                RDKafkaErrorCode::from(sys::rd_kafka_error_code(err)),
                message,
                sys::rd_kafka_error_is_fatal(err) != 0,
                sys::rd_kafka_error_txn_requires_abort(err) != 0,
                sys::rd_kafka_error_is_retriable(err) != 0,
            );
            sys::rd_kafka_error_destroy(err);
            out
        };
        Self {
            code,
            message,
            fatal,
            requires_abort,
            retriable,
        }
    }
}

/// Owns an `rd_kafka_consumer_group_metadata_t` and destroys it on drop.
struct CgMetadata(*mut sys::rd_kafka_consumer_group_metadata_t);

impl Drop for CgMetadata {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_consumer_group_metadata_new_with_genid, destroyed once.
        unsafe { sys::rd_kafka_consumer_group_metadata_destroy(self.0) }
    }
}

impl CgMetadata {
    fn new(group: &GroupMetadata) -> Result<Self, TxnError> {
        let cstr = |what: &str, s: &str| {
            CString::new(s).map_err(|_| TxnError::local(format!("{what} contains a NUL byte")))
        };
        let group_id = cstr("group id", &group.group_id)?;
        let member_id = cstr("member id", &group.member_id)?;
        let instance = group
            .group_instance_id
            .as_deref()
            .map(|s| cstr("group instance id", s))
            .transpose()?;
        // SAFETY: the strings outlive the call; librdkafka copies them into the new metadata.
        let ptr = unsafe {
            sys::rd_kafka_consumer_group_metadata_new_with_genid(
                group_id.as_ptr(),
                group.generation,
                member_id.as_ptr(),
                instance.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            )
        };
        if ptr.is_null() {
            return Err(TxnError::local("librdkafka returned no group metadata"));
        }
        Ok(Self(ptr))
    }
}

/// `send_offsets_to_transaction` with `group`'s generation and member id: adds `offsets` (the
/// next offsets to consume) to `producer`'s open transaction. The group coordinator checks the
/// generation; a stale one fails with [`TxnError::is_group_fencing`] and the transaction must be
/// aborted.
pub fn send_offsets_to_transaction<C, P>(
    producer: &P,
    offsets: &TopicPartitionList,
    group: &GroupMetadata,
    timeout: Duration,
) -> Result<(), TxnError>
where
    C: rdkafka::producer::ProducerContext,
    P: Producer<C>,
{
    let metadata = CgMetadata::new(group)?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the producer handle and the partition list are valid for the duration of the call
    // (borrowed); librdkafka does not keep either pointer. The metadata is ours and outlives it.
    let err = unsafe {
        sys::rd_kafka_send_offsets_to_transaction(
            producer.client().native_ptr(),
            offsets.ptr(),
            metadata.0,
            timeout_ms,
        )
    };
    if err.is_null() {
        Ok(())
    } else {
        // SAFETY: a non-null return is an error we own.
        Err(unsafe { TxnError::take(err) })
    }
}

/// Wait until every record `producer` was given is delivered (or failed), serving delivery
/// reports in 1 ms steps; `false` if `timeout` passed first.
pub fn flush<C, P>(producer: &P, timeout: Duration) -> bool
where
    C: rdkafka::producer::ProducerContext,
    P: Producer<C> + Pollable,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // SAFETY: a valid producer handle. A 1 ms wait (not 0) keeps librdkafka's "flushing"
        // flag raised while the broker threads wake up, so they send at once instead of
        // waiting out `linger.ms`.
        let err = unsafe { sys::rd_kafka_flush(producer.client().native_ptr(), 1) };
        if err == sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        producer.poll_for(Duration::from_millis(1));
    }
}

/// A producer whose event queue can be served for a while.
pub trait Pollable {
    fn poll_for(&self, d: Duration);
}

impl<C: rdkafka::producer::ProducerContext + 'static> Pollable
    for rdkafka::producer::ThreadedProducer<C>
{
    fn poll_for(&self, d: Duration) {
        self.poll(d);
    }
}

/// Commit the open transaction: flush (see [`flush`]), then `rd_kafka_commit_transaction`.
pub fn commit_transaction<C, P>(producer: &P, timeout: Duration) -> Result<(), TxnError>
where
    C: rdkafka::producer::ProducerContext,
    P: Producer<C> + Pollable,
{
    if !flush(producer, timeout) {
        return Err(TxnError {
            code: RDKafkaErrorCode::MessageTimedOut,
            message: format!("records not delivered within {timeout:?} of the commit"),
            fatal: false,
            requires_abort: true,
            retriable: false,
        });
    }
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: a valid producer handle; librdkafka keeps nothing of the call.
    let err =
        unsafe { sys::rd_kafka_commit_transaction(producer.client().native_ptr(), timeout_ms) };
    if err.is_null() {
        Ok(())
    } else {
        // SAFETY: a non-null return is an error we own.
        Err(unsafe { TxnError::take(err) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_with_and_without_instance_id_is_created_and_freed() {
        for instance in [None, Some("host-1".to_owned())] {
            let m = GroupMetadata {
                group_id: "g".into(),
                generation: 7,
                member_id: "m-1".into(),
                group_instance_id: instance,
            };
            assert!(CgMetadata::new(&m).is_ok());
        }
        assert!(CgMetadata::new(&GroupMetadata::standalone("g")).is_ok());
    }

    #[test]
    fn a_nul_byte_is_refused_before_reaching_librdkafka() {
        let m = GroupMetadata {
            member_id: "a\0b".into(),
            ..GroupMetadata::standalone("g")
        };
        let err = CgMetadata::new(&m).err().expect("refused");
        assert!(err.message.contains("member id"), "{err}");
        assert!(!err.is_group_fencing());
    }
}
