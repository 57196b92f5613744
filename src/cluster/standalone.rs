//! Standalone mode (no group protocol): this instance owns every partition. Used by users who
//! run exactly one instance and want no group (`paystream demo` runs a real group on its
//! embedded broker since the demo caps the group API versions the mock advertises). Offsets are committed outside any generation (generation
//! -1, no member id: in the transaction under exactly-once, as a simple consumer otherwise),
//! which the broker accepts only while no group member owns the group id.

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::group::CommitRequest;
use super::routing::RoutingTable;
use crate::coordination::assignor::PartitionOwners;
use crate::engine::{CommitRefused, EngineCommand};

/// Everything standalone mode needs.
pub struct Standalone {
    pub partitions: i32,
    pub self_addr: String,
    pub commands: std::sync::mpsc::Sender<EngineCommand>,
    /// At-least-once offset commits from the stream thread.
    pub commits: mpsc::Receiver<CommitRequest>,
    pub routing: Arc<RoutingTable>,
    pub bootstrap: String,
    pub group_id: String,
    pub topic: String,
    /// The engine stops when its command channel closes: keep it open until shutdown.
    pub shutdown: CancellationToken,
}

impl Standalone {
    /// Hand the stream thread every partition, then serve its commits (at-least-once) until it
    /// is done, and keep the command channel open until shutdown.
    pub async fn run(mut self) {
        let map: BTreeMap<i32, PartitionOwners> = (0..self.partitions)
            .map(|p| {
                (
                    p,
                    PartitionOwners {
                        active: self.self_addr.clone(),
                        standbys: vec![],
                    },
                )
            })
            .collect();
        self.routing.update(0, map);
        self.routing
            .own_partitions(&(0..self.partitions).collect::<Vec<_>>(), &[]);
        let assign = EngineCommand::Assign {
            generation: -1,
            member_id: String::new(),
            active: (0..self.partitions).collect(),
            standby: vec![],
        };
        if self.commands.send(assign).is_err() {
            return;
        }
        let consumer: Option<Arc<BaseConsumer>> =
            crate::kafka::client::source_consumer_config(&self.bootstrap, &self.group_id)
                .create()
                .map(Arc::new)
                .map_err(|e| tracing::error!(error = %e, "cannot create the offset committer"))
                .ok();
        while let Some(req) = self.commits.recv().await {
            let Some(c) = consumer.clone() else {
                let _ = req
                    .reply
                    .send(Err(CommitRefused::Failed("no committer".into())));
                continue;
            };
            let topic = self.topic.clone();
            let offsets = req.offsets;
            let r = tokio::task::spawn_blocking(move || {
                let mut tpl = TopicPartitionList::new();
                for (p, o) in &offsets {
                    tpl.add_partition_offset(&topic, *p, Offset::Offset(*o))
                        .map_err(|e| e.to_string())?;
                }
                c.commit(&tpl, CommitMode::Sync).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            let _ = req.reply.send(r.map_err(CommitRefused::Failed));
        }
        self.shutdown.cancelled().await;
    }
}
