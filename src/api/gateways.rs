//! Gateway-level calls: list, create, update, delete, activity, export and import, stats
//! and the enrollment string.

use std::collections::HashMap;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{import_file, GatewayFile};
use super::body::{json_body, object, ok, ok_at, prefix, typed, upload, Answer, ApiState, RawBody};
use super::destinations::{new_dest, Origin};
use super::extract::{AdminCall, GatewayCall, JsonBody};
use super::views::{check_token_exp, expiry, filter_enabled, find_dest, new_record, NewGateway};
use super::{ApiError, Backend, IdCounts};
use crate::config::state::StoredSecret;
use crate::config::Secret;

pub(super) async fn list_gateways<B: Backend>(
    State(api): ApiState<B>,
    _: AdminCall,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let only = filter_enabled(&q)?;
    let recs = api.records().await;
    let out: Vec<Value> = api
        .backend
        .gateway_ids()
        .iter()
        .filter_map(|id| api.backend.tenant(id))
        .filter(|t| only.is_none_or(|e| e == t.enabled))
        .map(|t| api.gateway_view(&t, recs.iter().find(|r| r.id == t.id)))
        .collect();
    ok(Value::Array(out))
}

pub(super) async fn create_gateway<B: Backend>(
    State(api): ApiState<B>,
    _: AdminCall,
    body: RawBody,
) -> Answer {
    let g: NewGateway = typed(json_body(body)?.unwrap_or_else(|| json!({})))?;
    let rec = new_record(g, Vec::new())?;
    let done = api.add(vec![rec]).await?;
    let Some((rec, cfg)) = done.first() else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the new gateway was not stored",
        ));
    };
    tracing::info!(gateway.id = %rec.id, "gateway created");
    ok(api.gateway_view(cfg, Some(rec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Activity {
    #[serde(default)]
    set_active: Vec<String>,
    #[serde(default)]
    set_inactive: Vec<String>,
}

pub(super) async fn gateways_activity<B: Backend>(
    State(api): ApiState<B>,
    _: AdminCall,
    JsonBody(a): JsonBody<Activity>,
) -> Answer {
    for id in a.set_active.iter().chain(&a.set_inactive) {
        if api.record(id).await.is_none() {
            return Err(api.not_managed(id));
        }
    }
    let (mut on, mut off, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for (ids, want) in [(&a.set_active, true), (&a.set_inactive, false)] {
        for id in ids {
            let mut changed = false;
            let (rec, cfg) = api
                .change(id, None, |r| {
                    changed = r.enabled != want;
                    r.enabled = want;
                    Ok(())
                })
                .await?;
            let v = api.gateway_view(&cfg, Some(&rec));
            match (changed, want) {
                (false, _) => same.push(Value::String(id.clone())),
                (true, true) => on.push(v),
                (true, false) => off.push(v),
            }
        }
    }
    ok(json!({ "activated": on, "deactivated": off, "unchanged": same }))
}

pub(super) async fn export_all<B: Backend>(State(api): ApiState<B>, _: AdminCall) -> Answer {
    let gateways: Vec<Value> = api
        .backend
        .gateway_ids()
        .iter()
        .filter_map(|id| api.backend.tenant(id))
        .map(|t| api.gateway_export(&t, None, true))
        .collect();
    ok(json!({ "gateways": gateways }))
}

/// A `.gateway` file as import reads it.
pub(super) async fn import_all<B: Backend>(
    State(api): ApiState<B>,
    _: AdminCall,
    req: Request,
) -> Answer {
    let v = import_file(upload(req).await?)?;
    let files: Vec<Value> = match v {
        Value::Object(mut m) if m.contains_key("gateways") => {
            if m.len() > 1 {
                return Err(ApiError::bad_request(
                    "a service config has only `gateways`",
                ));
            }
            match m.remove("gateways") {
                Some(Value::Array(a)) => a,
                _ => return Err(ApiError::bad_request("gateways: must be an array")),
            }
        }
        other => vec![other],
    };
    let mut recs = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        let at = |e: ApiError| prefix(e, &format!("gateways[{i}]"));
        let g: GatewayFile = typed(f).map_err(at)?;
        let dests = g
            .destinations
            .iter()
            .enumerate()
            .map(|(j, d)| {
                let doc = object(d.clone(), "a destination")?;
                new_dest(&api, doc, &[], Origin::Import)
                    .map_err(|e| prefix(e, &format!("destinations[{j}]")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(at)?;
        let head = NewGateway {
            desc: g.desc,
            enf_tok_sec: g.enf_tok_sec,
            enabled: g.enabled,
            token_exp: g.token_exp,
        };
        recs.push(new_record(head, dests).map_err(at)?);
    }
    let done = api.add(recs).await?;
    let out: Vec<Value> = done
        .iter()
        .map(|(r, c)| api.gateway_view(c, Some(r)))
        .collect();
    ok(json!({ "imported": out }))
}

pub(super) async fn stats_all<B: Backend>(State(api): ApiState<B>, _: AdminCall) -> Answer {
    let mut per = std::collections::BTreeMap::new();
    let mut total = IdCounts::default();
    for id in api.backend.gateway_ids() {
        if let Some(s) = api.view(&id).stats {
            total.add(&s);
            per.insert(id, s);
        }
    }
    ok(json!({ "total": total, "gateways": per }))
}

pub(super) async fn get_gateway<B: Backend>(State(api): ApiState<B>, call: GatewayCall) -> Answer {
    let GatewayCall { id: gw, cfg, .. } = call;
    let rec = api.record(&gw).await;
    ok_at(api.gateway_view(&cfg, rec.as_ref()), rec.as_ref())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GatewayUpdate {
    desc: Option<String>,
    enabled: Option<bool>,
    enf_tok_sec: Option<bool>,
    regen_token: Option<bool>,
    token_exp: Option<u32>,
}

pub(super) async fn update_gateway<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    JsonBody(u): JsonBody<GatewayUpdate>,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    let days = check_token_exp(u.token_exp)?;
    let (rec, cfg) = api
        .change(&gw, if_match, |r| {
            if let Some(d) = u.desc {
                r.desc = d;
            }
            if let Some(e) = u.enabled {
                r.enabled = e;
            }
            if let Some(e) = u.enf_tok_sec {
                r.enf_tok_sec = e;
            }
            if u.regen_token == Some(true) {
                r.security_token = StoredSecret(Secret::generate());
                r.token_exp = days;
                r.token_expires_at = expiry(days);
            }
            Ok(())
        })
        .await?;
    ok_at(api.gateway_view(&cfg, Some(&rec)), Some(&rec))
}

pub(super) async fn delete_gateway<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    api.delete_gateway(&gw, if_match).await?;
    tracing::info!(gateway.id = %gw, "gateway deleted");
    ok(json!({ "deleted": gw }))
}

pub(super) async fn export_gateway<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
) -> Answer {
    let secrets = api.shows_secrets(&call).await;
    ok(api.gateway_export(&call.cfg, None, secrets))
}

pub(super) async fn dests_activity<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    JsonBody(a): JsonBody<Activity>,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    let mut changed = Vec::new();
    let mut same = Vec::new();
    let (rec, cfg) = api
        .change(&gw, if_match, |r| {
            for (ids, want) in [(&a.set_active, true), (&a.set_inactive, false)] {
                for id in ids {
                    let i = find_dest(r, id)
                        .ok_or_else(|| ApiError::not_found(format!("no destination `{id}`")))?;
                    let doc = &mut r.destinations[i];
                    if doc.config.get("enabled").and_then(Value::as_bool) == Some(want) {
                        same.push(Value::String(id.clone()));
                    } else {
                        doc.config.insert("enabled".into(), want.into());
                        doc.updated_at = crate::telemetry::unix_ms();
                        changed.push((id.clone(), want));
                    }
                }
            }
            Ok(())
        })
        .await?;
    let view = |want: bool| -> Vec<Value> {
        changed
            .iter()
            .filter(|(_, w)| *w == want)
            .filter_map(|(id, _)| cfg.destinations.iter().find(|d| d.id == *id))
            .map(|d| api.dest_view(&gw, d, Some(&rec)))
            .collect()
    };
    ok(json!({ "activated": view(true), "deactivated": view(false), "unchanged": same }))
}

pub(super) async fn gateway_stats<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
) -> Answer {
    let gw = call.id;
    let s = api
        .view(&gw)
        .stats
        .ok_or_else(|| ApiError::not_found(format!("no gateway `{gw}`")))?;
    ok(s)
}

/// The enrollment string for this gateway id (docs/DEPLOYMENT.md): `public_url` (or `?url=`),
/// `enroll_ca_file` and the gateway's token. It holds the token, so the same callers as for
/// the token itself: the admin or the gateway's own token.
pub(super) async fn gateway_enrollment<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let GatewayCall { id: gw, cfg, .. } = call;
    let defaults = &api.settings.enroll;
    let url = match q.get("url") {
        Some(u) => crate::config::WssUrl::parse(u)
            .map_err(|e| ApiError::bad_request(format!("url: {e}")))?,
        None => defaults.url.clone().ok_or_else(|| {
            ApiError::conflict(
                "gateway.toml has no public_url: set it, or pass ?url=wss://NAME:PORT/tunnel",
            )
        })?,
    };
    let e = crate::enroll::Enrollment {
        url,
        gateway_id: gw,
        token: cfg.token.clone(),
        ca_pem: defaults.ca_pem.clone(),
    };
    let s = e
        .encode()
        .map_err(|e| ApiError::conflict(format!("enroll_ca_file: {e}")))?;
    ok(json!({ "enrollment": s, "url": e.url.to_string(), "gateway_id": e.gateway_id }))
}
