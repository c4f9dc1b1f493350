//! The `sgw` command line: parses arguments and hands each command to the library
//! (`sgw::daemon` for the long-running programs, `sgw::commands` for the rest).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sgw::commands::acl::AclCmd;
use sgw::commands::admin::{HealthArgs, StatusArgs};
use sgw::commands::doctor::DoctorArgs;
use sgw::commands::setup::{EnrollArgs, InitArgs};
use sgw::commands::state::StateCmd;
use sgw::commands::{acl, admin, doctor, setup, state};
use sgw::daemon::client::ClientArgs;
use sgw::daemon::gateway::GatewayArgs;
use sgw::daemon::quickstart::QuickstartArgs;
use sgw::daemon::{self, Error};

/// jemalloc, not glibc's malloc: glibc hands the top of a thread's heap back to the kernel as
/// soon as 128 KiB of it is free, and the data path frees and reallocates buffers of that
/// size all the time (tungstenite's frame buffers, rustls's records, relay chunks), so each GB
/// relayed cost 16-95 thousand page faults, each zeroing a fresh page: about 15% of the CPU
/// per byte (docs/PERFORMANCE.md). Its settings are in .cargo/config.toml.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

#[derive(Subcommand)]
enum Cmd {
    /// Run the on-prem client daemon. Options also come from SGW_CLIENT_* env vars.
    Client(ClientArgs),
    /// Run the gateway. Options also come from SGW_GATEWAY_* env vars.
    Gateway(GatewayArgs),
    /// Write a CA, certificates, tokens, gateway.toml, client.toml and acl.list into DIR.
    Init(InitArgs),
    /// Print the enrollment string for a gateway id: an on-prem host joins with
    /// `sgw client --enroll STRING`. The string holds the token: hand it over like one.
    Enroll(EnrollArgs),
    /// Run a gateway and a client in one process on loopback and print each cloud address.
    Quickstart(QuickstartArgs),
    /// ACL tools: check and lint a file; show and change a running client's rules.
    Acl {
        #[command(subcommand)]
        cmd: AclCmd,
    },
    /// The running client's tunnels, destinations and active streams (from its admin endpoint).
    Status(StatusArgs),
    /// Exit 0 if the running process is alive (/healthz), or with --ready, ready (/readyz).
    /// For container health checks.
    Health(HealthArgs),
    /// Walk the path step by step (config, ACL, DNS, TCP, TLS, token, destinations, admin)
    /// and print each step: ok, or the problem and the fix. Exit 1 if a step failed.
    /// `--gateway gateway.toml` checks the cloud side.
    Doctor(DoctorArgs),
    /// The management API's store: `state migrate` moves a state file into PostgreSQL.
    State {
        #[command(subcommand)]
        cmd: StateCmd,
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
    Check { file: std::path::PathBuf },
}

/// A command, with what the daemons read before the runtime starts.
enum Job {
    Client(Box<daemon::client::Prepared>),
    Gateway(Box<(GatewayArgs, daemon::gateway::Loaded)>),
    Other(Cmd),
    Done,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // The daemons read their files first: the config's `workers` sizes the runtime.
    let job = match cli.cmd {
        Cmd::Client(args) => {
            daemon::client::prepare(args).map(|p| p.map_or(Job::Done, |p| Job::Client(Box::new(p))))
        }
        Cmd::Gateway(args) => {
            daemon::gateway::load(&args.config).map(|l| Job::Gateway(Box::new((args, l))))
        }
        cmd => Ok(Job::Other(cmd)),
    };
    let job = match job {
        Ok(j) => j,
        Err(e) => return failed(e),
    };
    let workers = match &job {
        Job::Client(p) => p.workers(),
        Job::Gateway(g) => g.1.config.workers,
        Job::Other(_) | Job::Done => sgw::config::Workers::Auto,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(daemon::worker_threads(workers))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sgw: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(run(job));
    // Blocking tasks nobody waits for any more (a name lookup past its deadline) get a
    // moment, not a hold on the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match res {
        Ok(code) => {
            sgw::telemetry::flush();
            code
        }
        Err(e) => failed(e),
    }
}

/// The failure's message goes after the log lines already queued, and through the same queue
/// once logging is up ([`sgw::telemetry::write_last`]).
fn failed(e: Error) -> ExitCode {
    match e {
        // A bad config, file or argument: the message says where; exit 2.
        Error::Input(msg) => {
            sgw::telemetry::write_last(&msg);
            ExitCode::from(2)
        }
        e => {
            sgw::telemetry::write_last(&format!("sgw: {e}"));
            ExitCode::from(1)
        }
    }
}

async fn run(job: Job) -> Result<ExitCode, Error> {
    let done = |()| ExitCode::SUCCESS;
    let cmd = match job {
        Job::Client(p) => return daemon::client::run(*p).await.map(done),
        Job::Gateway(g) => {
            let (args, loaded) = *g;
            return daemon::gateway::run(args, loaded).await.map(done);
        }
        Job::Done => return Ok(ExitCode::SUCCESS),
        Job::Other(cmd) => cmd,
    };
    match cmd {
        // Read in `main` and run above, as `Job::Client` and `Job::Gateway`.
        Cmd::Client(_) | Cmd::Gateway(_) => Ok(ExitCode::SUCCESS),
        Cmd::Quickstart(args) => daemon::quickstart::run(args).await.map(done),
        Cmd::Init(args) => setup::init(args),
        Cmd::Enroll(args) => setup::enroll(args),
        Cmd::Config {
            cmd: ConfigCmd::Check { file },
        } => setup::check_config(file),
        Cmd::Acl { cmd } => acl::run(cmd).await,
        Cmd::State { cmd } => state::run(cmd).await,
        Cmd::Status(args) => admin::status(args).await,
        Cmd::Health(args) => admin::health(args).await,
        Cmd::Doctor(args) => doctor::run(args).await,
        Cmd::Version => {
            println!(
                "sgw {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                sgw::proto::SUBPROTOCOL
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
