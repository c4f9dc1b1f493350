//! One management-API request built from fuzz bytes, served in process by the API's own router
//! (auth gate, body limit, handlers, validation) over an in-memory gateway. Shared by
//! fuzz/fuzz_targets/api_body.rs and the corpus replay in tests/hostile.rs, so both judge the
//! same way.
//!
//! Input: byte 0 picks the route, byte 1 the caller (admin, the gateway's own token, a
//! stranger), the rest is the body. The checks: no panic, no hang, no 5xx, and every refusal
//! is a JSON error that says why.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use sgw::api::{self, Api, ApplyError, Backend, ClientLogLine, ClientView, GoneClient, IdCounts};
use sgw::config::state::StateFile;
use sgw::config::{ApiConfig, Secret, TenantConfig};
use tower::ServiceExt;

const ADMIN: &str = "fuzz-admin-token-0123456789";
const MAX_BODY: u64 = 64 * 1024;

/// The running gateway, kept in memory: what the API applied is what it reads back.
#[derive(Default)]
pub struct Memory(Mutex<HashMap<String, TenantConfig>>);

impl Memory {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, TenantConfig>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for Memory {
    async fn apply(&self, cfg: TenantConfig) -> Result<TenantConfig, ApplyError> {
        self.map().insert(cfg.id.clone(), cfg.clone());
        Ok(cfg)
    }
    async fn remove(&self, id: &str) {
        self.map().remove(id);
    }
    fn tenant(&self, id: &str) -> Option<TenantConfig> {
        self.map().get(id).cloned()
    }
    fn gateway_ids(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }
    fn any_token_is(&self, token: &str) -> bool {
        self.map().values().any(|t| t.token.ct_eq(token))
    }
    fn clients(&self, _id: &str) -> Vec<ClientView> {
        vec![ClientView {
            client_id: "c1".into(),
            version: "1".into(),
            hostname: "h".into(),
            env: "test".into(),
            tunnels: 1,
            active_streams: 0,
            streams_opened: 0,
        }]
    }
    fn disconnect(&self, _id: &str, client_ids: &[String]) -> Vec<String> {
        client_ids.iter().filter(|c| *c == "c1").cloned().collect()
    }
    fn client_logs(&self, _id: &str) -> Vec<ClientLogLine> {
        Vec::new()
    }
    fn disconnected(&self, _id: &str) -> Vec<GoneClient> {
        Vec::new()
    }
    fn stats(&self, id: &str) -> Option<IdCounts> {
        self.map().contains_key(id).then(IdCounts::default)
    }
}

/// A fresh API holding one gateway with one destination; returns the API, the gateway's id,
/// its token and the destination's id.
async fn setup() -> (axum::Router, String, String, String) {
    let settings = ApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(Secret::new(ADMIN)),
        state_file: None,
        state_store: None,
        replica: "fuzz".into(),
        max_body: MAX_BODY,
        cloud_host: "gateway.test".into(),
        max_connections: 4,
        max_connections_per_source: 4,
        request_timeout: Duration::from_secs(5),
        enroll: Default::default(),
    };
    let app = api::app(Api::new(
        Memory::default(),
        settings,
        StateFile::empty(),
        sgw::store::Store::Memory,
    ));
    let (s, gw) = call(&app, "POST", "/v1/sgconfig", ADMIN, br#"{"desc":"fuzz"}"#).await;
    assert_eq!(s, StatusCode::OK, "{gw}");
    let id = gw["id"].as_str().unwrap().to_owned();
    let token = gw["security_token"].as_str().unwrap().to_owned();
    let path = format!("/v1/sgconfig/{id}/destinations");
    let body = br#"{"desc":"db","ip":"127.0.0.1","port":5432}"#;
    let (s, d) = call(&app, "POST", &path, &token, body).await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let dest = d["id"].as_str().unwrap().to_owned();
    (app, id, token, dest)
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body.to_vec()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 4 << 20)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

/// Serves the request `data` describes, checks the answer and returns its status (None: too
/// short to be a request).
pub async fn one(data: &[u8]) -> Option<StatusCode> {
    let (route, caller, body) = match data {
        [r, c, rest @ ..] => (*r, *c, rest),
        _ => return None,
    };
    let (app, id, token, dest) = setup().await;
    let (method, template) = api::ROUTES[usize::from(route) % api::ROUTES.len()];
    let path = template
        .replace("{gateway_id}", &id)
        .replace("{destination_id}", &dest)
        .replace("{client_id}", "c1");
    let who = match caller % 3 {
        0 => ADMIN,
        1 => token.as_str(),
        _ => "stranger",
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        call(&app, method, &path, who, body),
    );
    let (status, v) = answer.await.expect("the API answered in time");
    assert!(
        !status.is_server_error(),
        "{method} {path} -> {status}: {v}"
    );
    if status.is_client_error() {
        let message = v["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty(),
            "{method} {path} -> {status} without a reason: {v}"
        );
        // The gateway's token is random per run, so only a leak can put it in an answer.
        assert!(
            !message.contains(&token),
            "{method} {path} answered with the token"
        );
    }
    Some(status)
}
