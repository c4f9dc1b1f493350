//! The client's veto end to end: rules, default policy, `from`, name resolution, private
//! destinations' ip_table_rules, live changes through the file and the admin API.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use common::*;
use sgw::config::IpTableRule;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// An echo server that counts the connections it accepted.
async fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            n2.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, n)
}

/// Connects from `src` (any 127.0.0.0/8 address) and checks an echo round trip.
/// Returns false if the tunnel refused the caller (reset or close, at connect or first read).
async fn echo_from(src: &str, cloud: SocketAddr) -> bool {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let r = async {
        let mut s = sock.connect(cloud).await?;
        s.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        tokio::time::timeout(WAIT, s.read_exact(&mut b))
            .await
            .map_err(std::io::Error::other)??;
        Ok::<_, std::io::Error>(b)
    }
    .await;
    match r {
        Ok(b) => {
            assert_eq!(&b, b"ping");
            true
        }
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::BrokenPipe
                ),
                "refusal must be a reset or close, got {e:?}"
            );
            false
        }
    }
}

async fn echo(cloud: SocketAddr) -> bool {
    echo_from("127.0.0.1", cloud).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_denied_by_rule_by_default_and_by_from() {
    let (a, a_n) = counting_echo().await;
    let (b, b_n) = counting_echo().await;
    let (c, c_n) = counting_echo().await;
    let (d, _) = counting_echo().await;
    let h = Harness::start(&[a, b, c, d], |s| {
        let acl = format!(
            "acl deny 127.0.0.1:{b}\n\
             acl allow 127.0.0.0/8:{a}\n\
             acl allow 127.0.0.1:{d} from 127.0.0.2\n\
             acl deny 127.0.0.1:{d} from 127.0.0.0/8\n",
            b = b.port(),
            a = a.port(),
            d = d.port()
        );
        std::fs::write(s.path("acl.list"), acl).unwrap();
    })
    .await;
    let stats = h.client.handle.stats();
    assert!(echo(h.cloud(0)).await, "allowed by rule 2");
    assert!(!echo(h.cloud(1)).await, "denied by rule 1");
    assert_eq!(stats.denied_by_rule.load(Relaxed), 1);
    assert!(!echo(h.cloud(2)).await, "no rule: default deny");
    assert_eq!(stats.denied_by_default.load(Relaxed), 1);
    assert!(
        !echo_from("127.0.0.1", h.cloud(3)).await,
        "denied by `from`"
    );
    assert_eq!(stats.denied_by_rule.load(Relaxed), 2);
    assert!(
        echo_from("127.0.0.2", h.cloud(3)).await,
        "allowed `from 127.0.0.2`"
    );
    // Denied endpoints were never dialled; the tunnel still carries traffic.
    assert_eq!((b_n.load(Relaxed), c_n.load(Relaxed)), (0, 0));
    assert_eq!(a_n.load(Relaxed), 1);
    assert!(echo(h.cloud(0)).await);
    assert_eq!(stats.streams_denied.load(Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_resolved_once_and_only_allowed_addresses_are_dialled() {
    let (s, s_n) = counting_echo().await;
    let h = Harness::start(&[s], |setup| {
        setup.gateway.gateways[0].destinations[0].ip = "localhost".into();
        // The name is allowed, but whatever it resolves to in 127.0.0.1 is denied first.
        let acl = format!("acl deny 127.0.0.1:\nacl allow localhost:{}\n", s.port());
        std::fs::write(setup.path("acl.list"), acl).unwrap();
    })
    .await;
    assert!(
        !echo(h.cloud(0)).await,
        "every address of localhost the server listens on is denied"
    );
    assert_eq!(
        s_n.load(Relaxed),
        0,
        "a denied address must never be dialled"
    );
    // An address rule matches the name's resolved address.
    let line = h
        .client
        .handle
        .acl_add(&format!("acl allow 127.0.0.1:{}", s.port()), Some(1))
        .unwrap();
    assert_eq!(line, 1);
    assert!(echo(h.cloud(0)).await);
    assert_eq!(s_n.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destination_drops_unlisted_callers_at_the_gateway() {
    let (s, s_n) = counting_echo().await;
    let h = Harness::start(&[s], |setup| {
        let d = &mut setup.gateway.gateways[0].destinations[0];
        d.private = true;
        d.ip_table_rules = vec![IpTableRule::new("127.0.0.2-127.0.0.3", "", "app1").unwrap()];
    })
    .await;
    assert!(!echo_from("127.0.0.1", h.cloud(0)).await);
    assert_eq!(h.gw.handle.stats().streams_denied.load(Relaxed), 1);
    assert_eq!(
        h.client.handle.stats().streams_opened.load(Relaxed)
            + h.client.handle.stats().streams_denied.load(Relaxed),
        0,
        "the gateway drops the caller before opening a stream"
    );
    assert!(echo_from("127.0.0.3", h.cloud(0)).await);
    assert_eq!(s_n.load(Relaxed), 1);
}

/// Polls (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_reload_atomically_and_bad_files_keep_the_old_rules() {
    let (s, _) = counting_echo().await;
    let h = Harness::start(&[s], |_| {}).await;
    let stats = h.client.handle.stats();
    let file = h.setup.path("acl.list");
    assert!(echo(h.cloud(0)).await);
    // An editor's save: new file renamed over the old one.
    let tmp = h.setup.path("acl.list.new");
    std::fs::write(&tmp, format!("acl deny :{}\n", s.port())).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    eventually("the reload", || stats.acl_reloads.load(Relaxed) >= 1).await;
    assert!(!echo(h.cloud(0)).await, "new rules apply to new streams");
    // A broken file is refused as a whole; the rules in force stay.
    std::fs::write(
        &file,
        format!("acl allow :{}\nacl allow nonsense\n", s.port()),
    )
    .unwrap();
    eventually("the refused reload", || {
        stats.acl_reload_failures.load(Relaxed) >= 1
    })
    .await;
    assert!(!echo(h.cloud(0)).await, "old rules still in force");
    assert_eq!(h.client.handle.acl().rules.len(), 1);
    assert_eq!(stats.acl_reloads.load(Relaxed), 1);
}

/// A caller without the admin token is refused from its headers: the body it announces is
/// never waited for, so trickling one cannot hold one of the endpoint's few connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_strangers_before_reading_a_body() {
    let (s, _) = counting_echo().await;
    let h = Harness::start(&[s], |_| {}).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = l.local_addr().unwrap();
    let backend = Arc::new(sgw::client::AdminBackend::new(h.client.handle.clone()));
    let access = sgw::admin::Access {
        token: Some(sgw::config::Secret::new("adm-secret-1")),
        hosts: Vec::new(),
    };
    tokio::spawn(sgw::admin::serve(
        l,
        backend,
        access,
        64,
        h.client.stop.clone(),
    ));
    for auth in ["", "Authorization: Bearer wrong\r\n"] {
        let mut t = tokio::net::TcpStream::connect(admin).await.unwrap();
        let head = format!(
            "POST /v1/acl HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        );
        t.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(WAIT, t.read(&mut buf))
            .await
            .expect("answered without the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    // The open calls stay open.
    let mut t = tokio::net::TcpStream::connect(admin).await.unwrap();
    t.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(WAIT, t.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sgw_acl_add_and_remove_through_the_admin_api() {
    let (s, _) = counting_echo().await;
    let h = Harness::start(&[s], |_| {}).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = l.local_addr().unwrap().to_string();
    let stop = h.client.stop.clone();
    let backend = Arc::new(sgw::client::AdminBackend::new(h.client.handle.clone()));
    let access = sgw::admin::Access {
        token: Some(sgw::config::Secret::new("adm-secret-0")),
        hosts: Vec::new(),
    };
    tokio::spawn(sgw::admin::serve(l, backend, access, 64, stop));
    let sgw = |args: &[&str]| {
        let out = Command::new(sgw_bin())
            .args(args)
            .args(["--admin", &admin])
            .env("SGW_ADMIN_TOKEN", "adm-secret-0")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(echo(h.cloud(0)).await);
    let rule = format!("acl deny 127.0.0.1:{}", s.port());
    let (code, out, err) = sgw(&["acl", "add", &rule, "--before", "1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("added at line 1"), "{out}");
    // Applied at once: the very next connection is refused.
    assert!(!echo(h.cloud(0)).await);
    let text = std::fs::read_to_string(h.setup.path("acl.list")).unwrap();
    assert!(
        text.lines().next() == Some(rule.as_str()),
        "written back: {text}"
    );
    assert!(text.contains("# sgw ACL"), "comments survive: {text}");
    let (code, out, _) = sgw(&["acl", "show"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(&format!("    1  {rule}")), "{out}");
    let (code, _, err) = sgw(&["acl", "add", "acl allow h:0"]);
    assert_eq!(code, Some(2), "bad rule is bad input");
    assert!(err.contains("bad port"), "{err}");
    let (code, _, err) = sgw(&["acl", "remove", "acl deny nothing:1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");
    let (code, out, err) = sgw(&["acl", "remove", &rule]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(echo(h.cloud(0)).await, "removal applies at once");
    assert!(!std::fs::read_to_string(h.setup.path("acl.list"))
        .unwrap()
        .contains(&rule));
    // Without a configured token, ACL calls are off (403), whoever asks.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = l.local_addr().unwrap();
    let backend = Arc::new(sgw::client::AdminBackend::new(h.client.handle.clone()));
    tokio::spawn(sgw::admin::serve(
        l,
        backend,
        sgw::admin::Access::default(),
        64,
        h.client.stop.clone(),
    ));
    let out = Command::new(sgw_bin())
        .args(["acl", "add", "acl allow :", "--admin", &open.to_string()])
        .env_remove("SGW_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
    // With an admin token, ACL calls need it; probes stay open.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let guarded = l.local_addr().unwrap();
    let backend = Arc::new(sgw::client::AdminBackend::new(h.client.handle.clone()));
    let token = sgw::config::Secret::new("adm-secret-1");
    let access = sgw::admin::Access {
        token: Some(token),
        hosts: Vec::new(),
    };
    tokio::spawn(sgw::admin::serve(
        l,
        backend,
        access,
        64,
        h.client.stop.clone(),
    ));
    let show = |tok: Option<&str>| {
        let mut c = Command::new(sgw_bin());
        c.args(["acl", "show", "--admin", &guarded.to_string()]);
        match tok {
            Some(t) => c.env("SGW_ADMIN_TOKEN", t),
            None => c.env_remove("SGW_ADMIN_TOKEN"),
        };
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = show(None);
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");
    assert_eq!(show(Some("wrong")).0, Some(1));
    assert_eq!(show(Some("adm-secret-1")).0, Some(0));
    let (st, body) = sgw::admin::client::call(guarded, hyper::Method::GET, "/healthz", None, None)
        .await
        .unwrap();
    assert_eq!((st, body.as_str()), (200, "ok\n"));
}

#[test]
fn acl_check_and_lint_commands() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("acl.list");
    std::fs::write(
        &f,
        "acl deny 127.254.169.254:\nacl allow 127.1.0.0/16:8000-8999\nacl allow 127.2.0.8:3389 during mon-fri 08:00-18:00\nacl allow localhost:80/api from 127.0.0.0/8\nacl allow 127.1.2.3:8080\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(sgw_bin())
            .args(["acl"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let file = f.to_str().unwrap();
    let (code, out) = run(&["check", "--file", file, "127.1.2.3:8080"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with("allow rule ") && out.contains("acl.list:2"),
        "{out}"
    );
    let (code, out) = run(&["check", "--file", file, "127.254.169.254:80"]);
    assert_eq!(
        (code, out.starts_with("deny rule ")),
        (Some(3), true),
        "{out}"
    );
    let (code, out) = run(&["check", "--file", file, "127.9.9.9:1"]);
    assert_eq!(code, Some(3));
    assert!(out.starts_with("deny default policy"), "{out}");
    let (code, out) = run(&[
        "check",
        "--file",
        file,
        "127.2.0.8:3389",
        "--at",
        "sat 10:00",
    ]);
    assert_eq!(code, Some(3), "{out}");
    let (code, out) = run(&[
        "check",
        "--file",
        file,
        "127.2.0.8:3389",
        "--at",
        "tue 10:00",
    ]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&[
        "check",
        "--file",
        file,
        "localhost:80/api/x",
        "--from",
        "127.0.0.5",
        "--no-resolve",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("acl.list:4"), "{out}");
    let (code, _) = run(&[
        "check",
        "--file",
        file,
        "localhost:80/other",
        "--from",
        "127.0.0.5",
        "--no-resolve",
    ]);
    assert_eq!(code, Some(3));
    let (code, out) = run(&["check", "--file", file, "nocolon"]);
    assert_eq!(code, Some(2), "{out}");
    let (code, out) = run(&["lint", "--file", file]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("acl.list:5: warning:") && out.contains("can never match: line 2"),
        "{out}"
    );
    std::fs::write(&f, "acl allow ok:1\nacl allow bad\nacl maybe x:1\n").unwrap();
    let (code, out) = run(&["lint", "--file", file]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("acl.list:2:11:") && out.contains("acl.list:3:5:"),
        "{out}"
    );
}

/// The fuzz corpus for the ACL parser, replayed: never a panic, and the index agrees with the
/// top-down walk on whatever parses.
#[test]
fn acl_fuzz_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/acl_parse");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        if let Ok(acl) = sgw::acl::Acl::parse("f", &text, sgw::config::Policy::Deny) {
            for (h, p) in [
                ("10.1.2.3", 8000u16),
                ("x.db.corp.example", 5432),
                ("2001:db8::9", 443),
            ] {
                let r = sgw::acl::Request::new(h, p).path("/my/api/v2");
                assert_eq!(acl.check(&r), acl.check_naive(&r));
            }
        }
        n += 1;
    }
    assert!(n >= 3);
}
