//! The clients of a gateway id: connected, one by id, disconnect, their logs, and those
//! recently gone.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::access::Caller;
use super::backend::{Backend, ClientLogLine};
use super::body::{ok, Answer, ApiState};
use super::error::ApiError;
use super::extract::{GatewayCall, JsonBody};

/// One client, connected or recently gone, with which it is.
#[derive(Serialize)]
struct Connected<C> {
    #[serde(flatten)]
    client: C,
    connected: bool,
}

pub(super) async fn list_clients<B: Backend>(State(api): ApiState<B>, call: GatewayCall) -> Answer {
    let gw = call.id;
    ok(api.view(&gw).clients)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct DeleteList {
    delete_list: Vec<String>,
}

pub(super) async fn delete_clients<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    JsonBody(l): JsonBody<DeleteList>,
) -> Answer {
    let GatewayCall {
        id: gw,
        caller: who,
        ..
    } = call;
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
    State(api): ApiState<B>,
    call: GatewayCall,
    Path((_, cid)): Path<(String, String)>,
) -> Answer {
    let gw = call.id;
    let view = api.view(&gw);
    if let Some(c) = view.clients.into_iter().find(|c| c.client_id == cid) {
        return ok(Connected {
            client: c,
            connected: true,
        });
    }
    if let Some(c) = view
        .disconnected
        .into_iter()
        .rev()
        .find(|c| c.client_id == cid)
    {
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
    State(api): ApiState<B>,
    call: GatewayCall,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let gw = call.id;
    let level = match q.get("type").map(String::as_str) {
        None | Some("") => None,
        Some(t @ ("warn" | "error")) => Some(t.to_owned()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "type: `{other}` is not one of warn, error"
            )))
        }
    };
    let client = q.get("client_id").filter(|c| !c.is_empty());
    let out: Vec<ClientLogLine> = api
        .view(&gw)
        .logs
        .into_iter()
        .filter(|l| level.as_ref().is_none_or(|t| l.level == *t))
        .filter(|l| client.is_none_or(|c| l.client_id == *c))
        .collect();
    ok(out)
}

pub(super) async fn disconnected<B: Backend>(State(api): ApiState<B>, call: GatewayCall) -> Answer {
    let gw = call.id;
    ok(api.view(&gw).disconnected)
}
