//! Consumer-group membership over Kafka's classic group protocol, with a leader-side assignor.
//!
//! librdkafka cannot run a custom assignor, so paystream joins its group itself (as Kafka Streams
//! does) and keeps the data plane on rdkafka with manual `assign()`. This client speaks
//! FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit and OffsetFetch to
//! the group coordinator with the `kafka-protocol` codec over tokio.
//!
//! The group uses protocol type `consumer` with the standard embedded
//! `ConsumerProtocolSubscription` (topics = `[topic]`, user data = ours) as member metadata and
//! `ConsumerProtocolAssignment` (`[(topic, partitions)]`, user data = ours) as the assignment, so
//! Kafka's own tools (`kafka-consumer-groups --describe`) show the group, its members and their
//! partitions. The assignor name (`protocol_name`) is what those tools print as ASSIGNMENT-STRATEGY.
//!
//! Driving it: [`GroupMember::connect`], then [`GroupMember::join`]; afterwards call
//! [`GroupMember::heartbeat`] every `heartbeat_interval` and call `join` again whenever it returns
//! [`HeartbeatOutcome::RebalanceNeeded`] (commit first: during a rebalance the old generation can
//! still commit until this member rejoins). Offsets committed with [`GroupMember::commit_offsets`]
//! carry the generation and member id, so a member that was expelled from the group (a zombie)
//! is refused with [`MembershipError::Fenced`].
//!
//! The client is not internally concurrent: one request is in flight at a time and every method
//! takes `&mut self`. Every network wait is bounded. A cancelled call (its future dropped) leaves
//! the coordinator connection poisoned; the next call opens a fresh one.
//!
//! The client is split by concern: `rebalance` (JoinGroup + SyncGroup), `liveness` (Heartbeat,
//! LeaveGroup), `offsets` (OffsetCommit, OffsetFetch), `coordinator` (finding the coordinator and
//! the connection to it), `retry` (the one retry policy every request goes through) and
//! `consumer_protocol` (the embedded subscription and assignment).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{GroupId, JoinGroupRequest};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;

use super::error::code;
pub use super::error::MembershipError;
use super::wire::Connection;

mod consumer_protocol;
mod coordinator;
mod liveness;
mod offsets;
mod rebalance;
mod retry;

/// Protocol type of the group: the standard consumer embedding, so Kafka's tools understand it.
pub const PROTOCOL_TYPE: &str = "consumer";

/// Settings of one group member.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Bootstrap brokers, `HOST:PORT`.
    pub bootstrap: Vec<String>,
    pub group_id: String,
    /// The input topic: the only topic in the subscription and in assignments.
    pub topic: String,
    pub client_id: String,
    /// Without a heartbeat for this long the coordinator expels the member. Default 10 s.
    pub session_timeout: Duration,
    /// How long the coordinator waits for members to rejoin during a rebalance. Default 30 s.
    pub rebalance_timeout: Duration,
    /// How often the owner should call [`GroupMember::heartbeat`]. Default 1 s.
    pub heartbeat_interval: Duration,
    /// Static membership (KIP-345): a restarted instance with the same id takes its old place
    /// without a rebalance (within the session timeout).
    pub group_instance_id: Option<String>,
    /// Assignor name, shown by `kafka-consumer-groups` as the assignment strategy.
    pub protocol_name: String,
    /// Bound on each ordinary request (all but JoinGroup/SyncGroup, which may legitimately wait
    /// for the whole rebalance). Default 10 s.
    pub request_timeout: Duration,
    /// Bound on one whole [`GroupMember::join`] call, retries included. Default 2 × rebalance timeout.
    pub join_timeout: Duration,
    /// TLS and SASL of every broker connection. Default PLAINTEXT.
    pub security: crate::coordination::security::BrokerSecurity,
}

impl MembershipConfig {
    /// A configuration with paystream's defaults.
    pub fn new(
        bootstrap: Vec<String>,
        group_id: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        let rebalance_timeout = Duration::from_secs(30);
        MembershipConfig {
            bootstrap,
            group_id: group_id.into(),
            topic: topic.into(),
            client_id: "paystream".to_string(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout,
            heartbeat_interval: Duration::from_secs(1),
            group_instance_id: None,
            protocol_name: "paystream".to_string(),
            request_timeout: Duration::from_secs(10),
            join_timeout: rebalance_timeout * 2,
            security: Default::default(),
        }
    }
}

/// A member of the generation being formed, as the leader's assignor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// The subscription user data that member passed to [`GroupMember::join`].
    pub user_data: Bytes,
}

/// The leader-side assignor.
pub trait LeaderAssignor: Send + Sync {
    /// Called on the leader only: return, for every member id, its partitions of `topic` and its
    /// assignment user data. Members missing from the map get no partitions and empty user data.
    fn assign(&self, members: &[JoinedMember]) -> BTreeMap<String, (Vec<i32>, Bytes)>;
}

/// This member's share of a completed generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub generation_id: i32,
    pub member_id: String,
    /// This member is the group leader (it ran the assignor, unless the coordinator told a
    /// rejoining static leader to skip the assignment).
    pub leader: bool,
    /// The leader's member id (every member learns it from JoinGroup).
    pub leader_id: String,
    pub partitions: Vec<i32>,
    pub user_data: Bytes,
    /// Every member of the generation with its subscription user data, on the leader (also when
    /// it skipped the assignment); empty on followers.
    pub members: Vec<JoinedMember>,
}

/// A member to remove from the group ([`GroupMember::remove_members`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberToRemove {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// Sent to the coordinator (LeaveGroup v5+), which logs it.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    Stable,
    /// A rebalance started, or this member is no longer in the current generation: commit what
    /// can be committed, then call [`GroupMember::join`].
    RebalanceNeeded,
}

/// One member of a consumer group.
#[derive(Debug)]
pub struct GroupMember {
    config: MembershipConfig,
    coordinator: Option<Connection>,
    /// Empty until the coordinator hands one out (JoinGroup v4+: MEMBER_ID_REQUIRED).
    member_id: String,
    /// Generation of the last completed SyncGroup, while it is believed current.
    generation: Option<i32>,
    /// Partitions of the last assignment (sent back as owned partitions when rejoining).
    partitions: Vec<i32>,
    /// Rotates over the bootstrap list between discovery attempts.
    bootstrap_cursor: usize,
}

impl GroupMember {
    /// Validates the configuration, negotiates API versions and finds the group coordinator.
    pub async fn connect(config: MembershipConfig) -> Result<Self, MembershipError> {
        if config.bootstrap.is_empty() {
            return Err(MembershipError::Config("no bootstrap servers".into()));
        }
        if config.group_id.is_empty() || config.topic.is_empty() || config.protocol_name.is_empty()
        {
            return Err(MembershipError::Config(
                "group id, topic and protocol name must not be empty".into(),
            ));
        }
        for (name, d) in [
            ("session timeout", config.session_timeout),
            ("rebalance timeout", config.rebalance_timeout),
        ] {
            if d.as_millis() == 0 || d.as_millis() > i32::MAX as u128 {
                return Err(MembershipError::Config(format!(
                    "{name} {d:?} out of range"
                )));
            }
        }
        let mut member = GroupMember {
            config,
            coordinator: None,
            member_id: String::new(),
            generation: None,
            partitions: Vec::new(),
            bootstrap_cursor: 0,
        };
        let deadline = Instant::now() + member.discovery_budget();
        let conn = member.coordinator(deadline).await?;
        let join_version = conn.version_of::<JoinGroupRequest>()?;
        if member.config.group_instance_id.is_some() && join_version < 5 {
            return Err(MembershipError::Config(format!(
                "static membership needs JoinGroup v5+, the broker offers v{join_version}"
            )));
        }
        Ok(member)
    }

    /// The current generation id and member id, if this member is in a completed generation.
    pub fn generation(&self) -> Option<(i32, String)> {
        self.generation.map(|g| (g, self.member_id.clone()))
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// This member's identity, as the group requests carry it.
    fn identity(&self) -> Identity {
        Identity {
            group_id: GroupId(StrBytes::from_string(self.config.group_id.clone())),
            member_id: StrBytes::from_string(self.member_id.clone()),
            instance: self
                .config
                .group_instance_id
                .clone()
                .map(StrBytes::from_string),
        }
    }

    /// Bound on one ordinary request (see [`MembershipConfig::request_timeout`]) of a call
    /// that must be over by `deadline`.
    fn request_timeout(&self, deadline: Instant) -> Duration {
        bounded(self.config.request_timeout, deadline)
    }

    fn discovery_budget(&self) -> Duration {
        self.config
            .request_timeout
            .max(self.config.rebalance_timeout)
    }

    fn fenced(&self, api: &'static str, code: i16, reason: impl Into<String>) -> MembershipError {
        MembershipError::Fenced {
            api,
            generation: self.generation.unwrap_or(-1),
            member_id: self.member_id.clone(),
            code,
            reason: reason.into(),
        }
    }

    /// `Fenced` for FENCED_INSTANCE_ID: a newer instance with this static instance id joined.
    fn instance_fenced(&self, api: &'static str) -> MembershipError {
        self.fenced(
            api,
            code::FENCED_INSTANCE_ID,
            "another instance uses this group instance id",
        )
    }
}

/// Group id, member id and static instance id, encoded for requests.
struct Identity {
    group_id: GroupId,
    member_id: StrBytes,
    instance: Option<StrBytes>,
}

/// `wanted`, but not past `deadline` (and at least a little, so a request can still be tried).
fn bounded(wanted: Duration, deadline: Instant) -> Duration {
    let left = deadline.saturating_duration_since(Instant::now());
    wanted.min(left).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests;
