//! Destination connectors end to end: TLS and mutual TLS to a real nginx, TLS toward callers
//! checked with curl and openssl, SOCKS proxies (microsocks, dante), compression measured in
//! tunnel bytes, idle and connect timeouts.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sgw::config::{CallerTls, DestProxy, EndpointTlsConfig, GatewayConfig, Secret, TlsIdentity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Two CAs; a server certificate for localhost/127.0.0.1 and a client certificate, both
/// issued by the first. Files in `dir`; PEM text in the fields.
struct Pki {
    ca: String,
    wrong_ca: String,
    /// Server leaf followed by its CA.
    server_chain: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki(dir: &Path) -> Pki {
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    };
    let good = ca("test CA");
    let wrong = ca("some other CA");
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &good).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()], "server");
    let (client_cert, client_key) = leaf(vec!["caller.test".into()], "trusted-caller");
    let p = Pki {
        ca: good.pem(),
        wrong_ca: wrong.pem(),
        server_chain: format!("{server}{}", good.pem()),
        server_key,
        client_cert,
        client_key,
    };
    for (name, body) in [
        ("ca.pem", &p.ca),
        ("wrong-ca.pem", &p.wrong_ca),
        ("server.pem", &p.server_chain),
        ("server.key", &p.server_key),
        ("client.pem", &p.client_cert),
        ("client.key", &p.client_key),
    ] {
        std::fs::write(dir.join(name), body).unwrap();
    }
    p
}

fn identity(chain: &str, key: &str) -> TlsIdentity {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    TlsIdentity {
        certs: CertificateDer::pem_slice_iter(chain.as_bytes())
            .map(Result::unwrap)
            .collect(),
        key: std::sync::Arc::new(PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()),
    }
}

/// nginx with two servers: HTTPS, and HTTPS requiring a client certificate from the test CA.
struct Nginx {
    _d: Daemon,
    https: SocketAddr,
    mtls: SocketAddr,
}

async fn nginx_tls(dir: &Path) -> Option<Nginx> {
    let (a, b) = (free_port(), free_port());
    let servers = format!(
        r#"server {{ listen 127.0.0.1:{a} ssl; ssl_certificate {{dir}}/server.pem; ssl_certificate_key {{dir}}/server.key;
           location / {{ return 200 "hello over tls\n"; }} }}
  server {{ listen 127.0.0.1:{b} ssl; ssl_certificate {{dir}}/server.pem; ssl_certificate_key {{dir}}/server.key;
           ssl_client_certificate {{dir}}/ca.pem; ssl_verify_client on;
           location / {{ return 200 "hello $ssl_client_s_dn\n"; }} }}"#
    );
    let d = start_nginx(dir, &servers, &[a, b]).await?;
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    Some(Nginx {
        _d: d,
        https: at(a),
        mtls: at(b),
    })
}

fn failed(h: &Harness, dest: &str, reason: &str) -> u64 {
    let d = h.client.handle.stats().dest(dest);
    let m = d.failed.lock().unwrap();
    m.get(reason).copied().unwrap_or(0)
}

fn endpoint_tls(cas: Vec<String>, mutual: Option<(&str, &str)>) -> EndpointTlsConfig {
    EndpointTlsConfig {
        sni: "localhost".into(),
        reject_unauth: true,
        client_certs: cas,
        mutual: mutual.is_some(),
        identity: mutual.map(|(c, k)| (c.to_owned(), Secret::new(k))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_to_nginx() {
    if which("curl").is_none() {
        eprintln!("SKIPPED: curl not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = pki(tmp.path());
    let Some(ng) = nginx_tls(tmp.path()).await else {
        eprintln!("SKIPPED: nginx not installed (apt-get install nginx)");
        return;
    };
    // dest1: right CA; dest2: wrong CA; dest3: client cert to the mTLS server; dest4: no
    // client cert there; dest5: wrong CA but reject_unauth = false; dest6: mutualauth with
    // the client's own key from client.toml; dest7: mutualauth with no key anywhere; dest8:
    // client.toml's CA (the wrong one) with the gateway turning verification off; dest9:
    // client.toml's CA with the gateway turning TLS off.
    let eps = [
        ng.https, ng.https, ng.mtls, ng.mtls, ng.https, ng.mtls, ng.mtls, ng.https, ng.https,
    ];
    let h = Harness::start(&eps, |s| {
        let d = &mut s.gateway.gateways[0].destinations;
        d[0].endpoint_tls = Some(endpoint_tls(vec![p.ca.clone()], None));
        d[1].endpoint_tls = Some(endpoint_tls(vec![p.wrong_ca.clone()], None));
        d[2].endpoint_tls = Some(endpoint_tls(
            vec![p.ca.clone()],
            Some((&p.client_cert, &p.client_key)),
        ));
        d[3].endpoint_tls = Some(endpoint_tls(vec![p.ca.clone()], None));
        let mut lax = endpoint_tls(vec![p.wrong_ca.clone()], None);
        lax.reject_unauth = false;
        d[4].endpoint_tls = Some(lax);
        for i in [5, 6] {
            let mut own = endpoint_tls(vec![p.ca.clone()], None);
            own.mutual = true;
            d[i].endpoint_tls = Some(own);
        }
        s.client.destinations.insert(
            "dest6".into(),
            sgw::config::DestOverride {
                dest_cert: Some(p.client_cert.clone()),
                dest_key: Some(Secret::new(p.client_key.clone())),
                client_certs: None,
                local_host: None,
            },
        );
        let mut lax = endpoint_tls(vec![p.ca.clone()], None);
        lax.reject_unauth = false;
        d[7].endpoint_tls = Some(lax);
        for (id, ca) in [("dest8", &p.wrong_ca), ("dest9", &p.ca)] {
            s.client.destinations.insert(
                id.into(),
                sgw::config::DestOverride {
                    dest_cert: None,
                    dest_key: None,
                    client_certs: Some(vec![ca.clone()]),
                    local_host: None,
                },
            );
        }
    })
    .await;
    let url = |i: usize| format!("http://{}/", h.cloud(i));

    let (code, body, _) = curl(&[&url(0)]).await;
    assert_eq!((code, body.as_str()), (0, "hello over tls\n"));

    let (code, _, _) = curl(&[&url(1)]).await;
    assert_ne!(code, 0, "a server signed by another CA must not be reached");
    assert_eq!(failed(&h, "dest2", "tls"), 1);

    let (code, body, _) = curl(&[&url(2)]).await;
    assert_eq!(code, 0);
    assert!(body.contains("CN=trusted-caller"), "{body}");

    let (code, body, _) = curl(&["-w", "%{http_code}", "-o", "/dev/null", &url(3)]).await;
    assert_eq!(
        (code, body.as_str()),
        (0, "400"),
        "nginx refuses a missing client cert"
    );

    let (code, body, _) = curl(&[&url(4)]).await;
    assert_eq!((code, body.as_str()), (0, "hello over tls\n"));
    assert_eq!(failed(&h, "dest1", "tls") + failed(&h, "dest5", "tls"), 0);

    // The key that stayed on the client works; no key at all fails as `tls` before dialling.
    let (code, body, _) = curl(&[&url(5)]).await;
    assert_eq!(code, 0);
    assert!(body.contains("CN=trusted-caller"), "{body}");
    let (code, _, _) = curl(&[&url(6)]).await;
    assert_ne!(code, 0);
    assert_eq!(failed(&h, "dest7", "tls"), 1);

    // What client.toml says about an endpoint's CAs holds whatever the gateway pushes: its
    // `reject_unauth = false` does not skip them, and no TLS at all is refused, not sent plain.
    let (code, _, _) = curl(&[&url(7)]).await;
    assert_ne!(
        code, 0,
        "verified against client.toml's CA, which did not sign nginx"
    );
    assert_eq!(failed(&h, "dest8", "tls"), 1);
    let (code, _, _) = curl(&[&url(8)]).await;
    assert_ne!(
        code, 0,
        "client.toml's CA means TLS: never plain to the endpoint"
    );
    assert_eq!(failed(&h, "dest9", "tls"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_tls_serverside_and_mutual() {
    if which("curl").is_none() || which("openssl").is_none() {
        eprintln!("SKIPPED: curl or openssl not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = pki(tmp.path());
    let echo = echo_server().await;
    let h = Harness::start(&[echo, echo], |s| {
        let d = &mut s.gateway.gateways[0].destinations;
        d[0].caller_tls = CallerTls::ServerSide(identity(&p.server_chain, &p.server_key));
        d[1].caller_tls = CallerTls::Mutual(identity(&p.server_chain, &p.server_key));
    })
    .await;
    let f = |n: &str| tmp.path().join(n).display().to_string();

    // serverside: openssl verifies the gateway's certificate and its data is echoed.
    let run_s_client = |addr: SocketAddr, extra: Vec<String>| {
        let mut args = vec![
            "s_client".to_string(),
            "-connect".into(),
            addr.to_string(),
            "-servername".into(),
            "localhost".into(),
            "-CAfile".into(),
            f("ca.pem"),
            "-verify_return_error".into(),
            "-quiet".into(),
        ];
        args.extend(extra);
        async move {
            let mut c = tokio::process::Command::new("openssl")
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = c.stdin.take().unwrap();
            stdin.write_all(b"ping through tls\n").await.unwrap();
            let mut out = c.stdout.take().unwrap();
            let mut got = vec![0u8; 17];
            let r = tokio::time::timeout(WAIT, out.read_exact(&mut got)).await;
            drop(stdin);
            let _ = c.kill().await;
            match r {
                Ok(Ok(_)) => Some(String::from_utf8_lossy(&got).into_owned()),
                _ => None,
            }
        }
    };
    assert_eq!(
        run_s_client(h.cloud(0), vec![]).await.as_deref(),
        Some("ping through tls\n")
    );

    // mutualauth: with the client certificate the bytes flow ...
    let with_cert = vec![
        "-cert".into(),
        f("client.pem"),
        "-key".into(),
        f("client.key"),
    ];
    assert_eq!(
        run_s_client(h.cloud(1), with_cert).await.as_deref(),
        Some("ping through tls\n")
    );
    // ... and curl without one is refused in the handshake (TLS 1.3 reports it on read).
    let https = format!("https://localhost:{}/", h.cloud(1).port());
    let resolve = format!("localhost:{}:127.0.0.1", h.cloud(1).port());
    let (code, _, _) = curl(&["--cacert", &f("ca.pem"), "--resolve", &resolve, &https]).await;
    assert!(
        matches!(code, 35 | 56),
        "curl without a client cert: exit {code}"
    );
    let deadline = Instant::now() + WAIT;
    while h.gw.handle.stats().caller_tls_failures.load(Relaxed) == 0 {
        assert!(Instant::now() < deadline, "TLS failure not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A certificate from another CA is refused as well.
    let wrong = tmp.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    let other = pki(&wrong);
    let _ = other;
    let (code, _, _) = curl(&[
        "--cacert",
        &f("ca.pem"),
        "--resolve",
        &resolve,
        "--cert",
        &wrong.join("client.pem").display().to_string(),
        "--key",
        &wrong.join("client.key").display().to_string(),
        &https,
    ])
    .await;
    assert!(
        matches!(code, 35 | 56),
        "curl with a foreign client cert: exit {code}"
    );
}

/// Sends `msg` and reads as many bytes back, without half-closing first: microsocks closes
/// both directions when one ends.
async fn roundtrip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    match tokio::time::timeout(WAIT, s.read_exact(&mut back)).await {
        Ok(Ok(_)) => back,
        other => panic!("no echo through {addr}: {other:?}"),
    }
}

/// Adds `acl allow` lines for the proxy to the client's ACL file.
fn allow_in_acl(setup: &Setup, addr: &str) {
    let path = &setup.client.acl_file;
    let mut acl = std::fs::read_to_string(path).unwrap();
    acl.push_str(&format!("acl allow {addr}\n"));
    std::fs::write(path, acl).unwrap();
}

fn socks(port: u16, protocol: u8, user: Option<(&str, &str)>) -> DestProxy {
    socks_at(SocketAddr::from(([127, 0, 0, 1], port)), protocol, user)
}

fn socks_at(addr: SocketAddr, protocol: u8, user: Option<(&str, &str)>) -> DestProxy {
    DestProxy {
        host: addr.ip().to_string(),
        port: addr.port(),
        protocol,
        enabled: true,
        username: user.map(|u| u.0.to_owned()).unwrap_or_default(),
        password: user.map(|u| Secret::new(u.1)),
    }
}

/// microsocks with its output collected (it logs each connection it makes), listening when
/// this returns. It takes a port, not port 0, so each one gets a loopback address of its own
/// (127.0.2.N) where nothing else binds: tests running beside it can't hold its port.
async fn microsocks(
    auth: Option<(&str, &str)>,
) -> Option<(Daemon, std::sync::Arc<std::sync::Mutex<String>>, SocketAddr)> {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
    let bin = which("microsocks")?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let addr = SocketAddr::from(([127, 0, 2, n], free_port()));
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["-i", &addr.ip().to_string(), "-p", &addr.port().to_string()]);
    if let Some((u, pw)) = auth {
        cmd.args(["-u", u, "-P", pw]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let log = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&(l + "\n"));
            }
        });
    }
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "microsocks never listened on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some((Daemon(child), log, addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_proxy_microsocks() {
    let Some((_open, open_log, open)) = microsocks(None).await else {
        eprintln!("SKIPPED: microsocks not installed (apt-get install microsocks)");
        return;
    };
    let (_auth, _, auth) = microsocks(Some(("sgw", "s3cret"))).await.unwrap();
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let echo = echo_server().await;
    let h = Harness::start(&[echo, echo, echo, echo], |s| {
        let d = &mut s.gateway.gateways[0].destinations;
        d[0].proxy = Some(socks_at(open, 5, None));
        d[1].proxy = Some(socks_at(auth, 5, Some(("sgw", "s3cret"))));
        d[2].proxy = Some(socks_at(auth, 5, Some(("sgw", "wrong"))));
        d[3].proxy = Some(socks_at(dead, 5, None));
        for p in [open, auth, dead] {
            allow_in_acl(s, &p.to_string());
        }
    })
    .await;

    assert_eq!(roundtrip(h.cloud(0), b"via socks").await, b"via socks");
    // microsocks says it connected to the echo server for us.
    let deadline = Instant::now() + WAIT;
    while !open_log.lock().unwrap().contains(&echo.port().to_string()) {
        assert!(
            Instant::now() < deadline,
            "microsocks did not log the connection: {}",
            open_log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(roundtrip(h.cloud(1), b"with auth").await, b"with auth");

    for (i, dest) in [(2, "dest3"), (3, "dest4")] {
        let back = echo_once(h.cloud(i), b"nope").await.unwrap_or_default();
        assert!(back.is_empty(), "{dest} must not carry data");
        assert_eq!(
            failed(&h, dest, "proxy"),
            1,
            "{dest} fails with reason proxy"
        );
    }
}

/// A SOCKS4/4a proxy: Debian's dante server, when installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks4_proxy_dante() {
    let Some(danted) =
        which("danted").or_else(|| Some(PathBuf::from("/usr/sbin/danted")).filter(|p| p.exists()))
    else {
        eprintln!("SKIPPED: danted not installed (apt-get install dante-server)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = tmp.path().join("danted.conf");
    std::fs::write(
        &conf,
        format!(
            "logoutput: stderr\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n\
             clientmethod: none\nsocksmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n\
             client pass {{ from: 127.0.0.0/8 to: 127.0.0.0/8 }}\n\
             socks pass {{ from: 127.0.0.0/8 to: 127.0.0.0/8 log: connect }}\n"
        ),
    )
    .unwrap();
    let child = std::process::Command::new(danted)
        .args([
            "-f",
            conf.to_str().unwrap(),
            "-p",
            tmp.path().join("d.pid").to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _d = Daemon(child);
    wait_listening(port).await;
    let echo = echo_server().await;
    let h = Harness::start(&[echo], |s| {
        s.gateway.gateways[0].destinations[0].proxy = Some(socks(port, 4, None));
        allow_in_acl(s, &format!("127.0.0.1:{port}"));
    })
    .await;
    assert_eq!(roundtrip(h.cloud(0), b"via socks4").await, b"via socks4");
}

/// Sends `data` to a hash server through `addr`; checks the digest that comes back.
async fn send_hashed(addr: SocketAddr, data: &[u8]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, sha(data), "content changed in the tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_shrinks_tunnel_bytes_not_content() {
    let hs = hash_server().await;
    let h = Harness::start(&[hs, hs], |s| {
        s.gateway.gateways[0].destinations[0].compression = true;
    })
    .await;
    // Log-like text: compressible, not trivially.
    let text: Vec<u8> = (0..120_000u32)
        .flat_map(|i| format!("{i:08} GET /api/items/{} 200 {}ms\n", i % 977, i % 13).into_bytes())
        .collect();
    send_hashed(h.cloud(0), &text).await;
    send_hashed(h.cloud(1), &text).await;
    let stats = h.client.handle.stats();
    let (z, plain) = (stats.dest("dest1"), stats.dest("dest2"));
    // Counted when the client's side of each stream ends, just after the caller's reply.
    let deadline = Instant::now() + WAIT;
    while z.bytes_up.load(Relaxed) == 0 || plain.tunnel_bytes_up.load(Relaxed) == 0 {
        assert!(Instant::now() < deadline, "bytes not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (z_plain, z_wire) = (z.bytes_up.load(Relaxed), z.tunnel_bytes_up.load(Relaxed));
    assert_eq!(z_plain, text.len() as u64);
    assert!(
        z_wire * 4 < z_plain,
        "compressed: {z_wire} B in the tunnel for {z_plain} B"
    );
    assert_eq!(plain.tunnel_bytes_up.load(Relaxed), text.len() as u64);
    eprintln!("compressible: {z_plain} B carried as {z_wire} B");

    // Random bytes: about one flag byte per frame more, never a blow-up.
    let random: Vec<u8> = (0..4_000_000).map(|_| rand::random::<u8>()).collect();
    let before = z.tunnel_bytes_up.load(Relaxed);
    let plain_before = z.bytes_up.load(Relaxed);
    send_hashed(h.cloud(0), &random).await;
    let deadline = Instant::now() + WAIT;
    while z.bytes_up.load(Relaxed) == plain_before {
        assert!(Instant::now() < deadline, "bytes not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wire = z.tunnel_bytes_up.load(Relaxed) - before;
    assert!(
        wire <= random.len() as u64 * 1005 / 1000,
        "random: {wire} B in the tunnel for {} B",
        random.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_is_reset_with_reason_timeout() {
    let echo = echo_server().await;
    let h = Harness::start(&[echo], |s| {
        s.gateway.gateways[0].destinations[0].idle_timeout = Some(Duration::from_secs(2));
    })
    .await;
    let mut s = TcpStream::connect(h.cloud(0)).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    let quiet = Instant::now();
    let r = tokio::time::timeout(WAIT, s.read(&mut b))
        .await
        .expect("closed in time");
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "idle stream should be reset: {r:?}"
    );
    assert!(
        quiet.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        quiet.elapsed()
    );

    // A stream that keeps talking is not idle, however long it lives.
    let mut s = TcpStream::connect(h.cloud(0)).await.unwrap();
    for _ in 0..6 {
        s.write_all(b"hi").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_on_a_port_that_never_accepts() {
    // A listener whose accept queue is full: further SYNs are dropped, as by a firewall.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let black = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(c) = std::net::TcpStream::connect_timeout(&black, Duration::from_millis(200)) {
            fillers.push(c);
        }
    }
    let h = Harness::start(&[black], |s| {
        s.gateway.gateways[0].destinations[0].timeout = Duration::from_secs(1);
    })
    .await;
    let started = Instant::now();
    let back = echo_once(h.cloud(0), b"anyone?").await.unwrap_or_default();
    assert!(back.is_empty());
    assert_eq!(failed(&h, "dest1", "timeout"), 1);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    drop(sock);
}

#[test]
fn connector_config_errors_name_destination_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let _ = p;
    let base = "listen = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\n\
                [[gateways]]\nid = \"g\"\nsecurity_token = \"t\"\n";
    let cases = [
        (
            "enable_client_tls = true\nclient_certs = [\"-----BEGIN CERTIFICATE-----\\nnot base64!\\n-----END CERTIFICATE-----\\n\"]",
            "gateways[0].destinations[0].client_certs",
        ),
        (
            "enable_client_tls = true\nclient_certs = [\"ca.pem\",\"ca.pem\",\"ca.pem\",\"ca.pem\",\"ca.pem\",\"ca.pem\",\"ca.pem\"]",
            "at most 6",
        ),
        ("enable_client_tls = true\ntls = \"mutualauth\"\ndest_key = \"client.key\"", "dest_key: needs `dest_cert` as well"),
        ("tls = \"mutualauth\"", "has no effect unless enable_client_tls"),
        ("enable_client_tls = true\ntls = \"mutualauth\"\ndest_cert = \"client.pem\"\ndest_key = \"ca.pem\"", "dest_key: contains no usable PEM private key"),
        ("protocol = \"TLS\"\nclient_tls = \"serverside\"\nserver_cert = \"server.pem\"\nserver_key = \"server.key\"", "cannot also terminate"),
        ("client_tls = \"mutualauth\"", "needs `server_cert`"),
        ("proxy = { host = \"127.0.0.1\", port = 1080, protocol = 6 }", "proxy.protocol"),
        ("proxy = { host = \"127.0.0.1\", port = 1080, protocol = 4, username = \"u\", password = \"p\" }", "SOCKS4 has no password"),
        ("compression = \"yes\"", "compression: expected a boolean"),
    ];
    for (extra, want) in cases {
        let src = format!(
            "{base}[[gateways.destinations]]\nid = \"d1\"\nip = \"127.0.0.1\"\nport = 1\ncloud_port = 0\n{extra}\n"
        );
        let path = dir.path().join("gateway.toml");
        let err = GatewayConfig::from_toml_env(&path, &src, Default::default())
            .expect_err(extra)
            .0
            .join("\n");
        assert!(
            err.contains(want),
            "for {extra:?} wanted {want:?} in:\n{err}"
        );
        assert!(
            !err.contains("PRIVATE KEY"),
            "key material in an error: {err}"
        );
    }
    // And a good one loads, with everything in place.
    let src = format!(
        "{base}[[gateways.destinations]]\nid = \"d1\"\nip = \"127.0.0.1\"\nport = 1\ncloud_port = 0\n\
         enable_client_tls = true\ntls = \"mutualauth\"\ndest_cert = \"client.pem\"\ndest_key = \"client.key\"\n\
         client_certs = [\"ca.pem\"]\nsni = \"db.internal\"\nclient_tls = \"mutualauth\"\nserver_cert = \"server.pem\"\n\
         server_key = \"server.key\"\ncompression = true\nproxy = {{ host = \"127.0.0.1\", port = 1080, protocol = 5, username = \"u\", password = \"p\" }}\n"
    );
    let cfg =
        GatewayConfig::from_toml_env(&dir.path().join("g.toml"), &src, Default::default()).unwrap();
    let d = &cfg.gateways[0].destinations[0];
    let tls = d.endpoint_tls.as_ref().unwrap();
    assert_eq!(tls.sni, "db.internal");
    assert!(tls.mutual && tls.identity.is_some() && tls.reject_unauth);
    assert!(matches!(d.caller_tls, CallerTls::Mutual(_)));
    assert!(d.compression);
    let dbg = format!("{cfg:?}");
    assert!(
        !dbg.contains("PRIVATE KEY") && !dbg.contains("\"p\""),
        "secrets in Debug output"
    );
    let spec = sgw::gateway::spec_of(d);
    assert!(!format!("{spec:?}").contains("PRIVATE KEY"));
    assert_eq!(spec.proxy.as_ref().unwrap().password.0, "p");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_endpoint_is_a_warning_at_every_connect() {
    sgw::tls::install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let p = pki(tmp.path());
    let id = identity(&p.server_chain, &p.server_key);
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let tls_echo = serve(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut s) = acceptor.accept(tcp).await else {
                return;
            };
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                if s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    })
    .await;
    let mut setup = Setup::new(&[tls_echo]);
    let mut lax = endpoint_tls(vec![p.wrong_ca.clone()], None);
    lax.reject_unauth = false;
    setup.gateway.gateways[0].destinations[0].endpoint_tls = Some(lax);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = point_client_at(&setup, gw.handle.tunnel_addr());
    let c = Proc::spawn(&["client", "--config", client_toml.to_str().unwrap()]);
    c.wait_line("tunnel up").await;
    let cloud = gw.handle.dest_addr("dest1").unwrap();
    for _ in 0..3 {
        assert_eq!(roundtrip(cloud, b"unverified").await, b"unverified");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let n = c
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("WARN") && l.contains("NOT verified"))
            .count();
        if n == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} warnings:\n{}", c.all());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fuzz corpus for compressed stream bytes, replayed: decode or fail, never panic.
#[test]
fn inflate_fuzz_corpus_replays() {
    use sgw::compress::{decode_all, Inflater};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/inflate");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
        let mut inf = Inflater::default();
        if decode_all(&mut inf, &data[..cut]).is_ok() {
            let _ = decode_all(&mut inf, &data[cut..]);
        }
        n += 1;
    }
    assert!(n >= 20, "corpus has {n} files");
}

/// The proxy's own reply code reaches the error: microsocks cannot reach a closed port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_refusal_carries_the_proxy_reply_code() {
    let Some((_m, _, at)) = microsocks(None).await else {
        eprintln!("SKIPPED: microsocks not installed (apt-get install microsocks)");
        return;
    };
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let tcp = TcpStream::connect(at).await.unwrap();
    let proxy = sgw::proto::ProxySpec {
        host: at.ip().to_string(),
        port: at.port(),
        protocol: 5,
        ..Default::default()
    };
    let err = sgw::dial::socks_connect(tcp, &proxy, &sgw::dial::Target::Addr(closed), deadline)
        .await
        .unwrap_err();
    assert_eq!(err.reason, sgw::proto::Reason::Proxy);
    assert!(err.message.contains("SOCKS5 reply"), "{}", err.message);
    eprintln!("{}", err.message);
}

/// docs/DESTINATIONS.md "Idle sessions": the sockets a relay holds, toward the endpoint and
/// toward the caller, send TCP keepalives, so NATs and firewalls keep an idle session mapped.
/// Read from the kernel's own view (`ss -o`), not from our code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_sockets_carry_tcp_keepalive() {
    let Some(ss) = which("ss") else {
        println!("SKIPPED: ss is needed (apt-get install iproute2)");
        return;
    };
    let echo = echo_server().await;
    let h = Harness::start(&[echo], |_| {}).await;
    let cloud = h.cloud(0);
    let mut s = TcpStream::connect(cloud).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    let timers = |filter: String| {
        let out = std::process::Command::new(&ss)
            .args(["-t", "-n", "-o", "state", "established"])
            .arg(filter)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The client's socket to the endpoint, and the gateway's socket to the caller.
    let toward_endpoint = timers(format!("dst {echo}"));
    let toward_caller = timers(format!("src {cloud}"));
    assert!(
        toward_endpoint.contains("timer:(keepalive"),
        "{toward_endpoint}"
    );
    assert!(
        toward_caller.contains("timer:(keepalive"),
        "{toward_caller}"
    );
}
