//! Client properties the user adds to every Kafka client paystream makes
//! (`paystream run --kafka-property KEY=VALUE`, or a `[kafka-properties]` table in the file).
//!
//! They are librdkafka properties (its CONFIGURATION.md names them), applied after paystream's
//! own settings, so tuning and site settings (`client.rack`, `socket.keepalive.enable`,
//! `compression.type`, ...) win. Keys whose value paystream's guarantees rest on are refused at
//! start-up, naming the key. Security settings (`security.protocol`, `sasl.*`, `ssl.*`) secure
//! paystream's own group-membership connections too ([`BrokerSecurity`]); what that client cannot
//! honour (GSSAPI, OAUTHBEARER, inline PEMs, keystores) is refused at start-up, naming the key.

use std::collections::BTreeMap;

use clap::Args;

use super::{invalid, ConfigError};
use crate::coordination::security::BrokerSecurity;

/// The validated properties, and the security they ask of every broker connection. `Debug`
/// hides secret values (passwords, keys).
#[derive(Clone, Default)]
pub struct KafkaSettings {
    /// For librdkafka, in key order.
    pub properties: Vec<(String, String)>,
    /// For paystream's own group-membership client.
    pub security: BrokerSecurity,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let secret = ["password", "secret", "jaas", ".pem"]
                    .iter()
                    .any(|s| k.contains(s));
                (k.as_str(), if secret { "<hidden>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("properties", &shown)
            .field("security", &self.security)
            .finish()
    }
}

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
    /// depend on (group.id, transactional.id, isolation.level, partitioner, ...) are refused.
    /// security.protocol, sasl.mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), sasl.username,
    /// sasl.password and ssl.ca.location / ssl.certificate.location / ssl.key.location secure the
    /// group-membership connections as well. Examples: --kafka-property client.rack=az1,
    /// --kafka-property security.protocol=SASL_SSL --kafka-property sasl.mechanism=SCRAM-SHA-512
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    pub kafka_property: Vec<String>,
}

impl KafkaArgs {
    /// The properties of the flags over those of the file's table (if any), validated.
    pub fn build(
        &self,
        file: Option<BTreeMap<String, toml::Value>>,
    ) -> Result<KafkaSettings, ConfigError> {
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
        for key in props.keys() {
            check(key)?;
        }
        let security = BrokerSecurity::from_properties(&props)
            .map_err(|e| invalid("kafka-property", e.to_string()))?;
        if let Some(tls) = &security.tls {
            // Read the CA, certificate and key now: a wrong path fails start-up, not a rebalance.
            tls.connector()
                .map_err(|e| invalid("kafka-property", e.to_string()))?;
        }
        Ok(KafkaSettings {
            properties: props.into_iter().collect(),
            security,
        })
    }
}

fn check(key: &str) -> Result<(), ConfigError> {
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
        args.build(table)
            .map(|k| k.properties)
            .map_err(|e| e.to_string())
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
            ("security.protocol=SASL_SSL", "sasl.mechanism"),
            ("security.protocol=tls", "security.protocol"),
        ] {
            let e = build(&[flag], "").unwrap_err();
            assert!(
                e.contains("kafka-property") && e.contains(needle),
                "{flag}: {e}"
            );
        }
        assert!(build(&["security.protocol=plaintext"], "").is_ok());
        let e = build(
            &[
                "security.protocol=ssl",
                "ssl.ca.location=/nonexistent/ca.pem",
            ],
            "",
        )
        .unwrap_err();
        assert!(e.contains("ssl.ca.location: /nonexistent/ca.pem"), "{e}");
        let args = KafkaArgs {
            kafka_property: vec!["sasl.password=hunter2".into(), "client.rack=az1".into()],
        };
        let shown = format!("{:?}", args.build(None).unwrap());
        assert!(
            !shown.contains("hunter2") && shown.contains("az1"),
            "{shown}"
        );
        let e = build(&[], "\"x.y\" = [1]\n").unwrap_err();
        assert!(e.contains("kafka-properties"), "{e}");
    }
}
