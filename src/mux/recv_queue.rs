//! A stream's received DATA waiting for its relay, held so that the memory it keeps is what
//! the stream's window counts.
//!
//! DATA payloads arrive as slices of their tunnel message, and the message is itself a slice
//! of the WebSocket's read buffer, which may hold other messages: a slice can keep an
//! allocation of megabytes alive for one byte. A peer allowed a byte could then pin a
//! 2 MiB message with a 1-byte frame padded with frames that are dropped, once for every
//! byte of the window, while the window and `/metrics` count bytes. So what waits here is
//! copied out of its message: large payloads into an allocation of their own, small ones
//! gathered together, so a flood of tiny frames costs about what its bytes do
//! rather than a queue entry each (docs/SECURITY.md, "What a stream holds"). Small DATA that
//! finds nothing waiting goes to the socket without a copy (`DirectSink`), and bulk pays one
//! copy, 1-4% of the tunnel's CPU in two A/Bs (docs/PERFORMANCE.md).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Payloads from this size get an allocation of their own; smaller ones are gathered, and
/// the gathered buffer becomes a chunk once it is this large.
const GATHER: usize = 16 * 1024;

#[derive(Debug, Default)]
pub(crate) struct RecvQueue {
    chunks: VecDeque<Bytes>,
    /// Small payloads received after the last chunk: the queue's end.
    gathered: BytesMut,
}

impl RecvQueue {
    /// Queues a copy of `data`.
    pub(crate) fn push(&mut self, data: &[u8]) {
        if data.len() >= GATHER {
            self.seal();
            self.chunks.push_back(Bytes::copy_from_slice(data));
        } else {
            self.gathered.extend_from_slice(data);
            if self.gathered.len() >= GATHER {
                self.seal();
            }
        }
    }

    /// The gathered bytes become a chunk, so what comes next queues behind them. The chunk
    /// takes the buffer with it (not `split`, which would leave the rest of the allocation
    /// with `gathered`, held empty for the stream's life once the chunk is written).
    fn seal(&mut self) {
        if !self.gathered.is_empty() {
            let chunk = std::mem::take(&mut self.gathered).freeze();
            self.chunks.push_back(chunk);
        }
    }

    /// The oldest chunk.
    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        if self.chunks.is_empty() {
            self.seal();
        }
        self.chunks.pop_front()
    }

    /// Moves up to `max` chunks (at least one, if any) into `out`; how many.
    pub(crate) fn take(&mut self, out: &mut Vec<Bytes>, max: usize) -> usize {
        let max = max.max(1);
        // With room for them, the gathered bytes go too.
        if self.chunks.len() < max {
            self.seal();
        }
        let k = self.chunks.len().min(max);
        out.extend(self.chunks.drain(..k));
        k
    }

    /// Whether memory is held (a test's view: the buffer nothing is gathered in yet).
    #[cfg(test)]
    fn holds_memory(&self) -> bool {
        !self.chunks.is_empty() || self.gathered.capacity() > 0
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.gathered = BytesMut::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `b` points into `msg`'s memory (a slice of it, not a copy).
    fn inside(b: &Bytes, msg: &Bytes) -> bool {
        let start = msg.as_ptr() as usize;
        let p = b.as_ptr() as usize;
        p >= start && p < start + msg.len()
    }

    fn drain(q: &mut RecvQueue) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(b) = q.pop() {
            out.push(b);
        }
        out
    }

    #[test]
    fn nothing_queued_points_into_the_message_it_came_in() {
        let msg = Bytes::from(vec![7u8; 2 * 1024 * 1024]);
        let mut q = RecvQueue::default();
        q.push(&msg[100..101]);
        q.push(&msg[5000..6000]);
        q.push(&msg[10_000..10_000 + 65_280]);
        let got = drain(&mut q);
        assert_eq!(got.len(), 2, "the two small payloads share one chunk");
        assert_eq!(got[0].len(), 1 + 1000);
        assert_eq!(got[1].len(), 65_280);
        assert!(got.iter().all(|b| !inside(b, &msg)), "copies only");
    }

    #[test]
    fn order_is_kept_across_large_and_gathered_payloads() {
        let big = (0..=255u8).cycle().take(64 * 1024).collect::<Vec<_>>();
        let mut q = RecvQueue::default();
        let mut want = Vec::new();
        let mut out = Vec::new();
        for i in 0..200usize {
            let part = match i % 5 {
                0 => &big[..],
                1 | 2 => &big[i..i + 3],
                3 => &big[..GATHER + 7],
                _ => &big[i..i + 2000],
            };
            want.extend_from_slice(part);
            q.push(part);
            if i % 7 == 0 {
                q.take(&mut out, 3);
            }
        }
        q.take(&mut out, usize::MAX);
        assert!(q.pop().is_none());
        let got: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_flood_of_one_byte_frames_costs_few_entries() {
        let mut q = RecvQueue::default();
        for _ in 0..100_000 {
            q.push(b"x");
        }
        let got = drain(&mut q);
        assert_eq!(got.iter().map(Bytes::len).sum::<usize>(), 100_000);
        assert!(got.len() <= 100_000 / GATHER + 1, "{} entries", got.len());
    }

    #[test]
    fn nothing_is_held_once_everything_is_taken() {
        let mut q = RecvQueue::default();
        q.push(&[1u8; 16_383]);
        q.push(b"x");
        let got = drain(&mut q);
        assert_eq!(got.iter().map(Bytes::len).sum::<usize>(), 16_384);
        drop(got);
        assert!(!q.holds_memory(), "an emptied queue keeps no buffer");
    }

    #[test]
    fn take_honours_its_bound_and_hands_out_gathered_bytes_last() {
        let mut q = RecvQueue::default();
        let large = vec![1u8; GATHER];
        q.push(&large);
        q.push(&large);
        q.push(b"ab");
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out, 1), 1);
        assert_eq!(q.take(&mut out, 0), 1, "at least one");
        assert_eq!(q.take(&mut out, 8), 1);
        assert_eq!(&out[2][..], b"ab");
        assert_eq!(q.take(&mut out, 8), 0);
    }
}
