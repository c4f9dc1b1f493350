//! The WebSocket layer alone: tokio-tungstenite with the tunnel's settings (`ws_config`) over an
//! in-memory pipe (no TLS, no sockets), moving 64 MiB as binary messages of 16, 64, 128 and
//! 256 KiB. Per-message and per-byte costs separate here: if throughput rises with message
//! size, part of tungstenite's cost (docs/PERFORMANCE.md, copy 3) is per message and larger
//! batches amortise it.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const TOTAL: usize = 64 * 1024 * 1024;

async fn transfer(size: usize) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let cfg = Some(sgw::tunnel::ws_config());
    let mut tx = WebSocketStream::from_raw_socket(a, Role::Client, cfg).await;
    let mut rx = WebSocketStream::from_raw_socket(b, Role::Server, cfg).await;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < TOTAL {
            match rx.next().await {
                Some(Ok(Message::Binary(m))) => n += m.len(),
                other => panic!("unexpected {other:?}"),
            }
        }
        n
    });
    let msg = Bytes::from(vec![7u8; size]);
    for _ in 0..TOTAL / size {
        tx.send(Message::Binary(msg.clone())).await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), TOTAL);
}

fn message_sizes(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("ws");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(TOTAL as u64));
    for kib in [16, 64, 128, 256] {
        g.bench_with_input(
            BenchmarkId::new("64 MiB in messages of KiB", kib),
            &kib,
            |b, &kib| b.to_async(&rt).iter(|| transfer(kib * 1024)),
        );
    }
    g.finish();
}

criterion_group!(benches, message_sizes);
criterion_main!(benches);
