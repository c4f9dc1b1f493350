//! The API's state and who may call what: the admin token for account-level calls, a
//! gateway's own (unexpired) security token or the admin token for that gateway's calls.

use std::sync::Arc;

use tracing::warn;

use super::backend::Backend;
use super::error::ApiError;
use crate::config::state::StateFile;
use crate::config::{ApiConfig, TenantConfig};
use crate::store::Store;

/// Who is calling.
pub(super) enum Caller {
    Admin,
    Gateway,
}

/// The API's state: the backend, settings and the API-managed gateways.
pub struct Api<B> {
    pub(super) backend: B,
    /// `api_listen` and what goes with it, from gateway.toml.
    pub(super) settings: ApiConfig,
    /// Held across a whole change (validate, apply, write), so changes never interleave.
    pub(super) state: tokio::sync::Mutex<StateFile>,
    /// Where changes are committed.
    pub(super) store: Store,
    /// Asks the store follower to re-read now (a commit found this copy behind).
    pub(super) resync: tokio::sync::Notify,
    /// The other replicas' views of clients, logs and counters (presence.rs).
    pub(super) others: super::presence::Others,
    /// Changing requests run to the end on a task of their own, so a caller that hangs up
    /// can't cut a change off half applied; at most `api_max_connections` of them at once.
    pub(super) changing: Arc<tokio::sync::Semaphore>,
}

impl<B: Backend> Api<B> {
    /// `state`: what `store` held at start (already applied to the backend).
    pub fn new(backend: B, settings: ApiConfig, state: StateFile, store: Store) -> Arc<Self> {
        if matches!(store, Store::Memory) {
            warn!("api_listen without state_file or state_store: gateways created through the API are lost at restart");
        }
        let changing = Arc::new(tokio::sync::Semaphore::new(settings.max_connections.max(1)));
        Arc::new(Api {
            changing,
            backend,
            settings,
            state: tokio::sync::Mutex::new(state),
            store,
            resync: tokio::sync::Notify::new(),
            others: Default::default(),
        })
    }

    fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
        let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing `Authorization: Bearer <token>` header",
            ));
        };
        v.to_str()
            .ok()
            .and_then(|s| s.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))
    }

    fn is_admin(&self, token: &str) -> bool {
        self.settings
            .admin_token
            .as_ref()
            .is_some_and(|a| a.ct_eq(token))
    }

    /// Whether `token` is some gateway's security token (expired or not).
    fn any_gateway_token(&self, token: &str) -> bool {
        self.backend.any_token_is(token)
    }

    /// Before any body is read: the request carries the admin token or some gateway's token
    /// (which calls it may make is decided later). Strangers are refused from the headers.
    pub(super) fn known_token(&self, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
        let token = Self::bearer(headers)?;
        // The admin answers at once; any other token is compared with every gateway's.
        if self.is_admin(token) || self.any_gateway_token(token) {
            return Ok(());
        }
        Err(ApiError::unauthorized("invalid token"))
    }

    /// Account-level calls: the admin token only.
    pub(super) fn admin(&self, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
        let token = Self::bearer(headers)?;
        if self.is_admin(token) {
            return Ok(());
        }
        if self.settings.admin_token.is_none() {
            return Err(ApiError::forbidden(
                "account-level calls need admin_token (or admin_token_file) in gateway.toml",
            ));
        }
        if self.any_gateway_token(token) {
            return Err(ApiError::forbidden(
                "a gateway's security token cannot make account-level calls; use the admin token",
            ));
        }
        Err(ApiError::unauthorized("invalid token"))
    }

    /// A gateway's own calls: its security token (not expired) or the admin token.
    pub(super) fn authorize(
        &self,
        headers: &axum::http::HeaderMap,
        gateway_id: &str,
    ) -> Result<(Caller, TenantConfig), ApiError> {
        let token = Self::bearer(headers)?;
        let tenant = self.backend.tenant(gateway_id);
        if self.is_admin(token) {
            return tenant
                .map(|t| (Caller::Admin, t))
                .ok_or_else(|| ApiError::not_found(format!("no gateway `{gateway_id}`")));
        }
        if let Some(t) = tenant {
            if t.token.ct_eq(token) {
                let now = crate::telemetry::unix_ms() / 1000;
                if !t.token_valid(token, now) {
                    return Err(ApiError::unauthorized(
                        "the security token has expired; regenerate it with the admin token",
                    ));
                }
                return Ok((Caller::Gateway, t));
            }
        }
        if self.any_gateway_token(token) {
            return Err(ApiError::forbidden(
                "this security token belongs to another gateway",
            ));
        }
        Err(ApiError::unauthorized("invalid token"))
    }
}
