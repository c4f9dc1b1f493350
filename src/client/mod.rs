//! The on-prem daemon: holds `tunnels` parallel tunnels to each configured gateway,
//! reconnecting forever with jittered exponential backoff, and serves the streams the
//! gateway opens.
//!
//! One stream's path: [`serve_tunnel`] receives the open → [`serve_open`] finds the
//! destination, asks the ACL, dials, accepts → [`relay`].

mod acl_file;
mod admin;
mod http;
mod reload;
mod reverse;
mod socks;

pub use acl_file::{AclEditError, AclFile};
pub use admin::AdminBackend;
pub use reload::reload_from_files;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::acl::{self, Acl, Decision, LocalTime, Request};
use crate::config::{ClientConfig, GatewayLink, IpTableRule, Reconnect};
use crate::dial;
use crate::mux::{Incoming, Mux, MuxConfig, Role};
use crate::proto::{
    ConfigPush, DestinationSpec, Hello, LogPush, Reason, FEATURE_DEFLATE, PROTO_MAJOR, PROTO_MINOR,
};
use crate::relay::{relay_with, Facing, Options};
use crate::telemetry::ForwardedLog;
use crate::tls::EndpointConnector;
use crate::tunnel::{self, ConnectError};

/// How often the ACL file is checked for changes.
const ACL_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("gateway {gateway}: {message}")]
    Tls { gateway: String, message: String },
}

/// Client-wide counters.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub streams_opened: AtomicU64,
    /// Streams refused by the ACL or a private destination's caller rules (all reasons).
    pub streams_denied: AtomicU64,
    pub denied_by_rule: AtomicU64,
    pub denied_by_default: AtomicU64,
    pub denied_by_caller: AtomicU64,
    pub acl_reloads: AtomicU64,
    pub acl_reload_failures: AtomicU64,
    pub streams_failed: AtomicU64,
    pub tunnel_connects: AtomicU64,
    pub tunnel_failures: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// UDP flows open now, and flows refused by `limits.max_udp_flows`.
    pub udp_flows: AtomicU64,
    pub udp_flows_rejected: AtomicU64,
    /// Datagrams over all UDP flows (up: toward the endpoint).
    pub udp: Arc<crate::udp::FlowCounters>,
    /// The same, per destination id (bounded: see [`MAX_DEST_SERIES`]).
    per_dest: std::sync::Mutex<HashMap<String, Arc<DestStats>>>,
}

/// Per-destination series kept at most; further destinations share the `_other` series.
pub const MAX_DEST_SERIES: usize = 4096;

/// Counters of one destination.
#[derive(Debug, Default)]
pub struct DestStats {
    pub opened: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// DATA payload bytes in the tunnel (smaller than the above when compressed).
    pub tunnel_bytes_up: AtomicU64,
    pub tunnel_bytes_down: AtomicU64,
    /// By deny reason: acl_rule, acl_default, ip_table_rules.
    pub denied: [AtomicU64; 3],
    /// By OPEN_ERR reason name (a closed set).
    pub failed: std::sync::Mutex<HashMap<&'static str, u64>>,
}

impl ClientStats {
    /// The counters of `dest` (created on first use, up to [`MAX_DEST_SERIES`]).
    pub fn dest(&self, dest: &str) -> Arc<DestStats> {
        let mut m = self.per_dest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = m.get(dest) {
            return d.clone();
        }
        let key = if m.len() < MAX_DEST_SERIES {
            dest
        } else {
            "_other"
        };
        m.entry(key.to_owned()).or_default().clone()
    }

    /// Adds a finished stream's bytes to the totals and to its destination's.
    fn record(&self, dest: &DestStats, d: &crate::relay::Directed) {
        self.bytes_up.fetch_add(d.up, Ordering::Relaxed);
        self.bytes_down.fetch_add(d.down, Ordering::Relaxed);
        dest.bytes_up.fetch_add(d.up, Ordering::Relaxed);
        dest.bytes_down.fetch_add(d.down, Ordering::Relaxed);
        dest.tunnel_bytes_up
            .fetch_add(d.tunnel_up, Ordering::Relaxed);
        dest.tunnel_bytes_down
            .fetch_add(d.tunnel_down, Ordering::Relaxed);
    }

    /// Every destination's counters, sorted by id.
    pub fn per_dest(&self) -> Vec<(String, Arc<DestStats>)> {
        let m = self.per_dest.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, d)| (k.clone(), d.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// What the client looks like from outside right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub tunnels_up: usize,
    /// Client id per gateway id, once assigned.
    pub client_ids: Vec<(String, String)>,
}

struct Link {
    cfg: GatewayLink,
    tls: TlsConnector,
    dests: RwLock<Arc<HashMap<String, Arc<Dest>>>>,
    /// Tunnels up right now (for sending LOG frames and opening reverse streams).
    live: std::sync::Mutex<Vec<Mux>>,
    /// Listeners of this gateway's reverse destinations.
    reverse: reverse::Listeners,
}

impl Link {
    fn live_tunnels(&self) -> std::sync::MutexGuard<'_, Vec<Mux>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A destination of the gateway's latest CONFIG.
    fn dest(&self, id: &str) -> Option<Arc<Dest>> {
        let d = self.dests.read().unwrap_or_else(|e| e.into_inner());
        d.get(id).cloned()
    }
}

/// A destination as the gateway pushed it, with its caller rules parsed once.
struct Dest {
    spec: DestinationSpec,
    /// Rules that failed to parse are dropped (and logged): fewer callers admitted, never more.
    ip_rules: Vec<IpTableRule>,
    /// This destination's metric series, looked up once per push, not once per stream.
    stats: Arc<DestStats>,
    /// TLS to the endpoint, built once per push; an error fails each stream with reason `tls`.
    tls: Option<Result<EndpointConnector, String>>,
}

impl Dest {
    fn new(
        mut spec: DestinationSpec,
        stats: &ClientStats,
        local: Option<&crate::config::DestOverride>,
    ) -> Dest {
        if let (Some(t), Some(o)) = (&mut spec.tls, local) {
            if let (Some(c), Some(k)) = (&o.dest_cert, &o.dest_key) {
                t.dest_cert = c.clone();
                t.dest_key = crate::proto::Hidden(k.expose().to_owned());
            }
            if let Some(cas) = &o.client_certs {
                t.client_certs = cas.clone();
            }
        }
        let tls = spec.tls.as_ref().map(|t| {
            crate::tls::endpoint_connector(t, &spec.ip).inspect_err(|e| {
                error!(dest.id = %spec.id, error = %e, "destination TLS settings unusable; its streams will fail with reason tls");
            })
        });
        let ip_rules = spec
            .ip_table_rules
            .iter()
            .filter_map(|r| match IpTableRule::new(&r.src, &r.spt, &r.app) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(dest.id = %spec.id, rule.app = %r.app, error = %e, "ignoring bad ip_table_rules entry from gateway");
                    None
                }
            })
            .collect();
        let stats = stats.dest(&spec.id);
        Dest {
            spec,
            ip_rules,
            stats,
            tls,
        }
    }
}

impl Shared {
    fn acl_path(&self) -> String {
        self.acl
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .file
            .clone()
    }
}

/// One stream being relayed, as the status page shows it.
struct ActiveStream {
    stream_id: u32,
    dest_id: String,
    dest_addr: String,
    caller: String,
    started: Instant,
    counters: crate::relay::Counters,
}

/// Removes a stream from the active table when its task ends, however it ends.
struct ActiveGuard<'a> {
    shared: &'a Shared,
    key: u64,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.shared
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

struct Shared {
    cfg: ClientConfig,
    /// Streams being relayed now (bounded by the tunnels' `max_streams`).
    active: std::sync::Mutex<HashMap<u64, Arc<ActiveStream>>>,
    next_active: AtomicU64,
    acl: RwLock<Arc<Acl>>,
    /// Where the ACL came from, when it came from a file: reload and edits go through it.
    acl_file: Option<AclFile>,
    hello: Hello,
    mux_cfg: MuxConfig,
    status: watch::Sender<Status>,
    stats: ClientStats,
    tracker: TaskTracker,
    /// Cancelled at shutdown: stops the reverse listeners.
    stop: CancellationToken,
}

/// A configured, not yet running client.
pub struct Client {
    shared: Arc<Shared>,
    links: Vec<Arc<Link>>,
    logs: Option<tokio::sync::mpsc::Receiver<ForwardedLog>>,
}

/// Read access to a running client.
#[derive(Clone)]
pub struct ClientHandle {
    shared: Arc<Shared>,
    links: Vec<Arc<Link>>,
}

fn detect_env() -> &'static str {
    if std::env::var_os("NOTIFY_SOCKET").is_some() || std::env::var_os("INVOCATION_ID").is_some() {
        "systemd"
    } else if std::path::Path::new("/.dockerenv").exists()
        || std::env::var_os("container").is_some()
    {
        "docker"
    } else {
        "standalone"
    }
}

impl Client {
    pub fn new(cfg: ClientConfig, acl: Acl) -> Result<Client, ClientError> {
        let mut links = Vec::new();
        for g in &cfg.gateways {
            let tls = tunnel::client_tls(&g.trust).map_err(|message| ClientError::Tls {
                gateway: g.gateway_id.clone(),
                message,
            })?;
            links.push(Arc::new(Link {
                cfg: g.clone(),
                tls,
                dests: RwLock::new(Arc::new(HashMap::new())),
                live: std::sync::Mutex::new(Vec::new()),
                reverse: Default::default(),
            }));
        }
        let hello = Hello {
            version: env!("CARGO_PKG_VERSION").into(),
            proto: [PROTO_MAJOR, PROTO_MINOR],
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            env: detect_env().into(),
            instance: format!("{:032x}", rand::random::<u128>()),
            features: vec![FEATURE_DEFLATE.to_owned()],
        };
        let l = &cfg.limits;
        let mux_cfg = MuxConfig {
            role: Role::Client,
            initial_window: l.stream_window,
            max_window: l.max_stream_window,
            tunnel_window_budget: l.tunnel_buffer,
            max_streams: l.max_streams,
            accept_backlog: l.accept_backlog,
            keepalive_interval: cfg.keepalive.interval,
            keepalive_timeout: cfg.keepalive.timeout,
            window_budget: crate::mux::WindowBudget::new(l.window_budget),
        };
        let shared = Arc::new(Shared {
            cfg,
            acl: RwLock::new(Arc::new(acl)),
            acl_file: None,
            active: std::sync::Mutex::new(HashMap::new()),
            next_active: AtomicU64::new(0),
            hello,
            mux_cfg,
            status: watch::channel(Status::default()).0,
            stats: ClientStats::default(),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        });
        Ok(Client {
            shared,
            links,
            logs: None,
        })
    }

    /// Ties the ACL to its file: SIGHUP-style reloads, reloads when the file changes, and
    /// runtime edits written back to it.
    pub fn with_acl_file(mut self, path: PathBuf) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.acl_file = Some(AclFile::new(path, shared.cfg.default_policy));
        }
        self
    }

    /// Forwards these warn/error lines to every gateway (for its clientLogs), best effort.
    pub fn with_log_forwarding(
        mut self,
        logs: Option<tokio::sync::mpsc::Receiver<ForwardedLog>>,
    ) -> Self {
        self.logs = logs;
        self
    }

    pub fn handle(&self) -> ClientHandle {
        ClientHandle {
            shared: self.shared.clone(),
            links: self.links.clone(),
        }
    }

    /// Runs until `shutdown`, then drains streams for at most `shutdown_grace`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        info!(version = %self.shared.hello.version, env = %self.shared.hello.env, gateways = self.links.len(), "client started");
        let slots = TaskTracker::new();
        for link in &self.links {
            for slot in 0..link.cfg.tunnels {
                slots.spawn(supervise_slot(
                    self.shared.clone(),
                    link.clone(),
                    slot,
                    shutdown.clone(),
                ));
            }
        }
        if let Some(mut logs) = self.logs.take() {
            let links = self.links.clone();
            let stop = shutdown.clone();
            slots.spawn(async move {
                loop {
                    let line = tokio::select! {
                        l = logs.recv() => match l { Some(l) => l, None => break },
                        _ = stop.cancelled() => break,
                    };
                    let push = LogPush {
                        level: line.level,
                        message: line.message,
                        time: line.time,
                    };
                    let Ok(payload) = serde_json::to_vec(&push) else {
                        continue;
                    };
                    let payload = bytes::Bytes::from(payload);
                    for link in &links {
                        let first = link.live_tunnels().first().cloned();
                        if let Some(m) = first {
                            m.send_log(payload.clone());
                        }
                    }
                }
            });
        }
        if self.shared.acl_file.is_some() {
            let handle = self.handle();
            let stop = shutdown.clone();
            slots.spawn(async move {
                let mut tick = tokio::time::interval(ACL_POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => handle.reload_acl_if_changed(),
                        _ = stop.cancelled() => break,
                    }
                }
            });
        }
        if let (Some(addr), Some(link)) = (self.shared.cfg.socks5_listen, self.links.first()) {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    let stop = self.shared.stop.clone();
                    let fut = socks::serve(self.shared.clone(), link.clone(), l, stop);
                    self.shared.tracker.spawn(fut);
                }
                Err(e) => error!(socks5.listen = %addr, error = %e, "cannot listen for SOCKS5"),
            }
        }
        let stop = self.shared.stop.clone();
        let stopping = shutdown.clone();
        slots.spawn(async move {
            stopping.cancelled().await;
            stop.cancel();
        });
        slots.close();
        slots.wait().await;
        self.shared.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.tracker.wait()).await;
        info!("client stopped");
    }
}

impl ClientHandle {
    /// Watch the status (tunnels up, client ids).
    pub fn status(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// The process's receive-window budget (`limits.window_budget`), for metrics.
    pub fn window_budget(&self) -> Arc<crate::mux::WindowBudget> {
        self.shared.mux_cfg.window_budget.clone()
    }

    pub fn stats(&self) -> &ClientStats {
        &self.shared.stats
    }

    /// The `[limits]` in force, for metrics.
    pub fn limits(&self) -> crate::config::Limits {
        self.shared.cfg.limits
    }

    /// Replaces the ACL for new streams.
    pub fn set_acl(&self, acl: Acl) {
        *self.shared.acl.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(acl);
    }

    /// Streams being relayed now.
    pub fn active_streams(&self) -> usize {
        self.shared
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Per live tunnel: gateway id, minimum RTT (seconds) and bytes buffered for slow readers.
    pub fn tunnel_gauges(&self) -> Vec<(String, Option<f64>, u64)> {
        self.links
            .iter()
            .flat_map(|l| {
                l.live_tunnels()
                    .iter()
                    .map(|m| {
                        (
                            l.cfg.gateway_id.clone(),
                            m.rtt().map(|r| r.as_secs_f64()),
                            m.stats().buffered.load(Ordering::Relaxed),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Everything `/v1/status` and `sgw status` show: tunnels per gateway with RTT,
    /// destinations, active streams with addresses and live byte counts.
    pub fn snapshot(&self) -> serde_json::Value {
        use serde_json::json;
        let sh = &self.shared;
        let st = sh.status.borrow().clone();
        let gateways: Vec<_> = self
            .links
            .iter()
            .map(|l| {
                let tunnels: Vec<_> = l
                    .live_tunnels()
                    .iter()
                    .map(|m| {
                        json!({
                            "rtt_ms": m.rtt().map(|r| r.as_secs_f64() * 1000.0),
                            "active_streams": m.active_streams(),
                        })
                    })
                    .collect();
                let dests: Vec<_> = l
                    .dests
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(|d| json!({
                        "id": d.spec.id, "protocol": d.spec.protocol,
                        "addr": format!("{}:{}", d.spec.ip, d.spec.port), "private": d.spec.private,
                    }))
                    .collect();
                let client_id = st
                    .client_ids
                    .iter()
                    .find(|(g, _)| *g == l.cfg.gateway_id)
                    .map(|(_, c)| c.clone());
                json!({
                    "gateway_id": l.cfg.gateway_id,
                    "url": l.cfg.url.to_string(),
                    "via_proxy": l.cfg.proxy.as_ref().map(|p| format!("{}:{}", p.host, p.port)),
                    "client_id": client_id,
                    "tunnels": tunnels,
                    "destinations": dests,
                })
            })
            .collect();
        let mut streams: Vec<Arc<ActiveStream>> = sh
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        streams.sort_by_key(|s| s.started);
        let streams: Vec<_> = streams
            .iter()
            .map(|s| {
                json!({
                    "stream_id": s.stream_id, "dest_id": s.dest_id, "dest_addr": s.dest_addr,
                    "caller_addr": s.caller,
                    "bytes_up": s.counters.to_socket.load(Ordering::Relaxed),
                    "bytes_down": s.counters.to_stream.load(Ordering::Relaxed),
                    "age_ms": s.started.elapsed().as_millis() as u64,
                })
            })
            .collect();
        let acl = self.acl();
        json!({
            "version": sh.hello.version,
            "tunnels_up": st.tunnels_up,
            "gateways": gateways,
            "active_streams": streams,
            "acl": { "file": acl.file, "rules": acl.rules.len() },
        })
    }

    /// The rule set new streams are checked against.
    pub fn acl(&self) -> Arc<Acl> {
        self.shared
            .acl
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads the ACL file, all or nothing: on any error the old rules stay and every error
    /// is logged. Returns the errors too (for SIGHUP and the admin API).
    pub fn reload_acl(&self) -> Result<usize, Vec<String>> {
        let Some(file) = &self.shared.acl_file else {
            return Err(vec!["this client has no ACL file".into()]);
        };
        match file.load() {
            Ok(a) => {
                let n = a.rules.len();
                info!(rules = n, file = %file.path().display(), "ACL reloaded");
                self.shared
                    .stats
                    .acl_reloads
                    .fetch_add(1, Ordering::Relaxed);
                self.set_acl(a);
                Ok(n)
            }
            Err(errs) => {
                self.shared
                    .stats
                    .acl_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                for e in &errs {
                    error!(error = %e, "ACL reload failed, keeping the old rules");
                }
                Err(errs)
            }
        }
    }

    fn reload_acl_if_changed(&self) {
        if self.shared.acl_file.as_ref().is_some_and(|f| f.changed()) {
            let _ = self.reload_acl();
        }
    }

    /// Adds a rule (before line `before`, or at the end), writes the file back and applies the
    /// new rule set to new streams at once. Returns the rule's line.
    pub fn acl_add(&self, rule: &str, before: Option<usize>) -> Result<usize, AclEditError> {
        let file = self.acl_file()?;
        let (acl, line) = file.add(rule, before)?;
        info!(acl.line = line, acl.rule = %rule.trim(), "ACL rule added");
        self.set_acl(acl);
        Ok(line)
    }

    /// Removes a rule by text or line, writes the file back and applies the new rule set.
    pub fn acl_remove(
        &self,
        rule: Option<&str>,
        line: Option<usize>,
    ) -> Result<usize, AclEditError> {
        let file = self.acl_file()?;
        let (acl, removed) = file.remove(rule, line)?;
        info!(acl.line = removed, "ACL rule removed");
        self.set_acl(acl);
        Ok(removed)
    }

    fn acl_file(&self) -> Result<&AclFile, AclEditError> {
        self.shared
            .acl_file
            .as_ref()
            .ok_or_else(|| AclEditError::Invalid("this client has no ACL file".into()))
    }
}

/// Delay before reconnect attempt `attempt` (0-based): exponential from `initial` to `max`,
/// with full jitter in the upper half so a fleet does not reconnect in lockstep.
pub fn backoff(attempt: u32, r: &Reconnect) -> Duration {
    let exp = r.initial.saturating_mul(1u32 << attempt.min(20));
    let cap = exp.min(r.max);
    let half = cap / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// Keeps one tunnel slot running: a slot task that ends or panics (a bug, never the peer's
/// doing by design) is logged and started again after a pause, so a gateway or proxy can
/// never take a tunnel away for good.
async fn supervise_slot(
    shared: Arc<Shared>,
    link: Arc<Link>,
    slot: usize,
    shutdown: CancellationToken,
) {
    loop {
        let task = tokio::spawn(tunnel_slot(
            shared.clone(),
            link.clone(),
            slot,
            shutdown.clone(),
        ));
        let why = match task.await {
            _ if shutdown.is_cancelled() => return,
            Ok(()) => "ended".to_string(),
            Err(e) if e.is_panic() => "panicked".to_string(),
            Err(e) => e.to_string(),
        };
        shared.stats.tunnel_failures.fetch_add(1, Ordering::Relaxed);
        error!(gateway.id = %link.cfg.gateway_id, tunnel.slot = slot, reason = "internal", "tunnel slot {why}; starting it again");
        tokio::select! {
            _ = tokio::time::sleep(SLOT_RESTART_PAUSE) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The pause before a failed slot task is started again.
const SLOT_RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Keeps one tunnel to one gateway up, forever (until shutdown).
async fn tunnel_slot(
    shared: Arc<Shared>,
    link: Arc<Link>,
    slot: usize,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("tunnel", gateway.id = %link.cfg.gateway_id, gateway.url = %link.cfg.url, tunnel.slot = slot);
    async move {
        let mut attempt = 0u32;
        loop {
            let connect = tunnel::connect(&link.cfg, &link.tls, &shared.hello);
            let res = tokio::select! {
                r = connect => r,
                _ = shutdown.cancelled() => return,
            };
            match res {
                Ok((ws, welcome)) => {
                    attempt = 0;
                    shared.stats.tunnel_connects.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::info_span!("up", client.id = %welcome.client_id);
                    let reason = serve_tunnel(&shared, &link, ws, &welcome.client_id, &shutdown).instrument(span).await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    warn!(client.id = %welcome.client_id, reason = %reason, "tunnel down");
                }
                Err(ConnectError::Unauthorized) => {
                    shared.stats.tunnel_failures.fetch_add(1, Ordering::Relaxed);
                    error!("gateway rejected the security token; check token / token_file for this gateway");
                }
                Err(ConnectError::Proxy(e)) => {
                    shared.stats.tunnel_failures.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, "outbound proxy did not open the tunnel; check outbound_proxy");
                }
                Err(e) => {
                    shared.stats.tunnel_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "cannot connect tunnel");
                }
            }
            let delay = backoff(attempt, &shared.cfg.reconnect);
            attempt = attempt.saturating_add(1);
            debug!(delay_ms = delay.as_millis() as u64, "reconnecting after backoff");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
    .instrument(span)
    .await
}

fn update_status(shared: &Shared, gateway_id: &str, client_id: &str, delta: isize) {
    shared.status.send_modify(|s| {
        s.tunnels_up = s.tunnels_up.saturating_add_signed(delta);
        if !s.client_ids.iter().any(|(g, _)| g == gateway_id) {
            s.client_ids
                .push((gateway_id.to_owned(), client_id.to_owned()));
        } else if let Some(e) = s.client_ids.iter_mut().find(|(g, _)| g == gateway_id) {
            e.1 = client_id.to_owned();
        }
    });
}

fn apply_config(shared: &Arc<Shared>, link: &Arc<Link>, payload: &[u8]) {
    match serde_json::from_slice::<ConfigPush>(payload) {
        Ok(push) => {
            let n = push.destinations.len();
            let map: HashMap<String, Arc<Dest>> = push
                .destinations
                .into_iter()
                .map(|d| {
                    let local = shared.cfg.destinations.get(&d.id);
                    (d.id.clone(), Arc::new(Dest::new(d, &shared.stats, local)))
                })
                .collect();
            reverse::reconcile(shared, link, &map);
            *link.dests.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
            info!(destinations = n, "destinations updated by gateway");
        }
        Err(e) => warn!(error = %e, "ignoring malformed destination push from gateway"),
    }
}

/// Serves one connected tunnel until it closes; returns why it closed.
async fn serve_tunnel(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    ws: tunnel::ClientWs,
    client_id: &str,
    shutdown: &CancellationToken,
) -> String {
    let (r, w) = tunnel::split(ws);
    let (mux, mut events) = Mux::start(r, w, shared.mux_cfg.clone());
    link.live_tunnels().push(mux.clone());
    update_status(shared, &link.cfg.gateway_id, client_id, 1);
    info!("tunnel up");
    loop {
        tokio::select! {
            inc = events.incoming.recv() => match inc {
                Some(inc) => {
                    // The reader stores CONFIG before queueing later OPENs: apply it first.
                    if events.config.has_changed().unwrap_or(false) {
                        if let Some(p) = events.config.borrow_and_update().clone() {
                            apply_config(shared, link, &p);
                        }
                    }
                    let fut = serve_open(shared.clone(), link.clone(), inc, client_id.to_owned());
                    shared.tracker.spawn(fut);
                }
                None => break,
            },
            changed = events.config.changed() => {
                if changed.is_err() {
                    break;
                }
                if let Some(p) = events.config.borrow_and_update().clone() {
                    apply_config(shared, link, &p);
                }
            }
            _ = mux.closed() => break,
            _ = shutdown.cancelled() => {
                info!(active = mux.active_streams(), grace_ms = shared.cfg.shutdown_grace.as_millis() as u64, "draining tunnel");
                drain(&mux, shared.cfg.shutdown_grace).await;
                break;
            }
        }
    }
    link.live_tunnels().retain(|m| !m.ptr_eq(&mux));
    update_status(shared, &link.cfg.gateway_id, client_id, -1);
    mux.close("client closed the tunnel");
    mux.close_reason().unwrap_or_default()
}

/// Stops new streams and waits, bounded, for open ones to finish.
async fn drain(mux: &Mux, grace: Duration) {
    mux.go_away(Reason::Shutdown, "client shutting down");
    let deadline = tokio::time::Instant::now() + grace;
    while mux.active_streams() > 0 && !mux.is_closed() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Why a stream was not dialled.
enum Refusal {
    /// `why` is for the local log (the rule's text, or which policy); `line` is the deciding
    /// rule's line, all the gateway is told.
    Denied {
        reason: DenyReason,
        why: String,
        line: Option<usize>,
    },
    Failed(dial::DialError),
}

/// Discriminants index [`DestStats::denied`].
#[derive(Clone, Copy)]
enum DenyReason {
    Rule = 0,
    Default = 1,
    Caller = 2,
}

impl DenyReason {
    fn as_str(self) -> &'static str {
        match self {
            DenyReason::Rule => "acl_rule",
            DenyReason::Default => "acl_default",
            DenyReason::Caller => "ip_table_rules",
        }
    }
}

/// The client's veto, then the dial: caller rules, one resolution, the ACL on every candidate
/// address, and a connection only to an address the ACL allowed.
/// Vets (private destination callers, the ACL for the endpoint, with `path` for HTTP
/// requests, and for any proxy) and connects: direct or through SOCKS, then TLS when asked.
/// Also returns the endpoint address reached, when known (not for names only a proxy
/// resolves).
async fn vet_and_dial(
    shared: &Shared,
    dest: &Dest,
    caller: &str,
    path: Option<&str>,
) -> Result<(Conn, Option<IpAddr>), Refusal> {
    let spec = &dest.spec;
    let caller: Option<SocketAddr> = caller.parse().ok();
    // Counted where every denial ends up: `record_denial`.
    let deny = |reason: DenyReason, why: String, line: Option<usize>| Refusal::Denied {
        reason,
        why,
        line,
    };
    if !acl::caller_admitted(spec.private, &dest.ip_rules, caller) {
        return Err(deny(
            DenyReason::Caller,
            "ip_table_rules of this private destination".into(),
            None,
        ));
    }
    let acl = shared.acl.read().unwrap_or_else(|e| e.into_inner()).clone();
    // One deadline for the whole way in: lookup, connect, SOCKS, TLS.
    let timeout = Duration::from_secs(u64::from(spec.timeout.clamp(1, 180)));
    let deadline = tokio::time::Instant::now() + timeout;
    // Reading the zoned clock costs more than the decision itself: only when a rule asks.
    let at = acl.has_time_windows().then(LocalTime::now);
    let denied = |d: &Decision| match d.line.and_then(|l| acl.rule_at(l)) {
        Some(r) => deny(DenyReason::Rule, r.text.clone(), d.line),
        None => deny(DenyReason::Default, "default policy (deny)".into(), None),
    };
    let vet = |host: &str, port: u16, path: Option<&str>| {
        let acl = &acl;
        let host = host.to_owned();
        let path = path.map(str::to_owned);
        async move {
            let mut req = Request::new(&host, port);
            req.at = at;
            req.from = caller;
            req.path = path.as_deref();
            match dial::resolve(&host, port, deadline).await {
                Ok(addrs) => acl.allowed_addrs(&req, &addrs).map(Vetted::Addrs),
                // Unresolvable: name rules still decide, so a denied name is reported as
                // denied; an allowed one may still be reached by a proxy that can resolve it.
                Err(e) => {
                    let d = acl.check(&Request { addr: None, ..req });
                    if d.allow {
                        Ok(Vetted::Name(e))
                    } else {
                        Err(d)
                    }
                }
            }
        }
    };
    let target = vet(&spec.ip, spec.port, path)
        .await
        .map_err(|d| denied(&d))?;
    if spec.protocol == "UDP" {
        // Config forbids proxies and TLS for UDP destinations.
        return match target {
            Vetted::Addrs(a) => dial::udp(&a).await.map(|s| (Conn::Udp(s), None)),
            Vetted::Name(e) => Err(e),
        }
        .map_err(Refusal::Failed);
    }
    let (tcp, reached) = match (&spec.proxy, target) {
        (None, Vetted::Addrs(a)) => dial::tcp_any(&a, deadline).await.map(|t| {
            let ip = t.peer_addr().ok().map(|a| a.ip());
            (t, ip)
        }),
        (None, Vetted::Name(e)) => Err(e),
        (Some(p), target) => {
            // The proxy is an on-prem dial like any other: the ACL must allow it too.
            let via = match vet(&p.host, p.port, None).await.map_err(|d| denied(&d))? {
                Vetted::Addrs(a) => a,
                Vetted::Name(e) => return Err(Refusal::Failed(as_proxy(e))),
            };
            let tcp = dial::tcp_any(&via, deadline).await.map_err(as_proxy);
            let (t, ip) = match target {
                Vetted::Addrs(a) => (dial::Target::Addr(a[0]), Some(a[0].ip())),
                Vetted::Name(_) => (dial::Target::Name(spec.ip.clone(), spec.port), None),
            };
            match tcp {
                Ok(tcp) => dial::socks_connect(tcp, p, &t, deadline)
                    .await
                    .map(|s| (s, ip)),
                Err(e) => Err(e),
            }
        }
    }
    .map_err(Refusal::Failed)?;
    let conn = match &dest.tls {
        None => Ok(Conn::Tcp(tcp)),
        Some(Err(e)) => Err(Refusal::Failed(dial::DialError {
            reason: Reason::Tls,
            message: e.clone(),
        })),
        Some(Ok(ep)) => {
            if ep.unverified {
                warn!(
                    reason = "reject_unauth_false",
                    "endpoint certificate NOT verified (reject_unauth = false): anyone on the path can impersonate it"
                );
            }
            let tls = dial::tls(tcp, ep, deadline)
                .await
                .map_err(Refusal::Failed)?;
            Ok(Conn::Tls(Box::new(tls)))
        }
    }?;
    Ok((conn, reached))
}

/// A destination address check's outcome when not denied.
enum Vetted {
    /// The allowed addresses of the resolved name.
    Addrs(Vec<SocketAddr>),
    /// The name does not resolve here but the ACL allows it by name.
    Name(dial::DialError),
}

/// A failure reaching the proxy itself is the proxy's failure.
fn as_proxy(e: dial::DialError) -> dial::DialError {
    dial::DialError {
        reason: Reason::Proxy,
        message: format!("cannot reach the SOCKS proxy: {}", e.message),
    }
}

/// One of `limits.max_udp_flows`, held while a UDP flow lives.
struct FlowSlot<'a>(&'a ClientStats);

impl<'a> FlowSlot<'a> {
    fn take(shared: &'a Shared) -> Option<Self> {
        let max = shared.cfg.limits.max_udp_flows as u64;
        let s = &shared.stats;
        s.udp_flows
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| FlowSlot(s))
    }
}

impl Drop for FlowSlot<'_> {
    fn drop(&mut self) {
        self.0.udp_flows.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Logs and counts one denial; returns what the gateway (and caller) may be told: the rule's
/// line, never its text.
fn record_denial(
    shared: &Shared,
    dest: &Dest,
    reason: DenyReason,
    why: &str,
    line: Option<usize>,
    what: &'static str,
) -> String {
    let by_reason = match reason {
        DenyReason::Rule => &shared.stats.denied_by_rule,
        DenyReason::Default => &shared.stats.denied_by_default,
        DenyReason::Caller => &shared.stats.denied_by_caller,
    };
    by_reason.fetch_add(1, Ordering::Relaxed);
    shared.stats.streams_denied.fetch_add(1, Ordering::Relaxed);
    dest.stats.denied[reason as usize].fetch_add(1, Ordering::Relaxed);
    match line {
        Some(l) => {
            warn!(reason = %reason.as_str(), acl.file = %shared.acl_path(), acl.line = l, acl.rule = ?why, "{what}")
        }
        None => warn!(reason = %reason.as_str(), acl.rule = ?why, "{what}"),
    }
    match (reason, line) {
        (DenyReason::Caller, _) => "denied by the client: caller not in ip_table_rules".to_string(),
        (_, Some(l)) => format!("denied by the client's ACL, rule at line {l}"),
        (_, None) => "denied by the client's ACL default policy".to_string(),
    }
}

/// The connection to the endpoint.
enum Conn {
    /// An HTTP(S) destination: connections are made per request by [`http`].
    Http,
    Udp(tokio::net::UdpSocket),
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// One stream the gateway opened: destination lookup, ACL, dial, relay.
async fn serve_open(shared: Arc<Shared>, link: Arc<Link>, inc: Incoming, client_id: String) {
    let span = tracing::info_span!(
        "stream",
        client.id = %client_id,
        stream.id = inc.id(),
        dest.id = %crate::telemetry::clean(&inc.meta.dest, 128),
        caller.addr = %crate::telemetry::clean(&inc.meta.caller, 64),
        dest.addr = tracing::field::Empty,
        http.requests = tracing::field::Empty,
        http.denied = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        let dest = link.dest(&inc.meta.dest);
        let Some(dest) = dest else {
            shared.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
            info!(
                reason = "unknown_dest",
                "stream refused: no such destination"
            );
            let msg = format!("client has no destination `{}`", inc.meta.dest);
            inc.reject(Reason::UnknownDest, &msg).await;
            return;
        };
        if dest.spec.reverse {
            // Its endpoint is on the cloud side: the gateway dials it, never the client.
            shared.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
            warn!(
                reason = "unknown_dest",
                "stream refused: gateway opened a stream for a reverse destination"
            );
            inc.reject(
                Reason::UnknownDest,
                "a reverse destination is dialled by the gateway",
            )
            .await;
            return;
        }
        let dest_addr = format!("{}:{}", dest.spec.ip, dest.spec.port);
        tracing::Span::current().record("dest.addr", tracing::field::display(&dest_addr));
        let inc_caller = inc.meta.caller.clone();
        let compress = match inc.meta.compress.as_deref() {
            None => false,
            Some(FEATURE_DEFLATE) => true,
            Some(other) => {
                shared.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
                let msg = format!("unknown compression `{other}`");
                warn!(reason = "protocol", error = %msg, "stream refused");
                inc.reject(Reason::Protocol, &msg).await;
                return;
            }
        };
        let udp = dest.spec.protocol == "UDP";
        // Counted from here so concurrent opens cannot overshoot the limit.
        let _flow = if udp {
            match FlowSlot::take(&shared) {
                Some(slot) => Some(slot),
                None => {
                    shared
                        .stats
                        .udp_flows_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    let limit = shared.cfg.limits.max_udp_flows;
                    warn!(
                        reason = "limit",
                        limit, "UDP flow refused: max_udp_flows reached"
                    );
                    inc.reject(
                        Reason::Limit,
                        &format!("client has {limit} UDP flows open (max_udp_flows)"),
                    )
                    .await;
                    return;
                }
            }
        } else {
            None
        };
        // HTTP is judged and dialled per request, once the stream is open.
        let http = matches!(dest.spec.protocol.as_str(), "HTTP" | "HTTPS");
        let dialled = if http {
            http::admit_caller(&dest, &inc.meta.caller).map(|()| Conn::Http)
        } else {
            vet_and_dial(&shared, &dest, &inc.meta.caller, None)
                .await
                .map(|(c, _)| c)
        };
        let conn = match dialled {
            Ok(c) => c,
            Err(Refusal::Denied { reason, why, line }) => {
                let public = record_denial(&shared, &dest, reason, &why, line, "stream denied");
                inc.reject(Reason::AclDenied, &public).await;
                return;
            }
            Err(Refusal::Failed(e)) => {
                shared.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
                *dest
                    .stats
                    .failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(e.reason.as_str())
                    .or_default() += 1;
                info!(reason = %e.reason, error = %e.message, "dial failed");
                inc.reject(e.reason, &e.message).await;
                return;
            }
        };
        let Ok(stream) = inc.accept().await else {
            return;
        };
        shared.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        let per_dest = &dest.stats;
        per_dest.opened.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ActiveStream {
            stream_id: stream.id(),
            dest_id: dest.spec.id.clone(),
            dest_addr,
            caller: inc_caller.clone(),
            started: Instant::now(),
            counters: crate::relay::Counters::default(),
        });
        let key = shared.next_active.fetch_add(1, Ordering::Relaxed);
        shared
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, entry.clone());
        let _guard = ActiveGuard {
            shared: &shared,
            key,
        };
        let opts = Options {
            compress,
            idle: dest.spec.idle(),
        };
        let out = match conn {
            Conn::Tcp(tcp) => relay_with(tcp, stream, &entry.counters, opts).await,
            Conn::Tls(tls) => relay_with(*tls, stream, &entry.counters, opts).await,
            Conn::Http => {
                let (ours, theirs) = tokio::io::duplex(crate::proto::MAX_DATA);
                let up = http::ClientUpstream {
                    shared: shared.clone(),
                    dest: dest.clone(),
                    caller: inc_caller.clone(),
                };
                let mut settings = http::settings(&dest.spec);
                settings.caller = inc_caller.parse().ok();
                let (out, counts) = tokio::join!(
                    relay_with(ours, stream, &entry.counters, opts),
                    crate::http::serve(theirs, up, settings)
                );
                // Shown on the closing line with the stream's other fields.
                let span = tracing::Span::current();
                span.record("http.requests", counts.requests);
                span.record("http.denied", counts.denied);
                out
            }
            Conn::Udp(sock) => {
                let c = crate::udp::FlowCounters::default();
                let idle = dest.spec.udp_expiry();
                let sock = crate::udp::Connected::new(sock);
                let e = crate::udp::relay_flow(sock, stream, idle, &c, &shared.stats.udp).await;
                c.log_closed(Facing::Endpoint, started, &e);
                return;
            }
        };
        let d = out.log_closed(Facing::Endpoint, started);
        shared.stats.record(per_dest, &d);
    }
    .instrument(span)
    .await
}
