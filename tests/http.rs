//! HTTP destinations end to end with curl and nginx: every request on a keep-alive connection
//! judged by the ACL's path rules (403 keeps the connection), Host rewrite, X-Forwarded-For,
//! chunked streaming and an upgraded connection passing through.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use sgw::config::Protocol;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// nginx answering `/api/...` and `/admin/...` with what it received.
async fn nginx_api(dir: &Path) -> Option<(Daemon, SocketAddr)> {
    let port = free_port();
    let server = format!(
        r#"server {{
    listen 127.0.0.1:{port};
    location /api/ {{ return 200 "api host=$http_host xff=$http_x_forwarded_for fwd=$http_forwarded\n"; }}
    location /admin/ {{ return 200 "admin\n"; }}
  }}"#
    );
    let d = start_nginx(dir, &server, &[port]).await?;
    Some((d, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// Replaces the client's ACL (before the harness starts).
fn acl(s: &mut Setup, lines: &[String]) {
    std::fs::write(&s.client.acl_file, lines.join("\n") + "\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_rules_per_request_on_one_keepalive_connection() {
    if which("curl").is_none() {
        eprintln!("SKIPPED: curl not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some((_ng, ng)) = nginx_api(tmp.path()).await else {
        eprintln!("SKIPPED: nginx not installed (apt-get install nginx)");
        return;
    };
    // dest1 rewrites Host, dest2 does not.
    let h = Harness::start(&[ng, ng], |s| {
        for d in &mut s.gateway.gateways[0].destinations {
            d.protocol = Protocol::Http;
        }
        s.gateway.gateways[0].destinations[0].host_rewrite = true;
        acl(s, &[format!("acl allow 127.0.0.1:{}/api", ng.port())]);
    })
    .await;
    let base = format!("http://{}", h.cloud(0));
    let (a, b, c) = (
        format!("{base}/api/one"),
        format!("{base}/admin/"),
        format!("{base}/api/two"),
    );
    let (code, out, err) = curl(&["-w", "%{http_code} %{num_connects}\n", &a, &b, &c]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    // Bodies and status lines interleave: body, "200 1", body, "403 0", body, "200 0".
    let statuses: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.len() == 5 && l.as_bytes()[3] == b' ')
        .collect();
    assert_eq!(statuses, ["200 1", "403 0", "200 0"], "{out}");
    let api = lines.iter().find(|l| l.starts_with("api ")).unwrap();
    assert!(
        api.contains(&format!("host=127.0.0.1:{}", ng.port())),
        "Host rewritten: {api}"
    );
    assert!(api.contains("xff=127.0.0.1"), "{api}");
    assert!(api.contains("fwd=for=\"127.0.0.1:"), "{api}");
    let denied = lines
        .iter()
        .find(|l| l.starts_with("403 Forbidden"))
        .unwrap();
    assert!(
        denied.contains("GET /admin/") && denied.contains("default policy"),
        "{denied}"
    );

    // Without host_rewrite the caller's Host goes through; dot-segments cannot sneak past
    // (refused as unjudgeable: docs/ACL.md "HTTP paths").
    let (_, out, _) = curl(&[&format!("http://{}/api/x", h.cloud(1))]).await;
    assert!(out.contains(&format!("host={}", h.cloud(1))), "{out}");
    let sneaky = format!("http://{}/api/../admin/", h.cloud(1));
    let (_, out, _) = curl(&[
        "--path-as-is",
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &sneaky,
    ])
    .await;
    assert_eq!(out, "400");
    assert!(
        h.client
            .handle
            .stats()
            .denied_by_default
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

/// A small origin: `/chunks` streams three chunks 100 ms apart; `/upgrade` answers the
/// WebSocket handshake and echoes; `/fake-upgrade` answers 101 without the handshake, then
/// echoes too (a pipe no path rule would judge).
async fn origin() -> SocketAddr {
    serve(|s| async move {
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let mut first = String::new();
        if r.read_line(&mut first).await.is_err() {
            return;
        }
        let mut key = None;
        loop {
            let mut l = String::new();
            match r.read_line(&mut l).await {
                Ok(0) | Err(_) => return,
                Ok(_) if l == "\r\n" => break,
                Ok(_) => {
                    if let Some((k, v)) = l.split_once(':') {
                        if k.eq_ignore_ascii_case("sec-websocket-key") {
                            key = Some(v.trim().to_owned());
                        }
                    }
                }
            }
        }
        if first.starts_with("GET /chunks") {
            let _ = w
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            for part in ["first,", "second,", "third"] {
                let _ = w
                    .write_all(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes())
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = w.write_all(b"0\r\n\r\n").await;
        } else if first.starts_with("GET /upgrade") || first.starts_with("GET /fake-upgrade") {
            let accept = match (first.starts_with("GET /upgrade"), key) {
                (true, Some(k)) => format!(
                    "sec-websocket-accept: {}\r\n",
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes())
                ),
                _ => String::new(),
            };
            let head = format!("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n{accept}\r\n");
            let _ = w.write_all(head.as_bytes()).await;
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = r.read(&mut buf).await {
                if w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    })
    .await
}

/// An answer's head, read a byte at a time so nothing after it is taken (bounded wait).
async fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed in the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_streaming_and_upgrades_pass_through() {
    let o = origin().await;
    let h = Harness::start(&[o], |s| {
        s.gateway.gateways[0].destinations[0].protocol = Protocol::Http;
    })
    .await;
    let mut s = TcpStream::connect(h.cloud(0)).await.unwrap();
    s.write_all(b"GET /chunks HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    let body: String = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap()
        .split("\r\n")
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, p)| p)
        .collect();
    assert_eq!(body, "first,second,third");

    // A 101 without the WebSocket handshake for this request is not spliced: 502, and the
    // caller's connection stays HTTP, judged request by request.
    let ws = "connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    s.write_all(format!("GET /fake-upgrade HTTP/1.1\r\nhost: x\r\n{ws}\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(
        head.starts_with(b"HTTP/1.1 502"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let len: usize = String::from_utf8_lossy(&head)
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0u8; len];
    tokio::time::timeout(WAIT, s.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();

    // Same connection, now upgraded by a real handshake: bytes echo both ways.
    s.write_all(format!("GET /upgrade HTTP/1.1\r\nhost: x\r\n{ws}\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"hello upgraded").await.unwrap();
    let mut echo = [0u8; 14];
    tokio::time::timeout(WAIT, s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"hello upgraded");
}

#[test]
fn http_config_rules() {
    for (extra, want) in [
        ("protocol = \"HTTPS\"", "HTTPS needs client_tls"),
        ("protocol = \"TCP\"\nhost_rewrite = true", "only applies to HTTP"),
        (
            "protocol = \"HTTP\"\nclient_tls = \"serverside\"\nserver_cert = \"gateway.pem\"\nserver_key = \"gateway.key\"",
            "use protocol = \"HTTPS\"",
        ),
    ] {
        let err = gateway_config_errors(&format!("{GATEWAY_HEAD}cloud_port = 0\n{extra}\n"));
        assert!(err.contains(want), "{extra}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_destination_terminates_caller_tls_and_checks_paths() {
    if which("curl").is_none() {
        eprintln!("SKIPPED: curl not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some((_ng, ng)) = nginx_api(tmp.path()).await else {
        eprintln!("SKIPPED: nginx not installed (apt-get install nginx)");
        return;
    };
    let h = Harness::start(&[ng], |s| {
        let id = s.gateway.tls.clone();
        let d = &mut s.gateway.gateways[0].destinations[0];
        d.protocol = Protocol::Https;
        d.caller_tls = sgw::config::CallerTls::ServerSide(id);
        acl(s, &[format!("acl allow 127.0.0.1:{}/api", ng.port())]);
    })
    .await;
    let port = h.cloud(0).port();
    let ca = h.setup.path("ca.pem");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = |p: &str| format!("https://localhost:{port}{p}");
    let (code, out, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-w",
        "%{http_code}\n",
        &url("/api/secure"),
        &url("/admin/"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("proto=https"), "{out}");
    let codes: Vec<&str> = out.lines().filter(|l| l.len() == 3).collect();
    assert_eq!(codes, ["200", "403"], "{out}");
}
