//! Any request target a caller sends to an HTTP destination: judging it never panics, and what
//! passes is a normalised absolute path that judges to itself (docs/ACL.md "HTTP paths").
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = sgw::acl::request_path(target) {
        let path = p.split('?').next().unwrap_or("");
        assert!(path.starts_with('/'), "{p:?}");
        assert!(!path.split('/').any(|s| s == "." || s == ".."), "{p:?}");
        assert_eq!(sgw::acl::request_path(&p).as_deref(), Ok(p.as_str()));
    }
});
