//! What the gateway's tasks share: [`GatewayState`] (TLS, tunnel settings, the gateway ids
//! served now and their destination listeners, counters, the task tracker).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::config::Destination;

use super::registry::{Tenant, TunnelCaps};
use super::{GatewayError, GatewayStats};
use crate::mux::MuxConfig;

pub(super) struct GatewayState {
    pub tls: TlsAcceptor,
    pub mux_cfg: MuxConfig,
    /// Gateway ids served now; changed by [`super::apply::apply`] and [`super::apply::remove`].
    pub tenants: RwLock<HashMap<String, Arc<Tenant>>>,
    /// Destination listeners by (gateway id, destination id).
    pub listeners: Mutex<HashMap<(String, String), Listening>>,
    /// Serialises configuration changes.
    pub apply_lock: tokio::sync::Mutex<()>,
    /// Parent of every destination listener's token; cancelled at shutdown.
    pub root: CancellationToken,
    pub stats: GatewayStats,
    pub tracker: TaskTracker,
    pub shutdown_grace: Duration,
    pub max_udp_flows: usize,
    /// Tunnels per client process and per gateway id (`limits.max_tunnels_per_*`).
    pub tunnel_caps: TunnelCaps,
    /// Destinations one gateway id may have (`limits.max_destinations`).
    pub max_destinations: usize,
    pub udp_flow_buffer: u64,
    /// Per flow while its stream opens, and for all flows (`limits.udp_pending_buffer`,
    /// `limits.udp_buffer_total`).
    pub udp_pending_buffer: u64,
    pub udp_buffer_total: u64,
    /// The top-level `egress_allow`: the policy of gateway ids from gateway.toml that have
    /// none of their own ([`crate::config::Egress::FileDefault`]).
    pub egress: crate::acl::Acl,
    /// `[limits]` as configured, for metrics.
    pub limits: crate::config::Limits,
    /// Tunnel connections in their handshake (`limits.max_pending_handshakes`, in all and by
    /// source).
    pub handshakes: super::handshakes::Handshakes,
    /// Name lookups running for all gateway ids (`limits.max_lookups`).
    pub lookups: Arc<tokio::sync::Semaphore>,
}

impl GatewayState {
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        let t = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        t.get(id).cloned()
    }

    pub fn all_tenants(&self) -> Vec<Arc<Tenant>> {
        let t = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        t.values().cloned().collect()
    }

    pub fn insert_tenant(&self, t: Tenant) -> Arc<Tenant> {
        let t = Arc::new(t);
        let mut m = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        m.insert(t.id.clone(), t.clone());
        t
    }

    pub fn remove_tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        let mut m = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        m.remove(id)
    }

    pub fn lock_listeners(&self) -> MutexGuard<'_, HashMap<(String, String), Listening>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts for the gateway as a whole and for the gateway id.
    pub fn count(&self, tenant: &Tenant, stat: Stat, n: u64) {
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
pub(super) enum Stat {
    Opened,
    Failed,
    Denied,
    Up,
    Down,
}

/// Binds a gateway listener; the error names the address.
pub(super) async fn bind(addr: &str) -> Result<TcpListener, GatewayError> {
    crate::listen::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// How long stopping a listener may take before it is left to finish on its own.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// One destination's listener, running.
pub(super) struct Listening {
    /// The destination as it runs (`cloud_port` is the bound port, never 0).
    pub dest: Destination,
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
}

impl Listening {
    pub async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(STOP_WAIT, self.done).await.is_err() {
            warn!(dest.id = %self.dest.id, "listener did not stop within {} s", STOP_WAIT.as_secs());
        }
    }
}
