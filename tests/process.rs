//! Tests with real `sgw` processes: what an operator sees in logs, crash and restart.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_is_refused_logged_plainly_and_backed_off() {
    let setup = Setup::new(&[]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = setup.path("client.toml");
    std::fs::write(setup.path("bad-token"), "wrong-token-value\n").unwrap();
    set_toml(&client_toml, "token_file", "\"bad-token\"");
    set_toml(
        &client_toml,
        "url",
        &format!(
            "\"wss://localhost:{}/tunnel\"",
            gw.handle.tunnel_addr().port()
        ),
    );
    let p = Proc::spawn(&["client", "--config", client_toml.to_str().unwrap()]);
    let line = p.wait_line("reason=token_rejected").await;
    assert!(line.contains("ERROR"), "{line}");
    // With reconnect.initial = 1s, two tunnel slots retry at most a few times in 3 s.
    let before = gw.handle.stats().tunnels_rejected.load(Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = gw.handle.stats().tunnels_rejected.load(Relaxed) - before;
    assert!(
        during <= 6,
        "{during} attempts in 3 s is a tight reconnect loop"
    );
    assert!(during >= 1, "the client must keep retrying");
    assert_eq!(gw.handle.stats().tunnels_accepted.load(Relaxed), 0);
    assert!(
        !p.all().contains("wrong-token-value"),
        "token leaked into logs:\n{}",
        p.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_and_restarted_client_reconnects() {
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let gw_toml = setup.path("gateway.toml");
    let (gw, tunnel_addr, cloud) = gateway_process(&gw_toml).await;
    let client = start_client(setup.client.clone(), tunnel_addr).await;
    assert_eq!(echo_once(cloud, b"before").await.unwrap(), b"before");

    drop(gw); // SIGKILL: no go-away, the client sees the connection die
    let mut st = client.handle.status();
    tokio::time::timeout(WAIT, st.wait_for(|s| s.tunnels_up == 0))
        .await
        .unwrap()
        .unwrap();

    // Same addresses as before, so the client's config still points at it.
    set_toml(&gw_toml, "listen", &format!("\"{tunnel_addr}\""));
    set_toml(&gw_toml, "cloud_port", &cloud.port().to_string());
    let _gw = Proc::spawn(&["gateway", "--config", gw_toml.to_str().unwrap()]);
    tokio::time::timeout(WAIT, st.wait_for(|s| s.tunnels_up == 2))
        .await
        .expect("client reconnected")
        .unwrap();
    assert_eq!(
        echo_once(cloud, b"after restart").await.unwrap(),
        b"after restart"
    );
    assert!(client.handle.stats().tunnel_connects.load(Relaxed) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_load_and_one_dying_loses_nothing_new() {
    let echo = echo_server().await;
    let h = Harness::start(&[echo], |s| s.client.gateways[0].tunnels = 1).await;
    let client_toml = h.setup.path("client.toml");
    set_toml(
        &client_toml,
        "url",
        &format!(
            "\"wss://localhost:{}/tunnel\"",
            h.gw.handle.tunnel_addr().port()
        ),
    );
    set_toml(&client_toml, "tunnels", "1");
    let second = Proc::spawn(&["client", "--config", client_toml.to_str().unwrap()]);
    let deadline = Instant::now() + WAIT;
    while h.gw.handle.clients("gw1").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "second client never joined:\n{}",
            second.all()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..20 {
        let msg = format!("spread {i}");
        assert_eq!(
            echo_once(h.cloud(0), msg.as_bytes()).await.unwrap(),
            msg.as_bytes()
        );
    }
    let clients = h.gw.handle.clients("gw1");
    let opened: Vec<u64> = clients.iter().map(|c| c.streams_opened).collect();
    assert!(
        opened.iter().all(|n| *n >= 5),
        "connections not spread: {opened:?}"
    );

    drop(second); // SIGKILL one client
                  // Once the gateway has seen the tunnel close. A caller in the moment before that may be
                  // reset: its first bytes went out behind the OPEN on the dead tunnel, and the gateway
                  // never sends a caller's bytes twice (docs/PROTOCOL.md, "Early data").
    let deadline = Instant::now() + WAIT;
    while h.gw.handle.clients("gw1").len() != 1 {
        assert!(Instant::now() < deadline, "dead client still registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..20 {
        let msg = format!("after loss {i}");
        assert_eq!(
            echo_once(h.cloud(0), msg.as_bytes()).await.unwrap(),
            msg.as_bytes(),
            "connection {i} after losing a client"
        );
    }
}

#[test]
fn config_check_reports_every_error_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("client.toml");
    std::fs::write(&f, "bogus = 1\n[[gateway]]\nurl = \"http://x\"\ngateway_id = \"g\"\ntoken = \"t\"\ntunnels = 0\n").unwrap();
    let out = Command::new(sgw_bin())
        .args(["config", "check", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client.toml:1:1: bogus: unknown key"), "{err}");
    assert!(err.contains("client.toml:3:7: gateway[0].url:"), "{err}");
    assert!(
        err.contains("client.toml:6:11: gateway[0].tunnels: 0 is out of range 1..=16"),
        "{err}"
    );
    // The client refuses to start with the same messages.
    let out = Command::new(sgw_bin())
        .args(["client", "--config", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus: unknown key"));
}

#[test]
fn init_writes_configs_that_check_clean() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(sgw_bin())
        .args([
            "init",
            dir.path().to_str().unwrap(),
            "--expose",
            "127.0.0.1:6379",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["gateway.toml", "client.toml"] {
        let out = Command::new(sgw_bin())
            .args(["config", "check"])
            .arg(dir.path().join(f))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
    }
    // client.toml copied alone to an on-prem host still names this host: check says so.
    let onprem = tempfile::tempdir().unwrap();
    for f in ["client.toml", "acl.list", "ca.pem", "token", "admin.token"] {
        std::fs::copy(dir.path().join(f), onprem.path().join(f)).unwrap();
    }
    let out = Command::new(sgw_bin())
        .args(["config", "check"])
        .arg(onprem.path().join("client.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: gateway[0].url: wss://localhost:9000/tunnel points at this host")
            && err.contains("sgw init --public"),
        "{err}"
    );
    let acl = std::fs::read_to_string(dir.path().join("acl.list")).unwrap();
    assert!(acl.contains("acl allow 127.0.0.1:6379"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("gateway.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private key readable by others");
    // Running init again must not overwrite anything.
    let out = Command::new(sgw_bin())
        .args(["init", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_serves_the_builtin_service_through_the_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let qs = dir.path().join("qs");
    let mut child = Command::new(sgw_bin())
        .args(["quickstart", "--dir", qs.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let url = loop {
        let l = rx
            .recv_timeout(WAIT)
            .expect("quickstart printed its address");
        if let Some(u) = l.trim().strip_prefix("try: curl ") {
            break u.to_owned();
        }
    };
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(resp.contains("came through the tunnel"), "{resp}");
    // Still half-open (our write side): quickstart's short drain grace must not hold Ctrl-C up.
    // SIGTERM stops it, with exit code 0, promptly.
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denial_is_one_log_line_and_sighup_reloads() {
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = point_client_at(&setup, gw.handle.tunnel_addr());
    let acl = setup.path("acl.list");
    std::fs::write(&acl, format!("# ops\nacl deny 127.0.0.1:{}\n", echo.port())).unwrap();
    let p = Proc::spawn(&["client", "--config", client_toml.to_str().unwrap()]);
    let admin = field(&p.wait_line("admin endpoint listening").await, "admin.addr");
    p.wait_line("tunnel up").await;
    let cloud = gw.handle.dest_addr("dest1").unwrap();
    let r = echo_once(cloud, b"x").await;
    assert!(!matches!(&r, Ok(b) if !b.is_empty()), "denied: {r:?}");
    let line = p.wait_line("stream denied").await;
    assert!(line.contains("WARN"), "{line}");
    for want in [
        "reason=acl_rule",
        "acl.line=2",
        &format!("acl.rule=\"acl deny 127.0.0.1:{}\"", echo.port()),
        "dest.id=dest1",
        "caller.addr=127.0.0.1:",
        &format!("dest.addr=127.0.0.1:{}", echo.port()),
    ] {
        assert!(line.contains(want), "{want} missing in: {line}");
    }
    // The warning also reached the gateway (for its clientLogs API).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let logs = gw.handle.client_logs("gw1");
        if let Some(l) = logs.iter().find(|l| l.message.contains("stream denied")) {
            let client = &l.client_id;
            assert_eq!(l.level, "warn");
            assert!(l.message.contains("acl.line=2"), "{}", l.message);
            assert!(client.starts_with("gw1_"), "{client}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no forwarded log: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGHUP: a rewritten file applies without a restart.
    std::fs::write(&acl, format!("acl allow 127.0.0.1:{}\n", echo.port())).unwrap();
    let pid = p.child.id().to_string();
    signal("-HUP", &pid);
    p.wait_line("ACL reloaded").await;
    assert_eq!(echo_once(cloud, b"after").await.unwrap(), b"after");
    // The admin endpoint the log named answers for operators (the token from the config).
    let out = Command::new(sgw_bin())
        .args(["acl", "show", "--admin", &admin, "--config"])
        .arg(&client_toml)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("    1  acl allow 127.0.0.1:{}", echo.port())),
        "{shown}"
    );
}

/// A cloud caller can make the client log: every refusal is a line. Past
/// `log_lines_per_second` for that statement the rest are counted, not written (nor forwarded
/// to the gateway), and a summary line names the statement; SIGHUP changes the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_held_to_log_lines_per_second() {
    use sgw::admin::client::call;
    const LIMIT: usize = 5;
    const CALLERS: usize = 200;
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = point_client_at(&setup, gw.handle.tunnel_addr());
    prepend_toml(&client_toml, &format!("log_lines_per_second = {LIMIT}"));
    let acl = setup.path("acl.list");
    std::fs::write(&acl, format!("acl deny 127.0.0.1:{}\n", echo.port())).unwrap();
    let (p, admin) = client_up(&client_toml).await;
    let metrics = || async move {
        let (st, m) = call(admin, hyper::Method::GET, "/metrics", None, None)
            .await
            .unwrap();
        assert_eq!(st, 200);
        m
    };
    // `workers` unset is "auto": half this host's CPUs, at least one, said in the log and
    // shown beside the limits.
    let cpus = std::thread::available_parallelism().unwrap().get();
    let auto = (cpus / 2).max(1);
    let line = p.wait_line("worker threads").await;
    assert_eq!(field(&line, "workers"), auto.to_string(), "{line}");
    assert_eq!(field(&line, "workers.setting"), "auto", "{line}");
    assert_eq!(
        sample(&metrics().await, "sgw_client_limit{limit=\"workers\"}"),
        auto as i64
    );
    let denied_metric = "sgw_client_streams_denied_total{reason=\"acl_rule\"}";
    let wait_denied = |n: i64| async move {
        let deadline = Instant::now() + WAIT;
        loop {
            let m = metrics().await;
            if sample(&m, denied_metric) >= n {
                return m;
            }
            assert!(Instant::now() < deadline, "fewer than {n} denials:\n{m}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let cloud = gw.handle.dest_addr("dest1").unwrap();
    let started = Instant::now();
    refuse_callers(cloud, CALLERS).await;
    let m = wait_denied(CALLERS as i64).await;
    // A second's worth at once, then LIMIT a second.
    let allowed = LIMIT + (started.elapsed().as_secs_f64() * LIMIT as f64).ceil() as usize;
    let summary = p.wait_line("log lines held back").await;
    let shown = denied_lines(&p);
    assert!(
        (1..=allowed).contains(&shown) && shown < CALLERS / 2,
        "{shown} refusal lines written for {CALLERS} callers (at most {allowed}):\n{}",
        p.all()
    );
    assert!(
        summary.contains("WARN") && summary.contains("src/client/admit.rs:"),
        "{summary}"
    );
    let suppressed = sample(&m, "sgw_log_lines_suppressed_total");
    assert!(
        suppressed >= (CALLERS - shown) as i64,
        "{suppressed} counted as held back, {shown} of {CALLERS} written"
    );
    assert_eq!(
        sample(&m, "sgw_client_limit{limit=\"log_lines_per_second\"}"),
        LIMIT as i64
    );
    assert_eq!(
        sample(&m, "sgw_client_limit{limit=\"log_lines_per_second_total\"}"),
        300
    );
    // What is held back is not forwarded either.
    let forwarded = gw
        .handle
        .client_logs("gw1")
        .iter()
        .filter(|l| l.message.contains("stream denied"))
        .count();
    assert!(forwarded <= allowed, "{forwarded} refusals forwarded");
    // SIGHUP with no limit: every refusal is a line again.
    set_toml(&client_toml, "log_lines_per_second", "0");
    let pid = p.child.id().to_string();
    signal("-HUP", &pid);
    let deadline = Instant::now() + WAIT;
    while sample(
        &metrics().await,
        "sgw_client_limit{limit=\"log_lines_per_second\"}",
    ) != 0
    {
        assert!(
            Instant::now() < deadline,
            "the reload did not lift the limit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = denied_lines(&p);
    for _ in 0..50 {
        let _ = echo_once(cloud, b"x").await;
    }
    wait_denied(CALLERS as i64 + 50).await;
    let deadline = Instant::now() + WAIT;
    while denied_lines(&p) < before + 50 {
        assert!(
            Instant::now() < deadline,
            "{} of 50 refusals written without a limit",
            denied_lines(&p) - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stderr that nobody reads (a stalled journald) stops no stream: lines wait in a queue of
/// `log_buffer_lines`, the rest are dropped and counted, and the log goes on once stderr is
/// read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_stops_no_stream() {
    use sgw::admin::client::call;
    const BUFFER: usize = 64;
    // A refusal is a line of about 250 bytes: far more than a pipe holds (64 KiB).
    const CALLERS: usize = 1500;
    let (refused, served) = (echo_server().await, echo_server().await);
    let setup = Setup::new(&[refused, served]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = point_client_at(&setup, gw.handle.tunnel_addr());
    prepend_toml(
        &client_toml,
        &format!(
            "log_lines_per_second = 0\nlog_lines_per_second_total = 0\nlog_buffer_lines = {BUFFER}"
        ),
    );
    std::fs::write(
        setup.path("acl.list"),
        format!(
            "acl deny 127.0.0.1:{}\nacl allow 127.0.0.1:{}\n",
            refused.port(),
            served.port()
        ),
    )
    .unwrap();
    let (p, admin) = client_up(&client_toml).await;
    p.pause_reading();
    let (deny, allow) = (
        gw.handle.dest_addr("dest1").unwrap(),
        gw.handle.dest_addr("dest2").unwrap(),
    );
    refuse_callers(deny, CALLERS).await;
    let served = tokio::time::timeout(Duration::from_secs(5), echo_once(allow, b"still served"))
        .await
        .expect("a permitted stream waited 5 s: the client is stuck");
    assert_eq!(served.unwrap(), b"still served");
    let (st, m) = call(admin, hyper::Method::GET, "/metrics", None, None)
        .await
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(
        sample(&m, "sgw_client_limit{limit=\"log_buffer_lines\"}"),
        BUFFER as i64
    );
    let dropped = sample(&m, "sgw_log_lines_dropped_total");
    assert!(dropped > 0, "no line dropped with stderr unread");
    // Read again, the log goes on: a line written after the stall arrives.
    p.resume_reading();
    let pid = p.child.id().to_string();
    signal("-HUP", &pid);
    p.wait_line("configuration reloaded").await;
    let written = denied_lines(&p);
    assert!(
        written >= BUFFER && written as i64 + dropped >= CALLERS as i64,
        "{written} refusal lines written and {dropped} dropped of {CALLERS}"
    );
}

/// What is queued for stderr when the process stops is written before it exits: with stderr
/// unread, a stopping client waits (at most `FLUSH_WITHIN`) for its queue, and once stderr is
/// read again every line arrives, the last one included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queued_log_is_written_before_exit() {
    // Refusal lines of about 250 bytes: more than the pipe holds, fewer than the queue does.
    const CALLERS: usize = 1000;
    let refused = echo_server().await;
    let setup = Setup::new(&[refused]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = point_client_at(&setup, gw.handle.tunnel_addr());
    prepend_toml(
        &client_toml,
        "log_lines_per_second = 0\nlog_lines_per_second_total = 0",
    );
    std::fs::write(
        setup.path("acl.list"),
        format!("acl deny 127.0.0.1:{}\n", refused.port()),
    )
    .unwrap();
    let (mut p, _admin) = client_up(&client_toml).await;
    p.pause_reading();
    let deny = gw.handle.dest_addr("dest1").unwrap();
    refuse_callers(deny, CALLERS).await;
    signal("-TERM", &p.child.id().to_string());
    // Without the flush the client would be gone by now, its queue with it. With it, the
    // client waits for stderr, up to a second.
    let alive_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < alive_until {
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "the client exited with its log lines still queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.resume_reading();
    let status = wait_exit(&mut p.child).await;
    assert_eq!(status.code(), Some(0), "{}", p.all());
    p.wait_line("client stopped").await;
    let written = denied_lines(&p);
    assert_eq!(written, CALLERS, "refusal lines written");
}

/// `admin_socket`: the admin endpoint on a Unix socket that only the client's user and root
/// can use, without a token; another local user is refused by the kernel-named user even when
/// the file's mode would let it in, and a socket file left by a killed client is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_serves_this_user_without_a_token_and_refuses_others() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = point_client_at(&setup, gw.handle.tunnel_addr());
    let text = std::fs::read_to_string(&client_toml).unwrap();
    // No admin token: only the socket can take the ACL change below.
    let text = text.replace("admin_token_file = \"admin.token\"\n", "");
    assert!(!text.contains("admin_token"), "{text}");
    std::fs::write(&client_toml, text).unwrap();
    prepend_toml(&client_toml, "admin_socket = \"admin.sock\"");
    let sock = setup.path("admin.sock");
    let spawn = || Proc::spawn(&["client", "--config", client_toml.to_str().unwrap()]);
    let mut p = spawn();
    p.wait_line("admin socket listening").await;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let sgw = |args: &[&str]| {
        let out = Command::new(sgw_bin())
            .args(args)
            .env_remove("SGW_ADMIN_TOKEN")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    // --config picks the socket; no token goes with it, and none is needed.
    let rule = format!("acl allow 127.0.0.1:{}", echo.port());
    let cfg = client_toml.to_str().unwrap();
    let (code, out) = sgw(&["acl", "add", &rule, "--config", cfg]);
    assert_eq!(code, Some(0), "{out}");
    let unix = format!("unix:{}", sock.display());
    let (code, out) = sgw(&["acl", "show", "--admin", &unix]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&rule), "{out}");
    // The TCP endpoint refuses the same call: there is no token to give.
    let admin = field(&p.wait_line("admin endpoint listening").await, "admin.addr");
    let (code, out) = sgw(&["acl", "show", "--admin", &admin]);
    assert_eq!(code, Some(1), "{out}");
    if is_root() {
        // Open the file and its directory to everyone: the user check alone keeps them out.
        std::fs::set_permissions(setup.path(""), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = Command::new(sgw_bin())
            .args(["health", "--admin", &unix])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let line = p.wait_line("only this process's user and root").await;
        assert!(
            line.contains("peer.uid=65534") && line.contains("reason=\"peer_user\""),
            "{line}"
        );
    } else {
        eprintln!("skipped the other-user half: needs root to run a command as another user");
    }
    // A client killed with its socket file left behind starts again on the same path.
    kill9(&mut p.child).await;
    assert!(sock.exists());
    p = spawn();
    p.wait_line("admin socket listening").await;
    let (code, out) = sgw(&["health", "--admin", &unix]);
    assert_eq!(code, Some(0), "{out}");
    // A live client's socket is not taken over by a second one.
    let second = spawn();
    let line = second.wait_line("admin_socket").await;
    assert!(
        line.contains("another process holds") && line.contains("admin.sock.lock"),
        "{line}"
    );
    let (code, out) = sgw(&["health", "--admin", &unix]);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn config_check_catches_what_only_the_gateway_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    sgw::init::write(dir.path(), &sgw::init::InitOptions::default()).unwrap();
    let f = dir.path().join("gateway.toml");
    let src = std::fs::read_to_string(&f).unwrap();
    std::fs::write(
        &f,
        format!("egress_allow = [\"127.0.0.1:80\", \"127.0.0.0/33:443\"]\n{src}"),
    )
    .unwrap();
    let out = Command::new(sgw_bin())
        .args(["config", "check", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("egress_allow:2:"), "{err}");
}

/// The gateway's admin endpoint, as an operator scrapes it from the real process: its limits,
/// its tunnels and bytes; status needs the admin token; the ACL calls say the veto is the
/// client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_admin_endpoint_shows_limits_tunnels_and_bytes() {
    use sgw::admin::client::call;
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let gw_toml = setup.path("gateway.toml");
    // sgw init turns the admin endpoint on, with the API's token (api.token).
    std::fs::write(setup.path("api.token"), "gw-admin-secret\n").unwrap();
    let text = std::fs::read_to_string(&gw_toml).unwrap();
    std::fs::write(
        &gw_toml,
        format!(
            "admin_socket = \"gw-admin.sock\"\nworkers = 7\n{text}\n[limits]\nmax_destinations = 7\n\
             [[gateways]]\nid = \"open1\"\nsecurity_token = \"open-token\"\nenf_tok_sec = false\n"
        ),
    )
    .unwrap();
    let (gw, tunnel_addr, cloud) = gateway_process(&gw_toml).await;
    let admin: std::net::SocketAddr = field(
        &gw.wait_line("admin endpoint listening").await,
        "admin.addr",
    )
    .parse()
    .unwrap();
    let get = |path: &'static str, token: Option<&'static str>| async move {
        call(admin, hyper::Method::GET, path, None, token)
            .await
            .unwrap()
    };
    let (st, m) = get("/metrics", None).await;
    assert_eq!(st, 200);
    assert_eq!(
        sample(&m, "sgw_gateway_limit{limit=\"max_destinations\"}"),
        7
    );
    assert_eq!(
        sample(&m, "sgw_gateway_limit{limit=\"max_tunnels_per_client\"}"),
        16
    );
    assert_eq!(
        sample(&m, "sgw_gateway_limit{limit=\"max_lookups_per_gateway\"}"),
        32
    );
    assert_eq!(sample(&m, "sgw_gateway_limit{limit=\"max_lookups\"}"), 128);
    assert_eq!(
        sample(&m, "sgw_gateway_limit{limit=\"max_pending_handshakes\"}"),
        512
    );
    assert_eq!(
        sample(
            &m,
            "sgw_gateway_limit{limit=\"max_pending_handshakes_per_source\"}"
        ),
        64
    );
    assert_eq!(sample(&m, "sgw_gateway_tunnel_handshakes_pending"), 0);
    // `workers = 7`: the runtime the gateway runs on has seven, whatever the host's CPUs.
    assert_eq!(sample(&m, "sgw_gateway_limit{limit=\"workers\"}"), 7);
    let line = gw.wait_line("worker threads").await;
    assert_eq!(field(&line, "workers"), "7", "{line}");
    assert_eq!(field(&line, "workers.setting"), "set", "{line}");
    // An id whose token is not enforced is its only credential: named only to a scrape with
    // the admin token.
    assert!(
        m.contains("sgw_gateway_tunnels_up{gateway=\"gw1\"} 0"),
        "{m}"
    );
    assert!(!m.contains("open1"), "{m}");
    let (st, all) = get("/metrics", Some("gw-admin-secret")).await;
    assert_eq!(st, 200);
    assert!(
        all.contains("sgw_gateway_tunnels_up{gateway=\"open1\"} 0"),
        "{all}"
    );

    let client = start_client(setup.client.clone(), tunnel_addr).await;
    let mut status = client.handle.status();
    tokio::time::timeout(WAIT, status.wait_for(|s| s.tunnels_up == 2))
        .await
        .unwrap()
        .unwrap();
    let payload = vec![5u8; 50_000];
    assert_eq!(echo_once(cloud, &payload).await.unwrap().len(), 50_000);
    // The gateway counts a stream's bytes as it closes: poll, bounded.
    let deadline = Instant::now() + WAIT;
    let m = loop {
        let (_, m) = get("/metrics", Some("gw-admin-secret")).await;
        if sample(&m, "sgw_gateway_bytes_total{direction=\"down\"}") >= 50_000 {
            break m;
        }
        assert!(Instant::now() < deadline, "metrics never caught up:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        sample(&m, "sgw_gateway_bytes_total{direction=\"up\"}"),
        50_000
    );
    assert_eq!(sample(&m, "sgw_gateway_tunnels_up{gateway=\"gw1\"}"), 2);
    assert_eq!(sample(&m, "sgw_gateway_clients{gateway=\"gw1\"}"), 1);
    assert_eq!(sample(&m, "sgw_gateway_streams_opened_total"), 1);
    assert_eq!(sample(&m, "sgw_gateway_destinations{gateway=\"gw1\"}"), 1);

    assert_eq!(get("/readyz", None).await.0, 200);
    assert_eq!(get("/v1/status", None).await.0, 401);
    let (st, body) = get("/v1/status", Some("gw-admin-secret")).await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["gateways"][0]["id"], "gw1");
    assert_eq!(v["gateways"][0]["tunnels"], 2);
    // The CLI reaches it too, with the token from gateway.toml's admin_token_file.
    let out = Command::new(sgw_bin())
        .args(["status", "--json", "--config", gw_toml.to_str().unwrap()])
        .args(["--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["gateways"][0]["clients"], 1);
    // Without --admin the CLI takes gateway.toml's admin_socket: this user, no token.
    let out = Command::new(sgw_bin())
        .args(["status", "--json", "--config", gw_toml.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sock = sgw::admin::client::AdminAddr::Unix(setup.path("gw-admin.sock"));
    let (st, m) = call(sock, hyper::Method::GET, "/metrics", None, None)
        .await
        .unwrap();
    assert_eq!(st, 200);
    assert!(
        m.contains("sgw_gateway_tunnels_up{gateway=\"open1\"} 0"),
        "{m}"
    );
    let (st, body) = get("/v1/acl", Some("gw-admin-secret")).await;
    assert_eq!(st, 404);
    assert!(body.contains("client's acl_file"), "{body}");
    assert!(!gw.all().contains("gw-admin-secret"));
}

/// `sgw gateway --config FILE` as a process, once it serves: (process, tunnel address, the
/// first destination's cloud address).
/// A destination whose cloud port another program holds when the gateway starts does not keep
/// the gateway down: it starts, serves the rest, and names the port in an error line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_cloud_port_at_start_leaves_the_rest_served() {
    let echo = echo_server().await;
    let setup = Setup::new(&[echo, echo]);
    let gw_toml = setup.path("gateway.toml");
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let text = std::fs::read_to_string(&gw_toml).unwrap();
    assert_eq!(text.matches("cloud_port = 0").count(), 2, "{text}");
    let text = text.replacen("cloud_port = 0", &format!("cloud_port = {taken}"), 1);
    std::fs::write(&gw_toml, text).unwrap();
    let (gw, _tunnel, cloud) = gateway_process(&gw_toml).await;
    let line = gw.wait_line("reason=\"bind\"").await;
    assert!(line.contains(&format!("cloud.port={taken}")), "{line}");
    assert!(line.contains("dest1"), "{line}");
    assert_ne!(cloud.port(), taken);
    assert!(
        TcpStream::connect(cloud).await.is_ok(),
        "the other destination listens"
    );
    drop(squatter);
}

/// `n` callers of a destination the client's ACL refuses, one after another, each refused
/// within 5 s.
async fn refuse_callers(deny: std::net::SocketAddr, n: usize) {
    for i in 0..n {
        let r = tokio::time::timeout(Duration::from_secs(5), echo_once(deny, b"x"))
            .await
            .unwrap_or_else(|_| panic!("refused caller {i} waited 5 s: the client is stuck"));
        assert!(!matches!(&r, Ok(b) if !b.is_empty()), "refused: {r:?}");
    }
}

/// The client's "stream denied" lines so far.
fn denied_lines(p: &Proc) -> usize {
    p.all()
        .lines()
        .filter(|l| l.contains("stream denied"))
        .count()
}

/// `sgw client` with this config, once its tunnel is up; and its admin endpoint's address.
async fn client_up(client_toml: &std::path::Path) -> (Proc, std::net::SocketAddr) {
    let p = Proc::spawn(&["client", "--config", client_toml.to_str().unwrap()]);
    let admin = field(&p.wait_line("admin endpoint listening").await, "admin.addr")
        .parse()
        .unwrap();
    p.wait_line("tunnel up").await;
    (p, admin)
}

async fn gateway_process(
    gw_toml: &std::path::Path,
) -> (Proc, std::net::SocketAddr, std::net::SocketAddr) {
    let gw = Proc::spawn(&["gateway", "--config", gw_toml.to_str().unwrap()]);
    let tunnel = field(&gw.wait_line("gateway started").await, "tunnel.listen");
    let cloud = field(&gw.wait_line("destination listening").await, "cloud.addr");
    (gw, tunnel.parse().unwrap(), cloud.parse().unwrap())
}
