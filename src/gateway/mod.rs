//! The cloud side: accepts client tunnels, listens on each destination's `cloud_port`, and
//! for each caller opens a stream on a connected client of that gateway id.
//!
//! One caller's path: [`serve_caller`] → [`Tenant::open`] (pick a client and tunnel, open a
//! stream) → [`relay`]. One tunnel's path: [`serve_tunnel`] (auth, hello, register, wait).
//! A configuration change (start, SIGHUP, management API): [`live::apply`]; the API's view of
//! the running gateway: `manage.rs`.

mod admin;
mod live;
mod manage;
mod registry;
mod reverse;
mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

pub use admin::AdminBackend;
use registry::Tenant;
pub use registry::{ClientInfo, Disconnected};

use crate::acl;
use crate::config::{Destination, GatewayConfig, TenantConfig};
use crate::mux::{Mux, MuxConfig, Role};
use crate::proto::{
    DestinationSpec, EndpointTls, Frame, Hidden, IpTableRuleSpec, LogPush, OpenMeta, ProxySpec,
    Reason, Welcome, PROTO_MAJOR, PROTO_MINOR,
};
use crate::relay::{self, Counters, Facing, Options, Socket};
use crate::telemetry::clean;
use crate::tunnel;

/// One gateway id's counters (`stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantCounts {
    pub clients: u64,
    pub tunnels: u64,
    pub tunnels_accepted: u64,
    pub streams_active: u64,
    pub streams_opened: u64,
    pub streams_failed: u64,
    pub streams_denied: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Warnings about a gateway id's configuration that is valid but probably not meant.
fn warn_odd(t: &TenantConfig) {
    if !t.enf_tok_sec {
        warn!(gateway.id = %t.id, "enf_tok_sec = false: clients may join without the security token");
    }
    for d in t
        .destinations
        .iter()
        .filter(|d| d.private && d.ip_table_rules.is_empty())
    {
        warn!(gateway.id = %t.id, dest.id = %d.id, "destination is private with no ip_table_rules: every caller is refused");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Egress(String),
    #[error("gateway `{id}` has {count} destinations, more than limits.max_destinations ({max})")]
    TooManyDestinations {
        id: String,
        count: usize,
        max: usize,
    },
    #[error("gateway `{id}`: its destinations make a CONFIG of {len} bytes, over the protocol's limit of 1 MiB; remove destinations or inline certificates")]
    ConfigTooLarge { id: String, len: usize },
}

/// Gateway-wide counters.
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub tunnels_accepted: AtomicU64,
    pub tunnels_rejected: AtomicU64,
    pub streams_opened: AtomicU64,
    pub streams_failed: AtomicU64,
    /// Callers refused by a private destination's `ip_table_rules`.
    pub streams_denied: AtomicU64,
    /// Callers whose TLS handshake (`client_tls`) failed or timed out.
    pub caller_tls_failures: AtomicU64,
    /// UDP flows open now, and new callers turned away by `limits.max_udp_flows`.
    pub udp_flows: AtomicU64,
    pub udp_flows_rejected: AtomicU64,
    /// Datagrams over all UDP flows (dropped: queue or credit exhausted, table full).
    pub udp: Arc<crate::udp::FlowCounters>,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Datagram bytes queued in all UDP flows now (at most `limits.udp_buffer_total`).
    pub udp_queued: Arc<AtomicU64>,
}

struct Inner {
    tls: TlsAcceptor,
    mux_cfg: MuxConfig,
    /// Gateway ids served now; changed by [`live::apply`] and [`live::remove`].
    tenants: RwLock<HashMap<String, Arc<Tenant>>>,
    /// Destination listeners by (gateway id, destination id).
    listeners: Mutex<HashMap<(String, String), live::Listening>>,
    /// Serialises configuration changes.
    apply_lock: tokio::sync::Mutex<()>,
    /// Parent of every destination listener's token; cancelled at shutdown.
    root: CancellationToken,
    stats: GatewayStats,
    tracker: TaskTracker,
    shutdown_grace: Duration,
    max_udp_flows: usize,
    /// Tunnels per client process and per gateway id (`limits.max_tunnels_per_*`).
    tunnel_caps: registry::TunnelCaps,
    /// Destinations one gateway id may have (`limits.max_destinations`).
    max_destinations: usize,
    udp_flow_buffer: u64,
    /// Per flow while its stream opens, and for all flows (`limits.udp_pending_buffer`,
    /// `limits.udp_buffer_total`).
    udp_pending_buffer: u64,
    udp_buffer_total: u64,
    /// The top-level `egress_allow`: the policy of gateway ids from gateway.toml that have
    /// none of their own ([`crate::config::Egress::FileDefault`]).
    egress: crate::acl::Acl,
    /// `[limits]` as configured, for metrics.
    limits: crate::config::Limits,
}

impl Inner {
    fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        let t = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        t.get(id).cloned()
    }

    fn all_tenants(&self) -> Vec<Arc<Tenant>> {
        let t = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        t.values().cloned().collect()
    }

    fn insert_tenant(&self, t: Tenant) -> Arc<Tenant> {
        let t = Arc::new(t);
        let mut m = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        m.insert(t.id.clone(), t.clone());
        t
    }

    fn remove_tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        let mut m = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        m.remove(id)
    }

    fn lock_listeners(&self) -> MutexGuard<'_, HashMap<(String, String), live::Listening>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts for the gateway as a whole and for the gateway id.
    fn count(&self, tenant: &Tenant, stat: Stat, n: u64) {
        let (all, one) = match stat {
            Stat::Opened => (&self.stats.streams_opened, &tenant.stats.streams_opened),
            Stat::Failed => (&self.stats.streams_failed, &tenant.stats.streams_failed),
            Stat::Denied => (&self.stats.streams_denied, &tenant.stats.streams_denied),
            Stat::Up => (&self.stats.bytes_up, &tenant.stats.bytes_up),
            Stat::Down => (&self.stats.bytes_down, &tenant.stats.bytes_down),
        };
        all.fetch_add(n, Ordering::Relaxed);
        one.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy)]
enum Stat {
    Opened,
    Failed,
    Denied,
    Up,
    Down,
}

/// A bound, not yet running gateway.
pub struct Gateway {
    inner: Arc<Inner>,
    tunnel_listener: TcpListener,
}

/// How long a caller may take to finish its TLS handshake (`client_tls`).
pub const CALLER_TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// Read access to a running gateway (status, tests).
#[derive(Clone)]
pub struct GatewayHandle {
    inner: Arc<Inner>,
    tunnel_addr: SocketAddr,
}

/// Listen backlog: a burst of callers must queue, not overflow the SYN queue into syncookies
/// (which can resurrect closed connections from stray ACKs).
const BACKLOG: u32 = 4096;

async fn bind(addr: &str) -> Result<TcpListener, GatewayError> {
    let err = |source| GatewayError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await.map_err(err)? {
        let sock = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let listener = sock.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(a)?;
            s.listen(BACKLOG)
        });
        match listener {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(err(last.unwrap_or_else(|| {
        std::io::Error::other("address resolved to nothing")
    })))
}

/// Everything [`Gateway::bind`] would refuse in a valid-looking config, short of binding
/// sockets: TLS identities and trust, `egress_allow` entries. For `sgw config check`.
pub fn check(cfg: &GatewayConfig) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    if let Err(e) = tunnel::server_tls(&cfg.tls) {
        errs.push(format!("tls_cert/tls_key: {e}"));
    }
    if let Err(e) = reverse::egress_acl(&cfg.egress_allow) {
        errs.push(e);
    }
    for t in &cfg.gateways {
        if let Err(e) = live::config_push(t, cfg.limits.max_destinations) {
            errs.push(e.to_string());
        }
        if let crate::config::Egress::Own(list) = &t.egress {
            if let Err(e) = reverse::egress_acl(list) {
                errs.push(format!("gateway {}: {e}", t.id));
            }
        }
        for d in &t.destinations {
            let at = format!("gateway {} destination {}", t.id, d.id);
            if let Err(e) = crate::tls::caller_acceptor(&d.caller_tls) {
                errs.push(format!("{at}: {e}"));
            }
            if let Some(Err(e)) = spec_of(d)
                .tls
                .filter(|_| d.reverse)
                .map(|s| crate::tls::endpoint_connector(&s, &d.ip))
            {
                errs.push(format!("{at}: {e}"));
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// A destination as clients receive it: what the client needs to reach the endpoint.
pub fn spec_of(d: &Destination) -> DestinationSpec {
    DestinationSpec {
        id: d.id.clone(),
        protocol: d.protocol.as_str().into(),
        ip: d.ip.clone(),
        port: d.port,
        timeout: d.timeout.as_secs() as u32,
        idle_timeout: d
            .idle_timeout
            .map_or(0, |t| u32::try_from(t.as_secs()).unwrap_or(u32::MAX)),
        private: d.private,
        ip_table_rules: d
            .ip_table_rules
            .iter()
            .map(|r| IpTableRuleSpec {
                src: r.src.clone(),
                spt: r.spt.clone(),
                app: r.app.clone(),
            })
            .collect(),
        tls: d.endpoint_tls.as_ref().map(|t| EndpointTls {
            sni: t.sni.clone(),
            reject_unauth: t.reject_unauth,
            client_certs: t.client_certs.clone(),
            mutual: t.mutual,
            dest_cert: t.identity.as_ref().map(|m| m.0.clone()).unwrap_or_default(),
            dest_key: Hidden(
                t.identity
                    .as_ref()
                    .map(|m| m.1.expose().to_owned())
                    .unwrap_or_default(),
            ),
        }),
        proxy: d.proxy.as_ref().filter(|p| p.enabled).map(|p| ProxySpec {
            host: p.host.clone(),
            port: p.port,
            protocol: p.protocol,
            username: p.username.clone(),
            password: Hidden(
                p.password
                    .as_ref()
                    .map(|s| s.expose().to_owned())
                    .unwrap_or_default(),
            ),
        }),
        compression: d.compression,
        host_rewrite: d.host_rewrite,
        reverse: d.reverse,
        local_port: d.local_port,
    }
}

impl Gateway {
    /// Binds the tunnel endpoint and every enabled destination's cloud port, for the
    /// gateway ids of `cfg` and `more` (those the management API keeps in its state file).
    pub async fn bind(cfg: GatewayConfig) -> Result<Gateway, GatewayError> {
        Self::bind_with(cfg, Vec::new()).await
    }

    pub async fn bind_with(
        cfg: GatewayConfig,
        more: Vec<TenantConfig>,
    ) -> Result<Gateway, GatewayError> {
        let tunnel_listener = bind(&cfg.listen.to_string()).await?;
        Self::serve_on(tunnel_listener, cfg, more).await
    }

    /// As [`Gateway::bind_with`], with the tunnel endpoint already bound (`cfg.listen` is
    /// not used): whoever binds it knows the port before the gateway starts.
    pub async fn serve_on(
        tunnel_listener: TcpListener,
        cfg: GatewayConfig,
        more: Vec<TenantConfig>,
    ) -> Result<Gateway, GatewayError> {
        let tls = tunnel::server_tls(&cfg.tls).map_err(GatewayError::Tls)?;
        let egress = reverse::egress_acl(&cfg.egress_allow).map_err(GatewayError::Egress)?;
        let mux_cfg = MuxConfig::from_limits(Role::Gateway, &cfg.limits, &cfg.keepalive);
        let inner = Arc::new(Inner {
            tls,
            mux_cfg,
            tenants: RwLock::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            apply_lock: tokio::sync::Mutex::new(()),
            root: CancellationToken::new(),
            stats: GatewayStats::default(),
            tracker: TaskTracker::new(),
            shutdown_grace: cfg.shutdown_grace,
            max_udp_flows: cfg.limits.max_udp_flows,
            max_destinations: cfg.limits.max_destinations,
            tunnel_caps: registry::TunnelCaps {
                per_client: cfg.limits.max_tunnels_per_client,
                per_gateway: cfg.limits.max_tunnels_per_gateway,
            },
            udp_flow_buffer: cfg.limits.udp_flow_buffer,
            udp_pending_buffer: cfg.limits.udp_pending_buffer,
            udp_buffer_total: cfg.limits.udp_buffer_total,
            egress,
            limits: cfg.limits,
        });
        for t in cfg.gateways.into_iter().chain(more) {
            warn_odd(&t);
            if let Err(e) = live::apply(&inner, t).await {
                inner.root.cancel();
                return Err(e);
            }
        }
        Ok(Gateway {
            inner,
            tunnel_listener,
        })
    }

    pub fn handle(&self) -> GatewayHandle {
        let tunnel_addr = self
            .tunnel_listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        GatewayHandle {
            inner: self.inner.clone(),
            tunnel_addr,
        }
    }

    /// Serves until `shutdown`, then tells clients to go away and lets streams finish for
    /// at most `shutdown_grace`.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = self.inner;
        if let Ok(a) = self.tunnel_listener.local_addr() {
            info!(tunnel.listen = %a, "gateway started");
        }
        crate::listen::accept_until(&self.tunnel_listener, &shutdown, |tcp, peer| {
            let fut = serve_tunnel(inner.clone(), tcp, peer, shutdown.clone());
            inner.tracker.spawn(fut);
        })
        .await;
        // Drain: no new streams anywhere, open ones get a bounded grace period.
        inner.root.cancel();
        let tunnels: Vec<Mux> = inner
            .all_tenants()
            .iter()
            .flat_map(|t| t.all_tunnels())
            .collect();
        for m in &tunnels {
            m.go_away(Reason::Shutdown, "gateway shutting down");
        }
        let all_idle = async {
            for m in &tunnels {
                m.idle().await;
            }
        };
        let _ = tokio::time::timeout(inner.shutdown_grace, all_idle).await;
        for m in &tunnels {
            m.close("gateway shut down");
        }
        // A finished stream's last bytes may still be queued: let the writers flush them.
        let closing = async {
            for m in &tunnels {
                m.flushed().await;
            }
        };
        let _ = tokio::time::timeout(crate::mux::CLOSE_FLUSH, closing).await;
        inner.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), inner.tracker.wait()).await;
        info!("gateway stopped");
    }
}

impl GatewayHandle {
    /// Where clients connect their tunnels.
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }

    /// Where a destination's callers connect now (resolves port 0 to the bound port); the
    /// first match over all gateway ids.
    pub fn dest_addr(&self, dest_id: &str) -> Option<SocketAddr> {
        let l = self.inner.lock_listeners();
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
        live::apply(&self.inner, cfg).await
    }

    /// Starts the management API on `cfg.listen` (TLS with the tunnel endpoint's
    /// certificate) until `shutdown`; `state` is what the state file held (already served by
    /// [`Gateway::bind_with`]). Returns the bound address.
    pub async fn start_api(
        &self,
        cfg: &crate::config::ApiConfig,
        state: crate::config::state::StateFile,
        shutdown: CancellationToken,
    ) -> Result<SocketAddr, GatewayError> {
        let listener = bind(&cfg.listen.to_string()).await?;
        let addr = listener.local_addr().map_err(|source| GatewayError::Bind {
            addr: cfg.listen.to_string(),
            source,
        })?;
        let api = crate::api::Api::new(self.clone(), cfg.clone(), state);
        let fut = crate::api::serve(api, listener, self.inner.tls.clone(), shutdown);
        self.inner.tracker.spawn(fut);
        Ok(addr)
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
        let backend = Arc::new(AdminBackend::new(self.clone(), api).with_log(log));
        let access = crate::admin::Access {
            token: cfg.token.clone(),
            hosts: cfg.hosts.clone(),
        };
        self.inner.tracker.spawn(async move {
            if let Err(e) = crate::admin::serve(listener, backend, access, shutdown).await {
                warn!(error = %e, "admin endpoint failed");
            }
        });
        Ok(addr)
    }

    /// `[limits]` as configured.
    pub fn limits(&self) -> crate::config::Limits {
        self.inner.limits
    }

    /// The receive window promised to clients over all streams, and its cap.
    pub fn window_budget(&self) -> Arc<crate::mux::WindowBudget> {
        self.inner.mux_cfg.window_budget.clone()
    }

    /// Serving until shutdown begins (readiness).
    pub fn is_serving(&self) -> bool {
        !self.inner.root.is_cancelled()
    }

    /// Stops serving a gateway id and disconnects its clients.
    pub async fn remove(&self, gateway_id: &str) {
        live::remove(&self.inner, gateway_id).await
    }

    /// A gateway id's running configuration.
    pub fn tenant_config(&self, gateway_id: &str) -> Option<TenantConfig> {
        self.inner.tenant(gateway_id).map(|t| t.state().cfg.clone())
    }

    /// Ids of the gateways served now.
    pub fn gateway_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .all_tenants()
            .iter()
            .map(|t| t.id.clone())
            .collect();
        v.sort();
        v
    }

    /// Connected clients of a gateway id.
    pub fn clients(&self, gateway_id: &str) -> Vec<ClientInfo> {
        self.inner
            .tenant(gateway_id)
            .map(|t| t.client_infos())
            .unwrap_or_default()
    }

    /// Closes the tunnels of these clients; returns the ids that were connected.
    pub fn disconnect(&self, gateway_id: &str, client_ids: &[String]) -> Vec<String> {
        self.inner
            .tenant(gateway_id)
            .map(|t| t.disconnect(client_ids, "disconnected through the management API"))
            .unwrap_or_default()
    }

    /// Clients of a gateway id that disconnected recently, oldest first.
    pub fn disconnected(&self, gateway_id: &str) -> Vec<Disconnected> {
        self.inner
            .tenant(gateway_id)
            .map(|t| t.disconnected())
            .unwrap_or_default()
    }

    /// Counters of one gateway id.
    pub fn tenant_stats(&self, gateway_id: &str) -> Option<TenantCounts> {
        let t = self.inner.tenant(gateway_id)?;
        let s = &t.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(TenantCounts {
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

    /// The latest warn/error lines the clients of `gateway_id` pushed: (client id, line).
    pub fn client_logs(&self, gateway_id: &str) -> Vec<(String, LogPush)> {
        self.inner
            .tenant(gateway_id)
            .map(|t| t.logs())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> &GatewayStats {
        &self.inner.stats
    }

    /// Bytes received from clients and not yet written to callers, over all tunnels.
    pub fn buffered_bytes(&self) -> u64 {
        let tenants = self.inner.all_tenants();
        let tunnels = tenants.iter().flat_map(|t| t.all_tunnels());
        tunnels
            .map(|m| m.stats().buffered.load(Ordering::Relaxed))
            .sum()
    }

    /// Streams open over all tunnels.
    pub fn active_streams(&self) -> usize {
        self.inner
            .all_tenants()
            .iter()
            .flat_map(|t| t.all_tunnels())
            .map(|m| m.active_streams())
            .sum()
    }
}

/// May a tunnel that presented `token` belong to this gateway id now?
fn admits(state: &registry::TenantState, token: Option<&crate::config::Secret>) -> bool {
    let now = crate::telemetry::unix_ms() / 1000;
    let token_ok = token.is_some_and(|t| state.cfg.token_valid(t.expose(), now));
    state.cfg.enabled && (!state.cfg.enf_tok_sec || token_ok)
}

/// A client log line is kept (and logged) cut to this many bytes.
const CLIENT_LOG_MAX: usize = 2048;

/// One client tunnel from TLS accept to close.
async fn serve_tunnel(
    inner: Arc<Inner>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    // The token is judged again after registering and before every CONFIG this tunnel is
    // sent: a change may revoke it at any point of the handshake.
    let mut token: Option<crate::config::Secret> = None;
    let accepted = tunnel::accept(tcp, &inner.tls, |req| {
        let tenant = inner.tenant(req.gateway_id)?;
        token = req.token.map(crate::config::Secret::new);
        admits(&tenant.state(), token.as_ref()).then_some(tenant)
    })
    .await;
    let (mut ws, tenant, hello) = match accepted {
        Ok(x) => x,
        Err(e) => {
            inner.stats.tunnels_rejected.fetch_add(1, Ordering::Relaxed);
            warn!(peer.addr = %peer, error = %e, "tunnel refused");
            return;
        }
    };
    let client_id = tenant.client_id_for(&hello.instance);
    let span = tracing::info_span!("tunnel", client.id = %client_id, gateway.id = %tenant.id, peer.addr = %peer);
    async move {
        let welcome = Welcome { client_id: client_id.clone(), gateway_id: tenant.id.clone(), proto: [PROTO_MAJOR, PROTO_MINOR] };
        if let Err(why) = tenant.tunnel_room(&hello.instance, inner.tunnel_caps) {
            inner.stats.tunnels_rejected.fetch_add(1, Ordering::Relaxed);
            warn!(reason = "limit", error = %why, "tunnel refused");
            return;
        }
        let state = tenant.state();
        if !admits(&state, token.as_ref()) {
            warn!(reason = "token_revoked", "tunnel refused: its security token was revoked during the handshake");
            return;
        }
        let sent_config = state.push.clone();
        drop(state);
        let hello_frames = [
            Frame::Welcome(Bytes::from(serde_json::to_vec(&welcome).unwrap_or_default())),
            Frame::Config(sent_config.clone()),
        ];
        // A client that does not read must not hold this task: the handshake has a deadline.
        let sent = tokio::time::timeout(tunnel::HANDSHAKE_TIMEOUT, async {
            for f in &hello_frames {
                ws.send(Message::Binary(tunnel::frame_message(f))).await?;
            }
            Ok::<_, tokio_tungstenite::tungstenite::Error>(())
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "tunnel lost during handshake");
                return;
            }
            Err(_) => {
                warn!(reason = "timeout", "tunnel dropped: the client did not take WELCOME and CONFIG in time");
                return;
            }
        }
        let (r, w) = tunnel::split(ws);
        let (mux, mut events) = Mux::start(r, w, inner.mux_cfg.clone());
        let tunnel_id = match tenant.register(&client_id, &hello, mux.clone(), inner.tunnel_caps) {
            Ok(id) => {
                inner.stats.tunnels_accepted.fetch_add(1, Ordering::Relaxed);
                tenant.stats.tunnels_accepted.fetch_add(1, Ordering::Relaxed);
                id
            }
            Err(why) => {
                inner.stats.tunnels_rejected.fetch_add(1, Ordering::Relaxed);
                warn!(reason = "limit", error = %why, "tunnel refused");
                mux.close(&why);
                return;
            }
        };
        // A change applied between the hello and registering would otherwise miss this tunnel:
        // a revoked token closes it (before anything more is sent), a new list is pushed.
        let now = tenant.state();
        if !admits(&now, token.as_ref()) {
            mux.close("security token revoked");
        } else if now.push != sent_config {
            if let Err(e) = mux.push_config(now.push.clone()) {
                warn!(error = %e, "could not send the changed configuration; closing the tunnel so the client reconnects");
                mux.close("configuration push failed");
            }
        }
        drop(now);
        info!(client.version = %clean(&hello.version, 64), client.hostname = %clean(&hello.hostname, 256), client.env = %clean(&hello.env, 64), "tunnel up");
        // The token this tunnel came in with stops being good at its expiry; a changed token
        // closes the tunnel sooner (live::apply).
        let expires = {
            let cfg = &tenant.state().cfg;
            cfg.token_expires_at.filter(|_| cfg.enf_tok_sec)
        };
        let expiry = async move {
            match expires {
                Some(at) => {
                    let now = crate::telemetry::unix_ms() / 1000;
                    tokio::time::sleep(Duration::from_secs(at.saturating_sub(now))).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                _ = &mut expiry => {
                    info!(reason = "token_expired", "the security token expired; closing the tunnel");
                    mux.close("security token expired");
                    break;
                }
                inc = events.incoming.recv() => match inc {
                    // Client-opened streams are for reverse destinations.
                    Some(i) => {
                        let fut = reverse::serve_reverse(inner.clone(), tenant.clone(), i, client_id.clone());
                        inner.tracker.spawn(fut);
                    }
                    None => break,
                },
                log = events.logs.recv() => if let Some(line) = log {
                    match serde_json::from_slice::<LogPush>(&line) {
                        Ok(l) => {
                            // Kept per gateway id for clientLogs: stored short and escaped.
                            let l = LogPush { level: clean(&l.level, 16), message: clean(&l.message, CLIENT_LOG_MAX), time: l.time };
                            info!(client.log.level = %l.level, client.log = %l.message, "client log");
                            tenant.push_log(&client_id, l);
                        }
                        Err(e) => info!(error = %e, "ignoring malformed client log line"),
                    }
                },
                _ = mux.closed() => break,
                _ = shutdown.cancelled() => {
                    // `run` drains and closes every tunnel; just wait for that.
                    mux.closed().await;
                    break;
                }
            }
        }
        let reason = mux.close_reason().unwrap_or_default();
        tenant.unregister(&client_id, tunnel_id, &reason);
        info!(reason = %reason, "tunnel down");
    }
    .instrument(span)
    .await
}

/// Opens a stream for `caller` on some client of `tenant`, within the destination's timeout
/// (the client enforces it on its dial; five more seconds allow for the tunnel). Returns the
/// client id, the stream, and whether it is compressed.
async fn open_for_caller(
    tenant: &Tenant,
    dest: &Destination,
    caller: SocketAddr,
) -> Result<(String, crate::mux::MuxStream, bool), (Reason, String)> {
    let meta = OpenMeta {
        dest: dest.id.clone(),
        caller: caller.to_string(),
        compress: None,
        target: None,
    };
    let limit = dest.timeout + Duration::from_secs(5);
    match tokio::time::timeout(limit, tenant.open(&meta, dest.compression)).await {
        Ok(r) => r,
        Err(_) => Err((
            Reason::Timeout,
            format!("no answer from the client within {} s", limit.as_secs()),
        )),
    }
}

/// The span of one caller's stream (TCP connection or UDP flow); client and stream ids are
/// filled in by [`record_stream`] once the stream is open.
fn caller_span(dest: &Destination, caller: SocketAddr) -> tracing::Span {
    tracing::info_span!(
        "stream",
        dest.id = %dest.id,
        caller.addr = %caller,
        client.id = tracing::field::Empty,
        stream.id = tracing::field::Empty,
    )
}

fn record_stream(client_id: &str, stream: &crate::mux::MuxStream) {
    let span = tracing::Span::current();
    span.record("client.id", tracing::field::display(client_id));
    span.record("stream.id", stream.id());
}

/// One caller from accept to close.
async fn serve_caller(
    inner: Arc<Inner>,
    tenant: Arc<Tenant>,
    dest: Arc<Destination>,
    tls: Option<TlsAcceptor>,
    tcp: TcpStream,
    caller: SocketAddr,
) {
    crate::relay::tune(&tcp);
    let span = caller_span(&dest, caller);
    async move {
        let started = Instant::now();
        // Private destinations drop unknown callers here, before any tunnel traffic; the
        // client checks again (it trusts nothing it did not decide itself).
        if !acl::caller_admitted(dest.private, &dest.ip_table_rules, Some(caller)) {
            inner.count(&tenant, Stat::Denied, 1);
            warn!(reason = "ip_table_denied", "caller refused: no ip_table_rules entry of this private destination matches it");
            relay::abort(&tcp);
            return;
        }
        // TLS toward the caller first: a caller that cannot complete it costs no stream.
        let conn = match tls {
            None => Socket::Tcp(tcp),
            Some(acceptor) => match tokio::time::timeout(CALLER_TLS_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => Socket::TlsFrom(Box::new(s)),
                Ok(Err(e)) => {
                    inner.stats.caller_tls_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(reason = "tls", error = %e, client_tls = dest.caller_tls.as_str(), "caller TLS handshake failed");
                    return;
                }
                Err(_) => {
                    inner.stats.caller_tls_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(reason = "timeout", "caller TLS handshake timed out after {} s", CALLER_TLS_TIMEOUT.as_secs());
                    return;
                }
            },
        };
        let (client_id, stream, compress) = match open_for_caller(&tenant, &dest, caller).await {
            Ok(x) => x,
            Err((reason, message)) => {
                inner.count(&tenant, Stat::Failed, 1);
                info!(reason = %reason, error = %message, duration_ms = started.elapsed().as_millis() as u64, "stream refused");
                conn.abort();
                return;
            }
        };
        record_stream(&client_id, &stream);
        inner.count(&tenant, Stat::Opened, 1);
        tracing::debug!("stream opened");
        // The client enforces `idle_timeout` too, but a client that stopped answering (or never
        // meant to) must not hold this caller beyond it: the gateway bounds it as well. Off
        // (the default), a live but silent client holds its callers (docs/SECURITY.md).
        let opts = Options {
            compress,
            idle: dest.idle_timeout,
        };
        let counters = Counters::default();
        let out = relay::relay(conn, stream, &counters, opts).await;
        let d = out.log_closed(Facing::Caller, started);
        inner.count(&tenant, Stat::Up, d.up);
        inner.count(&tenant, Stat::Down, d.down);
    }
    .instrument(span)
    .await
}
