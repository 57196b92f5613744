//! Errors of the group-membership client, and the Kafka error codes it reacts to.
//!
//! Shared by the broker connection ([`super::wire`]) and the membership client
//! ([`super::membership`]), which re-exports [`MembershipError`].

use std::time::Duration;

use kafka_protocol::error::ResponseError;

/// Kafka error codes the membership client handles by value.
pub(super) mod code {
    pub(crate) const NONE: i16 = 0;
    pub(crate) const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub(crate) const NOT_COORDINATOR: i16 = 16;
    pub(crate) const ILLEGAL_GENERATION: i16 = 22;
    pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
    pub(crate) const INVALID_REQUEST: i16 = 42;
    pub(crate) const REBALANCE_IN_PROGRESS: i16 = 27;
    pub(crate) const MEMBER_ID_REQUIRED: i16 = 79;
    pub(crate) const FENCED_INSTANCE_ID: i16 = 82;
    pub(crate) const UNSTABLE_OFFSET_COMMIT: i16 = 88;
}

/// The coordinator is loading, unavailable, or no longer the coordinator of the group.
pub(super) fn is_coordinator_error(c: i16) -> bool {
    matches!(
        c,
        code::COORDINATOR_LOAD_IN_PROGRESS
            | code::COORDINATOR_NOT_AVAILABLE
            | code::NOT_COORDINATOR
    )
}

/// Kafka's name for an error code, e.g. `RebalanceInProgress`.
pub(super) fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "None".to_string(),
        Some(e) => e.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("i/o error with {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("protocol error with {addr}: {message}")]
    Protocol { addr: String, message: String },
    #[error("{api} failed: {message} (error code {code})")]
    Kafka {
        api: &'static str,
        code: i16,
        message: String,
    },
    /// The coordinator refused this member's generation or identity (ILLEGAL_GENERATION,
    /// UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID), or it has no current generation: its view of the
    /// group is stale and it must not act on it (commit offsets) before rejoining.
    #[error("fenced in {api}: {reason} (generation {generation}, member {member_id:?})")]
    Fenced {
        api: &'static str,
        generation: i32,
        member_id: String,
        code: i16,
        reason: String,
    },
    /// The broker refused our credentials or SASL mechanism: retrying cannot help.
    #[error("authentication with {addr} failed: {message}")]
    Authentication { addr: String, message: String },
    /// TLS could not be set up or the broker's certificate was refused.
    #[error("TLS with {addr} failed: {message}")]
    Tls { addr: String, message: String },
    #[error("timed out after {after:?}: {what}")]
    Timeout { what: String, after: Duration },
    #[error("invalid membership configuration: {0}")]
    Config(String),
}

impl MembershipError {
    pub(crate) fn kafka(api: &'static str, code: i16, message: Option<&str>) -> Self {
        let name = error_name(code);
        let message = match message {
            Some(m) if !m.is_empty() => format!("{name}: {m}"),
            _ => name,
        };
        MembershipError::Kafka { api, code, message }
    }

    /// Kafka's error code, for `Kafka` and `Fenced`.
    pub fn code(&self) -> Option<i16> {
        match self {
            MembershipError::Kafka { code, .. } | MembershipError::Fenced { code, .. } => {
                Some(*code)
            }
            _ => None,
        }
    }

    /// Worth retrying the same call later (network trouble, coordinator moving, a rebalance).
    pub fn is_retriable(&self) -> bool {
        match self {
            MembershipError::Io { .. } | MembershipError::Timeout { .. } => true,
            MembershipError::Kafka { code, .. } => {
                is_coordinator_error(*code)
                    || *code == code::REBALANCE_IN_PROGRESS
                    || ResponseError::try_from_code(*code).is_some_and(|e| e.is_retriable())
            }
            _ => false,
        }
    }

    /// The broker refused our credentials or certificate: another attempt (or bootstrap
    /// server) would be refused alike, so start-up stops with it rather than retrying.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            MembershipError::Authentication { .. } | MembershipError::Tls { .. }
        )
    }

    /// The connection this error came from cannot be trusted any more.
    pub(super) fn breaks_connection(&self) -> bool {
        matches!(
            self,
            MembershipError::Io { .. }
                | MembershipError::Timeout { .. }
                | MembershipError::Protocol { .. }
                | MembershipError::Authentication { .. }
                | MembershipError::Tls { .. }
        )
    }
}
