//! Staying in the group and leaving it: Heartbeat (which also tells a member that a rebalance
//! started or that it was expelled), LeaveGroup, and LeaveGroup on behalf of other members
//! (removing dead ones, as KIP-345's admin `removeMembersFromConsumerGroup` does). All are
//! retried once, at once, on a fresh connection: a heartbeat is repeated soon anyway, and a
//! failed leave ends in the session timeout.

use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, LeaveGroupRequest, LeaveGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;

use super::retry::{Attempt, Operation, Retry, SingleRequest};
use super::{GroupMember, HeartbeatOutcome, Identity, MemberToRemove, MembershipError};
use crate::coordination::error::{code, error_name};

impl GroupMember {
    /// Tells the coordinator this member is alive. Call every `heartbeat_interval` between joins.
    /// Returns `RebalanceNeeded` (without a request) when this member has no current generation.
    pub async fn heartbeat(&mut self) -> Result<HeartbeatOutcome, MembershipError> {
        let Some(generation_id) = self.generation else {
            return Ok(HeartbeatOutcome::RebalanceNeeded);
        };
        let retry = Retry::once(
            format!("heartbeat to group {}", self.config.group_id),
            self.config.request_timeout,
        );
        let mut heartbeat = Heartbeat {
            generation_id,
            id: self.identity(),
        };
        self.with_retries(retry, &mut heartbeat).await
    }

    /// Leaves the group (LeaveGroup), so the others rebalance at once instead of after the
    /// session timeout. For a static member this gives up its place too; to restart without a
    /// rebalance, drop the member without leaving and rejoin with the same instance id in time.
    pub async fn leave(&mut self) -> Result<(), MembershipError> {
        if self.member_id.is_empty() && self.config.group_instance_id.is_none() {
            self.generation = None;
            return Ok(());
        }
        let retry = Retry::once(
            format!("leaving group {}", self.config.group_id),
            self.config.request_timeout,
        );
        let mut leave = Leave {
            id: self.identity(),
        };
        let outcome = self.with_retries(retry, &mut leave).await;
        if outcome.is_ok() {
            tracing::info!(group = %self.config.group_id, member_id = %self.member_id, "left group");
        }
        self.generation = None;
        self.member_id.clear();
        self.partitions.clear();
        outcome
    }
}

impl GroupMember {
    /// Removes other members from the group at once (LeaveGroup v3+ with their member ids and
    /// instance ids), so the group rebalances without waiting for their session timeout. Returns
    /// each member's error code (NONE, or UNKNOWN_MEMBER_ID / FENCED_INSTANCE_ID for a member
    /// already gone or replaced). A member removed while alive is fenced and joins again.
    pub async fn remove_members(
        &mut self,
        members: &[MemberToRemove],
    ) -> Result<Vec<(String, i16)>, MembershipError> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let retry = Retry::once(
            format!("removing members from group {}", self.config.group_id),
            self.config.request_timeout,
        );
        let mut remove = RemoveMembers {
            id: self.identity(),
            members: members.to_vec(),
        };
        self.with_retries(retry, &mut remove).await
    }
}

/// LeaveGroup on behalf of other members (v3+: the batch form).
struct RemoveMembers {
    id: Identity,
    members: Vec<MemberToRemove>,
}

impl Operation for RemoveMembers {
    type Output = Vec<(String, i16)>;

    async fn attempt(
        &mut self,
        member: &mut GroupMember,
        deadline: Instant,
    ) -> Result<Attempt<Self::Output>, MembershipError> {
        let version = member
            .coordinator(deadline)
            .await?
            .version_of::<LeaveGroupRequest>()?;
        if version < 3 {
            return Ok(Attempt::Done(Err(MembershipError::Config(format!(
                "removing other members needs LeaveGroup v3+, the broker offers v{version}"
            )))));
        }
        let timeout = member.request_timeout(deadline);
        let build = |v: i16| {
            let mut req = LeaveGroupRequest::default();
            req.group_id = self.id.group_id.clone();
            req.members = self
                .members
                .iter()
                .map(|m| {
                    let mut identity = MemberIdentity::default();
                    identity.member_id = StrBytes::from_string(m.member_id.clone());
                    identity.group_instance_id =
                        m.group_instance_id.clone().map(StrBytes::from_string);
                    if v >= 5 {
                        identity.reason =
                            Some(StrBytes::from_string(format!("paystream: {}", m.reason)));
                    }
                    identity
                })
                .collect();
            req
        };
        let response: LeaveGroupResponse = member.call(build, timeout, deadline).await?;
        if response.error_code != code::NONE {
            return Ok(Attempt::from_code("LeaveGroup", response.error_code));
        }
        Ok(Attempt::Done(Ok(response
            .members
            .iter()
            .map(|m| (m.member_id.to_string(), m.error_code))
            .collect())))
    }
}

/// A Heartbeat in one generation.
struct Heartbeat {
    generation_id: i32,
    id: Identity,
}

impl SingleRequest for Heartbeat {
    type Request = HeartbeatRequest;
    type Output = HeartbeatOutcome;

    fn request(&self, version: i16) -> HeartbeatRequest {
        let mut req = HeartbeatRequest::default();
        req.group_id = self.id.group_id.clone();
        req.generation_id = self.generation_id;
        req.member_id = self.id.member_id.clone();
        if version >= 3 {
            req.group_instance_id = self.id.instance.clone();
        }
        req
    }

    fn answered(
        &self,
        member: &mut GroupMember,
        response: HeartbeatResponse,
    ) -> Attempt<HeartbeatOutcome> {
        let (group, generation) = (&member.config.group_id, self.generation_id);
        match response.error_code {
            code::NONE => Attempt::Done(Ok(HeartbeatOutcome::Stable)),
            code::REBALANCE_IN_PROGRESS => {
                tracing::info!(%group, generation, "rebalance in progress");
                Attempt::Done(Ok(HeartbeatOutcome::RebalanceNeeded))
            }
            code::ILLEGAL_GENERATION => {
                tracing::info!(%group, generation, "generation is stale");
                member.generation = None;
                Attempt::Done(Ok(HeartbeatOutcome::RebalanceNeeded))
            }
            code::UNKNOWN_MEMBER_ID => {
                tracing::info!(%group, member_id = %member.member_id, "member was expelled from the group");
                member.generation = None;
                member.member_id.clear();
                Attempt::Done(Ok(HeartbeatOutcome::RebalanceNeeded))
            }
            code::FENCED_INSTANCE_ID => {
                let err = member.instance_fenced("Heartbeat");
                member.generation = None;
                Attempt::Done(Err(err))
            }
            c => Attempt::from_code("Heartbeat", c),
        }
    }
}

/// A LeaveGroup of this member.
struct Leave {
    id: Identity,
}

impl SingleRequest for Leave {
    type Request = LeaveGroupRequest;
    type Output = ();

    fn request(&self, version: i16) -> LeaveGroupRequest {
        let mut req = LeaveGroupRequest::default();
        req.group_id = self.id.group_id.clone();
        if version >= 3 {
            let mut m = MemberIdentity::default();
            m.member_id = self.id.member_id.clone();
            m.group_instance_id = self.id.instance.clone();
            if version >= 5 {
                m.reason = Some(StrBytes::from_static_str("paystream: leaving"));
            }
            req.members = vec![m];
        } else {
            req.member_id = self.id.member_id.clone();
        }
        req
    }

    fn answered(&self, member: &mut GroupMember, response: LeaveGroupResponse) -> Attempt<()> {
        let error_code = std::iter::once(response.error_code)
            .chain(response.members.iter().map(|m| m.error_code))
            .find(|&c| c != code::NONE)
            .unwrap_or(code::NONE);
        match error_code {
            code::NONE => Attempt::Done(Ok(())),
            // Already gone (expelled, or replaced by a newer static instance): nothing to leave.
            code::UNKNOWN_MEMBER_ID | code::FENCED_INSTANCE_ID => {
                tracing::debug!(group = %member.config.group_id, error = %error_name(error_code), "leave group: member already gone");
                Attempt::Done(Ok(()))
            }
            c => Attempt::from_code("LeaveGroup", c),
        }
    }
}
