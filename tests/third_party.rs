//! Real third-party clients and servers through the tunnel. Each test is skipped, with the
//! reason printed, when its programs are not installed (`.ci/run` installs them).

mod common;

use std::process::Command;

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
