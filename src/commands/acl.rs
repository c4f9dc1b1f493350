//! `sgw acl`: check and lint an ACL file offline; show and change a running client's rules
//! through its admin endpoint.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hyper::Method;

use crate::acl::{parse_check_target, Decision, LocalTime, Request};
use crate::admin::client::query_escape;
use crate::config::Policy;
use crate::daemon::{load_acl, Error};

use super::admin::{request, AdminArgs};

/// How long `acl check` waits for a name to resolve.
const RESOLVE_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Subcommand)]
pub enum AclCmd {
    /// Which rule decides HOST:PORT[/PATH] and why. Exit 0 allow, 3 deny, 2 bad input.
    Check(CheckArgs),
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

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[arg(long)]
    pub file: PathBuf,
    /// HOST:PORT[/PATH]; a name is resolved and every address checked, as the client does.
    pub target: String,
    /// The caller, for `from` rules: `IP[:PORT]`.
    #[arg(long)]
    pub from: Option<String>,
    /// Local time for `during` rules: `DAY HH:MM` or YYYY-MM-DDTHH:MM (default: now).
    #[arg(long)]
    pub at: Option<String>,
    /// Policy when no rule matches.
    #[arg(long, value_enum, default_value = "deny")]
    pub default_policy: PolicyArg,
    /// Check the name only; do not resolve it.
    #[arg(long)]
    pub no_resolve: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PolicyArg {
    Allow,
    Deny,
}

pub async fn run(cmd: AclCmd) -> Result<ExitCode, Error> {
    match cmd {
        AclCmd::Check(args) => check(args).await,
        AclCmd::Lint { file } => {
            let acl = load_acl(&file, Policy::Deny)?;
            let findings = crate::acl::lint(&acl);
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
            request(&admin, Method::POST, "/v1/acl".into(), Some(body), |v| {
                format!("added at line {}", v["line"])
            })
            .await
        }
        AclCmd::Remove { rule, line, admin } => {
            let q = match (rule, line) {
                (Some(r), None) => format!("rule={}", query_escape(&r)),
                (None, Some(l)) => format!("line={l}"),
                _ => return Err(Error::input("give a rule or --line N")),
            };
            request(&admin, Method::DELETE, format!("/v1/acl?{q}"), None, |v| {
                format!("removed line {}", v["removed_line"])
            })
            .await
        }
        AclCmd::Show { admin } => {
            request(&admin, Method::GET, "/v1/acl".into(), None, |v| {
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

/// `sgw acl check`: the decision for the target's name and, as the client judges a
/// stream, for every address it resolves to; allowed when any address is.
async fn check(args: CheckArgs) -> Result<ExitCode, Error> {
    let policy = match args.default_policy {
        PolicyArg::Allow => Policy::Allow,
        PolicyArg::Deny => Policy::Deny,
    };
    let acl = load_acl(&args.file, policy)?;
    let (host, port, path) = parse_check_target(&args.target).map_err(Error::input)?;
    let at = match &args.at {
        Some(a) => a.parse::<LocalTime>().map_err(Error::input)?,
        None => LocalTime::now(),
    };
    let mut req = Request::new(&host, port).at(at);
    req.path = path.as_deref();
    // Without a path, as the client judges a TCP or TLS destination's stream.
    req.opaque = req.path.is_none();
    req.from = args.from.as_deref().map(parse_caller).transpose()?;
    let mut note = None;
    let addrs: Vec<IpAddr> = if req.addr.is_some() || args.no_resolve {
        Vec::new()
    } else {
        match resolve(&host, port).await {
            Ok(v) => v,
            Err(e) => {
                note = Some(format!(
                    "  ({host} did not resolve: {e}; judged as the client judges a name only a \
                     proxy resolves: name rules, and address deny rules above them)"
                ));
                Vec::new()
            }
        }
    };
    let decisions: Vec<(Option<IpAddr>, Decision)> = if req.addr.is_some() || args.no_resolve {
        vec![(None, acl.check(&req))]
    } else if addrs.is_empty() {
        // As the client judges a name only a proxy could resolve.
        vec![(None, acl.check_unresolved(&req))]
    } else {
        addrs
            .iter()
            .map(|a| (Some(*a), acl.check(&req.addr(*a))))
            .collect()
    };
    let Some(chosen) = decisions
        .iter()
        .find(|(_, d)| d.allow)
        .or_else(|| decisions.first())
    else {
        return Err(Error::input("no decision"));
    };
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

/// Every address `host` resolves to, once each.
async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
    let lookup = tokio::net::lookup_host((host, port));
    let found = tokio::time::timeout(RESOLVE_WITHIN, lookup)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::other(format!(
                "timed out after {} s",
                RESOLVE_WITHIN.as_secs()
            )))
        })?;
    let mut v: Vec<IpAddr> = found.map(|a| a.ip()).collect();
    v.dedup();
    Ok(v)
}

/// `--from IP[:PORT]` (`[v6]:port` for IPv6 with a port).
fn parse_caller(s: &str) -> Result<SocketAddr, Error> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
        .map_err(|_| Error::Input(format!("--from: `{s}` is not IP or IP:PORT")))
}
