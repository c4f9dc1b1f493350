//! What an operator relies on: the corporate proxy path, metrics that add up, readiness,
//! draining on SIGTERM, SIGHUP with a broken config, JSON logs.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sgw::admin::client::call;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Client process configured with `outbound_proxy`; returns it once `needle` is logged.
fn client_via_proxy(setup: &Setup, tunnel: SocketAddr, proxy: &str) -> Proc {
    let client_toml = point_client_at(setup, tunnel);
    let src = std::fs::read_to_string(&client_toml).unwrap();
    std::fs::write(
        &client_toml,
        format!("outbound_proxy = \"{proxy}\"\nno_proxy = [\"example.invalid\"]\n{src}"),
    )
    .unwrap();
    Proc::spawn(&["client", "--config", client_toml.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_through_tinyproxy_http_connect() {
    let Some(tinyproxy) = which("tinyproxy") else {
        eprintln!("SKIPPED: tinyproxy not installed (apt-get install tinyproxy)");
        return;
    };
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let port = free_port();
    let log = setup.path("tinyproxy.log");
    let conf = setup.path("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nBasicAuth sgwuser s3cret-pw\nLogLevel Connect\nLogFile \"{}\"\nMaxClients 20\n",
            log.display()
        ),
    )
    .unwrap();
    let _proxy = Daemon(
        Command::new(tinyproxy)
            .args(["-d", "-c", conf.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port).await;
    // Wrong password: refused by the proxy, and the log says so with the proxy's status line.
    let bad = client_via_proxy(
        &setup,
        gw.handle.tunnel_addr(),
        &format!("http://sgwuser:wrong@127.0.0.1:{port}"),
    );
    let line = bad.wait_line("reason=proxy_failed").await;
    assert!(
        line.contains("HTTP/1.0 407") || line.contains("HTTP/1.0 401"),
        "the proxy's status line: {line}"
    );
    assert!(line.contains("credentials"), "the fix: {line}");
    assert!(
        !bad.all().contains("wrong@") && !bad.all().contains(":wrong"),
        "password leaked:\n{}",
        bad.all()
    );
    drop(bad);
    // Right password: the tunnel comes up through the proxy and carries traffic.
    std::fs::write(
        setup.path("client.toml"),
        std::fs::read_to_string(setup.path("client.toml"))
            .unwrap()
            .lines()
            .skip(2)
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let good = client_via_proxy(
        &setup,
        gw.handle.tunnel_addr(),
        &format!("http://sgwuser:s3cret-pw@127.0.0.1:{port}"),
    );
    good.wait_line("tunnel up").await;
    let cloud = gw.handle.dest_addr("dest1").unwrap();
    assert_eq!(
        echo_once(cloud, b"via tinyproxy").await.unwrap(),
        b"via tinyproxy"
    );
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        seen.contains(&format!("localhost:{}", gw.handle.tunnel_addr().port())),
        "tinyproxy's log shows the CONNECT:\n{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_through_microsocks_socks5_with_and_without_auth() {
    let Some(microsocks) = which("microsocks") else {
        eprintln!("SKIPPED: microsocks not installed (apt-get install microsocks)");
        return;
    };
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let cloud = gw.handle.dest_addr("dest1").unwrap();
    // Without auth.
    let open_port = free_port();
    let _open = Daemon(
        Command::new(&microsocks)
            .args(["-i", "127.0.0.1", "-p", &open_port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(open_port).await;
    let c = client_via_proxy(
        &setup,
        gw.handle.tunnel_addr(),
        &format!("socks5://127.0.0.1:{open_port}"),
    );
    c.wait_line("tunnel up").await;
    assert_eq!(
        echo_once(cloud, b"via socks5").await.unwrap(),
        b"via socks5"
    );
    let via = gw.handle.clients("gw1");
    drop(c);
    assert!(!via.is_empty());
    // With auth: wrong password refused with a clear line, right one works.
    let auth_port = free_port();
    let _auth = Daemon(
        Command::new(&microsocks)
            .args([
                "-i",
                "127.0.0.1",
                "-p",
                &auth_port.to_string(),
                "-u",
                "sgwuser",
                "-P",
                "s0cks-pw",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(auth_port).await;
    let strip = || {
        let p = setup.path("client.toml");
        let t = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, t.lines().skip(2).collect::<Vec<_>>().join("\n")).unwrap();
    };
    strip();
    let bad = client_via_proxy(
        &setup,
        gw.handle.tunnel_addr(),
        &format!("socks5://sgwuser:nope@127.0.0.1:{auth_port}"),
    );
    let line = bad.wait_line("reason=proxy_failed").await;
    assert!(line.contains(&format!("127.0.0.1:{auth_port}")), "{line}");
    assert!(
        !bad.all().contains("nope"),
        "password leaked:\n{}",
        bad.all()
    );
    drop(bad);
    strip();
    let good = client_via_proxy(
        &setup,
        gw.handle.tunnel_addr(),
        &format!("socks5://sgwuser:s0cks-pw@127.0.0.1:{auth_port}"),
    );
    good.wait_line("tunnel up").await;
    assert_eq!(
        echo_once(cloud, b"authenticated").await.unwrap(),
        b"authenticated"
    );
}

/// Value of an unlabelled or labelled sample in Prometheus text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_add_up_and_readyz_follows_the_gateway() {
    let echo = echo_server().await;
    let h = Harness::start(&[echo], |_| {}).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = l.local_addr().unwrap();
    let backend = Arc::new(sgw::client::AdminBackend::new(h.client.handle.clone()));
    tokio::spawn(sgw::admin::serve(
        l,
        backend,
        sgw::admin::Access::default(),
        64,
        h.client.stop.clone(),
    ));
    let get = |path: &'static str| async move {
        call(admin, hyper::Method::GET, path, None, None)
            .await
            .unwrap()
    };
    let (st, before) = get("/metrics").await;
    assert_eq!(st, 200);
    let up0 = sample(&before, "sgw_client_bytes_total{direction=\"up\"}");
    let down0 = sample(&before, "sgw_client_bytes_total{direction=\"down\"}");
    let opened0 = sample(&before, "sgw_client_streams_opened_total");
    // 3 streams of 100,000 bytes each way.
    let payload = vec![7u8; 100_000];
    for _ in 0..3 {
        assert_eq!(
            echo_once(h.cloud(0), &payload).await.unwrap().len(),
            payload.len()
        );
    }
    // The stream-closed accounting lands just after the caller sees EOF: poll, bounded.
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let (_, m) = get("/metrics").await;
        if sample(&m, "sgw_client_bytes_total{direction=\"down\"}") - down0 >= 300_000 {
            break m;
        }
        assert!(Instant::now() < deadline, "metrics never caught up:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        sample(&after, "sgw_client_bytes_total{direction=\"up\"}") - up0,
        300_000
    );
    assert_eq!(
        sample(&after, "sgw_client_bytes_total{direction=\"down\"}") - down0,
        300_000
    );
    assert_eq!(
        sample(&after, "sgw_client_streams_opened_total") - opened0,
        3
    );
    assert_eq!(sample(&after, "sgw_client_tunnels_up"), 2);
    // The same by destination, and the gauges.
    assert_eq!(
        sample(
            &after,
            "sgw_client_dest_bytes_total{dest=\"dest1\",direction=\"up\"}"
        ),
        300_000
    );
    assert_eq!(
        sample(
            &after,
            "sgw_client_dest_bytes_total{dest=\"dest1\",direction=\"down\"}"
        ),
        300_000
    );
    assert_eq!(
        sample(
            &after,
            "sgw_client_dest_streams_opened_total{dest=\"dest1\"}"
        ),
        3
    );
    assert_eq!(sample(&after, "sgw_client_active_streams"), 0);
    let limits = h.client.handle.limits();
    assert_eq!(
        sample(&after, "sgw_client_limit{limit=\"max_streams\"}"),
        limits.max_streams as i64
    );
    assert_eq!(
        sample(&after, "sgw_client_limit{limit=\"window_budget\"}"),
        limits.window_budget as i64
    );
    assert_eq!(
        sample(
            &after,
            "sgw_client_limit{limit=\"window_budget_per_gateway\"}"
        ),
        limits.window_budget_per_gateway as i64
    );
    assert_eq!(
        sample(
            &after,
            "sgw_client_gateway_window_budget_bytes{gateway=\"gw1\",link=\"0\",state=\"limit\"}"
        ),
        limits.window_budget_per_gateway as i64
    );
    assert_eq!(
        sample(
            &after,
            "sgw_client_gateway_window_budget_bytes{gateway=\"gw1\",link=\"0\",state=\"committed\"}"
        ),
        0
    );
    // Gateway-only limits are not shown as the client's.
    assert!(!after.contains("limit=\"max_destinations\""), "{after}");
    assert!(
        after.contains("sgw_client_tunnel_rtt_microseconds{gateway=\"gw1\",tunnel=\"0\"}"),
        "{after}"
    );
    assert!(
        after.contains("sgw_client_tunnel_buffered_bytes{gateway=\"gw1\",tunnel=\"1\"} 0"),
        "{after}"
    );
    // Readiness follows the tunnels: gateway gone -> 503, back -> 200.
    assert_eq!(get("/readyz").await.0, 200);
    let tunnel = h.gw.handle.tunnel_addr();
    h.gw.stop.cancel();
    let _ = h.gw.task.await;
    let mut st = h.client.handle.status();
    tokio::time::timeout(WAIT, st.wait_for(|s| s.tunnels_up == 0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(get("/readyz").await.0, 503);
    assert_eq!(get("/healthz").await.0, 200, "alive even when not ready");
    let mut cfg = h.setup.gateway.clone();
    cfg.listen = tunnel;
    let _gw2 = start_gateway(cfg).await;
    tokio::time::timeout(WAIT, st.wait_for(|s| s.tunnels_up == 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_100mb_transfer_finish_then_exits_0() {
    let hash = hash_server().await;
    let setup = Setup::new(&[hash]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = point_client_at(&setup, gw.handle.tunnel_addr());
    let mut p = Proc::spawn(&["client", "--config", client_toml.to_str().unwrap()]);
    p.wait_line("tunnel up").await;
    p.wait_line("tunnel up").await;
    let cloud = gw.handle.dest_addr("dest1").unwrap();
    let mut s = TcpStream::connect(cloud).await.unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut expect = sha2::Sha256::new();
    use sha2::Digest;
    let pid = p.child.id().to_string();
    for i in 0..100 {
        if i == 10 {
            signal("-TERM", &pid);
            p.wait_line("draining tunnel").await;
        }
        s.write_all(&chunk).await.unwrap();
        expect.update(&chunk);
    }
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, expect.finalize().to_vec(), "all 100 MB arrived intact");
    let status = wait_exit(&mut p.child).await;
    assert_eq!(status.code(), Some(0), "{}", p.all());
    assert!(p.all().contains("client stopped"), "{}", p.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_old_one_and_logs_every_error() {
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = point_client_at(&setup, gw.handle.tunnel_addr());
    let p = Proc::spawn(&["client", "--config", client_toml.to_str().unwrap()]);
    p.wait_line("tunnel up").await;
    let cloud = gw.handle.dest_addr("dest1").unwrap();
    assert_eq!(echo_once(cloud, b"before").await.unwrap(), b"before");
    let good = std::fs::read_to_string(&client_toml).unwrap();
    std::fs::write(&client_toml, format!("bogus_key = 1\n{good}")).unwrap();
    set_toml(&client_toml, "default_policy", "\"maybe\"");
    set_toml(&client_toml, "interval", "\"soon\"");
    let pid = p.child.id().to_string();
    signal("-HUP", &pid);
    let first = p.wait_line("config reload failed").await;
    // Every error is logged, each with its line.
    let deadline = Instant::now() + WAIT;
    while p.all().matches("config reload failed").count() < 3 {
        assert!(Instant::now() < deadline, "expected 3 errors:\n{}", p.all());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = p.all();
    assert!(first.contains("client.toml:"), "{first}");
    for want in ["default_policy", "bogus_key", "keepalive.interval"] {
        assert!(
            all.lines()
                .any(|l| l.contains("config reload failed") && l.contains(want)),
            "{want} not reported:\n{all}"
        );
    }
    assert!(!all.contains("configuration reloaded"));
    assert_eq!(
        echo_once(cloud, b"still").await.unwrap(),
        b"still",
        "old config and rules still serve"
    );
    // Fixed: the reload goes through.
    std::fs::write(&client_toml, good).unwrap();
    signal("-HUP", &pid);
    p.wait_line("configuration reloaded").await;
    assert_eq!(
        gw.handle.stats().tunnels_accepted.load(Relaxed),
        2,
        "no reconnect needed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_stream_closed_line_has_every_spec_field() {
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = point_client_at(&setup, gw.handle.tunnel_addr());
    let p = Proc::spawn(&[
        "client",
        "--config",
        client_toml.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    p.wait_line("tunnel up").await;
    let cloud = gw.handle.dest_addr("dest1").unwrap();
    assert_eq!(
        echo_once(cloud, b"json please").await.unwrap(),
        b"json please"
    );
    let line = p.wait_line("\"stream closed\"").await;
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    for key in [
        "timestamp",
        "level",
        "message",
        "client.id",
        "stream.id",
        "dest.id",
        "dest.addr",
        "caller.addr",
        "bytes.up",
        "bytes.down",
        "duration_ms",
        "reason",
    ] {
        assert!(v.get(key).is_some(), "{key} missing in {line}");
    }
    assert_eq!(v["bytes.up"], 11);
    assert_eq!(v["bytes.down"], 11);
    assert_eq!(v["dest.id"], "dest1");
    assert_eq!(v["dest.addr"], format!("{echo}"));
    // Every line is JSON.
    for l in p.all().lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sgw_status_shows_tunnels_destinations_and_live_streams() {
    let echo = echo_server().await;
    let h = Harness::start(&[echo], |_| {}).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = l.local_addr().unwrap().to_string();
    let backend = Arc::new(sgw::client::AdminBackend::new(h.client.handle.clone()));
    let access = sgw::admin::Access {
        token: Some(sgw::config::Secret::new("status-token")),
        hosts: Vec::new(),
    };
    tokio::spawn(sgw::admin::serve(
        l,
        backend,
        access,
        64,
        h.client.stop.clone(),
    ));
    // One stream held open with 5 bytes each way so far.
    let mut s = TcpStream::connect(h.cloud(0)).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).await.unwrap();
    let sgw = |args: &[&str]| {
        let out = Command::new(sgw_bin())
            .args(args)
            .args(["--admin", &admin])
            .env("SGW_ADMIN_TOKEN", "status-token")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = sgw(&["status"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("2 tunnel(s) up"), "{out}");
    assert!(out.contains("gateway gw1 wss://localhost:"), "{out}");
    assert!(
        out.contains(&format!("destination dest1 TCP {echo}")),
        "{out}"
    );
    assert!(out.contains("active streams: 1"), "{out}");
    assert!(
        out.contains(&format!("dest1 {echo} <- {me}  up 5 B  down 5 B")),
        "{out}"
    );
    assert!(out.contains("rtt "), "{out}");
    let (code, json) = sgw(&["status", "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["active_streams"][0]["caller_addr"], me.to_string());
    assert_eq!(sgw(&["health"]).0, Some(0));
    assert_eq!(sgw(&["health", "--ready"]).0, Some(0));
    drop(s);
    // Nothing listening: health fails with exit 1.
    let dead = free_port().to_string();
    let out = Command::new(sgw_bin())
        .args(["health", "--admin", &format!("127.0.0.1:{dead}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Whatever answers on the admin port while the client is down (a local user's listener)
    // never gets the admin token: /healthz and /readyz need none.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = squatter.local_addr().unwrap();
    let heard = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = squatter.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&b[..n]),
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        String::from_utf8_lossy(&head).to_ascii_lowercase()
    });
    let out = Command::new(sgw_bin())
        .args(["health", "--admin", &at.to_string()])
        .env("SGW_ADMIN_TOKEN", "admin-token-for-health")
        .output()
        .unwrap();
    let head = heard.join().unwrap();
    assert!(head.starts_with("get /healthz"), "{head}");
    assert!(!head.contains("authorization"), "{head}");
    assert!(!head.contains("admin-token-for-health"), "{head}");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn env_vars_override_config_values_and_bad_ones_are_reported_like_file_errors() {
    let setup = Setup::new(&[]);
    let client_toml = setup.path("client.toml");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(sgw_bin());
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let path = client_toml.to_str().unwrap();
    let (code, out) = run(
        &["config", "check", path],
        &[("SGW_CLIENT_GATEWAY_TUNNELS", "4")],
    );
    assert_eq!(code, Some(0), "{out}");
    let bad = [
        ("SGW_CLIENT_DEFAULT_POLICY", "maybe"),
        ("SGW_CLIENT_LIMITS_MAX_STREAMS", "lots"),
    ];
    let (code, out) = run(&["config", "check", path], &bad);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("environment SGW_CLIENT_DEFAULT_POLICY: `maybe` is not one of deny, allow"),
        "{out}"
    );
    assert!(
        out.contains("environment SGW_CLIENT_LIMITS_MAX_STREAMS: `lots` is not an integer"),
        "{out}"
    );
    // The daemon refuses to start with the same messages.
    let (code, out2) = run(&["client", "--config", path], &bad);
    assert_eq!(code, Some(2));
    assert!(
        out2.contains("environment SGW_CLIENT_DEFAULT_POLICY"),
        "{out2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_survives_sighup_and_reports_a_broken_config() {
    let setup = Setup::new(&[]);
    let gw_toml = setup.path("gateway.toml");
    let mut p = Proc::spawn(&["gateway", "--config", gw_toml.to_str().unwrap()]);
    p.wait_line("gateway started").await;
    let good = std::fs::read_to_string(&gw_toml).unwrap();
    std::fs::write(&gw_toml, format!("bogus = 1\n{good}")).unwrap();
    let pid = p.child.id().to_string();
    signal("-HUP", &pid);
    let line = p.wait_line("config reload failed").await;
    assert!(line.contains("bogus"), "{line}");
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the gateway"
    );
    // A destination added to the file starts listening on SIGHUP, and stops when removed.
    let added = format!(
        "{good}\n[[gateways.destinations]]\nid = \"added\"\nip = \"127.0.0.1\"\nport = 9\ncloud_host = \"127.0.0.1\"\ncloud_port = 0\n"
    );
    std::fs::write(&gw_toml, added).unwrap();
    let hup = || {
        signal("-HUP", &pid);
    };
    hup();
    let line = p.wait_line("dest.id=added").await;
    let addr: std::net::SocketAddr = field(&line, "cloud.addr").parse().unwrap();
    p.wait_line("configuration reloaded").await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    std::fs::write(&gw_toml, good).unwrap();
    hup();
    p.wait_line("destination stopped listening").await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert!(p.child.try_wait().unwrap().is_none());
}
