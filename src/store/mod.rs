//! Where the management API keeps the gateways it manages: in memory only (lost at restart),
//! in a state file (one gateway process), or in PostgreSQL shared by gateway replicas
//! (docs/HA.md).
//!
//! A change is committed whole. The file is rewritten atomically. In PostgreSQL each change is
//! one transaction that names the revision the change started from, so of two replicas
//! changing one gateway at once exactly one wins and the other gets
//! [`StoreError::Conflict`]; every commit notifies the other replicas, which re-read the store
//! (`crate::api::follow_store`).

mod postgres;

use std::path::PathBuf;

use tracing::warn;

use crate::config::state::{GatewayRecord, StateFile};
use crate::config::{ApiConfig, ConfigErrors};

pub use postgres::{Feed, PgStore};

/// Why the store refused or failed a read or a change.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The change started from a revision another replica has since replaced, or the id is
    /// taken: nothing was changed.
    #[error("{0}")]
    Conflict(String),
    /// The store can't be reached now; nothing was changed. Retried by the caller.
    #[error("the state store {url} is unreachable ({why}); nothing was changed, reads still answer from the last state read")]
    Unavailable { url: String, why: String },
    /// The store answered but the change failed (a file that can't be written, an SQL error).
    #[error("{0}")]
    Failed(String),
    /// What the store holds does not validate.
    #[error("{0}")]
    Invalid(ConfigErrors),
}

/// One change to the managed gateways. A record's `revision` is the one the change started
/// from (what this replica last read).
pub enum Change<'a> {
    Put(&'a GatewayRecord),
    Insert(&'a [GatewayRecord]),
    Delete(&'a GatewayRecord),
}

/// The store the API writes to.
pub enum Store {
    /// No `state_file`: gateways created through the API are lost at restart.
    Memory,
    File(PathBuf),
    Postgres(Box<PgStore>),
}

impl Store {
    /// The store `settings` name (the pool connects lazily: nothing is dialled here).
    pub fn open(settings: &ApiConfig) -> Result<Store, StoreError> {
        if let Some(pg) = &settings.state_store {
            return PgStore::new(pg, &settings.replica).map(|p| Store::Postgres(Box::new(p)));
        }
        Ok(match &settings.state_file {
            Some(p) => Store::File(p.clone()),
            None => Store::Memory,
        })
    }

    /// Whether other processes write here too (their changes arrive through [`Store::watch`]).
    pub fn shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Creates or upgrades the store's schema (PostgreSQL); before the first read.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pg) => pg.prepare().await,
            _ => Ok(()),
        }
    }

    /// Where the store is, for messages (no secrets).
    pub fn describe(&self) -> String {
        match self {
            Store::Memory => "memory (no state_file)".into(),
            Store::File(p) => format!("state_file {}", p.display()),
            Store::Postgres(pg) => format!("state_store {}", pg.url()),
        }
    }

    /// Every gateway the store holds, validated, and the ids of those left out because they
    /// do not validate (a shared store only; a state file that does not validate is an error).
    pub async fn load(&self) -> Result<(StateFile, Vec<String>), StoreError> {
        match self {
            Store::Memory => Ok((StateFile::empty(), Vec::new())),
            Store::File(p) => StateFile::load(p)
                .map(|s| (s.unwrap_or_else(StateFile::empty), Vec::new()))
                .map_err(StoreError::Invalid),
            Store::Postgres(pg) => pg.load().await,
        }
    }

    /// Commits `change`; `after` is the whole state as it will be (what a file holds).
    pub async fn commit(&self, after: &StateFile, change: Change<'_>) -> Result<(), StoreError> {
        match self {
            Store::Memory => Ok(()),
            Store::File(p) => {
                let bytes = serde_json::to_vec_pretty(after)
                    .map_err(|e| StoreError::Failed(format!("cannot encode the state: {e}")))?;
                // The write syncs the file and its directory: off the workers, which may be
                // one (`workers`), carrying every stream.
                let p = p.clone();
                tokio::task::spawn_blocking(move || write_file(&p, &bytes))
                    .await
                    .map_err(|e| {
                        StoreError::Failed(format!("the state file's writer failed: {e}"))
                    })?
            }
            Store::Postgres(pg) => pg.commit(change).await,
        }
    }

    /// Publishes what this replica sees of `gateway_id` for the others (shared store only).
    pub async fn publish(
        &self,
        gateway_id: &str,
        body: &serde_json::Value,
    ) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pg) => pg.publish(gateway_id, body).await,
            _ => Ok(()),
        }
    }

    /// What other replicas published within `fresh`: (gateway id, view) rows (none for a
    /// store nothing else writes to).
    pub async fn presence(
        &self,
        fresh: std::time::Duration,
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        match self {
            Store::Postgres(pg) => pg.presence(fresh).await,
            _ => Ok(Vec::new()),
        }
    }

    /// A feed that yields whenever another process may have changed the store; it ends when
    /// the store connection is lost (then call again, after a backoff). `None`: nothing else
    /// writes here.
    pub async fn watch(&self) -> Option<Result<Feed, StoreError>> {
        match self {
            Store::Postgres(pg) => Some(pg.watch().await),
            _ => None,
        }
    }
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), StoreError> {
    // The first change creates the directory (/var/lib/sgw outside systemd's StateDirectory).
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists());
    let made = parent.map_or(Ok(()), |p| {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(p)
    });
    // 0600 whatever an older file had (restored from a backup as 0644, say): it holds every
    // gateway id's token and keys.
    made.and_then(|()| crate::fsutil::write_private(path, bytes))
        .map_err(|e| {
            warn!(state_file = %path.display(), error = %e, "cannot write the state file; change undone");
            StoreError::Failed(format!(
                "cannot write state_file {}: {e}; nothing was changed",
                path.display()
            ))
        })
}
