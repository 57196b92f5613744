//! Committed offsets of the input topic: OffsetCommit (as this member in its generation, so a
//! zombie is fenced) and OffsetFetch (which needs no membership). Both retry with backoff until
//! the discovery budget (the larger of the request and rebalance timeouts) has passed.

use std::collections::BTreeMap;

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{
    GroupId, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::retry::{Attempt, Retry, SingleRequest};
use super::{GroupMember, Identity, MembershipError};
use crate::coordination::error::{code, error_name};

impl GroupMember {
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
        let retry = Retry::until_deadline(
            format!("committing offsets of group {}", self.config.group_id),
            self.discovery_budget(),
        );
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
        let mut commit = CommitOffsets {
            generation_id,
            id: self.identity(),
            topic,
        };
        self.with_retries(retry, &mut commit).await
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
        let retry = Retry::until_deadline(
            format!("fetching offsets of group {}", self.config.group_id),
            self.discovery_budget(),
        );
        let mut fetch = FetchOffsets {
            group_id: GroupId(StrBytes::from_string(self.config.group_id.clone())),
            topic_name: TopicName(StrBytes::from_string(self.config.topic.clone())),
            partitions,
        };
        self.with_retries(retry, &mut fetch).await
    }
}

/// An OffsetCommit of the input topic's offsets in one generation.
struct CommitOffsets {
    generation_id: i32,
    id: Identity,
    topic: OffsetCommitRequestTopic,
}

impl SingleRequest for CommitOffsets {
    type Request = OffsetCommitRequest;
    type Output = ();

    fn request(&self, version: i16) -> OffsetCommitRequest {
        let mut req = OffsetCommitRequest::default();
        req.group_id = self.id.group_id.clone();
        req.generation_id_or_member_epoch = self.generation_id;
        req.member_id = self.id.member_id.clone();
        if version >= 7 {
            req.group_instance_id = self.id.instance.clone();
        }
        req.topics = vec![self.topic.clone()];
        req
    }

    fn answered(&self, member: &mut GroupMember, response: OffsetCommitResponse) -> Attempt<()> {
        let (group, generation) = (&member.config.group_id, self.generation_id);
        let error_code = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| p.error_code)
            .find(|&c| c != code::NONE)
            .unwrap_or(code::NONE);
        match error_code {
            code::NONE => {
                let partitions = self.topic.partitions.len();
                tracing::debug!(%group, generation, partitions, "offsets committed");
                Attempt::Done(Ok(()))
            }
            code::ILLEGAL_GENERATION | code::UNKNOWN_MEMBER_ID | code::FENCED_INSTANCE_ID => {
                let err = member.fenced("OffsetCommit", error_code, error_name(error_code));
                tracing::warn!(%group, generation, member_id = %member.member_id, error = %error_name(error_code), "offset commit fenced");
                member.generation = None;
                if error_code == code::UNKNOWN_MEMBER_ID {
                    member.member_id.clear();
                }
                Attempt::Done(Err(err))
            }
            c => Attempt::from_code("OffsetCommit", c),
        }
    }
}

/// An OffsetFetch of some of the input topic's partitions.
struct FetchOffsets<'a> {
    group_id: GroupId,
    topic_name: TopicName,
    partitions: &'a [i32],
}

impl SingleRequest for FetchOffsets<'_> {
    type Request = OffsetFetchRequest;
    type Output = BTreeMap<i32, i64>;

    fn request(&self, version: i16) -> OffsetFetchRequest {
        let mut req = OffsetFetchRequest::default();
        // Offsets of a transaction whose markers are not yet written are answered with
        // UNSTABLE_OFFSET_COMMIT (retried below) instead of the previous, older offsets.
        if version >= 7 {
            req.require_stable = true;
        }
        if version >= 8 {
            let mut topic = OffsetFetchRequestTopics::default();
            topic.name = self.topic_name.clone();
            topic.partition_indexes = self.partitions.to_vec();
            let mut group = OffsetFetchRequestGroup::default();
            group.group_id = self.group_id.clone();
            group.member_id = None;
            group.member_epoch = -1;
            group.topics = Some(vec![topic]);
            req.groups = vec![group];
        } else {
            let mut topic = OffsetFetchRequestTopic::default();
            topic.name = self.topic_name.clone();
            topic.partition_indexes = self.partitions.to_vec();
            req.group_id = self.group_id.clone();
            req.topics = Some(vec![topic]);
        }
        req
    }

    fn answered(
        &self,
        _member: &mut GroupMember,
        response: OffsetFetchResponse,
    ) -> Attempt<BTreeMap<i32, i64>> {
        // `(partition, offset, error)` of the input topic's partitions in `topics`, of either
        // response layout (their types differ, their field names do not).
        macro_rules! rows {
            ($topics:expr) => {
                $topics
                    .iter()
                    .filter(|t| t.name == self.topic_name)
                    .flat_map(|t| t.partitions.iter())
                    .map(|p| (p.partition_index, p.committed_offset, p.error_code))
                    .collect::<Vec<(i32, i64, i16)>>()
            };
        }
        // (group error, rows): v8+ answers per group, older versions at the top level.
        let (group_error, rows) = match response.groups.first() {
            Some(group) => (group.error_code, rows!(group.topics)),
            None => (response.error_code, rows!(response.topics)),
        };
        let error_code = std::iter::once(group_error)
            .chain(rows.iter().map(|r| r.2))
            .find(|&c| c != code::NONE)
            .unwrap_or(code::NONE);
        match error_code {
            code::NONE => Attempt::Done(Ok(rows
                .into_iter()
                .filter(|r| r.1 >= 0)
                .map(|r| (r.0, r.1))
                .collect())),
            // Offsets of a pending transaction: ask again after a backoff step.
            code::UNSTABLE_OFFSET_COMMIT => Attempt::Later(Some(MembershipError::kafka(
                "OffsetFetch",
                error_code,
                None,
            ))),
            c => Attempt::from_code("OffsetFetch", c),
        }
    }
}
