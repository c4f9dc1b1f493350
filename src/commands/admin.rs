//! Commands that call a running process's admin endpoint: `sgw status`, `sgw health`, and
//! (through [`request`]) `sgw acl add|remove|show`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use hyper::Method;

use crate::admin::client::{call, render_status, AdminAddr};
use crate::config::{self, AnyConfig};
use crate::daemon::Error;

/// Where the running client's admin endpoint is.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The client's (or gateway's) config: its admin_socket, else its admin_listen and
    /// admin_token, are used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The admin endpoint: ip:port (default 127.0.0.1:9003) or a Unix socket (unix:PATH).
    #[arg(long, env = "SGW_ADMIN")]
    pub admin: Option<AdminAddr>,
}

/// `sgw status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Print the raw JSON of /v1/status.
    #[arg(long)]
    pub json: bool,
}

/// `sgw health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    #[arg(long)]
    pub ready: bool,
}

pub async fn status(args: StatusArgs) -> Result<ExitCode, Error> {
    request(&args.admin, Method::GET, "/v1/status".into(), None, |v| {
        if args.json {
            serde_json::to_string_pretty(v).unwrap_or_default()
        } else {
            render_status(v)
        }
    })
    .await
}

/// Exit 0 when `/healthz` (or `/readyz`) answers 200, else 1 with what it said.
pub async fn health(args: HealthArgs) -> Result<ExitCode, Error> {
    let path = if args.ready { "/readyz" } else { "/healthz" };
    // Both answer without the token, and health checks run exactly when the endpoint may be
    // down and its port free for another local user's listener: the token stays home.
    let (addr, _) = target(&args.admin)?;
    match call(addr, Method::GET, path, None, None).await {
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

/// Calls the admin endpoint and prints `show` of the answer. Exit 2 when the endpoint
/// rejects the input (400), 1 on any other failure.
pub async fn request(
    args: &AdminArgs,
    method: Method,
    path: String,
    body: Option<String>,
    show: impl FnOnce(&serde_json::Value) -> String,
) -> Result<ExitCode, Error> {
    let (addr, token) = target(args)?;
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
fn target(args: &AdminArgs) -> Result<(AdminAddr, Option<String>), Error> {
    // The config's socket wins unless `--admin` names another place: no token is needed
    // there, so none is sent.
    let configured = |socket: Option<PathBuf>, listen, token: Option<config::Secret>| match socket
        .filter(|_| args.admin.is_none())
    {
        Some(p) => (AdminAddr::Unix(p), None),
        None => (AdminAddr::Tcp(listen), token.map(|t| t.expose().to_owned())),
    };
    let (addr, token) = match &args.config {
        // The gateway's admin endpoint too (`admin_listen` in gateway.toml, with admin_token).
        Some(c) => match config::load_any(c).map_err(Error::input)? {
            AnyConfig::Client(cfg) => {
                configured(cfg.admin_socket, cfg.admin_listen, cfg.admin_token)
            }
            AnyConfig::Gateway(g) => {
                let a = g.admin.ok_or_else(|| {
                    Error::Input(format!(
                        "{}: no admin_listen: the gateway's admin endpoint is off",
                        c.display()
                    ))
                })?;
                configured(a.socket, a.listen, a.token)
            }
        },
        None => (
            AdminAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 9003))),
            std::env::var("SGW_ADMIN_TOKEN").ok(),
        ),
    };
    let (mut addr, token) = match &args.admin {
        // The token is for the TCP endpoint; the socket vouches for its callers itself.
        Some(AdminAddr::Unix(p)) => (AdminAddr::Unix(p.clone()), None),
        Some(a) => (a.clone(), token),
        None => (addr, token),
    };
    if let AdminAddr::Tcp(a) = &mut addr {
        if a.ip().is_unspecified() {
            a.set_ip(IpAddr::from([127, 0, 0, 1]));
        }
    }
    Ok((addr, token))
}
