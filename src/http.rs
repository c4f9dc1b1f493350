//! HTTP(S) destinations on the client: the stream carries HTTP/1.1 from the caller, served by
//! hyper so that every request on a keep-alive connection is checked on its own (ACL path
//! rules); a denied request gets `403` and the connection stays usable. Allowed requests are
//! forwarded over one upstream connection per caller connection, dialled on first use and
//! again if it closes: `Host` rewritten when asked, `X-Forwarded-For` and `Forwarded` added,
//! bodies streamed both ways, upgrades (WebSocket) spliced through.
//!
//! What a request may reach is decided by an [`Upstream`] (the client's ACL and dialler);
//! this module knows HTTP, not policy.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

/// Why a request was not forwarded.
#[derive(Debug)]
pub enum Refused {
    /// By policy: 403, with this explanation (it names the rule's line, not its text).
    Denied(String),
    /// The endpoint could not be reached: 502.
    Failed(crate::dial::DialError),
}

/// A request the policy refuses on an open connection: 403 with this explanation (it names
/// the rule's line, not its text).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Policy and dialling for one caller connection.
pub trait Upstream: Send + Sync + 'static {
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The policy in force, taken once per request: the path is read and judged under the
    /// same rules even if they change meanwhile.
    type Policy: Send + Sync;
    fn policy(&self) -> Self::Policy;
    /// Does the policy judge paths at all? Only then are paths that servers read differently
    /// refused and the judged form forwarded; otherwise the target goes through as sent.
    fn judges_paths(policy: &Self::Policy) -> bool;
    /// May a request for `path` use the open upstream connection, which reaches `reached`
    /// (`None`: an address only a proxy knows)?
    fn admit(
        &self,
        policy: &Self::Policy,
        path: &str,
        reached: Option<IpAddr>,
    ) -> Result<(), Denied>;
    /// Judges a request for `path` with no upstream connection yet, and connects for it
    /// (TLS included when the destination wants it). Returns the address reached.
    fn connect(
        &self,
        policy: &Self::Policy,
        path: &str,
    ) -> impl Future<Output = Result<(Self::Conn, Option<IpAddr>), Refused>> + Send;
}

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The caller as the gateway saw it.
    pub caller: Option<SocketAddr>,
    /// `https` when the caller spoke TLS to the gateway.
    pub proto: &'static str,
    /// Set `Host` to this (the endpoint), when `host_rewrite` is on.
    pub host_rewrite: Option<String>,
}

/// Requests served and refused on one connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpCounts {
    pub requests: u64,
    pub denied: u64,
}

type Body = BoxBody<Bytes, hyper::Error>;

struct Conn<U: Upstream> {
    upstream: U,
    settings: HttpSettings,
    current: Mutex<
        Option<(
            hyper::client::conn::http1::SendRequest<Incoming>,
            Option<IpAddr>,
        )>,
    >,
    counts: std::sync::Mutex<HttpCounts>,
}

/// Serves HTTP/1.1 on `io` (the caller's side of the stream) until the caller closes.
pub async fn serve<IO, U>(io: IO, upstream: U, settings: HttpSettings) -> HttpCounts
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: Upstream,
{
    let conn = Arc::new(Conn {
        upstream,
        settings,
        current: Mutex::new(None),
        counts: Default::default(),
    });
    let c2 = conn.clone();
    let svc = hyper::service::service_fn(move |req| {
        let c = c2.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&c, req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        debug!(error = %e, "HTTP connection ended with an error");
    }
    let counts = *conn.counts.lock().unwrap_or_else(|e| e.into_inner());
    counts
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that must not be forwarded as they are.
const HOP: [&str; 8] = [
    "http2-settings",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Checks the request line and `Host` before any policy: the path the ACL judges must be the
/// path the endpoint acts on. Returns the origin-form target to judge and forward.
fn judge_target(req: &Request<Incoming>, judges_paths: bool) -> Result<hyper::Uri, String> {
    if req.method() == hyper::Method::CONNECT {
        return Err("CONNECT is not forwarded to an HTTP destination".into());
    }
    let hosts = req.headers().get_all(HOST).iter().count();
    if hosts > 1 {
        return Err("more than one Host header".into());
    }
    // Headers that decide routing and hop-by-hop handling must be readable, or they can't be
    // judged (an unreadable Connection token would keep a header we must remove).
    for name in [HOST, CONNECTION, UPGRADE] {
        if req
            .headers()
            .get_all(&name)
            .iter()
            .any(|v| v.to_str().is_err())
        {
            return Err(format!("the {name} header is not readable text"));
        }
    }
    // Absolute form (`GET http://h/p`): its authority must agree with Host, which is what
    // the endpoint routes on once the target is sent in origin form.
    if let Some(auth) = req.uri().authority() {
        let host = req.headers().get(HOST).and_then(|v| v.to_str().ok());
        let agrees =
            |h: &str| h.eq_ignore_ascii_case(auth.as_str()) || h.eq_ignore_ascii_case(auth.host());
        if host.is_some_and(|h| !agrees(h)) {
            return Err("the request target's authority and the Host header disagree".into());
        }
    }
    let raw = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    if !raw.starts_with('/') {
        return Err("the request target is not an absolute path".into());
    }
    let target = if judges_paths {
        crate::acl::request_path(raw)
            .map_err(|e| format!("the path can't be judged safely: it has {e}"))?
    } else {
        raw.to_owned()
    };
    hyper::Uri::builder()
        .path_and_query(target)
        .build()
        .map_err(|e| format!("the normalised path is not a valid target: {e}"))
}

async fn handle<U: Upstream>(c: &Conn<U>, mut req: Request<Incoming>) -> Response<Body> {
    // Any extension method up to hyper's head limit is accepted: shown cut short.
    let method = crate::telemetry::clean(req.method().as_str(), 32);
    c.counts.lock().unwrap_or_else(|e| e.into_inner()).requests += 1;
    let policy = c.upstream.policy();
    let target = match judge_target(&req, U::judges_paths(&policy)) {
        Ok(t) => t,
        Err(why) => {
            c.counts.lock().unwrap_or_else(|e| e.into_inner()).denied += 1;
            warn!(http.method = %method, reason = "bad_request", why = %why, "HTTP request refused");
            return text(StatusCode::BAD_REQUEST, format!("400 Bad Request: {why}\n"));
        }
    };
    let path = target.path().to_owned();
    *req.uri_mut() = target;
    let mut current = c.current.lock().await;
    // A closed upstream connection is dialled again, judged afresh.
    if current.as_ref().is_some_and(|(s, _)| s.is_closed()) {
        *current = None;
    }
    let deny = |why: String| {
        c.counts.lock().unwrap_or_else(|e| e.into_inner()).denied += 1;
        warn!(http.method = %method, http.path = %crate::telemetry::clean(&path, 256), reason = "acl_denied", why = %why, "HTTP request denied");
        text(
            StatusCode::FORBIDDEN,
            format!(
                "403 Forbidden: {method} {} is {why}\n",
                crate::telemetry::clean(&path, 256)
            ),
        )
    };
    if let Some((_, reached)) = current.as_ref() {
        if let Err(Denied(why)) = c.upstream.admit(&policy, &path, *reached) {
            return deny(why);
        }
    } else {
        match c.upstream.connect(&policy, &path).await {
            Ok((io, ip)) => {
                let hs = hyper::client::conn::http1::Builder::new()
                    .handshake::<_, Incoming>(TokioIo::new(io))
                    .await;
                match hs {
                    Ok((send, conn)) => {
                        tokio::spawn(async move {
                            if let Err(e) = conn.with_upgrades().await {
                                debug!(error = %e, "upstream HTTP connection ended");
                            }
                        });
                        *current = Some((send, ip));
                    }
                    Err(e) => {
                        return text(StatusCode::BAD_GATEWAY, format!("502 Bad Gateway: {e}\n"))
                    }
                }
            }
            Err(Refused::Denied(why)) => return deny(why),
            Err(Refused::Failed(e)) => {
                info!(reason = %e.reason, error = %e.message, "HTTP upstream dial failed");
                // The reason code only: the message names on-prem addresses and proxies.
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("502 Bad Gateway: {}\n", e.reason),
                );
            }
        }
    }
    let Some((send, _)) = current.as_mut() else {
        return text(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n".into());
    };
    // Only a WebSocket upgrade is spliced through: its requests are judged here before it.
    // Anything else (h2c above all, which would carry requests for any path once upgraded)
    // goes on as a plain request with Upgrade removed.
    let wants_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let down_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    // What a real WebSocket endpoint must answer; any other 101 is not spliced.
    let accept = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()));
    rewrite_headers(&mut req, &c.settings, wants_upgrade);
    if send.ready().await.is_err() {
        *current = None;
        return text(
            StatusCode::BAD_GATEWAY,
            "502 Bad Gateway: upstream connection closed\n".into(),
        );
    }
    let mut resp = match send.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            *current = None;
            return text(StatusCode::BAD_GATEWAY, format!("502 Bad Gateway: {e}\n"));
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A 101 that is not a WebSocket handshake answering this request's key would turn
        // the connection into a pipe no path rule judges (WebSocket smuggling): refused.
        let accepted = resp
            .headers()
            .get("sec-websocket-accept")
            .and_then(|v| v.to_str().ok());
        let is_websocket = resp
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
        if !is_websocket || accept.is_none() || accepted != accept.as_deref() {
            *current = None;
            warn!(http.method = %method, reason = "bad_upgrade", "HTTP upgrade refused: the endpoint's 101 is not a WebSocket handshake for this request");
            return text(
                StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: the endpoint switched protocols without a WebSocket handshake\n"
                    .into(),
            );
        }
        if let Some(down) = down_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            // The upstream connection now belongs to the upgraded exchange.
            *current = None;
            tokio::spawn(async move {
                match (down.await, up.await) {
                    (Ok(d), Ok(u)) => {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(d),
                            &mut TokioIo::new(u),
                        )
                        .await;
                    }
                    (d, u) => debug!(
                        down = d.is_ok(),
                        up = u.is_ok(),
                        "HTTP upgrade did not complete"
                    ),
                }
            });
        }
    }
    resp.map(|b| b.boxed())
}

/// Prepares a caller's request for the endpoint.
fn rewrite_headers(req: &mut Request<Incoming>, s: &HttpSettings, upgrade: bool) {
    let h = req.headers_mut();
    // Headers named in Connection are hop-by-hop too (except an upgrade being forwarded).
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && *n == UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP {
        h.remove(n);
    }
    if !upgrade {
        h.remove(CONNECTION);
        h.remove(UPGRADE);
    }
    if let Some(host) = &s.host_rewrite {
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert(HOST, v);
        }
    }
    if let Some(caller) = s.caller {
        let ip = caller.ip().to_string();
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
        let node = match caller.ip() {
            IpAddr::V4(a) => format!("\"{a}:{}\"", caller.port()),
            IpAddr::V6(a) => format!("\"[{a}]:{}\"", caller.port()),
        };
        if let Ok(v) = HeaderValue::from_str(&format!("for={node};proto={}", s.proto)) {
            h.append("forwarded", v);
        }
    }
}
