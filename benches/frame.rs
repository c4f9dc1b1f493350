//! Frame codec: encoding and decoding batches of DATA frames and small control frames.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sgw::proto::{decode_message, encode_frame, Frame};

fn batch(payload: usize, n: usize) -> Vec<Frame> {
    let data = Bytes::from(vec![0xabu8; payload]);
    (0..n)
        .map(|i| Frame::Data {
            id: 2 * i as u32 + 1,
            data: data.clone(),
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for &(payload, n) in &[(64usize, 256usize), (16 * 1024, 16), (64 * 1024, 4)] {
        let frames = batch(payload, n);
        let mut buf = BytesMut::new();
        for f in &frames {
            encode_frame(f, &mut buf);
        }
        let msg = buf.freeze();
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("encode", format!("{n}x{payload}B")),
            &frames,
            |b, frames| {
                let mut out = BytesMut::with_capacity(msg.len());
                b.iter(|| {
                    out.clear();
                    for f in frames {
                        encode_frame(f, &mut out);
                    }
                    out.len()
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("decode", format!("{n}x{payload}B")),
            &msg,
            |b, msg| {
                b.iter(|| {
                    let mut count = 0;
                    decode_message(msg, |_| count += 1).unwrap();
                    count
                })
            },
        );
    }
    let ctrl: Vec<Frame> = (0..256)
        .map(|i| Frame::Window {
            id: i * 2 + 1,
            increment: 131072,
        })
        .collect();
    let mut buf = BytesMut::new();
    for f in &ctrl {
        encode_frame(f, &mut buf);
    }
    let msg = buf.freeze();
    g.throughput(Throughput::Elements(ctrl.len() as u64));
    g.bench_function("decode/256xWINDOW", |b| {
        b.iter(|| decode_message(&msg, |_| {}).unwrap())
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
