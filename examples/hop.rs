//! A one-hop TCP relay: accept, connect to the target, copy both ways, on one tokio worker.
//! It is the least work any tunnel does for a connection (one accepted and one dialled
//! socket, no TLS, no multiplexing), so its connections a second bound what a tunnel can reach
//! on the same host. `benches/connrate.sh` runs it beside sgw.
//!
//!   cargo run --release --example hop -- LISTEN TARGET     # e.g. 127.0.0.1:0 127.0.0.1:6379
//!
//! It prints the address it listens on, then serves until killed.
#![forbid(unsafe_code)]

use tokio::net::{TcpListener, TcpStream};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(target)) = (args.next(), args.next()) else {
        return Err("usage: hop LISTEN TARGET".into());
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        println!("{}", listener.local_addr()?);
        loop {
            let (mut caller, _) = match listener.accept().await {
                Ok(c) => c,
                // Out of descriptors, say: a pause, not a spin, and the relay goes on.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let target = target.clone();
            tokio::spawn(async move {
                let _ = caller.set_nodelay(true);
                if let Ok(mut upstream) = TcpStream::connect(&target).await {
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut caller, &mut upstream).await;
                }
            });
        }
    })
}
