//! `sgw client`: enrolls (optionally), loads client.toml and the ACL, starts the client and
//! its admin endpoint, keeps systemd informed, reloads on SIGHUP and drains on SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientHandle};
use crate::config::ClientConfig;
use crate::telemetry::LogControl;

use super::{hangup, init_logging, load_acl, shutdown_on_signals, Error, Format};

/// `sgw client`. Options also come from SGW_CLIENT_* env vars. No `Debug`: `enroll` holds
/// a token.
#[derive(clap::Args)]
pub struct ClientArgs {
    /// client.toml (with --enroll: DIR/client.toml).
    #[arg(long, env = "SGW_CLIENT_CONFIG", required_unless_present = "enroll")]
    pub config: Option<PathBuf>,
    /// Join a gateway: the string `sgw enroll` printed, `-` to read it from stdin, or
    /// @FILE. Writes client.toml, token, CA and a default-deny acl.list into --dir.
    #[arg(
        long,
        env = "SGW_ENROLL",
        hide_env_values = true,
        conflicts_with = "config"
    )]
    pub enroll: Option<String>,
    /// Where --enroll writes the client's files.
    #[arg(long, default_value = "/etc/sgw", requires = "enroll")]
    pub dir: PathBuf,
    /// With --enroll: write the files and exit instead of running.
    #[arg(long, requires = "enroll")]
    pub write_only: bool,
    /// ACL file (overrides acl_file in the config).
    #[arg(long, env = "SGW_CLIENT_ACL")]
    pub acl: Option<PathBuf>,
    /// Overrides log_level in the config (trace, debug, info, warn, error).
    #[arg(long, env = "SGW_CLIENT_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Overrides log_format in the config.
    #[arg(long, value_enum, env = "SGW_CLIENT_LOG_FORMAT")]
    pub log_format: Option<Format>,
}

/// What `sgw client` reads before its runtime starts (the config's `workers` sizes the
/// runtime): the config and the ACL, checked.
pub struct Prepared {
    config: PathBuf,
    cfg: ClientConfig,
    acl_override: Option<PathBuf>,
    acl_path: PathBuf,
    rules: crate::acl::Acl,
    log_level: Option<String>,
    log_format: Option<Format>,
}

impl Prepared {
    /// The config's `workers`.
    pub fn workers(&self) -> crate::config::Workers {
        self.cfg.workers
    }
}

/// Enrolls if asked, then loads client.toml and the ACL. `None`: `--enroll --write-only`
/// wrote the files and there is nothing to run.
pub fn prepare(args: ClientArgs) -> Result<Option<Prepared>, Error> {
    let config = match (&args.enroll, args.config) {
        (Some(e), _) => {
            let written = enroll(e, &args.dir, args.write_only)?;
            if args.write_only {
                return Ok(None);
            }
            written
        }
        (None, Some(c)) => c,
        (None, None) => return Err(Error::input("give --config FILE or --enroll STRING")),
    };
    let cfg = ClientConfig::load(&config).map_err(Error::input)?;
    let acl_override = args.acl;
    let acl_path = acl_override.clone().unwrap_or_else(|| cfg.acl_file.clone());
    let rules = load_acl(&acl_path, cfg.default_policy)?;
    Ok(Some(Prepared {
        config,
        cfg,
        acl_override,
        acl_path,
        rules,
        log_level: args.log_level,
        log_format: args.log_format,
    }))
}

/// Runs the client until SIGTERM/SIGINT, then drains.
pub async fn run(p: Prepared) -> Result<(), Error> {
    let Prepared {
        config,
        cfg,
        acl_override,
        acl_path,
        rules,
        log_level,
        log_format,
    } = p;
    let log = init_logging(log_level.as_deref(), log_format, &cfg.log)?;
    super::log_workers(cfg.workers);
    let shutdown = shutdown_on_signals()?;
    tokio::spawn(log.clone().report_suppressed(shutdown.clone()));
    let running = cfg.clone();
    let admin = AdminSettings::of(&cfg);
    let client = Client::new(cfg, rules)
        .map_err(Error::input)?
        .with_acl_file(acl_path)
        .with_log_forwarding(log.take_forwarded());
    let handle = client.handle();
    start_admin(admin, &handle, Some(log.clone()), &shutdown).await?;
    tell_systemd(&handle, &shutdown);
    // SIGHUP reloads the config and the ACL, all or nothing.
    let mut hup = hangup()?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(config = %config.display(), "SIGHUP: reloading configuration and ACL");
            // Files read and parsed off the workers, which may be one (`workers`).
            let (config, acl, running, handle, log) = (
                config.clone(),
                acl_override.clone(),
                running.clone(),
                handle.clone(),
                log.clone(),
            );
            let reload = tokio::task::spawn_blocking(move || {
                crate::client::reload_from_files(&config, acl.as_deref(), &running, &handle, &log);
            });
            if let Err(e) = reload.await {
                tracing::error!(error = %e, "config reload failed");
            }
        }
    });
    client.run(shutdown).await;
    Ok(())
}

/// `--enroll`: reads the string (the argument, `-` for stdin, `@FILE`), writes the client's
/// files into `dir`, says what it did; returns client.toml's path.
fn enroll(arg: &str, dir: &Path, write_only: bool) -> Result<PathBuf, Error> {
    use std::io::Read as _;
    const MAX: u64 = 1 << 20;
    // On the command line the string (a token) is in every local user's `ps` for as long as
    // the process runs: only for a short-lived --write-only.
    let literal = arg != "-" && !arg.starts_with('@');
    if literal && !write_only && std::env::args_os().any(|a| a.to_string_lossy().contains(arg)) {
        return Err(Error::input(
            "an enrollment string on the command line is visible to every local user while the client runs: \
             pass it on stdin (--enroll -), from a file (--enroll @FILE) or in SGW_ENROLL, or add --write-only",
        ));
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) && arg == "-" {
        eprintln!("paste the line `sgw enroll` printed, then Enter:");
    }
    let text = match arg {
        // One line, so a pasted string followed by Enter is enough.
        "-" => {
            let mut s = String::new();
            std::io::BufRead::read_line(&mut std::io::stdin().lock().take(MAX), &mut s)
                .map_err(Error::io("reading the enrollment string from stdin"))?;
            s
        }
        a if a.starts_with('@') => {
            let mut s = String::new();
            std::fs::File::open(&a[1..])
                .and_then(|f| f.take(MAX).read_to_string(&mut s))
                .map_err(Error::io(format!(
                    "reading the enrollment string from {}",
                    &a[1..]
                )))?;
            s
        }
        a => a.to_owned(),
    };
    let e = crate::enroll::Enrollment::decode(&text).map_err(Error::input)?;
    let files = crate::enroll::write_client_dir(dir, &e, "127.0.0.1:9003").map_err(Error::input)?;
    for p in &files.written {
        eprintln!("wrote {}", p.display());
    }
    for p in &files.kept {
        eprintln!("kept {} (already there)", p.display());
    }
    eprintln!(
        "enrolled with gateway id {} at {}; the ACL denies everything until you allow a service: sgw acl add \"acl allow HOST:PORT\" --config {}",
        e.gateway_id,
        e.url,
        files.client_toml.display()
    );
    Ok(files.client_toml)
}

/// Where the admin endpoint listens and who may use it.
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub access: crate::admin::Access,
    pub max_connections: usize,
    /// `admin_socket`: the same endpoint on a Unix socket for this user and root.
    pub socket: Option<std::path::PathBuf>,
}

impl AdminSettings {
    pub fn of(cfg: &ClientConfig) -> AdminSettings {
        AdminSettings {
            listen: cfg.admin_listen,
            access: crate::admin::Access {
                token: cfg.admin_token.clone(),
                hosts: cfg.admin_hosts.clone(),
            },
            max_connections: cfg.admin_max_connections,
            socket: cfg.admin_socket.clone(),
        }
    }
}

/// Binds the client's admin endpoint and serves it until `shutdown`; returns the bound
/// address.
pub async fn start_admin(
    admin: AdminSettings,
    handle: &ClientHandle,
    log: Option<LogControl>,
    shutdown: &CancellationToken,
) -> Result<SocketAddr, Error> {
    let addr = admin.listen;
    let what = || format!("cannot bind the admin endpoint on {addr} (admin_listen)");
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(Error::io(what()))?;
    let bound = l.local_addr().map_err(Error::io(what()))?;
    tracing::info!(admin.addr = %bound, auth = admin.access.token.is_some(), "admin endpoint listening");
    let backend = crate::client::AdminBackend::new(handle.clone())
        .with_log(log)
        .with_admin_max_connections(admin.max_connections);
    let backend = std::sync::Arc::new(backend);
    if let Some(path) = admin.socket {
        let what = format!(
            "cannot listen on the admin socket {} (admin_socket)",
            path.display()
        );
        let max = admin.max_connections;
        let serve = crate::admin::bind_unix(path, backend.clone(), max, shutdown.clone());
        tokio::spawn(serve.await.map_err(Error::io(what))?);
    }
    tokio::spawn(crate::admin::serve(
        l,
        backend,
        admin.access,
        admin.max_connections,
        shutdown.clone(),
    ));
    Ok(bound)
}

/// Tells systemd: READY once the first tunnel is up, STATUS on every change, STOPPING on
/// shutdown; and feeds the watchdog.
fn tell_systemd(handle: &ClientHandle, shutdown: &CancellationToken) {
    crate::systemd::spawn_watchdog(shutdown.clone());
    crate::systemd::status("connecting to the gateway");
    let mut st = handle.status();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut ready = false;
        loop {
            let (up, line) = {
                let s = st.borrow_and_update();
                let ids: Vec<String> = s
                    .client_ids
                    .iter()
                    .map(|(g, c)| format!("{g}={c}"))
                    .collect();
                (
                    s.tunnels_up,
                    format!("{} tunnel(s) up; client {}", s.tunnels_up, ids.join(", ")),
                )
            };
            if up > 0 && !ready {
                ready = true;
                crate::systemd::ready(&line);
            } else {
                crate::systemd::status(&line);
            }
            tokio::select! {
                r = st.changed() => if r.is_err() { break },
                _ = stop.cancelled() => {
                    crate::systemd::stopping();
                    break;
                }
            }
        }
    });
}
