//! Reverse (cloud) destinations: on-prem programs connect to the client's `local_port` and
//! reach a service on the gateway's side, within the gateway's `egress_allow`.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;

use common::*;

/// Makes destination `i` a reverse one listening on-prem on `local_port`.
fn reverse(s: &mut Setup, i: usize, local_port: u16) {
    let d = &mut s.gateway.gateways[0].destinations[i];
    d.reverse = true;
    d.local_port = local_port;
    d.cloud_port = 0;
    // The client's consent to listen there (docs/SECURITY.md).
    s.client.reverse_ports.push(local_port..=local_port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_prem_connections_reach_the_cloud_within_egress_allow() {
    let allowed = echo_server().await;
    let forbidden = echo_server().await;
    let (p1, p2) = (free_port(), free_port());
    let h = Harness::start(&[allowed, forbidden], |s| {
        reverse(s, 0, p1);
        reverse(s, 1, p2);
        s.gateway.egress_allow = vec![format!("127.0.0.1:{}", allowed.port())];
    })
    .await;
    // Both listeners are bound in the same step: once p1 answers, p2 listens too (probing
    // p2 would itself be a refused connection).
    wait_listening(p1).await;
    let gw = h.gw.handle.stats();
    let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    assert_eq!(
        echo_once(local(p1), b"to the cloud").await.unwrap(),
        b"to the cloud"
    );
    let back = echo_once(local(p2), b"not allowed")
        .await
        .unwrap_or_default();
    assert!(back.is_empty());
    let stats = h.client.handle.stats();
    let denied = stats
        .dest("dest2")
        .failed
        .lock()
        .unwrap()
        .get("acl_denied")
        .copied();
    assert_eq!(denied, Some(1), "the client saw the gateway's refusal");
    assert_eq!(gw.streams_denied.load(Relaxed), 1);
    // Gateway-opened streams never reach a reverse destination's endpoint from the client.
    assert!(h.gw.handle.dest_addr("dest1").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_on_prem_reaches_cloud_redis() {
    let (Some((_redis, port)), Some(cli)) = (start_redis().await, which("redis-cli")) else {
        eprintln!("SKIPPED: redis-server and redis-cli are needed (apt-get install redis-server redis-tools)");
        return;
    };
    let redis: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let local_port = free_port();
    let _h = Harness::start(&[redis], |s| {
        reverse(s, 0, local_port);
        s.gateway.egress_allow = vec!["127.0.0.0/8:1-65535".into()];
    })
    .await;
    wait_listening(local_port).await;
    let run = |args: &[&str]| {
        let out = Command::new(&cli)
            .args(["-p", &local_port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(run(&["set", "from", "on-prem"]), "OK");
    assert_eq!(run(&["get", "from"]), "on-prem");
}

#[test]
fn reverse_config_rules() {
    for (extra, want) in [
        ("reverse = true", "needs `local_port`"),
        (
            "reverse = true\nlocal_port = 15432\ncloud_port = 1",
            "has no cloud_port",
        ),
        ("cloud_port = 0\nlocal_port = 1", "only applies to reverse"),
        (
            "reverse = true\nlocal_port = 1\nprotocol = \"UDP\"",
            "reverse destinations carry TCP",
        ),
    ] {
        let err = gateway_config_errors(&format!("{GATEWAY_HEAD}{extra}\n"));
        assert!(err.contains(want), "{extra}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_listener_reaches_gateway_side_services_with_curl() {
    if which("curl").is_none() {
        eprintln!("SKIPPED: curl not installed");
        return;
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let web = serve(|mut s| async move {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\ncloud hello",
            )
            .await;
    })
    .await;
    let closed = free_port();
    let socks = free_port();
    let _h = Harness::start(&[], |s| {
        s.client.socks5_listen = Some(SocketAddr::from(([127, 0, 0, 1], socks)));
        s.gateway.egress_allow = vec![format!("127.0.0.1:{}", web.port())];
    })
    .await;
    wait_listening(socks).await;
    let curl = |url: String| async move {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--socks5-hostname"])
            .arg(format!("127.0.0.1:{socks}"))
            .arg(url)
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The name is resolved by the gateway, not on-prem.
    let (code, body, err) = curl(format!("http://localhost:{}/", web.port())).await;
    assert_eq!((code, body.as_str()), (0, "cloud hello"), "{err}");
    // Outside egress_allow: curl hears "not allowed" from the SOCKS reply.
    let (code, _, err) = curl(format!("http://127.0.0.1:{closed}/")).await;
    assert_ne!(code, 0);
    assert!(
        err.to_lowercase().contains("not allowed") || err.contains("(2)"),
        "{err}"
    );
}

/// A TLS acceptor for a service on the cloud side (a certificate for `localhost`), and the
/// CA that signed it (PEM).
fn cloud_tls() -> (tokio_rustls::TlsAcceptor, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    sgw::tls::install_crypto();
    let pki = tempfile::tempdir().unwrap();
    sgw::init::write(pki.path(), &Default::default()).unwrap();
    let read = |f: &str| std::fs::read_to_string(pki.path().join(f)).unwrap();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(read("gateway.pem").as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(read("gateway.key").as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg)),
        read("ca.pem"),
    )
}

/// Makes destination 0 a reverse one on `local_port`, reaching `svc` over TLS verified
/// against `ca`, within egress_allow; returns it for more settings.
fn tls_reverse(
    s: &mut Setup,
    local_port: u16,
    svc: SocketAddr,
    ca: String,
) -> &mut sgw::config::Destination {
    reverse(s, 0, local_port);
    s.gateway.egress_allow = vec![format!("127.0.0.1:{}", svc.port())];
    let d = &mut s.gateway.gateways[0].destinations[0];
    d.endpoint_tls = Some(sgw::config::EndpointTlsConfig {
        sni: "localhost".into(),
        reject_unauth: true,
        client_certs: vec![ca],
        mutual: false,
        identity: None,
    });
    d
}

/// Reverse destinations take the connector options too: TLS from the gateway to the cloud
/// endpoint (verified against the given CA) and compression in the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_with_tls_to_the_cloud_endpoint_and_compression() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (acceptor, ca) = cloud_tls();
    // A TLS service on the cloud side that answers with the SHA-256 of what it read.
    let tls_hash = serve(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut s) = acceptor.accept(tcp).await else {
                return;
            };
            let mut all = Vec::new();
            let _ = s.read_to_end(&mut all).await;
            let _ = s.write_all(&sha(&all)).await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    let local_port = free_port();
    let h = Harness::start(&[tls_hash], |s| {
        tls_reverse(s, local_port, tls_hash, ca).compression = true;
    })
    .await;
    wait_listening(local_port).await;
    let text = b"compressible line of text, again and again\n".repeat(20_000);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local_port))
        .await
        .unwrap();
    s.write_all(&text).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, sha(&text));
    // Counted when the client's side of the stream has finished, just after the reply.
    let d = h.client.handle.stats().dest("dest1");
    let deadline = std::time::Instant::now() + WAIT;
    while d.bytes_up.load(Relaxed) != text.len() as u64 {
        assert!(std::time::Instant::now() < deadline, "bytes not counted");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let wire = d.tunnel_bytes_up.load(Relaxed);
    assert!(
        wire * 10 < text.len() as u64,
        "compressed in the tunnel: {wire}"
    );
}

/// An on-prem program that speaks first: its bytes go with the OPEN and wait at the gateway
/// while it reaches the endpoint (early data, PROTOCOL.md §4.3), then go on to it; and they
/// leave with the refusal when the dial fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_prem_callers_first_bytes_wait_at_the_gateway_while_it_dials() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (acceptor, ca) = cloud_tls();
    // A TLS echo service that holds each connection while the test says HOLD: the gateway's
    // dial lasts that long. Then it drops it (DROP) or answers (ANSWER).
    const HOLD: u8 = 0;
    const DROP: u8 = 1;
    const ANSWER: u8 = 2;
    let (say, said) = tokio::sync::watch::channel(HOLD);
    let svc = serve(move |tcp| {
        let (mut said, acceptor) = (said.clone(), acceptor.clone());
        async move {
            let Ok(what) = said.wait_for(|v| *v != HOLD).await.map(|v| *v) else {
                return;
            };
            if what == DROP {
                return;
            }
            let Ok(s) = acceptor.accept(tcp).await else {
                return;
            };
            let (mut r, mut w) = tokio::io::split(s);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    })
    .await;
    let local_port = free_port();
    let h = Harness::start(&[svc], |s| {
        // Longer than the test waits: only the test ends a dial.
        tls_reverse(s, local_port, svc, ca).timeout = WAIT * 3;
    })
    .await;
    wait_listening(local_port).await;
    let gw = &h.gw.handle;
    let until = |want: u64| async move {
        let deadline = Instant::now() + WAIT;
        while gw.buffered_bytes() != want {
            assert!(Instant::now() < deadline, "gateway never held {want} bytes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", local_port));
    let request = b"POST /orders HTTP/1.1\r\nContent-Length: 0\r\n\r\n";

    // Refused: the dial fails, and the held bytes go with the refusal.
    let mut app = connect().await.unwrap();
    app.write_all(request).await.unwrap();
    until(request.len() as u64).await;
    say.send_replace(DROP);
    let got = tokio::time::timeout(WAIT, app.read(&mut [0u8; 16]))
        .await
        .expect("released when the dial failed");
    assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    until(0).await;

    // Reached: the held bytes go on to the endpoint, which echoes them.
    say.send_replace(HOLD);
    let stats = h.client.handle.stats();
    let early = stats
        .streams_early_data
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut app = connect().await.unwrap();
    app.write_all(request).await.unwrap();
    until(request.len() as u64).await;
    say.send_replace(ANSWER);
    let mut back = vec![0u8; request.len()];
    tokio::time::timeout(WAIT, app.read_exact(&mut back))
        .await
        .expect("echoed in time")
        .unwrap();
    assert_eq!(back, request);
    assert_eq!(
        stats
            .streams_early_data
            .load(std::sync::atomic::Ordering::Relaxed),
        early + 1
    );
}
