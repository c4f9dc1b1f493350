//! The README's "Running it for real", run as written on two hosts: two network namespaces
//! joined by a veth pair, the gateway host at 198.18.0.1 and the on-prem host at 198.18.0.2
//! (198.18.0.0/15, the benchmarking range: nothing routable). The only thing carried from one
//! host to the other is the enrollment string. Needs root and `ip`; skips, saying why,
//! without them. The namespaces (and with them the veth pair) are removed when the test ends.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const GATEWAY_HOST: &str = "198.18.0.1";
const ONPREM_HOST: &str = "198.18.0.2";

/// Two namespaces and the veth pair between them; deleted on drop.
struct Hosts {
    gw: String,
    op: String,
}

impl Hosts {
    fn create() -> Result<Hosts, String> {
        let id = std::process::id() % 100_000;
        let h = Hosts {
            gw: format!("sgwgw{id}"),
            op: format!("sgwop{id}"),
        };
        let (a, b) = (format!("sgwa{id}"), format!("sgwb{id}"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &h.gw],
            vec!["netns", "add", &h.op],
            vec!["link", "add", &a, "type", "veth", "peer", "name", &b],
            vec!["link", "set", &a, "netns", &h.gw],
            vec!["link", "set", &b, "netns", &h.op],
            vec!["-n", &h.gw, "addr", "add", "198.18.0.1/30", "dev", &a],
            vec!["-n", &h.op, "addr", "add", "198.18.0.2/30", "dev", &b],
            vec!["-n", &h.gw, "link", "set", &a, "up"],
            vec!["-n", &h.op, "link", "set", &b, "up"],
            vec!["-n", &h.gw, "link", "set", "lo", "up"],
            vec!["-n", &h.op, "link", "set", "lo", "up"],
        ];
        for s in steps {
            let out = Command::new("ip")
                .args(&s)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    s.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(h)
    }

    /// A shell command line on one host, with `sgw` on its PATH.
    fn sh(&self, ns: &str, line: &str) -> Command {
        let bin = Path::new(sgw_bin()).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, "sh", "-c", line])
            .env("PATH", path)
            .env_remove("RUST_LOG")
            .env_remove("SGW_CLIENT_CONFIG")
            .env_remove("SGW_GATEWAY_CONFIG")
            .env_remove("SGW_ENROLL");
        c
    }

    fn run(&self, ns: &str, line: &str) -> Output {
        let out = self.sh(ns, line).output().unwrap();
        assert!(
            out.status.success(),
            "`{line}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.gw, &self.op] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// A long-running command on one host ([`Proc`]: stderr kept); its whole process group is
/// killed on drop, so the kill reaches the program under `ip netns exec sh -c`.
struct Running(Proc);

impl Running {
    fn start(mut cmd: Command, stdin: Option<&str>) -> Running {
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdin(Stdio::piped());
        let mut p = Proc::start(cmd);
        let mut input = p.child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        // Kept open: a daemon reading stdin must not see EOF as a reason to stop.
        std::mem::forget(input);
        Running(p)
    }
}

impl std::ops::Deref for Running {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.0.child.id());
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &pgid])
            .status();
    }
}

/// The shell blocks of README.md's "Running it for real", each a list of command lines.
fn readme_blocks() -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("## Running it for real").expect("the section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), l) if !l.is_empty() => b.push(l.to_owned()),
            _ => {}
        }
    }
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_two_host_deployment_works_as_written() {
    let blocks = readme_blocks();
    assert_eq!(
        blocks.len(),
        4,
        "gateway host, on-prem host, cloud app, doctor: {blocks:?}"
    );
    let (Some(_), Some(python)) = (which("curl"), which("python3")) else {
        println!("SKIPPED: curl and python3 are needed (apt-get install curl python3)");
        return;
    };
    let hosts = match Hosts::create() {
        Ok(h) => h,
        Err(e) => {
            println!(
                "SKIPPED: two network namespaces could not be made (needs root and iproute2): {e}"
            );
            return;
        }
    };
    let gw_dir = tempfile::tempdir().unwrap();
    let op_dir = tempfile::tempdir().unwrap();
    let op_conf = op_dir.path().join("sgw");
    let on = |dir: &Path, line: &str| line.replace("/etc/sgw", &dir.display().to_string());

    // The on-prem service: a web server that only the on-prem host can reach.
    let site = tempfile::tempdir().unwrap();
    let marker = format!("on-prem page {}", rand_hex());
    std::fs::write(site.path().join("index.html"), &marker).unwrap();
    let web = Running::start(
        hosts.sh(
            &hosts.op,
            &format!(
                "exec {} -u -m http.server 8080 --bind {ONPREM_HOST} --directory {}",
                python.display(),
                site.path().display()
            ),
        ),
        None,
    );
    let deadline = Instant::now() + WAIT;
    while !hosts
        .sh(&hosts.op, &format!("curl -sf http://{ONPREM_HOST}:8080/"))
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "web server never came up: {}",
            web.all()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The gateway host: init, the gateway, the enrollment string.
    let [init, gateway, enroll] = &blocks[0][..] else {
        panic!("the gateway host's block has 3 commands: {:?}", blocks[0]);
    };
    assert!(init.starts_with("sgw init ") && init.contains(&format!("--public {GATEWAY_HOST}")));
    let out = hosts.run(&hosts.gw, &on(gw_dir.path(), init));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("clients dial: wss://{GATEWAY_HOST}:443/tunnel")),
        "{said}"
    );
    let gw = Running::start(hosts.sh(&hosts.gw, &on(gw_dir.path(), gateway)), None);
    gw.wait_line("gateway started").await;
    gw.wait_line("management API listening").await;
    let out = hosts.run(&hosts.gw, &on(gw_dir.path(), enroll));
    let string = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    assert!(string.starts_with("sgw1_"), "{string}");
    let token = std::fs::read_to_string(gw_dir.path().join("token")).unwrap();
    assert!(
        !gw.all().contains(token.trim()),
        "the token reached the log"
    );

    // The on-prem host: only the string crosses over.
    let [client, allow] = &blocks[1][..] else {
        panic!("the on-prem block has 2 commands: {:?}", blocks[1]);
    };
    let client = Running::start(
        hosts.sh(&hosts.op, &on(&op_conf, client)),
        Some(&format!("{string}\n")),
    );
    client.wait_line("tunnel up").await;
    assert!(!client.all().contains(&string) && !client.all().contains(token.trim()));
    use std::os::unix::fs::PermissionsExt;
    for (f, mode) in [
        ("token", 0o600),
        ("admin.token", 0o600),
        ("client.toml", 0o644),
        ("acl.list", 0o644),
        ("ca.pem", 0o644),
    ] {
        let m = std::fs::metadata(op_conf.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{f}");
    }
    // Default deny: until the on-prem operator allows it, the service is not reachable.
    let cloud_get = &blocks[2][0];
    assert!(cloud_get.starts_with("curl "), "{cloud_get}");
    let before = hosts.sh(&hosts.gw, cloud_get).output().unwrap();
    assert!(!String::from_utf8_lossy(&before.stdout).contains(&marker));
    hosts.run(&hosts.op, &on(&op_conf, allow));

    // A cloud app on the gateway host reaches the on-prem service; the API sees the client.
    let page = hosts.run(&hosts.gw, cloud_get);
    assert_eq!(String::from_utf8_lossy(&page.stdout), marker);
    let clients = hosts.run(&hosts.gw, &on(gw_dir.path(), &blocks[2][1]));
    let v: serde_json::Value = serde_json::from_slice(&clients.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");

    // `sgw doctor` on each host finds every step ok (exit 0, asserted by `run`).
    let [doctor_client, doctor_gateway] = &blocks[3][..] else {
        panic!("the doctor block has 2 commands: {:?}", blocks[3]);
    };
    let out = hosts.run(&hosts.op, &on(&op_conf, doctor_client));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("all ok"), "{said}");
    assert!(
        said.contains(&format!(
            "ok   destination  gw1/dest1 (TCP {ONPREM_HOST}:8080)"
        )),
        "{said}"
    );
    let out = hosts.run(&hosts.gw, &on(gw_dir.path(), doctor_gateway));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("all ok") && said.contains("ok   clients      gw1: 1 client(s)"),
        "{said}"
    );

    // A wrong or cut string: a clear error and exit 2, nothing written.
    for bad in [
        "sgw1_not-a-real-string",
        &string[..string.len() - 12],
        "hello",
    ] {
        let dir = op_dir.path().join("bad");
        let out = hosts
            .sh(
                &hosts.op,
                &format!("sgw client --enroll - --dir {} --write-only", dir.display()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{bad}\n").as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("enrollment string"), "{err}");
        // The string is a secret: errors never quote it.
        assert!(bad.len() < 40 || !err.contains(&bad[10..40]), "{err}");
        assert!(!dir.join("client.toml").exists());
    }
}

fn rand_hex() -> String {
    format!(
        "{:016x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    )
}
