//! Every keyed path lands where a Java producer would put the key: kafka-clients' default
//! partitioner (compiled and run here with `javac`/`java`), librdkafka with `murmur2_random`,
//! and paystream's own function agree on 10,000 keys — checked against a real broker.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::*;
use paystream::partition_for_key;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const PARTITIONS: i32 = 12;

fn keys() -> Vec<String> {
    let mut keys: Vec<String> = (0..9_000).map(|i| format!("O-{i:06}")).collect();
    // Odd shapes too: unicode, long, short, tail lengths 1..3 of murmur2's 4-byte blocks.
    for i in 0..1_000 {
        keys.push(match i % 5 {
            0 => format!("주문-{i}"),
            1 => format!("k{i}"),
            2 => "x".repeat(1 + i % 97),
            3 => format!("{:x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            _ => format!("member-{i}/order-{}", i * 7),
        });
    }
    keys
}

fn java_partitions(topic: &str, keys: &[String]) -> HashMap<String, i32> {
    let dir = tempfile::tempdir().unwrap();
    let cp = Command::new("bash")
        .arg(repo_root().join("deploy/kafka.sh"))
        .arg("classpath")
        .output()
        .expect("classpath");
    assert!(cp.status.success());
    let cp = String::from_utf8(cp.stdout).unwrap().trim().to_owned();
    let status = Command::new("javac")
        .args(["-cp", &cp, "-d"])
        .arg(dir.path())
        .arg(repo_root().join("tests/java/JavaPartitioner.java"))
        .status()
        .expect("javac (install a JDK 17+)");
    assert!(status.success(), "javac failed");
    let keys_file = dir.path().join("keys.txt");
    std::fs::write(&keys_file, keys.join("\n")).unwrap();
    let out = Command::new("java")
        .arg("-cp")
        .arg(format!("{}:{cp}", dir.path().display()))
        .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
        .args(["JavaPartitioner", &bootstrap(), topic])
        .arg(&keys_file)
        .output()
        .expect("java");
    assert!(
        out.status.success(),
        "java producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, p) = l.rsplit_once('\t').expect("KEY<TAB>PARTITION");
            (k.to_owned(), p.parse().expect("partition"))
        })
        .collect()
}

async fn librdkafka_partitions(topic: &str, keys: &[String]) -> HashMap<String, i32> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut out = HashMap::new();
    for chunk in keys.chunks(500) {
        let futs = chunk.iter().map(|k| {
            let producer = producer.clone();
            async move {
                let d = producer
                    .send(
                        FutureRecord::to(topic).key(k.as_str()).payload("v"),
                        Duration::from_secs(30),
                    )
                    .await
                    .expect("delivery");
                (k.clone(), d.partition)
            }
        });
        out.extend(futures::future::join_all(futs).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_librdkafka_and_paystream_agree_on_ten_thousand_keys() {
    let topic = unique("partitioning");
    create_topic(&topic, PARTITIONS).await;
    let keys = keys();
    assert_eq!(keys.len(), 10_000);
    let java = {
        let (t, k) = (topic.clone(), keys.clone());
        tokio::task::spawn_blocking(move || java_partitions(&t, &k))
            .await
            .unwrap()
    };
    let rdkafka = librdkafka_partitions(&topic, &keys).await;
    let mut used = std::collections::HashSet::new();
    for k in &keys {
        let ours = partition_for_key(k.as_bytes(), PARTITIONS);
        assert_eq!(java.get(k), Some(&ours), "java vs paystream for {k:?}");
        assert_eq!(
            rdkafka.get(k),
            Some(&ours),
            "librdkafka vs paystream for {k:?}"
        );
        used.insert(ours);
    }
    assert_eq!(
        used.len(),
        PARTITIONS as usize,
        "keys spread over every partition"
    );
}
