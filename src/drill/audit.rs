//! After the drill: read `SEND_SMS` and its suppressed topic as a downstream consumer would
//! (`read_committed`, from where they ended when the drill began to their end now) and count
//! every (order, template).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{step, DrillError};
use crate::kafka::client::source_consumer_config;

/// Where each partition of `topics` ends now (a topic that does not exist has none).
pub type Ends = BTreeMap<(String, i32), i64>;

fn audit_consumer(bootstrap: &str) -> Result<BaseConsumer, DrillError> {
    source_consumer_config(bootstrap, "paystream-drill-audit")
        .create()
        .map_err(step("audit consumer"))
}

fn ends_of(consumer: &BaseConsumer, topics: &[String]) -> Result<Ends, DrillError> {
    let mut ends = Ends::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(step("audit metadata"))?;
        for t in md.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .map_err(step("audit watermarks"))?;
                ends.insert((topic.clone(), p.id()), high);
            }
        }
    }
    Ok(ends)
}

/// The end offsets of `topics` now (blocking), for [`count_sms`] to start from.
pub fn ends(bootstrap: &str, topics: &[String]) -> Result<Ends, DrillError> {
    ends_of(&audit_consumer(bootstrap)?, topics)
}

/// (order id, template) → copies found in `topics` between `from` (a partition missing there:
/// its beginning) and their end now (blocking; up to `timeout`).
pub fn count_sms(
    bootstrap: &str,
    topics: &[String],
    from: &Ends,
    timeout: Duration,
) -> Result<BTreeMap<(String, String), usize>, DrillError> {
    let consumer = audit_consumer(bootstrap)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = ends_of(&consumer, topics)?;
    ends.retain(|key, high| *high > from.get(key).copied().unwrap_or(0));
    for (topic, partition) in ends.keys() {
        let start = from
            .get(&(topic.clone(), *partition))
            .map_or(Offset::Beginning, |o| Offset::Offset(*o));
        tpl.add_partition_offset(topic, *partition, start)
            .map_err(step("audit assignment"))?;
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
