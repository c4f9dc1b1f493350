//! The CLI side of the admin endpoint: a small HTTP/1.1 client (`sgw acl add|remove|show`,
//! `sgw status`, `sgw health`) and the human rendering of `/v1/status`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::Method;
use hyper_util::rt::TokioIo;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest answer read: whatever listens on the address may not be ours.
const MAX_ANSWER: usize = 8 << 20;

/// Where an admin endpoint listens: `ip:port` (`admin_listen`), or a Unix socket
/// (`admin_socket`), written `unix:PATH` or as a path that starts with `/` or `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl From<SocketAddr> for AdminAddr {
    fn from(a: SocketAddr) -> Self {
        AdminAddr::Tcp(a)
    }
}

/// `--admin` that is neither an address nor a socket.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an ip:port address or a Unix socket (unix:PATH)")]
pub struct BadAdminAddr(String);

impl std::str::FromStr for AdminAddr {
    type Err = BadAdminAddr;
    fn from_str(s: &str) -> Result<Self, BadAdminAddr> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(AdminAddr::Unix(p.into()));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(AdminAddr::Unix(s.into()));
        }
        s.parse()
            .map(AdminAddr::Tcp)
            .map_err(|_| BadAdminAddr(s.to_owned()))
    }
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAddr::Tcp(a) => write!(f, "{a}"),
            AdminAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the admin endpoint at {addr}: {message} (is the client running? see admin_listen and admin_socket)")]
    Connect {
        addr: AdminAddr,
        message: String,
        kind: std::io::ErrorKind,
    },
    #[error("admin endpoint at {addr}: {message}")]
    Http { addr: AdminAddr, message: String },
    #[error("admin endpoint at {addr} did not answer within {} s", CALL_TIMEOUT.as_secs())]
    Timeout { addr: AdminAddr },
    #[error("no admin endpoint to call")]
    Nowhere,
}

/// Sends one request; returns the status code and body text.
pub async fn call(
    addr: impl Into<AdminAddr>,
    method: Method,
    path_and_query: &str,
    body: Option<String>,
    token: Option<&str>,
) -> Result<(u16, String), CallError> {
    let addr = addr.into();
    let connect = |e: std::io::Error| CallError::Connect {
        addr: addr.clone(),
        message: e.to_string(),
        kind: e.kind(),
    };
    let work = async {
        let out = match &addr {
            AdminAddr::Tcp(a) => {
                let io = tokio::net::TcpStream::connect(a).await.map_err(connect)?;
                send(io, a.to_string(), method, path_and_query, body, token).await
            }
            AdminAddr::Unix(p) => {
                let io = tokio::net::UnixStream::connect(p).await.map_err(connect)?;
                send(io, "localhost".into(), method, path_and_query, body, token).await
            }
        };
        out.map_err(|message| CallError::Http {
            addr: addr.clone(),
            message,
        })
    };
    match tokio::time::timeout(CALL_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout { addr }),
    }
}

/// One request over a connected stream; the error as text.
async fn send<S>(
    io: S,
    host: String,
    method: Method,
    path_and_query: &str,
    body: Option<String>,
    token: Option<&str>,
) -> Result<(u16, String), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let http = |e: &dyn std::fmt::Display| e.to_string();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(HOST, host);
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| http(&e))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One tunnel slot of `/v1/status` in a line: where, up or down since when, and the last
/// failure with its reason code, age and sentence.
pub fn render_slot(s: &serde_json::Value) -> String {
    let now = crate::telemetry::unix_ms();
    let span = |ms: &serde_json::Value| {
        let secs = now.saturating_sub(ms.as_u64().unwrap_or(now)) / 1000;
        match secs {
            s if s < 120 => format!("{s} s"),
            s if s < 7200 => format!("{} min", s / 60),
            s => format!("{} h", s / 3600),
        }
    };
    let mut line = format!(
        "slot {} {}{}: {} for {}",
        s["slot"],
        s["url"].as_str().unwrap_or(""),
        s["addr"]
            .as_str()
            .map(|a| format!(" ({a})"))
            .unwrap_or_default(),
        if s["up"].as_bool() == Some(true) {
            "up"
        } else {
            "down"
        },
        span(&s["since_unix_ms"])
    );
    let failures = s["failures"].as_u64().unwrap_or(0);
    if failures > 0 {
        line.push_str(&format!(", {failures} failed attempt(s)"));
    }
    let f = &s["last_failure"];
    if f.is_object() {
        line.push_str(&format!(
            "; last failure {} ago, reason={}: {}",
            span(&f["at_unix_ms"]),
            f["reason"].as_str().unwrap_or(""),
            f["message"].as_str().unwrap_or("")
        ));
    }
    line
}

/// Human-readable `/v1/status`.
pub fn render_status(v: &serde_json::Value) -> String {
    let mut out = format!(
        "sgw client {}: {} tunnel(s) up",
        v["version"].as_str().unwrap_or("?"),
        v["tunnels_up"]
    );
    for g in v["gateways"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\ngateway {} {} as {}{}",
            g["gateway_id"].as_str().unwrap_or(""),
            g["url"].as_str().unwrap_or(""),
            g["client_id"].as_str().unwrap_or("(not connected)"),
            g["via_proxy"]
                .as_str()
                .map(|p| format!(" via proxy {p}"))
                .unwrap_or_default()
        ));
        for (i, t) in g["tunnels"].as_array().into_iter().flatten().enumerate() {
            let rtt = t["rtt_ms"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.2} ms"));
            out.push_str(&format!(
                "\n  tunnel {i}: rtt {rtt}, {} active stream(s)",
                t["active_streams"]
            ));
        }
        for s in g["slots"].as_array().into_iter().flatten() {
            out.push_str(&format!("\n  {}", render_slot(s)));
        }
        for d in g["destinations"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\n  destination {} {} {}{}",
                d["id"].as_str().unwrap_or(""),
                d["protocol"].as_str().unwrap_or(""),
                d["addr"].as_str().unwrap_or(""),
                if d["private"].as_bool() == Some(true) {
                    " (private)"
                } else {
                    ""
                }
            ));
        }
    }
    let streams = v["active_streams"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("\nactive streams: {}", streams.len()));
    for s in &streams {
        out.push_str(&format!(
            "\n  #{} {} {} <- {}  up {} B  down {} B  {:.1} s",
            s["stream_id"],
            s["dest_id"].as_str().unwrap_or(""),
            s["dest_addr"].as_str().unwrap_or(""),
            s["caller_addr"].as_str().unwrap_or(""),
            s["bytes_up"],
            s["bytes_down"],
            s["age_ms"].as_f64().unwrap_or(0.0) / 1000.0
        ));
    }
    out.push_str(&format!(
        "\nacl: {} rule(s) from {}",
        v["acl"]["rules"],
        v["acl"]["file"].as_str().unwrap_or("")
    ));
    out
}
