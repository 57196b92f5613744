//! Settings of what an instance tells the outside about itself beyond `/metrics`: traces
//! (`paystream run --otlp-endpoint URL`).

use clap::Args;

use super::{invalid, ConfigError};

/// Flags of tracing (part of `paystream run`).
#[derive(Debug, Clone, Default, Args)]
pub struct TelemetryArgs {
    /// Export traces over OTLP/HTTP (protobuf) to this collector, e.g. Jaeger's
    /// `http://127.0.0.1:4318` (`/v1/traces` is added when the URL has no path). Each input
    /// record with a `traceparent` (W3C) or `b3` (Brave) header gets a processing span under its
    /// producer's span, and each record made from it a send span; forwarded queries carry the
    /// context on. Off by default: then no spans are made at all (records still pass their
    /// input's trace headers on).
    #[arg(long, env = "PAYSTREAM_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// Validated tracing settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// Where spans go (a full URL ending in the traces path); `None`: tracing is off.
    pub otlp_traces_url: Option<String>,
}

impl TelemetryArgs {
    /// Merge with the file's `otlp-endpoint` and validate.
    pub(super) fn build(&self, file: Option<String>) -> Result<TelemetrySettings, ConfigError> {
        let Some(raw) = self.otlp_endpoint.clone().or(file) else {
            return Ok(TelemetrySettings::default());
        };
        Ok(TelemetrySettings {
            otlp_traces_url: Some(traces_url(&raw)?),
        })
    }
}

/// `raw` as the URL spans are posted to: `http(s)://HOST[:PORT]` gets the OTLP traces path.
fn traces_url(raw: &str) -> Result<String, ConfigError> {
    let key = "otlp-endpoint";
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .ok_or_else(|| invalid(key, format!("{raw:?} is not an http:// or https:// URL")))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(invalid(key, format!("{raw:?} names no host")));
    }
    if let Some((_, port)) = authority.rsplit_once(':') {
        if !authority.ends_with(']') && port.parse::<u16>().is_err() {
            return Err(invalid(
                key,
                format!("{raw:?}: port {port:?} is not a number"),
            ));
        }
    }
    Ok(if path.trim_end_matches('/').is_empty() {
        format!("{}/v1/traces", raw.trim_end_matches('/'))
    } else {
        raw.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_without_a_path_gets_the_traces_path() {
        let url = |s: &str| traces_url(s).map_err(|e| e.to_string());
        assert_eq!(
            url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("http://jaeger:4318/").unwrap(),
            "http://jaeger:4318/v1/traces"
        );
        assert_eq!(
            url("https://otel.example/custom/path").unwrap(),
            "https://otel.example/custom/path"
        );
        for bad in [
            "127.0.0.1:4318",
            "grpc://x:4317",
            "http://",
            "http://host:port",
        ] {
            let e = url(bad).unwrap_err();
            assert!(e.contains("otlp-endpoint"), "{bad}: {e}");
        }
    }
}
