//! `sgw doctor`: walks the path a tunnel and a stream take, one step at a time, and prints
//! one line per step: ok, or the problem and the fix. On the on-prem host it reads
//! client.toml ([`client`]); on the cloud side, gateway.toml (`--gateway`, [`gateway`]).
//! Exit 0 when no step failed (warnings do not fail), 1 when one did; `--json` gives the
//! same steps for tools.

mod client;
mod gateway;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::daemon::Error;

/// `sgw doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// The client's config (on the on-prem host).
    #[arg(
        long,
        env = "SGW_CLIENT_CONFIG",
        default_value = "/etc/sgw/client.toml"
    )]
    pub config: PathBuf,
    /// Check the cloud side from this gateway.toml instead.
    #[arg(long)]
    pub gateway: Option<PathBuf>,
    /// The running process's admin endpoint, when the config's admin_listen has port 0.
    #[arg(long, env = "SGW_ADMIN")]
    pub admin: Option<SocketAddr>,
    /// Print the steps as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: DoctorArgs) -> Result<ExitCode, Error> {
    let mut report = Report::new(args.json);
    match &args.gateway {
        Some(g) => gateway::check(g, args.admin, &mut report).await,
        None => client::check(&args.config, args.admin, &mut report).await,
    }
    Ok(report.finish())
}

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Works, but deserves attention (a certificate near expiry, a lint finding).
    Warn,
    Fail,
    /// Not checked: a step before it failed, or nothing to check.
    Skip,
}

/// One step: what was checked, on what, how it went, and (for a problem) the reason code
/// of docs/OPERATIONS.md and a sentence with the cause and the fix.
#[derive(Debug, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub subject: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub message: String,
}

/// The steps so far; in text mode each is printed as it is added, so a slow step shows
/// where the walk is.
pub struct Report {
    json: bool,
    steps: Vec<Step>,
}

impl Report {
    fn new(json: bool) -> Report {
        Report {
            json,
            steps: Vec::new(),
        }
    }

    fn add(
        &mut self,
        step: &'static str,
        subject: impl Into<String>,
        outcome: Outcome,
        reason: Option<&'static str>,
        message: impl Into<String>,
    ) {
        let s = Step {
            step,
            subject: subject.into(),
            outcome,
            reason,
            message: message.into(),
        };
        if !self.json {
            println!("{}", line(&s));
        }
        self.steps.push(s);
    }

    pub fn ok(&mut self, step: &'static str, subject: impl Into<String>, msg: impl Into<String>) {
        self.add(step, subject, Outcome::Ok, None, msg);
    }

    pub fn warn(
        &mut self,
        step: &'static str,
        subject: impl Into<String>,
        reason: Option<&'static str>,
        msg: impl Into<String>,
    ) {
        self.add(step, subject, Outcome::Warn, reason, msg);
    }

    pub fn fail(
        &mut self,
        step: &'static str,
        subject: impl Into<String>,
        reason: &'static str,
        msg: impl Into<String>,
    ) {
        self.add(step, subject, Outcome::Fail, Some(reason), msg);
    }

    pub fn skip(&mut self, step: &'static str, subject: impl Into<String>, msg: impl Into<String>) {
        self.add(step, subject, Outcome::Skip, None, msg);
    }

    /// The config step: the loaded config, or a failed step listing its errors.
    fn config<T>(
        &mut self,
        file: &str,
        loaded: Result<T, String>,
        ok: impl FnOnce(&T) -> String,
    ) -> Option<T> {
        match loaded {
            Ok(c) => {
                self.ok("config", file, ok(&c));
                Some(c)
            }
            Err(e) => {
                self.fail(
                    "config",
                    file,
                    "config_invalid",
                    format!("{e}; fix these lines (`sgw config check {file}` lists the same)"),
                );
                None
            }
        }
    }

    fn failed(&self) -> bool {
        self.steps.iter().any(|s| s.outcome == Outcome::Fail)
    }

    fn finish(self) -> ExitCode {
        let failed = self.failed();
        if self.json {
            let v = serde_json::json!({ "ok": !failed, "steps": self.steps });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            let (fails, warns) = self.steps.iter().fold((0, 0), |(f, w), s| match s.outcome {
                Outcome::Fail => (f + 1, w),
                Outcome::Warn => (f, w + 1),
                _ => (f, w),
            });
            println!(
                "{}: {} step(s), {fails} failed, {warns} warning(s)",
                if failed { "NOT OK" } else { "all ok" },
                self.steps.len()
            );
        }
        if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// A step as one line: `ok   tls          wss://gw:9000/tunnel: ...`, a problem with its
/// reason code in brackets.
fn line(s: &Step) -> String {
    let label = match s.outcome {
        Outcome::Ok => "ok",
        Outcome::Warn => "warn",
        Outcome::Fail => "FAIL",
        Outcome::Skip => "skip",
    };
    let reason = s.reason.map(|r| format!("[{r}] ")).unwrap_or_default();
    format!(
        "{label:<4} {:<12} {}: {reason}{}",
        s.step, s.subject, s.message
    )
}

/// The admin endpoint to call: `--admin`, else the config's (loopback for an unspecified
/// address); `None` when the config's has port 0 (a new port each start).
fn admin_addr(configured: SocketAddr, flag: Option<SocketAddr>) -> Option<SocketAddr> {
    let mut a = flag.unwrap_or(configured);
    if a.ip().is_unspecified() {
        a.set_ip(std::net::IpAddr::from([127, 0, 0, 1]));
    }
    (a.port() != 0).then_some(a)
}

/// A certificate's names, expiry and days left, as a step message; and whether it expires
/// within [`EXPIRY_WARN_DAYS`] (or has expired).
fn describe_cert(facts: &crate::tls::CertFacts) -> (String, i64) {
    let now = (crate::telemetry::unix_ms() / 1000) as i64;
    let days = facts.days_left(now);
    let names = if facts.names.is_empty() {
        "no names".to_string()
    } else {
        facts.names.join(", ")
    };
    (
        format!(
            "certificate for {names}; expires {} ({days} day(s) from now)",
            facts.expiry_date()
        ),
        days,
    )
}

/// A certificate expiring sooner than this is a warning.
const EXPIRY_WARN_DAYS: i64 = 30;
