//! A destination's certificates: read, upload, delete, generate.

use std::collections::HashMap;

use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::json;

use super::body::{need_body, ok, typed, upload, Body, Res, St};
use super::destinations::{edit_dest, running_dest};
use super::{certs, ApiError, Backend};
use crate::config::state::destination_to_json;

pub(super) async fn get_cert<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    let (_, cfg) = api.authorize(&h, &gw)?;
    if q.get("zip").is_some_and(|z| z == "true") {
        return Err(ApiError::bad(
            "zip: packing as a zip file is not supported; the files come as JSON",
        ));
    }
    let d = running_dest(&cfg, &id)?;
    ok(json!({ "files": certs::files(&destination_to_json(d, true)) }))
}

pub(super) async fn put_cert<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, id)): Path<(String, String)>,
    req: Request,
) -> Res {
    api.authorize(&h, &gw)?;
    let parts = upload(req).await?;
    edit_dest(&api, &gw, &id, |doc| certs::put(doc, parts)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNames {
    filename: Vec<String>,
}

pub(super) async fn delete_cert<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, id)): Path<(String, String)>,
    body: Body,
) -> Res {
    api.authorize(&h, &gw)?;
    let f: FileNames = typed(need_body(body)?)?;
    edit_dest(&api, &gw, &id, |doc| certs::delete(doc, &f.filename)).await
}

pub(super) async fn gen_certs<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, id)): Path<(String, String)>,
) -> Res {
    api.authorize(&h, &gw)?;
    edit_dest(&api, &gw, &id, certs::generate).await
}
