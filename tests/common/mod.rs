//! Shared test harness: a real gateway and client over real TLS on 127.0.0.1:0, configured by
//! the files `sgw init` writes, plus small TCP servers to use as on-prem endpoints.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use sgw::acl::Acl;
use sgw::client::{Client, ClientHandle};
use sgw::config::{ClientConfig, GatewayConfig};
use sgw::gateway::{Gateway, GatewayHandle};
use sgw::init::{self, Expose, InitOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(20);

pub fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// Echo server: writes back everything, half-closes after the caller does.
pub async fn echo_server() -> SocketAddr {
    serve(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Reads until EOF, then answers with the SHA-256 of what it read.
pub async fn hash_server() -> SocketAddr {
    serve(|mut s| async move {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(_) => return,
            }
        }
        let _ = s.write_all(&h.finalize()).await;
        let _ = s.shutdown().await;
    })
    .await
}

/// Writes forever (until the socket fails).
pub async fn firehose_server() -> SocketAddr {
    serve(|mut s| async move {
        let buf = vec![0x5au8; 64 * 1024];
        while s.write_all(&buf).await.is_ok() {}
    })
    .await
}

pub async fn serve<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(f(s));
        }
    });
    addr
}

/// Files written by `sgw init` in a temp dir, loaded as validated configs.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub gateway: GatewayConfig,
    pub client: ClientConfig,
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

impl Setup {
    pub fn new(expose: &[SocketAddr]) -> Setup {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            api_listen: "127.0.0.1:0".into(),
            gateway_admin_listen: "127.0.0.1:0".into(),
            expose: expose
                .iter()
                .map(|a| Expose {
                    host: a.ip().to_string(),
                    port: a.port(),
                    cloud_port: 0,
                })
                .collect(),
            ..InitOptions::default()
        };
        let w = init::write(dir.path(), &opts).unwrap();
        let gateway = GatewayConfig::load(&w.gateway_toml).unwrap();
        let mut client = ClientConfig::load(&w.client_toml).unwrap();
        client.reconnect.initial = Duration::from_millis(100);
        client.reconnect.max = Duration::from_millis(500);
        Setup {
            dir,
            gateway,
            client,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub struct RunningGateway {
    pub handle: GatewayHandle,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn start_gateway(cfg: GatewayConfig) -> RunningGateway {
    let gw = Gateway::bind(cfg).await.unwrap();
    let handle = gw.handle();
    let stop = CancellationToken::new();
    let task = tokio::spawn(gw.run(stop.clone()));
    RunningGateway { handle, stop, task }
}

pub struct RunningClient {
    pub handle: ClientHandle,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts a client pointed at `tunnel` and waits until all its tunnels are up.
pub async fn start_client(mut cfg: ClientConfig, tunnel: SocketAddr) -> RunningClient {
    for g in &mut cfg.gateways {
        g.replicas[0].url.port = tunnel.port();
    }
    let tunnels: usize = cfg.gateways.iter().map(|g| g.tunnels).sum();
    let acl = Acl::load(&cfg.acl_file, cfg.default_policy).unwrap();
    let acl_file = cfg.acl_file.clone();
    let client = Client::new(cfg, acl).unwrap().with_acl_file(acl_file);
    let handle = client.handle();
    let stop = CancellationToken::new();
    let task = tokio::spawn(client.run(stop.clone()));
    let mut st = handle.status();
    tokio::time::timeout(WAIT, st.wait_for(|s| s.tunnels_up >= tunnels))
        .await
        .expect("tunnels up in time")
        .unwrap();
    RunningClient { handle, stop, task }
}

/// Gateway + client for the given endpoints; destination i is `dest{i+1}`.
pub struct Harness {
    pub setup: Setup,
    pub gw: RunningGateway,
    pub client: RunningClient,
}

impl Harness {
    pub async fn start(expose: &[SocketAddr], tweak: impl FnOnce(&mut Setup)) -> Harness {
        let mut setup = Setup::new(expose);
        tweak(&mut setup);
        let gw = start_gateway(setup.gateway.clone()).await;
        let client = start_client(setup.client.clone(), gw.handle.tunnel_addr()).await;
        Harness { setup, gw, client }
    }

    pub fn cloud(&self, i: usize) -> SocketAddr {
        self.gw.handle.dest_addr(&format!("dest{}", i + 1)).unwrap()
    }
}

pub fn sha(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

pub fn sgw_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sgw")
}

pub fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}

/// Puts top-level `lines` at the head of a TOML file (before any table).
pub fn prepend_toml(path: &Path, lines: &str) {
    let src = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, format!("{lines}\n{src}")).unwrap();
}

/// Rewrites `key = ...` lines of a TOML file in place.
pub fn set_toml(path: &Path, key: &str, value: &str) {
    let src = std::fs::read_to_string(path).unwrap();
    let out: Vec<String> = src
        .lines()
        .map(|l| {
            if l.trim_start().starts_with(&format!("{key} =")) {
                format!("{key} = {value}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(path, out.join("\n") + "\n").unwrap();
}

/// A child process whose stderr lines are collected as they come.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    /// While true, nobody reads the process's stderr: its pipe fills, as a stalled journald's.
    paused: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        let mut cmd = Command::new(sgw_bin());
        cmd.args(args).env_remove("RUST_LOG");
        Proc::start(cmd)
    }

    /// Any command, its stderr collected the same way (stdout discarded).
    pub fn start(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let l2 = lines.clone();
        let paused = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let p2 = paused.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
                let (flag, cv) = &*p2;
                // Until `resume_reading` or the drop of the `Proc`, which both clear it.
                let _held = cv.wait_timeout_while(flag.lock().unwrap(), WAIT * 3, |p| *p);
            }
        });
        Proc {
            child,
            lines,
            paused,
        }
    }

    /// Stops reading the process's stderr (after the line being read): its pipe fills.
    pub fn pause_reading(&self) {
        *self.paused.0.lock().unwrap() = true;
    }

    /// Reads the process's stderr again.
    pub fn resume_reading(&self) {
        *self.paused.0.lock().unwrap() = false;
        self.paused.1.notify_all();
    }

    /// Waits (bounded) for a stderr line containing `needle` and returns it.
    pub async fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?}; got:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn all(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.resume_reading();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one Prometheus series (`name{labels}`) in a /metrics text.
pub fn sample(text: &str, series: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Value of `key=` in a text log line.
pub fn field(line: &str, key: &str) -> String {
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("{key} in {line}"));
    line[at + key.len() + 1..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

/// Points the `client.toml` that `sgw init` wrote at a running gateway; returns its path.
pub fn point_client_at(setup: &Setup, tunnel: SocketAddr) -> PathBuf {
    let client_toml = setup.path("client.toml");
    set_toml(
        &client_toml,
        "url",
        &format!("\"wss://localhost:{}/tunnel\"", tunnel.port()),
    );
    client_toml
}

/// Sends `msg`, half-closes, and returns everything the far side sent back (bounded wait).
pub async fn echo_once(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut back))
        .await
        .map_err(std::io::Error::other)??;
    Ok(back)
}

/// Waits (bounded) for a child process to exit.
pub async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `sig` (`-HUP`, `-TERM`, ...) to the process `pid` with kill(1).
pub fn signal(sig: &str, pid: &str) {
    let st = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(st.success(), "kill {sig} {pid}: {st}");
}

/// `kill -9` (no drain, no goodbye), and waits (bounded) until it is gone.
pub async fn kill9(child: &mut Child) {
    child.kill().unwrap();
    wait_exit(child).await;
}

/// A port that was free a moment ago, for third-party daemons that cannot bind port 0.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits (bounded) until something accepts on `port`.
pub async fn wait_listening(port: u16) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills a helper daemon when the test ends.
pub struct Daemon(pub std::process::Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs nginx (Debian package) in `dir` with these `server { ... }` blocks (`{dir}` in them
/// is replaced by the directory); waits until every port in `ports` answers. `None` when
/// nginx is not installed.
pub async fn start_nginx(dir: &Path, servers: &str, ports: &[u16]) -> Option<Daemon> {
    let nginx =
        which("nginx").or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.exists()))?;
    let d = dir.display();
    let servers = servers.replace("{dir}", &d.to_string());
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000;\n\
         client_body_temp_path {d}/t1; proxy_temp_path {d}/t2; fastcgi_temp_path {d}/t3;\n\
         uwsgi_temp_path {d}/t4; scgi_temp_path {d}/t5;\n{servers}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(nginx)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);
    for p in ports {
        wait_listening(*p).await;
    }
    Some(daemon)
}

/// Runs curl (silent, errors shown, 10 s cap) with `args`: exit code, stdout, stderr.
pub async fn curl(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output(),
    )
    .await
    .expect("curl finished")
    .expect("curl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A throwaway redis-server on a free loopback port, when installed.
pub async fn start_redis() -> Option<(Daemon, u16)> {
    let server = which("redis-server")?;
    let port = free_port();
    let child = Command::new(server)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon(child);
    wait_listening(port).await;
    Some((d, port))
}

/// The errors `gateway.toml` text gets (one string), with `sgw init`'s certificates next to
/// it so only the part under test is wrong. Panics if it loads.
pub fn gateway_config_errors(src: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    init::write(dir.path(), &InitOptions::default()).unwrap();
    GatewayConfig::from_toml_env(&dir.path().join("gateway.toml"), src, Default::default())
        .expect_err("config should be refused")
        .0
        .join("\n")
}

/// The head of a `gateway.toml` with one gateway and the start of one destination `d1`
/// (`ip`/`port` given); append the keys under test.
pub const GATEWAY_HEAD: &str =
    "listen = \"127.0.0.1:0\"\ntls_cert = \"gateway.pem\"\ntls_key = \"gateway.key\"\n\
    [[gateways]]\nid = \"g\"\nsecurity_token = \"t\"\n\
    [[gateways.destinations]]\nid = \"d1\"\nip = \"127.0.0.1\"\nport = 1\n";

/// PostgreSQL (Debian's package) in a fresh data directory on a free loopback port, trusting
/// local connections, run as the `postgres` user when we are root (postgres refuses root).
/// It can be stopped and started again on the same port and data.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    server: Option<Child>,
}

impl Postgres {
    /// `None` when it can't be run here (not installed, or no `postgres` user as root).
    pub async fn start() -> Option<Postgres> {
        Postgres::start_with(None).await
    }

    /// TLS only over TCP, with this certificate and key (PEM): plain connections are refused.
    pub async fn start_tls(cert: &Path, key: &Path) -> Option<Postgres> {
        Postgres::start_with(Some((cert, key))).await
    }

    async fn start_with(tls: Option<(&Path, &Path)>) -> Option<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|b| b.join("initdb").is_file())?;
        let dir = tempfile::tempdir().ok()?;
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:", dir.path().to_str()?])
                .status()
                .ok()?
                .success();
            if !ok {
                return None;
            }
        }
        let mut pg = Postgres {
            port: free_port(),
            bin,
            dir,
            server: None,
        };
        let init = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(pg.data())
            .status()
            .ok()?;
        if !init.success() {
            return None;
        }
        if let Some((cert, key)) = tls {
            let data = pg.data();
            std::fs::copy(cert, data.join("server.crt")).ok()?;
            std::fs::copy(key, data.join("server.key")).ok()?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .ok()?;
            if is_root() {
                for f in ["server.crt", "server.key"] {
                    Command::new("chown")
                        .arg("postgres:")
                        .arg(data.join(f))
                        .status()
                        .ok()?;
                }
            }
            let conf = data.join("postgresql.conf");
            let text = std::fs::read_to_string(&conf).ok()? + "\nssl = on\n";
            std::fs::write(&conf, text).ok()?;
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .ok()?;
        }
        pg.resume().await;
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, prog: &str) -> Command {
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(prog));
            c
        } else {
            Command::new(self.bin.join(prog))
        };
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable` (a database on this host).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn resume(&mut self) {
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .arg("-k")
            .arg(self.dir.path())
            .spawn()
            .unwrap();
        self.server = Some(child);
        wait_listening(self.port).await;
        // Listening is not accepting: a server still starting up answers "the database system
        // is starting up". pg_isready exits 0 once it accepts sessions.
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL never accepted sessions"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `pg_ctl stop -m fast` (sessions are ended, nothing is lost); waits until it has exited.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.server.take() {
            self.fast_shutdown();
            wait_exit(&mut c).await;
        }
    }

    fn fast_shutdown(&self) {
        // The server runs under runuser, which does not pass every signal on: ask pg_ctl.
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "fast", "-t", "15", "-D"])
            .arg(self.data())
            .status();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            self.fast_shutdown();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
