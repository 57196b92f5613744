//! The leader side of a rebalance: decode every member's [`SubscriptionInfo`], run the pure
//! [`assign`], encode each member's [`AssignmentInfo`].

use std::collections::BTreeMap;

use bytes::Bytes;

use super::assignor::{assign, AssignorInput, DEFAULT_ACCEPTABLE_RECOVERY_LAG};
use super::membership::{JoinedMember, LeaderAssignor};
use super::protocol::{AssignmentInfo, SubscriptionInfo};

/// paystream's [`LeaderAssignor`].
pub struct GroupAssignor {
    pub partitions: i32,
    pub standby_replicas: u32,
    pub acceptable_recovery_lag: i64,
}

impl GroupAssignor {
    pub fn new(partitions: i32, standby_replicas: u32) -> Self {
        Self {
            partitions,
            standby_replicas,
            acceptable_recovery_lag: DEFAULT_ACCEPTABLE_RECOVERY_LAG,
        }
    }
}

impl LeaderAssignor for GroupAssignor {
    fn assign(&self, members: &[JoinedMember]) -> BTreeMap<String, (Vec<i32>, Bytes)> {
        let mut infos = Vec::with_capacity(members.len());
        for m in members {
            match SubscriptionInfo::decode(&m.user_data) {
                Ok(s) => infos.push(s.into_member(m.member_id.clone())),
                // A member we cannot understand (another version, another program) gets nothing
                // rather than breaking the whole group.
                Err(e) => {
                    tracing::warn!(member = %m.member_id, error = %e, "ignoring member with unreadable metadata")
                }
            }
        }
        let out = assign(&AssignorInput {
            members: infos,
            partitions: self.partitions,
            standby_replicas: self.standby_replicas,
            acceptable_recovery_lag: self.acceptable_recovery_lag,
            end_offsets: BTreeMap::new(),
        });
        tracing::info!(
            members = members.len(),
            followup = out.followup_rebalance,
            "assigned partitions"
        );
        let mut result = BTreeMap::new();
        for (member_id, a) in out.members {
            let info = AssignmentInfo {
                active: a.active.clone(),
                standby: a.standby,
                warmup: a.warmup,
                partition_map: out.partition_map.clone(),
                followup_rebalance: out.followup_rebalance,
            };
            match info.encode() {
                Ok(bytes) => {
                    result.insert(member_id, (a.active, bytes));
                }
                Err(e) => {
                    tracing::error!(member = %member_id, error = %e, "cannot encode assignment")
                }
            }
        }
        result
    }
}
