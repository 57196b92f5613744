//! Settings of the query API: how long a request may take, how long one peer may take, and how
//! many requests are served at once (`paystream run --query-timeout-ms ...`).
//!
//! Every request has one deadline that all its forwards share (see `query::deadline`); these
//! settings bound it and the hops within it.

use std::time::Duration;

use clap::Args;

use super::{invalid, ConfigError};

/// Default deadline of a query without `timeout_ms`: long enough to try the active copy and
/// fall back to a standby, short enough that a client is never left waiting.
pub(super) const DEFAULT_QUERY_TIMEOUT_MS: u64 = 5_000;
/// Default time one peer may take to answer a forwarded query (not a long-poll): a hung active
/// costs this much before a standby answers.
pub(super) const DEFAULT_PEER_TIMEOUT_MS: u64 = 2_000;
/// Default time to open a connection to a peer (loopback or a data-centre network).
pub(super) const DEFAULT_PEER_CONNECT_TIMEOUT_MS: u64 = 500;
/// Default number of requests served at once; more are refused with 503 and `Retry-After`
/// (each query holds a blocking RocksDB read or a forward, so a bound protects the instance).
pub(super) const DEFAULT_MAX_CONCURRENT_QUERIES: usize = 256;

/// Flags of the query API (part of `paystream run`).
#[derive(Debug, Clone, Default, Args)]
pub struct QueryArgs {
    /// Deadline of one query without `timeout_ms`, forwards included: the answer (or a 503
    /// saying why not) comes within it. A long-poll (`wait_for`) uses its `timeout_ms` instead
    /// (at most 60000). [default: 5000]
    #[arg(long, env = "PAYSTREAM_QUERY_TIMEOUT_MS", value_name = "MS")]
    pub query_timeout_ms: Option<u64>,

    /// How long one peer may take to answer a forwarded query (long-polls: their deadline). A
    /// peer that does not answer in time is skipped for the rest of the request and a standby
    /// copy answers. Keep it well under --query-timeout-ms. [default: 2000]
    #[arg(long, env = "PAYSTREAM_PEER_TIMEOUT_MS", value_name = "MS")]
    pub peer_timeout_ms: Option<u64>,

    /// How long opening a connection to a peer may take. [default: 500]
    #[arg(long, env = "PAYSTREAM_PEER_CONNECT_TIMEOUT_MS", value_name = "MS")]
    pub peer_connect_timeout_ms: Option<u64>,

    /// Requests served at once (forwarded ones included; /health, /metrics and /openapi.json
    /// are not counted). Beyond it requests are refused at once with 503 `overloaded` and
    /// `Retry-After: 1`. [default: 256]
    #[arg(long, env = "PAYSTREAM_MAX_CONCURRENT_QUERIES", value_name = "N")]
    pub max_concurrent_queries: Option<usize>,
}

/// The query keys of the TOML file (kept apart from `FileConfig`'s others).
#[derive(Debug, Default)]
pub(super) struct QueryFile {
    pub(super) query_timeout_ms: Option<u64>,
    pub(super) peer_timeout_ms: Option<u64>,
    pub(super) peer_connect_timeout_ms: Option<u64>,
    pub(super) max_concurrent_queries: Option<usize>,
}

/// Validated query settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuerySettings {
    /// Deadline of a request that names none (`timeout_ms`).
    pub query_timeout: Duration,
    /// Longest one peer may take to answer a forwarded, non-long-poll query.
    pub peer_timeout: Duration,
    pub peer_connect_timeout: Duration,
    pub max_concurrent_queries: usize,
}

impl Default for QuerySettings {
    fn default() -> Self {
        Self {
            query_timeout: Duration::from_millis(DEFAULT_QUERY_TIMEOUT_MS),
            peer_timeout: Duration::from_millis(DEFAULT_PEER_TIMEOUT_MS),
            peer_connect_timeout: Duration::from_millis(DEFAULT_PEER_CONNECT_TIMEOUT_MS),
            max_concurrent_queries: DEFAULT_MAX_CONCURRENT_QUERIES,
        }
    }
}

fn ms_in(key: &'static str, v: u64, lo: u64, hi: u64) -> Result<Duration, ConfigError> {
    if !(lo..=hi).contains(&v) {
        return Err(invalid(key, format!("{v} is outside {lo}..={hi}")));
    }
    Ok(Duration::from_millis(v))
}

impl QueryArgs {
    /// Merge with the file, apply defaults, validate (cross-checks included).
    pub(super) fn build(&self, file: &QueryFile) -> Result<QuerySettings, ConfigError> {
        let query_timeout = ms_in(
            "query-timeout-ms",
            self.query_timeout_ms
                .or(file.query_timeout_ms)
                .unwrap_or(DEFAULT_QUERY_TIMEOUT_MS),
            100,
            60_000,
        )?;
        let peer_timeout = ms_in(
            "peer-timeout-ms",
            self.peer_timeout_ms
                .or(file.peer_timeout_ms)
                .unwrap_or(DEFAULT_PEER_TIMEOUT_MS),
            10,
            60_000,
        )?;
        let peer_connect_timeout = ms_in(
            "peer-connect-timeout-ms",
            self.peer_connect_timeout_ms
                .or(file.peer_connect_timeout_ms)
                .unwrap_or(DEFAULT_PEER_CONNECT_TIMEOUT_MS),
            10,
            60_000,
        )?;
        if peer_connect_timeout > peer_timeout {
            return Err(invalid(
                "peer-connect-timeout-ms",
                format!(
                    "{} ms is more than --peer-timeout-ms ({} ms), which includes connecting",
                    peer_connect_timeout.as_millis(),
                    peer_timeout.as_millis()
                ),
            ));
        }
        let max_concurrent_queries = self
            .max_concurrent_queries
            .or(file.max_concurrent_queries)
            .unwrap_or(DEFAULT_MAX_CONCURRENT_QUERIES);
        if !(1..=65_536).contains(&max_concurrent_queries) {
            return Err(invalid(
                "max-concurrent-queries",
                format!("{max_concurrent_queries} is outside 1..=65536"),
            ));
        }
        Ok(QuerySettings {
            query_timeout,
            peer_timeout,
            peer_connect_timeout,
            max_concurrent_queries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_key() {
        let s = QueryArgs::default().build(&QueryFile::default()).unwrap();
        assert_eq!(s, QuerySettings::default());
        let from_file = QueryArgs::default()
            .build(&QueryFile {
                query_timeout_ms: Some(1_000),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(from_file.query_timeout, Duration::from_secs(1));
        for (args, key) in [
            (
                QueryArgs {
                    query_timeout_ms: Some(0),
                    ..Default::default()
                },
                "query-timeout-ms",
            ),
            (
                QueryArgs {
                    peer_timeout_ms: Some(100),
                    peer_connect_timeout_ms: Some(500),
                    ..Default::default()
                },
                "peer-connect-timeout-ms",
            ),
            (
                QueryArgs {
                    max_concurrent_queries: Some(0),
                    ..Default::default()
                },
                "max-concurrent-queries",
            ),
        ] {
            let err = args.build(&QueryFile::default()).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
