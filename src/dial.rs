//! Reaching endpoints: resolve once, then connect to addresses the caller has vetted,
//! within the destination's timeout. Failures are classified into the protocol's reason codes.
//!
//! The one way out, used by the client for its on-prem endpoints and by the gateway for
//! reverse destinations: [`vet`] (resolve once, keep what the ACL allows) → [`tcp_any`]
//! (or a SOCKS proxy: [`socks_connect`]) → [`secure`] (TLS when the destination asks).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::acl::{Acl, Decision, Request};
use crate::proto::Reason;
use crate::relay::Socket;

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

/// The places among capped lookups (a gateway id's, the process's) that one lookup holds
/// until the system resolver is done with it.
pub type LookupHold = Vec<tokio::sync::OwnedSemaphorePermit>;

/// Resolves `host` once (an address literal resolves to itself without a lookup). The ACL
/// checks exactly these addresses and only they are dialled: no second lookup can rebind.
/// `hold` is kept until the lookup itself ends, which may be after `deadline`: the system
/// resolver's thread goes on until it gives up, and a cap on lookups must count it.
pub async fn resolve(
    host: &str,
    port: u16,
    deadline: Instant,
    hold: Option<LookupHold>,
) -> Result<Vec<SocketAddr>, DialError> {
    let started = Instant::now();
    let dns = |e: io::Error| DialError {
        reason: Reason::Dns,
        message: format!("cannot resolve {host}: {e}"),
    };
    let found = match hold {
        None => tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port)))
            .await
            .map(|r| r.map(|a| a.collect::<Vec<_>>()).map_err(dns)),
        Some(hold) => {
            let name = host.to_owned();
            let lookup = async move {
                let r = tokio::net::lookup_host((name.as_str(), port))
                    .await
                    .map(|a| a.collect::<Vec<_>>());
                drop(hold);
                r
            };
            tokio::time::timeout_at(deadline, tokio::spawn(lookup))
                .await
                .map(|r| match r {
                    Ok(r) => r.map_err(dns),
                    Err(e) => Err(DialError {
                        reason: Reason::Internal,
                        message: format!("resolving {host}: {e}"),
                    }),
                })
        }
    };
    let addrs = match found {
        Ok(r) => r?,
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

/// Connects to the first of `addrs` that answers, before `deadline`, and says which one (no
/// `getpeername` per connection). The socket gets `TCP_NODELAY` and keepalive
/// ([`crate::relay::tune`]).
pub async fn tcp_any(
    addrs: &[SocketAddr],
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), DialError> {
    let started = Instant::now();
    let work = async {
        let mut last = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    crate::relay::tune(&s);
                    return Ok((s, *a));
                }
                Err(e) => last = Some((a, e)),
            }
        }
        Err(match last {
            Some((a, e)) => DialError {
                reason: classify(&e),
                message: format!("connect to {a}: {}", crate::telemetry::io_words(e.kind())),
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

/// What [`vet`] lets through.
#[derive(Debug)]
pub enum Vetted {
    /// The addresses of the name that the ACL allows: the only ones to dial.
    Addrs(Vec<SocketAddr>),
    /// The name does not resolve here but the ACL allows it by name: only a proxy that can
    /// resolve it may go on.
    Name(DialError),
}

/// Resolves `req.host` once and keeps the addresses `acl` allows for `req`. A request no
/// address could change the answer for is decided before any lookup, so a name no rule
/// allows (an attacker's slow name, say) costs no DNS query. `Err` is the denying decision.
/// `hold`: see [`resolve`].
pub async fn vet(
    acl: &Acl,
    req: &Request<'_>,
    deadline: Instant,
    hold: Option<LookupHold>,
) -> Result<Vetted, Decision> {
    if req.addr.is_some() || !acl.has_address_rules() {
        let d = acl.check(req);
        if !d.allow {
            return Err(d);
        }
    }
    match resolve(req.host, req.port, deadline, hold).await {
        Ok(addrs) => acl.allowed_addrs(req, &addrs).map(Vetted::Addrs),
        // Unresolvable here: name rules decide, but an address deny rule above the one that
        // allows the name refuses it, since the proxy could resolve it to any address.
        Err(e) => {
            let d = acl.check_unresolved(req);
            if d.allow {
                Ok(Vetted::Name(e))
            } else {
                Err(d)
            }
        }
    }
}

/// The last step out: TLS on `tcp` when the destination asks for it, before `deadline`.
pub async fn secure(
    tcp: TcpStream,
    tls: Option<&crate::tls::EndpointConnector>,
    deadline: Instant,
) -> Result<Socket, DialError> {
    let Some(ep) = tls else {
        return Ok(Socket::Tcp(tcp));
    };
    self::tls(tcp, ep, deadline)
        .await
        .map(|t| Socket::TlsTo(Box::new(t)))
}

/// Resolve and connect to any address: for dials no ACL governs.
pub async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, DialError> {
    let deadline = Instant::now() + timeout;
    let addrs = resolve(host, port, deadline, None).await?;
    tcp_any(&addrs, deadline).await.map(|(t, _)| t)
}

/// Where a proxy should connect: an address the ACL checked, or a name only the proxy can
/// resolve (the ACL checked the name).
#[derive(Debug, Clone)]
pub enum Target {
    Addr(SocketAddr),
    Name(String, u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

fn proxy_err(proxy: &str, message: String) -> DialError {
    DialError {
        reason: Reason::Proxy,
        message: format!("proxy {proxy}: {message}"),
    }
}

/// Asks the SOCKS proxy on `tcp` (already connected) to connect to `target`, before
/// `deadline`. A refusal is reason `proxy` with the proxy's own reply code in the message.
pub async fn socks_connect(
    tcp: TcpStream,
    proxy: &crate::proto::ProxySpec,
    target: &Target,
    deadline: Instant,
) -> Result<TcpStream, DialError> {
    let name = format!("{}:{}", proxy.host, proxy.port);
    let work = async {
        if proxy.protocol == 4 {
            socks4(tcp, &proxy.username, target)
                .await
                .map_err(|m| proxy_err(&name, m))
        } else {
            socks5(tcp, proxy, target)
                .await
                .map_err(|m| proxy_err(&name, m))
        }
    };
    let started = Instant::now();
    match tokio::time::timeout_at(deadline, work).await {
        Ok(r) => r,
        Err(_) => Err(DialError {
            reason: Reason::Timeout,
            message: format!(
                "SOCKS handshake with proxy {name} timed out after {} ms",
                started.elapsed().as_millis()
            ),
        }),
    }
}

async fn socks5(
    mut tcp: TcpStream,
    proxy: &crate::proto::ProxySpec,
    target: &Target,
) -> Result<TcpStream, String> {
    let auth = (!proxy.username.is_empty())
        .then_some((proxy.username.as_str(), proxy.password.0.as_str()));
    let t = match target {
        Target::Addr(a) => crate::socks5::Target::Addr(*a),
        Target::Name(h, p) => crate::socks5::Target::Name(h, *p),
    };
    crate::socks5::connect(&mut tcp, auth, t)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tcp)
}

/// SOCKS4 and 4a (RFC-less but stable: VER 4, CMD 1, port, IPv4, user id, NUL[, name, NUL]).
/// Written here rather than taken from fast-socks5, whose SOCKS4 client pads the request
/// with zeros and reads a 2-byte reply.
async fn socks4(mut tcp: TcpStream, user: &str, target: &Target) -> Result<TcpStream, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (port, ip, name) = match target {
        Target::Addr(SocketAddr::V4(a)) => (a.port(), a.ip().octets(), None),
        Target::Addr(SocketAddr::V6(a)) => {
            return Err(format!("SOCKS4 cannot reach the IPv6 address {a}"));
        }
        // 0.0.0.1 asks a SOCKS4a proxy to resolve the name that follows.
        Target::Name(h, p) => (*p, [0, 0, 0, 1], Some(h.as_str())),
    };
    if user.contains('\0') || name.is_some_and(|n| n.contains('\0') || n.len() > 255) {
        return Err("SOCKS4 user id or name not encodable".into());
    }
    let mut req = Vec::with_capacity(9 + user.len() + name.map_or(0, |n| n.len() + 1));
    req.extend_from_slice(&[4, 1]);
    req.extend_from_slice(&port.to_be_bytes());
    req.extend_from_slice(&ip);
    req.extend_from_slice(user.as_bytes());
    req.push(0);
    if let Some(n) = name {
        req.extend_from_slice(n.as_bytes());
        req.push(0);
    }
    tcp.write_all(&req)
        .await
        .map_err(|e| format!("sending SOCKS4 request: {e}"))?;
    let mut reply = [0u8; 8];
    tcp.read_exact(&mut reply)
        .await
        .map_err(|e| format!("reading SOCKS4 reply: {e}"))?;
    match reply[1] {
        0x5a => Ok(tcp),
        code => {
            let what = match code {
                0x5b => "rejected or failed",
                0x5c => "identd unreachable",
                0x5d => "user id mismatch",
                _ => "unknown reply",
            };
            Err(format!(
                "SOCKS4 reply {code:#04x} ({what}) to CONNECT {target}"
            ))
        }
    }
}

/// TLS to the endpoint on `tcp`, before `deadline`. Handshake and verification failures are
/// reason `tls`.
pub async fn tls(
    tcp: TcpStream,
    ep: &crate::tls::EndpointConnector,
    deadline: Instant,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, DialError> {
    let started = Instant::now();
    let hs = ep.connector.connect(ep.server_name.clone(), tcp);
    match tokio::time::timeout_at(deadline, hs).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(DialError {
            reason: Reason::Tls,
            message: format!("TLS handshake with the endpoint failed: {e}"),
        }),
        Err(_) => Err(DialError {
            reason: Reason::Timeout,
            message: format!(
                "TLS handshake with the endpoint timed out after {} ms",
                started.elapsed().as_millis()
            ),
        }),
    }
}

/// A UDP socket connected to the first of `addrs` (the ACL allowed them all). Connecting a
/// UDP socket only fixes its peer: replies from anyone else are dropped by the kernel.
pub async fn udp(addrs: &[SocketAddr]) -> Result<tokio::net::UdpSocket, DialError> {
    let Some(a) = addrs.first() else {
        return Err(DialError {
            reason: Reason::Unreachable,
            message: "no address to send to".into(),
        });
    };
    let local: SocketAddr = if a.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let fail = |e: io::Error| DialError {
        reason: classify(&e),
        message: format!("UDP socket for {a}: {e}"),
    };
    let s = tokio::net::UdpSocket::bind(local).await.map_err(fail)?;
    s.connect(a).await.map_err(fail)?;
    Ok(s)
}
