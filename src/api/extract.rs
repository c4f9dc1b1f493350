//! What every handler starts with, as extractors: who is calling ([`GatewayCall`],
//! [`AdminCall`], decided from the headers before any body is read) and the typed JSON body
//! ([`JsonBody`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::access::{Api, Caller};
use super::backend::Backend;
use super::body::{need_body, typed};
use super::error::ApiError;
use crate::config::TenantConfig;

/// A call about the path's `{gateway_id}`, authorized: the admin token, or that gateway's
/// own unexpired security token.
pub(super) struct GatewayCall {
    pub id: String,
    pub caller: Caller,
    /// The gateway id as it runs.
    pub cfg: TenantConfig,
    /// `If-Match`: the revision (ETag) the caller last read; a change is refused with 409
    /// if the gateway has changed since.
    pub if_match: Option<i64>,
}

/// `If-Match: "N"` (an ETag this API gave), `W/"N"`, or `*` (any revision).
fn if_match(parts: &Parts) -> Result<Option<i64>, ApiError> {
    let Some(v) = parts.headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request("If-Match: expected an ETag this API gave, such as \"3\"")
        })
}

impl<B: Backend> FromRequestParts<Arc<Api<B>>> for GatewayCall {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &Arc<Api<B>>,
    ) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, api)
            .await
            .map_err(|r| ApiError::bad_request(r.body_text()))?;
        let id = params
            .iter()
            .find(|(k, _)| *k == "gateway_id")
            .map(|(_, v)| v.to_owned())
            .ok_or_else(|| ApiError::not_found("no such API call"))?;
        let (caller, cfg) = api.authorize(&parts.headers, &id)?;
        let if_match = if_match(parts)?;
        Ok(GatewayCall {
            id,
            caller,
            cfg,
            if_match,
        })
    }
}

/// An account-level call: the admin token only.
pub(super) struct AdminCall;

impl<B: Backend> FromRequestParts<Arc<Api<B>>> for AdminCall {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &Arc<Api<B>>,
    ) -> Result<Self, Self::Rejection> {
        api.admin(&parts.headers)?;
        Ok(AdminCall)
    }
}

/// A required JSON body of type `T` (within `api_max_body`); errors name the field.
pub(super) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(req, state).await;
        typed(need_body(body)?).map(JsonBody)
    }
}
