//! Per-stream DEFLATE for destinations with `compression = true` (docs/PROTOCOL.md §4.2).
//!
//! A compressed stream's bytes are a sequence of records, independent of how DATA frames cut
//! them: a flag byte, a 24-bit big-endian body length (at most [`MAX_RECORD`]), the body.
//! [`RAW`]: the body is the stream's bytes as they are, and both sides reset their DEFLATE
//! context. [`DEFLATE`]: the body is raw DEFLATE continuing the stream's context, ending in a
//! sync flush, so the receiver can decode all of it at once and interactive traffic is never
//! held back.
//!
//! Incompressible data must not cost much: a chunk that does not shrink is sent [`RAW`], and
//! after that the sender stops trying for a number of chunks that doubles while data stays
//! incompressible, so a stream of random bytes pays for one compression attempt in 64.
//! Pure data transformation: no sockets, no async.

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Payload flag: raw bytes follow; both sides reset their DEFLATE context.
pub const RAW: u8 = 0;
/// Payload flag: DEFLATE data follows, continuing the context, sync-flushed.
pub const DEFLATE: u8 = 1;

/// Record header: flag and 24-bit length.
pub const HEADER: usize = 4;
/// Largest record body.
pub const MAX_RECORD: usize = 64 * 1024;

/// Longest backoff, in chunks, after incompressible data.
const MAX_BACKOFF: u32 = 64;

/// A compressed stream's payload could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("bad compressed DATA: {0}")]
pub struct CodecError(pub String);

/// The sending half: turns stream bytes into DATA payloads.
pub struct Deflater {
    c: Compress,
    /// Chunks still to send raw before trying to compress again.
    skip: u32,
    backoff: u32,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater {
            // Level 1: the tunnel is usually faster than better compression would pay for.
            c: Compress::new(Compression::fast(), false),
            skip: 0,
            backoff: 0,
        }
    }
}

impl Deflater {
    /// Longest input for one record.
    pub const MAX_INPUT: usize = crate::proto::MAX_DATA - HEADER;

    /// Encodes one chunk (at most [`Self::MAX_INPUT`] bytes) into a record no longer than
    /// the chunk plus the header.
    pub fn encode(&mut self, input: &[u8]) -> Bytes {
        if self.skip > 0 {
            self.skip -= 1;
            return self.raw(input);
        }
        let mut out = Vec::with_capacity(input.len() + HEADER);
        out.extend_from_slice(&[DEFLATE, 0, 0, 0]);
        let before_in = self.c.total_in();
        let res = self.c.compress_vec(input, &mut out, FlushCompress::Sync);
        let consumed = (self.c.total_in() - before_in) as usize;
        // A full buffer means the flush may not have completed: treat as incompressible.
        let complete = res.is_ok() && consumed == input.len() && out.len() < out.capacity();
        let body = out.len() - HEADER;
        if complete && body <= input.len() {
            // Worth it unless it saved under 1/16: then back off anyway, keeping the output.
            if body * 16 > input.len() * 15 {
                self.note_poor();
            } else {
                self.backoff = 0;
            }
            out[1..HEADER].copy_from_slice(&(body as u32).to_be_bytes()[1..]);
            return Bytes::from(out);
        }
        self.note_poor();
        // The context saw bytes the receiver will not: both sides start afresh.
        self.raw(input)
    }

    fn note_poor(&mut self) {
        self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
        self.skip = self.backoff;
    }

    fn raw(&mut self, input: &[u8]) -> Bytes {
        self.c.reset();
        let mut b = BytesMut::with_capacity(input.len() + HEADER);
        b.put_u8(RAW);
        b.put_slice(&(input.len() as u32).to_be_bytes()[1..]);
        b.put_slice(input);
        b.freeze()
    }
}

/// The receiving half: turns received stream bytes back into the sender's bytes.
pub struct Inflater {
    d: Decompress,
    /// Bytes of records not complete yet: at most one record plus one DATA frame, since
    /// complete records are taken out before more is fed.
    pending: BytesMut,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            d: Decompress::new(false),
            pending: BytesMut::new(),
        }
    }
}

/// One record, decoded in pieces of bounded size.
pub enum Decoded {
    /// The record's bytes as they are.
    Raw(Bytes),
    /// DEFLATE data still to inflate with [`Inflater::next_piece`].
    Deflate(Bytes),
}

impl Inflater {
    /// Adds received bytes; take the records they complete with [`Self::next_record`].
    pub fn feed(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
    }

    /// The next complete record, if one has arrived.
    pub fn next_record(&mut self) -> Result<Option<Decoded>, CodecError> {
        let Some(head) = self.pending.get(..HEADER) else {
            return Ok(None);
        };
        let flag = head[0];
        let len = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
        if len > MAX_RECORD {
            return Err(CodecError(format!(
                "record of {len} bytes; at most {MAX_RECORD}"
            )));
        }
        if flag != RAW && flag != DEFLATE {
            return Err(CodecError(format!("unknown record flag {flag}")));
        }
        if self.pending.len() < HEADER + len {
            return Ok(None);
        }
        let mut rec = self.pending.split_to(HEADER + len);
        let body = rec.split_off(HEADER).freeze();
        Ok(Some(if flag == RAW {
            self.d.reset(false);
            Decoded::Raw(body)
        } else {
            Decoded::Deflate(body)
        }))
    }

    /// Inflates from `input` into `out` (cleared first) up to `limit` bytes, and returns how
    /// many input bytes were used. Call until `input` is used up and a call yields less than
    /// `limit`: that bounds the memory one small, highly compressed frame can claim.
    pub fn next_piece(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<usize, CodecError> {
        out.clear();
        out.reserve(limit);
        let before = self.d.total_in();
        let status = self
            .d
            .decompress_vec(input, out, FlushDecompress::Sync)
            .map_err(|e| CodecError(e.to_string()))?;
        let used = (self.d.total_in() - before) as usize;
        if status == Status::StreamEnd {
            return Err(CodecError(
                "DEFLATE stream ended; the protocol never ends it".into(),
            ));
        }
        if used == 0 && out.is_empty() && !input.is_empty() {
            return Err(CodecError("DEFLATE data made no progress".into()));
        }
        Ok(used)
    }
}

/// Feeds `data` and decodes every record it completes into one buffer (tests, benchmarks;
/// the relay decodes piecewise).
pub fn decode_all(inf: &mut Inflater, data: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut all = Vec::new();
    inf.feed(data);
    while let Some(rec) = inf.next_record()? {
        match rec {
            Decoded::Raw(r) => all.extend_from_slice(&r),
            Decoded::Deflate(body) => {
                let mut rest = &body[..];
                let mut piece = Vec::new();
                loop {
                    let used = inf.next_piece(rest, &mut piece, 64 * 1024)?;
                    rest = &rest[used..];
                    all.extend_from_slice(&piece);
                    if rest.is_empty() && piece.len() < 64 * 1024 {
                        break;
                    }
                }
            }
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(chunks: &[Vec<u8>]) -> (usize, usize) {
        let (mut d, mut i) = (Deflater::default(), Inflater::default());
        let (mut plain, mut wire) = (0, 0);
        for c in chunks {
            let p = d.encode(c);
            assert!(
                p.len() <= c.len() + HEADER,
                "record grew past chunk + header"
            );
            wire += p.len();
            plain += c.len();
            assert_eq!(&decode_all(&mut i, &p).unwrap(), c);
        }
        (plain, wire)
    }

    #[test]
    fn text_shrinks_and_survives() {
        let line = b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: example\r\n\r\n".repeat(200);
        let chunks: Vec<Vec<u8>> = (0..20).map(|_| line.clone()).collect();
        let (plain, wire) = roundtrip(&chunks);
        assert!(wire * 10 < plain, "{wire} of {plain}");
    }

    #[test]
    fn random_costs_only_the_header() {
        let chunks: Vec<Vec<u8>> = (0..200)
            .map(|_| (0..60_000).map(|_| rand::random::<u8>()).collect())
            .collect();
        let (plain, wire) = roundtrip(&chunks);
        assert_eq!(wire, plain + 200 * HEADER);
    }

    #[test]
    fn mixed_raw_and_compressed_keep_both_contexts_in_step() {
        let text = b"hello hello hello hello hello ".repeat(100);
        let mut chunks = Vec::new();
        for n in 0..50 {
            chunks.push(text.clone());
            chunks.push((0..(n * 97 + 1)).map(|_| rand::random::<u8>()).collect());
            chunks.push(b"x".to_vec());
        }
        roundtrip(&chunks);
    }

    #[test]
    fn bomb_is_inflated_in_bounded_pieces() {
        let zeros = vec![0u8; Deflater::MAX_INPUT];
        let mut d = Deflater::default();
        let mut p = d.encode(&zeros);
        for _ in 0..10 {
            p = d.encode(&zeros);
        }
        assert!(p.len() < 1000, "{}", p.len());
        let mut i = Inflater::default();
        // Replaying one later payload into a fresh context must fail or decode, never panic.
        let _ = decode_all(&mut i, &p);
        let first = Deflater::default().encode(&zeros);
        let mut i = Inflater::default();
        i.feed(&first);
        let Some(Decoded::Deflate(body)) = i.next_record().unwrap() else {
            panic!("zeros should compress");
        };
        let mut rest = &body[..];
        let mut piece = Vec::new();
        let mut total = 0;
        for _ in 0..100 {
            let used = i.next_piece(rest, &mut piece, 4096).unwrap();
            assert!(piece.len() <= 4096);
            total += piece.len();
            rest = &rest[used..];
            if rest.is_empty() && piece.len() < 4096 {
                break;
            }
        }
        assert_eq!(total, zeros.len());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut i = Inflater::default();
        assert!(decode_all(&mut i, &[]).unwrap().is_empty());
        assert!(decode_all(&mut Inflater::default(), &[7, 0, 0, 1, 2]).is_err());
        assert!(decode_all(&mut Inflater::default(), &[RAW, 0xff, 0xff, 0xff]).is_err());
        let bad = [DEFLATE, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
        assert!(decode_all(&mut Inflater::default(), &bad).is_err());
    }

    /// Records survive any cut of the byte stream: the mux may split or join DATA frames.
    #[test]
    fn records_survive_any_split() {
        let text = b"interactive line\n".repeat(50);
        let mut d = Deflater::default();
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for n in 0..40 {
            let chunk: Vec<u8> = if n % 3 == 0 {
                (0..n * 31).map(|_| rand::random::<u8>()).collect()
            } else {
                text[..n * 20].to_vec()
            };
            wire.extend_from_slice(&d.encode(&chunk));
            want.extend_from_slice(&chunk);
        }
        for cut in [1, 2, 3, 7, 64, 1000, wire.len()] {
            let mut i = Inflater::default();
            let mut got = Vec::new();
            for piece in wire.chunks(cut) {
                got.extend(decode_all(&mut i, piece).unwrap());
            }
            assert_eq!(got, want, "cut every {cut} bytes");
        }
    }
}
