//! Compressed stream bytes come from the peer: any byte string, cut anywhere, must decode or
//! fail cleanly, never panic or grow without bound. A valid encoding must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sgw::compress::{decode_all, Deflater, Inflater};

fuzz_target!(|data: &[u8]| {
    // Hostile input, fed in two cuts.
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut inf = Inflater::default();
    if decode_all(&mut inf, &data[..cut]).is_ok() {
        let _ = decode_all(&mut inf, &data[cut..]);
    }
    // The same bytes as stream content: encode, decode, compare.
    let mut d = Deflater::default();
    let mut inf = Inflater::default();
    let mut back = Vec::new();
    for chunk in data.chunks(Deflater::MAX_INPUT.min(997)) {
        back.extend(decode_all(&mut inf, &d.encode(chunk)).expect("own encoding decodes"));
    }
    assert_eq!(back, data);
});
