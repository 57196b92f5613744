//! How paystream's own broker connections (group membership and offset commits, [`super::wire`])
//! are secured: TLS and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), read from the same
//! librdkafka properties (`--kafka-property`) that secure paystream's librdkafka clients, so one
//! set of settings covers every connection. [`BrokerSecurity::from_properties`] is pure and
//! refuses, naming the key, what this client cannot honour (rather than half-connecting).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

use super::scram::ScramHash;

/// A SASL mechanism this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    Scram(ScramHash),
}

impl SaslMechanism {
    /// The name Kafka knows it by (`SaslHandshake`).
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::Scram(ScramHash::Sha256) => "SCRAM-SHA-256",
            SaslMechanism::Scram(ScramHash::Sha512) => "SCRAM-SHA-512",
        }
    }
}

/// SASL credentials. The password never reaches a log (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct SaslSettings {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SaslSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslSettings")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// TLS settings (librdkafka's names and defaults).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `ssl.ca.location`: CA certificate(s) (PEM file); the system's trust store when unset.
    pub ca_location: Option<PathBuf>,
    /// `ssl.certificate.location` and `ssl.key.location`: a client certificate (mutual TLS).
    pub certificate_location: Option<PathBuf>,
    pub key_location: Option<PathBuf>,
    /// `ssl.key.password`: for an encrypted private key.
    pub key_password: Option<String>,
    /// `enable.ssl.certificate.verification` (default true).
    pub verify_certificate: bool,
    /// `ssl.endpoint.identification.algorithm` = `https` (default) checks the broker's name.
    pub verify_hostname: bool,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca_location", &self.ca_location)
            .field("certificate_location", &self.certificate_location)
            .field("key_location", &self.key_location)
            .field("verify_certificate", &self.verify_certificate)
            .field("verify_hostname", &self.verify_hostname)
            .finish()
    }
}

impl TlsSettings {
    /// An OpenSSL connector with these settings. Reads the files: called once at start-up to
    /// fail there (naming the key) rather than at the first connection.
    pub fn connector(&self) -> Result<SslConnector, SecurityConfigError> {
        let mut b = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| refuse("security.protocol", format!("TLS unavailable: {e}")))?;
        if let Some(ca) = &self.ca_location {
            b.set_ca_file(ca)
                .map_err(|e| refuse("ssl.ca.location", format!("{}: {e}", ca.display())))?;
        }
        if !self.verify_certificate {
            b.set_verify(SslVerifyMode::NONE);
        }
        if let (Some(cert), Some(key)) = (&self.certificate_location, &self.key_location) {
            b.set_certificate_chain_file(cert).map_err(|e| {
                refuse(
                    "ssl.certificate.location",
                    format!("{}: {e}", cert.display()),
                )
            })?;
            let bad_key = |e: String| refuse("ssl.key.location", format!("{}: {e}", key.display()));
            let pem = std::fs::read(key).map_err(|e| bad_key(e.to_string()))?;
            let pkey = match &self.key_password {
                Some(pw) => PKey::private_key_from_pem_passphrase(&pem, pw.as_bytes()),
                None => PKey::private_key_from_pem(&pem),
            }
            .map_err(|e| bad_key(e.to_string()))?;
            b.set_private_key(&pkey)
                .map_err(|e| bad_key(e.to_string()))?;
            b.check_private_key()
                .map_err(|e| bad_key(format!("does not match the certificate: {e}")))?;
        }
        Ok(b.build())
    }
}

/// `security.protocol` unpacked: TLS or not, SASL or not. The default is PLAINTEXT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerSecurity {
    pub tls: Option<TlsSettings>,
    pub sasl: Option<SaslSettings>,
}

/// A security property this client cannot honour, with the key named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SecurityConfigError {
    pub key: String,
    pub reason: String,
}

fn refuse(key: &str, reason: impl Into<String>) -> SecurityConfigError {
    SecurityConfigError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// librdkafka keys with no counterpart here: inline PEMs, PKCS#12 keystores, other mechanisms'
/// settings. Set with a secured protocol they would secure librdkafka's connections but not the
/// group membership's, so they are refused with the key to use instead.
const UNSUPPORTED: [(&str, &str); 5] = [
    ("ssl.ca.pem", "use ssl.ca.location (a PEM file)"),
    (
        "ssl.certificate.pem",
        "use ssl.certificate.location (a PEM file)",
    ),
    ("ssl.key.pem", "use ssl.key.location (a PEM file)"),
    (
        "ssl.keystore.location",
        "use ssl.certificate.location and ssl.key.location (PEM files)",
    ),
    ("ssl.engine.location", "OpenSSL engines are not supported"),
];

impl BrokerSecurity {
    /// The security of paystream's broker connections from librdkafka properties.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<Self, SecurityConfigError> {
        let get = |key: &str| props.get(key).map(|v| v.trim());
        let protocol = get("security.protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase();
        let (tls, sasl) = match protocol.as_str() {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            other => {
                return Err(refuse(
                    "security.protocol",
                    format!("{other:?} is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
                ))
            }
        };
        if tls || sasl {
            if let Some((key, instead)) = UNSUPPORTED.iter().find(|(k, _)| props.contains_key(*k)) {
                return Err(refuse(
                    key,
                    format!("not read by paystream's group-membership client: {instead}"),
                ));
            }
        }
        Ok(BrokerSecurity {
            tls: tls.then(|| tls_settings(&get)).transpose()?,
            sasl: sasl.then(|| sasl_settings(&get)).transpose()?,
        })
    }
}

fn tls_settings<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<TlsSettings, SecurityConfigError> {
    let path = |key: &str| get(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    let verify_certificate = match get("enable.ssl.certificate.verification") {
        None => true,
        Some(v) => parse_bool(v).ok_or_else(|| {
            refuse(
                "enable.ssl.certificate.verification",
                format!("{v:?} is not true or false"),
            )
        })?,
    };
    let verify_hostname =
        match get("ssl.endpoint.identification.algorithm").map(str::to_ascii_lowercase) {
            None => true,
            Some(v) if v == "https" => true,
            Some(v) if v == "none" => false,
            Some(v) => {
                return Err(refuse(
                    "ssl.endpoint.identification.algorithm",
                    format!("{v:?} is not https or none"),
                ))
            }
        };
    let settings = TlsSettings {
        ca_location: path("ssl.ca.location"),
        certificate_location: path("ssl.certificate.location"),
        key_location: path("ssl.key.location"),
        key_password: get("ssl.key.password").map(str::to_owned),
        verify_certificate,
        verify_hostname,
    };
    match (&settings.certificate_location, &settings.key_location) {
        (Some(_), None) => Err(refuse(
            "ssl.key.location",
            "needed with ssl.certificate.location",
        )),
        (None, Some(_)) => Err(refuse(
            "ssl.certificate.location",
            "needed with ssl.key.location",
        )),
        _ => Ok(settings),
    }
}

fn sasl_settings<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<SaslSettings, SecurityConfigError> {
    // librdkafka knows it as sasl.mechanisms, with sasl.mechanism as an alias; default GSSAPI.
    let (key, name) = match (get("sasl.mechanisms"), get("sasl.mechanism")) {
        (Some(m), _) => ("sasl.mechanisms", m),
        (None, Some(m)) => ("sasl.mechanism", m),
        (None, None) => ("sasl.mechanism", "GSSAPI"),
    };
    let mechanism = match name.to_ascii_uppercase().as_str() {
        "PLAIN" => SaslMechanism::Plain,
        "SCRAM-SHA-256" => SaslMechanism::Scram(ScramHash::Sha256),
        "SCRAM-SHA-512" => SaslMechanism::Scram(ScramHash::Sha512),
        _ => {
            return Err(refuse(
                key,
                format!(
                    "{name:?}: paystream's group-membership client speaks PLAIN, SCRAM-SHA-256 and \
                     SCRAM-SHA-512 (set one; librdkafka's default is GSSAPI)"
                ),
            ))
        }
    };
    let username = get("sasl.username")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            refuse(
                "sasl.username",
                format!("needed for SASL {}", mechanism.name()),
            )
        })?;
    let password = get("sasl.password").ok_or_else(|| {
        refuse(
            "sasl.password",
            format!("needed for SASL {}", mechanism.name()),
        )
    })?;
    Ok(SaslSettings {
        mechanism,
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<BrokerSecurity, SecurityConfigError> {
        let props = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BrokerSecurity::from_properties(&props)
    }

    #[test]
    fn plaintext_is_the_default_and_ignores_security_keys() {
        assert_eq!(parse(&[]).unwrap(), BrokerSecurity::default());
        assert_eq!(
            parse(&[("ssl.ca.pem", "x"), ("sasl.mechanism", "GSSAPI")]).unwrap(),
            BrokerSecurity::default()
        );
    }

    #[test]
    fn sasl_ssl_with_scram_reads_librdkafka_keys() {
        let got = parse(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "scram-sha-512"),
            ("sasl.username", "alice"),
            ("sasl.password", "s3cret"),
            ("ssl.ca.location", "/etc/ca.pem"),
            ("ssl.endpoint.identification.algorithm", "none"),
        ])
        .unwrap();
        let sasl = got.sasl.unwrap();
        assert_eq!(sasl.mechanism, SaslMechanism::Scram(ScramHash::Sha512));
        assert_eq!(
            (sasl.username.as_str(), sasl.password.as_str()),
            ("alice", "s3cret")
        );
        assert!(!format!("{sasl:?}").contains("s3cret"));
        let tls = got.tls.unwrap();
        assert_eq!(tls.ca_location, Some(PathBuf::from("/etc/ca.pem")));
        assert!(tls.verify_certificate && !tls.verify_hostname);
    }

    #[test]
    fn what_this_client_cannot_honour_is_refused_naming_the_key() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[("security.protocol", "kerberos")], "security.protocol"),
            (&[("security.protocol", "sasl_plaintext")], "sasl.mechanism"),
            (
                &[
                    ("security.protocol", "sasl_plaintext"),
                    ("sasl.mechanism", "OAUTHBEARER"),
                ],
                "sasl.mechanism",
            ),
            (
                &[
                    ("security.protocol", "sasl_plaintext"),
                    ("sasl.mechanism", "PLAIN"),
                    ("sasl.password", "p"),
                ],
                "sasl.username",
            ),
            (
                &[("security.protocol", "ssl"), ("ssl.ca.pem", "-----BEGIN")],
                "ssl.ca.pem",
            ),
            (
                &[
                    ("security.protocol", "ssl"),
                    ("ssl.certificate.location", "/c.pem"),
                ],
                "ssl.key.location",
            ),
        ];
        for (props, key) in cases {
            assert_eq!(parse(props).unwrap_err().key, key, "{props:?}");
        }
    }
}
