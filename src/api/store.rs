//! Changes to the API-managed gateways, one at a time: edit the record, validate it with
//! the config reader, apply it to the running gateway, then write the state file
//! atomically; if the write fails the running gateway is put back.

use axum::http::StatusCode;
use serde_json::Value;
use tracing::warn;

use super::access::Api;
use super::backend::Backend;
use super::error::ApiError;
use crate::config::state::{tenant_from_record, GatewayRecord, StateFile};
use crate::config::TenantConfig;

impl<B: Backend> Api<B> {
    /// Changes one API-managed gateway: `edit` the record, validate, apply, persist.
    /// Gateways from gateway.toml are refused with 403.
    pub(super) async fn change<F>(
        &self,
        gateway_id: &str,
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
        let mut rec = old.clone();
        edit(&mut rec)?;
        rec.updated_at = crate::telemetry::unix_ms();
        let cfg = tenant_from_record(&rec).map_err(ApiError::invalid)?;
        let running = self.backend.apply(cfg).await?;
        sync_ports(&mut rec, &running);
        let mut new = st.clone();
        new.gateways[idx] = rec.clone();
        if let Err(e) = self.persist(&new) {
            if let Ok(c) = tenant_from_record(&old) {
                let _ = self.backend.apply(c).await;
            }
            return Err(e);
        }
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
            None => self.persist(&new).err(),
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

    /// Deletes an API-managed gateway.
    pub(super) async fn delete_gateway(&self, gateway_id: &str) -> Result<(), ApiError> {
        let mut st = self.state.lock().await;
        let Some(idx) = st.gateways.iter().position(|g| g.id == gateway_id) else {
            return Err(self.not_managed(gateway_id));
        };
        let mut new = st.clone();
        let old = new.gateways.remove(idx);
        self.backend.remove(gateway_id).await;
        if let Err(e) = self.persist(&new) {
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

    pub(super) fn persist(&self, state: &StateFile) -> Result<(), ApiError> {
        let Some(path) = &self.settings.state_file else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
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
        made.and_then(|()| crate::fsutil::write_atomic(path, &bytes, 0o600)).map_err(|e| {
            warn!(state_file = %path.display(), error = %e, "cannot write the state file; change undone");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot write state_file {}: {e}; nothing was changed", path.display()),
            )
        })
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
