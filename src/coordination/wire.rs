//! One TCP connection to one Kafka broker for the classic group protocol: size-prefixed frames
//! (`i32` big-endian length, request header, body), correlation ids, and `ApiVersions`
//! negotiation; over TLS and authenticated with SASL when [`BrokerSecurity`] asks
//! ([`super::transport`] opens the stream, [`Connection::authenticate`] speaks SASL). One request
//! is in flight at a time; every wait is bounded by a timeout.
//!
//! A connection whose request timed out, failed half-way or was cancelled (the caller's future
//! was dropped between writing the request and reading the response) is *poisoned*: the next
//! response on the socket would belong to the old request, so the connection must be dropped and
//! a new one opened. So is one whose SASL session (KIP-368) is about to end: the broker would
//! close it at the next request. [`Connection::unusable_because`] tells; the membership client
//! checks it before every request.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Message, Request, StrBytes, VersionRange,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::MembershipError;
use super::scram::ScramClient;
use super::security::{BrokerSecurity, SaslMechanism, SaslSettings};
use super::transport::{self, BrokerStream};

/// Largest response frame accepted; group responses are small, so anything bigger is garbage.
const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Error code UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;

pub(crate) struct Connection {
    addr: String,
    stream: BrokerStream,
    client_id: StrBytes,
    next_correlation_id: i32,
    /// A request was written and its response was not (completely) read.
    in_flight: bool,
    /// Broker-supported version range per API key.
    versions: HashMap<i16, (i16, i16)>,
    /// Requests answered so far (0 during `ApiVersions`).
    answered: u64,
    /// What `security` asked for: TLS, SASL.
    tls: bool,
    sasl: bool,
    /// When the broker's SASL session (KIP-368, `connections.max.reauth.ms`) is close enough to
    /// its end that the connection is replaced rather than used: after it, the broker closes
    /// the connection at the next request.
    reauthenticate_at: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Connection {
    /// Opens a connection to `addr` (`HOST:PORT`): TCP, TLS when `security` asks, API
    /// versions, then SASL when `security` asks (Kafka answers `ApiVersions` before
    /// authentication, so the SASL requests' versions are negotiated too).
    pub(crate) async fn connect(
        addr: &str,
        client_id: &str,
        security: &BrokerSecurity,
        timeout: Duration,
    ) -> Result<Self, MembershipError> {
        let stream = transport::open(addr, security.tls.as_ref(), timeout).await?;
        let mut conn = Connection {
            addr: addr.to_string(),
            stream,
            client_id: StrBytes::from_string(client_id.to_string()),
            next_correlation_id: 1,
            in_flight: false,
            versions: HashMap::new(),
            answered: 0,
            tls: security.tls.is_some(),
            sasl: security.sasl.is_some(),
            reauthenticate_at: None,
        };
        conn.negotiate_versions(timeout).await?;
        if let Some(sasl) = &security.sasl {
            conn.authenticate(sasl, timeout).await?;
        }
        tracing::debug!(%addr, apis = conn.versions.len(), tls = security.tls.is_some(), sasl = ?security.sasl.as_ref().map(|s| s.mechanism.name()), "connected to broker");
        Ok(conn)
    }

    /// SASL: `SaslHandshake` names the mechanism, then `SaslAuthenticate` carries its messages
    /// (KIP-152). A refusal is an [`MembershipError::Authentication`]: retrying cannot help.
    async fn authenticate(
        &mut self,
        sasl: &SaslSettings,
        timeout: Duration,
    ) -> Result<(), MembershipError> {
        let mechanism = sasl.mechanism.name();
        let version = self.version_of::<SaslHandshakeRequest>()?;
        if version < 1 {
            return Err(self.protocol("broker lacks SaslHandshake v1 (Kafka 1.0+)"));
        }
        let mut req = SaslHandshakeRequest::default();
        req.mechanism = StrBytes::from_static_str(mechanism);
        let resp = self.request(&req, version, timeout).await?;
        if resp.error_code != 0 {
            let enabled: Vec<&str> = resp.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(self.auth(format!(
                "SASL mechanism {mechanism} refused (error code {}); the broker's listener \
                 enables {enabled:?}",
                resp.error_code
            )));
        }
        let lifetime_ms = match sasl.mechanism {
            SaslMechanism::Plain => {
                let token = format!("\0{}\0{}", sasl.username, sasl.password);
                self.sasl_round(token.into_bytes(), timeout).await?.1
            }
            SaslMechanism::Scram(hash) => {
                let client = ScramClient::new(hash, &sasl.username, &sasl.password)
                    .map_err(|e| self.auth(e.to_string()))?;
                let (server_first, _) = self
                    .sasl_round(client.first_message().into_bytes(), timeout)
                    .await?;
                let (client_final, last) = client
                    .answer(&server_first)
                    .map_err(|e| self.auth(format!("{mechanism}: {e}")))?;
                let (server_final, lifetime_ms) =
                    self.sasl_round(client_final.into_bytes(), timeout).await?;
                last.verify(&server_final)
                    .map_err(|e| self.auth(format!("{mechanism}: {e}")))?;
                lifetime_ms
            }
        };
        // Replaced at 85% of the session (as Kafka's Java client re-authenticates between 85%
        // and 95%), so no request reaches the broker after the session ended.
        self.reauthenticate_at = u64::try_from(lifetime_ms)
            .ok()
            .filter(|&ms| ms > 0)
            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms * 85 / 100));
        tracing::debug!(addr = %self.addr, %mechanism, user = %sasl.username, session_lifetime_ms = lifetime_ms, "authenticated");
        Ok(())
    }

    /// One `SaslAuthenticate` exchange: our bytes out, the broker's back (and the session
    /// lifetime it grants, 0 for none: v1+).
    async fn sasl_round(
        &mut self,
        auth_bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<(Bytes, i64), MembershipError> {
        let version = self.version_of::<SaslAuthenticateRequest>()?;
        let mut req = SaslAuthenticateRequest::default();
        req.auth_bytes = Bytes::from(auth_bytes);
        let resp = self.request(&req, version, timeout).await?;
        if resp.error_code != 0 {
            let message = resp.error_message.as_deref().unwrap_or("").to_owned();
            return Err(self.auth(format!(
                "{} (error code {}): {message}",
                super::error::error_name(resp.error_code),
                resp.error_code
            )));
        }
        Ok((resp.auth_bytes, resp.session_lifetime_ms))
    }

    fn auth(&self, message: String) -> MembershipError {
        MembershipError::Authentication {
            addr: self.addr.clone(),
            message,
        }
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Why this connection must not be used any more: a request on it failed half-way or was
    /// cancelled, or its SASL session is about to end (a new connection authenticates afresh).
    pub(crate) fn unusable_because(&self) -> Option<&'static str> {
        if self.in_flight {
            Some("a request was abandoned on it")
        } else if self
            .reauthenticate_at
            .is_some_and(|at| tokio::time::Instant::now() >= at)
        {
            Some("its SASL session is about to end")
        } else {
            None
        }
    }

    async fn negotiate_versions(&mut self, timeout: Duration) -> Result<(), MembershipError> {
        let mut version = ApiVersionsRequest::VERSIONS.max;
        for _attempt in 0..5 {
            let mut req = ApiVersionsRequest::default();
            if version >= 3 {
                req.client_software_name = StrBytes::from_static_str("paystream");
                req.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
            }
            let body = self.request_raw(&req, version, timeout).await?;
            // error_code is the first field in every version; a broker that does not support our
            // version answers UNSUPPORTED_VERSION in the v0 layout, listing what it supports.
            let code =
                peek_i16(&body, 0).ok_or_else(|| self.protocol("empty ApiVersions response"))?;
            let resp = if code == UNSUPPORTED_VERSION {
                // Kafka lists its versions in the v0 layout; other brokers (librdkafka's mock
                // cluster) send something else: then just step down one version.
                let broker_max = match ApiVersionsResponse::decode(&mut body.clone(), 0) {
                    Ok(resp) => resp
                        .api_keys
                        .iter()
                        .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                        .map(|k| k.max_version)
                        .unwrap_or(0),
                    Err(_) if version > 0 => version - 1,
                    Err(e) => {
                        return Err(self.protocol(format!("decoding ApiVersions v0 fallback: {e}")))
                    }
                };
                let next = broker_max.min(ApiVersionsRequest::VERSIONS.max);
                if next >= version {
                    return Err(self.protocol(format!(
                        "broker refused ApiVersions v{version} but claims v{broker_max}"
                    )));
                }
                tracing::debug!(addr = %self.addr, from = version, to = next, "retrying api versions with an older version");
                version = next;
                continue;
            } else {
                ApiVersionsResponse::decode(&mut body.clone(), version)
                    .map_err(|e| self.protocol(format!("decoding ApiVersions v{version}: {e}")))?
            };
            if resp.error_code != 0 {
                return Err(MembershipError::kafka("ApiVersions", resp.error_code, None));
            }
            self.versions = resp
                .api_keys
                .iter()
                .map(|k| (k.api_key, (k.min_version, k.max_version)))
                .collect();
            return Ok(());
        }
        Err(self.protocol("could not agree on an ApiVersions version"))
    }

    /// The highest version of request `R` that both this client (the codec) and the broker support.
    pub(crate) fn version_of<R: Request>(&self) -> Result<i16, MembershipError> {
        self.pick_version(R::KEY, R::VERSIONS)
    }

    fn pick_version(&self, key: i16, ours: VersionRange) -> Result<i16, MembershipError> {
        let name = api_name(key);
        let Some(&(min, max)) = self.versions.get(&key) else {
            return Err(self.protocol(format!("broker does not support {name}")));
        };
        let common = ours.intersect(&VersionRange { min, max });
        if common.is_empty() {
            return Err(self.protocol(format!(
                "no common {name} version: broker {min}..{max}, client {}..{}",
                ours.min, ours.max
            )));
        }
        Ok(common.max)
    }

    /// Sends `req` as `version` and decodes the response.
    pub(crate) async fn request<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, MembershipError> {
        let body = self.request_raw(req, version, timeout).await?;
        <R::Response as Decodable>::decode(&mut body.clone(), version).map_err(|e| {
            self.protocol(format!(
                "decoding {} v{version} response: {e}",
                api_name(R::KEY)
            ))
        })
    }

    /// Sends `req` as `version` and returns the response body (after the response header),
    /// undecoded, so that callers can read the error code before decoding the rest.
    pub(crate) async fn request_raw<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<Bytes, MembershipError> {
        if self.in_flight {
            return Err(self.protocol("connection has an abandoned request in flight"));
        }
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1).max(1);

        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(self.client_id.clone());

        let mut frame = BytesMut::with_capacity(256);
        frame.put_i32(0); // size, patched below
        let name = api_name(R::KEY);
        header
            .encode(&mut frame, R::header_version(version))
            .map_err(|e| {
                self.protocol(format!("encoding {name} v{version} request header: {e}"))
            })?;
        req.encode(&mut frame, version)
            .map_err(|e| self.protocol(format!("encoding {name} v{version} request: {e}")))?;
        let size =
            i32::try_from(frame.len() - 4).map_err(|_| self.protocol("request too large"))?;
        frame[0..4].copy_from_slice(&size.to_be_bytes());

        let response_header_version = <R::Response as HeaderVersion>::header_version(version);
        self.in_flight = true;
        let addr = self.addr.clone();
        let hint = self.closed_hint();
        let stream = &mut self.stream;
        let exchange = async {
            let io = |source: std::io::Error| MembershipError::Io {
                addr: addr.clone(),
                source: match (source.kind(), hint) {
                    (std::io::ErrorKind::UnexpectedEof, Some(hint)) => {
                        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, hint)
                    }
                    _ => source,
                },
            };
            stream.write_all(&frame).await.map_err(io)?;
            stream.flush().await.map_err(io)?;
            let size = stream.read_i32().await.map_err(io)?;
            let size = usize::try_from(size)
                .ok()
                .filter(|&s| s <= MAX_FRAME_BYTES)
                .ok_or_else(|| MembershipError::Protocol {
                    addr: addr.clone(),
                    message: format!("bad response frame size {size}"),
                })?;
            let mut buf = vec![0u8; size];
            stream.read_exact(&mut buf).await.map_err(io)?;
            Ok::<_, MembershipError>(buf)
        };
        let buf = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(MembershipError::Timeout {
                    what: format!("{name} response from {}", self.addr),
                    after: timeout,
                })
            }
        };
        let mut body = Bytes::from(buf);
        let header = ResponseHeader::decode(&mut body, response_header_version)
            .map_err(|e| self.protocol(format!("decoding {name} response header: {e}")))?;
        if header.correlation_id != correlation_id {
            return Err(self.protocol(format!(
                "correlation id mismatch: sent {correlation_id}, got {}",
                header.correlation_id
            )));
        }
        self.in_flight = false;
        self.answered += 1;
        Ok(body)
    }

    /// Why a broker may close a fresh, unauthenticated connection: the usual cause is a listener
    /// that needs TLS (it closes at the first bytes) or SASL (after `ApiVersions`).
    fn closed_hint(&self) -> Option<&'static str> {
        match (self.tls, self.sasl, self.answered) {
            (false, _, 0) => Some(
                "the broker closed the connection at the first request: if this listener \
                 needs TLS, set security.protocol=SSL or SASL_SSL (--kafka-property)",
            ),
            (_, false, 1) => Some(
                "the broker closed the connection after ApiVersions: if this listener needs \
                 SASL, set security.protocol=SASL_PLAINTEXT or SASL_SSL and sasl.* \
                 (--kafka-property)",
            ),
            _ => None,
        }
    }

    fn protocol(&self, message: impl Into<String>) -> MembershipError {
        MembershipError::Protocol {
            addr: self.addr.clone(),
            message: message.into(),
        }
    }
}

/// Reads a big-endian i16 at `offset` without consuming anything.
pub(crate) fn peek_i16(body: &Bytes, offset: usize) -> Option<i16> {
    let mut slice = body.get(offset..offset.checked_add(2)?)?;
    Some(slice.get_i16())
}

/// Human-readable API name for logs and errors.
pub(crate) fn api_name(key: i16) -> &'static str {
    match ApiKey::try_from(key) {
        Ok(ApiKey::ApiVersions) => "ApiVersions",
        Ok(ApiKey::FindCoordinator) => "FindCoordinator",
        Ok(ApiKey::JoinGroup) => "JoinGroup",
        Ok(ApiKey::SyncGroup) => "SyncGroup",
        Ok(ApiKey::Heartbeat) => "Heartbeat",
        Ok(ApiKey::LeaveGroup) => "LeaveGroup",
        Ok(ApiKey::OffsetCommit) => "OffsetCommit",
        Ok(ApiKey::OffsetFetch) => "OffsetFetch",
        Ok(ApiKey::SaslHandshake) => "SaslHandshake",
        Ok(ApiKey::SaslAuthenticate) => "SaslAuthenticate",
        _ => "request",
    }
}
