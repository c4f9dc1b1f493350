//! A small HTTP/1.1 client for the admin endpoint, used by `sgw acl add|remove|show`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::Method;
use hyper_util::rt::TokioIo;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the admin endpoint at {addr}: {message} (is the client running? see admin_listen)")]
    Connect { addr: SocketAddr, message: String },
    #[error("admin endpoint at {addr}: {message}")]
    Http { addr: SocketAddr, message: String },
    #[error("admin endpoint at {addr} did not answer within {} s", CALL_TIMEOUT.as_secs())]
    Timeout { addr: SocketAddr },
}

/// Sends one request; returns the status code and body text.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    body: Option<String>,
    token: Option<&str>,
) -> Result<(u16, String), CallError> {
    let work = async {
        let http = |e: &dyn std::fmt::Display| CallError::Http {
            addr,
            message: e.to_string(),
        };
        let stream =
            tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| CallError::Connect {
                    addr,
                    message: e.to_string(),
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(HOST, addr.to_string());
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| http(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http(&e))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(CALL_TIMEOUT, work)
        .await
        .map_err(|_| CallError::Timeout { addr })?
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
