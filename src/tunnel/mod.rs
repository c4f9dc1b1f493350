//! Tunnel connections: TLS, the WebSocket upgrade with token auth and version check, and
//! the HELLO/WELCOME exchange. After that a tunnel is just a message transport for the mux.
//!
//! Every handshake step has a timeout ([`HANDSHAKE_TIMEOUT`]) on the client; on the gateway
//! TLS, upgrade and HELLO share one, and WELCOME with CONFIG has its own.

pub mod proxy;
mod transport;
pub mod why;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};
use tokio_tungstenite::WebSocketStream;

pub use transport::{split, WsReader, WsWriter};

use crate::config::{GatewayLink, Replica, TlsIdentity, Trust};
use crate::proto::{self, decode_message, encode_frame, Frame, Hello, Welcome, SUBPROTOCOL};

/// Limit for each step of connecting or accepting a tunnel (TCP, TLS, upgrade, hello).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Header naming the gateway id the client joins.
pub const GATEWAY_ID_HEADER: &str = "sgw-gateway-id";

/// What tungstenite reads at most per call: one TLS record's plaintext (16 KiB), which is
/// all a read from rustls returns. tungstenite zeroes this much of its buffer before every
/// read, so at 128 KiB it wrote about 1.2 bytes of zeros per byte received; at a record it
/// writes at most one (docs/PERFORMANCE.md).
const WS_READ_CHUNK: usize = 16 * 1024;

/// The most rustls holds of encrypted records not yet written: a whole message
/// ([`crate::mux::BATCH_BYTES`], and one DATA frame past it). At rustls's default (64 KiB) a
/// 128 KiB message went out as two full writes and a third of 52 bytes.
const TLS_SEND_BUFFER: usize = crate::mux::BATCH_BYTES + proto::MAX_DATA + 4096;

/// WebSocket settings: message limits from the protocol, reads of one TLS record.
pub fn ws_config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.max_message_size = Some(proto::MAX_MESSAGE);
    c.max_frame_size = Some(proto::MAX_MESSAGE);
    c.read_buffer_size = WS_READ_CHUNK;
    c.write_buffer_size = 0;
    c.max_write_buffer_size = 4 * proto::MAX_MESSAGE;
    c
}

use crate::tls::{install_crypto, TlsError};

/// TLS client settings trusting the configured CA or the system store.
pub fn client_tls(trust: &Trust) -> Result<TlsConnector, TlsError> {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    match trust {
        Trust::Certs(certs) => {
            for c in certs {
                roots
                    .add(c.clone())
                    .map_err(|e| TlsError::new("ca_file", format!("bad CA certificate: {e}")))?;
            }
        }
        Trust::System => {
            roots = (*crate::tls::system_roots()).clone();
            if roots.is_empty() {
                return Err(TlsError::new(
                    "ca_file",
                    "not set, and no system CA certificates found",
                ));
            }
        }
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// TLS server settings for the gateway's tunnel endpoint.
pub fn server_tls(id: &TlsIdentity) -> Result<TlsAcceptor, TlsError> {
    install_crypto();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::new(
                "tls_cert/tls_key",
                "tls_key is not the key of tls_cert: use the key written with the certificate (`sgw init` writes gateway.pem and gateway.key together)",
            ),
            e => TlsError::new("tls_cert/tls_key", e),
        })?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

pub type ClientWs = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;
pub type ServerWs = WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>;

/// Why a tunnel could not be established (client side).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve the gateway's name: {0}")]
    Dns(std::io::Error),
    #[error("cannot reach gateway: {0}")]
    Tcp(std::io::Error),
    #[error("{0}")]
    Proxy(proxy::ProxyError),
    #[error("TLS handshake with gateway failed: {0}")]
    Tls(std::io::Error),
    #[error("gateway rejected the security token (HTTP 401)")]
    Unauthorized,
    #[error("gateway does not speak this protocol version: {0}")]
    Version(String),
    #[error("gateway answered the upgrade with HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("WebSocket upgrade failed: {0}")]
    Ws(tungstenite::Error),
    #[error("sending WELCOME and CONFIG failed: {0}")]
    Send(tungstenite::Error),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("{0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
}

/// Resolves the gateway's name, as a step of its own (a name that does not resolve is told
/// apart from a gateway that does not answer): its addresses (at least one), or
/// [`ConnectError::Dns`].
pub async fn resolve(host: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, ConnectError> {
    let addrs: Vec<std::net::SocketAddr> = step(
        "resolving the gateway's name",
        tokio::net::lookup_host((host, port)),
        ConnectError::Dns,
    )
    .await?
    .take(crate::config::MAX_REPLICAS)
    .collect();
    if addrs.is_empty() {
        return Err(ConnectError::Dns(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name has no address",
        )));
    }
    Ok(addrs)
}

/// Resolves `host` ([`resolve`]), then connects to its addresses in turn.
async fn dial(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address");
    for a in resolve(host, port).await? {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(ConnectError::Tcp(last))
}

async fn step<T, E>(
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, E>>,
    map: impl FnOnce(E) -> ConnectError,
) -> Result<T, ConnectError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, f).await {
        Ok(r) => r.map_err(map),
        Err(_) => Err(ConnectError::Timeout(what, HANDSHAKE_TIMEOUT)),
    }
}

/// Encodes one frame as a whole message.
pub fn frame_message(f: &Frame) -> Bytes {
    let mut b = BytesMut::new();
    encode_frame(f, &mut b);
    b.freeze()
}

/// Reads the handshake frame `name` (HELLO or WELCOME: the first message, one frame, `body`
/// picks its JSON body) and decodes it.
async fn handshake_frame<T, S>(
    ws: &mut WebSocketStream<S>,
    name: &str,
    body: fn(Frame) -> Result<Bytes, Frame>,
) -> Result<T, String>
where
    T: serde::de::DeserializeOwned,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let first = first_frame(ws).await?;
    let bytes = body(first).map_err(|f| format!("expected {name}, got {}", f.name()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("bad {name}: {e}"))
}

/// Reads the first message of a tunnel, which must hold exactly one frame.
async fn first_frame<S>(ws: &mut WebSocketStream<S>) -> Result<Frame, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let msg = loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => break b,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(c))) => return Err(format!("peer closed: {c:?}")),
            // Name the kind only: the peer chose the bytes, and they go to the log.
            Some(Ok(Message::Text(t))) => {
                return Err(format!(
                    "expected a binary message, got text ({} bytes)",
                    t.len()
                ))
            }
            Some(Ok(_)) => return Err("expected a binary message".into()),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection closed".into()),
        }
    };
    let mut frames = Vec::new();
    decode_message(&msg, |f| frames.push(f)).map_err(|e| e.to_string())?;
    match (frames.pop(), frames.is_empty()) {
        (Some(f), true) => Ok(f),
        _ => Err("first message must hold exactly one frame".into()),
    }
}

/// A TCP connection to `replica`: to `addr` (one address of a name that resolves to several;
/// the TLS name is still the URL's), or by name, or through its outbound proxy.
pub async fn reach(
    replica: &Replica,
    addr: Option<std::net::SocketAddr>,
) -> Result<TcpStream, ConnectError> {
    let url = &replica.url;
    let tcp = match (&replica.proxy, addr) {
        (None, Some(a)) => step("TCP connect", TcpStream::connect(a), ConnectError::Tcp).await?,
        (None, None) => step("TCP connect", dial(&url.host, url.port), |e| e).await?,
        (Some(p), _) => {
            step(
                "proxy handshake",
                proxy::dial(p, &url.host, url.port),
                ConnectError::Proxy,
            )
            .await?
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// TLS on `tcp`, verifying the gateway's certificate for the URL's host.
pub async fn tls_handshake(
    replica: &Replica,
    tls: &TlsConnector,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let name = rustls::pki_types::ServerName::try_from(replica.url.host.clone())
        .map_err(|e| ConnectError::Handshake(format!("bad gateway host name: {e}")))?;
    step("TLS handshake", tls.connect(name, tcp), ConnectError::Tls).await
}

/// Client side, after WELCOME: the gateway's first CONFIG (for `sgw doctor`; the mux reads
/// it in a running tunnel).
pub async fn read_config(ws: &mut ClientWs) -> Result<crate::proto::ConfigPush, ConnectError> {
    let config = handshake_frame(ws, "CONFIG", |f| match f {
        Frame::Config(body) => Ok(body),
        other => Err(other),
    });
    step("CONFIG", config, ConnectError::Handshake).await
}

/// Client side: TCP, TLS, upgrade with token, HELLO, WELCOME.
pub async fn connect(
    link: &GatewayLink,
    replica: &Replica,
    addr: Option<std::net::SocketAddr>,
    tls: &TlsConnector,
    hello: &Hello,
) -> Result<(ClientWs, Welcome), ConnectError> {
    let url = &replica.url;
    let tcp = reach(replica, addr).await?;
    let mut tls_stream = tls_handshake(replica, tls, tcp).await?;
    tls_stream
        .get_mut()
        .1
        .set_buffer_limit(Some(TLS_SEND_BUFFER));
    let mut req = url
        .to_string()
        .into_client_request()
        .map_err(ConnectError::Ws)?;
    let h = req.headers_mut();
    let auth = HeaderValue::from_str(&format!("Bearer {}", link.token.expose())).map_err(|_| {
        ConnectError::Handshake("token contains characters not allowed in a header".into())
    })?;
    h.insert("authorization", auth);
    let gid = HeaderValue::from_str(&link.gateway_id).map_err(|_| {
        ConnectError::Handshake("gateway_id contains characters not allowed in a header".into())
    })?;
    h.insert(GATEWAY_ID_HEADER, gid);
    h.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let upgrade = tokio_tungstenite::client_async_with_config(req, tls_stream, Some(ws_config()));
    let (mut ws, resp) = step("WebSocket upgrade", upgrade, |e| match e {
        tungstenite::Error::Http(r) => {
            let body = r
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            match r.status() {
                StatusCode::UNAUTHORIZED => ConnectError::Unauthorized,
                StatusCode::BAD_REQUEST if body.contains("protocol version") => {
                    ConnectError::Version(body)
                }
                s => ConnectError::Http {
                    status: s.as_u16(),
                    body,
                },
            }
        }
        e => ConnectError::Ws(e),
    })
    .await?;
    let agreed = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok());
    if agreed != Some(SUBPROTOCOL) {
        return Err(ConnectError::Version(format!(
            "gateway agreed to {agreed:?}, this client speaks {SUBPROTOCOL}"
        )));
    }
    let hello = serde_json::to_vec(hello).map_err(|e| ConnectError::Handshake(e.to_string()))?;
    step(
        "HELLO",
        ws.send(Message::Binary(frame_message(&Frame::Hello(hello.into())))),
        ConnectError::Ws,
    )
    .await?;
    let welcome = handshake_frame(&mut ws, "WELCOME", |f| match f {
        Frame::Welcome(body) => Ok(body),
        other => Err(other),
    });
    let welcome: Welcome = step("WELCOME", welcome, ConnectError::Handshake).await?;
    welcome
        .validate()
        .map_err(|e| ConnectError::Handshake(format!("bad WELCOME: {e}")))?;
    Ok((ws, welcome))
}

/// Why an incoming tunnel was not accepted (gateway side).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("upgrade refused: {0}")]
    Refused(String),
    #[error("upgrade refused for now: {0}")]
    Busy(String),
    #[error("WebSocket upgrade failed: {0}")]
    Ws(tungstenite::Error),
    #[error("sending WELCOME and CONFIG failed: {0}")]
    Send(tungstenite::Error),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("{0} not done in time (the handshake has {1:?})")]
    Timeout(&'static str, Duration),
}

/// What the gateway's auth callback sees of an upgrade request.
pub struct UpgradeRequest<'a> {
    pub gateway_id: &'a str,
    /// The bearer token, if the header was present and well-formed.
    pub token: Option<&'a str>,
}

/// One step of the gateway's side of the handshake, by `deadline` (each step's own
/// [`HANDSHAKE_TIMEOUT`] from now when `None`).
async fn accept_step<T, E>(
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, E>>,
    map: impl FnOnce(E) -> AcceptError,
    deadline: Option<tokio::time::Instant>,
) -> Result<T, AcceptError> {
    let deadline = deadline.unwrap_or_else(|| tokio::time::Instant::now() + HANDSHAKE_TIMEOUT);
    match tokio::time::timeout_at(deadline, f).await {
        Ok(r) => r.map_err(map),
        Err(_) => Err(AcceptError::Timeout(what, HANDSHAKE_TIMEOUT)),
    }
}

fn error_response(status: StatusCode, body: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(body.to_owned()));
    *r.status_mut() = status;
    r
}

/// Why the gateway's `authorize` refused an upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeRefusal {
    /// No such gateway id, or not its token: 401.
    Unauthorized,
    /// Not now (a limit, named in the text): 503, the client retries after its backoff.
    Busy(String),
}

/// Gateway side: TLS, upgrade (decided by `authorize` before upgrading: a refusal is answered
/// with 401 or 503 and the connection closed), then the client's HELLO.
pub async fn accept<T>(
    tcp: TcpStream,
    tls: &TlsAcceptor,
    authorize: impl FnOnce(&UpgradeRequest<'_>) -> Result<T, UpgradeRefusal> + Unpin,
) -> Result<(ServerWs, T, Hello), AcceptError> {
    // The listener is the caller's (tests and embedders bind their own), so its options
    // are not counted on: once per tunnel, not per stream.
    let _ = tcp.set_nodelay(true);
    // One deadline for TLS, upgrade and HELLO together: a stranger trickling each step
    // can't hold its place among the pending handshakes three times as long.
    let deadline = Some(tokio::time::Instant::now() + HANDSHAKE_TIMEOUT);
    let tls_accept = tls.accept(tcp);
    let mut tls_stream =
        accept_step("TLS handshake", tls_accept, AcceptError::Tls, deadline).await?;
    tls_stream
        .get_mut()
        .1
        .set_buffer_limit(Some(TLS_SEND_BUFFER));
    let mut outcome: Result<T, AcceptError> =
        Err(AcceptError::Refused("no upgrade request".into()));
    // The callback's signature is tungstenite's; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let h = req.headers();
        let offered = h
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        if !offered.contains(&SUBPROTOCOL) {
            let msg = format!(
                "unsupported protocol version {}; supported: {SUBPROTOCOL}",
                crate::telemetry::clean(&offered.join(","), 128)
            );
            outcome = Err(AcceptError::Refused(msg.clone()));
            return Err(error_response(StatusCode::BAD_REQUEST, &msg));
        }
        let gateway_id = h
            .get(GATEWAY_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let token = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match authorize(&UpgradeRequest { gateway_id, token }) {
            Ok(t) => {
                outcome = Ok(t);
                resp.headers_mut().insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_static(SUBPROTOCOL),
                );
                Ok(resp)
            }
            Err(UpgradeRefusal::Unauthorized) => {
                outcome = Err(AcceptError::Refused(format!(
                    "bad security token for gateway id `{}`",
                    crate::telemetry::clean(gateway_id, 128)
                )));
                Err(error_response(
                    StatusCode::UNAUTHORIZED,
                    "invalid security token or gateway id\n",
                ))
            }
            Err(UpgradeRefusal::Busy(why)) => {
                let body = format!("gateway busy: {why}; retry later\n");
                outcome = Err(AcceptError::Busy(why));
                Err(error_response(StatusCode::SERVICE_UNAVAILABLE, &body))
            }
        }
    };
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(tls_stream, callback, Some(ws_config()));
    let res = accept_step("WebSocket upgrade", upgrade, AcceptError::Ws, deadline).await;
    let (mut ws, authorized) = match (res, outcome) {
        (Ok(ws), Ok(t)) => (ws, t),
        (_, Err(e)) => return Err(e),
        (Err(e), _) => return Err(e),
    };
    let hello = handshake_frame(&mut ws, "HELLO", |f| match f {
        Frame::Hello(body) => Ok(body),
        other => Err(other),
    });
    let hello: Hello = accept_step("HELLO", hello, AcceptError::Handshake, deadline).await?;
    hello
        .validate()
        .map_err(|e| AcceptError::Handshake(format!("bad HELLO: {e}")))?;
    Ok((ws, authorized, hello))
}

/// Gateway side, the handshake's last step: WELCOME (the client's id) and the first CONFIG,
/// within [`HANDSHAKE_TIMEOUT`], so a client that does not read can't hold the gateway's task.
pub async fn welcome(
    ws: &mut ServerWs,
    welcome: &Welcome,
    config: Bytes,
) -> Result<(), AcceptError> {
    let body = serde_json::to_vec(welcome)
        .map_err(|e| AcceptError::Handshake(format!("cannot encode WELCOME: {e}")))?;
    let frames = [Frame::Welcome(Bytes::from(body)), Frame::Config(config)];
    let send = async {
        for f in &frames {
            ws.send(Message::Binary(frame_message(f))).await?;
        }
        Ok(())
    };
    accept_step("WELCOME and CONFIG", send, AcceptError::Send, None).await
}
