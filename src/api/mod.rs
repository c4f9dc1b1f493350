//! The gateway's management REST API (docs/API.md, after the Secure Gateway REST API): `/v1/...` JSON over HTTPS.
//!
//! Gateways from `gateway.toml` can be read here but are changed in that file (SIGHUP);
//! gateways created or imported here live in `state_file` and are changed only here. Every
//! change is validated by the same reader as `gateway.toml`, applied to the running gateway
//! through [`Backend::apply`] (connected clients get it as a CONFIG push), then written to
//! the state file atomically; if the write fails the running gateway is put back.
//!
//! One request's path: [`serve`] (TLS, HTTP/1) → router → a handler in `routes` →
//! [`Api::authorize`] → [`Api::change`] for changes.

mod body;
mod certs;
mod clients;
mod dest_certs;
mod destinations;
mod gateways;
mod routes;
mod rules;
mod views;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::state::{tenant_from_record, GatewayRecord, StateFile};
use crate::config::{ApiConfig, TenantConfig};

pub use routes::ROUTES;

/// How long a caller of the API may take for its TLS handshake and request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the running gateway could not take a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A cloud port could not be bound (in use).
    #[error("{0}")]
    Conflict(String),
    /// The configuration is refused (TLS material that does not load).
    #[error("{0}")]
    Invalid(String),
}

/// The running gateway as the API sees it; implemented by `gateway::GatewayHandle`.
pub trait Backend: Send + Sync + 'static {
    /// Makes the gateway serve `cfg` (new or changed gateway id); returns it as it runs
    /// (`cloud_port = 0` resolved). On error nothing changed.
    fn apply(
        &self,
        cfg: TenantConfig,
    ) -> impl Future<Output = Result<TenantConfig, ApplyError>> + Send;
    /// Stops serving a gateway id and disconnects its clients.
    fn remove(&self, id: &str) -> impl Future<Output = ()> + Send;
    fn tenant(&self, id: &str) -> Option<TenantConfig>;
    fn gateway_ids(&self) -> Vec<String>;
    /// Connected clients: `client_id`, `version`, `hostname`, `env`, ...
    fn clients(&self, id: &str) -> Vec<Value>;
    /// Closes these clients' tunnels; returns the ids that were connected.
    fn disconnect(&self, id: &str, client_ids: &[String]) -> Vec<String>;
    /// Warn/error lines clients pushed: `client_id`, `level`, `message`, `time`.
    fn client_logs(&self, id: &str) -> Vec<Value>;
    fn disconnected(&self, id: &str) -> Vec<Value>;
    /// Counters of one gateway id (None: unknown id).
    fn stats(&self, id: &str) -> Option<Value>;
}

/// An error answer: status and a message naming what was wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    messages: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            messages: vec![message.into()],
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 400 with every validation error.
    pub fn invalid(messages: Vec<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            messages,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
}

/// The message of an error answer, for the request log.
#[derive(Clone)]
struct Logged(String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.messages.join("; ");
        let body = json!({
            "code": self.status.as_u16(),
            "error": self.status.canonical_reason().unwrap_or("error"),
            "message": message,
            "errors": self.messages,
        });
        let mut r = (self.status, axum::Json(body)).into_response();
        r.extensions_mut().insert(Logged(message));
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Conflict(m) => ApiError::conflict(m),
            ApplyError::Invalid(m) => ApiError::bad(m),
        }
    }
}

/// Who is calling.
enum Caller {
    Admin,
    Gateway,
}

/// The API's state: the backend, settings and the API-managed gateways.
pub struct Api<B> {
    backend: B,
    /// `api_listen` and what goes with it, from gateway.toml.
    settings: ApiConfig,
    /// Held across a whole change (validate, apply, write), so changes never interleave.
    state: tokio::sync::Mutex<StateFile>,
}

impl<B: Backend> Api<B> {
    /// `state`: what `state_file` held at start (already applied to the backend).
    pub fn new(backend: B, settings: ApiConfig, state: StateFile) -> Arc<Self> {
        if settings.state_file.is_none() {
            warn!("api_listen without state_file: gateways created through the API are lost at restart");
        }
        Arc::new(Api {
            backend,
            settings,
            state: tokio::sync::Mutex::new(state),
        })
    }

    fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
        let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing `Authorization: Bearer <token>` header",
            ));
        };
        v.to_str()
            .ok()
            .and_then(|s| s.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))
    }

    fn is_admin(&self, token: &str) -> bool {
        self.settings
            .admin_token
            .as_ref()
            .is_some_and(|a| a.ct_eq(token))
    }

    /// Whether `token` is some gateway's security token (expired or not).
    fn any_gateway_token(&self, token: &str) -> bool {
        let ids = self.backend.gateway_ids();
        // Every id is compared, so timing does not tell which one matched.
        ids.iter()
            .filter_map(|id| self.backend.tenant(id))
            .fold(false, |found, t| t.token.ct_eq(token) | found)
    }

    /// Before any body is read: the request carries the admin token or some gateway's token
    /// (which calls it may make is decided later). Strangers are refused from the headers.
    pub(crate) fn known_token(&self, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
        let token = Self::bearer(headers)?;
        // The admin answers at once; any other token is compared with every gateway's.
        if self.is_admin(token) || self.any_gateway_token(token) {
            return Ok(());
        }
        Err(ApiError::unauthorized("invalid token"))
    }

    /// Account-level calls: the admin token only.
    fn admin(&self, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
        let token = Self::bearer(headers)?;
        if self.is_admin(token) {
            return Ok(());
        }
        if self.settings.admin_token.is_none() {
            return Err(ApiError::forbidden(
                "account-level calls need admin_token (or admin_token_file) in gateway.toml",
            ));
        }
        if self.any_gateway_token(token) {
            return Err(ApiError::forbidden(
                "a gateway's security token cannot make account-level calls; use the admin token",
            ));
        }
        Err(ApiError::unauthorized("invalid token"))
    }

    /// A gateway's own calls: its security token (not expired) or the admin token.
    fn authorize(
        &self,
        headers: &axum::http::HeaderMap,
        gateway_id: &str,
    ) -> Result<(Caller, TenantConfig), ApiError> {
        let token = Self::bearer(headers)?;
        let tenant = self.backend.tenant(gateway_id);
        if self.is_admin(token) {
            return tenant
                .map(|t| (Caller::Admin, t))
                .ok_or_else(|| ApiError::not_found(format!("no gateway `{gateway_id}`")));
        }
        if let Some(t) = tenant {
            if t.token.ct_eq(token) {
                let now = crate::telemetry::unix_ms() / 1000;
                if !t.token_valid(token, now) {
                    return Err(ApiError::unauthorized(
                        "the security token has expired; regenerate it with the admin token",
                    ));
                }
                return Ok((Caller::Gateway, t));
            }
        }
        if self.any_gateway_token(token) {
            return Err(ApiError::forbidden(
                "this security token belongs to another gateway",
            ));
        }
        Err(ApiError::unauthorized("invalid token"))
    }

    /// Changes one API-managed gateway: `edit` the record, validate, apply, persist.
    /// Gateways from gateway.toml are refused with 403.
    async fn change<F>(
        &self,
        gateway_id: &str,
        edit: F,
    ) -> Result<(GatewayRecord, TenantConfig), ApiError>
    where
        F: FnOnce(&mut GatewayRecord) -> Result<(), ApiError>,
    {
        let mut st = self.state.lock().await;
        let Some(idx) = st.gateways.iter().position(|g| g.id == gateway_id) else {
            return Err(self.not_managed(gateway_id));
        };
        let old = st.gateways[idx].clone();
        let mut rec = old.clone();
        edit(&mut rec)?;
        rec.updated_at = crate::telemetry::unix_ms();
        let cfg = tenant_from_record(&rec).map_err(ApiError::invalid)?;
        let running = self.backend.apply(cfg).await?;
        sync_ports(&mut rec, &running);
        let mut new = st.clone();
        new.gateways[idx] = rec.clone();
        if let Err(e) = self.persist(&new) {
            if let Ok(c) = tenant_from_record(&old) {
                let _ = self.backend.apply(c).await;
            }
            return Err(e);
        }
        *st = new;
        Ok((rec, running))
    }

    /// Adds API-managed gateways (create, import). All or nothing.
    async fn add(
        &self,
        recs: Vec<GatewayRecord>,
    ) -> Result<Vec<(GatewayRecord, TenantConfig)>, ApiError> {
        let mut st = self.state.lock().await;
        let mut new = st.clone();
        let mut done: Vec<(GatewayRecord, TenantConfig)> = Vec::new();
        let mut failed = None;
        for mut rec in recs {
            let applied = match tenant_from_record(&rec) {
                Err(e) => Err(ApiError::invalid(e)),
                Ok(cfg) => self.backend.apply(cfg).await.map_err(ApiError::from),
            };
            match applied {
                Ok(running) => {
                    sync_ports(&mut rec, &running);
                    new.gateways.push(rec.clone());
                    done.push((rec, running));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let failed = match failed {
            Some(e) => Some(e),
            None => self.persist(&new).err(),
        };
        if let Some(e) = failed {
            for (r, _) in &done {
                self.backend.remove(&r.id).await;
            }
            return Err(e);
        }
        *st = new;
        Ok(done)
    }

    /// Deletes an API-managed gateway.
    async fn delete_gateway(&self, gateway_id: &str) -> Result<(), ApiError> {
        let mut st = self.state.lock().await;
        let Some(idx) = st.gateways.iter().position(|g| g.id == gateway_id) else {
            return Err(self.not_managed(gateway_id));
        };
        let mut new = st.clone();
        let old = new.gateways.remove(idx);
        self.backend.remove(gateway_id).await;
        if let Err(e) = self.persist(&new) {
            if let Ok(c) = tenant_from_record(&old) {
                let _ = self.backend.apply(c).await;
            }
            return Err(e);
        }
        *st = new;
        Ok(())
    }

    fn not_managed(&self, gateway_id: &str) -> ApiError {
        if self.backend.tenant(gateway_id).is_some() {
            ApiError::forbidden(format!(
                "gateway `{gateway_id}` is defined in gateway.toml; change it there and reload (SIGHUP)"
            ))
        } else {
            ApiError::not_found(format!("no gateway `{gateway_id}`"))
        }
    }

    async fn record(&self, gateway_id: &str) -> Option<GatewayRecord> {
        let st = self.state.lock().await;
        st.gateways.iter().find(|g| g.id == gateway_id).cloned()
    }

    async fn records(&self) -> Vec<GatewayRecord> {
        self.state.lock().await.gateways.clone()
    }

    fn persist(&self, state: &StateFile) -> Result<(), ApiError> {
        let Some(path) = &self.settings.state_file else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        // The first change creates the directory (/var/lib/sgw outside systemd's StateDirectory).
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && !p.exists());
        let made = parent.map_or(Ok(()), |p| {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(p)
        });
        made.and_then(|()| crate::fsutil::write_atomic(path, &bytes, 0o600)).map_err(|e| {
            warn!(state_file = %path.display(), error = %e, "cannot write the state file; change undone");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot write state_file {}: {e}; nothing was changed", path.display()),
            )
        })
    }
}

/// Unix milliseconds as an RFC 3339 time (JSON null if out of range).
pub fn rfc3339_ms(ms: u64) -> Value {
    jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| Value::String(t.to_string()))
        .unwrap_or(Value::Null)
}

/// Records the ports the gateway bound for destinations that asked for any port, so they
/// keep them across restarts.
fn sync_ports(rec: &mut GatewayRecord, running: &TenantConfig) {
    for d in rec.destinations.iter_mut() {
        let id = d
            .config
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(r) = running.destinations.iter().find(|r| r.id == id) {
            if !r.reverse {
                d.config.insert("cloud_port".into(), r.cloud_port.into());
            }
        }
    }
}

/// The API as a router (auth gate, body limit, request log, routes) without a listener: for
/// callers that bring their own transport, such as the in-process fuzz target for API bodies.
pub fn app<B: Backend>(api: Arc<Api<B>>) -> axum::Router {
    routes::router(api)
}

/// Serves the API on `listener` over TLS until `shutdown`.
pub async fn serve<B: Backend>(
    api: Arc<Api<B>>,
    listener: TcpListener,
    tls: TlsAcceptor,
    shutdown: CancellationToken,
) {
    let per_source_cap = api.settings.max_connections_per_source;
    let app = routes::router(api.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(api.settings.max_connections));
    let per_source = Arc::new(std::sync::Mutex::new(HashMap::<IpAddr, usize>::new()));
    if let Ok(a) = listener.local_addr() {
        info!(api.listen = %a, "management API listening");
    }
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let Some((tcp, peer)) = crate::listen::accept(&listener, &shutdown).await else {
            return;
        };
        // One source may hold only so many connections: a trickling client can't take every
        // slot and lock the admin out.
        let Some(source) = SourceSlot::take(&per_source, peer.ip(), per_source_cap) else {
            warn!(peer.addr = %peer, reason = "limit", "API connection refused: api_max_connections_per_source reached");
            continue;
        };
        let (app, tls, shutdown) = (app.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _source = source;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer.addr = %peer, error = %e, "API TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(peer.addr = %peer, error = %e, "API connection ended with an error");
                },
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.as_mut()).await;
                }
            }
        });
    }
}

/// One connection counted against its source address; released on drop.
struct SourceSlot {
    map: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl SourceSlot {
    fn take(
        map: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        cap: usize,
    ) -> Option<SourceSlot> {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}
