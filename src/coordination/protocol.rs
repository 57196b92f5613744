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

/// The Kafka client id of the instance answering queries at `endpoint`: `paystream-<endpoint>`.
/// The coordinator names a dynamic member `<client id>-<UUID>`, so every member can tell where
/// the group's leader answers from the leader's member id alone ([`endpoint_of_member`]).
pub fn client_id(endpoint: &str) -> String {
    format!("{CLIENT_ID_PREFIX}{endpoint}")
}

const CLIENT_ID_PREFIX: &str = "paystream-";

/// The query endpoint in a dynamic member's id (`paystream-<endpoint>-<UUID>`, see
/// [`client_id`]); `None` for any other form (a static member's id starts with its
/// `group.instance.id`).
pub fn endpoint_of_member(member_id: &str) -> Option<&str> {
    const UUID_LEN: usize = 36;
    let rest = member_id.strip_prefix(CLIENT_ID_PREFIX)?;
    let cut = rest.len().checked_sub(UUID_LEN + 1)?;
    let (endpoint, uuid) = (rest.get(..cut)?, rest.get(cut..)?);
    let uuid = uuid.strip_prefix('-')?;
    let looks_like_uuid = uuid.chars().enumerate().all(|(i, c)| {
        matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
    });
    (looks_like_uuid && endpoint.contains(':')).then_some(endpoint)
}

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
    fn a_dynamic_member_id_names_its_endpoint_and_nothing_else_does() {
        // As the coordinator forms it: `<client id>-<UUID>`.
        let id = format!(
            "{}-088375ec-aa79-4587-a405-b07780fa5753",
            client_id("127.0.0.1:43991")
        );
        assert_eq!(endpoint_of_member(&id), Some("127.0.0.1:43991"));
        let host = format!(
            "{}-088375ec-aa79-4587-a405-b07780fa5753",
            client_id("pay-1.svc:8080")
        );
        assert_eq!(endpoint_of_member(&host), Some("pay-1.svc:8080"));
        for other in [
            // A static member: its group.instance.id, not the client id.
            "drill-0-088375ec-aa79-4587-a405-b07780fa5753",
            "paystream-0-088375ec-aa79-4587-a405-b07780fa5753",
            "paystream-127.0.0.1:1-not-a-uuid-at-all-xxxxxxxxxxxxxxxxx",
            "paystream-127.0.0.1:1",
            "paystream-",
            "",
        ] {
            assert_eq!(endpoint_of_member(other), None, "{other}");
        }
    }

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
