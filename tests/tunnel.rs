//! End to end through a real gateway and client over TLS WebSocket tunnels on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_echo_hash_matches() {
    let echo = echo_server().await;
    let h = Harness::start(&[echo], |_| {}).await;
    let total: u64 = 1 << 30;
    let s = TcpStream::connect(h.cloud(0)).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        let mut block = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        let mut x = 0x9e3779b97f4a7c15u64;
        while sent < total {
            // Cheap pseudo-random content so reordering or loss cannot go unnoticed.
            for c in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            w.write_all(&block).await.unwrap();
            hasher.update(&block);
            sent += block.len() as u64;
        }
        w.shutdown().await.unwrap();
        hasher.finalize().to_vec()
    });
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), r.read(&mut buf))
            .await
            .expect("echo stalled")
            .unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        got += n as u64;
    }
    let sent_hash = writer.await.unwrap();
    assert_eq!(got, total);
    assert_eq!(hasher.finalize().to_vec(), sent_hash);
    // The stream's bytes are counted when its relay ends, which can be just after the caller
    // saw the end of the echo.
    let st = h.gw.handle.stats();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let up = || st.bytes_up.load(std::sync::atomic::Ordering::Relaxed);
    while up() != total && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up(), total);
}

/// Writes of every size around the 16 KiB direct-write limit, read back through a small
/// receive buffer: the tunnels' readers write small DATA straight to the sockets, and what a
/// full socket does not take waits for the relay. Every byte comes back once, in order, and
/// the close after the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_writes_of_every_size_come_back_whole_and_in_order() {
    let echo = echo_server().await;
    let h = Harness::start(&[echo], |_| {}).await;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A slow reader: the gateway's socket to it fills, and its writes come up short.
    sock.set_recv_buffer_size(4096).unwrap();
    sock.set_nonblocking(true).unwrap();
    let s = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(sock))
        .connect(h.cloud(0))
        .await
        .unwrap();
    s.set_nodelay(true).unwrap();
    let (mut r, mut w) = s.into_split();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut data = Vec::new();
    let mut chunks = Vec::new();
    while data.len() < 4 << 20 {
        let n = 1 + (next() % 20_000) as usize;
        let start = data.len();
        data.extend((0..n).map(|_| next() as u8));
        chunks.push(start..data.len());
    }
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for c in chunks {
            w.write_all(&sent[c]).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    let mut buf = [0u8; 700];
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("echo stalled");
    writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "bytes came back out of order or changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_streams() {
    raise_fd_limit();
    let echo = echo_server().await;
    let h = Harness::start(&[echo], |_| {}).await;
    let n = 1000;
    let cloud = h.cloud(0);
    let all_open = Arc::new(tokio::sync::Barrier::new(n + 1));
    let counted = Arc::new(tokio::sync::Barrier::new(n + 1));
    // Pace the handshakes (not the streams): a burst of 1,000 SYNs overflows the kernel's
    // SYN queue and syncookies can then resurrect closed connections from stray ACKs.
    let connecting = Arc::new(tokio::sync::Semaphore::new(100));
    let mut tasks = Vec::new();
    for i in 0..n {
        let all_open = all_open.clone();
        let counted = counted.clone();
        let connecting = connecting.clone();
        tasks.push(tokio::spawn(async move {
            let permit = connecting.acquire().await.unwrap();
            let mut s = TcpStream::connect(cloud).await.unwrap();
            drop(permit);
            let msg: Vec<u8> = format!("stream {i} ").repeat(100).into_bytes();
            s.write_all(&msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg, "stream {i} got another stream's bytes");
            // Hold every connection open until all have round-tripped.
            all_open.wait().await;
            counted.wait().await;
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), all_open.wait())
        .await
        .expect("all streams open");
    let active = h.gw.handle.active_streams();
    assert_eq!(active, n, "gateway holds every stream at once");
    counted.wait().await;
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    use std::sync::atomic::Ordering::Relaxed;
    let (c, g) = (h.client.handle.stats(), h.gw.handle.stats());
    let got = (
        c.streams_opened.load(Relaxed),
        g.streams_opened.load(Relaxed),
        g.streams_failed.load(Relaxed),
        c.streams_failed.load(Relaxed),
    );
    assert_eq!(
        got,
        (n as u64, n as u64, 0, 0),
        "client opened, gateway opened, gateway failed, client failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_costs_one_window_and_blocks_nobody() {
    let fire = firehose_server().await;
    let echo = echo_server().await;
    let window = 256 * 1024u32;
    let h = Harness::start(&[fire, echo], |s| {
        // One tunnel, so both streams share it; no auto-tuning so the bound is exact.
        s.client.gateways[0].tunnels = 1;
        s.gateway.limits.stream_window = window;
        s.gateway.limits.max_stream_window = window;
    })
    .await;
    // A caller that never reads from a destination that never stops writing.
    let stalled = TcpStream::connect(h.cloud(0)).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.gw.handle.buffered_bytes() < u64::from(window) / 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled stream never filled its window"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile another stream on the same tunnel moves 32 MiB both ways.
    let mut s = TcpStream::connect(h.cloud(1)).await.unwrap();
    let data: Vec<u8> = (0..32 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::with_capacity(data.len());
    let recv = r.read_to_end(&mut back);
    let (_, n) = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(send, recv) })
        .await
        .expect("second stream was blocked");
    assert_eq!(n.unwrap(), data.len());
    assert!(back == data, "second stream corrupted");
    let buffered = h.gw.handle.buffered_bytes();
    assert!(
        buffered <= u64::from(window),
        "gateway buffers {buffered} bytes for a stalled stream, window is {window}"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_still_receives_reply() {
    let hs = hash_server().await;
    let h = Harness::start(&[hs], |_| {}).await;
    let mut s = TcpStream::connect(h.cloud(0)).await.unwrap();
    let data = vec![42u8; 3 * 1024 * 1024 + 17];
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap(); // half-close: we are done writing, still reading
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, sha(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_propagates_both_ways() {
    // Endpoint resets after reading one byte.
    let resetter = serve(|mut s| async move {
        let mut b = [0u8; 1];
        let _ = s.read_exact(&mut b).await;
        sgw::relay::abort(&s);
    })
    .await;
    // Endpoint reports how its read ended when the caller resets.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<usize>>(4);
    let (got_tx, mut got_rx) = tokio::sync::mpsc::channel::<()>(4);
    let observer = serve(move |mut s| {
        let tx = tx.clone();
        let got_tx = got_tx.clone();
        async move {
            let mut b = [0u8; 1];
            let _ = s.read_exact(&mut b).await;
            let _ = got_tx.send(()).await;
            let r = s.read(&mut [0u8; 16]).await;
            let _ = tx.send(r).await;
        }
    })
    .await;
    let h = Harness::start(&[resetter, observer], |_| {}).await;

    let mut s = TcpStream::connect(h.cloud(0)).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let r = tokio::time::timeout(WAIT, s.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert_eq!(
        r.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset,
        "endpoint reset reaches the caller"
    );

    let mut s = TcpStream::connect(h.cloud(1)).await.unwrap();
    s.write_all(b"y").await.unwrap();
    tokio::time::timeout(WAIT, got_rx.recv()).await.unwrap();
    sgw::relay::abort(&s);
    drop(s);
    let mut rx = rx;
    let r = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset,
        "caller reset reaches the endpoint"
    );
}

/// Connects to `addr`, sends `first` (if any), and expects the connection closed or reset,
/// with nothing delivered. The refusal (accept, ACL veto, RST) can finish before connect()
/// even returns, so the reset may surface at connect, at the write or at the first read.
async fn expect_refused(addr: std::net::SocketAddr, first: &[u8]) {
    let r = async {
        let mut s = TcpStream::connect(addr).await?;
        if !first.is_empty() {
            s.write_all(first).await?;
        }
        tokio::time::timeout(WAIT, s.read(&mut [0u8; 4]))
            .await
            .map_err(std::io::Error::other)?
    }
    .await;
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    assert!(
        matches!(&r, Ok(0))
            || matches!(&r, Err(e) if matches!(e.kind(), ConnectionReset | BrokenPipe)),
        "a denied caller must be closed or reset, got {r:?}"
    );
}

/// Streams the client's veto refused so far.
fn vetoed(h: &Harness) -> u64 {
    h.client
        .handle
        .stats()
        .streams_denied
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denial_refuses_caller_and_keeps_tunnel() {
    let echo = echo_server().await;
    let other = echo_server().await;
    let h = Harness::start(&[echo, other], |s| {
        // Allow only the first endpoint.
        let acl = format!("acl allow 127.0.0.1:{}\n", echo.port());
        std::fs::write(s.path("acl.list"), acl).unwrap();
    })
    .await;
    expect_refused(h.cloud(1), b"").await;
    assert_eq!(vetoed(&h), 1);
    let mut s = TcpStream::connect(h.cloud(0)).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
}

/// A caller that speaks at once, through the real client (which takes early data): its bytes
/// come back whole and in order, the first of them sent early or not (that depends on how
/// fast the client answers; tests/hostile.rs checks it without a race); a denied caller's
/// bytes never reach anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_first_bytes_go_early_and_stop_at_the_veto() {
    let echo = echo_server().await;
    let dialed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = dialed.clone();
    let denied = serve(move |_s| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {}
    })
    .await;
    let h = Harness::start(&[echo, denied], |s| {
        let acl = format!("acl allow 127.0.0.1:{}\n", echo.port());
        std::fs::write(s.path("acl.list"), acl).unwrap();
    })
    .await;

    // More than goes early: the rest follows once the client accepted.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let s = TcpStream::connect(h.cloud(0)).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move { w.write_all(&sent).await });
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(WAIT, r.read_exact(&mut back))
        .await
        .expect("echoed in time")
        .unwrap();
    assert!(back == data, "bytes changed or reordered");
    writer.await.unwrap().unwrap();

    // Denied: the caller's first bytes go with the OPEN, and the veto drops them.
    expect_refused(h.cloud(1), b"DELETE /everything HTTP/1.1\r\n\r\n").await;
    assert_eq!(vetoed(&h), 1);
    // The refusal came before any dial: the denied endpoint was never reached.
    assert_eq!(dialed.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_gets_401_before_upgrade() {
    let setup = Setup::new(&[]);
    let gw = start_gateway(setup.gateway.clone()).await;
    let mut link = setup.client.gateways[0].clone();
    link.replicas[0].url.port = gw.handle.tunnel_addr().port();
    link.token = sgw::config::Secret::new("not-the-token");
    let tls = sgw::tunnel::client_tls(&link.trust).unwrap();
    let hello = sgw::proto::Hello {
        version: "t".into(),
        proto: [1, 0],
        hostname: "h".into(),
        env: "test".into(),
        instance: "i".into(),
        features: Vec::new(),
    };
    let err = sgw::tunnel::connect(&link, &link.replicas[0], None, &tls, &hello)
        .await
        .unwrap_err();
    assert!(
        matches!(err, sgw::tunnel::ConnectError::Unauthorized),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "gateway rejected the security token (HTTP 401)"
    );
    link.gateway_id = "no-such-gateway".into();
    link.token = setup.client.gateways[0].token.clone();
    let err = sgw::tunnel::connect(&link, &link.replicas[0], None, &tls, &hello)
        .await
        .unwrap_err();
    assert!(
        matches!(err, sgw::tunnel::ConnectError::Unauthorized),
        "{err}"
    );
    assert_eq!(
        gw.handle
            .stats()
            .tunnels_rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        gw.handle
            .stats()
            .tunnels_accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_waits_for_a_client_within_the_destination_timeout() {
    let echo = echo_server().await;
    let mut setup = Setup::new(&[echo]);
    setup.gateway.gateways[0].destinations[0].timeout = Duration::from_secs(1);
    let gw = start_gateway(setup.gateway.clone()).await;
    let cloud = gw.handle.dest_addr("dest1").unwrap();
    // No client at all: the caller is closed once the timeout (+5 s tunnel allowance) passes.
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(cloud).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(15), s.read(&mut [0u8; 4]))
        .await
        .expect("caller not left hanging");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed after {:?}: {r:?}",
        started.elapsed()
    );
    // A caller that arrives before the client is served once the client connects.
    let mut s = TcpStream::connect(cloud).await.unwrap();
    s.write_all(b"early").await.unwrap();
    let _client = start_client(setup.client.clone(), gw.handle.tunnel_addr()).await;
    let mut b = [0u8; 5];
    tokio::time::timeout(WAIT, s.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"early");
}
