//! Any byte string is a possible WebSocket message from a hostile peer: decoding must never
//! panic, and whatever decodes must re-encode to the same bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sgw::proto::{decode_message, encode_frame};

fuzz_target!(|data: &[u8]| {
    let msg = Bytes::copy_from_slice(data);
    let mut frames = Vec::new();
    if decode_message(&msg, |f| frames.push(f)).is_ok() {
        let mut out = BytesMut::new();
        for f in &frames {
            encode_frame(f, &mut out);
        }
        // Flags are ignored on receipt and sent as 0, so compare with them cleared.
        let mut expect = data.to_vec();
        let mut off = 0;
        while off + 10 <= expect.len() {
            expect[off + 1] = 0;
            let len = u32::from_be_bytes([expect[off + 6], expect[off + 7], expect[off + 8], expect[off + 9]]) as usize;
            off += 10 + len;
        }
        assert_eq!(&out[..], &expect[..]);
    }
});
