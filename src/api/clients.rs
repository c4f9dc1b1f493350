//! The clients of a gateway id: connected, one by id, disconnect, their logs, and those
//! recently gone.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::access::Caller;
use super::backend::{Backend, ClientLogLine};
use super::body::{need_body, ok, typed, Body, Res, St};
use super::error::ApiError;

/// One client, connected or recently gone, with which it is.
#[derive(Serialize)]
struct Connected<C> {
    #[serde(flatten)]
    client: C,
    connected: bool,
}

pub(super) async fn list_clients<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
) -> Res {
    api.authorize(&h, &gw)?;
    ok(api.backend.clients(&gw))
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
    let connected = api.backend.clients(&gw).into_iter();
    if let Some(c) = connected.into_iter().find(|c| c.client_id == cid) {
        return ok(Connected {
            client: c,
            connected: true,
        });
    }
    let gone = api.backend.disconnected(&gw).into_iter().rev();
    if let Some(c) = gone.into_iter().find(|c| c.client_id == cid) {
        return ok(Connected {
            client: c,
            connected: false,
        });
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
    let out: Vec<ClientLogLine> = api
        .backend
        .client_logs(&gw)
        .into_iter()
        .filter(|l| level.as_ref().is_none_or(|t| l.level == *t))
        .filter(|l| client.is_none_or(|c| l.client_id == *c))
        .collect();
    ok(out)
}

pub(super) async fn disconnected<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
) -> Res {
    api.authorize(&h, &gw)?;
    ok(api.backend.disconnected(&gw))
}
