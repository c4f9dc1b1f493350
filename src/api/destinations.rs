//! Destination calls: list, create (one, bulk import), read, update, delete, export; the
//! JSON document of a destination checked and filled in before it is applied.

use std::collections::HashMap;

use axum::extract::{Path, Query, Request, State};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::body::{import_file, GatewayFile};
use super::body::{
    json_type, need_body, object, ok, ok_at, prefix, typed, upload, Answer, ApiState, RawBody,
};
use super::extract::{GatewayCall, JsonBody};
use super::views::{filter_enabled, find_dest, random_id, MAX_ID};
use super::{certs, Api, ApiError, Backend};
use crate::config::state::{destination_from_json, destination_to_json, DestRecord, GatewayRecord};
use crate::config::{Destination, TenantConfig};

pub(super) async fn list_dests<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let GatewayCall { id: gw, cfg, .. } = call;
    let only = filter_enabled(&q)?;
    let rec = api.record(&gw).await;
    let out: Vec<Value> = cfg
        .destinations
        .iter()
        .filter(|d| only.is_none_or(|e| e == d.enabled))
        .map(|d| api.dest_view(&gw, d, rec.as_ref()))
        .collect();
    ok(Value::Array(out))
}

/// Fields the API shows but a document does not hold; dropped so a GET result can be sent
/// back as it is.
const READ_ONLY: &[&str] = &["gateway_id", "status", "created_at", "updated_at"];

/// Seed 000's names for document fields.
const ALIASES: &[(&str, &str)] = &[("ipRules", "ip_table_rules")];

fn normalise(doc: &mut Map<String, Value>) -> Result<(), ApiError> {
    for k in READ_ONLY {
        doc.remove(*k);
    }
    for (alias, name) in ALIASES {
        if let Some(v) = doc.remove(*alias) {
            if doc.contains_key(*name) {
                return Err(ApiError::bad_request(format!(
                    "{alias}: give either `{alias}` or `{name}`, not both"
                )));
            }
            doc.insert((*name).into(), v);
        }
    }
    Ok(())
}

/// A destination document validated and in its canonical form.
fn canonical(doc: &Map<String, Value>) -> Result<(Destination, Map<String, Value>), ApiError> {
    let d = destination_from_json(doc).map_err(ApiError::invalid)?;
    let canon = destination_to_json(&d, true);
    Ok((d, canon))
}

/// Generates what a destination needs and does not have: the gateway's certificate for
/// callers when `client_tls` is on and none was given (as the Secure Gateway API does, docs/API.md).
fn fill_in(doc: &mut Map<String, Value>) -> Result<(), ApiError> {
    let caller_tls = matches!(
        doc.get("client_tls").and_then(Value::as_str),
        Some("serverside" | "mutualauth")
    );
    if caller_tls && !doc.contains_key("server_cert") && !doc.contains_key("server_key") {
        certs::server_pair(doc)?;
    }
    Ok(())
}

/// API destinations listen on the gateway's `cloud_host` (gateway.toml): API users choose
/// ports, not the gateway's interfaces.
pub(super) fn cloud_host<B: Backend>(
    api: &Api<B>,
    doc: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    let host = &api.settings.cloud_host;
    if doc.get("reverse").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    match doc.get("cloud_host") {
        None | Some(Value::Null) => {
            doc.insert("cloud_host".into(), host.clone().into());
            Ok(())
        }
        Some(Value::String(h)) if h == host => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "cloud_host: {other} is not where this gateway listens for API destinations ({host}, cloud_host in gateway.toml)"
        ))),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Request,
    Import,
}

/// A new destination from a request or an import: id checked or generated, defaults filled
/// in, validated. `taken`: ids already used in the gateway.
pub(super) fn new_dest<B: Backend>(
    api: &Api<B>,
    mut doc: Map<String, Value>,
    taken: &[String],
    origin: Origin,
) -> Result<DestRecord, ApiError> {
    normalise(&mut doc)?;
    let id = match doc.get("id") {
        None | Some(Value::Null) => format!("{}_{}", random_id(5), random_id(6)),
        Some(Value::String(s)) => {
            let good = !s.is_empty()
                && s.len() <= MAX_ID
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !good {
                return Err(ApiError::bad_request(format!(
                    "id: may have 1..={MAX_ID} letters, digits, `_`, `-` or `.`"
                )));
            }
            if taken.contains(s) {
                return Err(ApiError::conflict(format!(
                    "id: destination `{s}` already exists"
                )));
            }
            s.clone()
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "id: expected a string, found {}",
                json_type(other)
            )))
        }
    };
    doc.insert("id".into(), id.into());
    // An imported destination listens where this gateway listens, whatever the file says.
    if origin == Origin::Import {
        doc.remove("cloud_host");
    }
    let reverse = doc.get("reverse").and_then(Value::as_bool).unwrap_or(false);
    if !reverse {
        doc.entry("cloud_port").or_insert_with(|| 0.into());
    }
    cloud_host(api, &mut doc)?;
    fill_in(&mut doc)?;
    let (_, config) = canonical(&doc)?;
    let now = crate::telemetry::unix_ms();
    Ok(DestRecord {
        created_at: now,
        updated_at: now,
        config,
    })
}

fn dest_ids(r: &GatewayRecord) -> Vec<String> {
    r.destinations
        .iter()
        .filter_map(|d| {
            d.config
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

pub(super) async fn create_dest<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    body: RawBody,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    let doc = object(need_body(body)?, "the body")?;
    let mut id = String::new();
    let (rec, cfg) = api
        .change(&gw, if_match, |r| {
            let d = new_dest(&api, doc, &dest_ids(r), Origin::Request)?;
            id = d
                .config
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            r.destinations.push(d);
            Ok(())
        })
        .await?;
    tracing::info!(gateway.id = %gw, dest.id = %id, "destination created");
    dest_answer(&api, &gw, &cfg, &rec, &id)
}

fn dest_answer<B: Backend>(
    api: &Api<B>,
    gw: &str,
    cfg: &TenantConfig,
    rec: &GatewayRecord,
    id: &str,
) -> Answer {
    let d = cfg
        .destinations
        .iter()
        .find(|d| d.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no destination `{id}`")))?;
    ok_at(api.dest_view(gw, d, Some(rec)), Some(rec))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdList {
    destinations: Vec<String>,
}

pub(super) async fn bulk_delete<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    JsonBody(l): JsonBody<IdList>,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    api.change(&gw, if_match, |r| {
        for id in &l.destinations {
            let i = find_dest(r, id)
                .ok_or_else(|| ApiError::not_found(format!("no destination `{id}`")))?;
            r.destinations.remove(i);
        }
        Ok(())
    })
    .await?;
    ok(json!({ "deleted": l.destinations }))
}

pub(super) async fn import_dests<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    req: Request,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    let v = import_file(upload(req).await?)?;
    let list = match v {
        Value::Object(m) => match typed::<GatewayFile>(Value::Object(m)) {
            Ok(f) => f.destinations,
            Err(e) => return Err(prefix(e, "state")),
        },
        Value::Array(a) => a,
        other => {
            return Err(ApiError::bad_request(format!(
                "state: expected a .gateway file, found {}",
                json_type(&other)
            )))
        }
    };
    let mut ids = Vec::new();
    let (rec, cfg) = api
        .change(&gw, if_match, |r| {
            for (j, d) in list.into_iter().enumerate() {
                let at = |e| prefix(e, &format!("destinations[{j}]"));
                let doc = object(d, "a destination").map_err(at)?;
                let rec = new_dest(&api, doc, &dest_ids(r), Origin::Import).map_err(at)?;
                ids.push(
                    rec.config
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                );
                r.destinations.push(rec);
            }
            Ok(())
        })
        .await?;
    let out: Vec<Value> = cfg
        .destinations
        .iter()
        .filter(|d| ids.contains(&d.id))
        .map(|d| api.dest_view(&gw, d, Some(&rec)))
        .collect();
    ok(json!({ "imported": out }))
}

pub(super) fn running_dest<'a>(
    cfg: &'a TenantConfig,
    id: &str,
) -> Result<&'a Destination, ApiError> {
    cfg.destinations
        .iter()
        .find(|d| d.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no destination `{id}`")))
}

pub(super) async fn get_dest<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    Path((_, id)): Path<(String, String)>,
) -> Answer {
    let GatewayCall { id: gw, cfg, .. } = call;
    let d = running_dest(&cfg, &id)?;
    let rec = api.record(&gw).await;
    ok_at(api.dest_view(&gw, d, rec.as_ref()), rec.as_ref())
}

/// Changes one destination's document with `edit`, then validates it.
pub(super) async fn edit_dest<B: Backend>(
    api: &Api<B>,
    gw: &str,
    if_match: Option<i64>,
    id: &str,
    edit: impl FnOnce(&mut Map<String, Value>) -> Result<(), ApiError>,
) -> Answer {
    let (rec, cfg) = api
        .change(gw, if_match, |r| {
            let i = find_dest(r, id)
                .ok_or_else(|| ApiError::not_found(format!("no destination `{id}`")))?;
            let mut doc = r.destinations[i].config.clone();
            edit(&mut doc)?;
            let (_, canon) = canonical(&doc)?;
            r.destinations[i].config = canon;
            r.destinations[i].updated_at = crate::telemetry::unix_ms();
            Ok(())
        })
        .await?;
    dest_answer(api, gw, &cfg, &rec, id)
}

pub(super) async fn update_dest<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    Path((_, id)): Path<(String, String)>,
    body: RawBody,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    let mut patch = object(need_body(body)?, "the body")?;
    normalise(&mut patch)?;
    match patch.get("id") {
        Some(Value::String(s)) if *s != id => {
            return Err(ApiError::bad_request("id: cannot be changed"))
        }
        _ => {}
    }
    edit_dest(&api, &gw, if_match, &id, |doc| {
        // A key set to null goes back to its default.
        for (k, v) in patch {
            if v.is_null() {
                doc.remove(&k);
            } else {
                doc.insert(k, v);
            }
        }
        cloud_host(&api, doc)?;
        fill_in(doc)
    })
    .await
}

pub(super) async fn delete_dest<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    Path((_, id)): Path<(String, String)>,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    api.change(&gw, if_match, |r| {
        let i = find_dest(r, &id)
            .ok_or_else(|| ApiError::not_found(format!("no destination `{id}`")))?;
        r.destinations.remove(i);
        Ok(())
    })
    .await?;
    tracing::info!(gateway.id = %gw, dest.id = %id, "destination deleted");
    ok(json!({ "deleted": id }))
}

pub(super) async fn export_dest<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    Path((_, id)): Path<(String, String)>,
) -> Answer {
    running_dest(&call.cfg, &id)?;
    let secrets = api.shows_secrets(&call).await;
    ok(api.gateway_export(&call.cfg, Some(&id), secrets))
}
