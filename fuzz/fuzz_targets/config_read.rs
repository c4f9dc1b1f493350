//! Any text as client.toml or gateway.toml: reading never panics, and a refusal always says
//! why (every error, with its path and line).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sgw::config::{ClientConfig, GatewayConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: `*_file` keys can't read anything real.
    let at = Path::new("/nonexistent/sgw-fuzz/config.toml");
    if let Err(e) = ClientConfig::from_toml_env(at, text, Default::default()) {
        assert!(!e.0.is_empty());
    }
    if let Err(e) = GatewayConfig::from_toml_env(at, text, Default::default()) {
        assert!(!e.0.is_empty());
    }
});
