//! Why a tunnel does not come up, as the operator reads it (issue: plain reasons): each broken
//! set-up, made for real (certificates, a gateway process, a client process), gives a client
//! log line with the stable `reason` code and a sentence naming the cause and the fix, and no
//! library wording. docs/OPERATIONS.md's table lists exactly the codes the source has.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Library wording that must not reach an operator.
const RAW: &[&str] = &["Other(", "Custom {", "Os {", "docs.rs"];

/// A gateway from `sgw init`'s files on `host:0`, serving `cert`/`key`; returns it and its port.
async fn gateway(dir: &Path, host: &str, cert: &str, key: &str) -> (Proc, u16) {
    let cfg = dir.join(format!("gateway-{host}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{host}:0\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n\
             [[gateways]]\nid = \"gw1\"\ntoken_file = \"token\"\n"
        ),
    )
    .unwrap();
    let p = Proc::spawn(&["gateway", "--config", cfg.to_str().unwrap()]);
    let line = p.wait_line("gateway started").await;
    let port = field(&line, "tunnel.listen")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (p, port)
}

/// A client for gateway id `gw1` at `url`, trusting `ca`, with `token`.
fn client_config(dir: &Path, name: &str, url: &str, ca: &str, token: &str) -> PathBuf {
    let path = dir.join(format!("client-{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "acl_file = \"acl.list\"\nadmin_listen = \"127.0.0.1:0\"\n[[gateway]]\nurl = \"{url}\"\ngateway_id = \"gw1\"\n\
             token = \"{token}\"\nca_file = \"{ca}\"\ntunnels = 1\n\
             [reconnect]\ninitial = \"200ms\"\nmax = \"1s\"\n"
        ),
    )
    .unwrap();
    path
}

/// Waits for the client's line with `reason=code` and checks it reads as a sentence.
async fn says(client: &Proc, code: &str, words: &[&str]) -> String {
    let line = client.wait_line(&format!("reason={code}")).await;
    for w in words {
        assert!(line.contains(w), "{code}: {w:?} missing in {line}");
    }
    for raw in RAW {
        assert!(
            !line.contains(raw),
            "{code}: library wording {raw:?} in {line}"
        );
    }
    line
}

/// `sgw init`'s files in a new directory, with an ACL for the clients; and gw1's token.
fn init_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    sgw::init::write(dir.path(), &sgw::init::InitOptions::default()).unwrap();
    std::fs::write(dir.path().join("acl.list"), "acl allow 127.0.0.1:1\n").unwrap();
    let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
    (dir, token.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_setup_names_its_cause_and_fix() {
    let (dir, token) = init_dir();
    let d = dir.path();
    let token = token.as_str();
    let other = tempfile::tempdir().unwrap();
    sgw::init::write(other.path(), &sgw::init::InitOptions::default()).unwrap();
    std::fs::copy(other.path().join("ca.pem"), d.join("other-ca.pem")).unwrap();

    let (_gw, port) = gateway(d, "127.0.0.1", "gateway.pem", "gateway.key").await;
    let url = format!("wss://127.0.0.1:{port}/tunnel");
    let spawn = |name: &str, url: &str, ca: &str, token: &str| {
        let cfg = client_config(d, name, url, ca, token);
        Proc::spawn(&["client", "--config", cfg.to_str().unwrap()])
    };

    // A CA the gateway's certificate does not chain to.
    let c = spawn("wrong-ca", &url, "other-ca.pem", token);
    says(
        &c,
        "tls_unknown_ca",
        &["not signed by a CA in ca_file", "ca.pem"],
    )
    .await;
    drop(c);

    // A wrong token.
    let c = spawn("wrong-token", &url, "ca.pem", "not-the-token");
    says(&c, "token_rejected", &["401", "token"]).await;
    drop(c);

    // Nothing listening at the URL.
    let dead = format!("wss://127.0.0.1:{}/tunnel", free_port());
    let c = spawn("down", &dead, "ca.pem", token);
    says(
        &c,
        "gateway_refused",
        &[
            "nothing accepts connections at 127.0.0.1:",
            "gateway is not running",
        ],
    )
    .await;
    drop(c);

    // The certificate does not hold the address the client dials: the names it holds are told.
    let (_gw2, port2) = gateway(d, "127.0.0.2", "gateway.pem", "gateway.key").await;
    let c = spawn(
        "name",
        &format!("wss://127.0.0.2:{port2}/tunnel"),
        "ca.pem",
        token,
    );
    says(
        &c,
        "tls_wrong_name",
        &[
            "holds",
            "localhost",
            "127.0.0.1",
            "not 127.0.0.2",
            "sgw init --public 127.0.0.2",
        ],
    )
    .await;
    drop(c);

    // A CA certificate served as the gateway's own.
    if which("openssl").is_some() {
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=a CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
            ])
            .args(["-addext", "subjectAltName=IP:127.0.0.3"])
            .arg("-keyout")
            .arg(d.join("leaf-ca.key"))
            .arg("-out")
            .arg(d.join("leaf-ca.pem"))
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let (_gw3, port3) = gateway(d, "127.0.0.3", "leaf-ca.pem", "leaf-ca.key").await;
        let c = spawn(
            "ca-leaf",
            &format!("wss://127.0.0.3:{port3}/tunnel"),
            "leaf-ca.pem",
            token,
        );
        says(
            &c,
            "tls_ca_as_leaf",
            &["CA certificate as its own", "gateway.pem"],
        )
        .await;
    } else {
        println!("SKIPPED (CA as leaf): openssl is needed");
    }

    // A name that does not resolve: a private resolv.conf whose server refuses at once.
    if is_root() && which("unshare").is_some() {
        std::fs::write(
            d.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .unwrap();
        let cfg = client_config(
            d,
            "dns",
            "wss://gw.sgw-test.invalid:9/tunnel",
            "ca.pem",
            token,
        );
        let mut cmd = Command::new("unshare");
        cmd.args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$1\" client --config \"$2\"",
        ])
        .arg(d.join("resolv.conf"))
        .arg(sgw_bin())
        .arg(&cfg)
        .env_remove("RUST_LOG");
        let c = Proc::start(cmd);
        says(
            &c,
            "dns_failed",
            &["gw.sgw-test.invalid does not resolve", "DNS"],
        )
        .await;
    } else {
        println!("SKIPPED (DNS): needs root and unshare for a private resolv.conf");
    }
}

/// docs/OPERATIONS.md's reason table lists exactly the codes the client gives, in order.
#[test]
fn the_reason_table_matches_the_source() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/OPERATIONS.md"))
            .unwrap();
    let section = doc
        .split("## Why a tunnel does not come up: reason codes")
        .nth(1)
        .expect("the section")
        .split("\n## ")
        .next()
        .unwrap();
    let documented: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .collect();
    assert_eq!(documented, sgw::tunnel::why::CODES);
}

/// A gateway killed under a connected client: the client's `tunnel down` line says the
/// gateway went without a goodbye, not the TLS library's words and link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_is_a_tunnel_down_without_a_goodbye() {
    let (dir, token) = init_dir();
    let d = dir.path();
    let (mut gw, port) = gateway(d, "127.0.0.1", "gateway.pem", "gateway.key").await;
    let cfg = client_config(
        d,
        "killed",
        &format!("wss://127.0.0.1:{port}/tunnel"),
        "ca.pem",
        &token,
    );
    let c = Proc::spawn(&["client", "--config", cfg.to_str().unwrap()]);
    c.wait_line("tunnel up").await;
    kill9(&mut gw.child).await;
    let line = c.wait_line("tunnel down").await;
    assert!(
        line.contains("without a goodbye") || line.contains("was reset"),
        "{line}"
    );
    for raw in RAW {
        assert!(!line.contains(raw), "{raw:?} in {line}");
    }
}
