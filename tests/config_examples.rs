//! Every file in `config/` must load as the product would load it.

use std::path::Path;

use sgw::acl::{Acl, Request};
use sgw::config::{self, AnyConfig};

#[test]
fn every_example_config_loads() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let dir = tempfile::tempdir().unwrap();
    // The examples point at the files `sgw init` writes: make real ones next to them.
    let certs = tempfile::tempdir().unwrap();
    sgw::init::write(certs.path(), &sgw::init::InitOptions::default()).unwrap();
    for f in ["ca.pem", "gateway.pem", "gateway.key", "token", "api.token"] {
        std::fs::copy(certs.path().join(f), dir.path().join(f)).unwrap();
    }
    // The intranet destination's own pairs (the gateway's key there is refused).
    for side in ["client", "server"] {
        let other = tempfile::tempdir().unwrap();
        sgw::init::write(other.path(), &sgw::init::InitOptions::default()).unwrap();
        for (from, to) in [("gateway.pem", "pem"), ("gateway.key", "key")] {
            let to = dir.path().join(format!("intranet-{side}.{to}"));
            std::fs::copy(other.path().join(from), to).unwrap();
        }
    }
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let src = entry.unwrap().path();
        std::fs::copy(&src, dir.path().join(src.file_name().unwrap())).unwrap();
    }
    for entry in std::fs::read_dir(&examples).unwrap() {
        let name = entry.unwrap().file_name();
        let path = dir.path().join(&name);
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => match config::load_any(&path) {
                Ok(AnyConfig::Client(c)) => {
                    assert_eq!(c.gateways.len(), 1);
                    assert_eq!(c.limits.max_stream_window, 16 * 1024 * 1024);
                    Acl::load(&c.acl_file, c.default_policy).unwrap();
                    seen += 1;
                }
                Ok(AnyConfig::Gateway(g)) => {
                    let d = &g.gateways[0].destinations;
                    assert_eq!(d.len(), 8);
                    assert_eq!(d[5].protocol.as_str(), "HTTP");
                    assert!(d[5].host_rewrite);
                    assert_eq!(d[6].protocol.as_str(), "UDP");
                    assert!(d[7].reverse && d[7].local_port == 18443);
                    assert_eq!(g.egress_allow.len(), 2);
                    let api = g.api.as_ref().unwrap();
                    assert_eq!(api.listen.port(), 9443);
                    assert!(api.admin_token.is_some() && api.state_file.is_some());
                    assert_eq!(
                        (api.max_body, api.cloud_host.as_str()),
                        (1 << 20, "127.0.0.1")
                    );
                    let tls = d[3].endpoint_tls.as_ref().unwrap();
                    assert!(tls.mutual && tls.identity.is_some() && tls.reject_unauth);
                    assert_eq!(tls.client_certs.len(), 1);
                    assert_eq!(d[3].caller_tls.as_str(), "serverside");
                    assert!(d[4].compression);
                    assert_eq!(d[4].proxy.as_ref().unwrap().protocol, 5);
                    assert!(!d[1].enabled);
                    assert!(d[2].private);
                    assert_eq!(d[2].ip_table_rules.len(), 2);
                    assert!(d[2].ip_table_rules[1].matches("198.51.100.7:2000".parse().unwrap()));
                    assert!(!d[2].ip_table_rules[1].matches("198.51.100.7:80".parse().unwrap()));
                    // CONFIG carries dest_key to clients: the gateway's own key is refused,
                    // naming the line.
                    let text = std::fs::read_to_string(&path).unwrap();
                    let line = 1 + text
                        .lines()
                        .position(|l| l.starts_with("dest_key = "))
                        .unwrap();
                    let shared = path.with_file_name("shared-key.toml");
                    std::fs::write(
                        &shared,
                        text.replace(
                            "dest_key = \"intranet-client.key\"",
                            "dest_key = \"gateway.key\"",
                        ),
                    )
                    .unwrap();
                    let err = config::load_any(&shared).err().unwrap().to_string();
                    assert!(
                        err.contains(&format!("shared-key.toml:{line}:"))
                            && err.contains("gateway's own tls_key"),
                        "{err}"
                    );
                    // The same key in another encoding (SEC1) is the same key.
                    let sec1 = dir.path().join("gateway-sec1.key");
                    let converted = std::process::Command::new("openssl")
                        .args(["ec", "-in"])
                        .arg(dir.path().join("gateway.key"))
                        .arg("-out")
                        .arg(&sec1)
                        .output();
                    if converted.is_ok_and(|o| o.status.success()) {
                        assert!(std::fs::read_to_string(&sec1)
                            .unwrap()
                            .contains("BEGIN EC PRIVATE KEY"));
                        std::fs::write(
                            &shared,
                            text.replace(
                                "dest_key = \"intranet-client.key\"",
                                "dest_key = \"gateway-sec1.key\"",
                            ),
                        )
                        .unwrap();
                        let err = config::load_any(&shared).err().unwrap().to_string();
                        assert!(err.contains("gateway's own tls_key"), "{err}");
                    } else {
                        println!("SKIPPED the SEC1 case: openssl could not convert the key");
                    }
                    seen += 1;
                }
                Err(e) => panic!("{}: {e}", name.to_string_lossy()),
            },
            Some("list") => {
                let acl = Acl::load(&path, config::Policy::Deny).unwrap();
                assert!(acl.check(&Request::new("127.0.0.1", 6379)).allow);
                assert!(!acl.check(&Request::new("169.254.169.254", 80)).allow);
                // The metadata deny deliberately overlaps the any-host `:22` allow; nothing else.
                let lint = sgw::acl::lint(&acl);
                assert_eq!(lint.len(), 1, "{lint:?}");
                assert!(lint[0].message.ends_with("line 5 denies"), "{lint:?}");
                let office = Request::new("10.2.0.8", 3389).at("tue 09:00".parse().unwrap());
                assert!(acl.check(&office).allow);
                let night = Request::new("10.2.0.8", 3389).at("tue 22:00".parse().unwrap());
                assert!(!acl.check(&night).allow);
                seen += 1;
            }
            Some("yml") => {} // docker-compose.yml: its own test below
            _ => panic!("unexpected file in config/: {}", name.to_string_lossy()),
        }
    }
    assert_eq!(seen, 3);
}

/// `admin_token` guards the API and the gateway's admin endpoint; alone it guards nothing and
/// is refused, naming the line, as are admin keys without `admin_listen`.
#[test]
fn gateway_admin_keys_need_a_listener() {
    let at = Path::new("/etc/sgw/gateway.toml");
    let base = "listen = \"127.0.0.1:0\"\ntls_cert = \"-----BEGIN CERTIFICATE-----\\nAA==\\n-----END CERTIFICATE-----\"\n";
    let errs = |text: &str| match config::GatewayConfig::from_toml_env(at, text, Default::default())
    {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
    };
    let e = errs(&format!(
        "admin_token = \"x\"\nadmin_hosts = [\"gw\"]\n{base}"
    ));
    assert!(
        e.iter().any(|e| e.contains("gateway.toml:1:")
            && e.contains("admin_token")
            && e.contains("only applies with api_listen or admin_listen")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.contains("gateway.toml:2:") && e.contains("only applies with admin_listen")),
        "{e:?}"
    );
    let e = errs(&format!("admin_listen = \"nowhere\"\n{base}"));
    assert!(
        e.iter()
            .any(|e| e.contains("gateway.toml:1:")
                && e.contains("`nowhere` is not an ip:port address")),
        "{e:?}"
    );
}

/// config/docker-compose.yml as its comments say to use it: an enrolled ./sgw directory, the
/// ACL line it adds, its SGW_CLIENT_* variables with the secrets where compose mounts them.
/// The client config those make loads, and the ACL lets the app through by its service name.
#[test]
fn the_compose_example_configures_a_working_client() {
    let compose = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/docker-compose.yml"),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let sgw_dir = work.path().join("sgw");
    let (ca, _, _) = sgw::init::ca_and_server("t", "t", vec!["gw.example".into()]).unwrap();
    let e = sgw::enroll::Enrollment {
        url: config::WssUrl::parse("wss://gw.example:443/tunnel").unwrap(),
        gateway_id: "gw1".into(),
        token: config::Secret::new("compose-token"),
        ca_pem: Some(ca.pem()),
    };
    sgw::enroll::write_client_dir(&sgw_dir, &e, "127.0.0.1:9003").unwrap();
    let rule = compose
        .lines()
        .find_map(|l| l.split("echo '").nth(1)?.split('\'').next())
        .expect("the ACL line the comments add");
    let acl_path = sgw_dir.join("acl.list");
    let acl_text = std::fs::read_to_string(&acl_path).unwrap() + rule + "\n";
    std::fs::write(&acl_path, acl_text).unwrap();

    // secrets: NAME -> file; environment: SGW_CLIENT_* with /run/secrets/NAME mapped to it.
    let mut secrets = std::collections::HashMap::new();
    let mut name = None;
    for l in compose.lines() {
        let t = l.trim();
        if l.starts_with("  ") && !l.starts_with("    ") && t.ends_with(':') {
            name = Some(t.trim_end_matches(':').to_owned());
        } else if let (Some(n), Some(f)) = (&name, t.strip_prefix("file: ")) {
            secrets.insert(n.clone(), work.path().join(f));
        }
    }
    let mut env = std::collections::BTreeMap::new();
    for l in compose.lines() {
        let Some((k, v)) = l.trim().split_once(": ") else {
            continue;
        };
        if !k.starts_with("SGW_CLIENT_") || k == "SGW_CLIENT_CONFIG" || k == "SGW_CLIENT_LOG_FORMAT"
        {
            continue;
        }
        let v = match v.strip_prefix("/run/secrets/") {
            Some(n) => secrets[n].display().to_string(),
            None => v.to_owned(),
        };
        env.insert(k.to_owned(), v);
    }
    assert_eq!(env.len(), 2, "{env:?}");
    let client_toml = sgw_dir.join("client.toml");
    let text = std::fs::read_to_string(&client_toml).unwrap();
    let c = config::ClientConfig::from_toml_env(&client_toml, &text, env).unwrap();
    assert_eq!(c.gateways[0].token.expose(), "compose-token");
    assert!(c.admin_token.is_some());
    let acl = Acl::load(&acl_path, c.default_policy).unwrap();
    assert!(acl.check(&Request::new("legacy-app", 6379)).allow);
    assert!(!acl.check(&Request::new("legacy-app", 22)).allow);
    assert!(compose.contains(r#"test: ["CMD", "sgw", "health"]"#));
    assert!(compose.contains("- ./sgw:/etc/sgw:ro"));
}

/// `window_budget_per_gateway` unset is the whole `window_budget`, whatever that is set to, so
/// raising the budget of a gateway of one id is not undone by a share it never asked for.
#[test]
fn the_per_gateway_window_budget_follows_the_budget_unless_set() {
    let dir = tempfile::tempdir().unwrap();
    sgw::init::write(dir.path(), &sgw::init::InitOptions::default()).unwrap();
    let at = dir.path().join("gateway.toml");
    let base = std::fs::read_to_string(&at).unwrap();
    let load = |limits: &str| {
        let text = format!("{base}\n[limits]\n{limits}\n");
        match config::GatewayConfig::from_toml_env(&at, &text, Default::default()) {
            Ok(c) => (c.limits.window_budget, c.limits.window_budget_per_gateway),
            Err(e) => panic!("{}", e.0.join("\n")),
        }
    };
    let g = 1u64 << 30;
    assert_eq!(load("window_budget = \"3GiB\""), (3 * g, 3 * g));
    assert_eq!(
        load("window_budget = \"3GiB\"\nwindow_budget_per_gateway = \"1GiB\""),
        (3 * g, g)
    );
    assert_eq!(load("max_streams = 10"), (2 * g, 2 * g));
}

/// A gateway id goes into a header and into the client ids made from it: gateway.toml's are
/// printable ASCII of at most 128 bytes, and the error names the line.
#[test]
fn gateway_ids_are_short_printable_words() {
    let dir = tempfile::tempdir().unwrap();
    sgw::init::write(dir.path(), &sgw::init::InitOptions::default()).unwrap();
    let at = dir.path().join("gateway.toml");
    let base = std::fs::read_to_string(&at).unwrap();
    for (bad, ok) in [
        ("x".repeat(129), false),
        ("has space".into(), false),
        ("gw-2.a_b".into(), true),
    ] {
        let text = base.replacen("id = \"gw1\"", &format!("id = \"{bad}\""), 1);
        assert_ne!(text, base);
        let r = config::GatewayConfig::from_toml_env(&at, &text, Default::default());
        match (r, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => {
                let e = e.0.join("\n");
                assert!(
                    e.contains("gateways[0].id: a gateway id is 1 to 128 printable"),
                    "{e}"
                );
                assert!(e.contains("gateway.toml:"), "{e}");
            }
            (Ok(_), false) => panic!("id {bad:.20} accepted"),
            (Err(e), true) => panic!("{}", e.0.join("\n")),
        }
    }
}
