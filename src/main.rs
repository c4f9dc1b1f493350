//! The `sgw` command line: a thin layer over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use std::net::{IpAddr, SocketAddr};

use hyper::Method;
use sgw::acl::{parse_check_target, Acl, Decision, LocalTime, Request};
use sgw::admin::client::{call, query_escape};
use sgw::client::Client;
use sgw::config::state::StateFile;
use sgw::config::Policy;
use sgw::config::{self, AnyConfig, ClientConfig, GatewayConfig, LogFormat};
use sgw::gateway::Gateway;
use sgw::init::{self, Expose, InitOptions};

#[derive(Parser)]
#[command(
    name = "sgw",
    version,
    about = "On-premise tunnel client daemon and gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the on-prem client daemon. Options also come from SGW_CLIENT_* env vars.
    Client {
        /// client.toml (with --enroll: DIR/client.toml).
        #[arg(long, env = "SGW_CLIENT_CONFIG", required_unless_present = "enroll")]
        config: Option<PathBuf>,
        /// Join a gateway: the string `sgw enroll` printed, `-` to read it from stdin, or
        /// @FILE. Writes client.toml, token, CA and a default-deny acl.list into --dir.
        #[arg(
            long,
            env = "SGW_ENROLL",
            hide_env_values = true,
            conflicts_with = "config"
        )]
        enroll: Option<String>,
        /// Where --enroll writes the client's files.
        #[arg(long, default_value = "/etc/sgw", requires = "enroll")]
        dir: PathBuf,
        /// With --enroll: write the files and exit instead of running.
        #[arg(long, requires = "enroll")]
        write_only: bool,
        /// ACL file (overrides acl_file in the config).
        #[arg(long, env = "SGW_CLIENT_ACL")]
        acl: Option<PathBuf>,
        #[arg(long, env = "SGW_CLIENT_LOG_LEVEL")]
        log_level: Option<String>,
        #[arg(long, value_enum, env = "SGW_CLIENT_LOG_FORMAT")]
        log_format: Option<Format>,
    },
    /// Run the gateway. Options also come from SGW_GATEWAY_* env vars.
    Gateway {
        #[arg(long, env = "SGW_GATEWAY_CONFIG")]
        config: PathBuf,
        #[arg(long, env = "SGW_GATEWAY_LOG_LEVEL")]
        log_level: Option<String>,
        #[arg(long, value_enum, env = "SGW_GATEWAY_LOG_FORMAT")]
        log_format: Option<Format>,
    },
    /// Write a CA, certificates, tokens, gateway.toml, client.toml and acl.list into DIR.
    Init {
        dir: PathBuf,
        /// Tunnel endpoint address.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        /// A name or address clients reach the gateway by (repeatable): all go into the
        /// certificate; the first is the URL clients dial.
        #[arg(long)]
        public: Vec<String>,
        /// Where the management API keeps what it creates (default: state.json beside
        /// gateway.toml; /var/lib/sgw/state.json for /etc/sgw).
        #[arg(long)]
        state_file: Option<String>,
        /// Expose an on-prem service: HOST:PORT[@CLOUD_PORT].
        #[arg(long)]
        expose: Vec<Expose>,
    },
    /// Print the enrollment string for a gateway id: an on-prem host joins with
    /// `sgw client --enroll STRING`. The string holds the token: hand it over like one.
    Enroll {
        gateway_id: String,
        #[arg(long, env = "SGW_GATEWAY_CONFIG")]
        config: PathBuf,
        /// The URL clients dial (default: public_url in gateway.toml).
        #[arg(long)]
        url: Option<String>,
        /// Also write the string to this file (mode 0600).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a gateway and a client in one process on loopback and print each cloud address.
    Quickstart {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Expose an on-prem service: HOST:PORT[@CLOUD_PORT] (default: a built-in HTTP service).
        #[arg(long)]
        expose: Vec<Expose>,
    },
    /// ACL tools: check and lint a file; show and change a running client's rules.
    Acl {
        #[command(subcommand)]
        cmd: AclCmd,
    },
    /// The running client's tunnels, destinations and active streams (from its admin endpoint).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the raw JSON of /v1/status.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if the running process is alive (/healthz), or with --ready, ready (/readyz).
    /// For container health checks.
    Health {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        ready: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum AclCmd {
    /// Which rule decides HOST:PORT[/PATH] and why. Exit 0 allow, 3 deny, 2 bad input.
    Check {
        #[arg(long)]
        file: PathBuf,
        /// HOST:PORT[/PATH]; a name is resolved and every address checked, as the client does.
        target: String,
        /// The caller, for `from` rules: IP[:PORT].
        #[arg(long)]
        from: Option<String>,
        /// Local time for `during` rules: `DAY HH:MM` or YYYY-MM-DDTHH:MM (default: now).
        #[arg(long)]
        at: Option<String>,
        /// Policy when no rule matches.
        #[arg(long, value_enum, default_value = "deny")]
        default_policy: PolicyArg,
        /// Check the name only; do not resolve it.
        #[arg(long)]
        no_resolve: bool,
    },
    /// Syntax errors (exit 2), shadowed rules and overlapping allow/deny (warnings, exit 0).
    Lint {
        #[arg(long)]
        file: PathBuf,
    },
    /// Add a rule to the running client (written back to its ACL file).
    Add {
        /// The rule, e.g. "acl allow 10.0.0.5:5432".
        rule: String,
        /// Insert before this line instead of appending.
        #[arg(long)]
        before: Option<usize>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a rule from the running client, by text or by line.
    Remove {
        rule: Option<String>,
        #[arg(long, conflicts_with = "rule")]
        line: Option<usize>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the running client's rules with their lines.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyArg {
    Allow,
    Deny,
}

/// Where the running client's admin endpoint is.
#[derive(clap::Args)]
struct AdminArgs {
    /// The client's (or gateway's) config: its admin_listen and admin_token are used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The admin endpoint address (default 127.0.0.1:9003).
    #[arg(long, env = "SGW_ADMIN")]
    admin: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a client or gateway config: every error, with file, line and path; exit 2.
    Check { file: PathBuf },
}

/// An error that maps to exit code 2 (bad configuration or usage).
#[derive(Debug)]
struct BadConfig(String);
impl std::fmt::Display for BadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for BadConfig {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sgw: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(b) = e.downcast_ref::<BadConfig>() {
                eprintln!("{b}");
                return ExitCode::from(2);
            }
            eprintln!("sgw: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn log_settings(
    level: Option<String>,
    format: Option<Format>,
    cfg: &config::LogSettings,
) -> Result<sgw::telemetry::LogControl> {
    let level = level.unwrap_or_else(|| cfg.level.clone());
    let format = match format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Text) => LogFormat::Text,
        None => cfg.format,
    };
    sgw::telemetry::init(&level, format).map_err(|e| BadConfig(format!("log settings: {e}")).into())
}

/// The API's state file (empty when not configured or not written yet). Gateway ids in
/// both gateway.toml and the state file are refused: each gateway has one owner.
fn load_state(cfg: &GatewayConfig) -> Result<StateFile> {
    let path = cfg.api.as_ref().and_then(|a| a.state_file.as_ref());
    let state = match path {
        Some(p) => StateFile::load(p)
            .map_err(bad)?
            .unwrap_or_else(StateFile::empty),
        None => StateFile::empty(),
    };
    for g in &state.gateways {
        if cfg.gateways.iter().any(|t| t.id == g.id) {
            return Err(bad(format!(
                "gateway id `{}` is both in the config file and in state_file; remove it from one",
                g.id
            )));
        }
    }
    Ok(state)
}

/// SIGHUP: re-reads gateway.toml; applies the log level and the `[[gateways]]` it defines
/// (added, changed, removed) to the running gateway. Gateways the API manages are not
/// touched; listeners and TLS settings need a restart.
async fn reload_gateway(
    mut hup: tokio::signal::unix::Signal,
    path: PathBuf,
    h: sgw::gateway::GatewayHandle,
    log: sgw::telemetry::LogControl,
    level_fixed: bool,
    mut file_ids: Vec<String>,
) {
    while hup.recv().await.is_some() {
        tracing::info!(config = %path.display(), "SIGHUP: reloading configuration");
        let new = match GatewayConfig::load(&path) {
            Ok(n) => n,
            Err(errs) => {
                for e in &errs.0 {
                    tracing::error!(error = %e, "config reload failed, keeping the running configuration");
                }
                continue;
            }
        };
        if !level_fixed {
            if let Err(e) = log.set_level(&new.log.level) {
                tracing::error!(error = %e, "cannot apply log_level");
            }
        }
        // Every running id that did not come from the file is the API's.
        let api_ids: Vec<String> = h
            .gateway_ids()
            .into_iter()
            .filter(|id| !file_ids.contains(id))
            .collect();
        let mut applied = Vec::new();
        for t in new.gateways {
            if api_ids.contains(&t.id) {
                tracing::error!(gateway.id = %t.id, "not applied: this gateway id is managed through the API");
                continue;
            }
            let id = t.id.clone();
            match h.apply(t).await {
                Ok(_) => applied.push(id),
                Err(e) => {
                    tracing::error!(gateway.id = %id, error = %e, "gateway not reloaded; it keeps its running configuration");
                    applied.push(id);
                }
            }
        }
        for gone in file_ids.iter().filter(|id| !applied.contains(id)) {
            h.remove(gone).await;
        }
        file_ids = applied;
        tracing::info!("configuration reloaded; listen, tls_cert/tls_key, limits and api settings take effect after a restart");
    }
}

/// `sgw client --enroll`: reads the string (argument, `-` for stdin, `@FILE`), writes the
/// client's files, says what it did; returns client.toml's path.
fn enroll_client(arg: &str, dir: &Path, write_only: bool) -> Result<PathBuf> {
    use std::io::Read as _;
    const MAX: u64 = 1 << 20;
    // On the command line the string (a token) is in every local user's `ps` for as long as
    // the process runs: only for a short-lived --write-only.
    let literal = arg != "-" && !arg.starts_with('@');
    if literal && !write_only && std::env::args_os().any(|a| a.to_string_lossy().contains(arg)) {
        return Err(bad(
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
                .context("reading the enrollment string from stdin")?;
            s
        }
        a if a.starts_with('@') => {
            let mut s = String::new();
            std::fs::File::open(&a[1..])
                .and_then(|f| f.take(MAX).read_to_string(&mut s))
                .with_context(|| format!("reading the enrollment string from {}", &a[1..]))?;
            s
        }
        a => a.to_owned(),
    };
    let e = sgw::enroll::Enrollment::decode(&text).map_err(bad)?;
    let files = sgw::enroll::write_client_dir(dir, &e, "127.0.0.1:9003").map_err(bad)?;
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

/// gateway.toml, its state file, and the gateway ids that file holds.
fn load_gateway(path: &Path) -> Result<(GatewayConfig, StateFile, Vec<config::TenantConfig>)> {
    let cfg = GatewayConfig::load(path).map_err(bad)?;
    let state = load_state(&cfg)?;
    let managed = state.tenants().map_err(|e| bad(e.join("\n")))?;
    Ok((cfg, state, managed))
}

fn bad<E: std::fmt::Display>(e: E) -> anyhow::Error {
    BadConfig(e.to_string()).into()
}

fn load_acl(path: &Path, cfg: &ClientConfig) -> Result<Acl> {
    Acl::load(path, cfg.default_policy).map_err(|errs| bad(errs.join("\n")))
}

/// Cancels on SIGTERM or SIGINT.
fn shutdown_on_signals() -> Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining, then shutting down (again: exit now)"),
            _ = int.recv() => tracing::info!("SIGINT: draining, then shutting down (again: exit now)"),
        }
        t.cancel();
        // A second signal means "now": skip the rest of the drain.
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting for open streams");
        std::process::exit(1);
    });
    Ok(token)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Version => {
            println!(
                "sgw {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                sgw::proto::SUBPROTOCOL
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config {
            cmd: ConfigCmd::Check { file },
        } => match config::load_any(&file) {
            Ok(AnyConfig::Client(c)) => {
                if let Err(errs) = Acl::load(&c.acl_file, c.default_policy) {
                    return Err(bad(errs.join("\n")));
                }
                for w in c.warnings(&file) {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok (client config, {} gateway(s))",
                    file.display(),
                    c.gateways.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Ok(AnyConfig::Gateway(g)) => {
                if let Err(errs) = sgw::gateway::check(&g) {
                    return Err(bad(errs.join("\n")));
                }
                // The state file is part of what the gateway would start with.
                let state = load_state(&g)?;
                let n: usize = g.gateways.iter().map(|t| t.destinations.len()).sum();
                println!(
                    "{}: ok (gateway config, {} gateway id(s), {n} destination(s); {} from state_file)",
                    file.display(),
                    g.gateways.len(),
                    state.gateways.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(bad(e)),
        },
        Cmd::Init {
            dir,
            listen,
            public,
            state_file,
            expose,
        } => {
            let opts = InitOptions {
                listen,
                public,
                state_file,
                expose,
                ..InitOptions::default()
            };
            let w = init::write(&dir, &opts).map_err(bad)?;
            print!("{}", init::summary(&w, &opts));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Enroll {
            gateway_id,
            config,
            url,
            out,
        } => {
            let (cfg, _, managed) = load_gateway(&config)?;
            let s = sgw::enroll::for_gateway(&cfg, &managed, &gateway_id, url.as_deref())
                .map_err(bad)?;
            if let Some(out) = &out {
                sgw::fsutil::write_private(out, format!("{s}\n").as_bytes())
                    .with_context(|| format!("writing {}", out.display()))?;
                eprintln!("wrote {} (mode 0600)", out.display());
            }
            eprintln!(
                "On the on-prem host, as root: sgw client --enroll - --dir /etc/sgw --write-only"
            );
            eprintln!(
                "and paste this line (it holds the gateway's token: hand it over like a password):"
            );
            println!("{s}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Gateway {
            config,
            log_level,
            log_format,
        } => {
            let (cfg, state, managed) = load_gateway(&config)?;
            let level_fixed = log_level.is_some();
            let log = log_settings(log_level, log_format, &cfg.log)?;
            // Installed before anything else: without a handler SIGHUP would terminate.
            let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            let shutdown = shutdown_on_signals()?;
            let api = cfg.api.clone();
            let admin = cfg.admin.clone();
            let file_ids: Vec<String> = cfg.gateways.iter().map(|g| g.id.clone()).collect();
            let gw = Gateway::bind_with(cfg, managed)
                .await
                .context("starting gateway")?;
            let h = gw.handle();
            if let Some(api) = &api {
                h.start_api(api, state, shutdown.clone())
                    .await
                    .context("starting the management API")?;
            }
            if let Some(admin) = &admin {
                h.start_admin(admin, api.clone(), Some(log.clone()), shutdown.clone())
                    .await
                    .context("starting the admin endpoint (admin_listen)")?;
            }
            tokio::spawn(reload_gateway(
                hup,
                config.clone(),
                h.clone(),
                log,
                level_fixed,
                file_ids,
            ));
            sgw::systemd::spawn_watchdog(shutdown.clone());
            sgw::systemd::ready(&format!("serving: tunnel endpoint {}", h.tunnel_addr()));
            let stop = shutdown.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                sgw::systemd::stopping();
            });
            gw.run(shutdown).await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Client {
            config,
            enroll,
            dir,
            write_only,
            acl,
            log_level,
            log_format,
        } => {
            let config = match (enroll, config) {
                (Some(e), _) => {
                    let files = enroll_client(&e, &dir, write_only)?;
                    if write_only {
                        return Ok(ExitCode::SUCCESS);
                    }
                    files
                }
                (None, Some(c)) => c,
                (None, None) => return Err(bad("give --config FILE or --enroll STRING")),
            };
            let cfg = ClientConfig::load(&config).map_err(bad)?;
            let acl_override = acl;
            let acl_path = acl_override.clone().unwrap_or_else(|| cfg.acl_file.clone());
            let rules = load_acl(&acl_path, &cfg)?;
            let level_fixed = log_level.is_some();
            let log = log_settings(log_level, log_format, &cfg.log)?;
            let shutdown = shutdown_on_signals()?;
            let admin_listen = cfg.admin_listen;
            let access = sgw::admin::Access {
                token: cfg.admin_token.clone(),
                hosts: cfg.admin_hosts.clone(),
            };
            let running = cfg.clone();
            let client = Client::new(cfg, rules)
                .map_err(bad)?
                .with_acl_file(acl_path)
                .with_log_forwarding(log.take_forwarded());
            let handle = client.handle();
            start_admin(admin_listen, access, &handle, Some(log.clone()), &shutdown).await?;
            systemd_client_status(&handle, &shutdown);
            // SIGHUP reloads the config and the ACL, all or nothing.
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!(config = %config.display(), "SIGHUP: reloading configuration and ACL");
                    sgw::client::reload_from_files(
                        &config,
                        acl_override.as_deref(),
                        &running,
                        &handle,
                        (!level_fixed).then_some(&log),
                    );
                }
            });
            client.run(shutdown).await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Quickstart { dir, expose } => quickstart(dir, expose).await,
        Cmd::Acl { cmd } => acl_cmd(cmd).await,
        Cmd::Status { admin, json } => {
            admin_request(&admin, Method::GET, "/v1/status".into(), None, |v| {
                if json {
                    serde_json::to_string_pretty(v).unwrap_or_default()
                } else {
                    sgw::admin::client::render_status(v)
                }
            })
            .await
        }
        Cmd::Health { admin, ready } => {
            let path = if ready { "/readyz" } else { "/healthz" };
            let (addr, token) = admin_target(&admin)?;
            match call(addr, Method::GET, path, None, token.as_deref()).await {
                Ok((200, _)) => Ok(ExitCode::SUCCESS),
                Ok((st, body)) => {
                    eprintln!("sgw: {path} answered {st}: {}", body.trim());
                    Ok(ExitCode::from(1))
                }
                Err(e) => {
                    eprintln!("sgw: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// Tells systemd: READY once the first tunnel is up, STATUS on every change, STOPPING on
/// shutdown; and feeds the watchdog.
fn systemd_client_status(handle: &sgw::client::ClientHandle, shutdown: &CancellationToken) {
    sgw::systemd::spawn_watchdog(shutdown.clone());
    sgw::systemd::status("connecting to the gateway");
    let mut st = handle.status();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut ready = false;
        loop {
            let line = {
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
            if line.0 > 0 && !ready {
                ready = true;
                sgw::systemd::ready(&line.1);
            } else {
                sgw::systemd::status(&line.1);
            }
            tokio::select! {
                r = st.changed() => if r.is_err() { break },
                _ = stop.cancelled() => {
                    sgw::systemd::stopping();
                    break;
                }
            }
        }
    });
}

/// `--from IP[:PORT]` (`[v6]:port` for IPv6 with a port).
fn parse_caller(s: &str) -> Result<SocketAddr> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
        .map_err(|_| bad(format!("--from: `{s}` is not IP or IP:PORT")))
}

async fn acl_cmd(cmd: AclCmd) -> Result<ExitCode> {
    match cmd {
        AclCmd::Check {
            file,
            target,
            from,
            at,
            default_policy,
            no_resolve,
        } => {
            let policy = match default_policy {
                PolicyArg::Allow => Policy::Allow,
                PolicyArg::Deny => Policy::Deny,
            };
            let acl = Acl::load(&file, policy).map_err(|e| bad(e.join("\n")))?;
            let (host, port, path) = parse_check_target(&target).map_err(bad)?;
            let at = match at {
                Some(a) => a.parse::<LocalTime>().map_err(bad)?,
                None => LocalTime::now(),
            };
            let mut req = Request::new(&host, port).at(at);
            req.path = path.as_deref();
            req.from = from.as_deref().map(parse_caller).transpose()?;
            let mut note = None;
            let addrs: Vec<IpAddr> = if req.addr.is_some() || no_resolve {
                Vec::new()
            } else {
                let lookup = tokio::net::lookup_host((host.as_str(), port));
                match tokio::time::timeout(Duration::from_secs(10), lookup)
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("timed out after 10 s")))
                {
                    Ok(a) => {
                        let mut v: Vec<IpAddr> = a.map(|a| a.ip()).collect();
                        v.dedup();
                        v
                    }
                    Err(e) => {
                        note = Some(format!("  ({host} did not resolve: {e}; name rules only)"));
                        Vec::new()
                    }
                }
            };
            let decisions: Vec<(Option<IpAddr>, Decision)> = if addrs.is_empty() {
                vec![(None, acl.check(&req))]
            } else {
                addrs
                    .iter()
                    .map(|a| (Some(*a), acl.check(&req.addr(*a))))
                    .collect()
            };
            let chosen = decisions
                .iter()
                .find(|(_, d)| d.allow)
                .unwrap_or(&decisions[0]);
            let verdict = if chosen.1.allow { "allow" } else { "deny" };
            match chosen.0 {
                Some(a) if addrs.len() > 1 || a.to_string() != host => {
                    println!("{verdict} {} (address {a})", acl.explain(&chosen.1))
                }
                _ => println!("{verdict} {}", acl.explain(&chosen.1)),
            }
            if decisions.len() > 1 {
                for (a, d) in &decisions {
                    let a = a.map(|a| a.to_string()).unwrap_or_default();
                    let v = if d.allow { "allow" } else { "deny" };
                    println!("  {a}: {v} {}", acl.explain(d));
                }
            }
            if let Some(n) = note {
                println!("{n}");
            }
            Ok(if chosen.1.allow {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        AclCmd::Lint { file } => {
            let acl = Acl::load(&file, Policy::Deny).map_err(|e| bad(e.join("\n")))?;
            let findings = sgw::acl::lint(&acl);
            for f in &findings {
                println!("{}:{}: warning: {}", file.display(), f.line, f.message);
            }
            println!(
                "{}: {} rule(s), {} warning(s)",
                file.display(),
                acl.rules.len(),
                findings.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        AclCmd::Add {
            rule,
            before,
            admin,
        } => {
            let body = serde_json::json!({ "rule": rule, "before": before }).to_string();
            admin_request(&admin, Method::POST, "/v1/acl".into(), Some(body), |v| {
                format!("added at line {}", v["line"])
            })
            .await
        }
        AclCmd::Remove { rule, line, admin } => {
            let q = match (rule, line) {
                (Some(r), None) => format!("rule={}", query_escape(&r)),
                (None, Some(l)) => format!("line={l}"),
                _ => return Err(bad("give a rule or --line N")),
            };
            admin_request(&admin, Method::DELETE, format!("/v1/acl?{q}"), None, |v| {
                format!("removed line {}", v["removed_line"])
            })
            .await
        }
        AclCmd::Show { admin } => {
            admin_request(&admin, Method::GET, "/v1/acl".into(), None, |v| {
                let mut out = format!(
                    "# {} (default policy: {})",
                    v["file"].as_str().unwrap_or(""),
                    v["default_policy"].as_str().unwrap_or("")
                );
                for r in v["rules"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n{:>5}  {}",
                        r["line"].as_u64().unwrap_or(0),
                        r["text"].as_str().unwrap_or("")
                    ));
                }
                out
            })
            .await
        }
    }
}

/// Calls the running client's admin endpoint and prints the answer. Exit 2 when the endpoint
/// rejects the input (400), 1 on any other failure.
async fn admin_request(
    args: &AdminArgs,
    method: Method,
    path: String,
    body: Option<String>,
    show: impl FnOnce(&serde_json::Value) -> String,
) -> Result<ExitCode> {
    let (addr, token) = admin_target(args)?;
    let (status, text) = call(addr, method, &path, body, token.as_deref()).await?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if (200..300).contains(&status) {
        println!("{}", show(&v));
        return Ok(ExitCode::SUCCESS);
    }
    let msg = v["error"].as_str().map(str::to_owned).unwrap_or(text);
    eprintln!("sgw: admin endpoint answered {status}: {msg}");
    Ok(ExitCode::from(if status == 400 { 2 } else { 1 }))
}

/// The admin endpoint address and token from `--config`, `--admin`, `SGW_ADMIN_TOKEN`.
fn admin_target(args: &AdminArgs) -> Result<(SocketAddr, Option<String>)> {
    let (mut addr, token) = match &args.config {
        // The gateway's admin endpoint too (`admin_listen` in gateway.toml, with admin_token).
        Some(c) => match config::load_any(c).map_err(bad)? {
            AnyConfig::Client(cfg) => (
                cfg.admin_listen,
                cfg.admin_token.map(|t| t.expose().to_owned()),
            ),
            AnyConfig::Gateway(g) => {
                let a = g.admin.ok_or_else(|| {
                    bad(format!(
                        "{}: no admin_listen: the gateway's admin endpoint is off",
                        c.display()
                    ))
                })?;
                (a.listen, a.token.map(|t| t.expose().to_owned()))
            }
        },
        None => (
            args.admin
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9003))),
            std::env::var("SGW_ADMIN_TOKEN").ok(),
        ),
    };
    if let Some(a) = args.admin {
        addr = a;
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::from([127, 0, 0, 1]));
    }
    Ok((addr, token))
}

/// Binds the admin endpoint and serves it until shutdown.
async fn start_admin(
    addr: SocketAddr,
    access: sgw::admin::Access,
    handle: &sgw::client::ClientHandle,
    log: Option<sgw::telemetry::LogControl>,
    shutdown: &CancellationToken,
) -> Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the admin endpoint on {addr} (admin_listen)"))?;
    let bound = l.local_addr()?;
    tracing::info!(admin.addr = %bound, auth = access.token.is_some(), "admin endpoint listening");
    let backend = std::sync::Arc::new(sgw::client::AdminBackend::new(handle.clone()).with_log(log));
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = sgw::admin::serve(l, backend, access, stop).await {
            tracing::error!(error = %e, "admin endpoint failed");
        }
    });
    Ok(bound)
}

/// A tiny HTTP service so quickstart shows traffic with nothing else installed.
async fn hello_service() -> Result<std::net::SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = 0;
                // Read the request head (bounded), then answer and close.
                while seen < buf.len() {
                    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf[seen..]))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => {
                            seen += n;
                            if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                        _ => return,
                    }
                }
                let body = "hello from sgw quickstart: this response came through the tunnel\n";
                let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

/// Drain grace for quickstart's Ctrl-C (the daemons default to 30 s).
const QUICKSTART_GRACE: Duration = Duration::from_secs(2);

async fn quickstart(dir: Option<PathBuf>, mut expose: Vec<Expose>) -> Result<ExitCode> {
    let level = std::env::var("SGW_LOG_LEVEL").unwrap_or_else(|_| "warn".into());
    let log = Some(sgw::telemetry::init(&level, LogFormat::Text).map_err(bad)?);
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sgw-quickstart-{:08x}", rand::random::<u32>()))
    });
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        return Err(bad(format!(
            "{} is not empty; quickstart writes a fresh set of files",
            dir.display()
        )));
    }
    let builtin = expose.is_empty();
    if builtin {
        let a = hello_service().await?;
        expose.push(Expose {
            host: a.ip().to_string(),
            port: a.port(),
            cloud_port: 0,
        });
    }
    let opts = InitOptions {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        expose: expose.clone(),
        ..InitOptions::default()
    };
    let written = init::write(&dir, &opts).map_err(bad)?;
    let mut gcfg = GatewayConfig::load(&written.gateway_toml).map_err(bad)?;
    // Interactive: Ctrl-C should not wait long for connections a user left open.
    gcfg.shutdown_grace = QUICKSTART_GRACE;
    let gw = Gateway::bind(gcfg).await.context("starting gateway")?;
    let gh = gw.handle();
    let shutdown = shutdown_on_signals()?;
    // The gateway picked its tunnel port; point the client config at it.
    let tunnel_port = gh.tunnel_addr().port();
    let client_src = std::fs::read_to_string(&written.client_toml)?
        .replace("localhost:0/", &format!("localhost:{tunnel_port}/"));
    std::fs::write(&written.client_toml, client_src)?;
    let mut ccfg = ClientConfig::load(&written.client_toml).map_err(bad)?;
    ccfg.shutdown_grace = QUICKSTART_GRACE;
    let tunnels: usize = ccfg.gateways.iter().map(|g| g.tunnels).sum();
    let rules = load_acl(&written.acl, &ccfg)?;
    let admin_listen = ccfg.admin_listen;
    let access = sgw::admin::Access {
        token: ccfg.admin_token.clone(),
        hosts: ccfg.admin_hosts.clone(),
    };
    let client = Client::new(ccfg, rules)
        .map_err(bad)?
        .with_acl_file(written.acl.clone());
    let admin = start_admin(admin_listen, access, &client.handle(), log, &shutdown).await?;
    let mut status = client.handle().status();
    let gw_task = tokio::spawn(gw.run(shutdown.clone()));
    let client_task = tokio::spawn(client.run(shutdown.clone()));
    // `wait_for` returns a guard holding the watch's read lock: drop it at once.
    let ready = tokio::time::timeout(Duration::from_secs(15), async {
        status.wait_for(|s| s.tunnels_up >= tunnels).await.is_ok()
    })
    .await;
    if ready != Ok(true) {
        anyhow::bail!("the client did not connect to the gateway within 15 s");
    }
    println!(
        "sgw quickstart: gateway and client running, {tunnels} tunnel(s) up; files in {}",
        dir.display()
    );
    for (i, e) in expose.iter().enumerate() {
        if let Some(a) = gh.dest_addr(&format!("dest{}", i + 1)) {
            println!("  {}:{} is reachable at {a}", e.host, e.port);
            if builtin {
                println!("  try: curl http://{a}/");
            }
        }
    }
    println!("  admin endpoint: http://{admin}/ (healthz, readyz, metrics, v1/status, v1/acl)");
    println!("Ctrl-C stops.");
    let _ = gw_task.await;
    let _ = client_task.await;
    Ok(ExitCode::SUCCESS)
}
