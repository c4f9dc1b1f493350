//! Management-API requests with hostile bodies, served in process by the API's own router:
//! no panic, no hang, no 5xx, every refusal a JSON error with a reason, never the token.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/api_fuzz.rs"]
mod api_fuzz;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    rt.block_on(api_fuzz::one(data));
});
