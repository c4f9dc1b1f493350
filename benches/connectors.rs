//! Destination connectors end to end, in one process on loopback: the same 64 MiB through a
//! plain TCP destination, a TLS-to-endpoint destination, and a compressed destination (with
//! log-like text and with random bytes). Compare the rows of one run: the ratios are the
//! result, the absolute numbers depend on the machine.
//!
//! `cargo bench --bench connectors`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sgw::acl::Acl;
use sgw::client::Client;
use sgw::config::{ClientConfig, EndpointTlsConfig, GatewayConfig};
use sgw::gateway::{Gateway, GatewayHandle};
use sgw::init::{Expose, InitOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const TOTAL: usize = 64 * 1024 * 1024;

/// Reads to EOF, then answers with the byte count.
async fn drain<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    while let Ok(k @ 1..) = s.read(&mut buf).await {
        n += k as u64;
    }
    let _ = s.write_all(&n.to_be_bytes()).await;
    let _ = s.shutdown().await;
}

async fn sink(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => drain(s).await,
                    Some(t) => {
                        if let Ok(s) = t.accept(s).await {
                            drain(s).await
                        }
                    }
                }
            });
        }
    });
    a
}

struct World {
    gw: GatewayHandle,
    _dir: tempfile::TempDir,
    _stop: CancellationToken,
}

async fn world() -> World {
    sgw::tls::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["localhost".to_string()];
    // sgw init's CA and gateway certificate double as the TLS endpoint's.
    let pre = tempfile::tempdir().unwrap();
    sgw::init::write(pre.path(), &InitOptions::default()).unwrap();
    let read = |f: &str| std::fs::read_to_string(pre.path().join(f)).unwrap();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(read("gateway.pem").as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(read("gateway.key").as_bytes()).unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let plain = sink(None).await;
    let tls = sink(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))).await;
    let expose = [plain, tls, plain]
        .iter()
        .map(|a| Expose {
            host: a.ip().to_string(),
            port: a.port(),
            cloud_port: 0,
        })
        .collect();
    let w = sgw::init::write(
        dir.path(),
        &InitOptions {
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            expose,
            public: names,
            ..InitOptions::default()
        },
    )
    .unwrap();
    let mut g = GatewayConfig::load(&w.gateway_toml).unwrap();
    let d = &mut g.gateways[0].destinations;
    d[1].endpoint_tls = Some(EndpointTlsConfig {
        sni: "localhost".into(),
        reject_unauth: true,
        client_certs: vec![read("ca.pem")],
        mutual: false,
        identity: None,
    });
    d[2].compression = true;
    let gw = Gateway::bind(g).await.unwrap();
    let handle = gw.handle();
    let stop = CancellationToken::new();
    tokio::spawn(gw.run(stop.clone()));
    let mut c = ClientConfig::load(&w.client_toml).unwrap();
    for l in &mut c.gateways {
        l.replicas[0].url.port = handle.tunnel_addr().port();
    }
    let acl = Acl::load(&c.acl_file, c.default_policy).unwrap();
    let client = Client::new(c, acl).unwrap();
    let ch = client.handle();
    tokio::spawn(client.run(stop.clone()));
    let mut st = ch.status();
    st.wait_for(|s| s.tunnels_up >= 2).await.unwrap();
    World {
        gw: handle,
        _dir: dir,
        _stop: stop,
    }
}

async fn push(addr: SocketAddr, data: &[u8]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.set_nodelay(true);
    let (mut r, mut w) = s.split();
    let send = async {
        for c in data.chunks(256 * 1024) {
            w.write_all(c).await.unwrap();
        }
        w.shutdown().await.unwrap();
    };
    let mut n = [0u8; 8];
    let recv = r.read_exact(&mut n);
    let (_, got) = tokio::join!(send, recv);
    got.unwrap();
    assert_eq!(u64::from_be_bytes(n), data.len() as u64);
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let w = rt.block_on(world());
    let text: Vec<u8> = (0u32..)
        .flat_map(|i| {
            format!(
                "2026-11-23T17:{:02}:{:02}Z INFO GET /api/items/{} status=200 bytes={} ms={}\n",
                i / 60 % 60,
                i % 60,
                i % 977,
                i % 4096,
                i % 13
            )
            .into_bytes()
        })
        .take(TOTAL)
        .collect();
    let random: Vec<u8> = (0..TOTAL).map(|_| rand::random::<u8>()).collect();
    let mut g = c.benchmark_group("connectors");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    let cases: [(&str, &str, &Vec<u8>); 5] = [
        ("plain_tcp_text", "dest1", &text),
        ("plain_tcp_random", "dest1", &random),
        ("tls_to_endpoint", "dest2", &random),
        ("compressed_text", "dest3", &text),
        ("compressed_random", "dest3", &random),
    ];
    for (name, dest, data) in cases {
        let addr = w.gw.dest_addr(dest).unwrap();
        g.bench_function(name, |b| b.to_async(&rt).iter(|| push(addr, data)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
