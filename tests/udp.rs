//! UDP destinations end to end: datagram boundaries (up to 60 KB) through a real tunnel, flow
//! expiry after the destination timeout, and the flow-table limits on both sides.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::*;
use sgw::config::Protocol;
use tokio::net::UdpSocket;

/// A UDP echo server (what a DNS server looks like to the tunnel: one answer per question).
async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    a
}

async fn udp_harness(endpoints: &[SocketAddr], tweak: impl FnOnce(&mut Setup)) -> Harness {
    Harness::start(endpoints, |s| {
        for d in &mut s.gateway.gateways[0].destinations {
            d.protocol = Protocol::Udp;
        }
        tweak(s);
    })
    .await
}

async fn caller(cloud: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(cloud).await.unwrap();
    s
}

/// Receives one datagram within `wait`.
async fn recv(s: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(wait, s.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_keep_their_boundaries_and_flows_expire() {
    let echo = udp_echo().await;
    let h = udp_harness(&[echo], |s| {
        s.gateway.gateways[0].destinations[0].timeout = Duration::from_secs(1);
    })
    .await;
    let cloud = h.cloud(0);
    let c = caller(cloud).await;
    // A DNS-sized question first, then a 60 KB datagram, then an empty one, back to back.
    let sizes = [53usize, 60_000, 0, 1, 1200];
    for (i, n) in sizes.iter().enumerate() {
        c.send(&vec![i as u8 + 1; *n]).await.unwrap();
    }
    for (i, n) in sizes.iter().enumerate() {
        let d = recv(&c, WAIT).await.expect("echo back");
        assert_eq!(d.len(), *n, "datagram {i} kept its size");
        assert!(d.iter().all(|b| *b == i as u8 + 1), "datagram {i} content");
    }
    let stats = h.client.handle.stats();
    assert_eq!(stats.udp_flows.load(Relaxed), 1);
    assert_eq!(stats.udp.to_socket.load(Relaxed), sizes.len() as u64);

    // Quiet for the timeout: both sides forget the flow.
    let quiet = Instant::now();
    wait_for("client flow expiry", || stats.udp_flows.load(Relaxed) == 0).await;
    let gw = h.gw.handle.stats();
    wait_for("gateway flow expiry", || gw.udp_flows.load(Relaxed) == 0).await;
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "{:?}",
        quiet.elapsed()
    );

    // The same caller again: a new flow, and it works.
    c.send(b"again").await.unwrap();
    assert_eq!(recv(&c, WAIT).await.as_deref(), Some(&b"again"[..]));
    assert_eq!(gw.streams_opened.load(Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_flow_does_not_expire() {
    let echo = udp_echo().await;
    let h = udp_harness(&[echo], |s| {
        s.gateway.gateways[0].destinations[0].timeout = Duration::from_secs(1);
    })
    .await;
    let c = caller(h.cloud(0)).await;
    for i in 0..8u8 {
        c.send(&[i]).await.unwrap();
        assert_eq!(recv(&c, WAIT).await, Some(vec![i]));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(h.gw.handle.stats().streams_opened.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_tables_are_bounded_on_both_sides() {
    let echo = udp_echo().await;
    // Client allows 2 flows.
    let h = udp_harness(&[echo], |s| s.client.limits.max_udp_flows = 2).await;
    let cloud = h.cloud(0);
    let mut callers = Vec::new();
    for i in 0..2u8 {
        let c = caller(cloud).await;
        c.send(&[i]).await.unwrap();
        assert_eq!(recv(&c, WAIT).await, Some(vec![i]));
        callers.push(c);
    }
    let third = caller(cloud).await;
    third.send(b"x").await.unwrap();
    let stats = h.client.handle.stats();
    wait_for("client refusal", || {
        stats.udp_flows_rejected.load(Relaxed) == 1
    })
    .await;
    assert_eq!(recv(&third, Duration::from_millis(300)).await, None);
    // The flows that exist keep working.
    callers[0].send(b"still").await.unwrap();
    assert_eq!(
        recv(&callers[0], WAIT).await.as_deref(),
        Some(&b"still"[..])
    );

    // Gateway allows 1 flow: the second caller is dropped there, before the tunnel.
    let h = udp_harness(&[echo], |s| s.gateway.limits.max_udp_flows = 1).await;
    let a = caller(h.cloud(0)).await;
    a.send(b"a").await.unwrap();
    assert_eq!(recv(&a, WAIT).await.as_deref(), Some(&b"a"[..]));
    let b = caller(h.cloud(0)).await;
    b.send(b"b").await.unwrap();
    let gw = h.gw.handle.stats();
    wait_for("gateway refusal", || {
        gw.udp_flows_rejected.load(Relaxed) == 1
    })
    .await;
    assert_eq!(recv(&b, Duration::from_millis(300)).await, None);
    assert_eq!(gw.streams_opened.load(Relaxed), 1);
}

#[test]
fn udp_destinations_refuse_tcp_only_options() {
    let err = gateway_config_errors(&format!(
        "{GATEWAY_HEAD}protocol = \"UDP\"\ncloud_port = 0\ncompression = true\nproxy = {{ host = \"127.0.0.1\", port = 1080 }}\n"
    ));
    for k in ["destinations[0].compression", "destinations[0].proxy"] {
        assert!(err.contains(k), "{k} in {err}");
    }
    assert!(err.contains("not supported for UDP"), "{err}");
}
