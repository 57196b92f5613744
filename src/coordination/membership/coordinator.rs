//! The connection to the group coordinator: finding it (FindCoordinator over the bootstrap
//! brokers, with backoff), keeping one connection to it, dropping that connection when it can no
//! longer be trusted or the coordinator moved, and sending requests over it.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use tokio::time::Instant;

use super::retry::Backoff;
use super::{bounded, GroupMember, MembershipError};
use crate::coordination::error::{code, error_name};
use crate::coordination::wire::{api_name, Connection};

impl GroupMember {
    fn coordinator_addr(&self) -> String {
        self.coordinator
            .as_ref()
            .map(|c| c.addr().to_string())
            .unwrap_or_default()
    }

    /// A `Protocol` error about the coordinator's answer.
    pub(super) fn coordinator_protocol_error(&self, message: impl Into<String>) -> MembershipError {
        MembershipError::Protocol {
            addr: self.coordinator_addr(),
            message: message.into(),
        }
    }

    /// `api` answered the coordinator error `c`: forget the coordinator, so that the next
    /// request rediscovers it, unless it is only still loading.
    pub(super) fn coordinator_moved(&mut self, api: &'static str, c: i16) {
        tracing::info!(group = %self.config.group_id, api, error = %error_name(c), "coordinator unavailable or moved, rediscovering");
        if c != code::COORDINATOR_LOAD_IN_PROGRESS {
            self.coordinator = None;
        }
    }

    /// Sends a request built for the negotiated version to the coordinator and decodes the answer.
    pub(super) async fn call<R: Request>(
        &mut self,
        build: impl FnOnce(i16) -> R,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<R::Response, MembershipError> {
        let (body, version) = self.call_raw(build, timeout, deadline).await?;
        R::Response::decode(&mut body.clone(), version).map_err(|e| {
            let error = self.coordinator_protocol_error(format!(
                "decoding {} v{version} response: {e}",
                api_name(R::KEY)
            ));
            self.coordinator = None;
            error
        })
    }

    /// Like [`Self::call`], returning the undecoded response body and the version used.
    pub(super) async fn call_raw<R: Request>(
        &mut self,
        build: impl FnOnce(i16) -> R,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<(Bytes, i16), MembershipError> {
        let conn = self.coordinator(deadline).await?;
        let version = conn.version_of::<R>()?;
        let req = build(version);
        match conn.request_raw(&req, version, timeout).await {
            Ok(body) => Ok((body, version)),
            Err(e) => {
                if e.breaks_connection() {
                    self.coordinator = None;
                }
                Err(e)
            }
        }
    }

    /// The coordinator connection, discovering the coordinator (with backoff) if needed.
    pub(super) async fn coordinator(
        &mut self,
        deadline: Instant,
    ) -> Result<&mut Connection, MembershipError> {
        if let Some(why) = self.coordinator.as_ref().and_then(|c| c.unusable_because()) {
            tracing::debug!(group = %self.config.group_id, why, "replacing the coordinator connection");
            self.coordinator = None;
        }
        if self.coordinator.is_none() {
            let conn = self.discover(deadline).await?;
            self.coordinator = Some(conn);
        }
        self.coordinator
            .as_mut()
            .ok_or_else(|| MembershipError::Protocol {
                addr: String::new(),
                message: "no coordinator connection".into(),
            })
    }

    async fn discover(&mut self, deadline: Instant) -> Result<Connection, MembershipError> {
        let mut backoff = Backoff::new();
        loop {
            let n = self.config.bootstrap.len();
            let mut last_error = None;
            for _ in 0..n {
                let addr = self.config.bootstrap[self.bootstrap_cursor % n].clone();
                match self.find_coordinator_via(&addr, deadline).await {
                    Ok(conn) => return Ok(conn),
                    Err(e) if (e.is_retriable() || e.breaks_connection()) && !e.is_refusal() => {
                        tracing::debug!(group = %self.config.group_id, bootstrap = %addr, error = %e, "coordinator lookup failed");
                        last_error = Some(e);
                        self.bootstrap_cursor = self.bootstrap_cursor.wrapping_add(1);
                    }
                    Err(e) => return Err(e),
                }
            }
            if !backoff.sleep(deadline).await {
                return Err(last_error.unwrap_or(MembershipError::Timeout {
                    what: format!("finding the coordinator of group {}", self.config.group_id),
                    after: self.discovery_budget(),
                }));
            }
        }
    }

    async fn find_coordinator_via(
        &self,
        bootstrap: &str,
        deadline: Instant,
    ) -> Result<Connection, MembershipError> {
        let timeout = bounded(self.config.request_timeout, deadline);
        let mut conn = Connection::connect(
            bootstrap,
            &self.config.client_id,
            &self.config.security,
            timeout,
        )
        .await?;
        let version = conn.version_of::<FindCoordinatorRequest>()?;
        let key = StrBytes::from_string(self.config.group_id.clone());
        let mut req = FindCoordinatorRequest::default();
        if version >= 4 {
            req.coordinator_keys = vec![key];
        } else {
            req.key = key;
        }
        // key_type 0 = group (v1+; the field defaults to 0).
        let resp: FindCoordinatorResponse = conn.request(&req, version, timeout).await?;
        let (error_code, error_message, host, port) = if version >= 4 {
            let c = resp
                .coordinators
                .first()
                .ok_or_else(|| MembershipError::Protocol {
                    addr: bootstrap.to_string(),
                    message: "FindCoordinator answered no coordinator".into(),
                })?;
            (
                c.error_code,
                c.error_message.clone(),
                c.host.to_string(),
                c.port,
            )
        } else {
            (
                resp.error_code,
                resp.error_message.clone(),
                resp.host.to_string(),
                resp.port,
            )
        };
        if error_code != code::NONE {
            return Err(MembershipError::kafka(
                "FindCoordinator",
                error_code,
                error_message.as_deref(),
            ));
        }
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        tracing::debug!(group = %self.config.group_id, coordinator = %addr, "found group coordinator");
        if addr == conn.addr() {
            return Ok(conn);
        }
        drop(conn);
        Connection::connect(
            &addr,
            &self.config.client_id,
            &self.config.security,
            bounded(self.config.request_timeout, deadline),
        )
        .await
    }
}
