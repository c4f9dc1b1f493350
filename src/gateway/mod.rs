//! The cloud side: accepts client tunnels, listens on each destination's `cloud_port`, and
//! for each caller opens a stream on a connected client of that gateway id.
//!
//! One caller's path: [`serve_caller`] → [`Tenant::open`] (pick a client and tunnel, open a
//! stream) → [`relay`]. One tunnel's path: [`serve_tunnel`] (auth, hello, register, wait).

mod registry;
mod reverse;
mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

pub use registry::ClientInfo;
use registry::Tenant;

use crate::acl;
use crate::config::{Destination, GatewayConfig};
use crate::mux::{Mux, MuxConfig, Role};
use crate::proto::{
    ConfigPush, DestinationSpec, EndpointTls, Frame, Hidden, IpTableRuleSpec, LogPush, OpenMeta,
    ProxySpec, Reason, Welcome, PROTO_MAJOR, PROTO_MINOR,
};
use crate::relay::{self, relay_with, Counters, Endpoint, Facing, Options};
use crate::tunnel;

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
}

struct Inner {
    tls: TlsAcceptor,
    mux_cfg: MuxConfig,
    tenants: HashMap<String, Arc<Tenant>>,
    stats: GatewayStats,
    dest_addrs: HashMap<String, SocketAddr>,
    tracker: TaskTracker,
    shutdown_grace: Duration,
    max_udp_flows: usize,
    udp_flow_buffer: u64,
    /// What reverse destinations may dial.
    egress: crate::acl::Acl,
    /// TLS to reverse destinations' endpoints, by (gateway id, destination id).
    reverse_tls: HashMap<(String, String), Result<crate::tls::EndpointConnector, String>>,
}

/// A bound, not yet running gateway.
pub struct Gateway {
    inner: Arc<Inner>,
    tunnel_listener: TcpListener,
    dest_listeners: Vec<DestListener>,
    udp_sockets: Vec<(Arc<Tenant>, Destination, tokio::net::UdpSocket)>,
}

/// A destination's cloud port, bound, with its TLS toward callers (`client_tls`).
struct DestListener {
    tenant: Arc<Tenant>,
    dest: Destination,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
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
    /// Binds the tunnel endpoint and every enabled destination's cloud port.
    pub async fn bind(cfg: GatewayConfig) -> Result<Gateway, GatewayError> {
        let tls = tunnel::server_tls(&cfg.tls).map_err(GatewayError::Tls)?;
        let tunnel_listener = bind(&cfg.listen.to_string()).await?;
        let mut tenants = HashMap::new();
        let mut dest_listeners = Vec::new();
        let mut udp_sockets = Vec::new();
        let mut reverse_tls = HashMap::new();
        let egress = reverse::egress_acl(&cfg.egress_allow).map_err(GatewayError::Egress)?;
        let mut dest_addrs = HashMap::new();
        for t in &cfg.gateways {
            if !t.enf_tok_sec {
                warn!(gateway.id = %t.id, "enf_tok_sec = false: clients may join without the security token");
            }
            let push = ConfigPush {
                destinations: t
                    .destinations
                    .iter()
                    .filter(|d| d.enabled)
                    .map(spec_of)
                    .collect(),
            };
            let tenant = Arc::new(Tenant::new(
                t.clone(),
                Bytes::from(serde_json::to_vec(&push).unwrap_or_default()),
            ));
            for d in t
                .destinations
                .iter()
                .filter(|d| d.private && d.ip_table_rules.is_empty())
            {
                warn!(gateway.id = %t.id, dest.id = %d.id, "destination is private with no ip_table_rules: every caller is refused");
            }
            for d in t.destinations.iter().filter(|d| d.reverse) {
                if let Some(spec) = spec_of(d).tls {
                    let ep = crate::tls::endpoint_connector(&spec, &d.ip);
                    reverse_tls.insert((t.id.clone(), d.id.clone()), ep);
                }
            }
            for d in t.destinations.iter().filter(|d| d.enabled && !d.reverse) {
                let addr = if d.cloud_host.contains(':') {
                    format!("[{}]:{}", d.cloud_host, d.cloud_port)
                } else {
                    format!("{}:{}", d.cloud_host, d.cloud_port)
                };
                if d.protocol == crate::config::Protocol::Udp {
                    let s = tokio::net::UdpSocket::bind(&addr).await.map_err(|source| {
                        GatewayError::Bind {
                            addr: format!("udp {addr}"),
                            source,
                        }
                    })?;
                    if let Ok(a) = s.local_addr() {
                        dest_addrs.insert(d.id.clone(), a);
                    }
                    udp_sockets.push((tenant.clone(), d.clone(), s));
                    continue;
                }
                let tls = crate::tls::caller_acceptor(&d.caller_tls).map_err(|e| {
                    GatewayError::Tls(format!("gateway {} destination {}: {e}", t.id, d.id))
                })?;
                let l = bind(&addr).await?;
                if let Ok(a) = l.local_addr() {
                    dest_addrs.insert(d.id.clone(), a);
                }
                dest_listeners.push(DestListener {
                    tenant: tenant.clone(),
                    dest: d.clone(),
                    listener: l,
                    tls,
                });
            }
            tenants.insert(t.id.clone(), tenant);
        }
        let mux_cfg = MuxConfig {
            role: Role::Gateway,
            initial_window: cfg.limits.stream_window,
            max_window: cfg.limits.max_stream_window,
            tunnel_window_budget: cfg.limits.tunnel_buffer,
            max_streams: cfg.limits.max_streams,
            accept_backlog: cfg.limits.accept_backlog,
            keepalive_interval: cfg.keepalive.interval,
            keepalive_timeout: cfg.keepalive.timeout,
        };
        let inner = Arc::new(Inner {
            tls,
            mux_cfg,
            tenants,
            stats: GatewayStats::default(),
            dest_addrs,
            tracker: TaskTracker::new(),
            shutdown_grace: cfg.shutdown_grace,
            max_udp_flows: cfg.limits.max_udp_flows,
            udp_flow_buffer: cfg.limits.udp_flow_buffer,
            egress,
            reverse_tls,
        });
        Ok(Gateway {
            inner,
            tunnel_listener,
            dest_listeners,
            udp_sockets,
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
        for DestListener {
            tenant,
            dest,
            listener,
            tls,
        } in self.dest_listeners
        {
            if let Ok(a) = listener.local_addr() {
                info!(gateway.id = %tenant.cfg.id, dest.id = %dest.id, cloud.addr = %a, dest.addr = %format!("{}:{}", dest.ip, dest.port), client_tls = dest.caller_tls.as_str(), "destination listening");
            }
            let inner2 = inner.clone();
            let shutdown = shutdown.clone();
            inner.tracker.spawn(async move {
                let dest = Arc::new(dest);
                accept_loop(&listener, &shutdown, |tcp, caller| {
                    let fut = serve_caller(
                        inner2.clone(),
                        tenant.clone(),
                        dest.clone(),
                        tls.clone(),
                        tcp,
                        caller,
                    );
                    inner2.tracker.spawn(fut);
                })
                .await
            });
        }
        for (tenant, dest, sock) in self.udp_sockets {
            if let Ok(a) = sock.local_addr() {
                info!(gateway.id = %tenant.cfg.id, dest.id = %dest.id, cloud.addr = %a, protocol = "UDP", dest.addr = %format!("{}:{}", dest.ip, dest.port), "destination listening");
            }
            let fut = udp::serve_udp(
                inner.clone(),
                tenant,
                Arc::new(dest),
                Arc::new(sock),
                shutdown.clone(),
            );
            inner.tracker.spawn(fut);
        }
        let inner2 = inner.clone();
        accept_loop(&self.tunnel_listener, &shutdown, |tcp, peer| {
            let fut = serve_tunnel(inner2.clone(), tcp, peer, shutdown.clone());
            inner2.tracker.spawn(fut);
        })
        .await;
        // Drain: no new streams anywhere, open ones get a bounded grace period.
        let tunnels: Vec<Mux> = inner
            .tenants
            .values()
            .flat_map(|t| t.all_tunnels())
            .collect();
        for m in &tunnels {
            m.go_away(Reason::Shutdown, "gateway shutting down");
        }
        let deadline = tokio::time::Instant::now() + inner.shutdown_grace;
        while tunnels.iter().any(|m| m.active_streams() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for m in &tunnels {
            m.close("gateway shut down");
        }
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

    /// Where a destination's callers connect (resolves port 0 to the bound port).
    pub fn dest_addr(&self, dest_id: &str) -> Option<SocketAddr> {
        self.inner.dest_addrs.get(dest_id).copied()
    }

    /// Connected clients of a gateway id.
    pub fn clients(&self, gateway_id: &str) -> Vec<ClientInfo> {
        self.inner
            .tenants
            .get(gateway_id)
            .map(|t| t.client_infos())
            .unwrap_or_default()
    }

    /// The latest warn/error lines the clients of `gateway_id` pushed: (client id, line).
    pub fn client_logs(&self, gateway_id: &str) -> Vec<(String, LogPush)> {
        self.inner
            .tenants
            .get(gateway_id)
            .map(|t| t.logs())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> &GatewayStats {
        &self.inner.stats
    }

    /// Bytes received from clients and not yet written to callers, over all tunnels.
    pub fn buffered_bytes(&self) -> u64 {
        let tunnels = self.inner.tenants.values().flat_map(|t| t.all_tunnels());
        tunnels
            .map(|m| m.stats().buffered.load(Ordering::Relaxed))
            .sum()
    }

    /// Streams open over all tunnels.
    pub fn active_streams(&self) -> usize {
        self.inner
            .tenants
            .values()
            .flat_map(|t| t.all_tunnels())
            .map(|m| m.active_streams())
            .sum()
    }
}

/// Accepts until shutdown. Accept errors (e.g. out of file descriptors) are logged and
/// retried after a pause instead of spinning.
async fn accept_loop(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    mut on_conn: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => on_conn(tcp, peer),
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One client tunnel from TLS accept to close.
async fn serve_tunnel(
    inner: Arc<Inner>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let accepted = tunnel::accept(tcp, &inner.tls, |req| {
        let tenant = inner.tenants.get(req.gateway_id)?;
        let ok = !tenant.cfg.enf_tok_sec || req.token.is_some_and(|t| tenant.cfg.token.ct_eq(t));
        ok.then(|| tenant.clone())
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
    let span = tracing::info_span!("tunnel", client.id = %client_id, gateway.id = %tenant.cfg.id, peer.addr = %peer);
    async move {
        let welcome = Welcome { client_id: client_id.clone(), gateway_id: tenant.cfg.id.clone(), proto: [PROTO_MAJOR, PROTO_MINOR] };
        let hello_frames = [
            Frame::Welcome(Bytes::from(serde_json::to_vec(&welcome).unwrap_or_default())),
            Frame::Config(tenant.config_push.clone()),
        ];
        for f in &hello_frames {
            if let Err(e) = ws.send(Message::Binary(tunnel::frame_message(f))).await {
                warn!(error = %e, "tunnel lost during handshake");
                return;
            }
        }
        let (r, w) = tunnel::split(ws);
        let (mux, mut events) = Mux::start(r, w, inner.mux_cfg.clone());
        inner.stats.tunnels_accepted.fetch_add(1, Ordering::Relaxed);
        let tunnel_id = tenant.register(&client_id, &hello, mux.clone());
        info!(client.version = %hello.version, client.hostname = %hello.hostname, client.env = %hello.env, "tunnel up");
        loop {
            tokio::select! {
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
        tenant.unregister(&client_id, tunnel_id);
        let reason = mux.close_reason().unwrap_or_default();
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

/// A caller's connection, after TLS when the destination has `client_tls`; or, for reverse
/// destinations, the gateway's own connection to the cloud endpoint.
enum CallerConn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    EndpointTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
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
    let _ = tcp.set_nodelay(true);
    let span = tracing::info_span!(
        "stream",
        dest.id = %dest.id,
        caller.addr = %caller,
        client.id = tracing::field::Empty,
        stream.id = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        // Private destinations drop unknown callers here, before any tunnel traffic; the
        // client checks again (it trusts nothing it did not decide itself).
        if !acl::caller_admitted(dest.private, &dest.ip_table_rules, Some(caller)) {
            inner.stats.streams_denied.fetch_add(1, Ordering::Relaxed);
            warn!(reason = "ip_table_denied", "caller refused: no ip_table_rules entry of this private destination matches it");
            relay::abort(&tcp);
            return;
        }
        // TLS toward the caller first: a caller that cannot complete it costs no stream.
        let conn = match tls {
            None => CallerConn::Plain(tcp),
            Some(acceptor) => match tokio::time::timeout(CALLER_TLS_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => CallerConn::Tls(Box::new(s)),
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
                inner.stats.streams_failed.fetch_add(1, Ordering::Relaxed);
                info!(reason = %reason, error = %message, duration_ms = started.elapsed().as_millis() as u64, "stream refused");
                match &conn {
                    CallerConn::Tls(t) => t.abort(),
                    CallerConn::EndpointTls(t) => t.abort(),
                    CallerConn::Plain(tcp) => relay::abort(tcp),
                }
                return;
            }
        };
        let span = tracing::Span::current();
        span.record("client.id", tracing::field::display(&client_id));
        span.record("stream.id", stream.id());
        inner.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("stream opened");
        // The client enforces the idle timeout (it is the destination side's).
        let opts = Options { compress, idle: None };
        let counters = Counters::default();
        let out = match conn {
            CallerConn::Tls(t) => relay_with(*t, stream, &counters, opts).await,
            CallerConn::Plain(tcp) => relay_with(tcp, stream, &counters, opts).await,
            CallerConn::EndpointTls(t) => relay_with(*t, stream, &counters, opts).await,
        };
        let d = out.log_closed(Facing::Caller, started);
        inner.stats.bytes_up.fetch_add(d.up, Ordering::Relaxed);
        inner.stats.bytes_down.fetch_add(d.down, Ordering::Relaxed);
    }
    .instrument(span)
    .await
}
