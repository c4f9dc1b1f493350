//! The SOCKS5 client handshake (RFC 1928, username/password from RFC 1929), shared by the
//! client's outbound proxy (to reach the gateway) and SOCKS destinations (to reach endpoints).
//!
//! Written here because a proxy is untrusted: every byte it answers is checked against the
//! RFC before it is believed, so a hostile or broken proxy gets a clear error, never a panic
//! (the crate this replaced panicked on reply codes above 8). Works on any stream, so the
//! fuzz target and tests can feed it arbitrary replies.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What to connect to through the proxy.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Addr(SocketAddr),
    /// A name the proxy resolves (as curl's `socks5h`).
    Name(&'a str, u16),
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// Why the handshake failed. Texts name what the proxy did, never the credentials.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    #[error("SOCKS5 reply {code} ({}) to CONNECT {target}", reply_name(*.code))]
    Refused { code: u8, target: String },
    #[error("SOCKS5 authentication refused")]
    AuthRefused,
    #[error("SOCKS5 proxy accepts none of the offered authentication methods")]
    NoAcceptableMethod,
    #[error("SOCKS5 proxy broke the protocol: {0}")]
    Protocol(String),
    #[error("SOCKS5 request not encodable: {0}")]
    Request(&'static str),
    #[error("SOCKS5 handshake I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// RFC 1928 §6 reply names; other codes are unassigned.
fn reply_name(code: u8) -> &'static str {
    match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unassigned reply code",
    }
}

/// Asks the proxy on `io` (already connected) to CONNECT to `target`. On success the stream
/// carries the target's bytes.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    auth: Option<(&str, &str)>,
    target: Target<'_>,
) -> Result<(), Socks5Error> {
    // Method selection: no authentication, or username/password when we have credentials.
    let hello: &[u8] = if auth.is_some() {
        &[5, 2, 0, 2]
    } else {
        &[5, 1, 0]
    };
    io.write_all(hello).await?;
    let mut chosen = [0u8; 2];
    io.read_exact(&mut chosen).await?;
    if chosen[0] != 5 {
        return Err(Socks5Error::Protocol(format!(
            "version {} in the method reply",
            chosen[0]
        )));
    }
    match (chosen[1], auth) {
        (0, _) => {}
        (2, Some((user, pass))) => {
            if user.is_empty() || user.len() > 255 || pass.len() > 255 {
                return Err(Socks5Error::Request(
                    "username and password must be 1..=255 and 0..=255 bytes",
                ));
            }
            let mut req = Vec::with_capacity(3 + user.len() + pass.len());
            req.push(1);
            req.push(user.len() as u8);
            req.extend_from_slice(user.as_bytes());
            req.push(pass.len() as u8);
            req.extend_from_slice(pass.as_bytes());
            io.write_all(&req).await?;
            let mut status = [0u8; 2];
            io.read_exact(&mut status).await?;
            if status[0] != 1 {
                return Err(Socks5Error::Protocol(format!(
                    "version {} in the authentication reply",
                    status[0]
                )));
            }
            if status[1] != 0 {
                return Err(Socks5Error::AuthRefused);
            }
        }
        (0xff, _) => return Err(Socks5Error::NoAcceptableMethod),
        (m, _) => {
            return Err(Socks5Error::Protocol(format!(
                "chose authentication method {m}, which was not offered"
            )))
        }
    }
    io.write_all(&request(target)?).await?;
    let mut head = [0u8; 4];
    io.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(Socks5Error::Protocol(format!(
            "version {} in the CONNECT reply",
            head[0]
        )));
    }
    if head[1] != 0 {
        return Err(Socks5Error::Refused {
            code: head[1],
            target: target.to_string(),
        });
    }
    // The bound address is read whole so no reply byte is mistaken for the target's data.
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            io.read_exact(&mut len).await?;
            usize::from(len[0]) + 2
        }
        t => {
            return Err(Socks5Error::Protocol(format!(
                "address type {t} in the CONNECT reply"
            )))
        }
    };
    let mut bound = [0u8; 255 + 2];
    io.read_exact(&mut bound[..rest]).await?;
    Ok(())
}

/// The CONNECT request for `target`.
fn request(target: Target<'_>) -> Result<Vec<u8>, Socks5Error> {
    let mut req = vec![5, 1, 0];
    let port = match target {
        Target::Addr(SocketAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
            a.port()
        }
        Target::Addr(SocketAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
            a.port()
        }
        Target::Name(h, p) => {
            if h.is_empty() || h.len() > 255 {
                return Err(Socks5Error::Request("host name must be 1..=255 bytes"));
            }
            req.push(3);
            req.push(h.len() as u8);
            req.extend_from_slice(h.as_bytes());
            p
        }
    };
    req.extend_from_slice(&port.to_be_bytes());
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the handshake against a proxy that answers `reply` whatever it is asked.
    async fn against(reply: &[u8], auth: Option<(&str, &str)>) -> Result<Vec<u8>, Socks5Error> {
        let (mut ours, mut proxy) = tokio::io::duplex(4096);
        proxy.write_all(reply).await.unwrap();
        drop(proxy.shutdown().await);
        let target = Target::Name("db.internal", 5432);
        let res = connect(&mut ours, auth, target).await;
        let mut sent = Vec::new();
        drop(ours);
        let _ = proxy.read_to_end(&mut sent).await;
        res.map(|()| sent)
    }

    #[tokio::test]
    async fn success_with_every_address_type() {
        for bound in [
            &[1u8, 10, 0, 0, 1, 0, 80][..],
            &[4u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80][..],
            &[3u8, 3, b'a', b'b', b'c', 0, 80][..],
        ] {
            let mut reply = vec![5, 0, 5, 0, 0];
            reply.extend_from_slice(bound);
            let sent = against(&reply, None).await.unwrap();
            assert_eq!(&sent[..3], &[5, 1, 0]);
            assert_eq!(&sent[3..7], &[5, 1, 0, 3]);
        }
    }

    #[tokio::test]
    async fn every_reply_code_is_an_error_not_a_panic() {
        for code in 1..=255u8 {
            let reply = [5, 0, 5, code, 0, 1, 0, 0, 0, 0, 0, 0];
            match against(&reply, None).await {
                Err(Socks5Error::Refused { code: c, .. }) => assert_eq!(c, code),
                other => panic!("code {code}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn broken_replies_are_refused_with_a_reason() {
        let cases: [(&[u8], &str); 6] = [
            (&[4, 0], "version 4 in the method reply"),
            (&[5, 0xff], "none of the offered"),
            (&[5, 2], "method 2, which was not offered"),
            (&[5, 0, 4, 0, 0, 1], "version 4 in the CONNECT reply"),
            (&[5, 0, 5, 0, 0, 9], "address type 9"),
            (&[5, 0, 5, 0, 0, 1, 1], "I/O"),
        ];
        for (reply, want) in cases {
            let e = against(reply, None).await.unwrap_err().to_string();
            assert!(e.contains(want), "{reply:?}: {e}");
        }
    }

    #[tokio::test]
    async fn password_auth_and_its_refusal() {
        let ok = [5, 2, 1, 0, 5, 0, 0, 1, 1, 2, 3, 4, 0, 80];
        let sent = against(&ok, Some(("u", "secret"))).await.unwrap();
        assert_eq!(&sent[..4], &[5, 2, 0, 2]);
        assert_eq!(&sent[4..14], b"\x01\x01u\x06secret");
        let e = against(&[5, 2, 1, 1], Some(("u", "secret")))
            .await
            .unwrap_err();
        assert!(!e.to_string().contains("secret"));
        assert!(matches!(e, Socks5Error::AuthRefused));
    }
}
