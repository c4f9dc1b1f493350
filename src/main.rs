//! The `sgw` command line: a thin layer over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use sgw::acl::Acl;
use sgw::client::Client;
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
    /// Run the on-prem client daemon.
    Client {
        #[arg(long)]
        config: PathBuf,
        /// ACL file (overrides acl_file in the config).
        #[arg(long)]
        acl: Option<PathBuf>,
        #[arg(long)]
        log_level: Option<String>,
        #[arg(long, value_enum)]
        log_format: Option<Format>,
    },
    /// Run the gateway.
    Gateway {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        log_level: Option<String>,
        #[arg(long, value_enum)]
        log_format: Option<Format>,
    },
    /// Write a CA, certificates, token, gateway.toml, client.toml and acl.list into DIR.
    Init {
        dir: PathBuf,
        /// Tunnel endpoint address.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        /// Expose an on-prem service: HOST:PORT[@CLOUD_PORT].
        #[arg(long)]
        expose: Vec<Expose>,
    },
    /// Run a gateway and a client in one process on loopback and print each cloud address.
    Quickstart {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Expose an on-prem service: HOST:PORT[@CLOUD_PORT] (default: a built-in HTTP service).
        #[arg(long)]
        expose: Vec<Expose>,
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
) -> Result<()> {
    let level = level.unwrap_or_else(|| cfg.level.clone());
    let format = match format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Text) => LogFormat::Text,
        None => cfg.format,
    };
    sgw::telemetry::init(&level, format).map_err(|e| BadConfig(format!("log settings: {e}")).into())
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
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        t.cancel();
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
                println!(
                    "{}: ok (client config, {} gateway(s))",
                    file.display(),
                    c.gateways.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Ok(AnyConfig::Gateway(g)) => {
                let n: usize = g.gateways.iter().map(|t| t.destinations.len()).sum();
                println!(
                    "{}: ok (gateway config, {} gateway id(s), {n} destination(s))",
                    file.display(),
                    g.gateways.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(bad(e)),
        },
        Cmd::Init {
            dir,
            listen,
            expose,
        } => {
            let opts = InitOptions {
                listen,
                expose,
                ..InitOptions::default()
            };
            let w = init::write(&dir, &opts).map_err(bad)?;
            println!(
                "wrote {}, {}, {} and certificates",
                w.gateway_toml.display(),
                w.client_toml.display(),
                w.acl.display()
            );
            println!("run: sgw gateway --config {}", w.gateway_toml.display());
            println!("     sgw client --config {}", w.client_toml.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Gateway {
            config,
            log_level,
            log_format,
        } => {
            let cfg = GatewayConfig::load(&config).map_err(bad)?;
            log_settings(log_level, log_format, &cfg.log)?;
            let shutdown = shutdown_on_signals()?;
            let gw = Gateway::bind(cfg).await.context("starting gateway")?;
            gw.run(shutdown).await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Client {
            config,
            acl,
            log_level,
            log_format,
        } => {
            let cfg = ClientConfig::load(&config).map_err(bad)?;
            let acl_path = acl.unwrap_or_else(|| cfg.acl_file.clone());
            let rules = load_acl(&acl_path, &cfg)?;
            log_settings(log_level, log_format, &cfg.log)?;
            let shutdown = shutdown_on_signals()?;
            let policy = cfg.default_policy;
            let client = Client::new(cfg, rules).map_err(bad)?;
            let handle = client.handle();
            // SIGHUP reloads the ACL, all or nothing.
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match Acl::load(&acl_path, policy) {
                        Ok(a) => {
                            tracing::info!(rules = a.rules.len(), file = %acl_path.display(), "ACL reloaded");
                            handle.set_acl(a);
                        }
                        Err(errs) => {
                            for e in errs {
                                tracing::error!(error = %e, "ACL reload failed, keeping the old rules");
                            }
                        }
                    }
                }
            });
            client.run(shutdown).await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Quickstart { dir, expose } => quickstart(dir, expose).await,
    }
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

async fn quickstart(dir: Option<PathBuf>, mut expose: Vec<Expose>) -> Result<ExitCode> {
    let level = std::env::var("SGW_LOG_LEVEL").unwrap_or_else(|_| "warn".into());
    sgw::telemetry::init(&level, LogFormat::Text).map_err(bad)?;
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
        expose: expose.clone(),
        ..InitOptions::default()
    };
    let written = init::write(&dir, &opts).map_err(bad)?;
    let gcfg = GatewayConfig::load(&written.gateway_toml).map_err(bad)?;
    let gw = Gateway::bind(gcfg).await.context("starting gateway")?;
    let gh = gw.handle();
    let shutdown = shutdown_on_signals()?;
    // The gateway picked its tunnel port; point the client config at it.
    let tunnel_port = gh.tunnel_addr().port();
    let client_src = std::fs::read_to_string(&written.client_toml)?
        .replace("localhost:0/", &format!("localhost:{tunnel_port}/"));
    std::fs::write(&written.client_toml, client_src)?;
    let ccfg = ClientConfig::load(&written.client_toml).map_err(bad)?;
    let tunnels: usize = ccfg.gateways.iter().map(|g| g.tunnels).sum();
    let rules = load_acl(&written.acl, &ccfg)?;
    let client = Client::new(ccfg, rules).map_err(bad)?;
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
    println!("Ctrl-C stops.");
    let _ = gw_task.await;
    let _ = client_task.await;
    Ok(ExitCode::SUCCESS)
}
