//! A stream's received DATA waiting for its reader, held so that the memory it keeps follows
//! what the stream's window counts.
//!
//! DATA payloads arrive as slices of their tunnel message, without a copy. A slice keeps its
//! whole message alive, though: a peer allowed a byte could pin a 2 MiB message with a
//! 1-byte frame padded with frames that are dropped, once for every byte of the window, while
//! the window and `/metrics` count bytes. So a payload stays a slice only when it is a good
//! share of its message (bulk DATA is: two chunks a message); any other payload is copied,
//! and consecutive copies share an allocation, so a flood of tiny frames costs about what its
//! bytes do rather than a queue entry each (docs/SECURITY.md, "Memory").

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// A payload stays a slice of its message when it is at least 1/`KEEP_SHARE` of it: what the
/// kept slices pin is then at most `KEEP_SHARE` times the bytes they hold.
const KEEP_SHARE: usize = 4;
/// ... and at least this large, so each queue entry stands for at least this many bytes.
const KEEP_MIN: usize = 1024;
/// Copied payloads gather into one buffer up to this size before it becomes a chunk.
const GATHER: usize = 16 * 1024;

#[derive(Debug, Default)]
pub(crate) struct RecvQueue {
    chunks: VecDeque<Bytes>,
    /// Copied payloads received after the last chunk: the queue's end.
    gathered: BytesMut,
}

impl RecvQueue {
    /// Queues `data`, a payload of a message of `msg_len` bytes.
    pub(crate) fn push(&mut self, data: Bytes, msg_len: usize) {
        if data.len() >= KEEP_MIN && data.len().saturating_mul(KEEP_SHARE) >= msg_len {
            self.seal();
            self.chunks.push_back(data);
        } else {
            self.gathered.extend_from_slice(&data);
            if self.gathered.len() >= GATHER {
                self.seal();
            }
        }
    }

    /// The gathered copies become a chunk, so what comes next queues behind them.
    fn seal(&mut self) {
        if !self.gathered.is_empty() {
            let chunk = self.gathered.split().freeze();
            self.chunks.push_back(chunk);
        }
    }

    /// The oldest chunk.
    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        self.seal_if_last();
        self.chunks.pop_front()
    }

    /// Moves up to `max` chunks (at least one, if any) into `out`; how many.
    pub(crate) fn take(&mut self, out: &mut Vec<Bytes>, max: usize) -> usize {
        // With room for them, the gathered copies go too.
        if self.chunks.len() < max.max(1) {
            self.seal();
        }
        let k = self.chunks.len().min(max.max(1));
        out.extend(self.chunks.drain(..k));
        k
    }

    /// Gathered copies are handed out once no chunk is ahead of them.
    fn seal_if_last(&mut self) {
        if self.chunks.is_empty() {
            self.seal();
        }
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
    fn a_small_payload_of_a_large_message_is_copied_out_of_it() {
        let msg = Bytes::from(vec![7u8; 2 * 1024 * 1024]);
        let mut q = RecvQueue::default();
        q.push(msg.slice(100..101), msg.len());
        q.push(msg.slice(5000..5000 + KEEP_MIN), msg.len());
        let got = drain(&mut q);
        assert_eq!(got.len(), 1, "the two copies share one chunk");
        assert_eq!(got[0].len(), 1 + KEEP_MIN);
        assert!(
            !inside(&got[0], &msg),
            "a copy keeps no part of the message alive"
        );
    }

    #[test]
    fn bulk_payloads_stay_slices_of_their_message() {
        // Two 64 KiB chunks a message, as the writer batches bulk DATA.
        let msg = Bytes::from(vec![1u8; 2 * 65_292]);
        let mut q = RecvQueue::default();
        q.push(msg.slice(12..65_292), msg.len());
        q.push(msg.slice(65_304..), msg.len());
        let got = drain(&mut q);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|b| inside(b, &msg)), "no copy of bulk data");
    }

    #[test]
    fn order_is_kept_across_slices_and_copies() {
        let big = Bytes::from((0..=255u8).cycle().take(64 * 1024).collect::<Vec<_>>());
        let mut q = RecvQueue::default();
        let mut want = Vec::new();
        let mut out = Vec::new();
        for i in 0..200usize {
            // Tiny copies, whole-message slices and copies big enough to fill a chunk.
            let part = match i % 5 {
                0 => big.clone(),
                1 | 2 => big.slice(i..i + 3),
                3 => big.slice(0..GATHER + 7),
                _ => big.slice(i..i + 2000),
            };
            want.extend_from_slice(&part);
            let msg_len = if i % 5 == 0 { big.len() } else { 256 * 1024 };
            q.push(part, msg_len);
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
        let msg = Bytes::from(vec![9u8; 4096]);
        let mut q = RecvQueue::default();
        for _ in 0..100_000 {
            q.push(msg.slice(0..1), msg.len());
        }
        let got = drain(&mut q);
        assert_eq!(got.iter().map(Bytes::len).sum::<usize>(), 100_000);
        assert!(got.len() <= 100_000 / GATHER + 1, "{} entries", got.len());
    }

    #[test]
    fn take_hands_out_gathered_bytes_when_nothing_is_ahead() {
        let mut q = RecvQueue::default();
        q.push(Bytes::from_static(b"ab"), 100);
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out, 8), 1);
        assert_eq!(&out[0][..], b"ab");
        assert_eq!(q.take(&mut out, 8), 0);
    }
}
