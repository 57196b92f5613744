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

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopicPartition;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTopicPartition;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::time::Instant;

use super::wire::{error_name, peek_i16, Connection};

/// Protocol type of the group: the standard consumer embedding, so Kafka's tools understand it.
pub const PROTOCOL_TYPE: &str = "consumer";
/// Version of the embedded `ConsumerProtocolSubscription` / `ConsumerProtocolAssignment` we write.
const CONSUMER_PROTOCOL_VERSION: i16 = 3;

mod code {
    pub(super) const NONE: i16 = 0;
    pub(super) const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub(super) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub(super) const NOT_COORDINATOR: i16 = 16;
    pub(super) const ILLEGAL_GENERATION: i16 = 22;
    pub(super) const UNKNOWN_MEMBER_ID: i16 = 25;
    pub(super) const REBALANCE_IN_PROGRESS: i16 = 27;
    pub(super) const MEMBER_ID_REQUIRED: i16 = 79;
    pub(super) const FENCED_INSTANCE_ID: i16 = 82;
    pub(super) const UNSTABLE_OFFSET_COMMIT: i16 = 88;
}

fn is_coordinator_error(c: i16) -> bool {
    matches!(
        c,
        code::COORDINATOR_LOAD_IN_PROGRESS
            | code::COORDINATOR_NOT_AVAILABLE
            | code::NOT_COORDINATOR
    )
}

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
    pub partitions: Vec<i32>,
    pub user_data: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    Stable,
    /// A rebalance started, or this member is no longer in the current generation: commit what
    /// can be committed, then call [`GroupMember::join`].
    RebalanceNeeded,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("i/o error with {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("protocol error with {addr}: {message}")]
    Protocol { addr: String, message: String },
    #[error("{api} failed: {message} (error code {code})")]
    Kafka {
        api: &'static str,
        code: i16,
        message: String,
    },
    /// The coordinator refused this member's generation or identity (ILLEGAL_GENERATION,
    /// UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID), or it has no current generation: its view of the
    /// group is stale and it must not act on it (commit offsets) before rejoining.
    #[error("fenced in {api}: {reason} (generation {generation}, member {member_id:?})")]
    Fenced {
        api: &'static str,
        generation: i32,
        member_id: String,
        code: i16,
        reason: String,
    },
    #[error("timed out after {after:?}: {what}")]
    Timeout { what: String, after: Duration },
    #[error("invalid membership configuration: {0}")]
    Config(String),
}

impl MembershipError {
    pub(crate) fn kafka(api: &'static str, code: i16, message: Option<&str>) -> Self {
        let name = error_name(code);
        let message = match message {
            Some(m) if !m.is_empty() => format!("{name}: {m}"),
            _ => name,
        };
        MembershipError::Kafka { api, code, message }
    }

    /// Kafka's error code, for `Kafka` and `Fenced`.
    pub fn code(&self) -> Option<i16> {
        match self {
            MembershipError::Kafka { code, .. } | MembershipError::Fenced { code, .. } => {
                Some(*code)
            }
            _ => None,
        }
    }

    /// Worth retrying the same call later (network trouble, coordinator moving, a rebalance).
    pub fn is_retriable(&self) -> bool {
        match self {
            MembershipError::Io { .. } | MembershipError::Timeout { .. } => true,
            MembershipError::Kafka { code, .. } => {
                is_coordinator_error(*code)
                    || *code == code::REBALANCE_IN_PROGRESS
                    || kafka_protocol::error::ResponseError::try_from_code(*code)
                        .is_some_and(|e| e.is_retriable())
            }
            _ => false,
        }
    }

    /// The connection this error came from cannot be trusted any more.
    fn breaks_connection(&self) -> bool {
        matches!(
            self,
            MembershipError::Io { .. }
                | MembershipError::Timeout { .. }
                | MembershipError::Protocol { .. }
        )
    }
}

/// Exponential backoff between retries, never sleeping past a deadline.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// Sleeps the next backoff step; when the deadline comes first, sleeps until it and
    /// returns false (so callers give up instead of retrying in a tight loop).
    async fn sleep(&mut self, deadline: Instant) -> bool {
        let wake = Instant::now() + self.next;
        if wake >= deadline {
            tokio::time::sleep_until(deadline).await;
            return false;
        }
        tokio::time::sleep_until(wake).await;
        self.next = (self.next * 2).min(Self::MAX);
        true
    }
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

    /// Joins (or rejoins) the group and waits for this member's assignment. On the leader,
    /// `assignor` computes everyone's assignment from their `user_data`.
    ///
    /// Forgets the current generation first: commit before calling this.
    pub async fn join(
        &mut self,
        user_data: Bytes,
        assignor: &dyn LeaderAssignor,
    ) -> Result<Assignment, MembershipError> {
        let started = Instant::now();
        let deadline = started + self.config.join_timeout;
        let previous_generation = self.generation.take();
        let owned = std::mem::take(&mut self.partitions);
        let metadata = encode_subscription(
            &self.config.topic,
            &user_data,
            &owned,
            previous_generation.unwrap_or(-1),
        )?;
        let mut reason = if previous_generation.is_some() {
            "rejoining after a rebalance"
        } else {
            "joining"
        }
        .to_string();
        let mut backoff = Backoff::new();
        let mut last_error: Option<MembershipError> = None;

        loop {
            if Instant::now() >= deadline {
                return Err(last_error.unwrap_or(MembershipError::Timeout {
                    what: format!("joining group {}", self.config.group_id),
                    after: self.config.join_timeout,
                }));
            }
            // ---- JoinGroup
            let join = match self.join_group(&metadata, &reason, deadline).await {
                Ok(join) => join,
                Err(e) if e.is_retriable() => {
                    tracing::warn!(group = %self.config.group_id, error = %e, "join group failed, retrying");
                    self.coordinator = None;
                    last_error = Some(e);
                    backoff.sleep(deadline).await; // past the deadline, the check above returns
                    continue;
                }
                Err(e) => return Err(e),
            };
            match join.error_code {
                code::NONE => {}
                code::MEMBER_ID_REQUIRED => {
                    tracing::debug!(group = %self.config.group_id, member_id = %join.member_id, "coordinator assigned a member id");
                    self.member_id = join.member_id.to_string();
                    reason = "rejoining with the assigned member id".into();
                    continue;
                }
                code::UNKNOWN_MEMBER_ID => {
                    tracing::info!(group = %self.config.group_id, member_id = %self.member_id, "member id unknown to coordinator, joining afresh");
                    self.member_id.clear();
                    reason = "member id was unknown".into();
                    continue;
                }
                code::REBALANCE_IN_PROGRESS | code::ILLEGAL_GENERATION => {
                    reason = format!("join answered {}", error_name(join.error_code));
                    backoff.sleep(deadline).await;
                    continue;
                }
                c if is_coordinator_error(c) => {
                    self.coordinator_moved("JoinGroup", c);
                    last_error = Some(MembershipError::kafka("JoinGroup", c, None));
                    backoff.sleep(deadline).await;
                    continue;
                }
                code::FENCED_INSTANCE_ID => {
                    return Err(self.fenced(
                        "JoinGroup",
                        code::FENCED_INSTANCE_ID,
                        "another instance uses this group instance id",
                    ))
                }
                c => return Err(MembershipError::kafka("JoinGroup", c, None)),
            }

            self.member_id = join.member_id.to_string();
            let generation_id = join.generation_id;
            let leader = !join.leader.is_empty() && join.leader == join.member_id;
            tracing::debug!(
                group = %self.config.group_id, generation = generation_id, member_id = %self.member_id,
                leader, members = join.members.len(), skip_assignment = join.skip_assignment, "joined group"
            );
            let assignments = if leader && !join.skip_assignment {
                self.run_assignor(&join, assignor)?
            } else {
                Vec::new()
            };

            // ---- SyncGroup
            let (body, version) = match self.sync_group(generation_id, assignments, deadline).await
            {
                Ok(r) => r,
                Err(e) if e.is_retriable() => {
                    tracing::warn!(group = %self.config.group_id, error = %e, "sync group failed, rejoining");
                    self.coordinator = None;
                    last_error = Some(e);
                    backoff.sleep(deadline).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Read the error code before decoding the rest: with an error the assignment may be
            // garbage (librdkafka's mock cluster sends one the decoder rejects).
            let error_offset = if version >= 1 { 4 } else { 0 };
            let sync_code =
                peek_i16(&body, error_offset).ok_or_else(|| MembershipError::Protocol {
                    addr: self.coordinator_addr(),
                    message: "truncated SyncGroup response".into(),
                })?;
            match sync_code {
                code::NONE => {}
                code::REBALANCE_IN_PROGRESS | code::ILLEGAL_GENERATION => {
                    tracing::debug!(group = %self.config.group_id, generation = generation_id, error = %error_name(sync_code), "sync group refused, rejoining");
                    reason = format!("sync answered {}", error_name(sync_code));
                    continue;
                }
                code::UNKNOWN_MEMBER_ID => {
                    self.member_id.clear();
                    reason = "member id was unknown at sync".into();
                    continue;
                }
                c if is_coordinator_error(c) => {
                    self.coordinator_moved("SyncGroup", c);
                    last_error = Some(MembershipError::kafka("SyncGroup", c, None));
                    backoff.sleep(deadline).await;
                    continue;
                }
                code::FENCED_INSTANCE_ID => {
                    return Err(self.fenced(
                        "SyncGroup",
                        code::FENCED_INSTANCE_ID,
                        "another instance uses this group instance id",
                    ))
                }
                c => return Err(MembershipError::kafka("SyncGroup", c, None)),
            }
            let sync = SyncGroupResponse::decode(&mut body.clone(), version).map_err(|e| {
                MembershipError::Protocol {
                    addr: self.coordinator_addr(),
                    message: format!("decoding SyncGroup v{version} response: {e}"),
                }
            })?;
            let (partitions, assignment_data) =
                decode_assignment(&self.config.topic, &sync.assignment).map_err(|message| {
                    MembershipError::Protocol {
                        addr: self.coordinator_addr(),
                        message,
                    }
                })?;
            self.generation = Some(generation_id);
            self.partitions = partitions.clone();
            tracing::info!(
                group = %self.config.group_id, generation = generation_id, member_id = %self.member_id, leader,
                partitions = ?partitions, elapsed_ms = started.elapsed().as_millis() as u64, "group assignment received"
            );
            return Ok(Assignment {
                generation_id,
                member_id: self.member_id.clone(),
                leader,
                partitions,
                user_data: assignment_data,
            });
        }
    }

    async fn join_group(
        &mut self,
        metadata: &Bytes,
        reason: &str,
        deadline: Instant,
    ) -> Result<JoinGroupResponse, MembershipError> {
        let config = &self.config;
        let group_id = GroupId(StrBytes::from_string(config.group_id.clone()));
        let member_id = StrBytes::from_string(self.member_id.clone());
        let instance = config.group_instance_id.clone().map(StrBytes::from_string);
        let protocol_name = StrBytes::from_string(config.protocol_name.clone());
        let reason = StrBytes::from_string(format!("paystream: {reason}"));
        let session_ms = config.session_timeout.as_millis() as i32;
        let rebalance_ms = config.rebalance_timeout.as_millis() as i32;
        let metadata = metadata.clone();
        // The coordinator holds JoinGroup until every member rejoined or the rebalance timeout ran out.
        let timeout = bounded(config.rebalance_timeout + Duration::from_secs(5), deadline);
        self.call(
            move |v| {
                let mut req = JoinGroupRequest::default();
                req.group_id = group_id.clone();
                req.session_timeout_ms = session_ms;
                req.rebalance_timeout_ms = rebalance_ms;
                req.member_id = member_id.clone();
                if v >= 5 {
                    req.group_instance_id = instance.clone();
                }
                req.protocol_type = StrBytes::from_static_str(PROTOCOL_TYPE);
                let mut protocol = JoinGroupRequestProtocol::default();
                protocol.name = protocol_name.clone();
                protocol.metadata = metadata.clone();
                req.protocols = vec![protocol];
                if v >= 8 {
                    req.reason = Some(reason.clone());
                }
                req
            },
            timeout,
            deadline,
        )
        .await
    }

    fn run_assignor(
        &self,
        join: &JoinGroupResponse,
        assignor: &dyn LeaderAssignor,
    ) -> Result<Vec<SyncGroupRequestAssignment>, MembershipError> {
        let members: Vec<JoinedMember> = join
            .members
            .iter()
            .map(|m| {
                let user_data = match decode_subscription(&m.metadata) {
                    Ok(sub) => sub.user_data.unwrap_or_default(),
                    Err(error) => {
                        tracing::warn!(group = %self.config.group_id, member_id = %m.member_id, %error, "undecodable member subscription, passing empty user data");
                        Bytes::new()
                    }
                };
                JoinedMember {
                    member_id: m.member_id.to_string(),
                    group_instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
                    user_data,
                }
            })
            .collect();
        let mut plan = assignor.assign(&members);
        let mut out = Vec::with_capacity(members.len());
        for m in &members {
            let (partitions, user_data) = plan.remove(&m.member_id).unwrap_or_default();
            let mut a = SyncGroupRequestAssignment::default();
            a.member_id = StrBytes::from_string(m.member_id.clone());
            a.assignment = encode_assignment(&self.config.topic, &partitions, &user_data)?;
            out.push(a);
        }
        for unknown in plan.keys() {
            tracing::warn!(group = %self.config.group_id, member_id = %unknown, "assignor returned an assignment for a member not in the generation");
        }
        tracing::debug!(group = %self.config.group_id, members = members.len(), "computed group assignment as leader");
        Ok(out)
    }

    async fn sync_group(
        &mut self,
        generation_id: i32,
        assignments: Vec<SyncGroupRequestAssignment>,
        deadline: Instant,
    ) -> Result<(Bytes, i16), MembershipError> {
        let config = &self.config;
        let group_id = GroupId(StrBytes::from_string(config.group_id.clone()));
        let member_id = StrBytes::from_string(self.member_id.clone());
        let instance = config.group_instance_id.clone().map(StrBytes::from_string);
        let protocol_name = StrBytes::from_string(config.protocol_name.clone());
        // Followers wait here until the leader's SyncGroup arrives.
        let timeout = bounded(config.rebalance_timeout + Duration::from_secs(5), deadline);
        self.call_raw(
            move |v| {
                let mut req = SyncGroupRequest::default();
                req.group_id = group_id.clone();
                req.generation_id = generation_id;
                req.member_id = member_id.clone();
                if v >= 3 {
                    req.group_instance_id = instance.clone();
                }
                if v >= 5 {
                    req.protocol_type = Some(StrBytes::from_static_str(PROTOCOL_TYPE));
                    req.protocol_name = Some(protocol_name.clone());
                }
                req.assignments = assignments.clone();
                req
            },
            timeout,
            deadline,
        )
        .await
    }

    /// Tells the coordinator this member is alive. Call every `heartbeat_interval` between joins.
    /// Returns `RebalanceNeeded` (without a request) when this member has no current generation.
    pub async fn heartbeat(&mut self) -> Result<HeartbeatOutcome, MembershipError> {
        let Some(generation_id) = self.generation else {
            return Ok(HeartbeatOutcome::RebalanceNeeded);
        };
        let deadline = Instant::now() + self.config.request_timeout;
        let group_id = GroupId(StrBytes::from_string(self.config.group_id.clone()));
        let member_id = StrBytes::from_string(self.member_id.clone());
        let instance = self
            .config
            .group_instance_id
            .clone()
            .map(StrBytes::from_string);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .call(
                    |v| {
                        let mut req = HeartbeatRequest::default();
                        req.group_id = group_id.clone();
                        req.generation_id = generation_id;
                        req.member_id = member_id.clone();
                        if v >= 3 {
                            req.group_instance_id = instance.clone();
                        }
                        req
                    },
                    bounded(self.config.request_timeout, deadline),
                    deadline,
                )
                .await;
            let error_code = match result {
                Ok(resp) => resp.error_code,
                Err(e) if e.is_retriable() && attempt < 2 => {
                    tracing::debug!(group = %self.config.group_id, error = %e, "heartbeat failed, retrying on a fresh connection");
                    self.coordinator = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            return match error_code {
                code::NONE => Ok(HeartbeatOutcome::Stable),
                code::REBALANCE_IN_PROGRESS => {
                    tracing::info!(group = %self.config.group_id, generation = generation_id, "rebalance in progress");
                    Ok(HeartbeatOutcome::RebalanceNeeded)
                }
                code::ILLEGAL_GENERATION => {
                    tracing::info!(group = %self.config.group_id, generation = generation_id, "generation is stale");
                    self.generation = None;
                    Ok(HeartbeatOutcome::RebalanceNeeded)
                }
                code::UNKNOWN_MEMBER_ID => {
                    tracing::info!(group = %self.config.group_id, member_id = %self.member_id, "member was expelled from the group");
                    self.generation = None;
                    self.member_id.clear();
                    Ok(HeartbeatOutcome::RebalanceNeeded)
                }
                code::FENCED_INSTANCE_ID => {
                    let err = self.fenced(
                        "Heartbeat",
                        error_code,
                        "another instance uses this group instance id",
                    );
                    self.generation = None;
                    Err(err)
                }
                c if is_coordinator_error(c) && attempt < 2 => {
                    self.coordinator_moved("Heartbeat", c);
                    continue;
                }
                c => Err(MembershipError::kafka("Heartbeat", c, None)),
            };
        }
    }

    /// Commits `(partition, offset)` pairs of the input topic as this member in its current
    /// generation. A member whose generation is stale or who was expelled gets `Fenced`.
    pub async fn commit_offsets(&mut self, offsets: &[(i32, i64)]) -> Result<(), MembershipError> {
        let Some(generation_id) = self.generation else {
            return Err(self.fenced(
                "OffsetCommit",
                code::NONE,
                "not a member of a current generation",
            ));
        };
        if offsets.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.discovery_budget();
        let group_id = GroupId(StrBytes::from_string(self.config.group_id.clone()));
        let member_id = StrBytes::from_string(self.member_id.clone());
        let instance = self
            .config
            .group_instance_id
            .clone()
            .map(StrBytes::from_string);
        let mut topic = OffsetCommitRequestTopic::default();
        topic.name = TopicName(StrBytes::from_string(self.config.topic.clone()));
        topic.partitions = offsets
            .iter()
            .map(|&(partition, offset)| {
                let mut p = OffsetCommitRequestPartition::default();
                p.partition_index = partition;
                p.committed_offset = offset;
                p
            })
            .collect();
        let mut backoff = Backoff::new();
        loop {
            let result = self
                .call(
                    |v| {
                        let mut req = OffsetCommitRequest::default();
                        req.group_id = group_id.clone();
                        req.generation_id_or_member_epoch = generation_id;
                        req.member_id = member_id.clone();
                        if v >= 7 {
                            req.group_instance_id = instance.clone();
                        }
                        req.topics = vec![topic.clone()];
                        req
                    },
                    bounded(self.config.request_timeout, deadline),
                    deadline,
                )
                .await;
            let resp = match result {
                Ok(resp) => resp,
                Err(e) if e.is_retriable() => {
                    tracing::warn!(group = %self.config.group_id, error = %e, "offset commit failed, retrying");
                    self.coordinator = None;
                    if backoff.sleep(deadline).await {
                        continue;
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            let error_code = resp
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .map(|p| p.error_code)
                .find(|&c| c != code::NONE)
                .unwrap_or(code::NONE);
            match error_code {
                code::NONE => {
                    tracing::debug!(group = %self.config.group_id, generation = generation_id, partitions = offsets.len(), "offsets committed");
                    return Ok(());
                }
                code::ILLEGAL_GENERATION | code::UNKNOWN_MEMBER_ID | code::FENCED_INSTANCE_ID => {
                    let err = self.fenced("OffsetCommit", error_code, error_name(error_code));
                    tracing::warn!(group = %self.config.group_id, generation = generation_id, member_id = %self.member_id, error = %error_name(error_code), "offset commit fenced");
                    self.generation = None;
                    if error_code == code::UNKNOWN_MEMBER_ID {
                        self.member_id.clear();
                    }
                    return Err(err);
                }
                c if is_coordinator_error(c) => {
                    self.coordinator_moved("OffsetCommit", c);
                    if backoff.sleep(deadline).await {
                        continue;
                    }
                    return Err(MembershipError::kafka("OffsetCommit", c, None));
                }
                c => return Err(MembershipError::kafka("OffsetCommit", c, None)),
            }
        }
    }

    /// Committed offsets of the given input-topic partitions; partitions without a committed
    /// offset are absent. Needs no membership.
    pub async fn fetch_offsets(
        &mut self,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, i64>, MembershipError> {
        if partitions.is_empty() {
            return Ok(BTreeMap::new());
        }
        let deadline = Instant::now() + self.discovery_budget();
        let group_id = GroupId(StrBytes::from_string(self.config.group_id.clone()));
        let topic_name = TopicName(StrBytes::from_string(self.config.topic.clone()));
        let mut backoff = Backoff::new();
        loop {
            let result = self
                .call(
                    |v| {
                        let mut req = OffsetFetchRequest::default();
                        if v >= 8 {
                            let mut topic = OffsetFetchRequestTopics::default();
                            topic.name = topic_name.clone();
                            topic.partition_indexes = partitions.to_vec();
                            let mut group = OffsetFetchRequestGroup::default();
                            group.group_id = group_id.clone();
                            group.member_id = None;
                            group.member_epoch = -1;
                            group.topics = Some(vec![topic]);
                            req.groups = vec![group];
                        } else {
                            let mut topic = OffsetFetchRequestTopic::default();
                            topic.name = topic_name.clone();
                            topic.partition_indexes = partitions.to_vec();
                            req.group_id = group_id.clone();
                            req.topics = Some(vec![topic]);
                        }
                        req
                    },
                    bounded(self.config.request_timeout, deadline),
                    deadline,
                )
                .await;
            let resp = match result {
                Ok(resp) => resp,
                Err(e) if e.is_retriable() => {
                    tracing::warn!(group = %self.config.group_id, error = %e, "offset fetch failed, retrying");
                    self.coordinator = None;
                    if backoff.sleep(deadline).await {
                        continue;
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            // (group error, [(partition, offset, error)]) in either layout.
            let (group_error, rows): (i16, Vec<(i32, i64, i16)>) =
                if let Some(group) = resp.groups.first() {
                    let rows = group
                        .topics
                        .iter()
                        .filter(|t| t.name.0.as_str() == self.config.topic)
                        .flat_map(|t| t.partitions.iter())
                        .map(|p| (p.partition_index, p.committed_offset, p.error_code))
                        .collect();
                    (group.error_code, rows)
                } else {
                    let rows = resp
                        .topics
                        .iter()
                        .filter(|t| t.name.0.as_str() == self.config.topic)
                        .flat_map(|t| t.partitions.iter())
                        .map(|p| (p.partition_index, p.committed_offset, p.error_code))
                        .collect();
                    (resp.error_code, rows)
                };
            let error_code = std::iter::once(group_error)
                .chain(rows.iter().map(|r| r.2))
                .find(|&c| c != code::NONE)
                .unwrap_or(code::NONE);
            match error_code {
                code::NONE => {
                    return Ok(rows
                        .into_iter()
                        .filter(|r| r.1 >= 0)
                        .map(|r| (r.0, r.1))
                        .collect());
                }
                c if is_coordinator_error(c) || c == code::UNSTABLE_OFFSET_COMMIT => {
                    if is_coordinator_error(c) {
                        self.coordinator_moved("OffsetFetch", c);
                    }
                    if backoff.sleep(deadline).await {
                        continue;
                    }
                    return Err(MembershipError::kafka("OffsetFetch", c, None));
                }
                c => return Err(MembershipError::kafka("OffsetFetch", c, None)),
            }
        }
    }

    /// Leaves the group (LeaveGroup), so the others rebalance at once instead of after the
    /// session timeout. For a static member this gives up its place too; to restart without a
    /// rebalance, drop the member without leaving and rejoin with the same instance id in time.
    pub async fn leave(&mut self) -> Result<(), MembershipError> {
        if self.member_id.is_empty() && self.config.group_instance_id.is_none() {
            self.generation = None;
            return Ok(());
        }
        let deadline = Instant::now() + self.config.request_timeout;
        let group_id = GroupId(StrBytes::from_string(self.config.group_id.clone()));
        let member_id = StrBytes::from_string(self.member_id.clone());
        let instance = self
            .config
            .group_instance_id
            .clone()
            .map(StrBytes::from_string);
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let result = self
                .call(
                    |v| {
                        let mut req = LeaveGroupRequest::default();
                        req.group_id = group_id.clone();
                        if v >= 3 {
                            let mut m = MemberIdentity::default();
                            m.member_id = member_id.clone();
                            m.group_instance_id = instance.clone();
                            if v >= 5 {
                                m.reason = Some(StrBytes::from_static_str("paystream: leaving"));
                            }
                            req.members = vec![m];
                        } else {
                            req.member_id = member_id.clone();
                        }
                        req
                    },
                    bounded(self.config.request_timeout, deadline),
                    deadline,
                )
                .await;
            let resp = match result {
                Ok(resp) => resp,
                Err(e) if e.is_retriable() && attempt < 2 => {
                    self.coordinator = None;
                    continue;
                }
                Err(e) => break Err(e),
            };
            let error_code = std::iter::once(resp.error_code)
                .chain(resp.members.iter().map(|m| m.error_code))
                .find(|&c| c != code::NONE)
                .unwrap_or(code::NONE);
            match error_code {
                code::NONE => break Ok(()),
                // Already gone (expelled, or replaced by a newer static instance): nothing to leave.
                code::UNKNOWN_MEMBER_ID | code::FENCED_INSTANCE_ID => {
                    tracing::debug!(group = %self.config.group_id, error = %error_name(error_code), "leave group: member already gone");
                    break Ok(());
                }
                c if is_coordinator_error(c) && attempt < 2 => {
                    self.coordinator_moved("LeaveGroup", c);
                    continue;
                }
                c => break Err(MembershipError::kafka("LeaveGroup", c, None)),
            }
        };
        if outcome.is_ok() {
            tracing::info!(group = %self.config.group_id, member_id = %self.member_id, "left group");
        }
        self.generation = None;
        self.member_id.clear();
        self.partitions.clear();
        outcome
    }

    // ---- coordinator connection

    fn coordinator_addr(&self) -> String {
        self.coordinator
            .as_ref()
            .map(|c| c.addr().to_string())
            .unwrap_or_default()
    }

    fn coordinator_moved(&mut self, api: &'static str, c: i16) {
        tracing::info!(group = %self.config.group_id, api, error = %error_name(c), "coordinator unavailable or moved, rediscovering");
        if c != code::COORDINATOR_LOAD_IN_PROGRESS {
            self.coordinator = None;
        }
    }

    /// Sends a request built for the negotiated version to the coordinator and decodes the answer.
    async fn call<R: Request>(
        &mut self,
        build: impl FnOnce(i16) -> R,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<R::Response, MembershipError> {
        let (body, version) = self.call_raw(build, timeout, deadline).await?;
        R::Response::decode(&mut body.clone(), version).map_err(|e| {
            let addr = self.coordinator_addr();
            self.coordinator = None;
            MembershipError::Protocol {
                addr,
                message: format!(
                    "decoding {} v{version} response: {e}",
                    super::wire::api_name(R::KEY)
                ),
            }
        })
    }

    /// Like [`Self::call`], returning the undecoded response body and the version used.
    async fn call_raw<R: Request>(
        &mut self,
        build: impl FnOnce(i16) -> R,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<(Bytes, i16), MembershipError> {
        let conn = self.coordinator(deadline).await?;
        let version = conn.version_of::<R>()?;
        let req = build(version);
        match conn.request_raw(&req, version, timeout).await {
            Ok(body) => Ok((body, version)),
            Err(e) => {
                if e.breaks_connection() {
                    self.coordinator = None;
                }
                Err(e)
            }
        }
    }

    /// The coordinator connection, discovering the coordinator (with backoff) if needed.
    async fn coordinator(&mut self, deadline: Instant) -> Result<&mut Connection, MembershipError> {
        if self.coordinator.as_ref().is_some_and(|c| !c.is_usable()) {
            tracing::debug!(group = %self.config.group_id, "dropping a coordinator connection with an abandoned request");
            self.coordinator = None;
        }
        if self.coordinator.is_none() {
            let conn = self.discover(deadline).await?;
            self.coordinator = Some(conn);
        }
        self.coordinator
            .as_mut()
            .ok_or_else(|| MembershipError::Protocol {
                addr: String::new(),
                message: "no coordinator connection".into(),
            })
    }

    async fn discover(&mut self, deadline: Instant) -> Result<Connection, MembershipError> {
        let mut backoff = Backoff::new();
        loop {
            let n = self.config.bootstrap.len();
            let mut last_error = None;
            for _ in 0..n {
                let addr = self.config.bootstrap[self.bootstrap_cursor % n].clone();
                match self.find_coordinator_via(&addr, deadline).await {
                    Ok(conn) => return Ok(conn),
                    Err(e) if e.is_retriable() || e.breaks_connection() => {
                        tracing::debug!(group = %self.config.group_id, bootstrap = %addr, error = %e, "coordinator lookup failed");
                        last_error = Some(e);
                        self.bootstrap_cursor = self.bootstrap_cursor.wrapping_add(1);
                    }
                    Err(e) => return Err(e),
                }
            }
            if !backoff.sleep(deadline).await {
                return Err(last_error.unwrap_or(MembershipError::Timeout {
                    what: format!("finding the coordinator of group {}", self.config.group_id),
                    after: self.discovery_budget(),
                }));
            }
        }
    }

    async fn find_coordinator_via(
        &self,
        bootstrap: &str,
        deadline: Instant,
    ) -> Result<Connection, MembershipError> {
        let timeout = bounded(self.config.request_timeout, deadline);
        let mut conn = Connection::connect(bootstrap, &self.config.client_id, timeout).await?;
        let version = conn.version_of::<FindCoordinatorRequest>()?;
        let key = StrBytes::from_string(self.config.group_id.clone());
        let mut req = FindCoordinatorRequest::default();
        if version >= 4 {
            req.coordinator_keys = vec![key];
        } else {
            req.key = key;
        }
        // key_type 0 = group (v1+; the field defaults to 0).
        let resp: FindCoordinatorResponse = conn.request(&req, version, timeout).await?;
        let (error_code, error_message, host, port) = if version >= 4 {
            let c = resp
                .coordinators
                .first()
                .ok_or_else(|| MembershipError::Protocol {
                    addr: bootstrap.to_string(),
                    message: "FindCoordinator answered no coordinator".into(),
                })?;
            (
                c.error_code,
                c.error_message.clone(),
                c.host.to_string(),
                c.port,
            )
        } else {
            (
                resp.error_code,
                resp.error_message.clone(),
                resp.host.to_string(),
                resp.port,
            )
        };
        if error_code != code::NONE {
            return Err(MembershipError::kafka(
                "FindCoordinator",
                error_code,
                error_message.as_deref(),
            ));
        }
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        tracing::debug!(group = %self.config.group_id, coordinator = %addr, "found group coordinator");
        if addr == conn.addr() {
            return Ok(conn);
        }
        drop(conn);
        Connection::connect(
            &addr,
            &self.config.client_id,
            bounded(self.config.request_timeout, deadline),
        )
        .await
    }
}

/// `wanted`, but not past `deadline` (and at least a little, so a request can still be tried).
fn bounded(wanted: Duration, deadline: Instant) -> Duration {
    let left = deadline.saturating_duration_since(Instant::now());
    wanted.min(left).max(Duration::from_millis(100))
}

// ---- embedded consumer protocol

/// `ConsumerProtocolSubscription` with its version prefix, as the JoinGroup member metadata.
fn encode_subscription(
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

fn decode_subscription(metadata: &Bytes) -> Result<ConsumerProtocolSubscription, String> {
    let (mut body, version) = split_version(metadata)?;
    ConsumerProtocolSubscription::decode(&mut body, version.min(CONSUMER_PROTOCOL_VERSION))
        .map_err(|e| format!("decoding consumer subscription v{version}: {e}"))
}

/// `ConsumerProtocolAssignment` with its version prefix, as a SyncGroup assignment.
fn encode_assignment(
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
fn decode_assignment(topic: &str, bytes: &Bytes) -> Result<(Vec<i32>, Bytes), String> {
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

#[cfg(test)]
mod tests;
