//! Whatever a SOCKS5 proxy answers: the handshake ends in Ok or a clear error, never a panic
//! or a read past what was sent.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A proxy that answers with `reply`, then end of stream.
struct Scripted<'a>(&'a [u8]);

impl AsyncRead for Scripted<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let n = self.0.len().min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (auth, reply) = match data.split_first() {
        Some((flag, rest)) if flag & 1 == 1 => (Some(("user", "pass")), rest),
        Some((_, rest)) => (None, rest),
        None => (None, data),
    };
    for target in [
        sgw::socks5::Target::Name("db.internal", 5432),
        sgw::socks5::Target::Addr("[::1]:80".parse().unwrap()),
    ] {
        let mut io = Scripted(reply);
        let _ = rt.block_on(sgw::socks5::connect(&mut io, auth, target));
    }
});
