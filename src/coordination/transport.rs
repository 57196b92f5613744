//! The byte stream under a broker connection: TCP, or TLS over TCP (OpenSSL, the library
//! librdkafka uses here too, so both sides of paystream trust the same certificates the same way).

use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::error::MembershipError;
use super::security::TlsSettings;

/// What a [`super::wire::Connection`] reads and writes.
pub(crate) trait BrokerIo: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> BrokerIo for T {}

pub(crate) type BrokerStream = Box<dyn BrokerIo>;

/// Connects to `addr` (`HOST:PORT`) and, with `tls`, completes a TLS handshake that checks the
/// broker's certificate (and name, unless told not to). Bounded by `timeout` as a whole.
pub(crate) async fn open(
    addr: &str,
    tls: Option<&TlsSettings>,
    timeout: Duration,
) -> Result<BrokerStream, MembershipError> {
    let io = |source| MembershipError::Io {
        addr: addr.to_string(),
        source,
    };
    let connect = async {
        let tcp = TcpStream::connect(addr).await.map_err(io)?;
        // Latency matters more than throughput for these small request/response exchanges.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%addr, %error, "could not set tcp_nodelay");
        }
        let Some(tls) = tls else {
            return Ok(Box::new(tcp) as BrokerStream);
        };
        let tls_error = |message: String| MembershipError::Tls {
            addr: addr.to_string(),
            message,
        };
        let connector = tls.connector().map_err(|e| tls_error(e.to_string()))?;
        let mut config = connector
            .configure()
            .map_err(|e| tls_error(e.to_string()))?;
        config.set_verify_hostname(tls.verify_hostname);
        let ssl = config
            .into_ssl(host_of(addr))
            .map_err(|e| tls_error(e.to_string()))?;
        let mut stream =
            tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| tls_error(e.to_string()))?;
        if let Err(e) = Pin::new(&mut stream).connect().await {
            let verify = stream.ssl().verify_result();
            // A reset or a closed socket mid-handshake is network trouble (worth retrying); a
            // refused certificate is not.
            return Err(match e.into_io_error() {
                Ok(source) => io(source),
                Err(_) if verify != openssl::x509::X509VerifyResult::OK => {
                    tls_error(format!("the broker's certificate was refused: {verify}"))
                }
                Err(e) => tls_error(format!("handshake failed: {e}")),
            });
        }
        Ok(Box::new(stream) as BrokerStream)
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(MembershipError::Timeout {
            what: format!("connecting to {addr}"),
            after: timeout,
        }),
    }
}

/// The host part of `HOST:PORT` or `[IPv6]:PORT` (the name the certificate must carry).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_what_the_certificate_must_name() {
        assert_eq!(host_of("broker-1.kafka:9093"), "broker-1.kafka");
        assert_eq!(host_of("127.0.0.1:9093"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9093"), "::1");
    }
}
