//! Mux throughput: two muxes over the in-memory transport (no TLS, no sockets), one stream
//! and eight streams moving 64 MiB, plus open/accept round trips per second.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sgw::mux::{memory, Events, Mux, MuxConfig, Role};
use sgw::proto::OpenMeta;

const TOTAL: usize = 64 * 1024 * 1024;

fn pair() -> (Mux, Events, Mux, Events) {
    let ((ar, aw), (br, bw)) = memory::link(Duration::ZERO);
    let (a, ae) = Mux::start(
        ar,
        aw,
        MuxConfig {
            role: Role::Gateway,
            ..MuxConfig::default()
        },
    );
    let (b, be) = Mux::start(
        br,
        bw,
        MuxConfig {
            role: Role::Client,
            ..MuxConfig::default()
        },
    );
    (a, ae, b, be)
}

async fn transfer(streams: usize) {
    let (a, _ae, _b, mut be) = pair();
    let receivers = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..streams {
            let s = be.incoming.recv().await.unwrap().accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while let Some(b) = s.recv().await.unwrap() {
                    n += b.len();
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    let meta = OpenMeta {
        dest: "d".into(),
        caller: "c".into(),
        compress: None,
        target: None,
    };
    let mut senders = Vec::new();
    for _ in 0..streams {
        let s = a.open(&meta).await.unwrap();
        senders.push(tokio::spawn(async move {
            let chunk = Bytes::from(vec![1u8; 64 * 1024]);
            for _ in 0..TOTAL / streams / chunk.len() {
                s.send(chunk.clone()).await.unwrap();
            }
            s.finish().await.unwrap();
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(receivers.await.unwrap(), TOTAL);
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("mux");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.bench_function("1 stream 64 MiB", |b| b.to_async(&rt).iter(|| transfer(1)));
    g.bench_function("8 streams 64 MiB", |b| b.to_async(&rt).iter(|| transfer(8)));
    g.finish();

    let mut g = c.benchmark_group("mux-open");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(10);
    g.bench_function("1000 open+accept+close", |b| {
        b.to_async(&rt).iter(|| async {
            let (a, _ae, _b, mut be) = pair();
            let acceptor = tokio::spawn(async move {
                for _ in 0..1000 {
                    let s = be.incoming.recv().await.unwrap().accept().await.unwrap();
                    s.finish().await.unwrap();
                    assert!(s.recv().await.unwrap().is_none());
                }
            });
            let meta = OpenMeta {
                dest: "d".into(),
                caller: "c".into(),
                compress: None,
                target: None,
            };
            for _ in 0..1000 {
                let s = a.open(&meta).await.unwrap();
                s.finish().await.unwrap();
                assert!(s.recv().await.unwrap().is_none());
            }
            acceptor.await.unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
