//! The SMS gateway client: one POST per SMS request, the request's JSON as the body and its
//! event id as the `Idempotency-Key` header; the answer as a [`CallResult`] for the policy.

use std::time::{Duration, SystemTime};

use super::policy::{retry_after_delay, CallResult};
use super::retry_headers::IDEMPOTENCY_KEY;

/// Calls the gateway.
#[derive(Debug, Clone)]
pub struct Gateway {
    client: reqwest::Client,
    url: String,
}

/// The client could not be made (TLS back-end or resolver set-up).
#[derive(Debug, thiserror::Error)]
#[error("cannot make the gateway's HTTP client: {0}")]
pub struct GatewayError(#[from] reqwest::Error);

impl Gateway {
    /// A client whose calls fail with [`CallResult::Timeout`] after `timeout`. Connections are
    /// kept alive and reused (one per permit at most).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, GatewayError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Gateway {
            client,
            url: url.to_owned(),
        })
    }

    /// POSTs one request (`body`, JSON) with its idempotency key.
    pub async fn call(&self, idempotency_key: &str, body: Vec<u8>) -> CallResult {
        let sent = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_KEY, idempotency_key)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(answer) => {
                let code = answer.status().as_u16();
                let retry_after = answer
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after_delay(v, SystemTime::now()));
                // Read the body so the connection can be reused.
                let _ = answer.bytes().await;
                CallResult::Status { code, retry_after }
            }
            Err(e) if e.is_timeout() => CallResult::Timeout,
            Err(_) => CallResult::Connection,
        }
    }
}
