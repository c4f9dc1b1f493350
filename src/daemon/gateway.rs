//! `sgw gateway`: loads gateway.toml and the API's store (state file, or the PostgreSQL store
//! replicas share), starts the gateway, its management API and admin endpoint, follows the
//! shared store, reloads on SIGHUP and drains on SIGTERM.

use std::path::{Path, PathBuf};

use crate::config::state::StateFile;
use crate::config::{GatewayConfig, TenantConfig};
use crate::gateway::{Gateway, GatewayError, GatewayHandle};
use crate::store::Store;
use crate::telemetry::LogControl;

use super::{hangup, init_logging, shutdown_on_signals, Error, Format};

/// `sgw gateway`. Options also come from SGW_GATEWAY_* env vars.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// gateway.toml.
    #[arg(long, env = "SGW_GATEWAY_CONFIG")]
    pub config: PathBuf,
    /// Overrides log_level in the config (trace, debug, info, warn, error).
    #[arg(long, env = "SGW_GATEWAY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Overrides log_format in the config.
    #[arg(long, value_enum, env = "SGW_GATEWAY_LOG_FORMAT")]
    pub log_format: Option<Format>,
}

/// A gateway's files as it would start with them.
pub struct Loaded {
    pub config: GatewayConfig,
    /// What the management API keeps (empty when it has no state file yet).
    pub state: StateFile,
    /// The gateway ids `state` holds, checked.
    pub managed: Vec<TenantConfig>,
}

/// Reads gateway.toml and its state file (see [`with_state`]). Gateway ids in both are refused: each gateway id
/// has one owner.
pub fn load(path: &Path) -> Result<Loaded, Error> {
    with_state(GatewayConfig::load(path).map_err(Error::input)?)
}

/// Reads the state file `config` names and checks it against `config`. A shared store
/// (`state_store`) is read at start by [`run`], not here.
pub fn with_state(config: GatewayConfig) -> Result<Loaded, Error> {
    let state = match config.api.as_ref().and_then(|a| a.state_file.as_ref()) {
        Some(p) => StateFile::load(p)
            .map_err(Error::input)?
            .unwrap_or_else(StateFile::empty),
        None => StateFile::empty(),
    };
    checked(config, state)
}

/// `state` checked against `config`: each gateway id has one owner.
fn checked(config: GatewayConfig, state: StateFile) -> Result<Loaded, Error> {
    if let Some(g) = state
        .gateways
        .iter()
        .find(|g| config.gateways.iter().any(|t| t.id == g.id))
    {
        return Err(Error::Input(format!(
            "gateway id `{}` is both in the config file and in the API's store; remove it from one",
            g.id
        )));
    }
    let managed = state.tenants().map_err(|e| Error::findings(e.0))?;
    Ok(Loaded {
        config,
        state,
        managed,
    })
}

/// Runs the gateway until SIGTERM/SIGINT, then drains. `loaded` is [`load`]'s, read before
/// the runtime started (the config's `workers` sizes it).
pub async fn run(args: GatewayArgs, loaded: Loaded) -> Result<(), Error> {
    let log = init_logging(
        args.log_level.as_deref(),
        args.log_format,
        &loaded.config.log,
    )?;
    super::log_workers(loaded.config.workers);
    let store = match &loaded.config.api {
        Some(a) => Some(Store::open(a)?),
        None => None,
    };
    let Loaded {
        config: cfg,
        state,
        managed,
    } = match &store {
        Some(s) if s.shared() => read_shared(s, loaded.config).await?,
        _ => loaded,
    };
    let hup = hangup()?;
    let shutdown = shutdown_on_signals()?;
    tokio::spawn(log.clone().report_suppressed(shutdown.clone()));
    let api = cfg.api.clone();
    let admin = cfg.admin.clone();
    let file_ids: Vec<String> = cfg.gateways.iter().map(|g| g.id.clone()).collect();
    let gw = Gateway::bind_with(cfg, managed)
        .await
        .map_err(Error::start("starting gateway"))?;
    let h = gw.handle();
    if let (Some(api), Some(store)) = (&api, store) {
        start_api(&h, api, state, store, shutdown.clone()).await?;
    }
    if let Some(admin) = &admin {
        h.start_admin(admin, api.clone(), Some(log.clone()), shutdown.clone())
            .await
            .map_err(Error::start("starting the admin endpoint (admin_listen)"))?;
    }
    let reload = Reload {
        path: args.config,
        gateway: h.clone(),
        log,
        file_ids,
    };
    tokio::spawn(reload.on_each(hup));
    crate::systemd::spawn_watchdog(shutdown.clone());
    crate::systemd::ready(&format!("serving: tunnel endpoint {}", h.tunnel_addr()));
    let stop = shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        crate::systemd::stopping();
    });
    gw.run(shutdown).await;
    Ok(())
}

/// Starts the management API on `cfg.listen` (TLS with the tunnel endpoint's certificate)
/// until `shutdown`; `state` is what the state file held (already served by the gateway).
async fn start_api(
    h: &GatewayHandle,
    cfg: &crate::config::ApiConfig,
    state: StateFile,
    store: Store,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<std::net::SocketAddr, Error> {
    let addr = cfg.listen.to_string();
    let failed = |source| Error::Start {
        what: "starting the management API",
        source: GatewayError::Bind {
            addr: addr.clone(),
            source,
        },
    };
    let listener = crate::listen::bind(&addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    let api = crate::api::Api::new(h.clone(), cfg.clone(), state, store);
    h.spawn(crate::api::follow_store(api.clone(), shutdown.clone()));
    h.spawn(crate::api::publish_presence(api.clone(), shutdown.clone()));
    h.spawn(crate::api::serve(api, listener, h.tls_acceptor(), shutdown));
    Ok(bound)
}

/// Reads the store replicas share, once, before the gateway binds: a replica that can't reach
/// it at start has no state to serve and says so (systemd restarts it). Each record is made
/// this replica's (its own `cloud_host`).
async fn read_shared(store: &Store, config: GatewayConfig) -> Result<Loaded, Error> {
    store.prepare().await?;
    let (mut state, _unreadable) = store.load().await?;
    // Another replica's API may have made an id this replica's gateway.toml defines: the file
    // wins here, as it does on every later re-read.
    state.gateways.retain(|g| {
        let clash = config.gateways.iter().any(|t| t.id == g.id);
        if clash {
            tracing::error!(gateway.id = %g.id, "not served from the state store: this gateway id is defined in gateway.toml here");
        }
        !clash
    });
    let host = config.api.as_ref().map(|a| a.cloud_host.clone());
    for g in &mut state.gateways {
        if let Some(h) = &host {
            g.localize(h);
        }
    }
    tracing::info!(store = %store.describe(), gateways = state.gateways.len(), "read the shared state store");
    checked(config, state)
}

/// SIGHUP: re-reads gateway.toml; applies the log settings and the `[[gateways]]` it defines
/// (added, changed, removed) to the running gateway. Gateway ids the API manages are not
/// touched; listeners and TLS settings need a restart.
struct Reload {
    path: PathBuf,
    gateway: GatewayHandle,
    log: LogControl,
    /// The ids the file defined at the last (re)load.
    file_ids: Vec<String>,
}

impl Reload {
    async fn on_each(mut self, mut hup: tokio::signal::unix::Signal) {
        while hup.recv().await.is_some() {
            tracing::info!(config = %self.path.display(), "SIGHUP: reloading configuration");
            self.once().await;
        }
    }

    async fn once(&mut self) {
        let new = match GatewayConfig::load(&self.path) {
            Ok(n) => n,
            Err(errs) => {
                for e in &errs.0 {
                    tracing::error!(error = %e, "config reload failed, keeping the running configuration");
                }
                return;
            }
        };
        if let Err(e) = self.log.apply(&new.log) {
            tracing::error!(error = %e, "cannot apply log_level");
        }
        // Every running id that did not come from the file is the API's.
        let api_ids: Vec<String> = self
            .gateway
            .gateway_ids()
            .into_iter()
            .filter(|id| !self.file_ids.contains(id))
            .collect();
        let mut applied = Vec::new();
        for t in new.gateways {
            if api_ids.contains(&t.id) {
                tracing::error!(gateway.id = %t.id, "not applied: this gateway id is managed through the API");
                continue;
            }
            let id = t.id.clone();
            if let Err(e) = self.gateway.apply(t).await {
                tracing::error!(gateway.id = %id, error = %e, "gateway not reloaded; it keeps its running configuration");
            }
            applied.push(id);
        }
        for gone in self.file_ids.iter().filter(|id| !applied.contains(id)) {
            self.gateway.remove(gone).await;
        }
        self.file_ids = applied;
        tracing::info!("configuration reloaded; listen, tls_cert/tls_key, limits, workers, log_format, log_buffer_lines, admin and api settings take effect after a restart");
    }
}
