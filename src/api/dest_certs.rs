//! A destination's certificates: read, upload, delete, generate.

use std::collections::HashMap;

use axum::extract::{Path, Query, Request, State};
use serde::Deserialize;
use serde_json::json;

use super::body::{ok, upload, Answer, ApiState};
use super::destinations::{edit_dest, running_dest};
use super::extract::{GatewayCall, JsonBody};
use super::{certs, ApiError, Backend};
use crate::config::state::destination_to_json;

pub(super) async fn get_cert<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    Path((_, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    if q.get("zip").is_some_and(|z| z == "true") {
        return Err(ApiError::bad_request(
            "zip: packing as a zip file is not supported; the files come as JSON",
        ));
    }
    let d = running_dest(&call.cfg, &id)?;
    let secrets = api.shows_secrets(&call).await;
    ok(json!({ "files": certs::files(&destination_to_json(d, secrets)) }))
}

pub(super) async fn put_cert<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    Path((_, id)): Path<(String, String)>,
    req: Request,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    let parts = upload(req).await?;
    edit_dest(&api, &gw, if_match, &id, |doc| certs::put(doc, parts)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileNames {
    filename: Vec<String>,
}

pub(super) async fn delete_cert<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    Path((_, id)): Path<(String, String)>,
    JsonBody(f): JsonBody<FileNames>,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    edit_dest(&api, &gw, if_match, &id, |doc| {
        certs::delete(doc, &f.filename)
    })
    .await
}

pub(super) async fn gen_certs<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    Path((_, id)): Path<(String, String)>,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    edit_dest(&api, &gw, if_match, &id, certs::generate).await
}
