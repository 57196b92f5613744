//! paystream against a broker that requires authentication: a real Apache Kafka with SASL_PLAINTEXT
//! and SASL_SSL listeners (`deploy/kafka.sh start --secure`: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512,
//! a CA made at start-up), beside the suite's broker on its own ports.
//!
//! - The group-membership client (paystream's own Kafka protocol code) authenticates with each
//!   mechanism, over TLS too; a wrong password is an authentication error, an untrusted
//!   certificate a TLS error (both final: start-up stops on them instead of retrying).
//! - Two instances, one over SASL_PLAINTEXT with SCRAM-SHA-512 and one over SASL_SSL with
//!   SCRAM-SHA-256, given only the secured listener as bootstrap (`--kafka-property`), form one
//!   group, split the partitions and answer every order as the test wrote it.
//! - An instance with a wrong password stops at start-up, saying why.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{free_port, unique, Proc};
use paystream::coordination::membership::{
    GroupMember, HeartbeatOutcome, JoinedMember, LeaderAssignor, MembershipConfig, MembershipError,
};
use paystream::coordination::scram::ScramHash;
use paystream::coordination::security::{BrokerSecurity, SaslMechanism, SaslSettings, TlsSettings};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// The secure broker's ports: PLAINTEXT (for the test's own clients), its controller, then
/// SASL_PLAINTEXT and SASL_SSL.
const BASE: u16 = 19392;
const SASL_PLAINTEXT: u16 = BASE + 2;
const SASL_SSL: u16 = BASE + 3;
/// What `deploy/kafka.sh start --secure` registers.
const USER: &str = "paystream";
const PASSWORD: &str = "paystream-secret";
const PARTITIONS: i32 = 4;

/// The secure broker, stopped when dropped (also when the test fails).
struct SecureBroker {
    run: PathBuf,
}

impl SecureBroker {
    fn start() -> SecureBroker {
        let cache = std::env::var_os("PAYSTREAM_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/paystream")
            });
        let broker = SecureBroker {
            run: cache.join("kafka-run-secure-test"),
        };
        let ok = broker
            .script()
            .args(["start", "--secure"])
            .stdout(Stdio::null())
            .status()
            .expect("run deploy/kafka.sh")
            .success();
        assert!(ok, "deploy/kafka.sh start --secure failed");
        broker
    }

    fn script(&self) -> Command {
        let mut c = Command::new("bash");
        c.arg(common::repo_root().join("deploy/kafka.sh"))
            .env("PAYSTREAM_KAFKA_RUN", &self.run)
            .env("PAYSTREAM_KAFKA_PORT", BASE.to_string());
        c
    }

    fn ca(&self) -> PathBuf {
        self.run.join("tls/ca.pem")
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = self.script().arg("stop").stdout(Stdio::null()).status();
    }
}

fn plaintext() -> String {
    format!("127.0.0.1:{BASE}")
}

fn sasl(mechanism: SaslMechanism, password: &str) -> Option<SaslSettings> {
    Some(SaslSettings {
        mechanism,
        username: USER.into(),
        password: password.into(),
    })
}

fn tls(ca: Option<PathBuf>) -> Option<TlsSettings> {
    Some(TlsSettings {
        ca_location: ca,
        certificate_location: None,
        key_location: None,
        key_password: None,
        verify_certificate: true,
        verify_hostname: true,
    })
}

async fn member(port: u16, security: BrokerSecurity) -> Result<GroupMember, MembershipError> {
    let mut config =
        MembershipConfig::new(vec![format!("127.0.0.1:{port}")], unique("secure"), "t");
    config.security = security;
    GroupMember::connect(config).await
}

async fn create_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", plaintext())
        .create()
        .expect("admin");
    let topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics([&topic], &opts).await.expect("create") {
        r.expect("topic created");
    }
}

/// Log lines of this test process (its membership clients), for what no return value shows.
static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = LOG.lock() {
            log.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One partition to the only member.
struct Everything;

impl LeaderAssignor for Everything {
    fn assign(&self, members: &[JoinedMember]) -> BTreeMap<String, (Vec<i32>, Bytes)> {
        members
            .iter()
            .map(|m| (m.member_id.clone(), (vec![0], Bytes::new())))
            .collect()
    }
}

/// The SASL_PLAINTEXT listener ends sessions after 10 s (KIP-368: the broker closes a
/// connection used after its session ended). A member heartbeating for 25 s keeps its
/// generation, and never has a request fail on a connection closed under it: it replaces the
/// connection before the session ends.
async fn sessions_end_and_the_member_reconnects_before_they_do() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("paystream::coordination=debug")
        .with_writer(|| Capture)
        .with_ansi(false)
        .try_init();
    let security = BrokerSecurity {
        tls: None,
        sasl: sasl(SaslMechanism::Scram(ScramHash::Sha512), PASSWORD),
    };
    let mut m = member(SASL_PLAINTEXT, security).await.expect("member");
    let joined = m.join(Bytes::new(), &Everything).await.expect("join");
    let from = LOG.lock().expect("log").len();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(25) {
        let beat = m.heartbeat().await;
        assert!(
            matches!(beat, Ok(HeartbeatOutcome::Stable)),
            "heartbeat after {:?}: {beat:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(m.generation().map(|g| g.0), Some(joined.generation_id));
    let log = String::from_utf8_lossy(&LOG.lock().expect("log")[from..]).into_owned();
    let lifetimes = log
        .lines()
        .filter(|l| l.contains("authenticated") && l.contains("session_lifetime_ms=10000"))
        .count();
    assert!(
        lifetimes >= 2,
        "the broker grants 10 s sessions: 25 s of heartbeats need two more:\n{log}"
    );
    assert!(
        !log.contains("retrying"),
        "a request failed on an expired session:\n{log}"
    );
    let _ = m.leave().await;
}

fn active_count(h: &serde_json::Value) -> usize {
    h["active_partitions"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paystream_authenticates_with_sasl_plain_and_scram_over_plaintext_and_tls() {
    let broker = SecureBroker::start();

    // The group-membership client alone: every mechanism, with and without TLS.
    let cases = [
        (SASL_PLAINTEXT, None, SaslMechanism::Plain),
        (
            SASL_PLAINTEXT,
            None,
            SaslMechanism::Scram(ScramHash::Sha256),
        ),
        (
            SASL_PLAINTEXT,
            None,
            SaslMechanism::Scram(ScramHash::Sha512),
        ),
        (SASL_SSL, Some(broker.ca()), SaslMechanism::Plain),
        (
            SASL_SSL,
            Some(broker.ca()),
            SaslMechanism::Scram(ScramHash::Sha512),
        ),
    ];
    for (port, ca, mechanism) in cases {
        let security = BrokerSecurity {
            tls: ca.and_then(|ca| tls(Some(ca))),
            sasl: sasl(mechanism, PASSWORD),
        };
        let tls_on = security.tls.is_some();
        member(port, security)
            .await
            .unwrap_or_else(|e| panic!("{} (tls: {tls_on}) on port {port}: {e}", mechanism.name()));
    }
    let wrong = BrokerSecurity {
        tls: None,
        sasl: sasl(SaslMechanism::Scram(ScramHash::Sha256), "not-the-password"),
    };
    match member(SASL_PLAINTEXT, wrong).await {
        Err(e @ MembershipError::Authentication { .. }) => assert!(e.is_refusal()),
        other => panic!("a wrong password must be an authentication error: {other:?}"),
    }
    // The system's trust store does not hold the test CA: the broker's certificate is refused.
    let untrusted = BrokerSecurity {
        tls: tls(None),
        sasl: sasl(SaslMechanism::Plain, PASSWORD),
    };
    match member(SASL_SSL, untrusted).await {
        Err(MembershipError::Tls { message, .. }) => {
            assert!(message.contains("certificate"), "{message}")
        }
        other => panic!("an untrusted certificate must be a TLS error: {other:?}"),
    }
    // Without SASL the secured listener answers nothing useful: no silent PLAINTEXT fallback,
    // and the error says what is missing.
    match member(SASL_PLAINTEXT, BrokerSecurity::default()).await {
        Err(e) => assert!(e.to_string().contains("security.protocol"), "{e}"),
        Ok(_) => panic!("a SASL listener accepted an unauthenticated member"),
    }
    sessions_end_and_the_member_reconnects_before_they_do().await;

    // Two instances on the secured listeners only, one group.
    let topic = unique("secure");
    let app = unique("secure");
    create_topic(&topic).await;
    let orders: Vec<String> = (0..24).map(|i| format!("SEC-{i:03}")).collect();
    common::send_order_events(&plaintext(), &topic, &orders, "APPROVAL_REQUESTED").await;
    let completed = &orders[..12];
    common::send_order_events(&plaintext(), &topic, completed, "APPROVAL_COMPLETED").await;
    let want: BTreeMap<&str, &str> = orders
        .iter()
        .map(|id| {
            let state = if completed.contains(id) {
                "APPROVAL_COMPLETED"
            } else {
                "APPROVAL_REQUESTED"
            };
            (id.as_str(), state)
        })
        .collect();

    let work = common::work_dir();
    let ca = broker.ca().display().to_string();
    let password = format!("sasl.password={PASSWORD}");
    let scram512 = [
        "--kafka-property",
        "security.protocol=SASL_PLAINTEXT",
        "--kafka-property",
        "sasl.mechanism=SCRAM-SHA-512",
        "--kafka-property",
        "sasl.username=paystream",
        "--kafka-property",
        &password,
    ];
    let ca_prop = format!("ssl.ca.location={ca}");
    let scram256_tls = [
        "--kafka-property",
        "security.protocol=SASL_SSL",
        "--kafka-property",
        "sasl.mechanisms=SCRAM-SHA-256",
        "--kafka-property",
        "sasl.username=paystream",
        "--kafka-property",
        &password,
        "--kafka-property",
        &ca_prop,
    ];
    let at = |port: u16| format!("127.0.0.1:{port}");
    let mut a = Proc::run_at(
        &at(SASL_PLAINTEXT),
        &app,
        &topic,
        &work.path().join("a"),
        free_port(),
        &scram512,
        &[],
    );
    let mut b = Proc::run_at(
        &at(SASL_SSL),
        &app,
        &topic,
        &work.path().join("b"),
        free_port(),
        &scram256_tls,
        &[],
    );
    for (name, p) in [("a", &mut a), ("b", &mut b)] {
        p.wait_health(
            &format!("{name} runs actives"),
            Duration::from_secs(180),
            |h| h["ready"] == true && active_count(h) > 0,
        )
        .await;
    }
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for p in [&mut a, &mut b] {
        for (id, state) in &want {
            loop {
                let url = format!("http://{}/orders/{id}", p.http);
                let body = match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => r.text().await.unwrap_or_default(),
                    _ => String::new(),
                };
                if body.contains(&format!("\"state\":\"{state}\"")) {
                    break;
                }
                p.assert_alive();
                assert!(
                    Instant::now() < deadline,
                    "{id} via {}: want {state}, got {body:?}; log:\n{}",
                    p.http,
                    p.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let total = |h: &serde_json::Value| active_count(h);
    let (ha, hb) = (a.health().await.expect("a"), b.health().await.expect("b"));
    assert_eq!(total(&ha) + total(&hb), PARTITIONS as usize, "{ha} {hb}");

    // A wrong password stops start-up with the reason.
    let bad = [
        "--kafka-property",
        "security.protocol=SASL_PLAINTEXT",
        "--kafka-property",
        "sasl.mechanism=SCRAM-SHA-256",
        "--kafka-property",
        "sasl.username=paystream",
        "--kafka-property",
        "sasl.password=wrong",
    ];
    let mut c = Proc::run_at(
        &at(SASL_PLAINTEXT),
        &app,
        &topic,
        &work.path().join("c"),
        free_port(),
        &bad,
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Ok(Some(s)) = c.child.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "an instance with a wrong password kept running; log:\n{}",
            c.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = std::fs::read_to_string(&c.log)
        .unwrap_or_default()
        .to_lowercase();
    assert!(!status.success(), "{}", c.log_tail());
    // The error it stops with names the refusal (not "all brokers down" after a minute).
    let stopped_with = log.lines().rev().find(|l| l.starts_with("error:"));
    assert!(
        stopped_with.is_some_and(|l| l.contains("refused") && l.contains("authentication")),
        "{stopped_with:?}; log:\n{}",
        c.log_tail()
    );
    a.terminate();
    b.terminate();
}
