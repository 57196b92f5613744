//! Client properties the user adds to every Kafka client paystream makes
//! (`paystream run --kafka-property KEY=VALUE`, or a `[kafka-properties]` table in the file).
//!
//! They are librdkafka properties (its CONFIGURATION.md names them), applied after paystream's
//! own settings, so tuning and site settings (`client.rack`, `socket.keepalive.enable`,
//! `compression.type`, ...) win. Keys whose value paystream's guarantees rest on are refused at
//! start-up, naming the key; so are security settings the group-membership client cannot honour
//! yet (it speaks PLAINTEXT only: TLS and SASL for it are still to be built).

use std::collections::BTreeMap;

use clap::Args;

use super::{invalid, ConfigError};

/// Keys paystream sets itself because exactly-once, partitioning or the group depend on them.
const OWNED: [(&str, &str); 10] = [
    ("bootstrap.servers", "use --bootstrap-servers"),
    (
        "group.id",
        "the group is the application id (--application-id)",
    ),
    ("group.instance.id", "use --group-instance-id"),
    ("transactional.id", "set per task under exactly-once"),
    ("enable.idempotence", "exactly-once and restore rely on it"),
    ("isolation.level", "paystream reads committed records only"),
    (
        "enable.auto.commit",
        "offsets are committed with the state they belong to",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed with the state they belong to",
    ),
    (
        "partitioner",
        "queries find keys by murmur2, as Java's DefaultPartitioner",
    ),
    (
        "transaction.timeout.ms",
        "what a dead instance holds back; fixed with the commit protocol",
    ),
];

/// The flag (part of `paystream run`).
#[derive(Debug, Clone, Default, Args)]
pub struct KafkaArgs {
    /// A librdkafka client property for every Kafka client paystream makes (producers, source
    /// and restore consumers, admin), applied over paystream's own settings. Repeatable; also a
    /// `[kafka-properties]` table in the config file (flags win). Keys paystream's guarantees
    /// depend on (group.id, transactional.id, isolation.level, partitioner, ...) are refused, and
    /// so, for now, is any security.protocol but PLAINTEXT (the group-membership client has no
    /// TLS or SASL yet). Example: --kafka-property client.rack=az1
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    pub kafka_property: Vec<String>,
}

impl KafkaArgs {
    /// The properties of the flags over those of the file's table, validated.
    pub(super) fn build(
        &self,
        file: Option<BTreeMap<String, toml::Value>>,
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let mut props: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in file.unwrap_or_default() {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    return Err(invalid(
                        "kafka-properties",
                        format!("{key}: {other} is not a string, number or boolean"),
                    ))
                }
            };
            props.insert(key, value);
        }
        for raw in &self.kafka_property {
            let (key, value) = raw
                .split_once('=')
                .ok_or_else(|| invalid("kafka-property", format!("{raw:?} is not KEY=VALUE")))?;
            props.insert(key.trim().to_owned(), value.to_owned());
        }
        for (key, value) in &props {
            check(key, value)?;
        }
        Ok(props.into_iter().collect())
    }
}

fn check(key: &str, value: &str) -> Result<(), ConfigError> {
    let name = "kafka-property";
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
    if !valid {
        return Err(invalid(
            name,
            format!("{key:?} is not a librdkafka property name"),
        ));
    }
    if let Some((_, why)) = OWNED.iter().find(|(k, _)| *k == key) {
        return Err(invalid(name, format!("{key} is set by paystream: {why}")));
    }
    if key == "security.protocol" && !value.eq_ignore_ascii_case("plaintext") {
        return Err(invalid(
            name,
            format!(
                "security.protocol={value}: paystream's group-membership client speaks \
                 PLAINTEXT only so far (no TLS or SASL yet)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(flags: &[&str], file: &str) -> Result<Vec<(String, String)>, String> {
        let args = KafkaArgs {
            kafka_property: flags.iter().map(|s| s.to_string()).collect(),
        };
        let table: Option<BTreeMap<String, toml::Value>> =
            (!file.is_empty()).then(|| toml::from_str(file).unwrap());
        args.build(table).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_win_over_the_file_and_values_become_strings() {
        let got = build(
            &["client.rack=az2", "socket.keepalive.enable=true"],
            "\"client.rack\" = \"az1\"\n\"linger.ms\" = 20\n",
        )
        .unwrap();
        let want = [
            ("client.rack", "az2"),
            ("linger.ms", "20"),
            ("socket.keepalive.enable", "true"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn owned_keys_bad_names_and_unsupported_security_are_refused_naming_the_key() {
        for (flag, needle) in [
            ("group.id=x", "group.id is set by paystream"),
            ("partitioner=consistent", "murmur2"),
            ("Client.Rack=a", "not a librdkafka property name"),
            ("no-equals", "not KEY=VALUE"),
            ("security.protocol=SASL_SSL", "PLAINTEXT only"),
        ] {
            let e = build(&[flag], "").unwrap_err();
            assert!(
                e.contains("kafka-property") && e.contains(needle),
                "{flag}: {e}"
            );
        }
        assert!(build(&["security.protocol=plaintext"], "").is_ok());
        let e = build(&[], "\"x.y\" = [1]\n").unwrap_err();
        assert!(e.contains("kafka-properties"), "{e}");
    }
}
