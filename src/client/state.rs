//! What the client's tasks share: the client-wide [`ClientState`], one [`GatewayPeer`] per
//! configured gateway, the destinations it pushed ([`PushedDest`]), and the table of streams
//! being relayed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use super::acl_file::AclFile;
use super::stats::{ClientStats, DestStats};
use super::status::Status;
use crate::acl::Acl;
use crate::config::{ClientConfig, DestOverride, GatewayLink, IpTableRule};
use crate::mux::{Mux, MuxConfig};
use crate::proto::{DestinationSpec, Hello};
use crate::tls::EndpointConnector;

/// Client-wide state, one per process.
pub(super) struct ClientState {
    pub cfg: ClientConfig,
    /// Streams being relayed now (bounded by the tunnels' `max_streams`).
    pub active: Mutex<HashMap<u64, Arc<ActiveStream>>>,
    pub next_active: AtomicU64,
    pub acl: RwLock<Arc<Acl>>,
    /// Where the ACL came from, when it came from a file: reload and edits go through it.
    pub acl_file: Option<AclFile>,
    /// Held from reading or writing the ACL file until its rules are in force, so a reload
    /// that read the file before an edit can't put the older rules back after it.
    pub acl_writes: Mutex<()>,
    pub hello: Hello,
    pub mux_cfg: MuxConfig,
    pub status: watch::Sender<Status>,
    pub stats: ClientStats,
    pub tracker: TaskTracker,
    /// Cancelled at shutdown: stops the reverse listeners.
    pub stop: CancellationToken,
}

impl ClientState {
    /// The rule set new streams are checked against.
    pub fn acl(&self) -> Arc<Acl> {
        self.acl.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_acl(&self, acl: Acl) {
        *self.acl.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(acl);
    }

    pub fn acl_path(&self) -> String {
        self.acl().file.clone()
    }

    pub fn lock_active(&self) -> MutexGuard<'_, HashMap<u64, Arc<ActiveStream>>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists a stream in the status table until the guard drops.
    pub fn track(&self, stream: ActiveStream) -> (Arc<ActiveStream>, ActiveGuard<'_>) {
        let entry = Arc::new(stream);
        let key = self.next_active.fetch_add(1, Ordering::Relaxed);
        self.lock_active().insert(key, entry.clone());
        (entry, ActiveGuard { state: self, key })
    }
}

/// Running listeners of one gateway link: destination id → (address, stop).
pub(super) type Listeners = std::sync::Mutex<HashMap<String, (SocketAddr, CancellationToken)>>;

/// One configured gateway: its settings, what it pushed, and the tunnels up to it.
pub(super) struct GatewayPeer {
    pub cfg: GatewayLink,
    pub tls: TlsConnector,
    /// This gateway's share of the process's window budget
    /// (`limits.window_budget_per_gateway`): the streams one gateway's callers open (or a
    /// hostile gateway opens itself) can't refuse every other gateway's.
    pub budget: Arc<crate::mux::WindowBudget>,
    pub dests: RwLock<Arc<HashMap<String, Arc<PushedDest>>>>,
    /// Tunnels up right now (for sending LOG frames and opening reverse streams).
    pub live: Mutex<Vec<Mux>>,
    /// Listeners of this gateway's reverse destinations.
    pub reverse: Listeners,
    /// The last CONFIG applied: every tunnel, to every replica, pushes the same one, which is
    /// applied once.
    pub last_push: Mutex<Option<bytes::Bytes>>,
    /// Each tunnel slot's state and last failure, for `/readyz` and `sgw status`: a slot that
    /// keeps failing is visible without the logs. Bounded by the slots (replicas × addresses
    /// × `tunnels`); a slot that stops is removed.
    pub slots: Mutex<std::collections::BTreeMap<usize, SlotHealth>>,
    /// Numbers slots across all replicas and addresses: each slot's number is its own.
    next_slot: std::sync::atomic::AtomicUsize,
}

/// One tunnel slot as status shows it.
#[derive(Debug, Clone)]
pub(super) struct SlotHealth {
    pub url: String,
    pub addr: Option<SocketAddr>,
    pub up: bool,
    /// Unix ms of the last change between up and down.
    pub since_ms: u64,
    /// Failed connects since the slot was last up.
    pub failures: u64,
    pub last_failure: Option<SlotFailure>,
}

/// Why a slot last failed to connect, or its tunnel last went down.
#[derive(Debug, Clone)]
pub(super) struct SlotFailure {
    pub code: &'static str,
    pub sentence: String,
    pub at_ms: u64,
}

impl GatewayPeer {
    pub fn new(
        cfg: GatewayLink,
        tls: TlsConnector,
        budget: Arc<crate::mux::WindowBudget>,
    ) -> GatewayPeer {
        GatewayPeer {
            cfg,
            tls,
            budget,
            dests: RwLock::new(Arc::new(HashMap::new())),
            live: Mutex::new(Vec::new()),
            reverse: Default::default(),
            last_push: Mutex::new(None),
            slots: Mutex::new(Default::default()),
            next_slot: Default::default(),
        }
    }

    /// A number for a new tunnel slot, unique for this gateway.
    pub fn new_slot(&self) -> usize {
        self.next_slot.fetch_add(1, Ordering::Relaxed)
    }

    /// Changes slot `slot`'s entry (made as down if new).
    pub fn slot(
        &self,
        slot: usize,
        url: &str,
        addr: Option<SocketAddr>,
        f: impl FnOnce(&mut SlotHealth),
    ) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let h = slots.entry(slot).or_insert_with(|| SlotHealth {
            url: url.to_owned(),
            addr,
            up: false,
            since_ms: crate::telemetry::unix_ms(),
            failures: 0,
            last_failure: None,
        });
        f(h);
    }

    /// Forgets a slot that stopped (its address no longer resolves, or shutdown).
    pub fn slot_gone(&self, slot: usize) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&slot);
    }

    pub fn live_tunnels(&self) -> MutexGuard<'_, Vec<Mux>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A destination of the gateway's latest CONFIG.
    pub fn dest(&self, id: &str) -> Option<Arc<PushedDest>> {
        let d = self.dests.read().unwrap_or_else(|e| e.into_inner());
        d.get(id).cloned()
    }

    /// The least busy tunnel, if any is up and taking streams.
    pub fn pick(&self) -> Option<Mux> {
        self.live_tunnels()
            .iter()
            .filter(|m| !m.is_closed() && !m.is_going_away())
            .min_by_key(|m| m.active_streams())
            .cloned()
    }
}

/// A destination as the gateway pushed it, with its caller rules parsed once.
pub(super) struct PushedDest {
    pub spec: DestinationSpec,
    /// Rules that failed to parse are dropped (and logged): fewer callers admitted, never more.
    pub ip_rules: Vec<IpTableRule>,
    /// This destination's metric series, looked up once per push, not once per stream.
    pub stats: Arc<DestStats>,
    /// TLS to the endpoint, built once per push; an error fails each stream with reason `tls`.
    pub tls: Option<Result<EndpointConnector, crate::tls::TlsError>>,
}

impl PushedDest {
    /// `local` is client.toml's `[[destinations]]` entry for this id: on-prem key material
    /// the gateway never sees.
    pub fn new(
        mut spec: DestinationSpec,
        stats: &ClientStats,
        local: Option<&DestOverride>,
    ) -> PushedDest {
        // client.toml's key and CAs are the operator's, kept from the gateway: a push can't
        // undo them by turning TLS or its verification off.
        let local_tls = local.is_some_and(|o| o.client_certs.is_some() || o.dest_key.is_some());
        if let (Some(t), Some(o)) = (&mut spec.tls, local) {
            if let (Some(c), Some(k)) = (&o.dest_cert, &o.dest_key) {
                t.dest_cert = c.clone();
                t.dest_key = crate::proto::Hidden(k.expose().to_owned());
            }
            if let Some(cas) = &o.client_certs {
                t.client_certs = cas.clone();
            }
            // Neither the local CAs nor the local key go to an endpoint nobody verified.
            if local_tls && !t.reject_unauth {
                warn!(dest.id = %spec.id, reason = "reject_unauth_false", "the gateway turned certificate verification off for a destination client.toml gives a key or CAs of its own; verifying anyway");
                t.reject_unauth = true;
            }
        }
        let tls = match &spec.tls {
            None if local_tls => {
                let e = crate::tls::TlsError::new(
                    "enable_client_tls",
                    "the gateway pushed this destination without TLS, but client.toml gives it \
                     a key or CAs of its own: its streams are refused rather than sent in the clear",
                );
                error!(dest.id = %spec.id, error = %e, "destination TLS settings unusable; its streams will fail with reason tls");
                Some(Err(e))
            }
            None => None,
            Some(t) => Some(crate::tls::endpoint_connector(t, &spec.ip).inspect_err(|e| {
                error!(dest.id = %spec.id, error = %e, "destination TLS settings unusable; its streams will fail with reason tls");
            })),
        };
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
        PushedDest {
            spec,
            ip_rules,
            stats,
            tls,
        }
    }
}

/// One stream being relayed, as the status page shows it.
pub(super) struct ActiveStream {
    pub stream_id: u32,
    pub dest_id: String,
    pub dest_addr: String,
    pub caller: String,
    pub started: Instant,
    pub counters: Arc<crate::relay::Counters>,
}

/// Removes a stream from the active table when its task ends, however it ends.
pub(super) struct ActiveGuard<'a> {
    state: &'a ClientState,
    key: u64,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.state.lock_active().remove(&self.key);
    }
}
