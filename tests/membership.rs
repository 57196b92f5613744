//! The consumer-group membership client (classic group protocol, leader-side assignor) against a
//! real Apache Kafka broker: generations form with exactly one leader, joins and leaves trigger
//! prompt rebalances, a static member restarts without a rebalance, and a zombie's offset
//! commit with a stale generation is fenced.
//!
//! The broker is `PAYSTREAM_TEST_BOOTSTRAP` if set, else the one `deploy/kafka.sh start` runs.
//! Every test uses its own group and topic. Conditions are polled with deadlines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use paystream::coordination::membership::{
    Assignment, GroupMember, HeartbeatOutcome, JoinedMember, LeaderAssignor, MemberToRemove,
    MembershipConfig, MembershipError,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------- fixture

fn bootstrap() -> String {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP
        .get_or_init(|| {
            if let Ok(b) = std::env::var("PAYSTREAM_TEST_BOOTSTRAP") {
                return b;
            }
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kafka.sh");
            let out = Command::new("bash")
                .arg(script)
                .arg("start")
                .stderr(Stdio::inherit())
                .output()
                .expect("run deploy/kafka.sh start");
            assert!(out.status.success(), "deploy/kafka.sh start failed");
            String::from_utf8(out.stdout)
                .expect("utf8")
                .trim()
                .lines()
                .last()
                .expect("bootstrap line")
                .to_owned()
        })
        .clone()
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000)
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// Creates a topic and waits until the broker's metadata shows all its partitions (offset commits
/// for a topic the broker does not know are refused).
async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics");
    for r in results {
        r.expect("topic created");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (b, n) = (bootstrap(), name.to_owned());
        let count = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", b)
                .create()
                .ok()?;
            let md = consumer
                .fetch_metadata(Some(&n), Duration::from_secs(5))
                .ok()?;
            md.topics()
                .first()
                .filter(|t| t.error().is_none())
                .map(|t| t.partitions().len() as i32)
        })
        .await
        .expect("join metadata task");
        if count == Some(partitions) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topic {name} did not appear in metadata"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config(group: &str, topic: &str) -> MembershipConfig {
    let mut c = MembershipConfig::new(
        bootstrap().split(',').map(str::to_owned).collect(),
        group,
        topic,
    );
    c.client_id = "membership-test".into();
    c
}

fn name(idx: usize) -> String {
    format!("member-{idx}")
}

/// Round-robin over members sorted by user data (their names): partition p goes to the
/// (p mod n)-th member. Each member's assignment user data is `own|all,names,sorted`, so every
/// member can see which members the leader assigned for.
struct RoundRobin {
    partitions: i32,
    calls: Mutex<Vec<Vec<JoinedMember>>>,
}

impl RoundRobin {
    fn new(partitions: i32) -> Arc<Self> {
        Arc::new(RoundRobin {
            partitions,
            calls: Mutex::new(Vec::new()),
        })
    }

    /// What this assignor gives `me` when the group consists of `names`.
    fn expected(&self, names: &[String], me: &str) -> (Vec<i32>, Bytes) {
        let mut sorted = names.to_vec();
        sorted.sort();
        let i = sorted
            .iter()
            .position(|n| n == me)
            .expect("member in group") as i32;
        let n = sorted.len() as i32;
        let partitions = (0..self.partitions).filter(|p| p % n == i).collect();
        (
            partitions,
            Bytes::from(format!("{me}|{}", sorted.join(","))),
        )
    }

    fn last_call_user_data(&self) -> BTreeSet<String> {
        let calls = self.calls.lock().unwrap();
        let last = calls.last().expect("the assignor ran");
        last.iter()
            .map(|m| String::from_utf8_lossy(&m.user_data).into_owned())
            .collect()
    }
}

impl LeaderAssignor for RoundRobin {
    fn assign(&self, members: &[JoinedMember]) -> BTreeMap<String, (Vec<i32>, Bytes)> {
        self.calls.lock().unwrap().push(members.to_vec());
        let names: Vec<String> = members
            .iter()
            .map(|m| String::from_utf8_lossy(&m.user_data).into_owned())
            .collect();
        members
            .iter()
            .zip(&names)
            .map(|(m, me)| (m.member_id.clone(), self.expected(&names, me)))
            .collect()
    }
}

/// The group membership seen in an assignment's user data (`own|a,b,c`).
fn members_in(a: &Assignment) -> Vec<String> {
    let text = String::from_utf8_lossy(&a.user_data).into_owned();
    let all = text
        .split_once('|')
        .map(|(_, all)| all.to_owned())
        .unwrap_or_default();
    all.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------- members driven by tasks

#[derive(Debug)]
enum Event {
    Joined(usize, Assignment),
    RebalanceNeeded(usize, Instant),
    Left(usize, Instant),
    Failed(usize, String),
}

enum Cmd {
    Stop,
    Leave,
}

struct Running {
    cmd: mpsc::UnboundedSender<Cmd>,
    task: JoinHandle<GroupMember>,
}

impl Running {
    /// Stops the task after its current step and hands the member back (not leaving the group).
    async fn stop(self) -> GroupMember {
        let _ = self.cmd.send(Cmd::Stop);
        tokio::time::timeout(Duration::from_secs(90), self.task)
            .await
            .expect("member task stops")
            .expect("member task")
    }

    async fn leave(self) -> GroupMember {
        let _ = self.cmd.send(Cmd::Leave);
        tokio::time::timeout(Duration::from_secs(90), self.task)
            .await
            .expect("member task stops")
            .expect("member task")
    }
}

/// Runs a member the way paystream does: join, heartbeat every interval, rejoin when told to.
fn spawn_member(
    idx: usize,
    mut member: GroupMember,
    assignor: Arc<RoundRobin>,
    events: mpsc::UnboundedSender<Event>,
) -> Running {
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let interval = member.config().heartbeat_interval;
        let user_data = Bytes::from(name(idx));
        loop {
            match member.join(user_data.clone(), &*assignor).await {
                Ok(a) => {
                    let _ = events.send(Event::Joined(idx, a));
                }
                Err(e) => {
                    let _ = events.send(Event::Failed(idx, format!("join: {e}")));
                    return member;
                }
            }
            loop {
                tokio::select! {
                    cmd = cmd_rx.recv() => match cmd {
                        Some(Cmd::Leave) => {
                            let event = match member.leave().await {
                                Ok(()) => Event::Left(idx, Instant::now()),
                                Err(e) => Event::Failed(idx, format!("leave: {e}")),
                            };
                            let _ = events.send(event);
                            return member;
                        }
                        Some(Cmd::Stop) | None => return member,
                    },
                    _ = tokio::time::sleep(interval) => {}
                }
                match member.heartbeat().await {
                    Ok(HeartbeatOutcome::Stable) => {}
                    Ok(HeartbeatOutcome::RebalanceNeeded) => {
                        let _ = events.send(Event::RebalanceNeeded(idx, Instant::now()));
                        break;
                    }
                    Err(e) => {
                        let _ = events.send(Event::Failed(idx, format!("heartbeat: {e}")));
                        return member;
                    }
                }
            }
        }
    });
    Running { cmd: cmd_tx, task }
}

/// What the test knows about the running members, from their events.
struct Observer {
    rx: mpsc::UnboundedReceiver<Event>,
    latest: BTreeMap<usize, Assignment>,
    joins: BTreeMap<usize, usize>,
    rebalances: Vec<(usize, Instant)>,
    left: BTreeMap<usize, Instant>,
}

impl Observer {
    fn new() -> (mpsc::UnboundedSender<Event>, Observer) {
        let (tx, rx) = mpsc::unbounded_channel();
        let o = Observer {
            rx,
            latest: BTreeMap::new(),
            joins: BTreeMap::new(),
            rebalances: Vec::new(),
            left: BTreeMap::new(),
        };
        (tx, o)
    }

    async fn wait_for(&mut self, what: &str, timeout: Duration, cond: impl Fn(&Observer) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !cond(self) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Event::Joined(i, a))) => {
                    *self.joins.entry(i).or_default() += 1;
                    self.latest.insert(i, a);
                }
                Ok(Some(Event::RebalanceNeeded(i, at))) => self.rebalances.push((i, at)),
                Ok(Some(Event::Left(i, at))) => {
                    self.left.insert(i, at);
                }
                Ok(Some(Event::Failed(i, e))) => {
                    panic!("member {i} failed while waiting for {what}: {e}")
                }
                Ok(None) => panic!("all members gone while waiting for {what}"),
                Err(_) => panic!(
                    "{what}: not reached within {timeout:?}; latest assignments: {:#?}",
                    self.latest
                ),
            }
        }
    }

    /// The generation (newer than `after`) in which exactly `members` hold assignments computed
    /// for exactly them, if there is one.
    fn stable_generation(&self, members: &[usize], after: i32) -> Option<i32> {
        let expected: Vec<String> = {
            let mut v: Vec<String> = members.iter().map(|&i| name(i)).collect();
            v.sort();
            v
        };
        let first = self.latest.get(members.first()?)?.generation_id;
        let all = members.iter().all(|i| {
            self.latest
                .get(i)
                .is_some_and(|a| a.generation_id == first && members_in(a) == expected)
        });
        (all && first > after).then_some(first)
    }

    async fn wait_stable(&mut self, members: &[usize], after: i32, timeout: Duration) -> i32 {
        let what = format!("members {members:?} in one generation after {after}");
        self.wait_for(&what, timeout, |o| {
            o.stable_generation(members, after).is_some()
        })
        .await;
        self.stable_generation(members, after)
            .expect("stable generation")
    }

    fn first_rebalance_after(&self, idx: usize, t: Instant) -> Option<Instant> {
        self.rebalances
            .iter()
            .filter(|(i, at)| *i == idx && *at >= t)
            .map(|(_, at)| *at)
            .min()
    }

    /// Checks the assignments in generation `gen` of `members`: one leader, distinct member ids,
    /// each exactly what the assignor chose for this membership.
    fn check_generation(&self, assignor: &RoundRobin, members: &[usize], gen: i32) {
        let names: Vec<String> = members.iter().map(|&i| name(i)).collect();
        let leaders = members.iter().filter(|i| self.latest[i].leader).count();
        assert_eq!(
            leaders, 1,
            "exactly one leader in generation {gen}: {:#?}",
            self.latest
        );
        let ids: BTreeSet<&str> = members
            .iter()
            .map(|i| self.latest[i].member_id.as_str())
            .collect();
        assert_eq!(ids.len(), members.len(), "distinct member ids");
        for &i in members {
            let a = &self.latest[&i];
            assert_eq!(a.generation_id, gen);
            let (partitions, user_data) = assignor.expected(&names, &name(i));
            assert_eq!(a.partitions, partitions, "partitions of {}", name(i));
            assert_eq!(
                a.user_data,
                user_data,
                "assignment user data of {}",
                name(i)
            );
        }
    }
}

async fn connect(config: MembershipConfig) -> GroupMember {
    tokio::time::timeout(Duration::from_secs(60), GroupMember::connect(config))
        .await
        .expect("connect within 60 s")
        .expect("connect")
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_form_one_generation_with_one_leader() {
    init_tracing();
    let topic = unique("membership-two");
    create_topic(&topic, 4).await;
    let group = unique("membership-two-g");
    let assignor = RoundRobin::new(4);
    let (tx, mut obs) = Observer::new();

    let m0 = spawn_member(
        0,
        connect(config(&group, &topic)).await,
        assignor.clone(),
        tx.clone(),
    );
    let m1 = spawn_member(
        1,
        connect(config(&group, &topic)).await,
        assignor.clone(),
        tx.clone(),
    );
    let gen = obs.wait_stable(&[0, 1], 0, Duration::from_secs(60)).await;

    obs.check_generation(&assignor, &[0, 1], gen);
    // The leader's assignor saw both members' subscription user data.
    assert_eq!(
        assignor.last_call_user_data(),
        BTreeSet::from([name(0), name(1)])
    );
    assert_eq!(obs.latest[&0].partitions, vec![0, 2]);
    assert_eq!(obs.latest[&1].partitions, vec![1, 3]);

    let mut m0 = m0.stop().await;
    let mut m1 = m1.stop().await;
    assert_eq!(
        m0.generation(),
        Some((gen, obs.latest[&0].member_id.clone()))
    );
    assert_eq!(
        m1.generation(),
        Some((gen, obs.latest[&1].member_id.clone()))
    );
    m0.leave().await.expect("leave");
    m1.leave().await.expect("leave");
    assert_eq!(m0.generation(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_member_triggers_a_rebalance_and_all_converge() {
    init_tracing();
    let topic = unique("membership-three");
    // Two partitions for three members: the third gets an empty partition list.
    create_topic(&topic, 2).await;
    let group = unique("membership-three-g");
    let assignor = RoundRobin::new(2);
    let (tx, mut obs) = Observer::new();
    let cfg = config(&group, &topic);

    let m0 = spawn_member(0, connect(cfg.clone()).await, assignor.clone(), tx.clone());
    let m1 = spawn_member(1, connect(cfg.clone()).await, assignor.clone(), tx.clone());
    let g1 = obs.wait_stable(&[0, 1], 0, Duration::from_secs(60)).await;

    let t = Instant::now();
    let m2 = spawn_member(2, connect(cfg.clone()).await, assignor.clone(), tx.clone());
    let g2 = obs
        .wait_stable(&[0, 1, 2], g1, Duration::from_secs(60))
        .await;
    assert!(g2 > g1);
    obs.check_generation(&assignor, &[0, 1, 2], g2);
    assert_eq!(obs.latest[&2].partitions, Vec::<i32>::new());
    assert_eq!(
        assignor.last_call_user_data(),
        BTreeSet::from([name(0), name(1), name(2)])
    );
    for i in [0, 1] {
        let seen = obs
            .first_rebalance_after(i, t)
            .unwrap_or_else(|| panic!("member {i} saw no rebalance"));
        assert!(
            seen - t < cfg.session_timeout,
            "member {i} saw the rebalance after {:?}, not within the session timeout",
            seen - t
        );
    }

    for m in [m0, m1, m2] {
        m.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_member_triggers_a_prompt_rebalance_without_it() {
    init_tracing();
    let topic = unique("membership-leave");
    create_topic(&topic, 6).await;
    let group = unique("membership-leave-g");
    let assignor = RoundRobin::new(6);
    let (tx, mut obs) = Observer::new();
    // A long session timeout, so only the LeaveGroup can explain a prompt rebalance.
    let mut cfg = config(&group, &topic);
    cfg.session_timeout = Duration::from_secs(30);

    let m0 = spawn_member(0, connect(cfg.clone()).await, assignor.clone(), tx.clone());
    let m1 = spawn_member(1, connect(cfg.clone()).await, assignor.clone(), tx.clone());
    let m2 = spawn_member(2, connect(cfg.clone()).await, assignor.clone(), tx.clone());
    let g1 = obs
        .wait_stable(&[0, 1, 2], 0, Duration::from_secs(60))
        .await;

    let t = Instant::now();
    let m2 = m2.leave().await;
    obs.wait_for("member 2 left", Duration::from_secs(30), |o| {
        o.left.contains_key(&2)
    })
    .await;
    assert_eq!(m2.generation(), None);
    let g2 = obs.wait_stable(&[0, 1], g1, Duration::from_secs(60)).await;
    obs.check_generation(&assignor, &[0, 1], g2);
    assert_eq!(
        assignor.last_call_user_data(),
        BTreeSet::from([name(0), name(1)])
    );
    for i in [0, 1] {
        let seen = obs
            .first_rebalance_after(i, t)
            .unwrap_or_else(|| panic!("member {i} saw no rebalance"));
        assert!(
            seen - t < Duration::from_secs(10),
            "member {i} saw the rebalance only after {:?}",
            seen - t
        );
    }

    for m in [m0, m1] {
        m.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_removed_by_mistake_are_fenced_and_rejoin_promptly() {
    init_tracing();
    let topic = unique("membership-remove");
    create_topic(&topic, 4).await;
    let group = unique("membership-remove-g");
    let assignor = RoundRobin::new(4);
    let (tx, mut obs) = Observer::new();
    // A long session timeout: only the removal can explain a prompt rebalance.
    let mut cfg = config(&group, &topic);
    cfg.session_timeout = Duration::from_secs(30);
    let static_id = unique("static");
    let mut static_cfg = cfg.clone();
    static_cfg.group_instance_id = Some(static_id.clone());

    let m0 = spawn_member(0, connect(cfg.clone()).await, assignor.clone(), tx.clone());
    let m1 = spawn_member(1, connect(cfg.clone()).await, assignor.clone(), tx.clone());
    let m2 = spawn_member(2, connect(static_cfg).await, assignor.clone(), tx.clone());
    let g1 = obs
        .wait_stable(&[0, 1, 2], 0, Duration::from_secs(60))
        .await;

    // Someone (a leader that misjudged them) removes the dynamic member 1 and the static
    // member 2 while both are alive: LeaveGroup v3+ on their behalf.
    let mut remover = connect(cfg.clone()).await;
    let t = Instant::now();
    let codes = remover
        .remove_members(&[
            MemberToRemove {
                member_id: obs.latest[&1].member_id.clone(),
                group_instance_id: None,
                reason: "test: removed by mistake".into(),
            },
            MemberToRemove {
                member_id: obs.latest[&2].member_id.clone(),
                group_instance_id: Some(static_id.clone()),
                reason: "test: removed by mistake".into(),
            },
        ])
        .await
        .expect("remove members");
    assert!(codes.iter().all(|(_, c)| *c == 0), "{codes:?}");
    // Both notice (heartbeat: UNKNOWN_MEMBER_ID), rejoin under new member ids, and the group
    // forms again with all three, long before the session timeout.
    let old_ids = [
        obs.latest[&1].member_id.clone(),
        obs.latest[&2].member_id.clone(),
    ];
    let g2 = obs
        .wait_stable(&[0, 1, 2], g1, Duration::from_secs(20))
        .await;
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    obs.check_generation(&assignor, &[0, 1, 2], g2);
    assert_ne!(obs.latest[&1].member_id, old_ids[0]);
    assert_ne!(obs.latest[&2].member_id, old_ids[1]);
    for m in [m0, m1, m2] {
        m.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_commit_with_a_stale_generation_is_fenced() {
    init_tracing();
    let topic = unique("membership-zombie");
    create_topic(&topic, 2).await;
    let group = unique("membership-zombie-g");
    let assignor = RoundRobin::new(2);

    // A: a short session timeout, so it is expelled soon after it stops heartbeating.
    let mut cfg_a = config(&group, &topic);
    cfg_a.session_timeout = Duration::from_secs(6);
    let mut a = connect(cfg_a).await;
    let a_assignment = a
        .join(Bytes::from("zombie"), &*assignor)
        .await
        .expect("a joins");
    let ga = a_assignment.generation_id;
    assert!(a_assignment.leader);
    assert_eq!(a_assignment.partitions, vec![0, 1]);
    a.commit_offsets(&[(0, 10), (1, 11)])
        .await
        .expect("a commits in its generation");
    assert_eq!(
        a.fetch_offsets(&[0, 1]).await.expect("fetch"),
        BTreeMap::from([(0, 10), (1, 11)])
    );

    // A stops heartbeating. B joins; the rebalance completes once A's session expired.
    let mut b = connect(config(&group, &topic)).await;
    let b_assignment = tokio::time::timeout(
        Duration::from_secs(60),
        b.join(Bytes::from("successor"), &*assignor),
    )
    .await
    .expect("b joins within 60 s")
    .expect("b joins");
    let gb = b_assignment.generation_id;
    assert!(gb > ga, "new generation {gb} after {ga}");
    assert!(b_assignment.leader);
    assert_eq!(
        members_in(&b_assignment),
        vec!["successor".to_string()],
        "a is not in the new generation"
    );
    assert_eq!(b_assignment.partitions, vec![0, 1]);
    b.commit_offsets(&[(0, 20)])
        .await
        .expect("b commits in the current generation");

    // The zombie still believes in generation ga; its commit is refused.
    assert_eq!(a.generation().map(|g| g.0), Some(ga));
    let err = a
        .commit_offsets(&[(0, 99), (1, 99)])
        .await
        .expect_err("zombie commit must be refused");
    match &err {
        MembershipError::Fenced { generation, .. } => assert_eq!(*generation, ga),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(
        a.generation(),
        None,
        "a fenced member forgets its generation"
    );
    // Without a generation, a commit is refused locally too, and the heartbeat asks to rejoin.
    assert!(matches!(
        a.commit_offsets(&[(0, 98)]).await,
        Err(MembershipError::Fenced { .. })
    ));
    assert_eq!(
        a.heartbeat().await.expect("heartbeat"),
        HeartbeatOutcome::RebalanceNeeded
    );

    // The committed offsets are what the current generation committed (and A's older one for
    // the partition B did not commit).
    let expected = BTreeMap::from([(0, 20), (1, 11)]);
    assert_eq!(b.fetch_offsets(&[0, 1]).await.expect("fetch"), expected);
    assert_eq!(a.fetch_offsets(&[0, 1]).await.expect("fetch"), expected);
    b.leave().await.expect("leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarts_without_a_rebalance_and_fences_its_old_self() {
    init_tracing();
    let topic = unique("membership-static");
    create_topic(&topic, 4).await;
    let group = unique("membership-static-g");
    let assignor = RoundRobin::new(4);
    let (tx, mut obs) = Observer::new();
    let static_cfg = |i: usize| {
        let mut c = config(&group, &topic);
        c.group_instance_id = Some(format!("instance-{i}"));
        c
    };

    let mut running = BTreeMap::new();
    running.insert(
        0,
        spawn_member(
            0,
            connect(static_cfg(0)).await,
            assignor.clone(),
            tx.clone(),
        ),
    );
    running.insert(
        1,
        spawn_member(
            1,
            connect(static_cfg(1)).await,
            assignor.clone(),
            tx.clone(),
        ),
    );
    let g1 = obs.wait_stable(&[0, 1], 0, Duration::from_secs(60)).await;
    obs.check_generation(&assignor, &[0, 1], g1);

    // Restart the leader (the harder case: the coordinator tells it to skip the assignment and
    // hands it its stored assignment). No LeaveGroup: the process just went away.
    let restart = if obs.latest[&0].leader { 0 } else { 1 };
    let other = 1 - restart;
    let before = obs.latest[&restart].clone();
    let joins_before = obs.joins[&restart];
    let t = Instant::now();
    let mut old = running.remove(&restart).expect("running").stop().await;
    let fresh = connect(static_cfg(restart)).await;
    running.insert(
        restart,
        spawn_member(restart, fresh, assignor.clone(), tx.clone()),
    );
    obs.wait_for(
        "the restarted member rejoined",
        Duration::from_secs(60),
        |o| o.joins[&restart] > joins_before,
    )
    .await;

    let after = obs.latest[&restart].clone();
    assert_eq!(
        after.generation_id, g1,
        "a static restart keeps the generation (no rebalance)"
    );
    assert_ne!(
        after.member_id, before.member_id,
        "the restarted member has a new member id"
    );
    assert!(after.leader, "the restarted leader is still the leader");
    assert_eq!(
        after.partitions, before.partitions,
        "and keeps its partitions"
    );
    assert_eq!(
        after.user_data, before.user_data,
        "and its assignment user data"
    );
    assert_eq!(obs.latest[&other].generation_id, g1);
    assert_eq!(
        obs.first_rebalance_after(other, t),
        None,
        "the other member saw no rebalance"
    );

    // The old incarnation (same instance id, old member id) is fenced.
    let err = old
        .commit_offsets(&[(0, 1)])
        .await
        .expect_err("the old incarnation's commit is refused");
    assert!(
        matches!(err, MembershipError::Fenced { code: 82, .. }),
        "FENCED_INSTANCE_ID, got {err:?}"
    );
    assert_eq!(
        old.heartbeat().await.expect("heartbeat"),
        HeartbeatOutcome::RebalanceNeeded
    );

    for (_, m) in running {
        m.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_join_leaves_the_member_usable() {
    init_tracing();
    let topic = unique("membership-cancel");
    create_topic(&topic, 2).await;
    let group = unique("membership-cancel-g");
    let assignor = RoundRobin::new(2);

    // Member 0 forms a generation alone and then does not heartbeat for a moment, so the
    // coordinator holds member 1's JoinGroup until member 0 rejoins.
    let mut m0 = connect(config(&group, &topic)).await;
    m0.join(Bytes::from(name(0)), &*assignor)
        .await
        .expect("member 0 joins");
    let mut m1 = connect(config(&group, &topic)).await;
    let cancelled = tokio::time::timeout(
        Duration::from_millis(500),
        m1.join(Bytes::from(name(1)), &*assignor),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the join is held until member 0 rejoins"
    );

    // Dropping the join future abandoned a request on member 1's connection; it carries on.
    let (tx, mut obs) = Observer::new();
    let r0 = spawn_member(0, m0, assignor.clone(), tx.clone());
    let r1 = spawn_member(1, m1, assignor.clone(), tx.clone());
    let gen = obs.wait_stable(&[0, 1], 0, Duration::from_secs(60)).await;
    obs.check_generation(&assignor, &[0, 1], gen);
    for m in [r0, r1] {
        m.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_offsets_carry_our_generation_and_a_stale_one_is_fenced() {
    use paystream::kafka::producer::{CommitError, Delivery, OutputProducer};
    use paystream::kafka::transaction::GroupMetadata;

    init_tracing();
    let topic = unique("membership-txn");
    create_topic(&topic, 2).await;
    let group = unique("membership-txn-g");
    let assignor = RoundRobin::new(2);
    let mut a = connect(config(&group, &topic)).await;
    let first = a.join(Bytes::from("a"), &*assignor).await.expect("a joins");
    // Rejoining starts a new generation: the first one is stale from now on.
    let second = a
        .join(Bytes::from("a"), &*assignor)
        .await
        .expect("a rejoins");
    assert!(second.generation_id > first.generation_id);
    let as_of = |a: &Assignment| GroupMetadata {
        group_id: group.clone(),
        generation: a.generation_id,
        member_id: a.member_id.clone(),
        group_instance_id: None,
    };
    let (b, t) = (bootstrap(), unique("txn-id"));
    let producer = tokio::task::spawn_blocking(move || {
        OutputProducer::new(
            &b,
            &[],
            &Delivery::ExactlyOnce {
                transactional_id: t,
            },
        )
    })
    .await
    .unwrap()
    .expect("transactional producer");

    // A transaction committing offsets as the stale generation is refused and aborted.
    let (p, top, stale) = (producer.clone(), topic.clone(), as_of(&first));
    let refused = tokio::task::spawn_blocking(move || {
        p.send(&top, 0, Some(b"k"), Some(b"zombie"), None, None)
            .expect("send");
        p.commit(&top, &[(0, 7)], &stale, &|| {})
    })
    .await
    .unwrap();
    assert!(
        matches!(refused, Err(CommitError::Fenced(_))),
        "stale generation: {refused:?}"
    );
    // The current generation commits: the offsets are the group's.
    let (p, top, current) = (producer.clone(), topic.clone(), as_of(&second));
    tokio::task::spawn_blocking(move || {
        p.send(&top, 1, Some(b"k"), Some(b"current"), None, None)
            .expect("send");
        p.commit(&top, &[(1, 5)], &current, &|| {})
    })
    .await
    .unwrap()
    .expect("current generation commits");
    assert_eq!(
        a.fetch_offsets(&[0, 1]).await.expect("fetch"),
        BTreeMap::from([(1, 5)]),
        "only the current generation's offsets were committed"
    );
    a.leave().await.expect("leave");
}
