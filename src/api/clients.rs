//! The clients of a gateway id: connected, one by id, disconnect, their logs, and those
//! recently gone.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{need_body, ok, typed, Body, Res, St};
use super::{ApiError, Backend, Caller};

pub(super) async fn list_clients<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
) -> Res {
    api.authorize(&h, &gw)?;
    ok(Value::Array(api.backend.clients(&gw)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeleteList {
    delete_list: Vec<String>,
}

pub(super) async fn delete_clients<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
    body: Body,
) -> Res {
    let (who, _) = api.authorize(&h, &gw)?;
    let l: DeleteList = typed(need_body(body)?)?;
    let found = api.backend.disconnect(&gw, &l.delete_list);
    let missing: Vec<&String> = l
        .delete_list
        .iter()
        .filter(|c| !found.contains(c))
        .collect();
    let by = match who {
        Caller::Admin => "admin",
        Caller::Gateway => "security token",
    };
    tracing::info!(gateway.id = %gw, clients = ?found, by, "clients disconnected through the API");
    ok(json!({ "deleted": found, "not_connected": missing }))
}

pub(super) async fn get_client<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, cid)): Path<(String, String)>,
) -> Res {
    api.authorize(&h, &gw)?;
    let is = |c: &Value| c.get("client_id").and_then(Value::as_str) == Some(cid.as_str());
    if let Some(mut c) = api.backend.clients(&gw).into_iter().find(is) {
        if let Value::Object(m) = &mut c {
            m.insert("connected".into(), true.into());
        }
        return ok(c);
    }
    if let Some(mut c) = api.backend.disconnected(&gw).into_iter().rev().find(is) {
        if let Value::Object(m) = &mut c {
            m.insert("connected".into(), false.into());
        }
        return ok(c);
    }
    Err(ApiError::not_found(format!(
        "no client `{cid}` connected recently"
    )))
}

pub(super) async fn client_logs<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    api.authorize(&h, &gw)?;
    let level = match q.get("type").map(String::as_str) {
        None | Some("") => None,
        Some(t @ ("warn" | "error")) => Some(t.to_owned()),
        Some(other) => {
            return Err(ApiError::bad(format!(
                "type: `{other}` is not one of warn, error"
            )))
        }
    };
    let client = q.get("client_id").filter(|c| !c.is_empty());
    let out: Vec<Value> = api
        .backend
        .client_logs(&gw)
        .into_iter()
        .filter(|l| {
            level
                .as_ref()
                .is_none_or(|t| l.get("level").and_then(Value::as_str) == Some(t.as_str()))
        })
        .filter(|l| {
            client.is_none_or(|c| l.get("client_id").and_then(Value::as_str) == Some(c.as_str()))
        })
        .collect();
    ok(Value::Array(out))
}

pub(super) async fn disconnected<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
) -> Res {
    api.authorize(&h, &gw)?;
    ok(Value::Array(api.backend.disconnected(&gw)))
}
