//! Destination certificates as files: what `cert` lists, uploads and deletes, and what
//! `genCerts` makes (rcgen). A destination document holds PEM text in its fields; the file
//! names are fixed per field (`server_cert.pem`, `client_cert_2.pem`, ...).

use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::{json, Map, Value};

use super::ApiError;

/// Single-file fields and their file names.
const SINGLE: &[(&str, &str)] = &[
    ("server_cert", "server_cert.pem"),
    ("server_key", "server_key.pem"),
    ("dest_cert", "dest_cert.pem"),
    ("dest_key", "dest_key.pem"),
];

const UPLOAD_FIELDS: &str =
    "server_cert (or cert), server_key, dest_cert, dest_key, client_cert (repeatable)";

fn client_cert_name(i: usize) -> String {
    format!("client_cert_{}.pem", i + 1)
}

/// Every certificate and key file of a destination document (keys included: the caller is
/// the gateway's owner).
pub(super) fn files(doc: &Map<String, Value>) -> Vec<Value> {
    let mut out = Vec::new();
    for (field, name) in SINGLE {
        if let Some(pem) = doc.get(*field).and_then(Value::as_str) {
            out.push(json!({ "filename": name, "field": field, "content": pem }));
        }
    }
    if let Some(Value::Array(list)) = doc.get("client_certs") {
        for (i, pem) in list.iter().enumerate() {
            out.push(
                json!({ "filename": client_cert_name(i), "field": "client_certs", "content": pem }),
            );
        }
    }
    out
}

/// Puts uploaded files into their fields (client certificates are added to the list).
pub(super) fn put(
    doc: &mut Map<String, Value>,
    parts: Vec<(String, String)>,
) -> Result<(), ApiError> {
    if parts.iter().any(|(n, _)| n.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "upload certificates as multipart form fields: {UPLOAD_FIELDS}"
        )));
    }
    if parts.is_empty() {
        return Err(ApiError::bad_request(format!(
            "no files uploaded; fields: {UPLOAD_FIELDS}"
        )));
    }
    let mut seen: Vec<String> = Vec::new();
    for (name, text) in parts {
        let field = match name.as_str() {
            "cert" | "server_cert" => "server_cert",
            "server_key" | "dest_cert" | "dest_key" => name.as_str(),
            "client_cert" | "client_certs" => {
                let list = doc
                    .entry("client_certs")
                    .or_insert_with(|| Value::Array(Vec::new()));
                match list {
                    Value::Array(l) => l.push(text.into()),
                    other => *other = Value::Array(vec![text.into()]),
                }
                continue;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other}: not a certificate field; one of {UPLOAD_FIELDS}"
                )))
            }
        };
        // Seed 000: one server certificate (chain), one client certificate and key.
        if seen.iter().any(|f| f == field) {
            return Err(ApiError::bad_request(format!(
                "{field}: upload one file, not several"
            )));
        }
        seen.push(field.to_owned());
        doc.insert(field.into(), text.into());
    }
    Ok(())
}

/// Removes files by name; every name must exist.
pub(super) fn delete(doc: &mut Map<String, Value>, names: &[String]) -> Result<(), ApiError> {
    if names.is_empty() {
        return Err(ApiError::bad_request("filename: list at least one file"));
    }
    let mut client_idx = Vec::new();
    for n in names {
        if let Some((field, _)) = SINGLE.iter().find(|(_, f)| f == n) {
            if doc.remove(*field).is_none() {
                return Err(ApiError::not_found(format!(
                    "no certificate file `{n}` on this destination"
                )));
            }
            continue;
        }
        let count = match doc.get("client_certs") {
            Some(Value::Array(l)) => l.len(),
            _ => 0,
        };
        match (0..count).find(|i| client_cert_name(*i) == *n) {
            Some(i) => client_idx.push(i),
            None => {
                return Err(ApiError::not_found(format!(
                    "no certificate file `{n}` on this destination"
                )))
            }
        }
    }
    client_idx.sort_unstable();
    client_idx.dedup();
    if let Some(Value::Array(l)) = doc.get_mut("client_certs") {
        for i in client_idx.into_iter().rev() {
            l.remove(i);
        }
        if l.is_empty() {
            doc.remove("client_certs");
        }
    }
    Ok(())
}

fn cert_err(e: rcgen::Error) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        format!("certificate generation failed: {e}"),
    )
}

/// The gateway's certificate for callers (`client_tls`): a new CA and a server certificate
/// it signs, for `localhost` and the destination's `cloud_host`; `server_cert` holds the
/// chain (server certificate, then CA), `server_key` the server key.
pub(super) fn server_pair(doc: &mut Map<String, Value>) -> Result<(), ApiError> {
    let mut names = vec!["localhost".to_owned()];
    if let Some(h) = doc.get("cloud_host").and_then(Value::as_str) {
        if !matches!(h, "" | "0.0.0.0" | "::" | "localhost") {
            names.push(h.to_owned());
        }
    }
    let (ca, cert, key) =
        crate::init::ca_and_server("sgw destination CA", "sgw gateway (destination)", names)
            .map_err(cert_err)?;
    doc.insert(
        "server_cert".into(),
        format!("{}{}", cert.pem(), ca.pem()).into(),
    );
    doc.insert("server_key".into(), key.serialize_pem().into());
    Ok(())
}

/// The client's certificate toward the endpoint (`tls = "mutualauth"`): self-signed.
fn dest_pair(doc: &mut Map<String, Value>) -> Result<(), ApiError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(vec!["sgw-client".to_owned()]).map_err(cert_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "sgw client");
    let cert = params.self_signed(&key).map_err(cert_err)?;
    doc.insert("dest_cert".into(), cert.pem().into());
    doc.insert("dest_key".into(), key.serialize_pem().into());
    Ok(())
}

/// `genCerts`: new pairs for what the destination uses.
pub(super) fn generate(doc: &mut Map<String, Value>) -> Result<(), ApiError> {
    let caller_tls = matches!(
        doc.get("client_tls").and_then(Value::as_str),
        Some("serverside" | "mutualauth")
    );
    let mutual = doc.get("enable_client_tls").and_then(Value::as_bool) == Some(true)
        && doc.get("tls").and_then(Value::as_str) == Some("mutualauth");
    if !caller_tls && !mutual {
        return Err(ApiError::bad_request(
            "nothing to generate: the destination uses neither client_tls (serverside, mutualauth) nor tls = mutualauth",
        ));
    }
    if caller_tls {
        server_pair(doc)?;
    }
    if mutual {
        dest_pair(doc)?;
    }
    Ok(())
}
