//! `sgw quickstart`: a gateway and a client in one process on loopback, with fresh
//! certificates, tokens and a default-deny ACL that allows what is exposed; a built-in
//! HTTP service when nothing is, so the first `curl` shows traffic through the tunnel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::Client;
use crate::config::{ClientConfig, GatewayConfig, LogFormat};
use crate::gateway::Gateway;
use crate::init::{self, Expose, InitOptions};

use super::client::{start_admin, AdminSettings};
use super::{load_acl, shutdown_on_signals, Error};

/// Drain grace for quickstart's Ctrl-C (the daemons default to 30 s).
const GRACE: Duration = Duration::from_secs(2);
/// How long the client may take to bring its tunnels up.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// `sgw quickstart`.
#[derive(Debug, clap::Args)]
pub struct QuickstartArgs {
    /// Where to write the files (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Expose an on-prem service: HOST:PORT[@CLOUD_PORT] (default: a built-in HTTP service).
    #[arg(long)]
    pub expose: Vec<Expose>,
}

/// Runs gateway and client until Ctrl-C.
pub async fn run(args: QuickstartArgs) -> Result<(), Error> {
    let level = std::env::var("SGW_LOG_LEVEL").unwrap_or_else(|_| "warn".into());
    let log = Some(
        crate::telemetry::init(
            &level,
            true,
            LogFormat::Text,
            (
                crate::config::LOG_LINES_PER_SECOND,
                crate::config::LOG_LINES_PER_SECOND_TOTAL,
            ),
            crate::config::LOG_BUFFER_LINES,
        )
        .map_err(Error::input)?,
    );
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sgw-quickstart-{:08x}", rand::random::<u32>()))
    });
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        return Err(Error::Input(format!(
            "{} is not empty; quickstart writes a fresh set of files",
            dir.display()
        )));
    }
    let mut expose = args.expose;
    let builtin = expose.is_empty();
    if builtin {
        let a = hello_service().await?;
        expose.push(Expose {
            host: a.ip().to_string(),
            port: a.port(),
            cloud_port: 0,
        });
    }
    // Bound first, so the files name the port the gateway really serves on.
    let tunnel = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(Error::io("binding the tunnel endpoint on 127.0.0.1"))?;
    let tunnel_addr = tunnel
        .local_addr()
        .map_err(Error::io("binding the tunnel endpoint on 127.0.0.1"))?;
    let opts = InitOptions {
        listen: tunnel_addr.to_string(),
        admin_listen: "127.0.0.1:0".into(),
        expose: expose.clone(),
        ..InitOptions::default()
    };
    let written = init::write(&dir, &opts).map_err(Error::input)?;
    let mut gcfg = GatewayConfig::load(&written.gateway_toml).map_err(Error::input)?;
    // Interactive: Ctrl-C should not wait long for connections a user left open.
    gcfg.shutdown_grace = GRACE;
    let gw = Gateway::serve_on(tunnel, gcfg, Vec::new())
        .await
        .map_err(Error::start("starting gateway"))?;
    let gh = gw.handle();
    let shutdown = shutdown_on_signals()?;
    if let Some(log) = &log {
        tokio::spawn(log.clone().report_suppressed(shutdown.clone()));
    }
    let mut ccfg = ClientConfig::load(&written.client_toml).map_err(Error::input)?;
    ccfg.shutdown_grace = GRACE;
    let tunnels: usize = ccfg.gateways.iter().map(|g| g.tunnels).sum();
    let client_workers = super::worker_threads(ccfg.workers);
    let rules = load_acl(&written.acl, ccfg.default_policy)?;
    let admin = AdminSettings::of(&ccfg);
    let client = Client::new(ccfg, rules)
        .map_err(Error::input)?
        .with_acl_file(written.acl.clone());
    let admin = start_admin(admin, &client.handle(), log, &shutdown).await?;
    let mut status = client.handle().status();
    let gw_task = tokio::spawn(gw.run(shutdown.clone()));
    // The client gets worker threads of its own, as it has on its own host. On the gateway's
    // workers, the two ends of every stream took turns on the same threads: one stream
    // carried about 10 Gb/s against 12-13 as two processes (docs/PERFORMANCE.md).
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_workers)
        .enable_all()
        .thread_name("sgw-client")
        .build()
        .map_err(Error::io("starting the client's worker threads"))?;
    let client_task = client_rt.spawn(client.run(shutdown.clone()));
    let _client_rt = OwnRuntime(Some(client_rt));
    // `wait_for` returns a guard holding the watch's read lock: drop it at once.
    let ready = tokio::time::timeout(READY_WITHIN, async {
        status.wait_for(|s| s.tunnels_up >= tunnels).await.is_ok()
    })
    .await;
    if ready != Ok(true) {
        return Err(Error::NotReady(READY_WITHIN.as_secs()));
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
    Ok(())
}

/// The client's runtime, owned by quickstart's task: let go of without waiting for its
/// tasks (a runtime dropped inside another runtime's task would panic), once the client
/// has stopped or quickstart gave up on it.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A tiny HTTP service so quickstart shows traffic with nothing else installed.
async fn hello_service() -> Result<SocketAddr, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let what = "binding the built-in HTTP service on 127.0.0.1";
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(Error::io(what))?;
    let addr = l.local_addr().map_err(Error::io(what))?;
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
