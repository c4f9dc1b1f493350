//! Commands that call a running process's admin endpoint: `sgw status`, `sgw health`, and
//! (through [`request`]) `sgw acl add|remove|show`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use hyper::Method;

use crate::admin::client::{call, render_status, AdminAddr, CallError};
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
    let targets = targets(&args.admin)?;
    match call_first(targets, Method::GET, path, None, false).await {
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
    let (status, text) = call_first(targets(args)?, method, &path, body, true).await?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if (200..300).contains(&status) {
        println!("{}", show(&v));
        return Ok(ExitCode::SUCCESS);
    }
    let msg = v["error"].as_str().map(str::to_owned).unwrap_or(text);
    eprintln!("sgw: admin endpoint answered {status}: {msg}");
    Ok(ExitCode::from(if status == 400 { 2 } else { 1 }))
}

/// Calls the first of `targets`: a config's socket, then its `admin_listen` only if this
/// user may not use the socket (such a user may still hold the token). A socket that is
/// missing or refuses means the process is down (or started before `admin_socket` was set):
/// then its TCP port may be anyone's, and the token stays home; a call without a token
/// (`sgw health`) tries it all the same.
async fn call_first(
    targets: Vec<(AdminAddr, Option<String>)>,
    method: Method,
    path: &str,
    body: Option<String>,
    send_token: bool,
) -> Result<(u16, String), CallError> {
    let mut last = None;
    for (addr, token) in targets {
        let token = token.as_deref().filter(|_| send_token);
        match call(addr, method.clone(), path, body.clone(), token).await {
            Err(e @ CallError::Connect { kind, .. })
                if !send_token || kind == std::io::ErrorKind::PermissionDenied =>
            {
                last = Some(e);
            }
            r => return r,
        }
    }
    Err(last.unwrap_or(CallError::Nowhere))
}

/// Where the admin endpoint is, in the order to try, each with the token to send there:
/// from `--config` (its `admin_socket`, then its `admin_listen` with its token), `--admin`
/// (only that), `SGW_ADMIN_TOKEN`. No token goes to a socket: it vouches for its callers.
fn targets(args: &AdminArgs) -> Result<Vec<(AdminAddr, Option<String>)>, Error> {
    let configured = |socket: Option<PathBuf>, listen, token: Option<config::Secret>| {
        let tcp = (AdminAddr::Tcp(listen), token.map(|t| t.expose().to_owned()));
        match socket {
            Some(p) => vec![(AdminAddr::Unix(p), None), tcp],
            None => vec![tcp],
        }
    };
    let mut found = match &args.config {
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
        None => vec![(
            AdminAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 9003))),
            std::env::var("SGW_ADMIN_TOKEN").ok(),
        )],
    };
    match &args.admin {
        Some(AdminAddr::Unix(p)) => found = vec![(AdminAddr::Unix(p.clone()), None)],
        Some(a) => {
            let token = found.into_iter().find_map(|(_, t)| t);
            found = vec![(a.clone(), token)];
        }
        None => {}
    }
    for (addr, _) in &mut found {
        if let AdminAddr::Tcp(a) = addr {
            if a.ip().is_unspecified() {
                a.set_ip(IpAddr::from([127, 0, 0, 1]));
            }
        }
    }
    Ok(found)
}
