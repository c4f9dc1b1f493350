//! HELLO, CONFIG, LOG and OPEN payloads as a hostile peer may send them: parsing and HELLO's
//! caps never panic, and a HELLO that passes is within its caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sgw::proto::{ConfigPush, Hello, LogPush, OpenMeta};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = serde_json::from_slice::<Hello>(data) {
        if h.validate().is_ok() {
            assert!(h.hostname.len() <= 256 && h.instance.len() <= 256 && h.features.len() <= 16);
        }
    }
    let _ = serde_json::from_slice::<ConfigPush>(data);
    if let Ok(l) = serde_json::from_slice::<LogPush>(data) {
        assert!(sgw::telemetry::clean(&l.message, 2048).chars().all(|c| !c.is_control()));
    }
    let _ = serde_json::from_slice::<OpenMeta>(data);
});
