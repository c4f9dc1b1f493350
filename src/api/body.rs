//! Reading request bodies (bounded; JSON errors name the field) and writing answers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::access::Api;
use super::error::ApiError;
use crate::config::state::GatewayRecord;

pub(super) type ApiState<B> = State<Arc<Api<B>>>;

pub(super) type Answer = Result<Response, ApiError>;

pub(super) type RawBody = Result<Bytes, BytesRejection>;

/// The body as JSON; `None` when empty. Content-Type is not required (the Secure Gateway API's curl
/// examples send JSON with `-d` alone).
pub(super) fn json_body(body: RawBody) -> Result<Option<Value>, ApiError> {
    let bytes = body.map_err(body_error)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))
}

pub(super) fn need_body(body: RawBody) -> Result<Value, ApiError> {
    json_body(body)?.ok_or_else(|| ApiError::bad_request("a JSON body is required"))
}

pub(super) fn too_large() -> ApiError {
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
pub(super) fn typed<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(inner.to_string())
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })
}

pub(super) fn object(v: Value, what: &str) -> Result<Map<String, Value>, ApiError> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::bad_request(format!(
            "{what} must be a JSON object, not {}",
            json_type(&other)
        ))),
    }
}

pub(super) fn json_type(v: &Value) -> &'static str {
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
pub(super) async fn upload(req: Request) -> Result<Vec<(String, String)>, ApiError> {
    let multipart = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        let body = Bytes::from_request(req, &()).await.map_err(body_error)?;
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("body is not UTF-8 text"))?;
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
            .map_err(|_| ApiError::bad_request(format!("{name}: is not UTF-8 text")))?;
        parts.push((name, text));
    }
    Ok(parts)
}

pub(super) fn ok(v: impl serde::Serialize) -> Answer {
    Ok(Json(v).into_response())
}

/// An answer about one API-managed gateway, with its revision as the ETag (for `If-Match`).
pub(super) fn ok_at(v: impl serde::Serialize, rec: Option<&GatewayRecord>) -> Answer {
    let mut r = Json(v).into_response();
    if let Some(tag) =
        rec.and_then(|g| axum::http::HeaderValue::from_str(&format!("\"{}\"", g.revision)).ok())
    {
        r.headers_mut().insert(axum::http::header::ETAG, tag);
    }
    Ok(r)
}

pub(super) fn prefix(e: ApiError, at: &str) -> ApiError {
    e.within(at)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GatewayFile {
    pub desc: Option<String>,
    pub enf_tok_sec: Option<bool>,
    pub enabled: Option<bool>,
    pub token_exp: Option<u32>,
    #[serde(default)]
    pub destinations: Vec<Value>,
}

/// The uploaded file of an import: the `state` part, or the whole body.
pub(super) fn import_file(parts: Vec<(String, String)>) -> Result<Value, ApiError> {
    let text = match parts.as_slice() {
        [(_, t)] => t.clone(),
        _ => parts
            .into_iter()
            .find(|(n, _)| n == "state")
            .map(|(_, t)| t)
            .ok_or_else(|| {
                ApiError::bad_request("state: missing (upload the file as -F state=@file)")
            })?,
    };
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("state: the file is empty"));
    }
    serde_json::from_str(&text)
        .map_err(|e| ApiError::bad_request(format!("state: not valid JSON: {e}")))
}
