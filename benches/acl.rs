//! ACL decision time, excluding DNS, with 10, 1,000 and 10,000 rules: the compiled index
//! against the top-down reference. The rule mix is what a large site's file looks like: single
//! hosts, CIDR blocks, address ranges, port ranges, names and wildcards, a few `from` rules.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sgw::acl::{Acl, Request};
use sgw::config::Policy;

fn rules(n: usize, rng: &mut StdRng) -> String {
    let mut s = String::new();
    for i in 0..n {
        let verb = if rng.random_bool(0.7) {
            "allow"
        } else {
            "deny"
        };
        let (a, b, c) = (
            rng.random_range(1..250u8),
            rng.random_range(0..255u8),
            rng.random_range(0..255u8),
        );
        let port = rng.random_range(1..60_000u16);
        let line = match i % 8 {
            0 => format!("acl {verb} 10.{a}.{b}.{c}:{port}"),
            1 => format!("acl {verb} 10.{a}.{b}.0/24:{port}-{}", port + 100),
            2 => format!(
                "acl {verb} 172.16.{a}.{b}-172.16.{a}.{}:",
                b.saturating_add(20)
            ),
            3 => format!("acl {verb} host{i}.corp.example:{port}"),
            4 => format!("acl {verb} *.zone{i}.example:443"),
            5 => format!("acl {verb} 10.{a}.{b}.{c}:"),
            6 => format!("acl {verb} 10.{a}.{b}.{c}:{port} from 203.0.113.0/24"),
            _ => format!("acl {verb} [2001:db8:{a:x}::/48]:{port}"),
        };
        s.push_str(&line);
        s.push('\n');
    }
    s
}

fn requests(rng: &mut StdRng) -> Vec<(String, IpAddr, u16)> {
    (0..256)
        .map(|i| {
            let ip = IpAddr::from([
                10,
                rng.random_range(1..250u8),
                rng.random_range(0..255u8),
                rng.random_range(0..255u8),
            ]);
            let host = if i % 4 == 0 {
                format!("host{}.corp.example", i * 7)
            } else {
                ip.to_string()
            };
            (host, ip, rng.random_range(1..60_000u16))
        })
        .collect()
}

fn decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("acl");
    for &n in &[10usize, 1_000, 10_000] {
        let mut rng = StdRng::seed_from_u64(7);
        let acl = match Acl::parse("bench.list", &rules(n, &mut rng), Policy::Deny) {
            Ok(a) => a,
            Err(e) => panic!("{e:?}"),
        };
        let reqs = requests(&mut rng);
        for (host, ip, port) in &reqs {
            let r = Request::new(host, *port).addr(*ip);
            assert_eq!(acl.check(&r), acl.check_naive(&r));
        }
        g.bench_with_input(BenchmarkId::new("index", n), &reqs, |b, reqs| {
            let mut i = 0;
            b.iter(|| {
                let (host, ip, port) = &reqs[i % reqs.len()];
                i += 1;
                black_box(acl.check(&Request::new(host, *port).addr(*ip)))
            })
        });
        g.bench_with_input(BenchmarkId::new("top_down", n), &reqs, |b, reqs| {
            let mut i = 0;
            b.iter(|| {
                let (host, ip, port) = &reqs[i % reqs.len()];
                i += 1;
                black_box(acl.check_naive(&Request::new(host, *port).addr(*ip)))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
