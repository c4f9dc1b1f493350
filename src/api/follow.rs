//! A replica's copy of a shared store, kept current: whatever another replica commits is read
//! back and applied to this gateway through the same path as the API's own changes
//! ([`Backend::apply`], [`Backend::remove`]), which is also SIGHUP's.
//!
//! Changes arrive through the store's feed a moment after their commit; a full re-read every
//! [`RESYNC_EVERY`] catches anything a lost connection dropped. While the store is
//! unreachable the gateway keeps serving the last state it read and retries the feed with
//! jittered backoff; when the store is back, one re-read brings this replica level with it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::access::Api;
use super::backend::Backend;
use crate::config::state::tenant_from_record;
use crate::config::Reconnect;
use crate::store::StoreError;

/// The safety net: a full re-read this often even when no change was announced.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// Least time between two re-reads.
const MIN_GAP: Duration = Duration::from_millis(250);

/// Backoff between attempts to reach the store's change feed: short, since a replica that
/// is not following may serve an old state, and one connection attempt costs the store little.
const RETRY: Reconnect = Reconnect {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(5),
};

/// Follows the store until `shutdown`; returns at once for a store nothing else writes to.
pub async fn follow_store<B: Backend>(api: Arc<Api<B>>, shutdown: CancellationToken) {
    let mut attempt = 0u32;
    loop {
        let feed = tokio::select! {
            _ = shutdown.cancelled() => return,
            f = api.store.watch() => f,
        };
        match feed {
            None => return,
            Some(Ok(mut feed)) => {
                info!(store = %api.store.describe(), "following the state store's changes");
                attempt = 0;
                loop {
                    api.resync_logged().await;
                    // However often anyone on the database sends NOTIFY, re-reads are spaced.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(MIN_GAP) => {}
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        more = feed.changed() => if !more { break },
                        _ = api.resync.notified() => {}
                        _ = tokio::time::sleep(RESYNC_EVERY) => {}
                    }
                }
                warn!(store = %api.store.describe(), "lost the state store's change feed; serving the last state read, reconnecting");
            }
            Some(Err(e)) => {
                warn!(error = %e, "cannot follow the state store's changes; serving the last state read, retrying");
            }
        }
        let wait = RETRY.delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

impl<B: Backend> Api<B> {
    async fn resync_logged(&self) {
        match self.resync_now().await {
            Ok(0) => {}
            Ok(n) => info!(gateways = n, "applied changes from the state store"),
            Err(e) => {
                warn!(error = %e, "cannot re-read the state store; serving the last state read")
            }
        }
    }

    /// Re-reads the store and applies what differs from this replica's copy; returns how
    /// many gateway ids changed here. A change that can't be applied here (a port taken on
    /// this host) is logged and tried again at the next re-read.
    pub async fn resync_now(&self) -> Result<usize, StoreError> {
        let (fresh, unreadable) = self.store.load().await?;
        let mut st = self.state.lock().await;
        let mut changed = 0;
        let mut at: std::collections::HashMap<String, usize> = st
            .gateways
            .iter()
            .enumerate()
            .map(|(i, g)| (g.id.clone(), i))
            .collect();
        for mut rec in fresh.gateways.iter().cloned() {
            let known = at.get(&rec.id).copied();
            if known.is_some_and(|i| st.gateways[i].revision == rec.revision) {
                continue;
            }
            if known.is_none() && self.backend.tenant(&rec.id).is_some() {
                error!(gateway.id = %rec.id, "not applied from the state store: this gateway id is defined in gateway.toml here");
                continue;
            }
            rec.localize(&self.settings.cloud_host);
            let applied = match tenant_from_record(&rec) {
                Ok(cfg) => self.backend.apply(cfg).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match applied {
                Ok(_) => {
                    match known {
                        Some(i) => st.gateways[i] = rec,
                        None => {
                            at.insert(rec.id.clone(), st.gateways.len());
                            st.gateways.push(rec);
                        }
                    }
                    changed += 1;
                }
                Err(e) => {
                    error!(gateway.id = %rec.id, error = %e, "a change from the state store can't be applied here; keeping the running configuration, retried at the next re-read");
                }
            }
        }
        let kept: std::collections::HashSet<&String> = fresh
            .gateways
            .iter()
            .map(|g| &g.id)
            // A row that does not validate is not a deletion: keep serving what runs.
            .chain(unreadable.iter())
            .collect();
        let gone: Vec<String> = st
            .gateways
            .iter()
            .filter(|g| !kept.contains(&g.id))
            .map(|g| g.id.clone())
            .collect();
        for id in &gone {
            self.backend.remove(id).await;
            changed += 1;
        }
        st.gateways.retain(|g| !gone.contains(&g.id));
        Ok(changed)
    }
}
