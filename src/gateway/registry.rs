//! Connected clients of one gateway id, and the choice of tunnel for a new stream:
//! the client with the fewest active streams (round robin on ties), then its least busy
//! tunnel.

use crate::proto::LogPush;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;

use crate::api::{ClientView, GoneClient};
use crate::config::TenantConfig;
use crate::early::{Ahead, Unanswered};
use crate::mux::{Mux, MuxStream, OpenError};
use crate::proto::{Hello, OpenMeta, Reason, FEATURE_DEFLATE};

struct ClientEntry {
    client_id: String,
    hello: Hello,
    tunnels: Vec<(u64, Mux)>,
    opened: u64,
}

/// The tunnel chosen for a new stream, and what its client speaks.
struct Picked {
    client_id: String,
    mux: Mux,
    deflate: bool,
}

#[derive(Default)]
struct Clients {
    /// Keyed by the client's instance id (all tunnels of one process).
    entries: HashMap<String, ClientEntry>,
    rr: usize,
    next_tunnel: u64,
    /// The gateway id was deleted ([`Tenant::retire`]): a tunnel still in its handshake,
    /// holding this tenant from before, must not register on it.
    retired: bool,
}

/// Per gateway id counters (`stats`).
#[derive(Debug, Default)]
pub struct TenantStats {
    pub tunnels_accepted: AtomicU64,
    pub streams_opened: AtomicU64,
    pub streams_failed: AtomicU64,
    pub streams_denied: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

/// Disconnected clients remembered per gateway id.
pub const DISCONNECTED_KEPT: usize = 100;

/// A gateway id's running configuration with what is built from it once per change.
pub(crate) struct TenantState {
    pub cfg: TenantConfig,
    /// The CONFIG payload a client gets when its tunnel comes up and at every change.
    pub push: Bytes,
    /// TLS to reverse destinations' endpoints, by destination id.
    pub reverse_tls: HashMap<String, crate::tls::EndpointConnector>,
    /// What this gateway id's clients may make the gateway connect to.
    pub egress: crate::acl::Acl,
}

pub(crate) struct Tenant {
    pub id: String,
    /// The running configuration and what is derived from it; replaced as a whole when the
    /// gateway's configuration changes.
    current: RwLock<Arc<TenantState>>,
    pub stats: TenantStats,
    disconnected: Mutex<std::collections::VecDeque<GoneClient>>,
    clients: Mutex<Clients>,
    /// Signalled when a tunnel registers, for callers waiting for a client.
    registered: tokio::sync::Notify,
    /// The latest warn/error lines clients pushed (client id, line), oldest first, bounded.
    logs: Mutex<std::collections::VecDeque<(String, LogPush)>>,
    /// This id's share of the process's window budget, for every stream of its tunnels.
    pub budget: Arc<crate::mux::WindowBudget>,
    /// Name lookups this id's clients may have running (`limits.max_lookups_per_gateway`).
    pub lookups: Arc<tokio::sync::Semaphore>,
    /// Tunnels of this id past the upgrade and not yet registered
    /// (`limits.max_pending_handshakes_per_gateway`).
    pub handshakes: Arc<tokio::sync::Semaphore>,
}

/// How many tunnels a client process and a whole gateway id may hold at once: a client (or a
/// stolen token) can't open tunnels until the gateway runs out of memory or descriptors.
/// A tunnel refused because its client or its gateway id holds as many as allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TunnelLimit {
    #[error("this client already holds {held} tunnels (limits.max_tunnels_per_client)")]
    PerClient { held: usize },
    #[error("this gateway id already has {held} tunnels (limits.max_tunnels_per_gateway)")]
    PerGateway { held: usize },
    #[error("this gateway id was deleted")]
    Retired,
}

impl TunnelLimit {
    /// The reason code a tunnel refused for it is closed with.
    pub fn reason(self) -> Reason {
        match self {
            TunnelLimit::Retired => Reason::Auth,
            _ => Reason::Limit,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct TunnelCaps {
    pub per_client: usize,
    pub per_gateway: usize,
}

impl TunnelCaps {
    fn check(self, c: &Clients, instance: &str) -> Result<(), TunnelLimit> {
        if c.retired {
            return Err(TunnelLimit::Retired);
        }
        let held = c.entries.get(instance).map_or(0, |e| e.tunnels.len());
        if held >= self.per_client {
            return Err(TunnelLimit::PerClient { held });
        }
        let held: usize = c.entries.values().map(|e| e.tunnels.len()).sum();
        if held >= self.per_gateway {
            return Err(TunnelLimit::PerGateway { held });
        }
        Ok(())
    }
}

/// Client log lines kept per gateway id.
pub const CLIENT_LOG_LINES: usize = 1000;

const OPEN_ATTEMPTS: usize = 3;

impl Tenant {
    pub fn new(
        state: TenantState,
        budget: Arc<crate::mux::WindowBudget>,
        max_lookups: usize,
        max_handshakes: usize,
    ) -> Self {
        Tenant {
            budget,
            lookups: Arc::new(tokio::sync::Semaphore::new(max_lookups)),
            handshakes: Arc::new(tokio::sync::Semaphore::new(max_handshakes)),
            id: state.cfg.id.clone(),
            current: RwLock::new(Arc::new(state)),
            stats: TenantStats::default(),
            disconnected: Mutex::new(std::collections::VecDeque::new()),
            clients: Mutex::new(Clients::default()),
            registered: tokio::sync::Notify::new(),
            logs: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// The running configuration.
    pub fn state(&self) -> Arc<TenantState> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the running configuration and sends it to every connected client when what
    /// clients see changed.
    pub fn set_state(&self, state: TenantState) {
        let push = state.push.clone();
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(state),
        );
        if old.push == push {
            return;
        }
        for m in self.all_tunnels() {
            if let Err(e) = m.push_config(push.clone()) {
                // A client must not run on a stale list: it gets the new one when it reconnects.
                tracing::warn!(gateway.id = %self.id, error = %e, "could not send the configuration on a tunnel; closing it so the client reconnects");
                m.close(Reason::Internal, "configuration push failed");
            }
        }
    }

    /// Clients that disconnected recently, oldest first.
    pub fn disconnected(&self) -> Vec<GoneClient> {
        let q = self.disconnected.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().cloned().collect()
    }

    /// Closes every tunnel of these clients; returns the ids that were connected.
    pub fn disconnect(&self, client_ids: &[String], why: &str) -> Vec<String> {
        let c = self.lock();
        let mut found = Vec::new();
        for e in c.entries.values() {
            if client_ids.contains(&e.client_id) {
                for (_, m) in &e.tunnels {
                    m.close(Reason::Refused, why);
                }
                found.push(e.client_id.clone());
            }
        }
        found
    }

    fn lock(&self) -> MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client process's id: derived from its instance id and the gateway id, so every
    /// replica and every restart of the gateway gives the same client the same id, while the
    /// same process in two gateway ids can't be linked, and the instance itself (which groups
    /// a process's tunnels) is not shown. 128 bits: no client can make another's id.
    pub fn client_id_for(&self, instance: &str) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.id.as_bytes());
        h.update([0u8]);
        h.update(instance.as_bytes());
        let hex: String = h
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}_{hex}", self.id)
    }

    /// Is there room for one more tunnel of this client process? Checked before WELCOME, and
    /// again (under the same lock as the insert) by [`Tenant::register`].
    pub fn tunnel_room(&self, instance: &str, caps: TunnelCaps) -> Result<(), TunnelLimit> {
        caps.check(&self.lock(), instance)
    }

    pub fn register(
        &self,
        client_id: &str,
        hello: &Hello,
        mux: Mux,
        caps: TunnelCaps,
    ) -> Result<u64, TunnelLimit> {
        let mut c = self.lock();
        caps.check(&c, &hello.instance)?;
        c.next_tunnel += 1;
        let tid = c.next_tunnel;
        let e = c
            .entries
            .entry(hello.instance.clone())
            .or_insert_with(|| ClientEntry {
                client_id: client_id.to_owned(),
                hello: hello.clone(),
                tunnels: Vec::new(),
                opened: 0,
            });
        e.tunnels.push((tid, mux));
        drop(c);
        self.registered.notify_waiters();
        Ok(tid)
    }

    /// Forgets one tunnel; when it was the client's last, remembers the client as
    /// disconnected (`reason`: why the tunnel closed).
    pub fn unregister(&self, client_id: &str, tunnel_id: u64, reason: &str) {
        let mut gone = Vec::new();
        let mut c = self.lock();
        c.entries.retain(|_, e| {
            if e.client_id == client_id {
                e.tunnels.retain(|(t, _)| *t != tunnel_id);
            }
            if e.tunnels.is_empty() {
                gone.push(GoneClient {
                    client_id: e.client_id.clone(),
                    version: e.hello.version.clone(),
                    hostname: e.hello.hostname.clone(),
                    env: e.hello.env.clone(),
                    disconnected_at_ms: crate::telemetry::unix_ms(),
                    reason: reason.to_owned(),
                });
            }
            !e.tunnels.is_empty()
        });
        drop(c);
        if !gone.is_empty() {
            let mut q = self.disconnected.lock().unwrap_or_else(|e| e.into_inner());
            for d in gone {
                if q.len() >= DISCONNECTED_KEPT {
                    q.pop_front();
                }
                q.push_back(d);
            }
        }
    }

    /// Marks the gateway id deleted, so no tunnel registers on it from now on, and returns
    /// the tunnels to close. Under the same lock as [`Tenant::register`]: a handshake that
    /// finishes after this is refused, one that finished before is among those returned.
    pub fn retire(&self) -> Vec<Mux> {
        let mut c = self.lock();
        c.retired = true;
        let tunnels = c
            .entries
            .values()
            .flat_map(|e| e.tunnels.iter().map(|(_, m)| m.clone()))
            .collect();
        drop(c);
        // Callers waiting for a client of this id give up now, not at their timeout.
        self.registered.notify_waiters();
        tunnels
    }

    pub fn all_tunnels(&self) -> Vec<Mux> {
        self.lock()
            .entries
            .values()
            .flat_map(|e| e.tunnels.iter().map(|(_, m)| m.clone()))
            .collect()
    }

    pub fn push_log(&self, client_id: &str, line: LogPush) {
        let mut q = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= CLIENT_LOG_LINES {
            q.pop_front();
        }
        q.push_back((client_id.to_owned(), line));
    }

    pub fn logs(&self) -> Vec<(String, LogPush)> {
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn client_infos(&self) -> Vec<ClientView> {
        let c = self.lock();
        let mut v: Vec<_> = c
            .entries
            .values()
            .map(|e| ClientView {
                client_id: e.client_id.clone(),
                version: e.hello.version.clone(),
                hostname: e.hello.hostname.clone(),
                env: e.hello.env.clone(),
                tunnels: e.tunnels.len(),
                active_streams: e.tunnels.iter().map(|(_, m)| m.active_streams()).sum(),
                streams_opened: e.opened,
            })
            .collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// Picks a usable tunnel: least active streams per client, round robin among equals.
    fn pick(&self, skip: &[Mux]) -> Option<Picked> {
        let mut c = self.lock();
        let usable =
            |m: &Mux| !m.is_closed() && !m.is_going_away() && !skip.iter().any(|s| same(s, m));
        let mut keys: Vec<&String> = c.entries.keys().collect();
        keys.sort();
        let loads: Vec<(String, usize)> = keys
            .iter()
            .filter_map(|k| {
                let e = &c.entries[*k];
                let ms: Vec<_> = e.tunnels.iter().filter(|(_, m)| usable(m)).collect();
                (!ms.is_empty()).then(|| {
                    (
                        (*k).clone(),
                        ms.iter().map(|(_, m)| m.active_streams()).sum(),
                    )
                })
            })
            .collect();
        let min = loads.iter().map(|(_, l)| *l).min()?;
        let tied: Vec<&String> = loads
            .iter()
            .filter(|(_, l)| *l == min)
            .map(|(k, _)| k)
            .collect();
        let key = tied[c.rr % tied.len()].clone();
        c.rr = c.rr.wrapping_add(1);
        let e = c.entries.get_mut(&key)?;
        let mux = e
            .tunnels
            .iter()
            .filter(|(_, m)| usable(m))
            .min_by_key(|(_, m)| m.active_streams())?
            .1
            .clone();
        e.opened += 1;
        Some(Picked {
            client_id: e.client_id.clone(),
            mux,
            deflate: e.hello.features.iter().any(|f| f == FEATURE_DEFLATE),
        })
    }

    /// Opens a stream for a caller on some client, retrying on another tunnel when the chosen
    /// one turns out to be closing. With no client connected it waits for one to register;
    /// the caller bounds the whole wait with the destination timeout. With `compress`, the
    /// stream is compressed when the chosen client supports it (the returned flag). With
    /// `ahead`, an uncompressed stream to a client that takes early data carries the
    /// caller's first bytes before the client answers.
    pub async fn open(
        &self,
        meta: &OpenMeta,
        compress: bool,
        mut ahead: Option<&mut Ahead<'_>>,
    ) -> Result<(String, MuxStream, bool), (Reason, String)> {
        let mut tried: Vec<Mux> = Vec::new();
        let mut failures = 0;
        loop {
            let registered = self.registered.notified();
            if self.lock().retired {
                let msg = format!("gateway `{}` was deleted", self.id);
                return Err((Reason::Unreachable, msg));
            }
            let Some(p) = self.pick(&tried) else {
                if failures >= OPEN_ATTEMPTS {
                    let msg = format!("no usable client tunnel for gateway `{}`", self.id);
                    return Err((Reason::Unreachable, msg));
                }
                registered.await;
                tried.clear();
                continue;
            };
            let compressed = compress && p.deflate;
            let meta = OpenMeta {
                compress: compressed.then(|| FEATURE_DEFLATE.to_owned()),
                ..meta.clone()
            };
            let opened = match ahead.as_deref_mut() {
                // Compressed bytes go through the relay's deflater: none are sent early.
                Some(ahead) if p.mux.peer_takes_early_data() && !compressed => {
                    match p.mux.open_early(&meta) {
                        Ok((stream, answer)) => {
                            match ahead.send_until_answered(&stream, answer).await {
                                Ok(()) => Ok(stream),
                                Err(Unanswered::Retry(e)) => Err(e),
                                // A refusal is final anyway (below).
                                Err(Unanswered::Final(e @ OpenError::Refused { .. })) => Err(e),
                                Err(Unanswered::Final(e)) => {
                                    let msg = format!("{e} after the caller's first bytes went ahead; not sent again on another tunnel");
                                    return Err((e.reason(), msg));
                                }
                                Err(Unanswered::CallerFailed) => {
                                    let msg = "the caller failed while its stream opened";
                                    return Err((Reason::Reset, msg.into()));
                                }
                            }
                        }
                        Err(e) => Err(e),
                    }
                }
                _ => p.mux.open(&meta).await,
            };
            match opened {
                Ok(s) => return Ok((p.client_id, s, compressed)),
                // Every tunnel of the id draws on the same budget: another would say the same.
                Err(e @ (OpenError::Refused { .. } | OpenError::Budget(_))) => {
                    return Err((e.reason(), e.to_string()))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "open failed on one tunnel, trying another");
                    failures += 1;
                    tried.push(p.mux);
                }
            }
        }
    }
}

fn same(a: &Mux, b: &Mux) -> bool {
    a.ptr_eq(b)
}
