//! A destination's `ipTableRule` calls: add and remove caller rules.

use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::body::{json_body, typed, Answer, ApiState, RawBody};
use super::destinations::edit_dest;
use super::extract::{GatewayCall, JsonBody};
use super::{ApiError, Backend};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Rule {
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

pub(super) async fn put_rule<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    Path((_, id)): Path<(String, String)>,
    JsonBody(rule): JsonBody<Rule>,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    edit_dest(&api, &gw, if_match, &id, |doc| {
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
            return Err(ApiError::bad_request("ip_table_rules: is not a list"));
        };
        // The same `app` replaces its rule (docs/API.md: `app` identifies the rule).
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

pub(super) async fn delete_rule<B: Backend>(
    State(api): ApiState<B>,
    call: GatewayCall,
    Path((_, id)): Path<(String, String)>,
    body: RawBody,
) -> Answer {
    let (gw, if_match) = (call.id, call.if_match);
    let want: Option<Rule> = json_body(body)?.map(typed).transpose()?;
    edit_dest(&api, &gw, if_match, &id, |doc| {
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
