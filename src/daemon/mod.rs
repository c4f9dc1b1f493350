//! Process wiring for the long-running programs: `sgw client`, `sgw gateway` and
//! `sgw quickstart`. Each has one `run` here that installs the signal handlers (SIGTERM/SIGINT
//! drain, SIGHUP reload), starts the admin endpoint and the API, talks to systemd, and hands
//! the bound listeners to the library's `Client` or `Gateway`. The client's and the gateway's
//! files are read before that, before the runtime starts (`client::prepare`,
//! `gateway::load`): their `workers` sizes it ([`worker_threads`]). `main.rs` only parses the
//! command line and builds the runtime.

pub mod client;
pub mod gateway;
mod gateway_api;
pub mod quickstart;
mod signals;

use std::path::Path;

pub use signals::{hangup, shutdown_on_signals};

use crate::config::{self, LogFormat, Workers};

/// The runtime's worker threads for `workers`. `auto`: half the CPUs this process may use
/// (its affinity and cgroup quota count), at least one.
pub fn worker_threads(workers: Workers) -> usize {
    match workers {
        Workers::Count(n) => n,
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
    }
}

/// Says how many worker threads the process runs on, and why, once logging is up.
fn log_workers(workers: Workers) {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let setting = match workers {
        Workers::Auto => "auto",
        Workers::Count(_) => "set",
    };
    tracing::info!(
        // The runtime's own count, as /metrics shows it: what it was built with.
        workers = crate::admin::runtime_workers(),
        workers.setting = setting,
        cpus,
        "worker threads"
    );
    // tokio reads it only when the builder is not told a number, and sgw always tells it.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        tracing::warn!("TOKIO_WORKER_THREADS is not read: set `workers` in the config (or SGW_CLIENT_WORKERS, SGW_GATEWAY_WORKERS)");
    }
}

/// Why a program or command could not do its job. [`Error::Input`] is the user's to fix
/// (a config, a file, an argument): the CLI exits 2 for it, 1 for the rest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config, file or argument is wrong; the message says where and why.
    #[error("{0}")]
    Input(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The gateway, its API or its admin endpoint could not start (`what` says which).
    #[error("{what}: {source}")]
    Start {
        what: &'static str,
        #[source]
        source: crate::gateway::GatewayError,
    },
    #[error("{0}")]
    Admin(#[from] crate::admin::client::CallError),
    #[error("the client did not connect to the gateway within {0} s")]
    NotReady(u64),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

impl Error {
    /// A bad config, file or argument: anything with a message for the user.
    pub fn input(e: impl std::fmt::Display) -> Error {
        Error::Input(e.to_string())
    }

    /// Several findings (one per line, each with its path and line).
    pub fn findings(errs: impl IntoIterator<Item = impl std::fmt::Display>) -> Error {
        let lines: Vec<String> = errs.into_iter().map(|e| e.to_string()).collect();
        Error::Input(lines.join("\n"))
    }

    pub fn start(what: &'static str) -> impl FnOnce(crate::gateway::GatewayError) -> Error {
        move |source| Error::Start { what, source }
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Installs logging: `--log-level`/`--log-format` win over the config file's.
pub fn init_logging(
    level: Option<&str>,
    format: Option<Format>,
    cfg: &config::LogSettings,
) -> Result<crate::telemetry::LogControl, Error> {
    let fixed = level.is_some();
    let level = level.unwrap_or(&cfg.level);
    let format = match format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Text) => LogFormat::Text,
        None => cfg.format,
    };
    crate::telemetry::init(
        level,
        fixed,
        format,
        (cfg.lines_per_second, cfg.lines_per_second_total),
        cfg.buffer_lines,
    )
    .map_err(|e| Error::Input(format!("log settings: {e}")))
}

/// Loads an ACL file; every bad line is reported with its path and line.
pub fn load_acl(path: &Path, policy: config::Policy) -> Result<crate::acl::Acl, Error> {
    crate::acl::Acl::load(path, policy).map_err(|e| Error::findings(e.messages()))
}
