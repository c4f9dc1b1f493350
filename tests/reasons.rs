//! Why a tunnel does not come up, as the operator reads it (issue: plain reasons): each broken
//! set-up, made for real (certificates, a gateway process, a client process, a proxy), gives
//! a client log line with the stable `reason` code and a sentence naming the cause and the
//! fix, and a `sgw doctor` line that does the same, and no library wording; `sgw doctor`
//! exits 1 on each and 0 on a working quickstart. docs/OPERATIONS.md's tables list exactly
//! the codes the source has.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The clients' admin token (for `sgw status`).
const ADMIN_TOKEN: &str = "doctor-test-admin-token";

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
    client_config_with(dir, name, url, ca, token, "gw1", "")
}

/// A client process from [`client_config`] (trusting ca.pem); its config and the process.
fn client(dir: &Path, name: &str, url: &str, token: &str) -> (PathBuf, Proc) {
    let cfg = client_config(dir, name, url, "ca.pem", token);
    let c = Proc::spawn(&["client", "--config", cfg.to_str().unwrap()]);
    (cfg, c)
}

/// As [`client_config`], for gateway id `id`, with `top` (top-level keys) first.
fn client_config_with(
    dir: &Path,
    name: &str,
    url: &str,
    ca: &str,
    token: &str,
    id: &str,
    top: &str,
) -> PathBuf {
    let path = dir.join(format!("client-{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "{top}acl_file = \"acl.list\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n[[gateway]]\nurl = \"{url}\"\ngateway_id = \"{id}\"\n\
             token = \"{token}\"\nca_file = \"{ca}\"\ntunnels = 1\n\
             [reconnect]\ninitial = \"200ms\"\nmax = \"1s\"\n"
        ),
    )
    .unwrap();
    path
}

/// Runs `sgw doctor ARGS` (bounded); returns its exit code and stdout.
async fn doctor(args: &[&str]) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(sgw_bin());
    cmd.arg("doctor").args(args).env_remove("RUST_LOG");
    doctor_run(cmd).await
}

async fn doctor_run(mut cmd: tokio::process::Command) -> (i32, String) {
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("doctor finished in time")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `sgw doctor` on `cfg` exits 1 with a FAIL line for `code` that names `words`.
async fn doctor_says(cfg: &Path, code: &str, words: &[&str]) -> String {
    let (rc, out) = doctor(&["--config", cfg.to_str().unwrap()]).await;
    doctor_check(rc, &out, code, words)
}

fn doctor_check(rc: i32, out: &str, code: &str, words: &[&str]) -> String {
    assert_eq!(rc, 1, "doctor exits 1 on a broken set-up:\n{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains(&format!("[{code}]")))
        .unwrap_or_else(|| panic!("no FAIL line with [{code}] in:\n{out}"))
        .to_owned();
    reads_well(&format!("doctor {code}"), &line, words);
    reads_well("doctor", out, &[]);
    line
}

/// `text` names every one of `words` and holds no library wording.
fn reads_well(what: &str, text: &str, words: &[&str]) {
    for w in words {
        assert!(text.contains(w), "{what}: {w:?} missing in {text}");
    }
    for raw in RAW {
        assert!(
            !text.contains(raw),
            "{what}: library wording {raw:?} in {text}"
        );
    }
}

/// Waits for the client's line with `reason=code` and checks it reads as a sentence.
async fn says(client: &Proc, code: &str, words: &[&str]) -> String {
    let line = client.wait_line(&format!("reason={code}")).await;
    reads_well(code, &line, words);
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

    let (gw, port) = gateway(d, "127.0.0.1", "gateway.pem", "gateway.key").await;
    let url = format!("wss://127.0.0.1:{port}/tunnel");
    let spawn = |name: &str, url: &str, ca: &str, token: &str| {
        let cfg = client_config(d, name, url, ca, token);
        Proc::spawn(&["client", "--config", cfg.to_str().unwrap()])
    };

    // A CA the gateway's certificate does not chain to.
    let c = spawn("wrong-ca", &url, "other-ca.pem", token);
    let words = ["not signed by a CA in ca_file", "ca.pem"];
    says(&c, "tls_unknown_ca", &words).await;
    drop(c);
    doctor_says(&d.join("client-wrong-ca.toml"), "tls_unknown_ca", &words).await;
    // The gateway's side of it, for the cloud operator.
    let line = gw.wait_line("reason=client_distrusts_certificate").await;
    reads_well(
        "gateway",
        &line,
        &[
            "tunnel refused",
            "refused this gateway's certificate",
            "ca.pem",
        ],
    );

    // A wrong token: the client's /readyz and `sgw status` show the slot's last failure too.
    let c = spawn("wrong-token", &url, "ca.pem", "not-the-token");
    let words = ["401", "token", "`gw1`", "sgw enroll"];
    says(&c, "token_rejected", &words).await;
    let admin = field(&c.wait_line("admin endpoint listening").await, "admin.addr");
    let (code, body, _) = curl(&[
        "-s",
        "-w",
        "%{http_code}",
        &format!("http://{admin}/readyz"),
    ])
    .await;
    assert_eq!(code, 0);
    assert!(
        body.contains("not ready")
            && body.contains("reason=token_rejected")
            && body.ends_with("503"),
        "{body}"
    );
    let (_, metrics, _) = curl(&[&format!("http://{admin}/metrics")]).await;
    assert!(
        sample(
            &metrics,
            "sgw_client_tunnel_failures_by_reason_total{reason=\"token_rejected\"}"
        ) >= 1,
        "{metrics}"
    );
    let status = std::process::Command::new(sgw_bin())
        .args(["status", "--admin", &admin])
        .env("SGW_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("slot 0")
            && status.contains("down for")
            && status.contains("reason=token_rejected"),
        "{status}"
    );
    drop(c);
    doctor_says(&d.join("client-wrong-token.toml"), "token_rejected", &words).await;
    let line = gw.wait_line("tunnel refused: bad security token").await;
    reads_well("gateway", &line, &["reason=token_rejected", "sgw enroll"]);

    // A gateway id the gateway does not have: the same 401 (ids are not told to strangers),
    // and the sentence names both checks.
    let cfg = client_config_with(d, "no-id", &url, "ca.pem", token, "no-such-id", "");
    let c = Proc::spawn(&["client", "--config", cfg.to_str().unwrap()]);
    let words = [
        "`no-such-id`",
        "no gateway with that id exists",
        "gateway_id",
    ];
    says(&c, "token_rejected", &words).await;
    drop(c);
    doctor_says(&cfg, "token_rejected", &words).await;

    // Nothing listening at the URL.
    let dead = format!("wss://127.0.0.1:{}/tunnel", free_port());
    let c = spawn("down", &dead, "ca.pem", token);
    let words = [
        "nothing accepts connections at 127.0.0.1:",
        "gateway is not running",
    ];
    says(&c, "gateway_refused", &words).await;
    drop(c);
    doctor_says(&d.join("client-down.toml"), "gateway_refused", &words).await;

    // The certificate does not hold the address the client dials: the names it holds are told.
    let (_gw2, port2) = gateway(d, "127.0.0.2", "gateway.pem", "gateway.key").await;
    let c = spawn(
        "name",
        &format!("wss://127.0.0.2:{port2}/tunnel"),
        "ca.pem",
        token,
    );
    let words = [
        "holds",
        "localhost",
        "127.0.0.1",
        "not 127.0.0.2",
        "sgw init --public 127.0.0.2",
    ];
    says(&c, "tls_wrong_name", &words).await;
    drop(c);
    doctor_says(&d.join("client-name.toml"), "tls_wrong_name", &words).await;

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
        let words = ["CA certificate as its own", "gateway.pem"];
        says(&c, "tls_ca_as_leaf", &words).await;
        drop(c);
        doctor_says(&d.join("client-ca-leaf.toml"), "tls_ca_as_leaf", &words).await;
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
        const PRIVATE_RESOLV: &str =
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$1\" \"$2\" --config \"$3\"";
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "sh", "-c", PRIVATE_RESOLV])
            .arg(d.join("resolv.conf"))
            .arg(sgw_bin())
            .arg("client")
            .arg(&cfg)
            .env_remove("RUST_LOG");
        let c = Proc::start(cmd);
        let words = ["gw.sgw-test.invalid does not resolve", "DNS"];
        says(&c, "dns_failed", &words).await;
        drop(c);
        let mut cmd = tokio::process::Command::new("unshare");
        cmd.args(["-m", "sh", "-c", PRIVATE_RESOLV])
            .arg(d.join("resolv.conf"))
            .arg(sgw_bin())
            .arg("doctor")
            .arg(&cfg)
            .env_remove("RUST_LOG");
        let (rc, out) = doctor_run(cmd).await;
        doctor_check(rc, &out, "dns_failed", &words);
    } else {
        println!("SKIPPED (DNS): needs root and unshare for a private resolv.conf");
    }
}

/// docs/OPERATIONS.md's reason tables list exactly the codes the source gives, in order: why
/// a tunnel does not come up, and why one went down.
#[test]
fn the_reason_tables_match_the_source() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/OPERATIONS.md"))
            .unwrap();
    let table = |title: &str| -> Vec<String> {
        doc.split(title)
            .nth(1)
            .unwrap_or_else(|| panic!("the section {title}"))
            .split("\n## ")
            .next()
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        table("## Why a tunnel does not come up: reason codes"),
        sgw::tunnel::why::CODES
    );
    assert_eq!(
        table("## Why a tunnel went down: reason codes"),
        sgw::mux::CLOSE_CODES
    );
    assert_eq!(
        table("## Why the gateway refused a tunnel: reason codes"),
        sgw::tunnel::why::ACCEPT_CODES
    );
}

/// A gateway killed under a connected client: the client's `tunnel down` line says the
/// gateway went without a goodbye, not the TLS library's words and link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_is_a_tunnel_down_without_a_goodbye() {
    let (dir, token) = init_dir();
    let d = dir.path();
    let (mut gw, port) = gateway(d, "127.0.0.1", "gateway.pem", "gateway.key").await;
    let (_, c) = client(
        d,
        "killed",
        &format!("wss://127.0.0.1:{port}/tunnel"),
        &token,
    );
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

/// An outbound proxy that refuses CONNECT to the gateway's port (tinyproxy allowing only
/// port 443): the client's line and the doctor's quote the proxy's answer and say what to ask
/// its administrator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_refuses_connect_is_named() {
    let Some(tinyproxy) = which("tinyproxy") else {
        println!("SKIPPED: tinyproxy not installed (apt-get install tinyproxy)");
        return;
    };
    let (dir, token) = init_dir();
    let d = dir.path();
    let (_gw, port) = gateway(d, "127.0.0.1", "gateway.pem", "gateway.key").await;
    let proxy_port = free_port();
    let conf = d.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!("Port {proxy_port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nConnectPort 443\nMaxClients 10\n"),
    )
    .unwrap();
    let _proxy = Daemon(
        std::process::Command::new(tinyproxy)
            .args(["-d", "-c", conf.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(proxy_port).await;
    let cfg = client_config_with(
        d,
        "proxy",
        &format!("wss://localhost:{port}/tunnel"),
        "ca.pem",
        &token,
        "gw1",
        &format!("outbound_proxy = \"http://127.0.0.1:{proxy_port}\"\n"),
    );
    let c = Proc::spawn(&["client", "--config", cfg.to_str().unwrap()]);
    let words = [
        &format!("outbound proxy 127.0.0.1:{proxy_port} refused"),
        "403",
        &format!("allow CONNECT to localhost:{port}"),
    ];
    says(&c, "proxy_failed", &words).await;
    drop(c);
    let line = doctor_says(&cfg, "proxy_failed", &words).await;
    assert!(line.contains("tcp"), "the TCP step fails: {line}");
}

/// A gateway.toml for `gw1` with destinations `(id, port)` on 127.0.0.1, each on a fixed
/// cloud port; returns the gateway and the cloud ports.
async fn gateway_with_destinations(dir: &Path, dests: &[(&str, u16)]) -> (Proc, u16, Vec<u16>) {
    let mut toml =
        "listen = \"127.0.0.1:0\"\ntls_cert = \"gateway.pem\"\ntls_key = \"gateway.key\"\n\
                    [[gateways]]\nid = \"gw1\"\ntoken_file = \"token\"\n"
            .to_string();
    let mut cloud = Vec::new();
    for (id, port) in dests {
        let c = free_port();
        cloud.push(c);
        toml.push_str(&format!(
            "[[gateways.destinations]]\nid = \"{id}\"\nprotocol = \"TCP\"\nip = \"127.0.0.1\"\nport = {port}\ncloud_host = \"127.0.0.1\"\ncloud_port = {c}\ntimeout = 3\n"
        ));
    }
    let cfg = dir.join("gateway-dests.toml");
    std::fs::write(&cfg, toml).unwrap();
    let p = Proc::spawn(&["gateway", "--config", cfg.to_str().unwrap()]);
    let line = p.wait_line("gateway started").await;
    let port = field(&line, "tunnel.listen")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (p, port, cloud)
}

/// A destination whose endpoint refuses, and one the client's ACL denies: a caller through
/// the gateway makes a client line with the cause and the fix, and the doctor finds both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_refusals_name_their_cause_and_fix() {
    let (dir, token) = init_dir();
    let d = dir.path();
    let echo = echo_server().await;
    let closed = free_port();
    // The ACL allows the closed port, not the echo service.
    std::fs::write(
        d.join("acl.list"),
        format!("acl allow 127.0.0.1:{closed}\n"),
    )
    .unwrap();
    let (gw, port, cloud) =
        gateway_with_destinations(d, &[("closed", closed), ("denied", echo.port())]).await;
    let (cfg, c) = client(
        d,
        "dests",
        &format!("wss://localhost:{port}/tunnel"),
        &token,
    );
    c.wait_line("destinations updated").await;

    for p in &cloud {
        wait_listening(*p).await;
        // The gateway accepts, asks the client, which refuses; the caller sees the close.
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", *p)).await {
            use tokio::io::AsyncReadExt;
            let mut b = [0u8; 1];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut b)).await;
        }
    }
    let refused = [
        &format!("connect to 127.0.0.1:{closed}: connection refused"),
        "nothing accepts connections there",
        "start the service",
    ];
    says(&c, "refused", &refused).await;
    // The gateway learns the reason and the advice, not the client's error text (resolved
    // addresses, proxies and certificates are the client's business).
    // Its own `stream refused` line, not the client's forwarded one (which has no error).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let line = loop {
        let all = gw.all();
        let found = all
            .lines()
            .find(|l| l.contains("stream refused") && l.contains("reason=refused"))
            .map(str::to_owned);
        if let Some(l) = found {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "{all}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        line.contains("nothing accepts connections there") && !line.contains("connect to"),
        "{line}"
    );
    let denied = [
        &format!(
            "the ACL denies destination denied at 127.0.0.1:{}",
            echo.port()
        ),
        "default policy is deny",
        &format!("sgw acl add \"acl allow 127.0.0.1:{}\"", echo.port()),
    ];
    says(&c, "acl_default", &denied).await;

    let (rc, out) = doctor(&["--config", cfg.to_str().unwrap()]).await;
    doctor_check(rc, &out, "refused", &refused);
    let line = doctor_check(rc, &out, "acl_denied", &denied);
    assert!(
        line.contains("acl.list"),
        "the doctor names the ACL file: {line}"
    );
    assert!(out.contains("ok   upgrade"), "{out}");
}

/// On a working quickstart every step passes: exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_working_quickstart() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let qs = dir.path().join("qs");
    // Killed however the test ends.
    let mut quickstart = Daemon(
        std::process::Command::new(sgw_bin())
            .args(["quickstart", "--dir", qs.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = quickstart.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let admin = loop {
        let l = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("quickstart printed its admin endpoint");
        if let Some(a) = l.trim().strip_prefix("admin endpoint: http://") {
            break a.split('/').next().unwrap().to_owned();
        }
    };
    let cfg = qs.join("client.toml");
    let (rc, out) = doctor(&["--config", cfg.to_str().unwrap(), "--admin", &admin]).await;
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("all ok"), "{out}");
    for step in [
        "config",
        "acl",
        "dns",
        "tcp",
        "tls",
        "upgrade",
        "version",
        "destinations",
        "destination",
        "admin",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("ok") && l.split_whitespace().nth(1) == Some(step)),
            "no ok line for {step}:\n{out}"
        );
    }
    let (rc, json) = doctor(&[
        "--config",
        cfg.to_str().unwrap(),
        "--admin",
        &admin,
        "--json",
    ])
    .await;
    assert_eq!(rc, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["steps"].as_array().unwrap().len() >= 10, "{json}");
    drop(quickstart);
}

/// A gateway that closes a tunnel on purpose says why, and the client's `tunnel down` line
/// carries it: a token changed on the gateway (SIGHUP) is `credentials_revoked`, an error with
/// the fix; a gateway stopping (SIGTERM) is `peer_shutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_closing_on_purpose_says_why() {
    let (dir, token) = init_dir();
    let d = dir.path();
    let (gw, port) = gateway(d, "127.0.0.1", "gateway.pem", "gateway.key").await;
    let (_, c) = client(
        d,
        "goodbye",
        &format!("wss://127.0.0.1:{port}/tunnel"),
        &token,
    );
    c.wait_line("tunnel up").await;
    std::fs::write(d.join("token"), "a-regenerated-token-0123456789abcdef\n").unwrap();
    let pid = gw.child.id().to_string();
    signal("-HUP", &pid);
    let line = c.wait_line("reason=credentials_revoked").await;
    assert!(
        line.contains("ERROR") && line.contains("tunnel down"),
        "{line}"
    );
    reads_well(
        "credentials_revoked",
        &line,
        &["security token changed", "token_file"],
    );
    // The client then fails to reconnect with the old token, and says that instead.
    c.wait_line("reason=token_rejected").await;
    drop(c);

    let new_token = "a-regenerated-token-0123456789abcdef";
    let (_, c) = client(
        d,
        "goodbye2",
        &format!("wss://127.0.0.1:{port}/tunnel"),
        new_token,
    );
    c.wait_line("tunnel up").await;
    signal("-TERM", &pid);
    let line = c.wait_line("reason=peer_shutdown").await;
    assert!(
        line.contains("shutting down") && line.contains("reconnected"),
        "{line}"
    );
    drop(gw);
}

/// `sgw doctor --gateway`: a key that is not the certificate's, and a gateway that is not
/// running, each fail with the cause and the fix; the same gateway running with a client
/// passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_doctor_names_a_wrong_key_and_a_stopped_gateway() {
    let (dir, token) = init_dir();
    let d = dir.path();
    let other = tempfile::tempdir().unwrap();
    sgw::init::write(other.path(), &sgw::init::InitOptions::default()).unwrap();
    std::fs::copy(other.path().join("gateway.key"), d.join("other.key")).unwrap();
    let admin = free_port();
    std::fs::write(d.join("admin.tok"), "gateway-admin-token-for-the-doctor\n").unwrap();
    let write = |key: &str| {
        let cfg = d.join(format!("gw-{key}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:0\"\ntls_cert = \"gateway.pem\"\ntls_key = \"{key}\"\n\
                 admin_listen = \"127.0.0.1:{admin}\"\nadmin_token_file = \"admin.tok\"\n\
                 [[gateways]]\nid = \"gw1\"\ntoken_file = \"token\"\n"
            ),
        )
        .unwrap();
        cfg
    };
    let wrong = write("other.key");
    let (rc, out) = doctor(&["--gateway", wrong.to_str().unwrap()]).await;
    doctor_check(
        rc,
        &out,
        "config_invalid",
        &["tls_key is not the key of tls_cert", "gateway.key"],
    );

    let right = write("gateway.key");
    let (rc, out) = doctor(&["--gateway", right.to_str().unwrap()]).await;
    doctor_check(rc, &out, "gateway_not_running", &["start it"]);
    assert!(
        out.contains("ok   certificate  tls_cert: certificate for localhost"),
        "{out}"
    );

    let gw = Proc::spawn(&["gateway", "--config", right.to_str().unwrap()]);
    let line = gw.wait_line("gateway started").await;
    let port = field(&line, "tunnel.listen")
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let (rc, out) = doctor(&["--gateway", right.to_str().unwrap()]).await;
    doctor_check(rc, &out, "no_clients", &["gw1", "sgw enroll gw1"]);
    let (_, c) = client(
        d,
        "gwdoc",
        &format!("wss://localhost:{port}/tunnel"),
        &token,
    );
    c.wait_line("tunnel up").await;
    let (rc, out) = doctor(&["--gateway", right.to_str().unwrap()]).await;
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("ok   clients      gw1: 1 client(s)"), "{out}");
}
