//! The embedded broker: librdkafka's mock cluster, made to advertise only the request versions
//! it actually parses, with every topic the demo needs created up front (it has no CreateTopics).
//!
//! Why the version caps: the mock's `ApiVersions` answer lists JoinGroup v0–6, SyncGroup v0–4,
//! Heartbeat v0–5, LeaveGroup v0–4 and FindCoordinator v0–3 (`rd_kafka_mock_api_handlers` in
//! librdkafka's `rdkafka_mock_handlers.c`), but its handlers decode only the pre-flexible
//! layouts: `rd_kafka_mock_handle_JoinGroup` reads the protocols array count with
//! `rd_kafka_buf_read_i32` even in v6, where it is a compact (varint) array, so the count comes
//! out as garbage (`> 1000`), the handler returns -1 and the mock closes the connection without
//! an answer; SyncGroup v4 (assignments count) and LeaveGroup v3+ (members array) are misread
//! the same way. librdkafka's own consumer never notices because it caps these APIs at
//! JoinGroup v5, SyncGroup v3, Heartbeat v3, LeaveGroup v1 and FindCoordinator v2
//! (`rdkafka_request.c`). paystream's membership client picks the highest version both sides
//! list, so the mock is told to list exactly what librdkafka's consumer uses.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::RDKafkaApiKey;

use super::DemoError;

/// Highest version of each classic group API the mock decodes correctly: the versions
/// librdkafka's own consumer sends it.
const GROUP_API_CAPS: [(RDKafkaApiKey, i16); 5] = [
    (RDKafkaApiKey::FindCoordinator, 2),
    (RDKafkaApiKey::JoinGroup, 5),
    (RDKafkaApiKey::SyncGroup, 3),
    (RDKafkaApiKey::Heartbeat, 3),
    (RDKafkaApiKey::LeaveGroup, 1),
];

/// The mock cluster, alive as long as this value (it runs on librdkafka threads of the demo's
/// process and listens on a loopback port).
pub(crate) struct EmbeddedBroker {
    mock: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    /// One mock broker with the group API caps applied and `topics` created with `partitions`
    /// partitions each.
    pub(crate) fn start(partitions: i32, topics: &[String]) -> Result<Self, DemoError> {
        let mock = MockCluster::new(1).map_err(|e| DemoError::Broker(e.to_string()))?;
        for (api, max) in GROUP_API_CAPS {
            mock.apiversion(api, Some(0), Some(max))
                .map_err(|e| DemoError::Broker(format!("capping {api:?} at v{max}: {e}")))?;
        }
        for topic in topics {
            mock.create_topic(topic, partitions, 1)
                .map_err(|e| DemoError::Broker(format!("create {topic}: {e}")))?;
        }
        Ok(Self { mock })
    }

    /// `HOST:PORT` of the broker.
    pub(crate) fn bootstrap_servers(&self) -> String {
        self.mock.bootstrap_servers()
    }
}
