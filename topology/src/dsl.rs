//! The stream DSL: describe a topology as a chain of operations on a stream.
//!
//! Entry point: [`StreamsBuilder`] ("use StreamsBuilder as entry for your program", as in Kafka
//! Streams). Chain operations on the [`KStream`] returned by [`StreamsBuilder::stream`], then call
//! [`StreamsBuilder::build`] to get a validated [`Topology`]:
//!
//! ```
//! use paystream_topology::{Record, StreamsBuilder};
//!
//! let mut builder = StreamsBuilder::new();
//! builder
//!     .stream("PAYMENT.ORDER")
//!     .filter(|r: &Record| r.value.is_some())
//!     .map(|mut r: Record| {
//!         r.headers.push(("seen-by".into(), b"paystream".to_vec()));
//!         r
//!     })
//!     .to("PAYMENT.ORDER.AUDIT");
//! let topology = builder.build().unwrap();
//! assert_eq!(topology.source_topic(), "PAYMENT.ORDER");
//! assert_eq!(topology.sink_topics(), vec!["PAYMENT.ORDER.AUDIT".to_owned()]);
//! ```
//!
//! Operations only record what to do; nothing is checked until `build`, which reports the first
//! problem as a [`TopologyError`]. Closures must be `Send + Sync + 'static` because one topology
//! is shared by every task on every stream thread.

use std::sync::Arc;

use crate::processor::{Processor, Record};
use crate::time::TimePolicy;
use crate::topology::{Draft, NodeKind, NodeSpec, SinkSpec, StoreSpec, Topology, TopologyError};

/// Collects the operations of a topology; [`StreamsBuilder::build`] validates and freezes them.
#[derive(Default)]
pub struct StreamsBuilder {
    streams: Vec<Draft>,
    /// Kafka Streams numbers nodes with one counter across the whole topology.
    next_index: usize,
}

/// A stream of records being described: each method appends one node to the chain.
///
/// It borrows its builder, so finish the chain (end the statement) before calling `build`.
pub struct KStream<'a> {
    builder: &'a mut StreamsBuilder,
    stream: usize,
}

impl StreamsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a stream that reads `topic`, timed by the Kafka record timestamp with no bound on
    /// future times. A topology reads exactly one topic, so call this (or
    /// [`StreamsBuilder::stream_timed`]) once.
    pub fn stream(&mut self, topic: &str) -> KStream<'_> {
        self.stream_timed(topic, TimePolicy::default())
    }

    /// Start a stream that reads `topic`, timed by `time` (Kafka Streams'
    /// `Consumed.withTimestampExtractor`): see [`crate::time`].
    pub fn stream_timed(&mut self, topic: &str, time: TimePolicy) -> KStream<'_> {
        let source_name = self.node_name("SOURCE");
        self.streams.push(Draft {
            source_name,
            time,
            source_topic: topic.to_owned(),
            nodes: Vec::new(),
            sinks: Vec::new(),
            node_after_sink: None,
        });
        let stream = self.streams.len() - 1;
        KStream {
            builder: self,
            stream,
        }
    }

    /// Validate what was described: exactly one source topic, legal non-empty names, no store
    /// declared twice, no sink that is also the source, sinks after every other node.
    pub fn build(mut self) -> Result<Topology, TopologyError> {
        match self.streams.len() {
            0 => Err(TopologyError::NoSource),
            1 => match self.streams.pop() {
                Some(draft) => Topology::validate(draft),
                None => Err(TopologyError::NoSource),
            },
            _ => Err(TopologyError::MultipleSources(
                self.streams.into_iter().map(|d| d.source_topic).collect(),
            )),
        }
    }

    fn node_name(&mut self, kind: &str) -> String {
        let name = format!("KSTREAM-{kind}-{:010}", self.next_index);
        self.next_index += 1;
        name
    }
}

impl KStream<'_> {
    /// Keep only the records for which `predicate` returns true.
    pub fn filter<F>(self, predicate: F) -> Self
    where
        F: Fn(&Record) -> bool + Send + Sync + 'static,
    {
        self.push("FILTER", NodeKind::Filter(Arc::new(predicate)))
    }

    /// Replace every record by `f(record)` (key, value, timestamp and headers may all change).
    pub fn map<F>(self, f: F) -> Self
    where
        F: Fn(Record) -> Record + Send + Sync + 'static,
    {
        self.push("MAP", NodeKind::Map(Arc::new(f)))
    }

    /// Run a custom [`Processor`]. `factory` creates one instance per task; `store_names` declares
    /// the key-value stores it opens with `ctx.store(name)` (the executor creates them per task
    /// and commits their writes to a changelog). A store belongs to exactly one processor.
    pub fn process<F>(self, store_names: &[&str], factory: F) -> Self
    where
        F: Fn() -> Box<dyn Processor> + Send + Sync + 'static,
    {
        let stores = store_names
            .iter()
            .map(|s| StoreSpec::key_value(s))
            .collect();
        self.process_with(stores, &[], factory)
    }

    /// Run a custom [`Processor`] with any kind of store ([`StoreSpec::key_value`],
    /// [`StoreSpec::window`]) and `outputs`: topics it sends to directly with
    /// `ctx.send(topic, record)` instead of forwarding down the chain (e.g. a notification topic
    /// and its "suppressed" twin). Outputs are sink topics: the executor checks they exist.
    pub fn process_with<F>(self, stores: Vec<StoreSpec>, outputs: &[&str], factory: F) -> Self
    where
        F: Fn() -> Box<dyn Processor> + Send + Sync + 'static,
    {
        self.push(
            "PROCESSOR",
            NodeKind::Process {
                stores,
                outputs: outputs.iter().map(|t| (*t).to_owned()).collect(),
                factory: Arc::new(factory),
            },
        )
    }

    /// Send every record leaving the chain to `topic`. May be called several times (one sink per
    /// topic) but only at the end of the chain: a node added after a sink is a build error.
    pub fn to(self, topic: &str) -> Self {
        let name = self.builder.node_name("SINK");
        let draft = &mut self.builder.streams[self.stream];
        draft.sinks.push(SinkSpec {
            name,
            topic: topic.to_owned(),
        });
        self
    }

    fn push(self, kind: &str, node: NodeKind) -> Self {
        let name = self.builder.node_name(kind);
        let draft = &mut self.builder.streams[self.stream];
        if !draft.sinks.is_empty() && draft.node_after_sink.is_none() {
            draft.node_after_sink = Some(name.clone());
        }
        draft.nodes.push(NodeSpec { name, kind: node });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::{ProcessError, ProcessorContext};

    struct Nop;
    impl Processor for Nop {
        fn process(&mut self, _: &mut ProcessorContext<'_>, _: Record) -> Result<(), ProcessError> {
            Ok(())
        }
    }

    fn nop() -> Box<dyn Processor> {
        Box::new(Nop)
    }

    #[test]
    fn describe_names_every_node_in_order() {
        let mut b = StreamsBuilder::new();
        b.stream("IN")
            .filter(|_| true)
            .process(&["orders", "index"], nop)
            .map(|r| r)
            .to("OUT")
            .to("AUDIT");
        let t = b.build().unwrap();
        assert_eq!(
            t.describe(),
            "Source: KSTREAM-SOURCE-0000000000 (topic: IN) --> KSTREAM-FILTER-0000000001\n\
             Processor: KSTREAM-FILTER-0000000001 --> KSTREAM-PROCESSOR-0000000002\n\
             Processor: KSTREAM-PROCESSOR-0000000002 (stores: [orders, index]) --> KSTREAM-MAP-0000000003\n\
             Processor: KSTREAM-MAP-0000000003 --> KSTREAM-SINK-0000000004, KSTREAM-SINK-0000000005\n\
             Sink: KSTREAM-SINK-0000000004 (topic: OUT) <-- KSTREAM-MAP-0000000003\n\
             Sink: KSTREAM-SINK-0000000005 (topic: AUDIT) <-- KSTREAM-MAP-0000000003\n"
        );
        let stores: Vec<&str> = t.stores().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(stores, ["orders", "index"]);
        assert_eq!(t.sink_topics(), ["OUT", "AUDIT"]);
    }

    #[test]
    fn source_only_describes_as_none() {
        let mut b = StreamsBuilder::new();
        b.stream("IN");
        let t = b.build().unwrap();
        assert_eq!(
            t.describe(),
            "Source: KSTREAM-SOURCE-0000000000 (topic: IN) --> none\n"
        );
        assert!(t.stores().is_empty());
        assert!(t.sink_topics().is_empty());
    }

    fn build_err(f: impl FnOnce(&mut StreamsBuilder)) -> TopologyError {
        let mut b = StreamsBuilder::new();
        f(&mut b);
        match b.build() {
            Ok(t) => panic!("expected an error, built:\n{t}"),
            Err(e) => e,
        }
    }

    #[test]
    fn validation_rejects_each_problem() {
        assert_eq!(build_err(|_| {}), TopologyError::NoSource);
        assert_eq!(
            build_err(|b| {
                b.stream("A");
                b.stream("B");
            }),
            TopologyError::MultipleSources(vec!["A".into(), "B".into()])
        );
        assert_eq!(
            build_err(|b| {
                b.stream("");
            }),
            TopologyError::EmptyName {
                what: "source topic"
            }
        );
        assert_eq!(
            build_err(|b| {
                b.stream("IN").process(&[""], nop);
            }),
            TopologyError::EmptyName { what: "store" }
        );
        assert_eq!(
            build_err(|b| {
                b.stream("IN").to("");
            }),
            TopologyError::EmptyName { what: "sink topic" }
        );
        assert_eq!(
            build_err(|b| {
                b.stream("IN").process(&["s"], nop).process(&["s"], nop);
            }),
            TopologyError::DuplicateStore("s".into())
        );
        assert_eq!(
            build_err(|b| {
                b.stream("IN").process(&["s", "s"], nop);
            }),
            TopologyError::DuplicateStore("s".into())
        );
        assert_eq!(
            build_err(|b| {
                b.stream("IN").to("IN");
            }),
            TopologyError::SinkIsSource("IN".into())
        );
        assert_eq!(
            build_err(|b| {
                b.stream("IN").to("OUT").to("OUT");
            }),
            TopologyError::DuplicateSink("OUT".into())
        );
        assert_eq!(
            build_err(|b| {
                b.stream("IN").to("OUT").filter(|_| true);
            }),
            TopologyError::NodeAfterSink {
                node: "KSTREAM-FILTER-0000000002".into()
            }
        );
        assert!(matches!(
            build_err(|b| {
                b.stream("IN").process(&["bad name"], nop);
            }),
            TopologyError::InvalidName { what: "store", .. }
        ));
    }

    #[test]
    fn errors_read_as_lowercase_sentences() {
        let e = TopologyError::MultipleSources(vec!["A".into(), "B".into()]);
        assert_eq!(
            e.to_string(),
            "topology reads 2 source topics (A, B); exactly one is supported"
        );
        assert_eq!(
            TopologyError::SinkIsSource("IN".into()).to_string(),
            "sink topic \"IN\" is also the source topic (the topology would feed itself)"
        );
    }
}
