//! Changes to the API-managed gateways, one at a time: edit the record, validate it with
//! the config reader, apply it to the running gateway, then commit it to the store (the
//! state file, or PostgreSQL shared by replicas); if the commit fails the running gateway is
//! put back.

use serde_json::Value;

use super::access::{Api, Caller};
use super::backend::Backend;
use super::error::ApiError;
use super::extract::GatewayCall;
use crate::config::state::{tenant_from_record, GatewayRecord};
use crate::config::TenantConfig;
use crate::store::{Change, StoreError};

impl<B: Backend> Api<B> {
    /// Changes one API-managed gateway: `edit` the record, validate, apply, commit.
    /// Gateways from gateway.toml are refused with 403. `if_match`: the revision the caller
    /// read (`If-Match`); another one is refused with 409, as is a commit that finds the store
    /// changed since this replica read it.
    pub(super) async fn change<F>(
        &self,
        gateway_id: &str,
        if_match: Option<i64>,
        edit: F,
    ) -> Result<(GatewayRecord, TenantConfig), ApiError>
    where
        F: FnOnce(&mut GatewayRecord) -> Result<(), ApiError>,
    {
        let mut st = self.state.lock().await;
        let Some(idx) = st.gateways.iter().position(|g| g.id == gateway_id) else {
            return Err(self.not_managed(gateway_id));
        };
        let old = st.gateways[idx].clone();
        self.check_if_match(&old, if_match)?;
        let mut rec = old.clone();
        edit(&mut rec)?;
        rec.updated_at = crate::telemetry::unix_ms();
        let cfg = tenant_from_record(&rec).map_err(ApiError::invalid)?;
        let running = self.backend.apply(cfg).await?;
        sync_ports(&mut rec, &running);
        let mut new = st.clone();
        new.gateways[idx] = rec.clone();
        if let Err(e) = self.commit(&new, Change::Put(&rec)).await {
            if let Ok(c) = tenant_from_record(&old) {
                let _ = self.backend.apply(c).await;
            }
            return Err(e);
        }
        rec.revision += 1;
        new.gateways[idx].revision = rec.revision;
        *st = new;
        Ok((rec, running))
    }

    /// Adds API-managed gateways (create, import). All or nothing.
    pub(super) async fn add(
        &self,
        recs: Vec<GatewayRecord>,
    ) -> Result<Vec<(GatewayRecord, TenantConfig)>, ApiError> {
        let mut st = self.state.lock().await;
        let mut new = st.clone();
        let mut done: Vec<(GatewayRecord, TenantConfig)> = Vec::new();
        let mut failed = None;
        for mut rec in recs {
            let applied = match tenant_from_record(&rec) {
                Err(e) => Err(ApiError::invalid(e)),
                Ok(cfg) => self.backend.apply(cfg).await.map_err(ApiError::from),
            };
            match applied {
                Ok(running) => {
                    sync_ports(&mut rec, &running);
                    // A new row's first revision (the store's numbering).
                    rec.revision = 1;
                    new.gateways.push(rec.clone());
                    done.push((rec, running));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let failed = match failed {
            Some(e) => Some(e),
            None => {
                let recs: Vec<GatewayRecord> = done.iter().map(|(r, _)| r.clone()).collect();
                self.commit(&new, Change::Insert(&recs)).await.err()
            }
        };
        if let Some(e) = failed {
            for (r, _) in &done {
                self.backend.remove(&r.id).await;
            }
            return Err(e);
        }
        *st = new;
        Ok(done)
    }

    /// Deletes an API-managed gateway (`if_match`: as for [`Api::change`]).
    pub(super) async fn delete_gateway(
        &self,
        gateway_id: &str,
        if_match: Option<i64>,
    ) -> Result<(), ApiError> {
        let mut st = self.state.lock().await;
        let Some(idx) = st.gateways.iter().position(|g| g.id == gateway_id) else {
            return Err(self.not_managed(gateway_id));
        };
        self.check_if_match(&st.gateways[idx], if_match)?;
        let mut new = st.clone();
        let old = new.gateways.remove(idx);
        self.backend.remove(gateway_id).await;
        if let Err(e) = self.commit(&new, Change::Delete(&old)).await {
            if let Ok(c) = tenant_from_record(&old) {
                let _ = self.backend.apply(c).await;
            }
            return Err(e);
        }
        *st = new;
        Ok(())
    }

    pub(super) fn not_managed(&self, gateway_id: &str) -> ApiError {
        if self.backend.tenant(gateway_id).is_some() {
            ApiError::forbidden(format!(
                "gateway `{gateway_id}` is defined in gateway.toml; change it there and reload (SIGHUP)"
            ))
        } else {
            ApiError::not_found(format!("no gateway `{gateway_id}`"))
        }
    }

    pub(super) async fn record(&self, gateway_id: &str) -> Option<GatewayRecord> {
        let st = self.state.lock().await;
        st.gateways.iter().find(|g| g.id == gateway_id).cloned()
    }

    pub(super) async fn records(&self) -> Vec<GatewayRecord> {
        self.state.lock().await.gateways.clone()
    }

    /// Whether `call` is answered with private keys and passwords. A gateway's own token sees
    /// those of an API-managed gateway, which it uploaded or had generated through this API;
    /// of a gateway.toml one, only the admin does: those are the operator's files, and the
    /// cloud-side `server_key` may be a key the gateway itself serves with.
    pub(super) async fn shows_secrets(&self, call: &GatewayCall) -> bool {
        matches!(call.caller, Caller::Admin)
            || self
                .state
                .lock()
                .await
                .gateways
                .iter()
                .any(|g| g.id == call.id)
    }

    /// The ids of the API-managed gateways (without copying their documents).
    pub(super) async fn managed_ids(&self) -> Vec<String> {
        let st = self.state.lock().await;
        st.gateways.iter().map(|g| g.id.clone()).collect()
    }

    /// `If-Match` against the revision this replica holds: another one is a 409. A caller who
    /// read a newer one did so through a replica ahead of this one: it is re-read at once.
    fn check_if_match(&self, rec: &GatewayRecord, if_match: Option<i64>) -> Result<(), ApiError> {
        let Some(want) = if_match.filter(|w| *w != rec.revision) else {
            return Ok(());
        };
        if want > rec.revision {
            self.resync.notify_one();
        }
        Err(ApiError::conflict(format!(
            "If-Match: gateway `{}` is at revision \"{}\" now, not \"{want}\": it was changed since you read it; read it again and retry",
            rec.id, rec.revision
        )))
    }

    /// Commits a change to the store; a refusal or failure becomes the API's answer. A
    /// conflict means this replica's copy is behind: it is re-read at once.
    async fn commit(
        &self,
        after: &crate::config::state::StateFile,
        change: Change<'_>,
    ) -> Result<(), ApiError> {
        let done = self.store.commit(after, change).await;
        if let Err(e) = &done {
            tracing::warn!(store = %self.store.describe(), error = %e, "change not committed; undone");
            if matches!(e, StoreError::Conflict(_)) {
                self.resync.notify_one();
            }
        }
        done.map_err(ApiError::from)
    }
}

/// Records the ports the gateway bound for destinations that asked for any port, so they
/// keep them across restarts.
fn sync_ports(rec: &mut GatewayRecord, running: &TenantConfig) {
    for d in rec.destinations.iter_mut() {
        let id = d
            .config
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(r) = running.destinations.iter().find(|r| r.id == id) {
            if !r.reverse {
                d.config.insert("cloud_port".into(), r.cloud_port.into());
            }
        }
    }
}
