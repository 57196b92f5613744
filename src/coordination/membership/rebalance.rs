//! The rebalance handshake: JoinGroup (which forms a generation and elects a leader), the
//! leader's assignment, and SyncGroup (which hands every member its share).

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    JoinGroupRequest, JoinGroupResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use tokio::time::Instant;

use super::consumer_protocol::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription,
};
use super::retry::{Attempt, Operation, Retry};
use super::{
    bounded, Assignment, GroupMember, JoinedMember, LeaderAssignor, MembershipError, PROTOCOL_TYPE,
};
use crate::coordination::error::{code, error_name};
use crate::coordination::wire::peek_i16;

impl GroupMember {
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
        let retry = Retry::until_deadline(
            format!("joining group {}", self.config.group_id),
            self.config.join_timeout,
        );
        let previous_generation = self.generation.take();
        let owned = std::mem::take(&mut self.partitions);
        let metadata = encode_subscription(
            &self.config.topic,
            &user_data,
            &owned,
            previous_generation.unwrap_or(-1),
        )?;
        let reason = if previous_generation.is_some() {
            "rejoining after a rebalance"
        } else {
            "joining"
        };
        let mut round = JoinRound {
            metadata,
            reason: reason.to_string(),
            assignor,
        };
        let assignment = self.with_retries(retry, &mut round).await?;
        self.generation = Some(assignment.generation_id);
        self.partitions = assignment.partitions.clone();
        tracing::info!(
            group = %self.config.group_id, generation = assignment.generation_id, member_id = %self.member_id,
            leader = assignment.leader, partitions = ?assignment.partitions,
            elapsed_ms = started.elapsed().as_millis() as u64, "group assignment received"
        );
        Ok(assignment)
    }

    /// What to do after JoinGroup answered the error in `join`.
    fn join_refused(
        &mut self,
        join: &JoinGroupResponse,
        reason: &mut String,
    ) -> Attempt<Assignment> {
        match join.error_code {
            code::MEMBER_ID_REQUIRED => {
                tracing::debug!(group = %self.config.group_id, member_id = %join.member_id, "coordinator assigned a member id");
                self.member_id = join.member_id.to_string();
                *reason = "rejoining with the assigned member id".into();
                Attempt::Again
            }
            code::UNKNOWN_MEMBER_ID => {
                tracing::info!(group = %self.config.group_id, member_id = %self.member_id, "member id unknown to coordinator, joining afresh");
                self.member_id.clear();
                *reason = "member id was unknown".into();
                Attempt::Again
            }
            code::REBALANCE_IN_PROGRESS | code::ILLEGAL_GENERATION => {
                *reason = format!("join answered {}", error_name(join.error_code));
                Attempt::Later(None)
            }
            code::FENCED_INSTANCE_ID => Attempt::Done(Err(self.instance_fenced("JoinGroup"))),
            c => Attempt::from_code("JoinGroup", c),
        }
    }

    /// What to do after SyncGroup of `generation_id` answered `sync_code` (to the leader when
    /// `leader`).
    fn sync_refused(
        &mut self,
        generation_id: i32,
        sync_code: i16,
        leader: bool,
        reason: &mut String,
    ) -> Attempt<Assignment> {
        match sync_code {
            // librdkafka's mock cluster completes a generation as soon as the leader's SyncGroup
            // brings an assignment for every member, and answers a follower's SyncGroup that
            // arrives after that INVALID_REQUEST (`rd_kafka_mock_cgrp_classic_check_state`: state
            // Up); Kafka keeps the assignment for late followers. Rejoining gets a new
            // generation, as librdkafka's own consumer does after any SyncGroup error. The
            // leader's INVALID_REQUEST stays final: its assignments may really be malformed.
            code::INVALID_REQUEST if !leader => {
                tracing::info!(group = %self.config.group_id, generation = generation_id, "sync group answered invalid request (late follower), rejoining");
                *reason = "sync answered INVALID_REQUEST".into();
                Attempt::Again
            }
            code::REBALANCE_IN_PROGRESS | code::ILLEGAL_GENERATION => {
                tracing::debug!(group = %self.config.group_id, generation = generation_id, error = %error_name(sync_code), "sync group refused, rejoining");
                *reason = format!("sync answered {}", error_name(sync_code));
                Attempt::Again
            }
            code::UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                *reason = "member id was unknown at sync".into();
                Attempt::Again
            }
            code::FENCED_INSTANCE_ID => Attempt::Done(Err(self.instance_fenced("SyncGroup"))),
            c => Attempt::from_code("SyncGroup", c),
        }
    }

    /// The error code of a SyncGroup response, read before decoding the rest: with an error the
    /// assignment may be garbage (librdkafka's mock cluster sends one the decoder rejects).
    fn sync_error_code(&self, body: &Bytes, version: i16) -> Result<i16, MembershipError> {
        let error_offset = if version >= 1 { 4 } else { 0 };
        peek_i16(body, error_offset)
            .ok_or_else(|| self.coordinator_protocol_error("truncated SyncGroup response"))
    }

    /// This member's partitions and assignment user data from an error-free SyncGroup response.
    fn decode_sync(
        &self,
        body: &Bytes,
        version: i16,
    ) -> Result<(Vec<i32>, Bytes), MembershipError> {
        let sync = SyncGroupResponse::decode(&mut body.clone(), version).map_err(|e| {
            self.coordinator_protocol_error(format!("decoding SyncGroup v{version} response: {e}"))
        })?;
        decode_assignment(&self.config.topic, &sync.assignment)
            .map_err(|message| self.coordinator_protocol_error(message))
    }

    /// Sends JoinGroup with this member's subscription `metadata`.
    async fn join_group(
        &mut self,
        metadata: &Bytes,
        reason: &str,
        deadline: Instant,
    ) -> Result<JoinGroupResponse, MembershipError> {
        let config = &self.config;
        let id = self.identity();
        let protocol_name = StrBytes::from_string(config.protocol_name.clone());
        let reason = StrBytes::from_string(format!("paystream: {reason}"));
        let session_ms = config.session_timeout.as_millis() as i32;
        let rebalance_ms = config.rebalance_timeout.as_millis() as i32;
        let timeout = self.rebalance_request_timeout(deadline);
        let build = |v: i16| {
            let mut req = JoinGroupRequest::default();
            req.group_id = id.group_id;
            req.session_timeout_ms = session_ms;
            req.rebalance_timeout_ms = rebalance_ms;
            req.member_id = id.member_id;
            if v >= 5 {
                req.group_instance_id = id.instance;
            }
            req.protocol_type = StrBytes::from_static_str(PROTOCOL_TYPE);
            let mut protocol = JoinGroupRequestProtocol::default();
            protocol.name = protocol_name;
            protocol.metadata = metadata.clone();
            req.protocols = vec![protocol];
            if v >= 8 {
                req.reason = Some(reason);
            }
            req
        };
        self.call(build, timeout, deadline).await
    }

    /// The leader's part: runs `assignor` over the members of the generation in `join` and
    /// encodes everyone's assignment for SyncGroup.
    fn run_assignor(
        &self,
        members: &[JoinedMember],
        assignor: &dyn LeaderAssignor,
    ) -> Result<Vec<SyncGroupRequestAssignment>, MembershipError> {
        let mut plan = assignor.assign(members);
        let mut out = Vec::with_capacity(members.len());
        for m in members {
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

    /// The members of the generation in `join` (the leader's JoinGroup response lists them),
    /// with the user data of their subscriptions.
    fn joined_members(&self, join: &JoinGroupResponse) -> Vec<JoinedMember> {
        join.members
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
            .collect()
    }

    /// Sends SyncGroup for `generation_id` (with everyone's assignment on the leader) and
    /// returns the undecoded response and its version (see [`Self::sync_error_code`]).
    async fn sync_group(
        &mut self,
        generation_id: i32,
        assignments: Vec<SyncGroupRequestAssignment>,
        deadline: Instant,
    ) -> Result<(Bytes, i16), MembershipError> {
        let id = self.identity();
        let protocol_name = StrBytes::from_string(self.config.protocol_name.clone());
        let timeout = self.rebalance_request_timeout(deadline);
        let build = |v: i16| {
            let mut req = SyncGroupRequest::default();
            req.group_id = id.group_id;
            req.generation_id = generation_id;
            req.member_id = id.member_id;
            if v >= 3 {
                req.group_instance_id = id.instance;
            }
            if v >= 5 {
                req.protocol_type = Some(StrBytes::from_static_str(PROTOCOL_TYPE));
                req.protocol_name = Some(protocol_name);
            }
            req.assignments = assignments;
            req
        };
        self.call_raw(build, timeout, deadline).await
    }

    /// Bound on JoinGroup and SyncGroup, which the coordinator may hold for a whole rebalance:
    /// JoinGroup until every member rejoined or the rebalance timeout ran out, a follower's
    /// SyncGroup until the leader's SyncGroup arrives.
    fn rebalance_request_timeout(&self, deadline: Instant) -> Duration {
        bounded(
            self.config.rebalance_timeout + Duration::from_secs(5),
            deadline,
        )
    }
}

/// One round of the rebalance handshake, repeated until this member has its assignment.
struct JoinRound<'a> {
    /// This member's subscription (JoinGroup member metadata).
    metadata: Bytes,
    /// Why this member (re)joins, sent with JoinGroup; updated when a round is repeated.
    reason: String,
    assignor: &'a dyn LeaderAssignor,
}

impl Operation for JoinRound<'_> {
    type Output = Assignment;

    /// JoinGroup, then (on the leader) the assignor, then SyncGroup.
    async fn attempt(
        &mut self,
        member: &mut GroupMember,
        deadline: Instant,
    ) -> Result<Attempt<Assignment>, MembershipError> {
        let join = member
            .join_group(&self.metadata, &self.reason, deadline)
            .await?;
        if join.error_code != code::NONE {
            return Ok(member.join_refused(&join, &mut self.reason));
        }
        member.member_id = join.member_id.to_string();
        let generation_id = join.generation_id;
        let leader = !join.leader.is_empty() && join.leader == join.member_id;
        tracing::debug!(
            group = %member.config.group_id, generation = generation_id, member_id = %member.member_id,
            leader, members = join.members.len(), skip_assignment = join.skip_assignment, "joined group"
        );
        let members = if leader {
            member.joined_members(&join)
        } else {
            Vec::new()
        };
        let assignments = if leader && !join.skip_assignment {
            member.run_assignor(&members, self.assignor)?
        } else {
            Vec::new()
        };

        let (body, version) = member
            .sync_group(generation_id, assignments, deadline)
            .await?;
        let sync_code = member.sync_error_code(&body, version)?;
        if sync_code != code::NONE {
            return Ok(member.sync_refused(generation_id, sync_code, leader, &mut self.reason));
        }
        let (partitions, user_data) = member.decode_sync(&body, version)?;
        Ok(Attempt::Done(Ok(Assignment {
            generation_id,
            member_id: member.member_id.clone(),
            leader,
            leader_id: join.leader.to_string(),
            partitions,
            user_data,
            members,
        })))
    }
}
