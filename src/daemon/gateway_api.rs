//! The running gateway as the management API sees it ([`crate::api::Backend`]): the
//! adapter between the two lives here, in the wiring, so neither imports the other.

use crate::api::{ApplyError, Backend, ClientLogLine, ClientView, GatewayStats, GoneClient};
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

    fn clients(&self, id: &str) -> Vec<ClientView> {
        GatewayHandle::clients(self, id)
            .into_iter()
            .map(|c| ClientView {
                client_id: c.client_id,
                version: c.version,
                hostname: c.hostname,
                env: c.env,
                tunnels: c.tunnels,
                active_streams: c.active_streams,
                streams_opened: c.streams_opened,
            })
            .collect()
    }

    fn disconnect(&self, id: &str, client_ids: &[String]) -> Vec<String> {
        GatewayHandle::disconnect(self, id, client_ids)
    }

    fn client_logs(&self, id: &str) -> Vec<ClientLogLine> {
        GatewayHandle::client_logs(self, id)
            .into_iter()
            .map(|(client_id, l)| ClientLogLine {
                client_id,
                level: l.level,
                message: l.message,
                time_ms: l.time.saturating_mul(1000),
            })
            .collect()
    }

    fn disconnected(&self, id: &str) -> Vec<GoneClient> {
        GatewayHandle::disconnected(self, id)
            .into_iter()
            .map(|d| GoneClient {
                client_id: d.client_id,
                version: d.version,
                hostname: d.hostname,
                env: d.env,
                disconnected_at_ms: d.at_ms,
                reason: d.reason,
            })
            .collect()
    }

    fn stats(&self, id: &str) -> Option<GatewayStats> {
        let s = self.tenant_stats(id)?;
        Some(GatewayStats {
            clients: s.clients,
            tunnels: s.tunnels,
            tunnels_accepted: s.tunnels_accepted,
            streams_active: s.streams_active,
            streams_opened: s.streams_opened,
            streams_failed: s.streams_failed,
            streams_denied: s.streams_denied,
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
        })
    }
}
