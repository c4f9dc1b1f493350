//! The gateway's management REST API (docs/API.md, after the Secure Gateway REST API): `/v1/...` JSON over HTTPS.
//!
//! Gateways from `gateway.toml` can be read here but are changed in that file (SIGHUP);
//! gateways created or imported here live in the store (`state_file`, or `state_store` shared
//! by replicas: `crate::store`) and are changed only here. Every change is validated by the
//! same reader as `gateway.toml`, applied to the running gateway through [`Backend::apply`]
//! (connected clients get it as a CONFIG push), then committed to the store; if the commit
//! fails the running gateway is put back. Replicas follow each other's commits (follow.rs).
//!
//! One request's path: [`serve`] (TLS, HTTP/1, connection limits: `crate::listen::http`) →
//! the route table (routes.rs) → a handler by resource → `Api::authorize` (access.rs) →
//! `Api::change` (store.rs) for changes.

mod access;
mod backend;
mod body;
mod certs;
mod clients;
mod dest_certs;
mod destinations;
mod error;
mod extract;
mod follow;
mod gateways;
mod presence;
mod routes;
mod rules;
mod store;
mod views;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use access::Api;
pub use backend::{
    rfc3339_text, ApplyError, Backend, ClientLogLine, ClientView, GoneClient, IdCounts,
};
pub use error::ApiError;
pub use follow::{follow_store, RESYNC_EVERY};
pub use presence::publish_presence;
pub use routes::ROUTES;

/// How long a caller of the API may take for its TLS handshake and each request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The API as a router (auth gate, body limit, request log, routes) without a listener: for
/// callers that bring their own transport, such as the in-process fuzz target for API bodies.
pub fn app<B: Backend>(api: Arc<Api<B>>) -> axum::Router {
    routes::router(api)
}

/// Serves the API on `listener` over TLS until `shutdown`, within `api_max_connections`
/// (and `api_max_connections_per_source` from one address).
pub async fn serve<B: Backend>(
    api: Arc<Api<B>>,
    listener: TcpListener,
    tls: TlsAcceptor,
    shutdown: CancellationToken,
) {
    let limits = crate::listen::http::HttpLimits {
        max_connections: api.settings.max_connections,
        max_per_source: api.settings.max_connections_per_source,
        per_source_key: "api_max_connections_per_source",
        head_timeout: HANDSHAKE_TIMEOUT,
    };
    if let Ok(a) = listener.local_addr() {
        tracing::info!(api.listen = %a, "management API listening");
    }
    let app = routes::router(api);
    crate::listen::http::serve("api", listener, app, Some(tls), limits, shutdown).await;
}
