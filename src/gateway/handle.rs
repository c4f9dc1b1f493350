//! [`GatewayHandle`]: the running gateway for its owner — addresses, live configuration
//! changes, clients, counters — and the admin endpoint it starts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::admin::AdminBackend;
use super::state::GatewayState;
use super::wire::warn_odd;
use super::{apply, GatewayError, GatewayStats};
use crate::api::{ClientLogLine, ClientView, GoneClient, IdCounts};
use crate::config::TenantConfig;

/// Read access to a running gateway (status, tests).
#[derive(Clone)]
pub struct GatewayHandle {
    pub(super) gw: Arc<GatewayState>,
    pub(super) tunnel_addr: SocketAddr,
}

impl GatewayHandle {
    /// Where clients connect their tunnels.
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }

    /// Where a destination's callers connect now (resolves port 0 to the bound port); the
    /// first match over all gateway ids.
    pub fn dest_addr(&self, dest_id: &str) -> Option<SocketAddr> {
        let l = self.gw.lock_listeners();
        l.iter()
            .find(|((_, d), _)| d == dest_id)
            .map(|(_, v)| v.addr)
    }

    /// Makes the running gateway serve `cfg` for its gateway id, adding the id if it is new:
    /// listeners start and stop, connected clients get the new destinations without
    /// reconnecting; a changed or expiring token closes the tunnels that used the old one.
    /// Returns the configuration as it runs (`cloud_port = 0` resolved to the bound port).
    /// On error nothing changed.
    pub async fn apply(&self, cfg: TenantConfig) -> Result<TenantConfig, GatewayError> {
        warn_odd(&cfg);
        apply::apply(&self.gw, cfg).await
    }

    /// The tunnel endpoint's TLS (the management API serves with the same certificate).
    pub fn tls_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.gw.tls.clone()
    }

    /// Runs `task` as part of the gateway: shutdown waits for it (bounded).
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.gw.tracker.spawn(task);
    }

    /// Starts the admin endpoint (health, readiness, metrics, status) on `cfg.listen` until
    /// `shutdown`; `api` adds the API's limits to `/metrics`. Returns the bound address.
    pub async fn start_admin(
        &self,
        cfg: &crate::config::AdminConfig,
        api: Option<crate::config::ApiConfig>,
        log: Option<crate::telemetry::LogControl>,
        shutdown: CancellationToken,
    ) -> Result<SocketAddr, GatewayError> {
        let err = |source| GatewayError::Bind {
            addr: cfg.listen.to_string(),
            source,
        };
        let listener = TcpListener::bind(cfg.listen).await.map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        info!(admin.addr = %addr, auth = cfg.token.is_some(), "admin endpoint listening");
        let backend = AdminBackend::new(self.clone(), api, cfg.max_connections).with_log(log);
        let backend = Arc::new(backend);
        if let Some(path) = &cfg.socket {
            let serve = crate::admin::bind_unix(
                path.clone(),
                backend.clone(),
                cfg.max_connections,
                shutdown.clone(),
            );
            let serve = serve.await.map_err(|source| GatewayError::Bind {
                addr: path.display().to_string(),
                source,
            })?;
            self.gw.tracker.spawn(serve);
        }
        let access = crate::admin::Access {
            token: cfg.token.clone(),
            hosts: cfg.hosts.clone(),
        };
        self.gw.tracker.spawn(crate::admin::serve(
            listener,
            backend,
            access,
            cfg.max_connections,
            shutdown,
        ));
        Ok(addr)
    }

    /// `[limits]` as configured.
    pub fn limits(&self) -> crate::config::Limits {
        self.gw.limits
    }

    /// The receive window promised to clients over all streams, and its cap.
    pub fn window_budget(&self) -> Arc<crate::mux::WindowBudget> {
        self.gw.mux_cfg.window_budget.clone()
    }

    /// Serving until shutdown begins (readiness).
    pub fn is_serving(&self) -> bool {
        !self.gw.root.is_cancelled()
    }

    /// Stops serving a gateway id and disconnects its clients.
    pub async fn remove(&self, gateway_id: &str) {
        apply::remove(&self.gw, gateway_id).await
    }

    /// A gateway id's running configuration.
    pub fn tenant_config(&self, gateway_id: &str) -> Option<TenantConfig> {
        self.gw.tenant(gateway_id).map(|t| t.state().cfg.clone())
    }

    /// Whether `token` is any gateway id's security token: every one is compared, in constant
    /// time each, and no configuration is copied.
    pub fn any_token_is(&self, token: &str) -> bool {
        self.gw
            .all_tenants()
            .iter()
            .fold(false, |found, t| t.state().cfg.token.ct_eq(token) | found)
    }

    /// Ids of the gateways served now.
    pub fn gateway_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.gw.all_tenants().iter().map(|t| t.id.clone()).collect();
        v.sort();
        v
    }

    /// Connected clients of a gateway id.
    pub fn clients(&self, gateway_id: &str) -> Vec<ClientView> {
        self.gw
            .tenant(gateway_id)
            .map(|t| t.client_infos())
            .unwrap_or_default()
    }

    /// Closes the tunnels of these clients; returns the ids that were connected.
    pub fn disconnect(&self, gateway_id: &str, client_ids: &[String]) -> Vec<String> {
        self.gw
            .tenant(gateway_id)
            .map(|t| t.disconnect(client_ids, "disconnected through the management API"))
            .unwrap_or_default()
    }

    /// Clients of a gateway id that disconnected recently, oldest first.
    pub fn disconnected(&self, gateway_id: &str) -> Vec<GoneClient> {
        self.gw
            .tenant(gateway_id)
            .map(|t| t.disconnected())
            .unwrap_or_default()
    }

    /// Counters of one gateway id.
    pub fn tenant_stats(&self, gateway_id: &str) -> Option<IdCounts> {
        let t = self.gw.tenant(gateway_id)?;
        let s = &t.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(IdCounts {
            clients: t.client_infos().len() as u64,
            tunnels: t.all_tunnels().len() as u64,
            tunnels_accepted: get(&s.tunnels_accepted),
            streams_active: t
                .all_tunnels()
                .iter()
                .map(|m| m.active_streams() as u64)
                .sum(),
            streams_opened: get(&s.streams_opened),
            streams_failed: get(&s.streams_failed),
            streams_denied: get(&s.streams_denied),
            bytes_up: get(&s.bytes_up),
            bytes_down: get(&s.bytes_down),
        })
    }

    /// The latest warn/error lines the clients of `gateway_id` pushed, oldest first.
    pub fn client_logs(&self, gateway_id: &str) -> Vec<ClientLogLine> {
        let Some(t) = self.gw.tenant(gateway_id) else {
            return Vec::new();
        };
        t.logs()
            .into_iter()
            .map(|(client_id, l)| ClientLogLine {
                client_id,
                level: l.level,
                message: l.message,
                time_ms: l.time.saturating_mul(1000),
            })
            .collect()
    }

    pub fn stats(&self) -> &GatewayStats {
        &self.gw.stats
    }

    /// Bytes received from clients and not yet written to callers, over all tunnels.
    pub fn buffered_bytes(&self) -> u64 {
        let tenants = self.gw.all_tenants();
        let tunnels = tenants.iter().flat_map(|t| t.all_tunnels());
        tunnels
            .map(|m| m.stats().buffered.load(Ordering::Relaxed))
            .sum()
    }

    /// Tunnel connections in their handshake now (at most `limits.max_pending_handshakes`).
    pub fn handshakes_pending(&self) -> usize {
        self.gw.handshakes.held()
    }

    /// Streams open over all tunnels.
    pub fn active_streams(&self) -> usize {
        self.gw
            .all_tenants()
            .iter()
            .flat_map(|t| t.all_tunnels())
            .map(|m| m.active_streams())
            .sum()
    }
}
