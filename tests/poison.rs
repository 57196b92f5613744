//! A record whose processing fails because of the record itself (a processor panics on it, or
//! it makes an output larger than Kafka accepts) is rolled back and then dead-lettered with a
//! reason, and the task goes on, under exactly-once: nothing lost, nothing twice. Real broker,
//! real RocksDB, the engine's own `Task`, a topology built for the test.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{bootstrap, create_topic, read_topic, unique};
use paystream::engine::task::{Task, TaskError, TaskOutputs, TaskState};
use paystream::kafka::producer::{Delivery, OutputProducer};
use paystream::kafka::transaction::GroupMetadata;
use paystream::telemetry::TaskMetrics;
use paystream_topology::processor::{ProcessError, Processor, ProcessorContext, Record};
use paystream_topology::StreamsBuilder;

/// Forwards every record to `OUT`, except: key `panic` panics, key `huge` forwards a 2 MB value.
struct Picky;

impl Processor for Picky {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        mut record: Record,
    ) -> Result<(), ProcessError> {
        match record.key.as_deref() {
            Some(b"panic") => panic!("cannot handle this one"),
            Some(b"huge") => record.value = Some(vec![b'x'; 2_000_000]),
            _ => {}
        }
        ctx.forward(record);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_breaks_processing_is_rolled_back_then_dead_lettered() {
    let (input, out, dlq) = (
        unique("poison-in"),
        unique("poison-out"),
        unique("poison-dlq"),
    );
    for t in [&input, &out, &dlq] {
        create_topic(t, 1).await;
    }
    let (input_c, out_c, dlq_c) = (input.clone(), out.clone(), dlq.clone());
    let state = tempfile::tempdir().expect("tempdir");
    let dir = state.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut b = StreamsBuilder::new();
        b.stream(&input_c)
            .process(&[], || Box::new(Picky))
            .to(&out_c);
        let topology = Arc::new(b.build().expect("topology"));
        let delivery = Delivery::ExactlyOnce {
            transactional_id: unique("poison-txn"),
        };
        let producer = OutputProducer::new(&bootstrap(), &[], &delivery).expect("producer");
        let sinks = HashMap::from([(out_c.clone(), 1)]);
        let outputs = TaskOutputs {
            producer: &producer,
            dlq_topic: &dlq_c,
            dlq_partitions: 1,
            sink_partitions: &sinks,
            application_id: "poison-test",
            input_partitions: 1,
        };
        let metrics = Arc::new(TaskMetrics::default());
        let mut task =
            Task::open(0, &topology, &dir, "poison-test", metrics.clone()).expect("open");
        task.transition(TaskState::Restoring).expect("restoring");
        task.transition(TaskState::Running).expect("running");
        let rec = |key: &str| Record::new(key.as_bytes().to_vec(), b"v".to_vec(), 1_000);
        let feed = |task: &mut Task, from: i64| -> Result<(), TaskError> {
            for (i, key) in ["a", "panic", "b", "huge", "c"].iter().enumerate() {
                let offset = i as i64;
                if offset >= from {
                    task.process(&input_c, offset, rec(key), None, &outputs, 1_000)?;
                }
            }
            Ok(())
        };
        // First pass: the panic is the record's fault; the caller rolls back (aborts the
        // transaction and the task's writes) and feeds again from the last commit (nothing
        // committed yet: offset 0).
        let mut from = 0;
        let mut rollbacks = Vec::new();
        loop {
            match feed(&mut task, from) {
                Ok(()) => break,
                Err(TaskError::Poisoned { offset, reason, .. }) => {
                    rollbacks.push((offset, reason));
                    producer.abort().expect("abort");
                    task.abort();
                    from = 0;
                }
                Err(e) => panic!("an infrastructure error for a bad record: {e}"),
            }
            assert!(rollbacks.len() <= 2, "rolled back forever: {rollbacks:?}");
        }
        assert_eq!(
            rollbacks,
            [(1, "processor_panic"), (3, "output_too_large")],
            "each bad record costs one rollback"
        );
        assert_eq!(
            task.offset_to_commit(),
            Some(5),
            "processing went on past both"
        );
        let group = GroupMetadata::standalone("poison-test");
        producer
            .commit(&input_c, &[(0, 5)], &group, &|| {})
            .expect("commit");
        task.mark_committed();
    })
    .await
    .expect("join");

    // What the committed transaction holds: each good record once, each bad one dead-lettered
    // once (the rolled-back passes are aborted).
    let outs = tokio::task::spawn_blocking(move || read_topic(&out, "read_committed"))
        .await
        .expect("join");
    let keys: Vec<String> = outs.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    let letters = tokio::task::spawn_blocking(move || read_topic(&dlq, "read_committed"))
        .await
        .expect("join");
    let got: Vec<(String, String, String)> = letters
        .iter()
        .map(|l| {
            (
                l.key.clone().unwrap_or_default(),
                l.headers["paystream.dlq.reason"].clone(),
                l.headers["paystream.source.offset"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("panic".into(), "processor_panic".into(), "1".into()),
            ("huge".into(), "output_too_large".into(), "3".into()),
        ]
    );
}
