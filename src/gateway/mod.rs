//! The cloud side: accepts client tunnels, listens on each destination's `cloud_port`, and
//! for each caller opens a stream on a connected client of that gateway id.
//!
//! One caller's path: [`caller`] (caller rules, caller TLS) → [`registry`]'s `Tenant::open`
//! (pick a client and tunnel, open a stream) → [`crate::relay`]; UDP callers: [`udp`]. One
//! tunnel's path: [`session`] (handshake, register, serve until closed); streams a client
//! opens: [`reverse`]. A configuration change (start, SIGHUP, management API): [`apply`];
//! what a destination looks like on the wire: [`wire`]; the owner's view: [`GatewayHandle`].

mod admin;
mod apply;
mod caller;
mod handle;
mod handshakes;
mod registry;
mod reverse;
mod session;
mod state;
mod udp;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use admin::AdminBackend;
pub use caller::CALLER_TLS_TIMEOUT;
pub use handle::GatewayHandle;
pub use wire::{check, spec_of};

use crate::config::{GatewayConfig, TenantConfig};
use crate::mux::{Mux, MuxConfig, Role};
use crate::proto::Reason;
use crate::tunnel;
use session::serve_tunnel;
use state::{bind, GatewayState};
use wire::warn_odd;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("TLS: gateway {gateway} destination {dest}: {source}")]
    DestTls {
        gateway: String,
        dest: String,
        #[source]
        source: crate::tls::TlsError,
    },
    /// An `egress_allow` entry (of the whole gateway, or of one gateway id) that is not an
    /// ACL `host[:ports]` form.
    #[error("{}{source}", gateway.as_ref().map(|g| format!("gateway {g}: ")).unwrap_or_default())]
    Egress {
        gateway: Option<String>,
        #[source]
        source: crate::acl::AclError,
    },
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
    /// Tunnels refused at TLS or upgrade, by reason code.
    pub tunnels_rejected_by_reason: crate::admin::ReasonCounts,
    pub streams_opened: AtomicU64,
    pub streams_failed: AtomicU64,
    /// Callers refused by a private destination's `ip_table_rules`.
    pub streams_denied: AtomicU64,
    /// Callers whose TLS handshake (`client_tls`) failed or timed out.
    pub caller_tls_failures: AtomicU64,
    /// Caller streams whose first bytes went with the OPEN, before the client answered.
    pub streams_early_data: AtomicU64,
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

impl GatewayStats {
    /// A tunnel refused before it registered, by its reason code.
    pub(crate) fn tunnel_refused(&self, code: &'static str) {
        self.tunnels_rejected.fetch_add(1, Ordering::Relaxed);
        self.tunnels_rejected_by_reason.add(code);
    }
}

/// A bound, not yet running gateway.
pub struct Gateway {
    gw: Arc<GatewayState>,
    tunnel_listener: TcpListener,
}

/// A share as large as the whole it is a share of keeps one gateway id's clients from
/// nothing: worth a line, as the operator may have meant otherwise.
fn warn_shares(l: &crate::config::Limits) {
    for (share, whole, of) in [
        (
            l.max_pending_handshakes_per_gateway,
            l.max_pending_handshakes,
            "max_pending_handshakes_per_gateway",
        ),
        (
            l.max_lookups_per_gateway,
            l.max_lookups,
            "max_lookups_per_gateway",
        ),
    ] {
        if share >= whole {
            warn!(limit = of, "limits.{of} ({share}) is not below the limit for all gateway ids together ({whole}): the clients of one id can use it all up");
        }
    }
}

/// `t` with every destination whose cloud port can't be bound now turned off, each named in
/// an error line: one taken port must not keep every gateway id down.
fn without_taken_ports(mut t: TenantConfig) -> TenantConfig {
    for d in t
        .destinations
        .iter_mut()
        .filter(|d| d.enabled && !d.reverse)
    {
        let addr = (d.cloud_host.as_str(), d.cloud_port);
        let free = if d.protocol == crate::config::Protocol::Udp {
            std::net::UdpSocket::bind(addr).map(drop)
        } else {
            std::net::TcpListener::bind(addr).map(drop)
        };
        if let Err(e) = free {
            error!(gateway.id = %t.id, dest.id = %d.id, cloud.host = %d.cloud_host, cloud.port = d.cloud_port, error = %e, reason = "bind",
                "cannot listen on this destination's cloud port; the gateway starts without it (serve it with SIGHUP, an API change or a restart once the port is free)");
            d.enabled = false;
        }
    }
    t
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
        let tls = tunnel::server_tls(&cfg.tls)?;
        let egress =
            reverse::egress_acl(&cfg.egress_allow).map_err(|source| GatewayError::Egress {
                gateway: None,
                source,
            })?;
        let mux_cfg = MuxConfig::from_limits(Role::Gateway, &cfg.limits, &cfg.keepalive);
        warn_shares(&cfg.limits);
        let gw = Arc::new(GatewayState {
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
            handshakes: handshakes::Handshakes::new(
                cfg.limits.max_pending_handshakes,
                cfg.limits.max_pending_handshakes_per_source,
            ),
            lookups: Arc::new(tokio::sync::Semaphore::new(cfg.limits.max_lookups)),
        });
        for t in cfg.gateways.into_iter().chain(more) {
            warn_odd(&t);
            let applied = match apply::apply(&gw, t.clone()).await {
                // A port held by another program (another local user, say) at start: the
                // rest of the gateway is served, that destination once it is applied again.
                Err(GatewayError::Bind { .. }) => apply::apply(&gw, without_taken_ports(t)).await,
                other => other,
            };
            if let Err(e) = applied {
                gw.root.cancel();
                return Err(e);
            }
        }
        Ok(Gateway {
            gw,
            tunnel_listener,
        })
    }

    pub fn handle(&self) -> GatewayHandle {
        let tunnel_addr = self
            .tunnel_listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        GatewayHandle {
            gw: self.gw.clone(),
            tunnel_addr,
        }
    }

    /// Serves until `shutdown`, then tells clients to go away and lets streams finish for
    /// at most `shutdown_grace`.
    pub async fn run(self, shutdown: CancellationToken) {
        let gw = self.gw;
        if let Ok(a) = self.tunnel_listener.local_addr() {
            info!(tunnel.listen = %a, "gateway started");
        }
        crate::listen::accept_until(&self.tunnel_listener, &shutdown, |tcp, peer| {
            // Until its token is judged a connection is anyone's: strangers hold only so many
            // handshakes, in all and from one address (handshakes.rs).
            match gw.handshakes.admit(peer.ip()) {
                Ok(place) => {
                    let fut = serve_tunnel(gw.clone(), tcp, peer, place, shutdown.clone());
                    gw.tracker.spawn(fut);
                }
                Err(no) => {
                    gw.stats.tunnel_refused("limit");
                    let key = no.key();
                    warn!(peer.addr = %peer, reason = "limit", "tunnel connection closed: limits.{key} reached");
                }
            }
        })
        .await;
        // Drain: no new streams anywhere, open ones get a bounded grace period.
        gw.root.cancel();
        let tunnels: Vec<Mux> = gw
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
        let _ = tokio::time::timeout(gw.shutdown_grace, all_idle).await;
        for m in &tunnels {
            m.close_graceful(Reason::Shutdown, "gateway shut down");
        }
        // A finished stream's last bytes may still be queued: let the writers flush them.
        let closing = async {
            for m in &tunnels {
                m.flushed().await;
            }
        };
        let _ = tokio::time::timeout(crate::mux::CLOSE_FLUSH, closing).await;
        gw.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), gw.tracker.wait()).await;
        info!("gateway stopped");
    }
}
