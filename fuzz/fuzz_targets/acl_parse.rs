//! Any text is a possible ACL file (operators type them; the admin API accepts rules): parsing
//! must never panic, errors carry `file:line:col`, and whatever parses must give the same
//! decision through the index as through the top-down reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sgw::acl::{lint, parse_rule, Acl, LocalTime, Request};
use sgw::config::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_rule(text);
    match Acl::parse("f", text, Policy::Deny) {
        Ok(acl) => {
            let _ = lint(&acl);
            let at = LocalTime { weekday: 5, minute: 600 };
            for (host, port) in [("10.0.0.1", 80u16), ("a.corp.example", 443), ("::1", 22)] {
                let req = Request::new(host, port)
                    .at(at)
                    .path("/api/x")
                    .from("192.0.2.1:5000".parse().unwrap());
                assert_eq!(acl.check(&req), acl.check_naive(&req));
            }
        }
        Err(errs) => assert!(errs.iter().all(|e| e.starts_with("f:"))),
    }
});
