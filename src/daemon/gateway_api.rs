//! The running gateway as the management API sees it ([`crate::api::Backend`]): the
//! adapter between the two lives here, in the wiring. The gateway answers in the API's view
//! types; the API never sees the gateway's internals.

use crate::api::{ApplyError, Backend, ClientLogLine, ClientView, GoneClient, IdCounts};
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

    fn any_token_is(&self, token: &str) -> bool {
        GatewayHandle::any_token_is(self, token)
    }

    fn clients(&self, id: &str) -> Vec<ClientView> {
        GatewayHandle::clients(self, id)
    }

    fn disconnect(&self, id: &str, client_ids: &[String]) -> Vec<String> {
        GatewayHandle::disconnect(self, id, client_ids)
    }

    fn client_logs(&self, id: &str) -> Vec<ClientLogLine> {
        GatewayHandle::client_logs(self, id)
    }

    fn disconnected(&self, id: &str) -> Vec<GoneClient> {
        GatewayHandle::disconnected(self, id)
    }

    fn stats(&self, id: &str) -> Option<IdCounts> {
        self.tenant_stats(id)
    }
}
