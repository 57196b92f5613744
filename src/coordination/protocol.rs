//! paystream's data inside the standard consumer-protocol envelopes.
//!
//! JoinGroup metadata carries a [`SubscriptionInfo`] (who I am, where I answer queries, what I
//! held, how caught up each local store is); SyncGroup assignments carry an [`AssignmentInfo`]
//! (my actives, standbys and warm-ups, and the partition → endpoints map every member routes
//! queries with). Both are versioned bytes (`paystream_state::codec`): an instance that meets a
//! newer format says so instead of misreading it.

use std::collections::BTreeMap;

use bytes::Bytes;
use paystream_state::codec::{self, CodecError};
use serde::{Deserialize, Serialize};

use super::assignor::{MemberInfo, PartitionOwners};

/// What a member tells the leader when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    /// Stable instance identity (kept in the state directory).
    pub process_id: String,
    /// `HOST:PORT` of its query API.
    pub endpoint: String,
    pub prev_active: Vec<i32>,
    pub prev_standby: Vec<i32>,
    /// Partition → changelog offset its local store holds.
    pub offsets: BTreeMap<i32, i64>,
}

impl SubscriptionInfo {
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        codec::encode(self).map(Bytes::from)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
    /// The assignor's view of this member.
    pub fn into_member(self, member_id: String) -> MemberInfo {
        MemberInfo {
            member_id,
            process_id: self.process_id,
            endpoint: self.endpoint,
            prev_active: self.prev_active,
            prev_standby: self.prev_standby,
            offsets: self.offsets,
        }
    }
}

/// What the leader hands each member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AssignmentInfo {
    pub active: Vec<i32>,
    pub standby: Vec<i32>,
    pub warmup: Vec<i32>,
    /// Every partition's active endpoint and standby endpoints (most caught up first).
    pub partition_map: BTreeMap<i32, PartitionOwners>,
    /// The leader wants a follow-up rebalance once warm-ups caught up.
    pub followup_rebalance: bool,
}

impl AssignmentInfo {
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        codec::encode(self).map(Bytes::from)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }

    /// A partition this assignment gives the member at `endpoint` while the partition map names
    /// another endpoint for that copy, with the endpoint it names: the leader computed the map
    /// from an older subscription of this member. That happens when a static member restarts
    /// with another endpoint: the coordinator hands it its stored assignment without a
    /// rebalance, so the leader never saw the new endpoint.
    pub fn stale_endpoint(&self, endpoint: &str) -> Option<(i32, String)> {
        let actives = self.active.iter().filter_map(|p| {
            let named = self.partition_map.get(p).map(|o| o.active.as_str())?;
            (named != endpoint).then(|| (*p, named.to_owned()))
        });
        let copies = self.standby.iter().chain(&self.warmup).filter_map(|p| {
            let owners = self.partition_map.get(p)?;
            (!owners.standbys.iter().any(|s| s == endpoint))
                .then(|| (*p, owners.standbys.join(",")))
        });
        actives.chain(copies).next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let s = SubscriptionInfo {
            process_id: "p1".into(),
            endpoint: "127.0.0.1:8080".into(),
            prev_active: vec![0, 3],
            prev_standby: vec![1],
            offsets: BTreeMap::from([(0, 10), (1, 5)]),
        };
        assert_eq!(SubscriptionInfo::decode(&s.encode().unwrap()).unwrap(), s);
        let a = AssignmentInfo {
            active: vec![1],
            followup_rebalance: true,
            ..Default::default()
        };
        assert_eq!(AssignmentInfo::decode(&a.encode().unwrap()).unwrap(), a);
        assert!(SubscriptionInfo::decode(b"").is_err());
        assert!(SubscriptionInfo::decode(&[99, 1, 2]).is_err());
    }

    #[test]
    fn an_assignment_naming_another_endpoint_for_my_copies_is_stale() {
        use crate::coordination::assignor::PartitionOwners;
        let owners = |active: &str, standbys: &[&str]| PartitionOwners {
            active: active.into(),
            standbys: standbys.iter().map(|s| s.to_string()).collect(),
        };
        let mut a = AssignmentInfo {
            active: vec![0],
            standby: vec![1],
            partition_map: BTreeMap::from([
                (0, owners("me:1", &["other:2"])),
                (1, owners("other:2", &["me:1"])),
            ]),
            ..Default::default()
        };
        assert_eq!(a.stale_endpoint("me:1"), None);
        assert_eq!(a.stale_endpoint("me:9"), Some((0, "me:1".into())));
        a.active.clear();
        assert_eq!(a.stale_endpoint("me:9"), Some((1, "me:1".into())));
        a.standby.clear();
        assert_eq!(
            a.stale_endpoint("me:9"),
            None,
            "no copies, nothing routed here"
        );
    }
}
