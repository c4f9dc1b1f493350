//! The on-prem daemon: holds `tunnels` parallel tunnels to each configured gateway,
//! reconnecting forever with jittered exponential backoff, and serves the streams the
//! gateway opens.
//!
//! One stream's path: [`session`] keeps a tunnel up and receives the OPEN →
//! [`stream`] admits and connects it ([`admit`]: destination, caller rules, ACL, dial,
//! TLS) → accept → [`crate::relay`]. HTTP destinations are judged per request
//! ([`http`]); reverse destinations and the SOCKS5 listener open streams the other way
//! ([`reverse`], [`socks`]).

mod acl_file;
mod admin;
mod admit;
mod handle;
mod http;
mod probe;
mod reload;
mod replicas;
mod reverse;
mod session;
mod socks;
mod state;
mod stats;
mod status;
mod stream;

pub use acl_file::{AclEditError, AclFile};
pub use admin::AdminBackend;
pub use handle::ClientHandle;
pub use probe::{probe_destination, Probe};
pub use reload::reload_from_files;
pub use stats::{ClientStats, DestStats, MAX_DEST_SERIES};
pub use status::{
    AclStatus, DestinationStatus, GatewayStatus, Status, StatusSnapshot, StreamStatus, TunnelStatus,
};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::acl::Acl;
use crate::config::ClientConfig;
use crate::mux::{MuxConfig, Role};
use crate::proto::{Hello, FEATURE_DEFLATE, FEATURE_EARLY_DATA, PROTO_MAJOR, PROTO_MINOR};
use crate::telemetry::ForwardedLog;
use crate::tunnel;
use state::{ClientState, GatewayPeer};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("gateway {gateway}: {source}")]
    Tls {
        gateway: String,
        #[source]
        source: crate::tls::TlsError,
    },
}

/// A configured, not yet running client.
pub struct Client {
    state: Arc<ClientState>,
    peers: Vec<Arc<GatewayPeer>>,
    logs: Option<tokio::sync::mpsc::Receiver<ForwardedLog>>,
}

/// Where this process runs, as the gateway's client list shows it.
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

/// What this process says of itself in HELLO (a new `instance` on every call).
pub fn hello() -> Hello {
    Hello {
        version: env!("CARGO_PKG_VERSION").into(),
        proto: [PROTO_MAJOR, PROTO_MINOR],
        hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        env: detect_env().into(),
        instance: format!("{:032x}", rand::random::<u128>()),
        features: vec![FEATURE_DEFLATE.to_owned(), FEATURE_EARLY_DATA.to_owned()],
    }
}

impl Client {
    pub fn new(cfg: ClientConfig, acl: Acl) -> Result<Client, ClientError> {
        let mux_cfg = MuxConfig::from_limits(Role::Client, &cfg.limits, &cfg.keepalive);
        let mut peers = Vec::new();
        for g in &cfg.gateways {
            let tls = tunnel::client_tls(&g.trust).map_err(|source| ClientError::Tls {
                gateway: g.gateway_id.clone(),
                source,
            })?;
            let budget = crate::mux::WindowBudget::within(
                &mux_cfg.window_budget,
                cfg.limits.window_budget_per_gateway,
                "window_budget_per_gateway",
            );
            peers.push(Arc::new(GatewayPeer::new(g.clone(), tls, budget)));
        }
        let hello = hello();
        let state = Arc::new(ClientState {
            cfg,
            acl: RwLock::new(Arc::new(acl)),
            acl_file: None,
            acl_writes: Mutex::new(()),
            active: Mutex::new(HashMap::new()),
            next_active: AtomicU64::new(0),
            hello,
            mux_cfg,
            status: watch::channel(Status::default()).0,
            stats: ClientStats::default(),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        });
        Ok(Client {
            state,
            peers,
            logs: None,
        })
    }

    /// Ties the ACL to its file: SIGHUP-style reloads, reloads when the file changes, and
    /// runtime edits written back to it.
    pub fn with_acl_file(mut self, path: PathBuf) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.acl_file = Some(AclFile::new(path, state.cfg.default_policy));
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
            state: self.state.clone(),
            peers: self.peers.clone(),
        }
    }

    /// Runs until `shutdown`, then drains streams for at most `shutdown_grace`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let state = self.state.clone();
        info!(version = %state.hello.version, env = %state.hello.env, gateways = self.peers.len(), "client started");
        let slots = TaskTracker::new();
        for peer in &self.peers {
            for r in 0..peer.cfg.replicas.len() {
                let hold = replicas::hold(state.clone(), peer.clone(), r, shutdown.clone());
                slots.spawn(hold);
            }
        }
        if let Some(logs) = self.logs.take() {
            slots.spawn(session::forward_logs(
                logs,
                self.peers.clone(),
                shutdown.clone(),
            ));
        }
        if state.acl_file.is_some() {
            slots.spawn(session::watch_acl_file(self.handle(), shutdown.clone()));
        }
        if let (Some(addr), Some(peer)) = (state.cfg.socks5_listen, self.peers.first()) {
            match crate::listen::bind(&addr.to_string()).await {
                Ok(l) => {
                    let fut = socks::serve(state.clone(), peer.clone(), l, state.stop.clone());
                    state.tracker.spawn(fut);
                }
                Err(e) => error!(socks5.listen = %addr, error = %e, "cannot listen for SOCKS5"),
            }
        }
        let stop = state.stop.clone();
        let stopping = shutdown.clone();
        slots.spawn(async move {
            stopping.cancelled().await;
            stop.cancel();
        });
        slots.close();
        slots.wait().await;
        state.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), state.tracker.wait()).await;
        info!("client stopped");
    }
}
