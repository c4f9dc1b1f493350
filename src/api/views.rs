//! How gateways and destinations are shown and created: views of the running
//! configuration with the API's records (timestamps, token lifetime), ids and token expiry.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{json, Value};

use super::access::Api;
use super::backend::{rfc3339_text, Backend};
use super::error::ApiError;
use crate::config::state::{destination_to_json, DestRecord, GatewayRecord, StoredSecret};
use crate::config::{Destination, Secret, TenantConfig};

/// Longest destination id accepted.
pub(super) const MAX_ID: usize = 64;

/// Days a new or regenerated token lasts unless `token_exp` says otherwise (docs/API.md).
const DEFAULT_TOKEN_DAYS: u32 = 90;

fn status_word(enabled: bool) -> &'static str {
    if enabled {
        "ENABLED"
    } else {
        "DISABLED"
    }
}

impl<B: Backend> Api<B> {
    pub(super) fn gateway_view(&self, cfg: &TenantConfig, rec: Option<&GatewayRecord>) -> Value {
        let clients: Vec<String> = self
            .backend
            .clients(&cfg.id)
            .into_iter()
            .map(|c| c.client_id)
            .collect();
        let gone: Vec<String> = self
            .backend
            .disconnected(&cfg.id)
            .into_iter()
            .map(|c| c.client_id)
            .collect();
        json!({
            "id": cfg.id,
            "desc": cfg.desc,
            "status": status_word(cfg.enabled),
            "enabled": cfg.enabled,
            "security_token": cfg.token.expose(),
            "enf_tok_sec": cfg.enf_tok_sec,
            "token_exp": rec.map(|r| r.token_exp),
            "token_expires_at": cfg.token_expires_at.and_then(|s| rfc3339_text(s.saturating_mul(1000))),
            "created_at": rec.and_then(|r| rfc3339_text(r.created_at)),
            "updated_at": rec.and_then(|r| rfc3339_text(r.updated_at)),
            "managed_by": if rec.is_some() { "api" } else { "gateway.toml" },
            "destinations": cfg.destinations.len(),
            "connected_clients": clients,
            "recently_disconnected": gone,
        })
    }

    pub(super) fn dest_view(
        &self,
        gw: &str,
        d: &Destination,
        rec: Option<&GatewayRecord>,
    ) -> Value {
        let mut m = destination_to_json(d, false);
        m.insert("gateway_id".into(), gw.into());
        m.insert("status".into(), status_word(d.enabled).into());
        let r = rec
            .and_then(|r| find_dest(r, &d.id))
            .map(|i| &rec_dests(rec)[i]);
        m.insert(
            "created_at".into(),
            r.and_then(|r| rfc3339_text(r.created_at)).into(),
        );
        m.insert(
            "updated_at".into(),
            r.and_then(|r| rfc3339_text(r.updated_at)).into(),
        );
        Value::Object(m)
    }

    /// `.gateway` export: what import needs to recreate the gateway, keys included where
    /// `secrets` (see [`Api::shows_secrets`]).
    pub(super) fn gateway_export(
        &self,
        cfg: &TenantConfig,
        only: Option<&str>,
        secrets: bool,
    ) -> Value {
        let dests: Vec<Value> = cfg
            .destinations
            .iter()
            .filter(|d| only.is_none_or(|o| o == d.id))
            .map(|d| Value::Object(destination_to_json(d, secrets)))
            .collect();
        json!({ "desc": cfg.desc, "enf_tok_sec": cfg.enf_tok_sec, "enabled": cfg.enabled, "destinations": dests })
    }
}

fn rec_dests(rec: Option<&GatewayRecord>) -> &[DestRecord] {
    rec.map_or(&[], |r| r.destinations.as_slice())
}

pub(super) fn find_dest(rec: &GatewayRecord, id: &str) -> Option<usize> {
    rec.destinations
        .iter()
        .position(|d| d.config.get("id").and_then(Value::as_str) == Some(id))
}

pub(super) fn filter_enabled(q: &HashMap<String, String>) -> Result<Option<bool>, ApiError> {
    match q.get("type").map(String::as_str) {
        None | Some("") => Ok(None),
        Some("enabled") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad_request(format!(
            "type: `{other}` is not one of enabled, disabled"
        ))),
    }
}

pub(super) fn random_id(len: usize) -> String {
    use rand::Rng;
    pub(super) const ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub(super) fn check_token_exp(days: Option<u32>) -> Result<u32, ApiError> {
    match days {
        None => Ok(DEFAULT_TOKEN_DAYS),
        Some(d) if d <= 90 => Ok(d),
        Some(d) => Err(ApiError::bad_request(format!(
            "token_exp: {d} is out of range 0..=90"
        ))),
    }
}

pub(super) fn expiry(days: u32) -> Option<u64> {
    (days > 0).then(|| crate::telemetry::unix_ms() / 1000 + u64::from(days) * 86_400)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewGateway {
    pub desc: Option<String>,
    pub enf_tok_sec: Option<bool>,
    pub enabled: Option<bool>,
    pub token_exp: Option<u32>,
}

pub(super) fn new_record(
    g: NewGateway,
    destinations: Vec<DestRecord>,
) -> Result<GatewayRecord, ApiError> {
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
        revision: 0,
    })
}
