//! The shipped unit files say what operators rely on, `systemd-analyze verify` accepts them,
//! and the binary speaks the notify protocol they declare (READY, STATUS, WATCHDOG, STOPPING).

mod common;

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `[Service]` directives of a unit file (last value wins, as in systemd).
fn service(unit: &str) -> HashMap<String, String> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("systemd")
            .join(unit),
    )
    .unwrap_or_else(|e| panic!("{unit}: {e}"));
    let mut in_service = false;
    let mut out = HashMap::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with('[') {
            in_service = l == "[Service]";
        } else if in_service && !l.starts_with('#') {
            if let Some((k, v)) = l.split_once('=') {
                out.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
    }
    out
}

fn secs(v: &str) -> u64 {
    let v = v.trim();
    if let Some(m) = v.strip_suffix("min") {
        return m.parse::<u64>().unwrap() * 60;
    }
    v.trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("duration {v}"))
}

#[test]
fn unit_files_declare_notify_watchdog_reload_and_hardening() {
    for (unit, sub) in [
        ("sgw-client.service", "client"),
        ("sgw-gateway.service", "gateway"),
    ] {
        let s = service(unit);
        let get = |k: &str| {
            s.get(k)
                .map(String::as_str)
                .unwrap_or_else(|| panic!("{unit}: no {k}="))
        };
        assert_eq!(get("Type"), "notify", "{unit}");
        assert!(secs(get("WatchdogSec")) > 0);
        assert_eq!(get("Restart"), "on-failure");
        assert!(get("ExecReload").contains("kill -HUP $MAINPID"), "{unit}");
        assert!(
            get("ExecStart").contains(&format!("sgw {sub} --config /etc/sgw/")),
            "{unit}"
        );
        assert!(
            !["", "root", "0"].contains(&get("User")),
            "{unit}: dedicated user"
        );
        assert_eq!(get("ProtectSystem"), "strict");
        assert_eq!(get("ProtectHome"), "yes");
        assert_eq!(get("PrivateTmp"), "yes");
        assert_eq!(get("NoNewPrivileges"), "yes");
        assert!(get("RestrictAddressFamilies").contains("AF_INET6"));
        let caps = get("CapabilityBoundingSet");
        assert!(
            caps.is_empty() || caps == "CAP_NET_BIND_SERVICE",
            "{unit}: {caps}"
        );
        assert!(get("LimitNOFILE").parse::<u64>().unwrap() >= 65536);
        // The default shutdown_grace is 30 s: stopping must not cut a drain short.
        assert!(secs(get("TimeoutStopSec")) > 30, "{unit}");
    }
    assert_eq!(service("sgw-client.service")["CapabilityBoundingSet"], "");
}

#[test]
fn systemd_analyze_verify_accepts_both_units() {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("SKIPPED: systemd-analyze not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let units: Vec<String> = ["sgw-client.service", "sgw-gateway.service"]
        .iter()
        .map(|u| {
            let src = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("systemd")
                    .join(u),
            )
            .unwrap();
            let p = dir.path().join(u);
            // verify checks that ExecStart exists: point it at the binary under test.
            std::fs::write(&p, src.replace("/usr/bin/sgw", sgw_bin())).unwrap();
            p.to_string_lossy().into_owned()
        })
        .collect();
    let out = Command::new(analyze)
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify complained:\n{said}"
    );
}

/// Collects notify datagrams sent to a socket, as systemd would receive them.
fn recv_until(sock: &UnixDatagram, got: &mut Vec<String>, want: &str) {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !got.iter().any(|m| m.contains(want)) {
        assert!(Instant::now() < deadline, "no {want:?}; got {got:?}");
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_speaks_the_notify_protocol() {
    let echo = echo_server().await;
    let setup = Setup::new(&[echo]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let client_toml = point_client_at(&setup, gw.handle.tunnel_addr());
    let sock_path = setup.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = Command::new(sgw_bin())
        .args(["client", "--config", client_toml.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    recv_until(&sock, &mut got, "READY=1");
    let ready = got.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(
        ready.contains("STATUS=") && ready.contains("tunnel(s) up"),
        "{ready}"
    );
    // The gateway counts a tunnel once it has sent WELCOME and registered it, so the client
    // can be READY a moment before the count moves: wait for it, bounded.
    let accepted = || {
        gw.handle
            .stats()
            .tunnels_accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = Instant::now() + WAIT;
    while accepted() < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(accepted() >= 1);
    got.clear();
    recv_until(&sock, &mut got, "WATCHDOG=1");
    signal("-TERM", &child.id().to_string());
    recv_until(&sock, &mut got, "STOPPING=1");
    let status = wait_exit(&mut child).await;
    assert_eq!(status.code(), Some(0));
}

#[test]
fn dockerfile_is_multistage_non_root_with_a_healthcheck() {
    let d =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let lines: Vec<&str> = d
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("FROM ")).count(),
        2,
        "build and runtime stages"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cargo build --release --locked")),
        "same build as local release"
    );
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    assert!(
        !user.contains("root") && !user.ends_with(" 0") && !user.contains(" 0:"),
        "{user}"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("HEALTHCHECK") && l.contains("\"sgw\", \"health\"")));
    assert!(lines.iter().any(|l| l.starts_with("ENTRYPOINT [\"sgw\"]")));
    // Every file the manifest needs to build is copied in.
    for needed in ["Cargo.toml", "Cargo.lock", "src", "benches"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("COPY ") && l.contains(needed)),
            "COPY {needed}"
        );
    }
}
