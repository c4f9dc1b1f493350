//! Reaching on-prem endpoints: resolve once, then connect to addresses the caller has vetted,
//! within the destination's timeout. Failures are classified into the protocol's reason codes.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

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

fn timed_out(what: &str, timeout: Duration) -> DialError {
    DialError {
        reason: Reason::Timeout,
        message: format!("{what} timed out after {} ms", timeout.as_millis()),
    }
}

/// Resolves `host` once (an address literal resolves to itself without a lookup). The ACL
/// checks exactly these addresses and only they are dialled: no second lookup can rebind.
pub async fn resolve(
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, DialError> {
    let started = Instant::now();
    let lookup = tokio::net::lookup_host((host, port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout_at(deadline, lookup).await {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => {
            return Err(DialError {
                reason: Reason::Dns,
                message: format!("cannot resolve {host}: {e}"),
            })
        }
        Err(_) => return Err(timed_out(&format!("resolving {host}"), started.elapsed())),
    };
    if addrs.is_empty() {
        return Err(DialError {
            reason: Reason::Dns,
            message: format!("{host} resolved to no address"),
        });
    }
    Ok(addrs)
}

/// Connects to the first of `addrs` that answers, before `deadline`. The socket gets
/// `TCP_NODELAY`: the tunnel already batches.
pub async fn tcp_any(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, DialError> {
    let started = Instant::now();
    let work = async {
        let mut last = None;
        for a in addrs {
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
                reason: Reason::Unreachable,
                message: "no address to connect to".into(),
            },
        })
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(r) => r,
        Err(_) => {
            let what = match addrs {
                [one] => format!("connect to {one}"),
                _ => format!("connect to {} addresses", addrs.len()),
            };
            Err(timed_out(&what, started.elapsed()))
        }
    }
}

/// Resolve and connect to any address: for dials no ACL governs.
pub async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, DialError> {
    let deadline = Instant::now() + timeout;
    let addrs = resolve(host, port, deadline).await?;
    tcp_any(&addrs, deadline).await
}
