//! Reaching on-prem endpoints: resolve, then connect with the destination's timeout.
//! Failures are classified into the protocol's reason codes.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::proto::Reason;

/// A failed dial: the reason code for OPEN_ERR and a human explanation.
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct DialError {
    pub reason: Reason,
    pub message: String,
}

fn classify(e: &io::Error) -> Reason {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Reason::Refused,
        io::ErrorKind::TimedOut => Reason::Timeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Reason::Unreachable,
        io::ErrorKind::ConnectionReset => Reason::Reset,
        _ => Reason::Refused,
    }
}

/// Connects to `host:port` directly, trying each resolved address within one overall
/// `timeout`. The socket gets `TCP_NODELAY`: the tunnel already batches.
pub async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, DialError> {
    let work = async {
        let addrs: Vec<_> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| DialError {
                reason: Reason::Dns,
                message: format!("cannot resolve {host}: {e}"),
            })?
            .collect();
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some((a, e)),
            }
        }
        Err(match last {
            Some((a, e)) => DialError {
                reason: classify(&e),
                message: format!("connect to {a}: {e}"),
            },
            None => DialError {
                reason: Reason::Dns,
                message: format!("{host} resolved to no address"),
            },
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(DialError {
            reason: Reason::Timeout,
            message: format!(
                "connect to {host}:{port} timed out after {} ms",
                timeout.as_millis()
            ),
        }),
    }
}
