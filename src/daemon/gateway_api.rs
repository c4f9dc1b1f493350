//! The running gateway as the management API sees it ([`crate::api::Backend`]): the
//! adapter between the two lives here, in the wiring, so neither imports the other.

use serde_json::{json, Value};

use crate::api::{rfc3339_ms, ApplyError, Backend};
use crate::config::TenantConfig;
use crate::gateway::{GatewayError, GatewayHandle};

impl Backend for GatewayHandle {
    async fn apply(&self, cfg: TenantConfig) -> Result<TenantConfig, ApplyError> {
        GatewayHandle::apply(self, cfg).await.map_err(|e| match e {
            GatewayError::Bind { .. } => ApplyError::Conflict(e.to_string()),
            other => ApplyError::Invalid(other.to_string()),
        })
    }

    async fn remove(&self, id: &str) {
        GatewayHandle::remove(self, id).await
    }

    fn tenant(&self, id: &str) -> Option<TenantConfig> {
        self.tenant_config(id)
    }

    fn gateway_ids(&self) -> Vec<String> {
        GatewayHandle::gateway_ids(self)
    }

    fn clients(&self, id: &str) -> Vec<Value> {
        GatewayHandle::clients(self, id)
            .into_iter()
            .map(|c| {
                json!({
                    "client_id": c.client_id,
                    "version": c.version,
                    "hostname": c.hostname,
                    "env": c.env,
                    "tunnels": c.tunnels,
                    "active_streams": c.active_streams,
                    "streams_opened": c.streams_opened,
                })
            })
            .collect()
    }

    fn disconnect(&self, id: &str, client_ids: &[String]) -> Vec<String> {
        GatewayHandle::disconnect(self, id, client_ids)
    }

    fn client_logs(&self, id: &str) -> Vec<Value> {
        GatewayHandle::client_logs(self, id)
            .into_iter()
            .map(|(client, l)| {
                json!({
                    "client_id": client,
                    "level": l.level,
                    "message": l.message,
                    "time": rfc3339_ms(l.time.saturating_mul(1000)),
                })
            })
            .collect()
    }

    fn disconnected(&self, id: &str) -> Vec<Value> {
        GatewayHandle::disconnected(self, id)
            .into_iter()
            .map(|d| {
                json!({
                    "client_id": d.client_id,
                    "version": d.version,
                    "hostname": d.hostname,
                    "env": d.env,
                    "disconnected_at": rfc3339_ms(d.at_ms),
                    "reason": d.reason,
                })
            })
            .collect()
    }

    fn stats(&self, id: &str) -> Option<Value> {
        let s = self.tenant_stats(id)?;
        Some(json!({
            "clients": s.clients,
            "tunnels": s.tunnels,
            "tunnels_accepted": s.tunnels_accepted,
            "streams_active": s.streams_active,
            "streams_opened": s.streams_opened,
            "streams_failed": s.streams_failed,
            "streams_denied": s.streams_denied,
            "bytes_up": s.bytes_up,
            "bytes_down": s.bytes_down,
        }))
    }
}
