//! Gateway replicas sharing one PostgreSQL store (docs/HA.md), as real processes: PostgreSQL
//! started here, three `sgw gateway` replicas on three loopback addresses of their own (each its
//! own `listen`, `api_listen` and `cloud_host`, as separate hosts would be), one `sgw client`
//! holding tunnels to all three, and callers and curl against each replica.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const ADMIN: &str = "ha-admin-token-0123456789";
/// A name that resolves to the three replicas, in a private /etc/hosts.
const NAME: &str = "gw.ha.test";
/// The propagation bound the HA design promises (docs/HA.md).
const PROPAGATION: Duration = Duration::from_secs(2);

/// One replica: its address and ports (kept across a restart) and its process.
struct Replica {
    host: String,
    tunnel: u16,
    api: u16,
    /// The admin endpoint's `ip:port`.
    admin: String,
    proc: Option<Proc>,
}

struct Cluster {
    dir: tempfile::TempDir,
    pg: Postgres,
    replicas: Vec<Replica>,
}

/// An HTTP answer: status, JSON body (or the text as a string) and the ETag header.
struct Reply {
    status: u16,
    body: Value,
    etag: Option<String>,
}

impl Cluster {
    /// PostgreSQL and three replicas; `None` (with the reason printed) where PostgreSQL can't
    /// run here. With `one_port`, every replica's tunnel endpoint is on the same port (as
    /// behind one DNS name that resolves to the three addresses).
    async fn start(one_port: bool) -> Option<Cluster> {
        let Some(pg) = Postgres::start().await else {
            println!(
                "SKIPPED: a PostgreSQL server could not be started (apt-get install postgresql)"
            );
            return None;
        };
        let hosts = cluster_hosts();
        let dir = tempfile::tempdir().unwrap();
        // The certificate every replica serves names all three addresses and the name
        // (`sgw init --public`).
        let out = Command::new(sgw_bin())
            .arg("init")
            .arg(dir.path())
            .args(
                hosts
                    .iter()
                    .map(String::as_str)
                    .chain([NAME])
                    .flat_map(|h| ["--public", h]),
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let tunnel = if one_port { shared_port(&hosts) } else { 0 };
        let mut c = Cluster {
            dir,
            pg,
            replicas: hosts
                .iter()
                .map(|h| Replica {
                    host: h.clone(),
                    tunnel,
                    api: 0,
                    admin: String::new(),
                    proc: None,
                })
                .collect(),
        };
        for i in 0..hosts.len() {
            c.launch(i).await;
        }
        Some(c)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts replica `i` on its ports (0 the first time: then read back from its log).
    async fn launch(&mut self, i: usize) {
        let r = &self.replicas[i];
        let cfg = format!(
            "listen = \"{h}:{t}\"\ntls_cert = \"gateway.pem\"\ntls_key = \"gateway.key\"\n\
             api_listen = \"{h}:{a}\"\nadmin_token = \"{ADMIN}\"\ncloud_host = \"{h}\"\n\
             state_store = \"{url}\"\nreplica = \"r{i}\"\nadmin_listen = \"{h}:0\"\n",
            h = r.host,
            t = r.tunnel,
            a = r.api,
            url = self.pg.url(),
        );
        let path = self.path(&format!("gateway-{i}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let p = Proc::spawn(&["gateway", "--config", path.to_str().unwrap()]);
        let api = p.wait_line("management API listening").await;
        let tunnel = p.wait_line("gateway started").await;
        let port = |line: &str, key: &str| -> u16 {
            field(line, key)
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let admin = field(&p.wait_line("admin endpoint listening").await, "admin.addr");
        let r = &mut self.replicas[i];
        r.admin = admin;
        r.api = port(&api, "api.listen");
        r.tunnel = port(&tunnel, "tunnel.listen");
        r.proc = Some(p);
    }

    /// `kill -9`: no drain, no goodbye.
    async fn kill9(&mut self, i: usize) {
        let mut p = self.replicas[i].proc.take().unwrap();
        kill9(&mut p.child).await;
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| {
                format!(
                    "--- replica {i}:\n{}",
                    r.proc.as_ref().map(Proc::all).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// curl to replica `i`'s API with the gateways' CA.
    async fn call(
        &self,
        i: usize,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Reply {
        let ca = self.path("ca.pem");
        let url = format!(
            "https://{}:{}{path}",
            self.replicas[i].host, self.replicas[i].api
        );
        let auth = format!("Authorization: Bearer {token}");
        let text = body.map(|b| b.to_string());
        let cond = if_match.map(|t| format!("If-Match: {t}"));
        let mut args = vec![
            "--cacert",
            ca.to_str().unwrap(),
            "-D",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            "-H",
            &auth,
            &url,
        ];
        if let Some(t) = &text {
            args.extend(["-H", "Content-Type: application/json", "-d", t]);
        }
        if let Some(c) = &cond {
            args.extend(["-H", c]);
        }
        let (code, out, err) = curl(&args).await;
        assert_eq!(code, 0, "curl {args:?}: {err}");
        let (head, rest) = out.split_once("\r\n\r\n").unwrap_or(("", &out));
        let (body, status) = rest.rsplit_once('\n').unwrap();
        let etag = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("etag").then(|| v.trim().to_owned())
        });
        Reply {
            status: status.parse().unwrap(),
            body: serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
            etag,
        }
    }

    /// Waits (bounded by `within`) until `check` holds for replica `i`'s answer to GET `path`.
    async fn until(&self, i: usize, path: &str, within: Duration, check: impl Fn(&Reply) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let r = self.call(i, "GET", path, ADMIN, None, None).await;
            if check(&r) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i}: GET {path} did not reach the expected state within {within:?}: {} {}\n{}",
                r.status,
                r.body,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every gateway as replica `i` exports it, without what differs by replica by design
    /// (each listens on its own `cloud_host`).
    async fn export(&self, i: usize) -> Value {
        let r = self.call(i, "GET", "/v1/export", ADMIN, None, None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let mut v = r.body;
        for g in v["gateways"].as_array_mut().unwrap() {
            for d in g["destinations"].as_array_mut().unwrap() {
                d.as_object_mut().unwrap().remove("cloud_host");
            }
        }
        v
    }

    /// A gateway created through replica `i`'s API: its id and security token.
    async fn create_gateway(&self, i: usize, desc: &str) -> (String, String) {
        let body = json!({ "desc": desc });
        let g = self
            .call(i, "POST", "/v1/sgconfig", ADMIN, Some(&body), None)
            .await;
        assert_eq!(g.status, 200, "{}", g.body);
        (text(&g.body["id"]), text(&g.body["security_token"]))
    }

    /// A destination `doc` created on gateway `id` through replica `i`: its cloud port.
    async fn create_dest(&self, i: usize, id: &str, token: &str, doc: Value) -> u16 {
        let path = format!("/v1/sgconfig/{id}/destinations");
        let d = self.call(i, "POST", &path, token, Some(&doc), None).await;
        assert_eq!(d.status, 200, "{}", d.body);
        let port = d.body["cloud_port"].as_u64().unwrap() as u16;
        assert_ne!(port, 0);
        port
    }

    /// Waits until a caller at replica `i` gets its bytes echoed through `port`, within
    /// `within` (`client`'s log shown if not).
    async fn serves(&self, i: usize, port: u16, within: Duration, client: &Proc) {
        let deadline = Instant::now() + within;
        let host = &self.replicas[i].host;
        while let Err(e) = echo_via(host, port, b"hello").await {
            assert!(
                Instant::now() < deadline,
                "replica {i} did not serve port {port} within {within:?}: {e}\n{}\n--- client:\n{}",
                self.logs(),
                client.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An `sgw client` with tunnels to every replica for gateway `id`, from their URLs.
    fn client(&self, id: &str, token: &str, allow: &str) -> Proc {
        let urls: Vec<String> = self
            .replicas
            .iter()
            .map(|r| format!("\"wss://{}:{}/tunnel\"", r.host, r.tunnel))
            .collect();
        let path = self.client_config(&urls, id, token, allow);
        Proc::spawn(&["client", "--config", path.to_str().unwrap()])
    }

    fn client_config(&self, urls: &[String], id: &str, token: &str, allow: &str) -> PathBuf {
        let acl = self.path("acl.list");
        std::fs::write(&acl, format!("acl allow {allow}\n")).unwrap();
        let cfg = format!(
            "acl_file = \"acl.list\"\ndefault_policy = \"deny\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [[gateway]]\nurls = [{}]\ngateway_id = \"{id}\"\ntoken = \"{token}\"\n\
             ca_file = \"ca.pem\"\ntunnels = 1\n[reconnect]\ninitial = \"100ms\"\nmax = \"500ms\"\n",
            urls.join(", ")
        );
        let path = self.path("client.toml");
        std::fs::write(&path, cfg).unwrap();
        path
    }

    /// Waits until replica `i` itself holds `n` tunnels from clients of gateway `id` (its
    /// own `/metrics`: the API's client list is the view across replicas).
    async fn tunnels(&self, i: usize, id: &str, n: i64) {
        let deadline = Instant::now() + WAIT;
        let series = format!("gateway=\"{id}\"");
        loop {
            let auth = format!("Authorization: Bearer {ADMIN}");
            let url = format!("http://{}/metrics", self.replicas[i].admin);
            let (_, text, _) = curl(&["-H", &auth, &url]).await;
            let up = text
                .lines()
                .find(|l| l.starts_with("sgw_gateway_tunnels_up{") && l.contains(&series))
                .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
                .unwrap_or(0);
            if up == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} holds {up} tunnels of {id}, not {n}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A port free on every one of `hosts` a moment ago.
fn shared_port(hosts: &[String]) -> u16 {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind((hosts[0].as_str(), 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let rest: Vec<_> = hosts[1..]
            .iter()
            .map(|h| std::net::TcpListener::bind((h.as_str(), port)))
            .collect();
        if rest.iter().all(Result::is_ok) {
            return port;
        }
    }
    panic!("no port free on all of {hosts:?}");
}

/// Three loopback addresses no other cluster in this process uses. Replicas bind the cloud
/// port another replica picked, as separate hosts would; clusters of tests running at the same
/// time on the same addresses could hold that port already and make the test flaky.
fn cluster_hosts() -> Vec<String> {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    assert!(n < 80, "more clusters than loopback addresses set aside");
    (0..3)
        .map(|k| format!("127.0.0.{}", 2 + 3 * n + k))
        .collect()
}

/// One caller: connect to `host:port`, echo `msg` through the tunnel, close.
async fn echo_via(host: &str, port: u16, msg: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect((host, port)).await?;
    roundtrip(&mut s, msg).await
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no echo within the wait"))??;
    if buf != msg {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

fn text(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_postgres_store_share_changes_and_survive_losses() {
    let Some(mut c) = Cluster::start(false).await else {
        return;
    };
    let echo = echo_server().await;

    // A gateway created on replica 0 is known to the others.
    let (id, token) = c.create_gateway(0, "ha").await;
    for i in 1..3 {
        c.until(i, &format!("/v1/sgconfig/{id}"), PROPAGATION, |r| {
            r.status == 200
        })
        .await;
    }
    let client = c.client(&id, &token, &echo.to_string());
    for i in 0..3 {
        c.tunnels(i, &id, 1).await;
    }
    // One view for operators: every replica lists the one client with its three tunnels
    // (one to each replica), and counts them the same.
    for i in 0..3 {
        c.until(i, &format!("/v1/sgconfig/{id}/clients"), WAIT, |r| {
            r.body
                .as_array()
                .is_some_and(|a| a.len() == 1 && a[0]["tunnels"] == 3)
        })
        .await;
        c.until(i, &format!("/v1/sgconfig/{id}/stats"), WAIT, |r| {
            r.body["clients"] == 1 && r.body["tunnels"] == 3
        })
        .await;
    }
    // Each replica's metrics say which replica they come from.
    for (i, r) in c.replicas.iter().enumerate() {
        let (code, text, err) = curl(&[&format!("http://{}/metrics", r.admin)]).await;
        assert_eq!(code, 0, "{err}");
        let want = format!("sgw_gateway_tunnels_accepted_total{{replica=\"r{i}\"}}");
        assert!(text.contains(&want), "{want} in\n{text}");
    }

    // Propagation: a destination created on replica 0 answers callers at replicas 1 and 2
    // within the bound, on the same cloud port, each on its own address.
    let doc = json!({"id": "echo", "ip": "127.0.0.1", "port": echo.port()});
    let port = c.create_dest(0, &id, &token, doc).await;
    let created = Instant::now();
    for i in [1, 2] {
        let left = PROPAGATION.saturating_sub(created.elapsed());
        c.serves(i, port, left, &client).await;
    }
    echo_via(&c.replicas[0].host, port, b"hello").await.unwrap();

    // Concurrent changes to one destination through two replicas, both from the revision
    // they read: exactly one wins, the other gets 409, and all replicas end up with the winner.
    let dest = format!("/v1/sgconfig/{id}/destinations/echo");
    let read = c.call(0, "GET", &dest, &token, None, None).await;
    let tag = read.etag.clone().expect("ETag on a destination");
    let (d0, d1) = (json!({"desc": "from-0"}), json!({"desc": "from-1"}));
    let (a, b) = tokio::join!(
        c.call(0, "PUT", &dest, &token, Some(&d0), Some(&tag)),
        c.call(1, "PUT", &dest, &token, Some(&d1), Some(&tag)),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.body, b.body);
    let (winner, loser) = if a.status == 200 { (&a, &b) } else { (&b, &a) };
    assert!(
        text(&loser.body["message"]).contains("changed"),
        "{}",
        loser.body
    );
    let want = text(&winner.body["desc"]);
    for i in 0..3 {
        c.until(i, &dest, PROPAGATION, |r| r.body["desc"] == want.as_str())
            .await;
    }

    // Store loss: callers are still served (one connected before, new ones at every
    // replica); changes get 503 and change nothing; reads answer.
    let mut before = TcpStream::connect((c.replicas[1].host.as_str(), port))
        .await
        .unwrap();
    roundtrip(&mut before, b"before").await.unwrap();
    c.pg.stop().await;
    roundtrip(&mut before, b"during").await.unwrap();
    for r in &c.replicas {
        echo_via(&r.host, port, b"store down").await.unwrap();
    }
    let w = c
        .call(
            0,
            "PUT",
            &dest,
            &token,
            Some(&json!({"desc": "lost"})),
            None,
        )
        .await;
    assert_eq!(w.status, 503, "{}", w.body);
    assert!(
        text(&w.body["message"]).contains("unreachable"),
        "{}",
        w.body
    );
    let r = c.call(0, "GET", &dest, &token, None, None).await;
    assert_eq!((r.status, text(&r.body["desc"])), (200, want.clone()));
    c.pg.resume().await;
    // Writes work again once the pool reconnects (bounded), and every replica agrees.
    let deadline = Instant::now() + WAIT;
    loop {
        let w = c
            .call(
                1,
                "PUT",
                &dest,
                &token,
                Some(&json!({"desc": "after"})),
                None,
            )
            .await;
        if w.status == 200 {
            break;
        }
        assert_eq!(w.status, 503, "{}", w.body);
        assert!(
            Instant::now() < deadline,
            "writes did not come back: {}",
            w.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        c.until(i, &dest, WAIT, |r| r.body["desc"] == "after").await;
    }
    let exports = [c.export(0).await, c.export(1).await, c.export(2).await];
    assert_eq!(exports[0], exports[1]);
    assert_eq!(exports[0], exports[2]);
    roundtrip(&mut before, b"after").await.unwrap();

    // Replica loss: replica 0 is killed while 20 callers a second arrive at replicas 1 and 2;
    // none of them fails. Then it comes back and the client returns to it by itself.
    let hosts = [c.replicas[1].host.clone(), c.replicas[2].host.clone()];
    let load = tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for n in 0..80 {
            tick.tick().await;
            if let Err(e) = echo_via(&hosts[n % 2], port, b"during loss").await {
                failures.push(format!("caller {n} at {}: {e}", hosts[n % 2]));
            }
        }
        failures
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.kill9(0).await;
    let failures = load.await.unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", c.logs());
    c.launch(0).await;
    c.tunnels(0, &id, 1).await;
    echo_via(&c.replicas[0].host, port, b"back").await.unwrap();

    // A token regenerated on replica 1 closes the old token's tunnels at every replica.
    let regen = c
        .call(
            1,
            "PUT",
            &format!("/v1/sgconfig/{id}"),
            ADMIN,
            Some(&json!({"regen_token": true})),
            None,
        )
        .await;
    assert_eq!(regen.status, 200, "{}", regen.body);
    assert_ne!(text(&regen.body["security_token"]), token);
    for i in 0..3 {
        c.tunnels(i, &id, 0).await;
    }
    drop(client);
}

/// `sgw state migrate` moves a single gateway's state file into PostgreSQL: the same gateway
/// id, token and destination (on the same cloud port) keep working for the same client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_migrate_moves_a_single_gateway_into_postgres() {
    let Some(pg) = Postgres::start().await else {
        println!("SKIPPED: a PostgreSQL server could not be started (apt-get install postgresql)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    sgw::init::write(dir.path(), &sgw::init::InitOptions::default()).unwrap();
    let gw_toml = dir.path().join("gateway.toml");
    let write = |tunnel: u16, api: u16, store: &str| {
        std::fs::write(
            &gw_toml,
            format!(
                "listen = \"127.0.0.1:{tunnel}\"\ntls_cert = \"gateway.pem\"\ntls_key = \"gateway.key\"\n\
                 api_listen = \"127.0.0.1:{api}\"\nadmin_token = \"{ADMIN}\"\ncloud_host = \"127.0.0.1\"\n{store}\n"
            ),
        )
        .unwrap();
    };
    write(0, 0, "state_file = \"state.json\"");
    let start = || async {
        let p = Proc::spawn(&["gateway", "--config", gw_toml.to_str().unwrap()]);
        let api = p.wait_line("management API listening").await;
        let tunnel = p.wait_line("gateway started").await;
        let port = |line: &str, key: &str| -> u16 {
            field(line, key)
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let ports = (port(&tunnel, "tunnel.listen"), port(&api, "api.listen"));
        (p, ports)
    };
    let (gw, (tunnel, api)) = start().await;
    let ca = dir.path().join("ca.pem");
    let call = |method: &'static str, path: String, body: Value| {
        let ca = ca.clone();
        async move {
            let url = format!("https://127.0.0.1:{api}{path}");
            let auth = format!("Authorization: Bearer {ADMIN}");
            let b = body.to_string();
            let mut args = vec![
                "--cacert",
                ca.to_str().unwrap(),
                "-X",
                method,
                "-H",
                &auth,
                &url,
            ];
            if !body.is_null() {
                args.extend(["-H", "Content-Type: application/json", "-d", &b]);
            }
            let (code, out, err) = curl(&args).await;
            assert_eq!(code, 0, "{err}");
            serde_json::from_str::<Value>(&out).unwrap()
        }
    };
    let g = call("POST", "/v1/sgconfig".into(), json!({"desc": "old"})).await;
    let (id, token) = (text(&g["id"]), text(&g["security_token"]));
    let echo = echo_server().await;
    let d = call(
        "POST",
        format!("/v1/sgconfig/{id}/destinations"),
        json!({"ip": "127.0.0.1", "port": echo.port()}),
    )
    .await;
    let port = d["cloud_port"].as_u64().unwrap() as u16;
    let acl = dir.path().join("acl.list");
    std::fs::write(&acl, format!("acl allow {echo}\n")).unwrap();
    let client_toml = dir.path().join("client-ha.toml");
    std::fs::write(
        &client_toml,
        format!(
            "acl_file = \"acl.list\"\ndefault_policy = \"deny\"\n[[gateway]]\n\
             url = \"wss://127.0.0.1:{tunnel}/tunnel\"\ngateway_id = \"{id}\"\ntoken = \"{token}\"\n\
             ca_file = \"ca.pem\"\ntunnels = 1\n[reconnect]\ninitial = \"100ms\"\nmax = \"300ms\"\n"
        ),
    )
    .unwrap();
    let client = Proc::spawn(&["client", "--config", client_toml.to_str().unwrap()]);
    client.wait_line("tunnel up").await;
    let served = |what: &'static [u8]| async move {
        let deadline = Instant::now() + WAIT;
        while let Err(e) = echo_via("127.0.0.1", port, what).await {
            assert!(Instant::now() < deadline, "not served: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    served(b"file").await;
    drop(gw);

    let migrate = |to: String| {
        Command::new(sgw_bin())
            .args(["state", "migrate", "--from"])
            .arg(dir.path().join("state.json"))
            .args(["--to", &to])
            .output()
            .unwrap()
    };
    let out = migrate(pg.url());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains("copied 1 gateway(s) with 1 destination(s)"),
        "{said}"
    );
    // Again: the id is taken, so nothing is written, and the reason says so.
    let again = migrate(pg.url());
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    // A password in the URL is refused before anything is dialled.
    let bad = migrate(format!(
        "postgres://postgres:secret@127.0.0.1:{}/postgres",
        pg.port
    ));
    assert_eq!(bad.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&bad.stderr).contains("secret"));
    // The password never crosses a network in plain text: no `prefer`, and `disable` only for
    // a database on this host.
    for mode in ["prefer", "disable"] {
        let out = migrate(format!("postgres://sgw@db.example.com/sgw?sslmode={mode}"));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("plain text"),
            "{out:?}"
        );
    }

    write(tunnel, api, &format!("state_store = \"{}\"", pg.url()));
    let (_gw, _) = start().await;
    served(b"postgres").await;
    let g2 = call("GET", format!("/v1/sgconfig/{id}"), Value::Null).await;
    assert_eq!(text(&g2["security_token"]), token);
    assert_eq!(text(&g2["desc"]), "old");
    drop(client);
}

/// A single URL whose name resolves to three addresses is three replicas: the client holds a
/// tunnel to each, and a destination answers callers at every one. The name lives in a
/// private /etc/hosts, bind-mounted for the client alone (a mount namespace: root only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_name_with_three_addresses_gets_tunnels_to_each() {
    if !is_root() || which("unshare").is_none() {
        println!("SKIPPED: needs root and unshare (util-linux) for a private /etc/hosts");
        return;
    }
    let Some(c) = Cluster::start(true).await else {
        return;
    };
    let echo = echo_server().await;
    let (id, token) = c.create_gateway(0, "dns").await;
    let hosts = c.path("hosts");
    let lines: String = c
        .replicas
        .iter()
        .map(|r| format!("{} {NAME}\n", r.host))
        .collect();
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n{lines}")).unwrap();
    let url = format!("\"wss://{NAME}:{}/tunnel\"", c.replicas[0].tunnel);
    let cfg = c.client_config(&[url], &id, &token, &echo.to_string());
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/hosts && exec \"$1\" client --config \"$2\"",
    ])
    .arg(&hosts)
    .arg(sgw_bin())
    .arg(&cfg)
    .env_remove("RUST_LOG");
    let client = Proc::start(cmd);
    for i in 0..3 {
        c.tunnels(i, &id, 1).await;
    }
    let doc = json!({"ip": "127.0.0.1", "port": echo.port()});
    let port = c.create_dest(1, &id, &token, doc).await;
    for i in 0..3 {
        c.serves(i, port, WAIT, &client).await;
    }
}

/// The `n`th fenced block of docs/HA.md opened with ```lang.
fn ha_doc_block(lang: &str, n: usize) -> String {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/HA.md"),
    )
    .unwrap();
    let fence = format!("```{lang}\n");
    let start = doc
        .match_indices(&fence)
        .nth(n)
        .unwrap_or_else(|| panic!("docs/HA.md has no block {n} of {lang}"))
        .0
        + fence.len();
    let len = doc[start..].find("```").unwrap();
    doc[start..start + len].to_owned()
}

/// The replica config, the client config and the Kubernetes manifests of docs/HA.md load:
/// the configs with sgw's own readers (files they name written beside them), the manifests
/// as YAML with the objects and settings the text promises.
#[test]
fn the_ha_docs_configs_and_manifests_load() {
    let dir = tempfile::tempdir().unwrap();
    sgw::init::write(dir.path(), &sgw::init::InitOptions::default()).unwrap();
    std::fs::copy(dir.path().join("ca.pem"), dir.path().join("db-ca.pem")).unwrap();
    std::fs::write(dir.path().join("admin-token"), "t0123456789").unwrap();
    std::fs::write(dir.path().join("db-password"), "pw").unwrap();
    std::fs::write(dir.path().join("token"), "client-token").unwrap();

    let gw_path = dir.path().join("gateway-a.toml");
    std::fs::write(&gw_path, ha_doc_block("toml", 0)).unwrap();
    let gw = sgw::config::GatewayConfig::load(&gw_path).unwrap();
    let api = gw.api.unwrap();
    let store = api.state_store.unwrap();
    assert_eq!(
        store.url,
        "postgres://sgw@db.example.com:5432/sgw?sslmode=require"
    );
    assert_eq!(store.password.unwrap().expose(), "pw");
    assert!(store.ca.is_some());
    assert_eq!(
        (api.replica.as_str(), api.cloud_host.as_str()),
        ("a", "10.0.0.11")
    );

    let client_path = dir.path().join("client.toml");
    std::fs::write(&client_path, ha_doc_block("toml", 1)).unwrap();
    let c = sgw::config::ClientConfig::load(&client_path).unwrap();
    let urls: Vec<String> = c.gateways[0]
        .replicas
        .iter()
        .map(|r| r.url.to_string())
        .collect();
    assert_eq!(urls.len(), 3, "{urls:?}");
    assert!(urls[2].starts_with("wss://10.0.0.13:9000"), "{urls:?}");

    let yaml = ha_doc_block("yaml", 0);
    let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kind = |k: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == k).collect() };
    let deploy = kind("Deployment")[0];
    assert_eq!(deploy["spec"]["replicas"], 3);
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    let pdb = kind("PodDisruptionBudget")[0];
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    let services = kind("Service");
    assert_eq!(services.len(), 2);
    assert!(services.iter().all(|s| &s["spec"]["selector"] == labels));
    assert!(services.iter().any(|s| s["spec"]["clusterIP"] == "None"));
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["args"][0], "gateway");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The ConfigMap's gateway.toml, with the mounted files where the pod has them.
    let toml = kind("ConfigMap")[0]["data"]["gateway.toml"]
        .as_str()
        .unwrap()
        .replace("/etc/sgw/tls/", "")
        .replace("/etc/sgw/secrets/", "");
    let k8s_path = dir.path().join("gateway-k8s.toml");
    std::fs::write(&k8s_path, toml).unwrap();
    let k = sgw::config::GatewayConfig::load(&k8s_path).unwrap();
    assert!(k.api.unwrap().state_store.is_some());
    assert!(k.admin.is_some(), "probes need admin_listen");
}

/// docs/HA.md's HAProxy example in front of three replicas: callers through it keep being
/// served while a replica is killed with `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ha_docs_haproxy_example_hides_a_lost_replica() {
    let Some(haproxy) = which("haproxy")
        .or_else(|| Some(PathBuf::from("/usr/sbin/haproxy")).filter(|p| p.exists()))
    else {
        println!("SKIPPED: haproxy is needed (apt-get install haproxy)");
        return;
    };
    let Some(mut c) = Cluster::start(false).await else {
        return;
    };
    let echo = echo_server().await;
    let (id, token) = c.create_gateway(0, "lb").await;
    let client = c.client(&id, &token, &echo.to_string());
    for i in 0..3 {
        c.tunnels(i, &id, 1).await;
    }
    let doc = json!({"ip": "127.0.0.1", "port": echo.port()});
    let port = c.create_dest(0, &id, &token, doc).await;
    for i in 0..3 {
        c.serves(i, port, WAIT, &client).await;
    }
    let front = free_port();
    let cfg = ha_doc_block("haproxy", 0)
        .replace("bind 0.0.0.0:5432", &format!("bind 127.0.0.1:{front}"))
        .replace("10.0.0.11:5432", &format!("{}:{port}", c.replicas[0].host))
        .replace("10.0.0.12:5432", &format!("{}:{port}", c.replicas[1].host))
        .replace("10.0.0.13:5432", &format!("{}:{port}", c.replicas[2].host));
    let cfg_path = c.path("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let check = Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let mut cmd = Command::new(&haproxy);
    cmd.arg("-db").arg("-f").arg(&cfg_path);
    let _lb = Proc::start(cmd);
    wait_listening(front).await;

    for n in 0..6 {
        echo_via("127.0.0.1", front, b"before")
            .await
            .unwrap_or_else(|e| panic!("{n}: {e}"));
    }
    // Killed: callers arriving from then on, before and after the health checks notice
    // (2 s), are all served (a caller mid-connection at the kill would be cut, as with any
    // lost host).
    c.kill9(0).await;
    let mut failures = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for n in 0..60 {
        tick.tick().await;
        if let Err(e) = echo_via("127.0.0.1", front, b"through haproxy").await {
            failures.push(format!("caller {n}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}\n{}", c.logs());
}

/// `state_store` over TLS: with `sslmode=require` the database's certificate is verified
/// against `state_store_ca_file` (the gateway serves with it); a database signed by another
/// CA stops the gateway at start with the reason, and so does one that refuses plain
/// connections when TLS is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_store_over_tls_verifies_the_database() {
    let dir = tempfile::tempdir().unwrap();
    sgw::init::write(dir.path(), &sgw::init::InitOptions::default()).unwrap();
    let other = tempfile::tempdir().unwrap();
    sgw::init::write(other.path(), &sgw::init::InitOptions::default()).unwrap();
    // The database presents the certificate `sgw init` made (it names localhost).
    let Some(pg) = Postgres::start_tls(
        &dir.path().join("gateway.pem"),
        &dir.path().join("gateway.key"),
    )
    .await
    else {
        println!("SKIPPED: a PostgreSQL server could not be started (apt-get install postgresql)");
        return;
    };
    std::fs::copy(other.path().join("ca.pem"), dir.path().join("other-ca.pem")).unwrap();
    let gw_toml = dir.path().join("gateway.toml");
    let write = |params: &str, ca: &str| {
        std::fs::write(
            &gw_toml,
            format!(
                "listen = \"127.0.0.1:0\"\ntls_cert = \"gateway.pem\"\ntls_key = \"gateway.key\"\n\
                 api_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\n\
                 state_store = \"postgres://postgres@localhost:{}/postgres?{params}\"\n\
                 state_store_ca_file = \"{ca}\"\n",
                pg.port
            ),
        )
        .unwrap();
    };
    // A gateway that should refuse to start: its exit (bounded) and what it said.
    let run_briefly = || async {
        let mut p = Proc::spawn(&["gateway", "--config", gw_toml.to_str().unwrap()]);
        // Its last words: main's `sgw: <why>`.
        let why = p.wait_line("sgw: ").await;
        (wait_exit(&mut p.child).await, why)
    };

    write("sslmode=require", "other-ca.pem");
    let (status, err) = run_briefly().await;
    assert!(!status.success());
    assert!(
        err.contains("state store") && err.contains("certificate"),
        "{err}"
    );
    write("sslmode=disable", "ca.pem");
    let (status, err) = run_briefly().await;
    assert!(!status.success());
    assert!(err.contains("no encryption"), "{err}");
    assert!(!err.contains(ADMIN));

    write("sslmode=require", "ca.pem");
    let p = Proc::spawn(&["gateway", "--config", gw_toml.to_str().unwrap()]);
    p.wait_line("read the shared state store").await;
    let api = field(&p.wait_line("management API listening").await, "api.listen");
    let (code, out, err) = curl(&[
        "--cacert",
        dir.path().join("ca.pem").to_str().unwrap(),
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
        "-d",
        "{\"desc\":\"over tls\"}",
        &format!("https://{api}/v1/sgconfig"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("security_token"), "{out}\n{}", p.all());
}
