//! After the drill: read `SEND_SMS` and its suppressed topic as a downstream consumer would
//! (`read_committed`, from the beginning to the end) and count every (order, template).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{step, DrillError};
use crate::kafka::client::source_consumer_config;

/// (order id, template) → copies found in `topics` (blocking; up to `timeout`).
pub fn count_sms(
    bootstrap: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<BTreeMap<(String, String), usize>, DrillError> {
    let consumer: BaseConsumer = source_consumer_config(bootstrap, "paystream-drill-audit")
        .create()
        .map_err(step("audit consumer"))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(step("audit metadata"))?;
        for t in md.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .map_err(step("audit watermarks"))?;
                if high > 0 {
                    tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                        .map_err(step("audit assignment"))?;
                    ends.insert((topic.clone(), p.id()), high);
                }
            }
        }
    }
    consumer.assign(&tpl).map_err(step("audit assign"))?;
    let mut found: BTreeMap<(String, String), usize> = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(DrillError::Step(format!(
                "reading the SMS topics did not reach their end in {timeout:?}: {} partitions left",
                ends.len()
            )));
        }
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.map_err(step("audit poll"))?;
            if let Some(v) = m.payload() {
                let json: serde_json::Value =
                    serde_json::from_slice(v).map_err(step("an SMS record is not JSON"))?;
                let pair = (
                    json["order_id"].as_str().unwrap_or_default().to_owned(),
                    json["template"].as_str().unwrap_or_default().to_owned(),
                );
                *found.entry(pair).or_default() += 1;
            }
        }
        // Reached when the position passes the end (markers and aborted records included).
        let positions = consumer.position().map_err(step("audit position"))?;
        for e in positions.elements() {
            let key = (e.topic().to_owned(), e.partition());
            if let (Some(end), Offset::Offset(pos)) = (ends.get(&key), e.offset()) {
                if pos >= *end {
                    ends.remove(&key);
                }
            }
        }
    }
    Ok(found)
}
