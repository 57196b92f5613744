//! Unit tests of the membership client against a scripted fake broker: the failure modes a
//! real broker will not produce on demand.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ConsumerProtocolSubscription, JoinGroupRequest, JoinGroupResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::consumer_protocol::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription,
    CONSUMER_PROTOCOL_VERSION,
};
use super::*;
use crate::coordination::error::code;
use crate::coordination::wire::peek_i16;

#[test]
fn subscription_round_trips_with_version_prefix() {
    let bytes = encode_subscription(
        "PAYMENT.ORDER",
        &Bytes::from_static(b"endpoint"),
        &[1, 4],
        7,
    )
    .unwrap();
    assert_eq!(&bytes[..2], &CONSUMER_PROTOCOL_VERSION.to_be_bytes());
    let sub = decode_subscription(&bytes).unwrap();
    assert_eq!(sub.topics, vec![StrBytes::from_static_str("PAYMENT.ORDER")]);
    assert_eq!(sub.user_data.as_deref(), Some(&b"endpoint"[..]));
    assert_eq!(sub.owned_partitions[0].partitions, vec![1, 4]);
    assert_eq!(sub.generation_id, 7);
}

#[test]
fn assignment_round_trips_and_empty_means_nothing() {
    let bytes = encode_assignment("t", &[0, 2], &Bytes::from_static(b"map")).unwrap();
    assert_eq!(
        decode_assignment("t", &bytes).unwrap(),
        (vec![0, 2], Bytes::from_static(b"map"))
    );
    assert_eq!(
        decode_assignment("t", &Bytes::new()).unwrap(),
        (vec![], Bytes::new())
    );
    assert!(decode_assignment("t", &Bytes::from_static(&[0])).is_err());
    assert!(decode_assignment("t", &Bytes::from_static(&[0xff, 0xff, 0, 0])).is_err());
    // Other topics are ignored.
    let other = encode_assignment("other", &[3], &Bytes::new()).unwrap();
    assert_eq!(decode_assignment("t", &other).unwrap().0, Vec::<i32>::new());
}

#[test]
fn older_consumer_protocol_versions_decode() {
    // v0 subscription as an old Java client writes it: topics, user data.
    let mut sub = ConsumerProtocolSubscription::default();
    sub.topics = vec![StrBytes::from_static_str("t")];
    sub.user_data = Some(Bytes::from_static(b"u"));
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    sub.encode(&mut buf, 0).unwrap();
    let decoded = decode_subscription(&buf.freeze()).unwrap();
    assert_eq!(decoded.user_data.as_deref(), Some(&b"u"[..]));
}

#[test]
fn sync_group_error_is_readable_before_the_assignment() {
    // v5 body: throttle_time_ms, error_code REBALANCE_IN_PROGRESS, then an undecodable rest.
    let body = Bytes::from_static(&[0, 0, 0, 0, 0, 27, 0xff, 0xff, 0xff]);
    assert_eq!(peek_i16(&body, 4), Some(code::REBALANCE_IN_PROGRESS));
    assert!(SyncGroupResponse::decode(&mut body.clone(), 5).is_err());
}

/// A scripted coordinator on a loopback port, for the failure paths a healthy broker does
/// not produce on demand (coordinator moves, dropped connections, SyncGroup errors).
mod fake {
    use std::sync::{Arc, Mutex};

    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::{
        ApiKey, ApiVersionsResponse, FindCoordinatorResponse, ResponseHeader,
    };
    use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable, StrBytes};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    pub(super) enum Reply {
        Body(Bytes),
        /// Close the connection instead of answering.
        Close,
    }

    pub(super) fn reply<M: Encodable>(m: &M, version: i16) -> Reply {
        let mut b = BytesMut::new();
        m.encode(&mut b, version).unwrap();
        Reply::Body(b.freeze())
    }

    type Handler = Box<dyn FnMut(ApiKey, i16, Bytes) -> Reply + Send>;

    pub(super) struct FakeBroker {
        pub(super) addr: String,
        /// Every request received, in order.
        pub(super) log: Arc<Mutex<Vec<ApiKey>>>,
    }

    impl FakeBroker {
        pub(super) fn count(&self, key: ApiKey) -> usize {
            self.log
                .lock()
                .unwrap()
                .iter()
                .filter(|&&k| k == key)
                .count()
        }
    }

    /// Answers ApiVersions and FindCoordinator (pointing at itself); `handler` the rest.
    pub(super) async fn start(
        handler: impl FnMut(ApiKey, i16, Bytes) -> Reply + Send + 'static,
    ) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Mutex<Handler>> = Arc::new(Mutex::new(Box::new(handler)));
        let (log2, handler2) = (log.clone(), handler.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, port, log2.clone(), handler2.clone()));
            }
        });
        FakeBroker {
            addr: format!("127.0.0.1:{port}"),
            log,
        }
    }

    async fn serve(
        mut conn: TcpStream,
        port: u16,
        log: Arc<Mutex<Vec<ApiKey>>>,
        handler: Arc<Mutex<Handler>>,
    ) {
        loop {
            let Ok(size) = conn.read_i32().await else {
                return;
            };
            let mut buf = vec![0u8; size as usize];
            if conn.read_exact(&mut buf).await.is_err() {
                return;
            }
            let mut body = Bytes::from(buf);
            let header = decode_request_header_from_buffer(&mut body).unwrap();
            let key = ApiKey::try_from(header.request_api_key).unwrap();
            let version = header.request_api_version;
            log.lock().unwrap().push(key);
            let reply = match key {
                ApiKey::ApiVersions => {
                    let mut r = ApiVersionsResponse::default();
                    r.api_keys = [
                        ApiKey::ApiVersions,
                        ApiKey::FindCoordinator,
                        ApiKey::JoinGroup,
                        ApiKey::SyncGroup,
                        ApiKey::Heartbeat,
                        ApiKey::LeaveGroup,
                        ApiKey::OffsetCommit,
                        ApiKey::OffsetFetch,
                    ]
                    .iter()
                    .map(|k| {
                        let mut v = ApiVersion::default();
                        v.api_key = *k as i16;
                        v.min_version = k.valid_versions().min;
                        v.max_version = k.valid_versions().max;
                        v
                    })
                    .collect();
                    reply(&r, version)
                }
                ApiKey::FindCoordinator => {
                    let mut r = FindCoordinatorResponse::default();
                    let mut c = Coordinator::default();
                    c.key = StrBytes::from_static_str("g");
                    c.node_id = 1.into();
                    c.host = StrBytes::from_static_str("127.0.0.1");
                    c.port = port as i32;
                    r.coordinators = vec![c];
                    reply(&r, version)
                }
                _ => (handler.lock().unwrap())(key, version, body),
            };
            let Reply::Body(body) = reply else { return };
            let mut frame = BytesMut::new();
            frame.put_i32(0);
            let mut rh = ResponseHeader::default();
            rh.correlation_id = header.correlation_id;
            rh.encode(&mut frame, key.response_header_version(version))
                .unwrap();
            frame.extend_from_slice(&body);
            let size = (frame.len() - 4) as i32;
            frame[0..4].copy_from_slice(&size.to_be_bytes());
            if conn.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
}

use fake::{reply, Reply};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ApiKey, HeartbeatResponse, OffsetCommitResponse};

fn fake_config(addr: &str) -> MembershipConfig {
    let mut c = MembershipConfig::new(vec![addr.to_string()], "g", "t");
    c.request_timeout = Duration::from_secs(2);
    c.rebalance_timeout = Duration::from_secs(3);
    c.join_timeout = Duration::from_secs(20);
    c
}

struct Echo;
impl LeaderAssignor for Echo {
    fn assign(&self, members: &[JoinedMember]) -> BTreeMap<String, (Vec<i32>, Bytes)> {
        members
            .iter()
            .map(|m| (m.member_id.clone(), (vec![7], m.user_data.clone())))
            .collect()
    }
}

fn join_response(
    code: i16,
    generation: i32,
    leader: &str,
    member: &str,
    members: Vec<JoinGroupResponseMember>,
) -> JoinGroupResponse {
    let mut r = JoinGroupResponse::default();
    r.error_code = code;
    r.generation_id = generation;
    r.protocol_type = Some(StrBytes::from_static_str(PROTOCOL_TYPE));
    r.protocol_name = Some(StrBytes::from_static_str("paystream"));
    r.leader = StrBytes::from_string(leader.to_string());
    r.member_id = StrBytes::from_string(member.to_string());
    r.members = members;
    r
}

fn sync_ok(assignment: Bytes) -> SyncGroupResponse {
    let mut r = SyncGroupResponse::default();
    r.protocol_type = Some(StrBytes::from_static_str(PROTOCOL_TYPE));
    r.protocol_name = Some(StrBytes::from_static_str("paystream"));
    r.assignment = assignment;
    r
}

#[tokio::test]
async fn sync_errors_with_garbage_assignments_lead_to_a_rejoin() {
    let (mut joins, mut syncs) = (0, 0);
    let broker = fake::start(move |key, v, body| match key {
        ApiKey::JoinGroup => {
            joins += 1;
            let req = JoinGroupRequest::decode(&mut body.clone(), v).unwrap();
            assert_eq!(req.protocol_type.as_str(), PROTOCOL_TYPE);
            if joins == 1 {
                assert_eq!(req.member_id.as_str(), "");
                return reply(
                    &join_response(code::MEMBER_ID_REQUIRED, -1, "", "m-1", vec![]),
                    v,
                );
            }
            assert_eq!(req.member_id.as_str(), "m-1");
            reply(&join_response(0, joins, "other", "m-1", vec![]), v)
        }
        ApiKey::SyncGroup => {
            syncs += 1;
            if syncs == 1 {
                // REBALANCE_IN_PROGRESS followed by bytes the decoder rejects (like
                // librdkafka's mock cluster).
                let mut b = BytesMut::new();
                b.put_i32(0);
                b.put_i16(code::REBALANCE_IN_PROGRESS);
                b.put_slice(&[0xff; 6]);
                return Reply::Body(b.freeze());
            }
            reply(
                &sync_ok(encode_assignment("t", &[3], &Bytes::from_static(b"x")).unwrap()),
                v,
            )
        }
        other => panic!("unexpected {other:?}"),
    })
    .await;
    let mut m = GroupMember::connect(fake_config(&broker.addr))
        .await
        .unwrap();
    let a = m.join(Bytes::from_static(b"me"), &Echo).await.unwrap();
    assert_eq!(
        a,
        Assignment {
            generation_id: 3,
            member_id: "m-1".into(),
            leader: false,
            leader_id: "other".into(),
            partitions: vec![3],
            user_data: Bytes::from_static(b"x"),
            members: vec![],
        }
    );
    assert_eq!(broker.count(ApiKey::JoinGroup), 3);
    assert_eq!(m.generation(), Some((3, "m-1".to_string())));
}

#[tokio::test]
async fn coordinator_errors_and_dropped_connections_are_survived() {
    let (mut joins, mut heartbeats, mut commits) = (0, 0, 0);
    let broker = fake::start(move |key, v, body| match key {
        ApiKey::JoinGroup => {
            joins += 1;
            let req = JoinGroupRequest::decode(&mut body.clone(), v).unwrap();
            match joins {
                1 => reply(&join_response(code::NOT_COORDINATOR, -1, "", "", vec![]), v),
                2 => Reply::Close,
                3 => reply(
                    &join_response(code::COORDINATOR_LOAD_IN_PROGRESS, -1, "", "", vec![]),
                    v,
                ),
                _ => {
                    // Leader of a one-member generation: the metadata is our own subscription.
                    let mut me = JoinGroupResponseMember::default();
                    me.member_id = StrBytes::from_static_str("m-9");
                    me.metadata = req.protocols[0].metadata.clone();
                    reply(&join_response(0, 5, "m-9", "m-9", vec![me]), v)
                }
            }
        }
        ApiKey::SyncGroup => {
            let req = SyncGroupRequest::decode(&mut body.clone(), v).unwrap();
            assert_eq!(req.assignments.len(), 1);
            let (partitions, user_data) =
                decode_assignment("t", &req.assignments[0].assignment).unwrap();
            assert_eq!(
                (partitions, user_data),
                (vec![7], Bytes::from_static(b"me"))
            );
            // Zero bytes: a legal, empty assignment.
            reply(&sync_ok(Bytes::new()), v)
        }
        ApiKey::Heartbeat => {
            heartbeats += 1;
            let mut r = HeartbeatResponse::default();
            match heartbeats {
                1 => return Reply::Close,
                3 => r.error_code = code::NOT_COORDINATOR,
                5 => r.error_code = code::REBALANCE_IN_PROGRESS,
                _ => {}
            }
            reply(&r, v)
        }
        ApiKey::OffsetCommit => {
            commits += 1;
            let mut p = OffsetCommitResponsePartition::default();
            p.partition_index = 0;
            p.error_code = if commits == 1 {
                code::COORDINATOR_NOT_AVAILABLE
            } else {
                code::ILLEGAL_GENERATION
            };
            let mut t = OffsetCommitResponseTopic::default();
            t.name = TopicName(StrBytes::from_static_str("t"));
            t.partitions = vec![p];
            let mut r = OffsetCommitResponse::default();
            r.topics = vec![t];
            reply(&r, v)
        }
        other => panic!("unexpected {other:?}"),
    })
    .await;
    let mut m = GroupMember::connect(fake_config(&broker.addr))
        .await
        .unwrap();
    let a = m.join(Bytes::from_static(b"me"), &Echo).await.unwrap();
    assert_eq!(
        (
            a.generation_id,
            a.leader,
            a.partitions.clone(),
            a.user_data.clone()
        ),
        (5, true, vec![], Bytes::new())
    );
    assert_eq!(broker.count(ApiKey::JoinGroup), 4);
    // connect + rediscovery after NOT_COORDINATOR + after the dropped connection.
    assert!(
        broker.count(ApiKey::FindCoordinator) >= 3,
        "{:?}",
        broker.log.lock().unwrap()
    );

    // Dropped connection, then NOT_COORDINATOR: each retried once on a fresh connection.
    assert_eq!(m.heartbeat().await.unwrap(), HeartbeatOutcome::Stable);
    assert_eq!(m.heartbeat().await.unwrap(), HeartbeatOutcome::Stable);
    assert_eq!(broker.count(ApiKey::Heartbeat), 4);
    // A rebalance keeps the generation (the member may still commit before rejoining).
    assert_eq!(
        m.heartbeat().await.unwrap(),
        HeartbeatOutcome::RebalanceNeeded
    );
    assert_eq!(m.generation(), Some((5, "m-9".to_string())));

    // COORDINATOR_NOT_AVAILABLE is retried; ILLEGAL_GENERATION fences.
    let err = m.commit_offsets(&[(0, 1)]).await.unwrap_err();
    assert!(
        matches!(
            err,
            MembershipError::Fenced {
                generation: 5,
                code: code::ILLEGAL_GENERATION,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(m.generation(), None);
    assert_eq!(broker.count(ApiKey::OffsetCommit), 2);
}

#[tokio::test]
async fn offset_fetch_and_leave_retry_per_their_policies() {
    use kafka_protocol::messages::offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartitions, OffsetFetchResponseTopics,
    };
    use kafka_protocol::messages::{LeaveGroupResponse, OffsetFetchResponse};

    let (mut fetches, mut leaves) = (0, 0);
    let unstable_allowed = Arc::new(AtomicUsize::new(0));
    let seen = unstable_allowed.clone();
    let broker = fake::start(move |key, v, mut body| match key {
        ApiKey::OffsetFetch => {
            fetches += 1;
            let request = kafka_protocol::messages::OffsetFetchRequest::decode(&mut body, v)
                .expect("an OffsetFetch request");
            if v < 7 || !request.require_stable {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            let partition = |index, offset, error_code| {
                let mut p = OffsetFetchResponsePartitions::default();
                p.partition_index = index;
                p.committed_offset = offset;
                p.error_code = error_code;
                p
            };
            let mut t = OffsetFetchResponseTopics::default();
            t.name = TopicName(StrBytes::from_static_str("t"));
            t.partitions = vec![partition(0, 42, 0), partition(1, -1, 0)];
            let mut g = OffsetFetchResponseGroup::default();
            match fetches {
                1 => t.partitions[0].error_code = code::UNSTABLE_OFFSET_COMMIT,
                2 => g.error_code = code::NOT_COORDINATOR,
                _ => {}
            }
            g.topics = vec![t];
            let mut r = OffsetFetchResponse::default();
            r.groups = vec![g];
            reply(&r, v)
        }
        ApiKey::LeaveGroup => {
            leaves += 1;
            let mut r = LeaveGroupResponse::default();
            match leaves {
                1 => return Reply::Close,
                2 => r.error_code = code::NOT_COORDINATOR,
                _ => r.error_code = code::UNKNOWN_MEMBER_ID,
            }
            reply(&r, v)
        }
        other => panic!("unexpected {other:?}"),
    })
    .await;
    let mut config = fake_config(&broker.addr);
    config.group_instance_id = Some("i-1".into());
    let mut m = GroupMember::connect(config).await.unwrap();

    // UNSTABLE_OFFSET_COMMIT and NOT_COORDINATOR are retried (the latter on a rediscovered
    // coordinator); partitions without a committed offset are absent.
    let lookups = broker.count(ApiKey::FindCoordinator);
    let offsets = m.fetch_offsets(&[0, 1]).await.unwrap();
    assert_eq!(offsets, BTreeMap::from([(0, 42)]));
    assert_eq!(broker.count(ApiKey::OffsetFetch), 3);
    assert_eq!(
        unstable_allowed.load(Ordering::SeqCst),
        0,
        "every OffsetFetch asks for stable offsets: a pending transaction's are not answered \
         with older ones"
    );
    assert_eq!(broker.count(ApiKey::FindCoordinator), lookups + 1);

    // A dropped connection is retried once, at once; a coordinator error on that retry is
    // returned as it is, without forgetting the coordinator.
    let err = m.leave().await.unwrap_err();
    assert!(
        matches!(
            err,
            MembershipError::Kafka {
                code: code::NOT_COORDINATOR,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(broker.count(ApiKey::LeaveGroup), 2);
    let lookups = broker.count(ApiKey::FindCoordinator);
    // A member the coordinator no longer knows has nothing to leave.
    m.leave().await.unwrap();
    assert_eq!(broker.count(ApiKey::LeaveGroup), 3);
    assert_eq!(broker.count(ApiKey::FindCoordinator), lookups);
}
