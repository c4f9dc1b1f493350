//! The API's routes and handlers. Each handler: authorize, read the body (bounded; JSON
//! errors name the field), then read the running gateway or make one [`Api::change`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::certs;
use super::{rfc3339_ms, Api, ApiError, Backend, Caller, Logged};
use crate::config::state::{
    destination_from_json, destination_to_json, DestRecord, GatewayRecord, StoredSecret,
};
use crate::config::{Destination, Secret, TenantConfig};

/// Every route: (method, path). docs/openapi.json documents exactly these (tested).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/sgconfig"),
    ("POST", "/v1/sgconfig"),
    ("PUT", "/v1/setActivity"),
    ("GET", "/v1/export"),
    ("PUT", "/v1/import"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/sgconfig/{gateway_id}"),
    ("PUT", "/v1/sgconfig/{gateway_id}"),
    ("DELETE", "/v1/sgconfig/{gateway_id}"),
    ("GET", "/v1/sgconfig/{gateway_id}/export"),
    ("PUT", "/v1/sgconfig/{gateway_id}/setActivity"),
    ("GET", "/v1/sgconfig/{gateway_id}/stats"),
    ("GET", "/v1/sgconfig/{gateway_id}/enrollment"),
    ("GET", "/v1/sgconfig/{gateway_id}/destinations"),
    ("POST", "/v1/sgconfig/{gateway_id}/destinations"),
    ("DELETE", "/v1/sgconfig/{gateway_id}/bulkDestinations"),
    ("PUT", "/v1/sgconfig/{gateway_id}/destinations/import"),
    (
        "GET",
        "/v1/sgconfig/{gateway_id}/destinations/{destination_id}",
    ),
    (
        "PUT",
        "/v1/sgconfig/{gateway_id}/destinations/{destination_id}",
    ),
    (
        "DELETE",
        "/v1/sgconfig/{gateway_id}/destinations/{destination_id}",
    ),
    (
        "GET",
        "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/export",
    ),
    (
        "GET",
        "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/cert",
    ),
    (
        "PUT",
        "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/cert",
    ),
    (
        "DELETE",
        "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/cert",
    ),
    (
        "PUT",
        "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/genCerts",
    ),
    (
        "PUT",
        "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/ipTableRule",
    ),
    (
        "DELETE",
        "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/ipTableRule",
    ),
    ("GET", "/v1/sgconfig/{gateway_id}/clients"),
    ("DELETE", "/v1/sgconfig/{gateway_id}/clients"),
    ("GET", "/v1/sgconfig/{gateway_id}/clients/{client_id}"),
    ("GET", "/v1/sgconfig/{gateway_id}/clientLogs"),
    ("GET", "/v1/sgconfig/{gateway_id}/disconnectedClients"),
];

type St<B> = State<Arc<Api<B>>>;
type Res = Result<Response, ApiError>;
type Body = Result<Bytes, BytesRejection>;

/// Longest destination id accepted.
const MAX_ID: usize = 64;
/// Days a new or regenerated token lasts unless `token_exp` says otherwise (seed 000).
const DEFAULT_TOKEN_DAYS: u32 = 90;

pub(super) fn router<B: Backend>(api: Arc<Api<B>>) -> Router {
    let max_body = usize::try_from(api.settings.max_body).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/v1/sgconfig",
            get(list_gateways::<B>).post(create_gateway::<B>),
        )
        .route("/v1/setActivity", put(gateways_activity::<B>))
        .route("/v1/export", get(export_all::<B>))
        .route("/v1/import", put(import_all::<B>))
        .route("/v1/stats", get(stats_all::<B>))
        .route(
            "/v1/sgconfig/{gateway_id}",
            get(get_gateway::<B>)
                .put(update_gateway::<B>)
                .delete(delete_gateway::<B>),
        )
        .route("/v1/sgconfig/{gateway_id}/export", get(export_gateway::<B>))
        .route(
            "/v1/sgconfig/{gateway_id}/setActivity",
            put(dests_activity::<B>),
        )
        .route("/v1/sgconfig/{gateway_id}/stats", get(gateway_stats::<B>))
        .route(
            "/v1/sgconfig/{gateway_id}/enrollment",
            get(gateway_enrollment::<B>),
        )
        .route(
            "/v1/sgconfig/{gateway_id}/destinations",
            get(list_dests::<B>).post(create_dest::<B>),
        )
        .route(
            "/v1/sgconfig/{gateway_id}/bulkDestinations",
            axum::routing::delete(bulk_delete::<B>),
        )
        .route(
            "/v1/sgconfig/{gateway_id}/destinations/import",
            put(import_dests::<B>),
        )
        .route(
            "/v1/sgconfig/{gateway_id}/destinations/{destination_id}",
            get(get_dest::<B>)
                .put(update_dest::<B>)
                .delete(delete_dest::<B>),
        )
        .route(
            "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/export",
            get(export_dest::<B>),
        )
        .route(
            "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/cert",
            get(get_cert::<B>)
                .put(put_cert::<B>)
                .delete(delete_cert::<B>),
        )
        .route(
            "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/genCerts",
            put(gen_certs::<B>),
        )
        .route(
            "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/ipTableRule",
            put(put_rule::<B>).delete(delete_rule::<B>),
        )
        .route(
            "/v1/sgconfig/{gateway_id}/clients",
            get(list_clients::<B>).delete(delete_clients::<B>),
        )
        .route(
            "/v1/sgconfig/{gateway_id}/clients/{client_id}",
            get(get_client::<B>),
        )
        .route(
            "/v1/sgconfig/{gateway_id}/clientLogs",
            get(client_logs::<B>),
        )
        .route(
            "/v1/sgconfig/{gateway_id}/disconnectedClients",
            get(disconnected::<B>),
        )
        .fallback(|| async { ApiError::not_found("no such API call") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed for this path",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(api.clone(), gate::<B>))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(api)
}

/// Runs before any handler reads a body: a request without a known token is refused from its
/// headers, and every request, body included, must finish within `api_request_timeout`.
async fn gate<B: Backend>(
    State(api): State<Arc<Api<B>>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(e) = api.known_token(req.headers()) {
        return e.into_response();
    }
    // A body announced too large is refused before it is polled, so no `100 Continue` invites
    // the client to send what would be thrown away (and cut off mid-send).
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > api.settings.max_body) {
        return too_large().into_response();
    }
    let limit = api.settings.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request was not completed within {} s (api_request_timeout)",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

/// One line per request: method, path (never the query or body: tokens and keys), status,
/// and for errors the message.
async fn log_request(req: Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    match resp.extensions().get::<Logged>() {
        Some(Logged(m)) if status >= 500 => {
            tracing::warn!(api.method = %method, api.path = %path, api.status = status, duration_ms = ms, reason = %m, "API request failed")
        }
        Some(Logged(m)) => {
            tracing::info!(api.method = %method, api.path = %path, api.status = status, duration_ms = ms, reason = %m, "API request refused")
        }
        None => {
            tracing::info!(api.method = %method, api.path = %path, api.status = status, duration_ms = ms, "API request")
        }
    }
    resp
}

// ---- bodies ----

/// The body as JSON; `None` when empty. Content-Type is not required (seed 000's curl
/// examples send JSON with `-d` alone).
fn json_body(body: Body) -> Result<Option<Value>, ApiError> {
    let bytes = body.map_err(body_error)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::bad(format!("body is not valid JSON: {e}")))
}

fn need_body(body: Body) -> Result<Value, ApiError> {
    json_body(body)?.ok_or_else(|| ApiError::bad("a JSON body is required"))
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body is larger than the API accepts (api_max_body)",
    )
}

fn body_error(r: BytesRejection) -> ApiError {
    let status = r.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
    } else {
        ApiError::new(
            status,
            format!("cannot read the request body: {}", r.body_text()),
        )
    }
}

/// A typed body; errors name the field (`token_exp: invalid type: ...`).
fn typed<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad(inner.to_string())
        } else {
            ApiError::bad(format!("{path}: {inner}"))
        }
    })
}

fn object(v: Value, what: &str) -> Result<Map<String, Value>, ApiError> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::bad(format!(
            "{what} must be a JSON object, not {}",
            json_type(&other)
        ))),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A file upload (`-F name=@file`, all parts as (name, text)) or a raw body.
async fn upload(req: Request) -> Result<Vec<(String, String)>, ApiError> {
    let multipart = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        let body = Bytes::from_request(req, &()).await.map_err(body_error)?;
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad("body is not UTF-8 text"))?;
        return Ok(vec![(String::new(), text)]);
    }
    let mut mp = axum::extract::Multipart::from_request(req, &())
        .await
        .map_err(|r| ApiError::new(r.status(), format!("bad multipart body: {}", r.body_text())))?;
    let mut parts = Vec::new();
    loop {
        let field = mp.next_field().await.map_err(|e| {
            ApiError::new(e.status(), format!("bad multipart body: {}", e.body_text()))
        })?;
        let Some(field) = field else { break };
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field.bytes().await.map_err(|e| {
            ApiError::new(
                e.status(),
                format!("bad multipart part `{name}`: {}", e.body_text()),
            )
        })?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::bad(format!("{name}: is not UTF-8 text")))?;
        parts.push((name, text));
    }
    Ok(parts)
}

// ---- views ----

fn status_word(enabled: bool) -> &'static str {
    if enabled {
        "ENABLED"
    } else {
        "DISABLED"
    }
}

impl<B: Backend> Api<B> {
    fn gateway_view(&self, cfg: &TenantConfig, rec: Option<&GatewayRecord>) -> Value {
        let clients: Vec<Value> = self
            .backend
            .clients(&cfg.id)
            .into_iter()
            .filter_map(|c| c.get("client_id").cloned())
            .collect();
        let gone: Vec<Value> = self
            .backend
            .disconnected(&cfg.id)
            .into_iter()
            .filter_map(|c| c.get("client_id").cloned())
            .collect();
        json!({
            "id": cfg.id,
            "desc": cfg.desc,
            "status": status_word(cfg.enabled),
            "enabled": cfg.enabled,
            "security_token": cfg.token.expose(),
            "enf_tok_sec": cfg.enf_tok_sec,
            "token_exp": rec.map(|r| r.token_exp),
            "token_expires_at": cfg.token_expires_at.map_or(Value::Null, |s| rfc3339_ms(s.saturating_mul(1000))),
            "created_at": rec.map_or(Value::Null, |r| rfc3339_ms(r.created_at)),
            "updated_at": rec.map_or(Value::Null, |r| rfc3339_ms(r.updated_at)),
            "managed_by": if rec.is_some() { "api" } else { "gateway.toml" },
            "destinations": cfg.destinations.len(),
            "connected_clients": clients,
            "recently_disconnected": gone,
        })
    }

    fn dest_view(&self, gw: &str, d: &Destination, rec: Option<&GatewayRecord>) -> Value {
        let mut m = destination_to_json(d, false);
        m.insert("gateway_id".into(), gw.into());
        m.insert("status".into(), status_word(d.enabled).into());
        let r = rec
            .and_then(|r| find_dest(r, &d.id))
            .map(|i| &rec_dests(rec)[i]);
        m.insert(
            "created_at".into(),
            r.map_or(Value::Null, |r| rfc3339_ms(r.created_at)),
        );
        m.insert(
            "updated_at".into(),
            r.map_or(Value::Null, |r| rfc3339_ms(r.updated_at)),
        );
        Value::Object(m)
    }

    /// `.gateway` export: what import needs to recreate the gateway, keys included.
    fn gateway_export(&self, cfg: &TenantConfig, only: Option<&str>) -> Value {
        let dests: Vec<Value> = cfg
            .destinations
            .iter()
            .filter(|d| only.is_none_or(|o| o == d.id))
            .map(|d| Value::Object(destination_to_json(d, true)))
            .collect();
        json!({ "desc": cfg.desc, "enf_tok_sec": cfg.enf_tok_sec, "enabled": cfg.enabled, "destinations": dests })
    }
}

fn rec_dests(rec: Option<&GatewayRecord>) -> &[DestRecord] {
    rec.map_or(&[], |r| r.destinations.as_slice())
}

fn find_dest(rec: &GatewayRecord, id: &str) -> Option<usize> {
    rec.destinations
        .iter()
        .position(|d| d.config.get("id").and_then(Value::as_str) == Some(id))
}

fn ok(v: Value) -> Res {
    Ok(Json(v).into_response())
}

fn filter_enabled(q: &HashMap<String, String>) -> Result<Option<bool>, ApiError> {
    match q.get("type").map(String::as_str) {
        None | Some("") => Ok(None),
        Some("enabled") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad(format!(
            "type: `{other}` is not one of enabled, disabled"
        ))),
    }
}

fn random_id(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn check_token_exp(days: Option<u32>) -> Result<u32, ApiError> {
    match days {
        None => Ok(DEFAULT_TOKEN_DAYS),
        Some(d) if d <= 90 => Ok(d),
        Some(d) => Err(ApiError::bad(format!(
            "token_exp: {d} is out of range 0..=90"
        ))),
    }
}

fn expiry(days: u32) -> Option<u64> {
    (days > 0).then(|| crate::telemetry::unix_ms() / 1000 + u64::from(days) * 86_400)
}

// ---- account-level ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGateway {
    desc: Option<String>,
    enf_tok_sec: Option<bool>,
    enabled: Option<bool>,
    token_exp: Option<u32>,
}

fn new_record(g: NewGateway, destinations: Vec<DestRecord>) -> Result<GatewayRecord, ApiError> {
    let days = check_token_exp(g.token_exp)?;
    let now = crate::telemetry::unix_ms();
    Ok(GatewayRecord {
        id: random_id(11),
        desc: g.desc.unwrap_or_default(),
        enabled: g.enabled.unwrap_or(true),
        enf_tok_sec: g.enf_tok_sec.unwrap_or(true),
        security_token: StoredSecret(Secret::generate()),
        token_exp: days,
        token_expires_at: expiry(days),
        created_at: now,
        updated_at: now,
        destinations,
    })
}

async fn list_gateways<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    api.admin(&h)?;
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

async fn create_gateway<B: Backend>(State(api): St<B>, h: HeaderMap, body: Body) -> Res {
    api.admin(&h)?;
    let g: NewGateway = typed(json_body(body)?.unwrap_or_else(|| json!({})))?;
    let rec = new_record(g, Vec::new())?;
    let done = api.add(vec![rec]).await?;
    let (rec, cfg) = &done[0];
    tracing::info!(gateway.id = %rec.id, "gateway created");
    ok(api.gateway_view(cfg, Some(rec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Activity {
    #[serde(default)]
    set_active: Vec<String>,
    #[serde(default)]
    set_inactive: Vec<String>,
}

async fn gateways_activity<B: Backend>(State(api): St<B>, h: HeaderMap, body: Body) -> Res {
    api.admin(&h)?;
    let a: Activity = typed(need_body(body)?)?;
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
                .change(id, |r| {
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

async fn export_all<B: Backend>(State(api): St<B>, h: HeaderMap) -> Res {
    api.admin(&h)?;
    let gateways: Vec<Value> = api
        .backend
        .gateway_ids()
        .iter()
        .filter_map(|id| api.backend.tenant(id))
        .map(|t| api.gateway_export(&t, None))
        .collect();
    ok(json!({ "gateways": gateways }))
}

/// A `.gateway` file as import reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    desc: Option<String>,
    enf_tok_sec: Option<bool>,
    enabled: Option<bool>,
    token_exp: Option<u32>,
    #[serde(default)]
    destinations: Vec<Value>,
}

/// The uploaded file of an import: the `state` part, or the whole body.
fn import_file(parts: Vec<(String, String)>) -> Result<Value, ApiError> {
    let text = match parts.as_slice() {
        [(_, t)] => t.clone(),
        _ => parts
            .into_iter()
            .find(|(n, _)| n == "state")
            .map(|(_, t)| t)
            .ok_or_else(|| ApiError::bad("state: missing (upload the file as -F state=@file)"))?,
    };
    if text.trim().is_empty() {
        return Err(ApiError::bad("state: the file is empty"));
    }
    serde_json::from_str(&text).map_err(|e| ApiError::bad(format!("state: not valid JSON: {e}")))
}

async fn import_all<B: Backend>(State(api): St<B>, h: HeaderMap, req: Request) -> Res {
    api.admin(&h)?;
    let v = import_file(upload(req).await?)?;
    let files: Vec<Value> = match v {
        Value::Object(mut m) if m.contains_key("gateways") => {
            if m.len() > 1 {
                return Err(ApiError::bad("a service config has only `gateways`"));
            }
            match m.remove("gateways") {
                Some(Value::Array(a)) => a,
                _ => return Err(ApiError::bad("gateways: must be an array")),
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

fn prefix(mut e: ApiError, at: &str) -> ApiError {
    for m in e.messages.iter_mut() {
        *m = format!("{at}.{m}");
    }
    e
}

async fn stats_all<B: Backend>(State(api): St<B>, h: HeaderMap) -> Res {
    api.admin(&h)?;
    let mut per = Map::new();
    let mut total: Map<String, Value> = Map::new();
    for id in api.backend.gateway_ids() {
        if let Some(Value::Object(s)) = api.backend.stats(&id) {
            for (k, v) in &s {
                let sum =
                    total.get(k).and_then(Value::as_u64).unwrap_or(0) + v.as_u64().unwrap_or(0);
                total.insert(k.clone(), sum.into());
            }
            per.insert(id, Value::Object(s));
        }
    }
    ok(json!({ "total": total, "gateways": per }))
}

// ---- one gateway ----

async fn get_gateway<B: Backend>(State(api): St<B>, h: HeaderMap, Path(gw): Path<String>) -> Res {
    let (_, cfg) = api.authorize(&h, &gw)?;
    let rec = api.record(&gw).await;
    ok(api.gateway_view(&cfg, rec.as_ref()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayUpdate {
    desc: Option<String>,
    enabled: Option<bool>,
    enf_tok_sec: Option<bool>,
    regen_token: Option<bool>,
    token_exp: Option<u32>,
}

async fn update_gateway<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
    body: Body,
) -> Res {
    api.authorize(&h, &gw)?;
    let u: GatewayUpdate = typed(need_body(body)?)?;
    let days = check_token_exp(u.token_exp)?;
    let (rec, cfg) = api
        .change(&gw, |r| {
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
    ok(api.gateway_view(&cfg, Some(&rec)))
}

async fn delete_gateway<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
) -> Res {
    api.authorize(&h, &gw)?;
    api.delete_gateway(&gw).await?;
    tracing::info!(gateway.id = %gw, "gateway deleted");
    ok(json!({ "deleted": gw }))
}

async fn export_gateway<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
) -> Res {
    let (_, cfg) = api.authorize(&h, &gw)?;
    ok(api.gateway_export(&cfg, None))
}

async fn dests_activity<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
    body: Body,
) -> Res {
    api.authorize(&h, &gw)?;
    let a: Activity = typed(need_body(body)?)?;
    let mut changed = Vec::new();
    let mut same = Vec::new();
    let (rec, cfg) = api
        .change(&gw, |r| {
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

async fn gateway_stats<B: Backend>(State(api): St<B>, h: HeaderMap, Path(gw): Path<String>) -> Res {
    api.authorize(&h, &gw)?;
    let s = api
        .backend
        .stats(&gw)
        .ok_or_else(|| ApiError::not_found(format!("no gateway `{gw}`")))?;
    ok(s)
}

/// The enrollment string for this gateway id (docs/DEPLOYMENT.md): `public_url` (or `?url=`),
/// `enroll_ca_file` and the gateway's token. It holds the token, so the same callers as for
/// the token itself: the admin or the gateway's own token.
async fn gateway_enrollment<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    let (_, cfg) = api.authorize(&h, &gw)?;
    let defaults = &api.settings.enroll;
    let url = match q.get("url") {
        Some(u) => {
            crate::config::WssUrl::parse(u).map_err(|e| ApiError::bad(format!("url: {e}")))?
        }
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

// ---- destinations ----

async fn list_dests<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    let (_, cfg) = api.authorize(&h, &gw)?;
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
                return Err(ApiError::bad(format!(
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
/// callers when `client_tls` is on and none was given (seed 000 auto-generates it).
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
fn cloud_host<B: Backend>(api: &Api<B>, doc: &mut Map<String, Value>) -> Result<(), ApiError> {
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
        Some(other) => Err(ApiError::bad(format!(
            "cloud_host: {other} is not where this gateway listens for API destinations ({host}, cloud_host in gateway.toml)"
        ))),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Request,
    Import,
}

/// A new destination from a request or an import: id checked or generated, defaults filled
/// in, validated. `taken`: ids already used in the gateway.
fn new_dest<B: Backend>(
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
                return Err(ApiError::bad(format!(
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
            return Err(ApiError::bad(format!(
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

async fn create_dest<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
    body: Body,
) -> Res {
    api.authorize(&h, &gw)?;
    let doc = object(need_body(body)?, "the body")?;
    let mut id = String::new();
    let (rec, cfg) = api
        .change(&gw, |r| {
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
) -> Res {
    let d = cfg
        .destinations
        .iter()
        .find(|d| d.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no destination `{id}`")))?;
    ok(api.dest_view(gw, d, Some(rec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdList {
    destinations: Vec<String>,
}

async fn bulk_delete<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
    body: Body,
) -> Res {
    api.authorize(&h, &gw)?;
    let l: IdList = typed(need_body(body)?)?;
    api.change(&gw, |r| {
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

async fn import_dests<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path(gw): Path<String>,
    req: Request,
) -> Res {
    api.authorize(&h, &gw)?;
    let v = import_file(upload(req).await?)?;
    let list = match v {
        Value::Object(m) => match typed::<GatewayFile>(Value::Object(m)) {
            Ok(f) => f.destinations,
            Err(e) => return Err(prefix(e, "state")),
        },
        Value::Array(a) => a,
        other => {
            return Err(ApiError::bad(format!(
                "state: expected a .gateway file, found {}",
                json_type(&other)
            )))
        }
    };
    let mut ids = Vec::new();
    let (rec, cfg) = api
        .change(&gw, |r| {
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

fn running_dest<'a>(cfg: &'a TenantConfig, id: &str) -> Result<&'a Destination, ApiError> {
    cfg.destinations
        .iter()
        .find(|d| d.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no destination `{id}`")))
}

async fn get_dest<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, id)): Path<(String, String)>,
) -> Res {
    let (_, cfg) = api.authorize(&h, &gw)?;
    let d = running_dest(&cfg, &id)?;
    let rec = api.record(&gw).await;
    ok(api.dest_view(&gw, d, rec.as_ref()))
}

/// Changes one destination's document with `edit`, then validates it.
async fn edit_dest<B: Backend>(
    api: &Api<B>,
    gw: &str,
    id: &str,
    edit: impl FnOnce(&mut Map<String, Value>) -> Result<(), ApiError>,
) -> Res {
    let (rec, cfg) = api
        .change(gw, |r| {
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

async fn update_dest<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, id)): Path<(String, String)>,
    body: Body,
) -> Res {
    api.authorize(&h, &gw)?;
    let mut patch = object(need_body(body)?, "the body")?;
    normalise(&mut patch)?;
    match patch.get("id") {
        Some(Value::String(s)) if *s != id => return Err(ApiError::bad("id: cannot be changed")),
        _ => {}
    }
    edit_dest(&api, &gw, &id, |doc| {
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

async fn delete_dest<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, id)): Path<(String, String)>,
) -> Res {
    api.authorize(&h, &gw)?;
    api.change(&gw, |r| {
        let i = find_dest(r, &id)
            .ok_or_else(|| ApiError::not_found(format!("no destination `{id}`")))?;
        r.destinations.remove(i);
        Ok(())
    })
    .await?;
    tracing::info!(gateway.id = %gw, dest.id = %id, "destination deleted");
    ok(json!({ "deleted": id }))
}

async fn export_dest<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, id)): Path<(String, String)>,
) -> Res {
    let (_, cfg) = api.authorize(&h, &gw)?;
    running_dest(&cfg, &id)?;
    ok(api.gateway_export(&cfg, Some(&id)))
}

// ---- certificates ----

async fn get_cert<B: Backend>(
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

async fn put_cert<B: Backend>(
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

async fn delete_cert<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, id)): Path<(String, String)>,
    body: Body,
) -> Res {
    api.authorize(&h, &gw)?;
    let f: FileNames = typed(need_body(body)?)?;
    edit_dest(&api, &gw, &id, |doc| certs::delete(doc, &f.filename)).await
}

async fn gen_certs<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, id)): Path<(String, String)>,
) -> Res {
    api.authorize(&h, &gw)?;
    edit_dest(&api, &gw, &id, certs::generate).await
}

// ---- ipTableRule ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    src: Option<String>,
    spt: Option<String>,
    app: Option<String>,
}

fn rule_matches(r: &Value, want: &Rule) -> bool {
    let field = |k: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match &want.app {
        Some(app) if !app.is_empty() => field("app") == *app,
        _ => {
            field("src") == want.src.clone().unwrap_or_default()
                && field("spt") == want.spt.clone().unwrap_or_default()
        }
    }
}

async fn put_rule<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, id)): Path<(String, String)>,
    body: Body,
) -> Res {
    api.authorize(&h, &gw)?;
    let rule: Rule = typed(need_body(body)?)?;
    edit_dest(&api, &gw, &id, |doc| {
        let mut obj = Map::new();
        for (k, v) in [("src", &rule.src), ("spt", &rule.spt), ("app", &rule.app)] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                obj.insert(k.into(), v.clone().into());
            }
        }
        let rules = doc
            .entry("ip_table_rules")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(list) = rules else {
            return Err(ApiError::bad("ip_table_rules: is not a list"));
        };
        // The same `app` replaces its rule (seed 000: app identifies the rule).
        let same = rule.app.as_ref().filter(|a| !a.is_empty()).and_then(|a| {
            list.iter()
                .position(|r| r.get("app").and_then(Value::as_str) == Some(a.as_str()))
        });
        match same {
            Some(i) => list[i] = Value::Object(obj),
            None => list.push(Value::Object(obj)),
        }
        Ok(())
    })
    .await
}

async fn delete_rule<B: Backend>(
    State(api): St<B>,
    h: HeaderMap,
    Path((gw, id)): Path<(String, String)>,
    body: Body,
) -> Res {
    api.authorize(&h, &gw)?;
    let want: Option<Rule> = json_body(body)?.map(typed).transpose()?;
    edit_dest(&api, &gw, &id, |doc| {
        let all = want
            .as_ref()
            .is_none_or(|w| w.src.is_none() && w.spt.is_none() && w.app.is_none());
        if all {
            doc.remove("ip_table_rules");
            return Ok(());
        }
        let Some(Value::Array(list)) = doc.get_mut("ip_table_rules") else {
            return Err(ApiError::not_found("the destination has no ip_table_rules"));
        };
        let before = list.len();
        if let Some(w) = &want {
            list.retain(|r| !rule_matches(r, w));
        }
        if list.len() == before {
            return Err(ApiError::not_found("no ip_table_rules entry matches"));
        }
        if list.is_empty() {
            doc.remove("ip_table_rules");
        }
        Ok(())
    })
    .await
}

// ---- clients ----

async fn list_clients<B: Backend>(State(api): St<B>, h: HeaderMap, Path(gw): Path<String>) -> Res {
    api.authorize(&h, &gw)?;
    ok(Value::Array(api.backend.clients(&gw)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeleteList {
    delete_list: Vec<String>,
}

async fn delete_clients<B: Backend>(
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

async fn get_client<B: Backend>(
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

async fn client_logs<B: Backend>(
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

async fn disconnected<B: Backend>(State(api): St<B>, h: HeaderMap, Path(gw): Path<String>) -> Res {
    api.authorize(&h, &gw)?;
    ok(Value::Array(api.backend.disconnected(&gw)))
}
