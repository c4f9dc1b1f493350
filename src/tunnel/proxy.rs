//! Reaching the gateway through the corporate proxy (`outbound_proxy`): HTTP CONNECT with
//! optional basic auth, or SOCKS5 with optional user/password. Returns the raw TCP stream to
//! the gateway, on which TLS then runs end to end (the proxy sees only ciphertext).

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{OutboundProxy, ProxyKind};

/// Longest proxy response head we read before giving up on it.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot reach proxy {proxy}: {source}")]
    Connect {
        proxy: String,
        source: std::io::Error,
    },
    /// The proxy answered, but not with a tunnel: carries its status line or reply.
    #[error("proxy {proxy} refused the tunnel to {target}: {reply}")]
    Refused {
        proxy: String,
        target: String,
        reply: String,
    },
    #[error("proxy {proxy}: {message}")]
    Protocol { proxy: String, message: String },
}

/// Opens a TCP stream to `host:port` through `proxy`.
pub async fn dial(proxy: &OutboundProxy, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
    let name = format!("{}:{}", proxy.host, proxy.port);
    let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|source| ProxyError::Connect {
            proxy: name.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    match proxy.kind {
        ProxyKind::Http => {
            http_connect(&mut tcp, proxy, &name, host, port).await?;
            Ok(tcp)
        }
        ProxyKind::Socks5 => socks5(tcp, proxy, &name, host, port).await,
    }
}

async fn http_connect(
    tcp: &mut TcpStream,
    proxy: &OutboundProxy,
    name: &str,
    host: &str,
    port: u16,
) -> Result<(), ProxyError> {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let proto = |message: String| ProxyError::Protocol {
        proxy: name.to_owned(),
        message,
    };
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, pass)) = &proxy.auth {
        let cred =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", pass.expose()));
        req.push_str(&format!("Proxy-Authorization: Basic {cred}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| proto(format!("sending CONNECT: {e}")))?;
    // Read byte by byte up to the end of the head: anything after it belongs to the tunnel
    // (the TLS handshake), so nothing may be over-read.
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(proto("response head too long".into()));
        }
        match tcp.read(&mut b).await {
            Ok(0) => return Err(proto("closed the connection during CONNECT".into())),
            Ok(_) => head.push(b[0]),
            Err(e) => return Err(proto(format!("reading CONNECT reply: {e}"))),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or("").trim().to_owned();
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    if code.len() == 3 && code.starts_with('2') {
        Ok(())
    } else {
        Err(ProxyError::Refused {
            proxy: name.to_owned(),
            target,
            reply: status_line,
        })
    }
}

async fn socks5(
    mut tcp: TcpStream,
    proxy: &OutboundProxy,
    name: &str,
    host: &str,
    port: u16,
) -> Result<TcpStream, ProxyError> {
    let auth = proxy.auth.as_ref().map(|(u, p)| (u.as_str(), p.expose()));
    // The proxy resolves the name, as curl's socks5h does: the on-prem host may not be able to.
    let target = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => crate::socks5::Target::Addr(std::net::SocketAddr::new(ip, port)),
        Err(_) => crate::socks5::Target::Name(host, port),
    };
    crate::socks5::connect(&mut tcp, auth, target)
        .await
        .map_err(|e| ProxyError::Refused {
            proxy: name.to_owned(),
            target: format!("{host}:{port}"),
            reply: e.to_string(),
        })?;
    Ok(tcp)
}
