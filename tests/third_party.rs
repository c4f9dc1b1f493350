//! Real third-party clients and servers through the tunnel. Each test is skipped, with the
//! reason printed, when its programs are not installed (`.ci/run` installs them).

mod common;

use std::process::Command;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_and_redis_cli_through_the_tunnel() {
    let (Some(bench), Some(cli)) = (which("redis-benchmark"), which("redis-cli")) else {
        println!("SKIPPED: redis-benchmark and redis-cli are needed (apt-get install redis-tools)");
        return;
    };
    let Some((_redis, port)) = start_redis().await else {
        println!("SKIPPED: redis-server is needed (apt-get install redis-server)");
        return;
    };
    let redis_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let h = Harness::start(&[redis_addr], |_| {}).await;
    let cloud = h.cloud(0);
    let cloud_port = cloud.port().to_string();

    let set = Command::new(&cli)
        .args(["-p", &cloud_port, "set", "sgw:key", "through the tunnel"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK");
    let get = Command::new(&cli)
        .args(["-p", &cloud_port, "get", "sgw:key"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "through the tunnel"
    );

    // Kept-alive clients, then a fresh connection per request.
    for (label, extra) in [
        ("keepalive", vec![]),
        ("new connection per request", vec!["-k", "0"]),
    ] {
        let out = tokio::task::spawn_blocking({
            let bench = bench.clone();
            let port = cloud_port.clone();
            move || {
                let mut args = vec![
                    "-p",
                    &port,
                    "-c",
                    "20",
                    "-n",
                    "5000",
                    "-t",
                    "ping,set,get",
                    "--csv",
                ];
                args.extend(extra);
                Command::new(bench).args(&args).output().unwrap()
            }
        })
        .await
        .unwrap();
        let csv = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tests: Vec<(&str, f64)> = csv
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').map(|x| x.trim_matches('"')).collect();
                Some((f.first().copied()?, f.get(1)?.parse().ok()?))
            })
            .collect();
        println!("redis-benchmark through sgw ({label}): {tests:?}");
        for t in ["PING_INLINE", "SET", "GET"] {
            let rps = tests
                .iter()
                .find(|(n, _)| *n == t)
                .map(|(_, r)| *r)
                .unwrap_or(0.0);
            assert!(rps > 0.0, "{t} missing in redis-benchmark output:\n{csv}");
        }
    }
    let st = h.client.handle.stats();
    assert_eq!(
        st.streams_failed.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// Secure Gateway's default: no idle timeout. With the default config a psql session and a
/// redis `BLPOP key 0` sit idle through the tunnel for longer than the old 30 s default and
/// still work (docs/DESTINATIONS.md "Timeouts").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_psql_session_and_blocking_blpop_outlive_the_old_30s_default() {
    let (Some(psql), Some(cli)) = (which("psql"), which("redis-cli")) else {
        println!("SKIPPED: psql and redis-cli are needed (apt-get install postgresql redis-tools)");
        return;
    };
    let Some((_redis, redis_port)) = start_redis().await else {
        println!("SKIPPED: redis-server is needed (apt-get install redis-server)");
        return;
    };
    let Some(postgres) = Postgres::start().await else {
        println!("SKIPPED: a PostgreSQL server could not be started (apt-get install postgresql)");
        return;
    };
    let pg: std::net::SocketAddr = format!("127.0.0.1:{}", postgres.port).parse().unwrap();
    let redis: std::net::SocketAddr = format!("127.0.0.1:{redis_port}").parse().unwrap();
    let h = Harness::start(&[pg, redis], |s| {
        // The defaults this test checks: nothing set, so none.
        for d in &s.gateway.gateways[0].destinations {
            assert_eq!(d.idle_timeout, None);
        }
    })
    .await;
    const IDLE: Duration = Duration::from_secs(35);

    // psql: one query, 35 s of silence in the same session, another query.
    let mut session = tokio::process::Command::new(&psql)
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &h.cloud(0).port().to_string(), "postgres"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = session.stdin.take().unwrap();
    stdin.write_all(b"select 'before idle';\n").await.unwrap();
    // BLPOP on an empty list blocks until a push, with no byte either way meanwhile.
    let blpop = tokio::process::Command::new(&cli)
        .args([
            "-p",
            &h.cloud(1).port().to_string(),
            "blpop",
            "sgw:idle",
            "0",
        ])
        .output();
    let blpop = tokio::spawn(blpop);
    tokio::time::sleep(IDLE).await;
    stdin.write_all(b"select 'after idle';\n").await.unwrap();
    drop(stdin);
    let push = Command::new(&cli)
        .args(["-p", &redis_port.to_string(), "rpush", "sgw:idle", "woke"])
        .output()
        .unwrap();
    assert!(push.status.success());
    let out = tokio::time::timeout(WAIT, session.wait_with_output())
        .await
        .expect("psql finished")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("before idle") && text.contains("after idle"),
        "psql: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = tokio::time::timeout(WAIT, blpop)
        .await
        .expect("BLPOP answered")
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["sgw:idle", "woke"]
    );
}
