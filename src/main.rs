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
    match rt.block_on(run(cli.cmd)) {
        Ok(code) => code,
        // A bad config, file or argument: the message says where; exit 2.
        Err(Error::Input(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("sgw: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cmd: Cmd) -> Result<ExitCode, Error> {
    let done = |()| ExitCode::SUCCESS;
    match cmd {
        Cmd::Client(args) => daemon::client::run(args).await.map(done),
        Cmd::Gateway(args) => daemon::gateway::run(args).await.map(done),
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
