//! The local admin endpoint (`admin_listen`, loopback by default): `/healthz`, `/readyz`,
//! `/metrics` (Prometheus text), `/v1/status` and the ACL endpoints (`/v1/acl`).
//!
//! Generic over a [`Backend`] so this module knows nothing of the client's internals; the
//! server takes an already bound listener and a shutdown token (tests bind port 0).
//!
//! `/healthz`, `/readyz` and `/metrics` are open; every other call needs the admin token, and
//! every request's `Host` must name this host ([`Access`]).

pub mod client;

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;

/// One metric family as a backend reports it at scrape time.
#[derive(Debug, Clone)]
pub struct Family {
    /// Without the `_total` suffix for counters; the encoder adds it.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<(Vec<(&'static str, String)>, i64)>,
}

/// Events counted by their stable reason code (docs/OPERATIONS.md). The codes are a closed
/// set of `&'static str`, so the series are bounded.
#[derive(Debug, Default)]
pub struct ReasonCounts(std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>);

impl ReasonCounts {
    pub fn add(&self, code: &'static str) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(code).or_default();
        *n = n.saturating_add(1);
    }

    /// The counts as a counter family with a `reason` label.
    pub fn family(&self, name: &'static str, help: &'static str) -> Family {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Family {
            name,
            help,
            kind: Kind::Counter,
            samples: m
                .iter()
                .map(|(r, n)| {
                    (
                        vec![("reason", (*r).to_owned())],
                        i64::try_from(*n).unwrap_or(i64::MAX),
                    )
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// An ACL rule as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleView {
    pub line: usize,
    pub action: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AclView {
    pub file: String,
    pub default_policy: String,
    pub rules: Vec<RuleView>,
}

/// A failed ACL call: HTTP status, message, and for an invalid file every error in it.
#[derive(Debug)]
pub struct AclError {
    pub status: u16,
    pub message: String,
    pub errors: Vec<String>,
}

/// What the admin endpoint serves; implemented by the client and the gateway. The gateway
/// keeps no ACL (the veto is the client's), so the ACL calls answer 404 unless implemented.
pub trait Backend: Send + Sync + 'static {
    /// Ready to carry traffic (e.g. at least one tunnel up).
    fn ready(&self) -> bool;
    /// What `/readyz` says besides ready or not: lines naming what is failing.
    fn readiness_detail(&self) -> Vec<String> {
        Vec::new()
    }
    fn status(&self) -> serde_json::Value;
    /// `/metrics`. `per_id`: the scrape carried the admin token, so series that name any
    /// gateway id may be shown (an id whose token is not enforced is its only credential).
    fn metrics(&self, per_id: bool) -> Vec<Family>;
    /// Labels every series carries (a gateway replica's `replica`).
    fn metric_labels(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    fn acl_show(&self) -> Result<AclView, AclError> {
        Err(no_acl())
    }
    /// Adds a rule; returns its line. Blocking (writes the ACL file).
    fn acl_add(&self, _rule: &str, _before: Option<usize>) -> Result<usize, AclError> {
        Err(no_acl())
    }
    /// Removes a rule by text or line; returns the removed line. Blocking.
    fn acl_remove(&self, _rule: Option<&str>, _line: Option<usize>) -> Result<usize, AclError> {
        Err(no_acl())
    }
    /// Re-reads the ACL file; returns the rule count or every error.
    fn acl_reload(&self) -> Result<usize, AclError> {
        Err(no_acl())
    }
    /// The process's logging, when it can change: `PUT /v1/log` and the log series of
    /// `/metrics`.
    fn log(&self) -> Option<&crate::telemetry::LogControl>;
}

/// `PUT /v1/log`: changes the log level (`debug`, or a filter like `sgw=debug,hyper=warn`).
fn set_log_level(
    log: Option<&crate::telemetry::LogControl>,
    level: &str,
) -> Result<(), crate::telemetry::LogError> {
    let Some(l) = log else {
        return Err(crate::telemetry::LogError::Fixed);
    };
    l.set_level(level)?;
    tracing::info!(level, "log level changed through the admin endpoint");
    Ok(())
}

fn no_acl() -> AclError {
    AclError {
        status: 404,
        message: "this process keeps no ACL: the on-prem veto is the client's acl_file".into(),
        errors: Vec::new(),
    }
}

/// `NAME{limit="KEY"}` for every limit: what operators compare the usage gauges with.
pub fn limit_family(name: &'static str, limits: &[(&'static str, u64)]) -> Family {
    Family {
        name,
        help: "A configured limit, by its key in the config file.",
        kind: Kind::Gauge,
        samples: limits
            .iter()
            .map(|(k, v)| {
                (
                    vec![("limit", (*k).to_owned())],
                    i64::try_from(*v).unwrap_or(i64::MAX),
                )
            })
            .collect(),
    }
}

/// The worker threads of the runtime serving the admin endpoint, shown as `workers` beside
/// the limits: the number `workers = "auto"` came to. 0 outside a runtime.
pub fn runtime_workers() -> u64 {
    tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_workers() as u64)
}

/// Who may use the admin endpoint (docs/SECURITY.md).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Required for everything but `/healthz`, `/readyz` and `/metrics`; without one those
    /// calls are refused (403), so an ACL is never open to whoever reaches the port.
    pub token: Option<Secret>,
    /// Names besides `localhost` and IP literals that a request's `Host` may carry
    /// (`admin_hosts`); any other gets 421, which defeats DNS rebinding from a browser.
    pub hosts: Vec<String>,
}

struct AppState {
    backend: Arc<dyn Backend>,
    access: Access,
}

/// How long a caller may take to send a request head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long one whole request (body included) may take: every call here is quick, so a
/// caller trickling a body cannot hold one of the few connections for longer.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The calls open without the admin token (probes and scrapers carry none).
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Serves until `shutdown`, at most `max_connections` at once (`admin_max_connections`).
pub async fn serve(
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    access: Access,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let app = router(backend, access);
    crate::listen::http::serve(
        "admin",
        listener,
        app,
        None,
        limits(max_connections),
        shutdown,
    )
    .await;
}

/// Binds the same endpoint on a Unix socket (`admin_socket`, [`crate::listen::bind_unix`])
/// and returns the server to spawn. It serves this process's user and root, who need no
/// token there: the kernel vouches for them. Other local users can't connect, so they can't
/// fill its connections either. The socket file is removed when the server stops (one left by
/// a process that died is replaced at the next start).
pub async fn bind_unix(
    path: std::path::PathBuf,
    backend: Arc<dyn Backend>,
    max_connections: usize,
    shutdown: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let crate::listen::UnixBound {
        listener,
        owner,
        guard,
    } = crate::listen::bind_unix(&path).await?;
    tracing::info!(admin.socket = %path.display(), "admin socket listening");
    let app = router(backend, Access::default());
    let limits = limits(max_connections);
    Ok(async move {
        crate::listen::http::serve_unix("admin", listener, owner, app, limits, shutdown).await;
        drop(guard);
    })
}

fn limits(max_connections: usize) -> crate::listen::http::HttpLimits {
    // Callers are local: one source may use every slot.
    crate::listen::http::HttpLimits {
        max_connections,
        max_per_source: max_connections,
        per_source_key: "admin_max_connections",
        head_timeout: HEAD_TIMEOUT,
    }
}

fn router(backend: Arc<dyn Backend>, access: Access) -> Router {
    let state = Arc::new(AppState { backend, access });
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/acl", get(acl_show).post(acl_add).delete(acl_remove))
        .route("/v1/acl/reload", axum::routing::post(acl_reload))
        .route("/v1/log", axum::routing::put(set_log))
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

fn acl_error(e: AclError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    if e.errors.is_empty() {
        return json_error(status, e.message);
    }
    (
        status,
        Json(serde_json::json!({ "error": e.message, "errors": e.errors })),
    )
        .into_response()
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Runs before any handler reads a body:
/// - a request whose `Host` names something other than this host gets 421 (a web page whose
///   name was rebound to 127.0.0.1 sends its own name, and must not reach the ACL);
/// - every call but the open ones needs the admin token;
/// - the whole request must finish within [`REQUEST_TIMEOUT`] (408).
async fn gate(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Over the Unix socket the kernel named the caller (this user or root), and no browser
    // reaches a Unix socket: neither the token nor the Host check applies.
    let user = req
        .extensions()
        .get::<crate::listen::http::LocalUser>()
        .map(|u| u.uid);
    let local = user.is_some();
    if !local && !host_allowed(host, &st.access.hosts) {
        tracing::warn!(http.host = %crate::telemetry::clean(host, 128), reason = "host", "admin request refused: Host is not this host");
        return json_error(
            StatusCode::MISDIRECTED_REQUEST,
            "Host must be an IP address, localhost or a name in admin_hosts",
        );
    }
    if !local && !OPEN_PATHS.contains(&req.uri().path()) {
        if let Some(r) = refusal(&st, req.headers()) {
            return r;
        }
    }
    // Who asked for a change, for the audit trail next to the change's own line: only calls
    // past the token check that can change something.
    let changes = [Method::POST, Method::PUT, Method::DELETE, Method::PATCH].contains(req.method());
    if changes && !OPEN_PATHS.contains(&req.uri().path()) {
        let via = if local { "socket" } else { "tcp" };
        tracing::info!(http.method = %req.method(), http.path = %req.uri().path(), admin.via = via, peer.uid = user, "admin call");
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => json_error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request was not completed within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// `localhost`, an IP literal (a browser sends one only when the page itself is at that
/// address) or a configured name, with or without a port.
pub fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((v6, tail)) if tail.is_empty() || tail.starts_with(':') => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let name = name.trim_end_matches('.');
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The token a request carries (`Authorization: Bearer ...`), empty if none.
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Everything but the probes and metrics needs the admin token; with none configured those
/// calls are off. Returns the refusal, if any.
fn refusal(st: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &st.access.token else {
        return Some(json_error(
            StatusCode::FORBIDDEN,
            "no admin token is configured, so status and ACL calls are off: set admin_token_file in this process's config file (sgw init writes one)",
        ));
    };
    if token.ct_eq(bearer(headers)) {
        return None;
    }
    tracing::warn!(
        reason = "token",
        "admin request refused: missing or wrong admin token"
    );
    Some(json_error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong admin token (Authorization: Bearer ...)",
    ))
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let (status, mut body) = if st.backend.ready() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no tunnel up\n".to_string(),
        )
    };
    for l in st.backend.readiness_detail() {
        body.push_str(&l);
        body.push('\n');
    }
    (status, body).into_response()
}

async fn status(State(st): State<Arc<AppState>>) -> Response {
    Json(st.backend.status()).into_response()
}

#[derive(Debug)]
struct Scrape(Vec<Family>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let mut m = encoder.encode_descriptor(
                f.name,
                f.help,
                None,
                match f.kind {
                    Kind::Counter => prometheus_client::metrics::MetricType::Counter,
                    Kind::Gauge => prometheus_client::metrics::MetricType::Gauge,
                },
            )?;
            let emit = |enc: MetricEncoder<'_>, v: i64| match f.kind {
                Kind::Counter => ConstCounter::new(u64::try_from(v).unwrap_or(0)).encode(enc),
                Kind::Gauge => ConstGauge::new(v).encode(enc),
            };
            match f.samples.as_slice() {
                // A single unlabelled sample: no `{}` after the name.
                [(labels, v)] if labels.is_empty() => emit(m, *v)?,
                samples => {
                    for (labels, v) in samples {
                        emit(m.encode_family(labels)?, *v)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Open, like the probes: scrapers carry no token, and counters reveal no rule or secret.
async fn metrics(
    State(st): State<Arc<AppState>>,
    local: Option<axum::Extension<crate::listen::http::LocalUser>>,
    headers: HeaderMap,
) -> Response {
    let per_id = local.is_some()
        || st
            .access
            .token
            .as_ref()
            .is_some_and(|t| t.ct_eq(bearer(&headers)));
    let labels = st.backend.metric_labels();
    let mut reg = Registry::with_labels(
        labels
            .into_iter()
            .map(|(k, v)| (std::borrow::Cow::Borrowed(k), std::borrow::Cow::Owned(v))),
    );
    let mut families = st.backend.metrics(per_id);
    if let Some(log) = st.backend.log() {
        families.push(Family {
            name: "sgw_log_lines_suppressed",
            help: "Log lines held back by log_lines_per_second (one statement over its share) or log_lines_per_second_total (the process over its own).",
            kind: Kind::Counter,
            samples: vec![(
                Vec::new(),
                i64::try_from(log.lines_suppressed()).unwrap_or(i64::MAX),
            )],
        });
        families.push(Family {
            name: "sgw_log_lines_dropped",
            help: "Log lines dropped: log_buffer_lines were already waiting for stderr, or stderr refused them.",
            kind: Kind::Counter,
            samples: vec![(
                Vec::new(),
                i64::try_from(log.lines_dropped()).unwrap_or(i64::MAX),
            )],
        });
    }
    reg.register_collector(Box::new(Scrape(families)));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn acl_show(State(st): State<Arc<AppState>>) -> Response {
    match st.backend.acl_show() {
        Ok(v) => Json(v).into_response(),
        Err(e) => acl_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    rule: String,
    /// Insert before this line (1-based); default: append.
    #[serde(default)]
    before: Option<usize>,
}

async fn acl_add(
    State(st): State<Arc<AppState>>,
    body: Result<Json<AddBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let backend = st.backend.clone();
    let res = tokio::task::spawn_blocking(move || backend.acl_add(&body.rule, body.before)).await;
    match res {
        Ok(Ok(line)) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "line": line })),
        )
            .into_response(),
        Ok(Err(e)) => acl_error(e),
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "ACL update task failed"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    line: Option<usize>,
}

async fn acl_remove(
    State(st): State<Arc<AppState>>,
    q: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if q.rule.is_none() == q.line.is_none() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "give exactly one of `rule` or `line`",
        );
    }
    let backend = st.backend.clone();
    let res =
        tokio::task::spawn_blocking(move || backend.acl_remove(q.rule.as_deref(), q.line)).await;
    match res {
        Ok(Ok(line)) => Json(serde_json::json!({ "removed_line": line })).into_response(),
        Ok(Err(e)) => acl_error(e),
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "ACL update task failed"),
    }
}

async fn acl_reload(State(st): State<Arc<AppState>>) -> Response {
    let backend = st.backend.clone();
    match tokio::task::spawn_blocking(move || backend.acl_reload()).await {
        Ok(Ok(n)) => Json(serde_json::json!({ "rules": n })).into_response(),
        Ok(Err(e)) => acl_error(e),
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "ACL reload task failed"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogBody {
    level: String,
}

async fn set_log(
    State(st): State<Arc<AppState>>,
    body: Result<Json<LogBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(b)) => match set_log_level(st.backend.log(), &b.level) {
            Ok(()) => Json(serde_json::json!({ "level": b.level })).into_response(),
            Err(e) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        Err(e) => json_error(StatusCode::BAD_REQUEST, e.body_text()),
    }
}
