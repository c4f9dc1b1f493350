//! Hostile callers, proxies and local users against real gateways and clients (docs/SECURITY.md
//! names the claim each test proves). Every case checks that the offending request or stream
//! ends with a reason and that the tunnel and other streams carry on.

#[path = "common/api_fuzz.rs"]
mod api_fuzz;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::*;
use sgw::config::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends raw bytes and reads until the peer closes or `want` responses (status lines) arrived.
async fn raw_http(addr: SocketAddr, req: &[u8], want: usize) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break,
        }
        let text = String::from_utf8_lossy(&got);
        let complete = text.matches("HTTP/1.").count() >= want
            && text.rsplit("HTTP/1.").next().is_some_and(|last| {
                last.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    len.is_none_or(|n| body.len() >= n)
                })
            });
        if complete {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The status codes of the responses in `resp`, in order (HTTP/1.0 or 1.1).
fn status_codes(resp: &str) -> Vec<String> {
    resp.match_indices("HTTP/1.")
        .filter_map(|(i, _)| resp.get(i + 9..i + 12))
        .map(str::to_owned)
        .collect()
}

fn status(resp: &str) -> String {
    status_codes(resp).first().cloned().unwrap_or_default()
}

/// Polls `cond` until it holds (bounded by WAIT).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// python's http.server over `dir/public/` and `dir/private/`: it decodes `%2F` after the
/// proxy judged the path, the way many Java servers do too.
async fn python_files(dir: &Path) -> Option<(Daemon, SocketAddr)> {
    let py = which("python3")?;
    for (sub, body) in [("public", "public page\n"), ("private", "private page\n")] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join("index.html"), body).unwrap();
    }
    let port = free_port();
    let child = std::process::Command::new(py)
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let d = Daemon(child);
    wait_listening(port).await;
    Some((d, SocketAddr::from(([127, 0, 0, 1], port))))
}

fn write_acl(s: &Setup, lines: &[String]) {
    std::fs::write(&s.client.acl_file, lines.join("\n") + "\n").unwrap();
}

/// Gateway and client with one HTTP destination to `origin`, whose ACL allows `path` (empty:
/// the whole endpoint, no path rule).
async fn http_harness(origin: SocketAddr, path: &str) -> Harness {
    Harness::start(&[origin], |s| {
        s.gateway.gateways[0].destinations[0].protocol = Protocol::Http;
        write_acl(s, &[format!("acl allow 127.0.0.1:{}{path}", origin.port())]);
    })
    .await
}

/// SECURITY.md "HTTP path rules judge what the endpoint acts on".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_dot_segments_and_smuggled_targets_cannot_pass_a_path_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_py, origin)) = python_files(tmp.path()).await else {
        eprintln!("SKIPPED: python3 not installed");
        return;
    };
    let h = http_harness(origin, "/public").await;
    let cloud = h.cloud(0);
    let get = |target: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: {cloud}\r\nConnection: close\r\n\r\n")
    };
    // The allowed page, and the forwarded path is the normalised one.
    let ok = raw_http(cloud, get("/public/").as_bytes(), 1).await;
    assert!(status(&ok) == "200" && ok.contains("public page"), "{ok}");
    let ok = raw_http(cloud, get("/public//%69ndex.html").as_bytes(), 1).await;
    assert!(ok.contains("public page"), "{ok}");
    // Each of these reached the private page, or could on some server; all are 400 now.
    for bad in [
        "/public/..%2fprivate/",
        "/public/..%2Fprivate/index.html",
        "/public/%2e%2e/private/",
        "/public/..\\private/",
        "/public;x/../private/",
        "/public/%252e%252e%252fprivate/",
        "/public/%zz",
        "/public/%00",
        "/public/../private/",
    ] {
        let resp = raw_http(cloud, get(bad).as_bytes(), 1).await;
        assert!(status(&resp) == "400", "{bad}: {resp}");
        assert!(!resp.contains("private page"), "{bad}: {resp}");
    }
    // Absolute form: judged by its path; an authority that disagrees with Host is refused.
    let abs = format!(
        "GET http://{cloud}/private/ HTTP/1.1\r\nHost: {cloud}\r\nConnection: close\r\n\r\n"
    );
    let resp = raw_http(cloud, abs.as_bytes(), 1).await;
    assert!(status(&resp) == "403", "{resp}");
    let abs = "GET http://elsewhere.example/public/ HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n";
    let resp = raw_http(cloud, abs.as_bytes(), 1).await;
    assert!(status(&resp) == "400", "{resp}");
    let two_hosts =
        format!("GET /public/ HTTP/1.1\r\nHost: {cloud}\r\nHost: x\r\nConnection: close\r\n\r\n");
    let resp = raw_http(cloud, two_hosts.as_bytes(), 1).await;
    assert!(status(&resp) == "400", "{resp}");
    // A second request pipelined behind an allowed one is judged on its own.
    let piped = format!(
        "GET /public/ HTTP/1.1\r\nHost: {cloud}\r\n\r\nGET /private/ HTTP/1.1\r\nHost: {cloud}\r\nConnection: close\r\n\r\n"
    );
    let resp = raw_http(cloud, piped.as_bytes(), 2).await;
    assert_eq!(status_codes(&resp), ["200", "403"], "{resp}");
    assert!(!resp.contains("private page"), "{resp}");
    // The tunnel never noticed.
    assert_eq!(h.client.handle.stats().tunnel_connects.load(Relaxed), 2);
}

/// SECURITY.md "A caller cannot drop a tunnel": a 64 KB path that the ACL denies made a LOG
/// frame over the protocol's limit, and the gateway closed the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_with_a_64kb_path_does_not_drop_the_tunnel() {
    let echo = echo_server().await;
    let http_origin = echo_server().await;
    let mut setup = Setup::new(&[http_origin, echo]);
    setup.gateway.gateways[0].destinations[0].protocol = Protocol::Http;
    write_acl(
        &setup,
        &[
            format!("acl allow 127.0.0.1:{}/public", http_origin.port()),
            format!("acl allow 127.0.0.1:{}", echo.port()),
        ],
    );
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = point_client_at(&setup, gw.handle.tunnel_addr());
    let client = Proc::spawn(&["client", "--config", client_toml.to_str().unwrap()]);
    client.wait_line("tunnel up").await;
    let http = gw.handle.dest_addr("dest1").unwrap();
    let tcp = gw.handle.dest_addr("dest2").unwrap();
    // A long-lived stream on the same tunnel must survive the attack.
    let mut long = TcpStream::connect(tcp).await.unwrap();
    long.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    long.read_exact(&mut buf).await.unwrap();

    // Just under hyper's URI limit (65534), so the request is read and denied; its denial line
    // used to make a LOG frame of about 65,600 bytes, over the 64 KiB limit.
    let path = format!("/private/{}", "a".repeat(65_450));
    for _ in 0..3 {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let resp = raw_http(http, req.as_bytes(), 1).await;
        assert!(status(&resp) == "403", "{}", &resp[..resp.len().min(200)]);
    }
    // The denial reached the gateway's clientLogs: short, with the line number, no rule text.
    let deadline = Instant::now() + WAIT;
    let line = loop {
        let logs = gw.handle.client_logs("gw1");
        if let Some(l) = logs
            .iter()
            .find(|l| l.message.contains("HTTP request denied"))
        {
            break l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no forwarded denial; client log:\n{}",
            client.all()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(line.message.len() <= 2048, "{} bytes", line.message.len());
    assert!(
        line.message.contains("reason=acl_denied") || line.message.contains("reason="),
        "{}",
        line.message
    );
    // The fix it suggests (`sgw acl add "acl allow ADDR"`) is not a rule of the file.
    for rule in [
        format!("127.0.0.1:{}/public", http_origin.port()),
        format!("127.0.0.1:{}", echo.port()),
    ] {
        assert!(
            !line.message.contains(&rule),
            "rule text leaked: {}",
            line.message
        );
    }
    assert!(
        !line.message.contains("acl.list"),
        "file path leaked: {}",
        line.message
    );
    // Same stream, same tunnel: still echoing; no tunnel went down on either side.
    long.write_all(b"after!").await.unwrap();
    long.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!");
    assert_eq!(echo_once(tcp, b"new stream").await.unwrap(), b"new stream");
    assert!(!client.all().contains("tunnel down"), "{}", client.all());
    assert_eq!(gw.handle.stats().tunnels_accepted.load(Relaxed), 2);
}

/// SECURITY.md "Local users and web pages cannot change the ACL".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_needs_the_token_and_a_local_host_name() {
    if which("curl").is_none() {
        eprintln!("SKIPPED: curl not installed");
        return;
    }
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    // `sgw init` wrote an admin token file and pointed the client at it.
    let token = std::fs::read_to_string(setup.path("admin.token")).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = point_client_at(&setup, gw.handle.tunnel_addr());
    let client = Proc::spawn(&["client", "--config", client_toml.to_str().unwrap()]);
    let line = client.wait_line("admin endpoint listening").await;
    let admin = field(&line, "admin.addr");
    client.wait_line("tunnel up").await;
    let url = |p: &str| format!("http://{admin}{p}");
    let bearer = format!("Authorization: Bearer {token}");
    let open_acl = r#"{"rule":"acl allow :"}"#;
    let post = |host: Option<&str>, auth: Option<&str>| {
        let mut a = vec![
            "-s".to_owned(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "-X".into(),
            "POST".into(),
            "-H".into(),
            "Content-Type: application/json".into(),
            "-d".into(),
            open_acl.into(),
        ];
        if let Some(h) = host {
            a.extend(["-H".into(), format!("Host: {h}")]);
        }
        if let Some(t) = auth {
            a.extend(["-H".into(), t.to_owned()]);
        }
        a.push(url("/v1/acl"));
        a
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs).await.1
    };
    // DNS rebinding: a page at evil.example, resolved to 127.0.0.1, with or without a token.
    assert_eq!(run(post(Some("evil.example"), None)).await, "421");
    assert_eq!(
        run(post(Some("evil.example:9003"), Some(&bearer))).await,
        "421"
    );
    // No token, a wrong token: 401, and nothing changed.
    assert_eq!(run(post(None, None)).await, "401");
    assert_eq!(
        run(post(None, Some("Authorization: Bearer nope"))).await,
        "401"
    );
    for p in ["/v1/acl", "/v1/status"] {
        let (_, code, _) = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &url(p)]).await;
        assert_eq!(code, "401", "{p}");
    }
    let acl = std::fs::read_to_string(&setup.client.acl_file).unwrap();
    assert!(!acl.contains("acl allow :\n"), "{acl}");
    // Probes and metrics stay open, for `localhost` too.
    for p in ["/healthz", "/readyz", "/metrics"] {
        let (_, code, _) = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: localhost:1",
            &url(p),
        ])
        .await;
        assert_eq!(code, "200", "{p}");
    }
    // The owner, through `sgw acl` with the config: the token comes from admin_token_file.
    let out = std::process::Command::new(sgw_bin())
        .args([
            "acl",
            "show",
            "--config",
            client_toml.to_str().unwrap(),
            "--admin",
            &admin,
        ])
        .env_remove("SGW_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run(post(None, Some(&bearer))).await, "201");
}

/// SECURITY.md "A destination cannot reach the client host through 0.0.0.0".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unspecified_address_is_judged_as_loopback() {
    let echo = echo_server().await;
    let h = Harness::start(&[echo, echo], |s| {
        // Not a target outside loopback: a connect to the unspecified address reaches this
        // host's own loopback services, which is exactly what the ACL must judge.
        s.gateway.gateways[0].destinations[0].ip = "0.0.0.0".into();
        s.gateway.gateways[0].destinations[1].ip = "::".into();
        write_acl(
            s,
            &[
                "acl deny 127.0.0.0/8:".to_string(),
                format!("acl allow :{}", echo.port()),
            ],
        );
    })
    .await;
    for i in 0..2 {
        let got = echo_once(h.cloud(i), b"hello").await.unwrap_or_default();
        assert!(
            got.is_empty(),
            "dest{} reached the client host: {got:?}",
            i + 1
        );
    }
    assert!(h.client.handle.stats().denied_by_rule.load(Relaxed) >= 2);
}

/// A SOCKS5 proxy of our own. Every CONNECT (by name or address) gets reply `code`; with
/// code 0 the proxy then splices it to `to`, whatever was asked: a proxy whose DNS answers
/// what the client's does not (or lies).
async fn fake_socks5(code: u8, to: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await; // methods
                let _ = s.write_all(&[5, 0]).await;
                let _ = s.read(&mut b).await; // CONNECT
                let up = match code {
                    0 => match TcpStream::connect(to).await {
                        Ok(up) => Some(up),
                        Err(_) => return,
                    },
                    _ => None,
                };
                let _ = s.write_all(&[5, code, 0, 1, 127, 0, 0, 1, 0, 0]).await;
                if let Some(mut up) = up {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
            });
        }
    });
    addr
}

/// A SOCKS5 proxy that answers every CONNECT with `code`.
async fn hostile_socks5(code: u8) -> SocketAddr {
    fake_socks5(code, SocketAddr::from(([127, 0, 0, 1], 9))).await
}

/// Anyone who reaches a gateway id's cloud port can open streams, and each takes a window
/// from the gateway's budget: one id's callers stop at its share
/// (`limits.window_budget_per_gateway`), refused at once, and what they give back is theirs
/// again; the rest of the process's budget stays for the other ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_of_one_gateway_id_stop_at_its_window_budget_share() {
    let echo = echo_server().await;
    let window = 256 * 1024u32;
    let h = Harness::start(&[echo], |s| {
        s.gateway.limits.stream_window = window;
        s.gateway.limits.max_stream_window = window;
        s.gateway.limits.window_budget_per_gateway = 4 * u64::from(window);
    })
    .await;
    let mut held = Vec::new();
    for i in 0..4 {
        let mut c = TcpStream::connect(h.cloud(0)).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        tokio::time::timeout(WAIT, c.read_exact(&mut b))
            .await
            .unwrap_or_else(|_| panic!("caller {i} within the share is served"))
            .unwrap();
        held.push(c);
    }
    let budget = h.gw.handle.window_budget();
    assert_eq!(budget.committed(), 4 * u64::from(window));
    // The fifth is over the share, though the process has room: refused, not left waiting.
    let started = Instant::now();
    let got = echo_once(h.cloud(0), b"over").await.unwrap_or_default();
    assert!(got.is_empty(), "a caller over the share must not be served");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after the destination timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(budget.committed(), 4 * u64::from(window));
    let stats = h.gw.handle.stats();
    eventually("the caller counted as failed", || {
        stats.streams_failed.load(Relaxed) >= 1
    })
    .await;
    // A caller that leaves gives its window back to the id.
    drop(held.pop());
    eventually("the window given back", || {
        budget.committed() <= 3 * u64::from(window)
    })
    .await;
    assert_eq!(echo_once(h.cloud(0), b"again").await.unwrap(), b"again");
}

/// A destination's SOCKS5 proxy at `addr`, no credentials.
fn socks5_at(addr: SocketAddr) -> sgw::config::DestProxy {
    sgw::config::DestProxy {
        host: addr.ip().to_string(),
        port: addr.port(),
        protocol: 5,
        enabled: true,
        username: String::new(),
        password: None,
    }
}

/// A SOCKS5 proxy that connects every CONNECT, by name or address, to `to`.
async fn aliasing_socks5(to: SocketAddr) -> SocketAddr {
    fake_socks5(0, to).await
}

/// A name the client can't resolve goes to the proxy by name, judged by name rules only. An
/// address deny rule above the rule that allows the name refuses it: the proxy could resolve
/// it to that address (here a proxy that sends every name to a denied 127.0.0.1 echo).
/// Below the allowing rule it can't have decided, and the name goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_only_the_proxy_resolves_meets_the_address_deny_rules_above_it() {
    let echo = echo_server().await;
    let proxy = aliasing_socks5(echo).await;
    for (deny_above, works) in [(true, false), (false, true)] {
        let h = Harness::start(&[echo], |s| {
            let d = &mut s.gateway.gateways[0].destinations[0];
            d.ip = "echo.sgw-test.invalid".into();
            d.proxy = Some(socks5_at(proxy));
            let deny = "acl deny 127.0.0.0/8:".to_string();
            let by_name = format!("acl allow :{}", echo.port());
            let mut lines = vec![format!("acl allow 127.0.0.1:{}", proxy.port())];
            if deny_above {
                lines.extend([deny, by_name]);
            } else {
                lines.extend([by_name, deny]);
            }
            write_acl(s, &lines);
        })
        .await;
        let got = echo_once(h.cloud(0), b"metadata").await.unwrap_or_default();
        if works {
            assert_eq!(got, b"metadata", "allowed by name, no address rule above");
        } else {
            assert!(
                got.is_empty(),
                "the address deny above must refuse the name"
            );
            let stats = h.client.handle.stats();
            eventually("the stream denied by a rule", || {
                stats.denied_by_rule.load(Relaxed) >= 1
            })
            .await;
        }
    }
}

/// An HTTP destination whose name only the SOCKS proxy resolves, behind a keep-alive origin:
/// every request on the kept connection meets the address deny rules above the rule that
/// allows the name, not only the one that opened it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_to_a_name_only_the_proxy_resolves_meets_the_address_deny_rules() {
    if which("curl").is_none() {
        println!("SKIPPED: curl is needed");
        return;
    }
    // Answers request after request on one connection, each with its path.
    let origin = serve(|mut s| async move {
        loop {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                match s.read(&mut b).await {
                    Ok(1) => head.push(b[0]),
                    _ => return,
                }
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let path = text.split(' ').nth(1).unwrap_or("").to_owned();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
                path.len()
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = aliasing_socks5(origin).await;
    let h = Harness::start(&[origin], |s| {
        let d = &mut s.gateway.gateways[0].destinations[0];
        d.protocol = Protocol::Http;
        d.ip = "web.sgw-test.invalid".into();
        d.proxy = Some(socks5_at(proxy));
        write_acl(
            s,
            &[
                format!("acl allow 127.0.0.1:{}", proxy.port()),
                format!("acl deny 127.0.0.0/8:{}/admin", origin.port()),
                format!("acl allow :{}", origin.port()),
            ],
        );
    })
    .await;
    let base = format!("http://{}", h.cloud(0));
    let (code, out, err) = curl(&[
        "-sS",
        "-w",
        " %{http_code} %{num_connects}\n",
        &format!("{base}/public"),
        &format!("{base}/admin"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("/public 200 1\n"), "{out}");
    // The second request went on the same connection (no new connect) and was refused.
    assert!(out.ends_with(" 403 0\n"), "{out}");
    assert!(
        out.contains("GET /admin is denied by the client's ACL, rule at line 2"),
        "{out}"
    );
}

/// SECURITY.md "A proxy cannot crash a tunnel": reply codes above 8 panicked inside the
/// SOCKS crate and killed the tunnel slot's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_reply_codes_above_8_are_refusals_not_panics() {
    let echo = echo_server().await;
    let proxy = hostile_socks5(9).await;
    let h = Harness::start(&[echo, echo], |s| {
        s.gateway.gateways[0].destinations[0].proxy = Some(socks5_at(proxy));
        // The client connects to the proxy too: the ACL must allow both.
        write_acl(
            s,
            &[
                format!("acl allow 127.0.0.1:{}", echo.port()),
                format!("acl allow 127.0.0.1:{}", proxy.port()),
            ],
        );
    })
    .await;
    for _ in 0..3 {
        let got = echo_once(h.cloud(0), b"x").await.unwrap_or_default();
        assert!(got.is_empty());
    }
    let stats = h.client.handle.stats();
    eventually("3 failed streams", || {
        stats.streams_failed.load(Relaxed) >= 3
    })
    .await;
    // Same tunnels, other destination: fine.
    assert_eq!(echo_once(h.cloud(1), b"still").await.unwrap(), b"still");
    assert_eq!(h.client.handle.stats().tunnel_connects.load(Relaxed), 2);
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!out.is_empty(), "corpus {name} is empty");
    out.sort();
    out
}

/// Replays the fuzz corpora of the parsers this file's cases attack (fuzz/fuzz_targets/).
#[test]
fn fuzz_corpora_replay_http_path_control_json() {
    for data in corpus("http_path") {
        let Ok(target) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Ok(p) = sgw::acl::request_path(target) {
            let path = p.split('?').next().unwrap();
            assert!(path.starts_with('/') && !path.split('/').any(|s| s == "." || s == ".."));
            assert_eq!(sgw::acl::request_path(&p).as_deref(), Ok(p.as_str()));
        }
    }
    for data in corpus("control_json") {
        if let Ok(h) = serde_json::from_slice::<sgw::proto::Hello>(&data) {
            let _ = h.validate();
        }
        let _ = serde_json::from_slice::<sgw::proto::ConfigPush>(&data);
        if let Ok(l) = serde_json::from_slice::<sgw::proto::LogPush>(&data) {
            assert!(sgw::telemetry::clean(&l.message, 2048)
                .chars()
                .all(|c| !c.is_control()));
        }
    }
}

#[tokio::test]
async fn fuzz_corpus_replay_socks5_reply() {
    for data in corpus("socks5_reply") {
        let (auth, reply) = match data.split_first() {
            Some((flag, rest)) if flag & 1 == 1 => (Some(("user", "pass")), rest),
            Some((_, rest)) => (None, rest),
            None => (None, &data[..]),
        };
        let (mut ours, mut proxy) = tokio::io::duplex(64 * 1024);
        proxy.write_all(reply).await.unwrap();
        proxy.shutdown().await.unwrap();
        let target = sgw::socks5::Target::Name("db.internal", 5432);
        let r = tokio::time::timeout(WAIT, sgw::socks5::connect(&mut ours, auth, target)).await;
        assert!(r.is_ok(), "handshake hung on {data:?}");
    }
}

/// SECURITY.md "The gateway can't pick the client's listening ports": a reverse destination
/// whose `local_port` the client's `reverse_ports` does not list is never bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cannot_make_the_client_listen_without_consent() {
    let echo = echo_server().await;
    let (taken, allowed) = (free_port(), free_port());
    let h = Harness::start(&[echo, echo], |s| {
        for (d, port) in s.gateway.gateways[0]
            .destinations
            .iter_mut()
            .zip([taken, allowed])
        {
            d.reverse = true;
            d.local_port = port;
            d.cloud_port = 0;
        }
        s.gateway.egress_allow = vec![format!("127.0.0.1:{}", echo.port())];
        s.client.reverse_ports = vec![allowed..=allowed];
    })
    .await;
    wait_listening(allowed).await;
    assert_eq!(
        echo_once(SocketAddr::from(([127, 0, 0, 1], allowed)), b"ok")
            .await
            .unwrap(),
        b"ok"
    );
    // The port the client did not consent to stays free for the service that owns it.
    let l = std::net::TcpListener::bind(("127.0.0.1", taken));
    assert!(l.is_ok(), "the client took port {taken}: {l:?}");
    drop(h);
}

/// TLS to the gateway's API on 127.0.0.1:`port`, trusting the `sgw init` CA in `dir`.
async fn api_tls(dir: &Path, port: u16) -> tokio_rustls::client::TlsStream<TcpStream> {
    sgw::tls::install_crypto();
    let spec = sgw::proto::EndpointTls {
        sni: "localhost".into(),
        reject_unauth: true,
        client_certs: vec![std::fs::read_to_string(dir.join("ca.pem")).unwrap()],
        ..Default::default()
    };
    let ep = sgw::tls::endpoint_connector(&spec, "localhost").unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    ep.connector
        .connect(ep.server_name.clone(), tcp)
        .await
        .unwrap()
}

/// Sends a request head (no body) and returns the status code of the answer (bounded wait).
async fn head_only(s: &mut tokio_rustls::client::TlsStream<TcpStream>, head: &str) -> String {
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    status(&String::from_utf8_lossy(&buf[..n]))
}

/// SECURITY.md "The management API can't be locked out by trickling clients".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_api_clients_cannot_lock_out_the_admin() {
    if which("curl").is_none() {
        eprintln!("SKIPPED: curl not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    sgw::init::write(dir.path(), &sgw::init::InitOptions::default()).unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\ntls_cert = \"gateway.pem\"\ntls_key = \"gateway.key\"\n\
         api_listen = \"127.0.0.1:0\"\nadmin_token = \"adm\"\ncloud_host = \"127.0.0.1\"\n\
         api_max_connections_per_source = 4\napi_request_timeout = \"2s\"\n\
         [[gateways]]\nid = \"gw1\"\nsecurity_token = \"gw-token\"\n",
    )
    .unwrap();
    let gw = Proc::spawn(&["gateway", "--config", cfg.to_str().unwrap()]);
    let line = gw.wait_line("management API listening").await;
    let port: u16 = field(&line, "api.listen")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let body_head = |auth: &str| {
        format!("POST /v1/sgconfig HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    };
    // A stranger announcing a large body is refused from its headers, body never read.
    let mut s = api_tls(dir.path(), port).await;
    assert_eq!(head_only(&mut s, &body_head("")).await, "401");
    let mut s = api_tls(dir.path(), port).await;
    assert_eq!(
        head_only(&mut s, &body_head("Authorization: Bearer guess\r\n")).await,
        "401"
    );
    // A known token whose body never comes: 408 at the deadline, not a slot held forever.
    let mut s = api_tls(dir.path(), port).await;
    assert_eq!(
        head_only(&mut s, &body_head("Authorization: Bearer adm\r\n")).await,
        "408"
    );
    // Four trickling connections from 127.0.0.1 use up that address's share; a fifth is
    // closed at once, and the admin on another address is served.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut t = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        t.write_all(&[0x16]).await.unwrap(); // one byte of a TLS record, then nothing
        held.push(t);
    }
    let mut fifth = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut b = [0u8; 1];
    let closed = tokio::time::timeout(WAIT, fifth.read(&mut b))
        .await
        .expect("closed in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let ca = dir.path().join("ca.pem");
    let url = format!("https://localhost:{port}/v1/sgconfig");
    let (code, out, err) = curl(&[
        "-s",
        "--interface",
        "127.0.0.2",
        "--cacert",
        ca.to_str().unwrap(),
        "-H",
        "Authorization: Bearer adm",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &url,
    ])
    .await;
    assert_eq!((code, out.as_str()), (0, "200"), "{err}");
    assert!(
        gw.all().contains("api_max_connections_per_source"),
        "{}",
        gw.all()
    );
    drop(held);
}

/// An origin that answers every request with its request head as the body (and would switch
/// to h2c if asked, as Go's h2c handler does).
async fn head_echo_origin() -> SocketAddr {
    serve(|mut s| async move {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            match s.read(&mut b).await {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let resp = if text.contains("upgrade: h2c") {
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
                .to_string()
        } else {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            )
        };
        let _ = s.write_all(resp.as_bytes()).await;
    })
    .await
}

/// SECURITY.md: an h2c upgrade would carry HTTP/2 requests for any path past the judge; only
/// websocket upgrades are spliced, and an unreadable Connection header is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_not_spliced_past_the_path_judge() {
    let origin = head_echo_origin().await;
    let h = http_harness(origin, "/public").await;
    let cloud = h.cloud(0);
    let req = format!(
        "GET /public/ HTTP/1.1\r\nHost: {cloud}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    );
    let resp = raw_http(cloud, req.as_bytes(), 1).await;
    assert_eq!(status(&resp), "200", "{resp}");
    assert!(
        !resp.contains("upgrade: h2c") && !resp.contains("http2-settings"),
        "{resp}"
    );
    let mut req =
        format!("GET /public/ HTTP/1.1\r\nHost: {cloud}\r\nConnection: close, ").into_bytes();
    req.extend_from_slice(b"\x80\r\n\r\n");
    let resp = raw_http(cloud, &req, 1).await;
    assert_eq!(status(&resp), "400", "{resp}");
}

/// Without path rules the path decides nothing: `%2F` (a RabbitMQ vhost), `;jsessionid` and
/// the like go through exactly as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_path_rules_paths_go_through_as_sent() {
    let origin = head_echo_origin().await;
    let h = Harness::start(&[origin], |s| {
        s.gateway.gateways[0].destinations[0].protocol = Protocol::Http;
        write_acl(s, &[format!("acl allow 127.0.0.1:{}", origin.port())]);
    })
    .await;
    let cloud = h.cloud(0);
    let req = format!(
        "GET /api/vhosts/%2F/x;jsessionid=1?q=%2F HTTP/1.1\r\nHost: {cloud}\r\nConnection: close\r\n\r\n"
    );
    let resp = raw_http(cloud, req.as_bytes(), 1).await;
    assert_eq!(status(&resp), "200", "{resp}");
    assert!(
        resp.contains("get /api/vhosts/%2f/x;jsessionid=1?q=%2f http/1.1"),
        "{resp}"
    );
}

/// SECURITY.md "Clients of one gateway id can't use another's egress": a client of gw2 asks
/// its SOCKS5 listener for an endpoint only gw1 may reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_is_per_gateway_id() {
    let target = echo_server().await;
    let (socks1, socks2) = (free_port(), free_port());
    let mut setup = Setup::new(&[target]);
    // gw1 (from the file, no list of its own) inherits the top-level list; gw2 has its own,
    // which does not name the target.
    setup.gateway.egress_allow = vec![format!("127.0.0.1:{}", target.port())];
    let mut gw2 = setup.gateway.gateways[0].clone();
    gw2.id = "gw2".into();
    gw2.token = sgw::config::Secret::new("gw2-token");
    gw2.destinations.clear();
    gw2.egress = sgw::config::Egress::Own(vec!["api.partner.example:443".into()]);
    setup.gateway.gateways.push(gw2);
    let gw = start_gateway(setup.gateway.clone()).await;
    let mut c1 = setup.client.clone();
    c1.socks5_listen = Some(SocketAddr::from(([127, 0, 0, 1], socks1)));
    let _c1 = start_client(c1, gw.handle.tunnel_addr()).await;
    let mut c2 = setup.client.clone();
    c2.socks5_listen = Some(SocketAddr::from(([127, 0, 0, 1], socks2)));
    c2.gateways[0].gateway_id = "gw2".into();
    c2.gateways[0].token = sgw::config::Secret::new("gw2-token");
    let _c2 = start_client(c2, gw.handle.tunnel_addr()).await;
    wait_listening(socks1).await;
    wait_listening(socks2).await;
    let via = |port: u16| async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let t = sgw::socks5::Target::Addr(target);
        sgw::socks5::connect(&mut s, None, t).await.map(|()| s)
    };
    let mut ok = via(socks1).await.expect("gw1 may reach it");
    ok.write_all(b"mine").await.unwrap();
    let mut b = [0u8; 4];
    ok.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"mine");
    let err = via(socks2).await.expect_err("gw2 may not");
    assert!(
        matches!(err, sgw::socks5::Socks5Error::Refused { .. }),
        "{err}"
    );
    // A name no rule of gw2 names is refused without a lookup (and so, fast).
    let mut s = TcpStream::connect(("127.0.0.1", socks2)).await.unwrap();
    let t = sgw::socks5::Target::Name("slow.example.invalid", 80);
    let err = tokio::time::timeout(WAIT, sgw::socks5::connect(&mut s, None, t))
        .await
        .expect("answered in time")
        .expect_err("refused");
    // Reply 2 (not allowed by ruleset), not a DNS failure: the name was judged, not looked up.
    assert!(
        matches!(err, sgw::socks5::Socks5Error::Refused { code: 2, .. }),
        "{err}"
    );
}

/// SECURITY.md "Memory and time a peer controls are bounded": one client process holds at
/// most `limits.max_tunnels_per_client` tunnels, however many it asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_per_client_are_capped() {
    let echo = echo_server().await;
    let mut setup = Setup::new(&[echo]);
    setup.gateway.limits.max_tunnels_per_client = 2;
    let gw = start_gateway(setup.gateway.clone()).await;
    let mut cfg = setup.client.clone();
    cfg.gateways[0].tunnels = 5;
    cfg.gateways[0].replicas[0].url.port = gw.handle.tunnel_addr().port();
    let acl = sgw::acl::Acl::load(&cfg.acl_file, cfg.default_policy).unwrap();
    let client = sgw::client::Client::new(cfg, acl).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(client.run(stop.clone()));
    let stats = gw.handle.stats();
    eventually("three tunnels refused", || {
        stats.tunnels_rejected.load(Relaxed) >= 3
    })
    .await;
    let clients = gw.handle.clients("gw1");
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].tunnels, 2);
    // The two it has carry traffic.
    assert_eq!(
        echo_once(gw.handle.dest_addr("dest1").unwrap(), b"ok")
            .await
            .unwrap(),
        b"ok"
    );
    stop.cancel();
    let _ = tokio::time::timeout(WAIT, task).await;
}

/// SECURITY.md "Revoked tokens" / CONFIG limits: a configuration whose CONFIG clients would
/// refuse, or with more destinations than `limits.max_destinations`, is refused whole and
/// connected clients keep the list they have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_configurations_are_refused_before_they_reach_clients() {
    let echo = echo_server().await;
    let h = Harness::start(&[echo], |s| s.gateway.limits.max_destinations = 20_000).await;
    let base = h.gw.handle.tenant_config("gw1").unwrap();
    let reverse = |n: usize, name_len: usize| {
        let mut t = base.clone();
        for i in 0..n {
            let mut d = base.destinations[0].clone();
            d.id = format!("r{i}");
            d.reverse = true;
            d.local_port = 20_000 + (i % 40_000) as u16;
            d.cloud_port = 0;
            d.ip = format!("{}.example", "h".repeat(name_len));
            t.destinations.push(d);
        }
        t
    };
    // ~6,000 destinations with long names: a CONFIG of several MiB.
    let err = h.gw.handle.apply(reverse(6_000, 200)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("over the protocol's limit of 1 MiB"),
        "{err}"
    );
    assert_eq!(
        h.gw.handle.tenant_config("gw1").unwrap().destinations.len(),
        1
    );
    // Within the CONFIG limit still works.
    let ok = h.gw.handle.apply(reverse(10, 10)).await;
    assert!(ok.is_ok(), "{ok:?}");
    // Still connected, still serving.
    assert_eq!(echo_once(h.cloud(0), b"fine").await.unwrap(), b"fine");
    assert_eq!(h.client.handle.stats().tunnel_connects.load(Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_per_gateway_id_are_capped() {
    let echo = echo_server().await;
    let h = Harness::start(&[echo], |s| s.gateway.limits.max_destinations = 3).await;
    let base = h.gw.handle.tenant_config("gw1").unwrap();
    let mut t = base.clone();
    for i in 0..3 {
        let mut d = base.destinations[0].clone();
        d.id = format!("r{i}");
        d.reverse = true;
        d.local_port = 20_000 + i;
        d.cloud_port = 0;
        t.destinations.push(d);
    }
    let err = h.gw.handle.apply(t).await.unwrap_err();
    assert!(
        err.to_string().contains("limits.max_destinations (3)"),
        "{err}"
    );
    assert_eq!(
        h.gw.handle.tenant_config("gw1").unwrap().destinations.len(),
        1
    );
}

/// SECURITY.md: spoofed-source UDP can't queue much while flows wait for a stream: each new
/// flow holds at most `udp_pending_buffer`, all flows at most `udp_buffer_total`, and the
/// count returns to zero when the flows end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_udp_is_bounded_per_flow_and_in_all() {
    let echo = echo_server().await;
    let mut setup = Setup::new(&[echo]);
    setup.gateway.limits.udp_pending_buffer = 2 * 1024;
    setup.gateway.limits.udp_buffer_total = 64 * 1024;
    let d = &mut setup.gateway.gateways[0].destinations[0];
    d.protocol = Protocol::Udp;
    d.timeout = Duration::from_secs(1);
    // No client connects: every flow waits for one, as behind a slow or absent client.
    let gw = start_gateway(setup.gateway.clone()).await;
    let target = gw.handle.dest_addr("dest1").unwrap();
    let stats = gw.handle.stats();
    let mut peak = 0;
    for _ in 0..100 {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..20 {
            s.send_to(&[9u8; 1000], target).await.unwrap();
        }
        peak = peak.max(stats.udp_queued.load(Relaxed));
    }
    eventually("datagrams over the budgets dropped", || {
        stats.udp.dropped.load(Relaxed) > 1000
    })
    .await;
    peak = peak.max(stats.udp_queued.load(Relaxed));
    assert!(peak <= 64 * 1024, "peak queued {peak}");
    assert!(peak > 0);
    // The flows give up (no client within the timeout) and take their bytes with them.
    eventually("queue emptied", || stats.udp_queued.load(Relaxed) == 0).await;
    // Empty datagrams are charged too (their queue slots): they can't queue for free.
    let dropped = stats.udp.dropped.load(Relaxed);
    let mut peak = 0;
    for _ in 0..100 {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..100 {
            s.send_to(&[], target).await.unwrap();
        }
        peak = peak.max(stats.udp_queued.load(Relaxed));
    }
    eventually("empty datagrams over the budgets dropped", || {
        stats.udp.dropped.load(Relaxed) > dropped + 5000
    })
    .await;
    assert!(peak <= 64 * 1024, "peak queued {peak}");
    eventually("queue emptied", || stats.udp_queued.load(Relaxed) == 0).await;
}

/// A client written against the wire protocol (no sgw client logic): it accepts a stream and
/// then never reads or writes. The gateway must not hold the caller forever (SECURITY.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_of_a_silent_client_are_released() {
    let echo = echo_server().await;
    let mut setup = Setup::new(&[echo]);
    setup.gateway.gateways[0].destinations[0].idle_timeout = Some(Duration::from_secs(1));
    let gw = start_gateway(setup.gateway.clone()).await;
    let (mux, mut events) = raw_client(&setup, &gw, "raw-peer").await;
    let mut caller = TcpStream::connect(gw.handle.dest_addr("dest1").unwrap())
        .await
        .unwrap();
    let inc = tokio::time::timeout(WAIT, events.incoming.recv())
        .await
        .expect("an OPEN in time")
        .unwrap();
    let _held = inc.accept().await.unwrap();
    caller.write_all(b"anyone there?").await.unwrap();
    let mut b = [0u8; 16];
    let got = tokio::time::timeout(WAIT, caller.read(&mut b))
        .await
        .expect("the gateway released the caller");
    assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    // Only that stream ended: the tunnel is still up.
    assert!(!mux.is_closed());
}

/// A caller that speaks first: its bytes reach a client that takes early data before that
/// client answers the OPEN, and a client that does not (an older one) only after it accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_first_bytes_go_with_the_open_only_to_a_client_that_takes_them() {
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for early in [true, false] {
        let gw = start_gateway(setup.gateway.clone()).await;
        let (mux, mut events) = raw_client_with(&setup, &gw, "raw-peer", early).await;
        let mut caller = TcpStream::connect(gw.handle.dest_addr("dest1").unwrap())
            .await
            .unwrap();
        caller.write_all(request).await.unwrap();
        let inc = tokio::time::timeout(WAIT, events.incoming.recv())
            .await
            .expect("an OPEN in time")
            .unwrap();
        if early {
            // Held for the client before it said a word about the stream.
            eventually("the request before the answer", || {
                mux.stats().buffered.load(Relaxed) == request.len() as u64
            })
            .await;
        }
        let s = inc.accept().await.unwrap();
        let mut got = Vec::new();
        while got.len() < request.len() {
            let b = tokio::time::timeout(WAIT, s.recv())
                .await
                .expect("the request in time")
                .unwrap()
                .expect("more of the request");
            got.extend_from_slice(&b);
        }
        assert_eq!(got, request);
        assert_eq!(
            mux.stats().protocol_errors.load(Relaxed),
            0,
            "early: {early}"
        );
        // Counted as early before it is counted as opened.
        let stats = gw.handle.stats();
        eventually("the stream counted", || {
            stats.streams_opened.load(Relaxed) == 1
        })
        .await;
        assert_eq!(stats.streams_early_data.load(Relaxed), u64::from(early));
        gw.stop.cancel();
    }
}

/// The OPEN of a caller's stream waits on the first of two raw clients' tunnels: which one
/// got it, and the stream.
async fn first_open(
    a: &mut sgw::mux::Events,
    b: &mut sgw::mux::Events,
) -> (usize, sgw::mux::Incoming) {
    let got = tokio::time::timeout(WAIT, async {
        tokio::select! {
            i = a.incoming.recv() => (0, i),
            i = b.incoming.recv() => (1, i),
        }
    })
    .await
    .expect("an OPEN in time");
    (got.0, got.1.expect("tunnel up"))
}

/// A tunnel lost while the gateway waits for the answer: the caller's stream is tried on
/// another client only when none of its bytes left, or a request could run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_early_bytes_are_never_sent_twice() {
    let echo = echo_server().await;
    let mut setup = Setup::new(&[echo]);
    // Longer than the test waits: a caller held for another answer would time the test out.
    setup.gateway.gateways[0].destinations[0].timeout = WAIT * 3;
    let gw = start_gateway(setup.gateway.clone()).await;
    let dest = gw.handle.dest_addr("dest1").unwrap();
    let request = b"INCR visits\r\n";

    // Nothing left yet: the stream moves to the other client, which gets the request.
    let (m0, mut e0) = raw_client_with(&setup, &gw, "raw-0", true).await;
    let (m1, mut e1) = raw_client_with(&setup, &gw, "raw-1", true).await;
    let muxes = [m0, m1];
    eventually("both clients registered", || {
        gw.handle.clients("gw1").len() == 2
    })
    .await;
    let mut caller = TcpStream::connect(dest).await.unwrap();
    let (first, _dropped) = first_open(&mut e0, &mut e1).await;
    muxes[first].close(sgw::proto::Reason::Shutdown, "test");
    let events = if first == 0 { &mut e1 } else { &mut e0 };
    let inc = tokio::time::timeout(WAIT, events.incoming.recv())
        .await
        .expect("tried on the other client")
        .unwrap();
    caller.write_all(request).await.unwrap();
    let s = inc.accept().await.unwrap();
    let got = tokio::time::timeout(WAIT, s.recv()).await.unwrap().unwrap();
    assert_eq!(got.as_deref(), Some(&request[..]));
    drop((s, caller, muxes, e0, e1));
    gw.stop.cancel();

    // The request went with the OPEN, and the tunnel broke before the answer: that client
    // may have run it, so the caller is reset instead of the request going elsewhere.
    let gw = start_gateway(setup.gateway.clone()).await;
    let dest = gw.handle.dest_addr("dest1").unwrap();
    let (n0, mut e0) = raw_client_with(&setup, &gw, "raw-2", true).await;
    let (n1, mut e1) = raw_client_with(&setup, &gw, "raw-3", true).await;
    let muxes = [n0, n1];
    eventually("both clients registered", || {
        gw.handle.clients("gw1").len() == 2
    })
    .await;
    let mut caller = TcpStream::connect(dest).await.unwrap();
    caller.write_all(request).await.unwrap();
    let (first, _held) = first_open(&mut e0, &mut e1).await;
    let stats = muxes[first].stats();
    eventually("the request held before the answer", || {
        stats.buffered.load(Relaxed) == request.len() as u64
    })
    .await;
    muxes[first].close(sgw::proto::Reason::Shutdown, "test");
    let got = tokio::time::timeout(WAIT, caller.read(&mut [0u8; 16]))
        .await
        .expect("the caller released, not held for another client");
    assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    let other = if first == 0 { &mut e1 } else { &mut e0 };
    assert!(
        other.incoming.try_recv().is_err(),
        "the request was offered to a second client"
    );
}

/// Replays the config reader's fuzz corpus: no panic, and a refusal names at least one error.
#[test]
fn fuzz_corpus_replay_config_read() {
    let at = Path::new("/nonexistent/sgw-fuzz/config.toml");
    for data in corpus("config_read") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Err(e) = sgw::config::ClientConfig::from_toml_env(at, text, Default::default()) {
            assert!(!e.0.is_empty());
        }
        if let Err(e) = sgw::config::GatewayConfig::from_toml_env(at, text, Default::default()) {
            assert!(!e.0.is_empty());
        }
    }
}

/// Replays the API-body fuzz corpus (fuzz/fuzz_targets/api_body.rs): every request answered in
/// time, none with a 5xx, every refusal with a reason.
#[tokio::test]
async fn fuzz_corpus_replay_api_body() {
    let (mut done, mut refused) = (0, 0);
    for data in corpus("api_body") {
        match api_fuzz::one(&data).await {
            Some(s) if s.is_success() => done += 1,
            Some(_) => refused += 1,
            None => {}
        }
    }
    // Both kinds of answer occur, so the replay reaches the handlers and their validation
    // (a minimized corpus keeps a few dozen of each).
    assert!(
        done >= 10 && refused >= 10,
        "{done} served, {refused} refused"
    );
}

/// SECURITY.md "Revoked tokens": rotating a gateway id's token closes the tunnels that came in
/// on the old one before the new configuration is pushed, so a client holding the old token
/// never sees the destinations (and their TLS material) added with the rotation. The client
/// here is a wire-protocol peer that keeps every CONFIG it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_closes_the_tunnel_before_the_new_config_is_pushed() {
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let (mux, events) = raw_client(&setup, &gw, "old-token-holder").await;
    let configs = events.config.clone();
    eventually("the first CONFIG", || configs.borrow().is_some()).await;

    let mut rotated = gw.handle.tenant_config("gw1").unwrap();
    rotated.token = sgw::config::Secret::new("rotated-token-0123456789");
    let mut added = rotated.destinations[0].clone();
    added.id = "added-with-the-rotation".into();
    added.cloud_port = 0;
    rotated.destinations.push(added);
    gw.handle.apply(rotated).await.unwrap();

    eventually("the old token's tunnel closed", || mux.is_closed()).await;
    let last = configs.borrow().clone().unwrap();
    assert!(
        !String::from_utf8_lossy(&last).contains("added-with-the-rotation"),
        "a tunnel on the revoked token was sent the new configuration"
    );
}

/// A HELLO as a test client sends it: `instance` and the `features` it lists.
fn test_hello(instance: &str, features: &[&str]) -> sgw::proto::Hello {
    sgw::proto::Hello {
        version: "0.1.0".into(),
        proto: [1, 1],
        hostname: "test".into(),
        env: "test".into(),
        instance: instance.into(),
        features: features.iter().map(|f| (*f).to_owned()).collect(),
    }
}

/// A client written against the wire protocol only (`sgw::tunnel` + `sgw::mux`, no client
/// logic), connected to `gw` with the setup's token: it does exactly what a test tells it.
async fn raw_client(
    setup: &Setup,
    gw: &RunningGateway,
    instance: &str,
) -> (sgw::mux::Mux, sgw::mux::Events) {
    raw_client_with(setup, gw, instance, false).await
}

/// [`raw_client`], listing `early_data` in its HELLO (and taking it) when `early`.
async fn raw_client_with(
    setup: &Setup,
    gw: &RunningGateway,
    instance: &str,
    early: bool,
) -> (sgw::mux::Mux, sgw::mux::Events) {
    let mut link = setup.client.gateways[0].clone();
    link.replicas[0].url.port = gw.handle.tunnel_addr().port();
    sgw::tls::install_crypto();
    let tls = sgw::tunnel::client_tls(&link.trust).unwrap();
    let features: &[&str] = match early {
        true => &[sgw::proto::FEATURE_EARLY_DATA],
        false => &[],
    };
    let hello = test_hello(instance, features);
    let (ws, _welcome) = sgw::tunnel::connect(&link, &link.replicas[0], None, &tls, &hello)
        .await
        .unwrap();
    let (r, w) = sgw::tunnel::split(ws);
    let cfg = sgw::mux::MuxConfig {
        role: sgw::mux::Role::Client,
        early_data: early,
        ..Default::default()
    };
    sgw::mux::Mux::start(r, w, cfg)
}

/// Deleting a gateway id closes its tunnels, and one still in its handshake at that moment
/// too: a HELLO sent after the delete gets no WELCOME onto the deleted id (whose token may be
/// why it was deleted), and the tunnel ends.
#[tokio::test]
async fn a_tunnel_in_its_handshake_when_its_gateway_id_is_deleted_is_refused() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let mut link = setup.client.gateways[0].clone();
    link.replicas[0].url.port = gw.handle.tunnel_addr().port();
    let mut ws = upgrade_only(&link)
        .await
        .expect("the upgrade is accepted while the id exists");
    // Upgraded on the id's token; now the operator deletes the id.
    gw.handle.remove(&link.gateway_id).await;
    let hello = test_hello("handshaking-through-a-delete", &[]);
    let hello = serde_json::to_vec(&hello).unwrap();
    let msg = sgw::tunnel::frame_message(&sgw::proto::Frame::Hello(hello.into()));
    ws.send(Message::Binary(msg)).await.unwrap();
    let mut frames = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(b) = m {
                let _ = sgw::proto::decode_message(&b, |f| frames.push(format!("{f:?}")));
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tunnel was not ended: {frames:?}");
    assert!(
        !frames.iter().any(|f| f.starts_with("WELCOME")),
        "a tunnel was welcomed onto a deleted gateway id: {frames:?}"
    );
    assert!(gw.handle.tenant_config(&link.gateway_id).is_none());
}

/// A connection from `from` (a loopback address of the test's choosing) to `to`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// Whether the gateway closes `s` soon (well before the handshake's own 10 s).
async fn closed_at_once(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Until its token is judged a tunnel connection is anyone's: strangers who open connections
/// and say nothing hold no more than `limits.max_pending_handshakes_per_source` from one
/// address (more are closed at once) and `limits.max_pending_handshakes` in all. With every
/// place taken a newcomer displaces the oldest stranger, so a client still gets in; a
/// registered tunnel holds no place.
#[tokio::test]
async fn silent_strangers_hold_only_so_many_tunnel_handshakes() {
    let echo = echo_server().await;
    let mut setup = Setup::new(&[echo]);
    setup.gateway.limits.max_pending_handshakes = 6;
    setup.gateway.limits.max_pending_handshakes_per_source = 4;
    let gw = start_gateway(setup.gateway.clone()).await;
    let tunnel = gw.handle.tunnel_addr();
    let pending = |n: usize| {
        let h = gw.handle.clone();
        move || h.handshakes_pending() == n
    };
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(connect_from("127.0.0.2", tunnel).await);
    }
    eventually("four handshakes pending", pending(4)).await;
    let mut fifth = connect_from("127.0.0.2", tunnel).await;
    assert!(closed_at_once(&mut fifth).await, "a fifth from one address");
    assert!(
        !closed_at_once(&mut first[0]).await,
        "the first four are kept until their handshake's deadline"
    );
    // A client from another address gets in, and once registered holds no place.
    let (mux, _events) = raw_client(&setup, &gw, "from-elsewhere").await;
    assert!(!mux.is_closed());
    eventually("the client's handshake released", pending(4)).await;
    let mut more = Vec::new();
    for _ in 0..2 {
        more.push(connect_from("127.0.0.3", tunnel).await);
    }
    eventually("every place taken", pending(6)).await;
    // Full of strangers: a newcomer takes the oldest one's place.
    let _newcomer = connect_from("127.0.0.4", tunnel).await;
    assert!(closed_at_once(&mut first[0]).await, "the oldest stranger");
    assert!(
        !closed_at_once(&mut more[0]).await,
        "a younger stranger stays"
    );
    eventually("still six", pending(6)).await;
    // And a client gets in while the strangers fill every place.
    let (again, _events) = raw_client(&setup, &gw, "through-the-strangers").await;
    assert!(!again.is_closed());
    assert!(gw.handle.stats().tunnels_rejected.load(Relaxed) >= 3);
    // The strangers leave; their places come back.
    drop((first, more, _newcomer));
    eventually("no handshake pending", pending(0)).await;
}

/// A hostile gateway's WELCOME names ids the client puts into every log line of the tunnel
/// and into `sgw status`: one with a line break (a forged log line) or of 300 KB (every line
/// that long) is refused, and the tunnel is not used.
#[tokio::test]
async fn a_welcome_that_would_forge_or_flood_log_lines_is_refused() {
    let setup = Setup::new(&[]);
    let tls = sgw::tunnel::server_tls(&setup.gateway.tls).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut link = setup.client.gateways[0].clone();
    link.replicas[0].url.port = listener.local_addr().unwrap().port();
    let connector = sgw::tunnel::client_tls(&link.trust).unwrap();
    let hello = test_hello("i", &[]);
    for (client_id, why) in [
        ("c1\nERROR forged line".to_owned(), "control character"),
        ("x".repeat(300_000), "over the limit"),
        ("c1".to_owned(), ""),
    ] {
        let welcome = sgw::proto::Welcome {
            client_id: client_id.clone(),
            gateway_id: link.gateway_id.clone(),
            proto: [1, 1],
            features: Vec::new(),
        };
        let (tls, listener) = (tls.clone(), &listener);
        let fake = async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (mut ws, (), _hello) = sgw::tunnel::accept(tcp, &tls, |_| Ok(())).await.unwrap();
            let config = bytes::Bytes::from_static(b"{\"destinations\":[]}");
            let _ = sgw::tunnel::welcome(&mut ws, &welcome, config).await;
            ws
        };
        let client = sgw::tunnel::connect(&link, &link.replicas[0], None, &connector, &hello);
        let (got, _ws) = tokio::time::timeout(WAIT, async { tokio::join!(client, fake) })
            .await
            .expect("the handshake ends in time");
        match (got, why) {
            (Ok((_, w)), "") => assert_eq!(w.client_id, client_id),
            (Ok((_, w)), _) => panic!("took a WELCOME naming {:?}", &w.client_id[..20]),
            (Err(e), why) => {
                let e = e.to_string();
                assert!(
                    !why.is_empty() && e.contains("bad WELCOME") && e.contains(why),
                    "{e}"
                );
                assert!(!e.contains('\n') && e.len() < 1024, "{e:.200}");
            }
        }
    }
}

/// A client joined to two gateway ids gives each a share of its window budget
/// (`limits.window_budget_per_gateway`): the callers of one (anyone who reaches its cloud
/// ports, or the gateway itself) stop at its share, and the other's callers are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateways_callers_cannot_use_up_the_clients_window_budget() {
    let echo = echo_server().await;
    let window = 256 * 1024u32;
    let mut setup = Setup::new(&[echo]);
    let mut b = setup.gateway.gateways[0].clone();
    b.id = "gw-b".into();
    b.token = sgw::config::Secret::new("token-of-gateway-b-0123456789");
    b.destinations[0].id = "dest-b".into();
    setup.gateway.gateways.push(b.clone());
    let mut link_b = setup.client.gateways[0].clone();
    link_b.gateway_id = b.id.clone();
    link_b.token = b.token.clone();
    setup.client.gateways.push(link_b);
    let l = &mut setup.client.limits;
    l.stream_window = window;
    l.max_stream_window = window;
    l.window_budget = 8 * u64::from(window);
    l.window_budget_per_gateway = 4 * u64::from(window);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client = start_client(setup.client.clone(), gw.handle.tunnel_addr()).await;
    let (a_port, b_port) = (
        gw.handle.dest_addr("dest1").unwrap(),
        gw.handle.dest_addr("dest-b").unwrap(),
    );
    // A caller that is served gets its byte back; a refused one is closed (maybe reset
    // before its byte is written, or before its connect returns).
    let hold = |to: SocketAddr| async move {
        let mut c = TcpStream::connect(to).await.ok()?;
        c.write_all(b"x").await.ok()?;
        let mut got = [0u8; 1];
        match tokio::time::timeout(WAIT, c.read(&mut got)).await {
            Ok(Ok(1)) => Some(c),
            _ => None,
        }
    };
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            hold(a_port)
                .await
                .unwrap_or_else(|| panic!("caller {i} of A")),
        );
    }
    assert!(
        hold(a_port).await.is_none(),
        "a fifth caller of A is over A's share, though the client has room"
    );
    for i in 0..4 {
        held.push(
            hold(b_port)
                .await
                .unwrap_or_else(|| panic!("caller {i} of B")),
        );
    }
    drop(held);
    client.stop.cancel();
}

/// A caller waiting for a client of a gateway id that is then deleted is let go at once, not
/// at the end of its destination's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_on_a_deleted_gateway_id_are_let_go_at_once() {
    let echo = echo_server().await;
    let mut setup = Setup::new(&[echo]);
    setup.gateway.gateways[0].destinations[0].timeout = Duration::from_secs(60);
    let gw = start_gateway(setup.gateway.clone()).await;
    let mut caller = TcpStream::connect(gw.handle.dest_addr("dest1").unwrap())
        .await
        .unwrap();
    caller.write_all(b"anyone there?").await.unwrap();
    let mut b = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), caller.read(&mut b))
            .await
            .is_err(),
        "the caller waits for a client"
    );
    let started = Instant::now();
    gw.handle.remove("gw1").await;
    let got = tokio::time::timeout(WAIT, caller.read(&mut b))
        .await
        .expect("let go");
    assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "let go after {:?}",
        started.elapsed()
    );
}

type ClientWs = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// TLS and the WebSocket upgrade with `link`'s gateway id and token, and no HELLO: a token
/// holder that stops there.
async fn upgrade_only(
    link: &sgw::config::GatewayLink,
) -> Result<ClientWs, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let replica = &link.replicas[0];
    sgw::tls::install_crypto();
    let tls = sgw::tunnel::client_tls(&link.trust).unwrap();
    let tcp = sgw::tunnel::reach(replica, None).await.unwrap();
    let tls_stream = sgw::tunnel::tls_handshake(replica, &tls, tcp)
        .await
        .unwrap();
    let mut req = replica.url.to_string().into_client_request().unwrap();
    let h = req.headers_mut();
    let bearer = format!("Bearer {}", link.token.expose());
    h.insert("authorization", HeaderValue::from_str(&bearer).unwrap());
    h.insert(
        sgw::tunnel::GATEWAY_ID_HEADER,
        HeaderValue::from_str(&link.gateway_id).unwrap(),
    );
    h.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(sgw::proto::SUBPROTOCOL),
    );
    tokio_tungstenite::client_async_with_config(req, tls_stream, Some(sgw::tunnel::ws_config()))
        .await
        .map(|(ws, _)| ws)
}

/// A token holder of one gateway id (hostile to the others) upgrades and stays silent before
/// HELLO: its id's handshakes hold at most `limits.max_pending_handshakes_per_gateway` places,
/// the next upgrade is answered 503, and a client of another id still gets a place.
#[tokio::test]
async fn one_ids_token_holders_cannot_take_every_handshake_place() {
    let echo = echo_server().await;
    let mut setup = Setup::new(&[echo]);
    setup.gateway.limits.max_pending_handshakes = 3;
    setup.gateway.limits.max_pending_handshakes_per_gateway = 2;
    let mut b = setup.gateway.gateways[0].clone();
    b.id = "gw-b".into();
    b.token = sgw::config::Secret::new("token-of-gateway-b-0123456789");
    b.destinations[0].id = "dest-b".into();
    setup.gateway.gateways.push(b.clone());
    let gw = start_gateway(setup.gateway.clone()).await;
    let mut link = setup.client.gateways[0].clone();
    link.replicas[0].url.port = gw.handle.tunnel_addr().port();
    let _silent = [
        upgrade_only(&link).await.unwrap(),
        upgrade_only(&link).await.unwrap(),
    ];
    let h = gw.handle.clone();
    eventually("two handshakes pending", move || {
        h.handshakes_pending() == 2
    })
    .await;
    match upgrade_only(&link).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 503);
            let body =
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
            assert!(
                body.contains("max_pending_handshakes_per_gateway"),
                "{body}"
            );
        }
        other => panic!("a third upgrade of one id: {:?}", other.map(|_| ())),
    }
    // The client's own words for it: busy, not a wrong URL.
    let tls = sgw::tunnel::client_tls(&link.trust).unwrap();
    let hello = test_hello("of-gw1", &[]);
    let e = sgw::tunnel::connect(&link, &link.replicas[0], None, &tls, &hello)
        .await
        .unwrap_err();
    let why = sgw::tunnel::why::explain(&e, &link, &link.replicas[0]);
    assert_eq!(why.code, "gateway_busy", "{}", why.sentence);
    // A client of the other id takes the last place and gets in.
    let mut link_b = link.clone();
    link_b.gateway_id = b.id.clone();
    link_b.token = b.token.clone();
    let (_ws, welcome) = sgw::tunnel::connect(&link_b, &link_b.replicas[0], None, &tls, &hello)
        .await
        .expect("the other id's client gets in");
    assert_eq!(welcome.gateway_id, "gw-b");
}

/// A handshake gives its gateway id's place back once its tunnel registers, and a probe
/// (`sgw doctor`) once it is answered: with one place per id, a probe and then two tunnels of
/// one id, one after the other, all get in.
#[tokio::test]
async fn an_ids_handshake_places_come_back_after_registering_and_after_a_probe() {
    let echo = echo_server().await;
    let mut setup = Setup::new(&[echo]);
    setup.gateway.limits.max_pending_handshakes_per_gateway = 1;
    let gw = start_gateway(setup.gateway.clone()).await;
    let mut link = setup.client.gateways[0].clone();
    link.replicas[0].url.port = gw.handle.tunnel_addr().port();
    let tls = sgw::tunnel::client_tls(&link.trust).unwrap();
    let probe = test_hello("probe", &[sgw::proto::FEATURE_PROBE]);
    // Kept open while the tunnels come up.
    let _probe = sgw::tunnel::connect(&link, &link.replicas[0], None, &tls, &probe)
        .await
        .expect("the probe is answered");
    let (a, _ea) = raw_client(&setup, &gw, "first").await;
    let (b, _eb) = raw_client(&setup, &gw, "second").await;
    assert!(!a.is_closed() && !b.is_closed());
}
