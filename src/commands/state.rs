//! `sgw state migrate`: moves the gateways a single gateway kept in its state file into the
//! PostgreSQL store that replicas share (docs/HA.md), in one transaction: every gateway id
//! is copied, or none is.

use std::path::PathBuf;
use std::process::ExitCode;

use rustls::pki_types::pem::PemObject;

use crate::config::state::StateFile;
use crate::config::{check_store_url, PgStoreConfig, Secret};
use crate::daemon::Error;
use crate::store::{Change, PgStore};

#[derive(Debug, clap::Subcommand)]
pub enum StateCmd {
    /// Copy every gateway of a state file into a PostgreSQL store (`state_store`). Gateway
    /// ids already in the store are refused, and then nothing is written.
    Migrate(MigrateArgs),
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The state file (`state_file` in gateway.toml).
    #[arg(long)]
    pub from: PathBuf,
    /// The store: postgres://USER@HOST:PORT/DATABASE[?sslmode=require], no password.
    #[arg(long)]
    pub to: String,
    /// A file holding the database password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// PEM roots for TLS to the database (default: the system's).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

pub async fn run(cmd: StateCmd) -> Result<ExitCode, Error> {
    let StateCmd::Migrate(a) = cmd;
    check_store_url(&a.to).map_err(|e| Error::Input(format!("--to: {e}")))?;
    let state = StateFile::load(&a.from)
        .map_err(Error::input)?
        .ok_or_else(|| Error::Input(format!("--from {}: no such file", a.from.display())))?;
    let password = match &a.password_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::Input(format!("--password-file {}: {e}", p.display())))?;
            Some(Secret::new(text.trim()))
        }
        None => None,
    };
    let ca = match &a.ca_file {
        Some(p) => {
            let pem = std::fs::read(p)
                .map_err(|e| Error::Input(format!("--ca-file {}: {e}", p.display())))?;
            let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Input(format!("--ca-file {}: {e}", p.display())))?;
            if certs.is_empty() {
                return Err(Error::Input(format!(
                    "--ca-file {}: contains no PEM certificate",
                    p.display()
                )));
            }
            Some(certs)
        }
        None => None,
    };
    let store = PgStore::new(
        &PgStoreConfig {
            url: a.to.clone(),
            password,
            ca,
        },
        "migrate",
    )?;
    store.prepare().await?;
    store.commit(Change::Insert(&state.gateways)).await?;
    let dests: usize = state.gateways.iter().map(|g| g.destinations.len()).sum();
    println!(
        "copied {} gateway(s) with {dests} destination(s) from {} to {}.\nNext: in gateway.toml, replace state_file with state_store = \"{}\" (and state_store_password_file), then restart the gateway.",
        state.gateways.len(),
        a.from.display(),
        a.to,
        a.to
    );
    Ok(ExitCode::SUCCESS)
}
