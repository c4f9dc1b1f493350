//! The gateway management API (issue 7, seed 000) against a real `sgw gateway` process over
//! HTTPS, driven by curl: seed 000's examples, live changes reaching a connected `sgw client`,
//! restart with the state file, a table of bad requests, the OpenAPI document against the
//! routes, and schemathesis against the document.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "admin-secret-token";

/// A gateway process with the API on, in its own directory (`sgw init` certificates).
struct Env {
    dir: tempfile::TempDir,
    gw: Option<Proc>,
    api: u16,
    tunnel: u16,
}

impl Env {
    async fn start() -> Env {
        Env::start_with("").await
    }

    /// With `extra` appended to gateway.toml (after the `filegw` gateway's table).
    async fn start_with(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        sgw::init::write(dir.path(), &sgw::init::InitOptions::default()).unwrap();
        let mut env = Env {
            dir,
            gw: None,
            api: 0,
            tunnel: 0,
        };
        env.write_config(0, 0);
        if !extra.is_empty() {
            let path = env.path("gateway.toml");
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, format!("{text}{extra}")).unwrap();
        }
        env.launch().await;
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_config(&self, tunnel: u16, api: u16) {
        let cfg = format!(
            "listen = \"127.0.0.1:{tunnel}\"\ntls_cert = \"gateway.pem\"\ntls_key = \"gateway.key\"\n\
             api_listen = \"127.0.0.1:{api}\"\nadmin_token = \"{ADMIN}\"\nstate_file = \"state.json\"\n\
             cloud_host = \"127.0.0.1\"\napi_max_body = \"64KiB\"\n\
             [[gateways]]\nid = \"filegw\"\nsecurity_token = \"file-token\"\n"
        );
        std::fs::write(self.path("gateway.toml"), cfg).unwrap();
    }

    async fn launch(&mut self) {
        let cfg = self.path("gateway.toml");
        let p = Proc::spawn(&["gateway", "--config", cfg.to_str().unwrap()]);
        let api = p.wait_line("management API listening").await;
        let tunnel = p.wait_line("gateway started").await;
        self.api = field(&api, "api.listen")
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        self.tunnel = field(&tunnel, "tunnel.listen")
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        self.gw = Some(p);
    }

    /// SIGTERM, wait for exit, start again on the same ports.
    async fn restart(&mut self) {
        let mut p = self.gw.take().unwrap();
        signal("-TERM", &p.child.id().to_string());
        let st = wait_exit(&mut p.child).await;
        assert!(st.success(), "gateway exit: {st:?}\n{}", p.all());
        self.write_config(self.tunnel, self.api);
        self.launch().await;
    }

    fn logs(&self) -> String {
        self.gw.as_ref().map(Proc::all).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.api)
    }

    /// curl with the gateway's CA; returns (status, JSON body).
    async fn curl(&self, args: &[&str]) -> (u16, Value) {
        let ca = self.path("ca.pem");
        let mut all = vec!["--cacert", ca.to_str().unwrap(), "-w", "\n%{http_code}"];
        all.extend_from_slice(args);
        let (code, out, err) = curl(&all).await;
        assert_eq!(code, 0, "curl {args:?}: {err}");
        let (body, status) = out.rsplit_once('\n').unwrap();
        let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
        (status.parse().unwrap(), v)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = self.url(path);
        let auth = format!("Authorization: Bearer {token}");
        let text = body.map(|b| b.to_string());
        let mut args = vec!["-X", method, "-H", &auth, &url];
        if let Some(t) = &text {
            args.extend(["-H", "Content-Type: application/json", "-d", t]);
        }
        self.curl(&args).await
    }

    /// Creates a gateway; returns (id, security token).
    async fn create_gateway(&self) -> (String, String) {
        let (st, g) = self
            .call(
                "POST",
                "/v1/sgconfig",
                ADMIN,
                Some(&json!({"desc": "test"})),
            )
            .await;
        assert_eq!(st, 200, "{g}");
        (s(&g["id"]), s(&g["security_token"]))
    }

    fn state_bytes(&self) -> Vec<u8> {
        std::fs::read(self.path("state.json")).unwrap_or_default()
    }
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_owned()
}

/// An `sgw client` process for gateway `id`, allowed to reach `allow` (host:port).
fn start_client(env: &Env, id: &str, token: &str, allow: &str) -> Proc {
    let acl = env.path(&format!("acl-{id}.list"));
    std::fs::write(&acl, format!("acl allow {allow}\n")).unwrap();
    let cfg = format!(
        "acl_file = \"{}\"\ndefault_policy = \"deny\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[gateway]]\nurl = \"wss://127.0.0.1:{}/tunnel\"\ngateway_id = \"{id}\"\ntoken = \"{token}\"\n\
         ca_file = \"ca.pem\"\ntunnels = 1\n[reconnect]\ninitial = \"100ms\"\nmax = \"300ms\"\n",
        acl.display(),
        env.tunnel
    );
    let path = env.path(&format!("client-{id}.toml"));
    std::fs::write(&path, cfg).unwrap();
    Proc::spawn(&["client", "--config", path.to_str().unwrap()])
}

async fn echo_on(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("echo within the wait")
        .unwrap();
    assert_eq!(buf, msg);
}

/// Seed 000's curl examples, with the local address and the ids they create, answered as
/// the seed describes (the two `setActivity` examples in the seed are not valid JSON: they
/// are sent once as printed, refused with 400, and once corrected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_curl_examples() {
    let env = Env::start().await;
    let admin = format!("Authorization: Bearer {ADMIN}");
    let json_ct = "Content-Type: application/json";

    // POST /v1/sgconfig
    let (st, g) = env
        .curl(&[
            "-X",
            "POST",
            "-H",
            &admin,
            "-H",
            json_ct,
            "-d",
            r#"{ "desc": "My Gateway", "enf_tok_sec" : true, "token_exp" : 55 }"#,
            &env.url("/v1/sgconfig"),
        ])
        .await;
    assert_eq!(st, 200, "{g}");
    assert_eq!(
        (
            g["desc"].as_str(),
            g["enf_tok_sec"].as_bool(),
            g["token_exp"].as_u64()
        ),
        (Some("My Gateway"), Some(true), Some(55))
    );
    assert_eq!(g["status"], "ENABLED");
    let (id, token) = (s(&g["id"]), s(&g["security_token"]));
    let auth = format!("Authorization: Bearer {token}");
    let gw = |p: &str| env.url(&format!("/v1/sgconfig/{id}{p}"));

    // GET /v1/sgconfig lists it next to the gateway from gateway.toml.
    let (st, list) = env
        .curl(&["-X", "GET", "-H", &admin, &env.url("/v1/sgconfig")])
        .await;
    assert_eq!(st, 200);
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|g| s(&g["id"]))
        .collect();
    assert!(
        ids.contains(&id) && ids.contains(&"filegw".to_owned()),
        "{list}"
    );

    // PUT /v1/setActivity, as printed (missing `]`), then corrected.
    let seed_body =
        format!(r#"{{ "setActive": [ "{id}" ], "setInactive": [ "qCTv6Onseiy_prod_ng" }}"#);
    let (st, e) = env
        .curl(&[
            "-X",
            "PUT",
            "-H",
            &admin,
            "-H",
            json_ct,
            "-d",
            &seed_body,
            &env.url("/v1/setActivity"),
        ])
        .await;
    assert_eq!(st, 400);
    assert!(s(&e["message"]).contains("not valid JSON"), "{e}");
    let fixed = format!(r#"{{ "setActive": [ "{id}" ], "setInactive": [] }}"#);
    let (st, a) = env
        .curl(&[
            "-X",
            "PUT",
            "-H",
            &admin,
            "-H",
            json_ct,
            "-d",
            &fixed,
            &env.url("/v1/setActivity"),
        ])
        .await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["unchanged"], json!([id]));

    // GET /v1/sgconfig/{gateway_id} with the security token.
    let (st, one) = env.curl(&["-X", "GET", "-H", &auth, &gw("")]).await;
    assert_eq!((st, s(&one["id"])), (200, id.clone()));

    // POST destinations: the seed's body (port as a string, HTTPS with mutualauth both ways);
    // the gateway generates the certificate it shows callers.
    let (st, d) = env
        .curl(&["-X", "POST", "-H", &auth, "-H", json_ct, "-d", r#"{ "desc": "My Destination", "ip": "127.0.0.1", "port": "443", "protocol": "HTTPS", "enable_client_tls": true, "client_tls": "mutualauth", "tls": "mutualauth" }"#, &gw("/destinations")])
        .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(
        (
            d["port"].as_u64(),
            d["protocol"].as_str(),
            d["client_tls"].as_str()
        ),
        (Some(443), Some("HTTPS"), Some("mutualauth"))
    );
    assert!(s(&d["server_cert"]).starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(d.get("server_key").is_none(), "keys are not shown: {d}");
    let dest = s(&d["id"]);
    let cloud_port = d["cloud_port"].as_u64().unwrap();
    assert_ne!(cloud_port, 0);
    let dp = |p: &str| gw(&format!("/destinations/{dest}{p}"));

    // GET destinations
    let (st, l) = env
        .curl(&["-X", "GET", "-H", &auth, &gw("/destinations")])
        .await;
    assert_eq!((st, l.as_array().map(Vec::len)), (200, Some(1)));

    // PUT a destination with `-d` and no Content-Type, as the seed does.
    let (st, d) = env
        .curl(&[
            "-X",
            "PUT",
            "-H",
            &auth,
            "-d",
            r#"{ "desc": "My Destination" }"#,
            &dp(""),
        ])
        .await;
    assert_eq!(
        (st, d["desc"].as_str()),
        (200, Some("My Destination")),
        "{d}"
    );
    let (st, d) = env.curl(&["-X", "GET", "-H", &auth, &dp("")]).await;
    assert_eq!((st, d["cloud_port"].as_u64()), (200, Some(cloud_port)));

    // PUT /setActivity for destinations: as printed, then corrected.
    let seed_body = format!(r#"{{ "setActive": [ "{dest}}}" ], "setInactive": [ "{dest}" }}"#);
    let (st, _) = env
        .curl(&[
            "-X",
            "PUT",
            "-H",
            &auth,
            "-H",
            json_ct,
            "-d",
            &seed_body,
            &gw("/setActivity"),
        ])
        .await;
    assert_eq!(st, 400);
    let fixed = format!(r#"{{ "setInactive": [ "{dest}" ] }}"#);
    let (st, a) = env
        .curl(&[
            "-X",
            "PUT",
            "-H",
            &auth,
            "-H",
            json_ct,
            "-d",
            &fixed,
            &gw("/setActivity"),
        ])
        .await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["deactivated"][0]["id"], json!(dest));
    let (_, l) = env
        .call(
            "GET",
            &format!("/v1/sgconfig/{id}/destinations?type=enabled"),
            &token,
            None,
        )
        .await;
    assert_eq!(l, json!([]));
    let (_, l) = env
        .call(
            "GET",
            &format!("/v1/sgconfig/{id}/destinations?type=disabled"),
            &token,
            None,
        )
        .await;
    assert_eq!(l.as_array().map(Vec::len), Some(1));

    // ipTableRule: add, same app replaces, delete by src/spt.
    let rule = r#"{ "spt": "5000:5010", "src": "127.0.0.5", "app": "myRule01" }"#;
    let (st, d) = env
        .curl(&[
            "-X",
            "PUT",
            "-H",
            &auth,
            "-H",
            json_ct,
            "-d",
            rule,
            &dp("/ipTableRule"),
        ])
        .await;
    assert_eq!(st, 200, "{d}");
    let rule2 = r#"{ "spt": "6000", "src": "127.0.0.6", "app": "myRule01" }"#;
    let (_, d) = env
        .curl(&[
            "-X",
            "PUT",
            "-H",
            &auth,
            "-H",
            json_ct,
            "-d",
            rule2,
            &dp("/ipTableRule"),
        ])
        .await;
    assert_eq!(
        d["ip_table_rules"],
        json!([{"src": "127.0.0.6", "spt": "6000", "app": "myRule01"}])
    );
    let del = r#"{ "spt": "6000", "src": "127.0.0.6" }"#;
    let (st, d) = env
        .curl(&[
            "-X",
            "DELETE",
            "-H",
            &auth,
            "-H",
            json_ct,
            "-d",
            del,
            &dp("/ipTableRule"),
        ])
        .await;
    assert_eq!(st, 200);
    assert!(d.get("ip_table_rules").is_none(), "{d}");
    // Two rules, then DELETE with no body removes them all.
    let rule3 = rule2.replace("myRule01", "myRule02");
    for r in [rule, rule3.as_str()] {
        let (st, _) = env
            .curl(&["-X", "PUT", "-H", &auth, "-d", r, &dp("/ipTableRule")])
            .await;
        assert_eq!(st, 200);
    }
    let (_, d) = env.curl(&["-X", "GET", "-H", &auth, &dp("")]).await;
    assert_eq!(d["ip_table_rules"].as_array().map(Vec::len), Some(2));
    let (st, d) = env
        .curl(&["-X", "DELETE", "-H", &auth, &dp("/ipTableRule")])
        .await;
    assert_eq!(st, 200);
    assert!(d.get("ip_table_rules").is_none(), "{d}");

    // Certificates: upload (the seed's `cert` field, with its key), list, delete, generate.
    let pem = format!("cert=@{}", env.path("gateway.pem").display());
    let key = format!("server_key=@{}", env.path("gateway.key").display());
    let (st, d) = env
        .curl(&[
            "-X",
            "PUT",
            "-H",
            &auth,
            "-F",
            &pem,
            "-F",
            &key,
            &dp("/cert"),
        ])
        .await;
    assert_eq!(st, 200, "{d}");
    let uploaded = std::fs::read_to_string(env.path("gateway.pem")).unwrap();
    assert_eq!(s(&d["server_cert"]), uploaded);
    let ca = format!("client_cert=@{}", env.path("ca.pem").display());
    let (st, d) = env
        .curl(&["-X", "PUT", "-H", &auth, "-F", &ca, &dp("/cert")])
        .await;
    assert_eq!(st, 200, "{d}");
    let (st, files) = env.curl(&["-X", "GET", "-H", &auth, &dp("/cert")]).await;
    assert_eq!(st, 200);
    let names: Vec<String> = files["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| s(&f["filename"]))
        .collect();
    assert_eq!(
        names,
        ["server_cert.pem", "server_key.pem", "client_cert_1.pem"]
    );
    let (st, d) = env
        .curl(&[
            "-X",
            "DELETE",
            "-H",
            &auth,
            "-H",
            json_ct,
            "-d",
            r#"{ "filename": [ "client_cert_1.pem" ] }"#,
            &dp("/cert"),
        ])
        .await;
    assert_eq!(st, 200);
    assert!(d.get("client_certs").is_none());
    let (st, d) = env
        .curl(&["-X", "PUT", "-H", &auth, &dp("/genCerts")])
        .await;
    assert_eq!(st, 200, "{d}");
    assert_ne!(
        s(&d["server_cert"]),
        uploaded,
        "genCerts replaced the certificate"
    );

    // Export a destination, and the gateway (.gateway, keys included); import the
    // destination into a second gateway after freeing its port.
    let (st, one) = env.curl(&["-X", "GET", "-H", &auth, &dp("/export")]).await;
    assert_eq!(st, 200);
    assert!(s(&one["destinations"][0]["server_key"]).contains("PRIVATE KEY"));
    let (st, whole) = env
        .curl(&[
            "-X",
            "GET",
            "-H",
            &auth,
            "-o",
            "/dev/stdout",
            &gw("/export"),
        ])
        .await;
    assert_eq!(
        (st, whole["destinations"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let file = env.path("gateway_id.gateway");
    std::fs::write(&file, whole.to_string()).unwrap();

    // clients, clientLogs, disconnectedClients with nobody connected.
    let (st, c) = env.curl(&["-X", "GET", "-H", &auth, &gw("/clients")]).await;
    assert_eq!((st, c), (200, json!([])));
    let (st, c) = env
        .curl(&[
            "-X",
            "DELETE",
            "-H",
            &auth,
            "-d",
            r#"{ "deleteList": [ "nobody_1" ] }"#,
            &gw("/clients"),
        ])
        .await;
    assert_eq!((st, c["not_connected"].clone()), (200, json!(["nobody_1"])));
    let (st, c) = env
        .curl(&["-X", "GET", "-H", &auth, &gw("/clientLogs")])
        .await;
    assert_eq!((st, c), (200, json!([])));

    // bulkDestinations, then import the exported file back into this gateway.
    let body = format!(r#"{{ "destinations": [ "{dest}" ] }}"#);
    let (st, _) = env
        .curl(&[
            "-X",
            "DELETE",
            "-H",
            &auth,
            "-H",
            json_ct,
            "-d",
            &body,
            &gw("/bulkDestinations"),
        ])
        .await;
    assert_eq!(st, 200);
    let (_, l) = env
        .curl(&["-X", "GET", "-H", &auth, &gw("/destinations")])
        .await;
    assert_eq!(l, json!([]));
    let state = format!("state=@{}", file.display());
    let (st, imp) = env
        .curl(&[
            "-X",
            "PUT",
            "-H",
            &auth,
            "-F",
            &state,
            &gw("/destinations/import"),
        ])
        .await;
    assert_eq!(st, 200, "{imp}");
    assert_eq!(
        imp["imported"][0]["cloud_port"].as_u64(),
        Some(cloud_port),
        "the file's port is kept"
    );
    // Importing it again collides with the destination it just made.
    let (st, e) = env
        .curl(&[
            "-X",
            "PUT",
            "-H",
            &auth,
            "-F",
            &state,
            &gw("/destinations/import"),
        ])
        .await;
    assert_eq!(st, 409, "{e}");

    // DELETE one destination.
    let (st, _) = env.curl(&["-X", "DELETE", "-H", &auth, &dp("")]).await;
    assert_eq!(st, 200);

    // PUT /v1/sgconfig/{id}: new description and a regenerated token; the old one is refused.
    let (st, g) = env
        .curl(&["-X", "PUT", "-H", &auth, "-H", json_ct, "-d", r#"{ "desc": "My New Gateway", "enabled": true, "enf_tok_sec": true, "regen_token": true, "token_exp": 44 }"#, &gw("")])
        .await;
    assert_eq!(st, 200, "{g}");
    assert_eq!(
        (g["desc"].as_str(), g["token_exp"].as_u64()),
        (Some("My New Gateway"), Some(44))
    );
    let new_token = s(&g["security_token"]);
    assert_ne!(new_token, token);
    let (st, e) = env.curl(&["-X", "GET", "-H", &auth, &gw("")]).await;
    assert_eq!(st, 401, "{e}");

    // GET /v1/export (service.config), PUT /v1/import -F state=@service.config: the gateways
    // are recreated with new ids and tokens.
    let (st, svc) = env
        .curl(&[
            "-X",
            "GET",
            "-o",
            "/dev/stdout",
            "-H",
            &admin,
            &env.url("/v1/export"),
        ])
        .await;
    assert_eq!(st, 200);
    assert!(svc["gateways"].as_array().unwrap().len() >= 2);
    // A gateway from another host: its destination listens on this gateway's cloud_host, on a
    // new port (0).
    let dest_elsewhere = json!({"id": "x", "ip": "127.0.0.1", "port": 9, "cloud_host": "127.0.0.3", "cloud_port": 0});
    let only = json!({"gateways": [{"desc": "copy", "enf_tok_sec": true, "destinations": [dest_elsewhere]}]});
    let file = env.path("service.config");
    std::fs::write(&file, only.to_string()).unwrap();
    let state = format!("state=@{}", file.display());
    let (st, imp) = env
        .curl(&[
            "-X",
            "PUT",
            "-H",
            &admin,
            "-F",
            &state,
            &env.url("/v1/import"),
        ])
        .await;
    assert_eq!(st, 200, "{imp}");
    assert_eq!(imp["imported"][0]["desc"], "copy");
    let copy = s(&imp["imported"][0]["id"]);
    let (st, x) = env
        .call(
            "GET",
            &format!("/v1/sgconfig/{copy}/destinations/x"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(
        (st, x["cloud_host"].as_str()),
        (200, Some("127.0.0.1")),
        "{x}"
    );
    assert_ne!(x["cloud_port"].as_u64(), Some(0));
    assert_ne!(imp["imported"][0]["id"], json!(id));

    // Stats, per gateway and overall.
    let (st, one) = env
        .call("GET", &format!("/v1/sgconfig/{id}/stats"), &new_token, None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(one["streams_opened"], 0);
    let (st, all) = env.call("GET", "/v1/stats", ADMIN, None).await;
    assert_eq!(st, 200);
    assert!(all["gateways"].get(&id).is_some(), "{all}");

    // Every documented route is served (not the fallback), and nothing leaked a key into
    // the log.
    let doc = openapi();
    for (method, path) in sgw::api::ROUTES {
        let p = path
            .replace("{gateway_id}", &id)
            .replace("{destination_id}", "nope")
            .replace("{client_id}", "nope");
        let (st, v) = env.call(method, &p, ADMIN, None).await;
        assert!(
            st != 405 && v["message"] != "no such API call",
            "{method} {path}: {st} {v}"
        );
        assert!(doc["paths"][path][method.to_lowercase()].is_object());
    }
    assert!(!env.logs().contains("PRIVATE KEY"), "keys in the log");
    assert!(!env.logs().contains(&new_token), "token in the log");
}

fn openapi() -> Value {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// docs/openapi.json documents exactly the routes the API serves.
#[test]
fn openapi_document_matches_routes() {
    let doc = openapi();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys() {
            documented.push((m.to_uppercase(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = sgw::api::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
}

/// A destination created through the API while a client is connected is reachable at once;
/// disabled, it refuses new connections while an open one goes on; deleted, it stays closed;
/// a regenerated token disconnects the client. Then a restart keeps everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_changes_reach_a_connected_client_and_survive_restart() {
    let mut env = Env::start().await;
    let echo = echo_server().await;
    let (id, token) = env.create_gateway().await;
    let client = start_client(&env, &id, &token, &echo.to_string());
    client.wait_line("tunnel up").await;
    let (st, clients) = env
        .call("GET", &format!("/v1/sgconfig/{id}/clients"), &token, None)
        .await;
    assert_eq!(st, 200);
    assert!(s(&clients[0]["client_id"]).starts_with(&id), "{clients}");

    let body = json!({"id": "echo", "protocol": "TCP", "ip": "127.0.0.1", "port": echo.port()});
    let (st, d) = env
        .call(
            "POST",
            &format!("/v1/sgconfig/{id}/destinations"),
            &token,
            Some(&body),
        )
        .await;
    assert_eq!(st, 200, "{d}");
    let port = d["cloud_port"].as_u64().unwrap() as u16;
    let mut open = echo_on(port).await;
    roundtrip(&mut open, b"through a destination made a moment ago").await;
    let cid = s(&clients[0]["client_id"]);
    let (st, c) = env
        .call(
            "GET",
            &format!("/v1/sgconfig/{id}/clients/{cid}"),
            &token,
            None,
        )
        .await;
    assert_eq!(
        (st, c["connected"].as_bool(), c["tunnels"].as_u64()),
        (200, Some(true), Some(1)),
        "{c}"
    );
    let (_, stats) = env
        .call("GET", &format!("/v1/sgconfig/{id}/stats"), &token, None)
        .await;
    assert_eq!(
        (stats["streams_opened"].as_u64(), stats["clients"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    assert!(
        !client.all().contains("tunnel down"),
        "the client did not reconnect"
    );

    // Disable: new connections refused, the open one goes on.
    let act = json!({"setInactive": ["echo"]});
    let (st, _) = env
        .call(
            "PUT",
            &format!("/v1/sgconfig/{id}/setActivity"),
            &token,
            Some(&act),
        )
        .await;
    assert_eq!(st, 200);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "disabled destination still accepts"
    );
    roundtrip(&mut open, b"still here").await;

    // Enable again: the same port.
    let act = json!({"setActive": ["echo"]});
    let (st, a) = env
        .call(
            "PUT",
            &format!("/v1/sgconfig/{id}/setActivity"),
            &token,
            Some(&act),
        )
        .await;
    assert_eq!(
        (st, a["activated"][0]["cloud_port"].as_u64()),
        (200, Some(port as u64)),
        "{a}"
    );
    roundtrip(&mut echo_on(port).await, b"back").await;

    // Restart the gateway: the gateway, its token and destination come back; the client
    // reconnects by itself and reaches the destination on the same port.
    drop(open);
    env.restart().await;
    let (st, g) = env
        .call("GET", &format!("/v1/sgconfig/{id}"), &token, None)
        .await;
    assert_eq!((st, g["destinations"].as_u64()), (200, Some(1)), "{g}");
    let (_, d) = env
        .call(
            "GET",
            &format!("/v1/sgconfig/{id}/destinations/echo"),
            &token,
            None,
        )
        .await;
    assert_eq!(d["cloud_port"].as_u64(), Some(port as u64));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, c) = env
            .call("GET", &format!("/v1/sgconfig/{id}/clients"), &token, None)
            .await;
        if c.as_array().is_some_and(|c| !c.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "client did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut open = echo_on(port).await;
    roundtrip(&mut open, b"after restart").await;
    // Client ids are given per gateway run.
    let (_, clients) = env
        .call("GET", &format!("/v1/sgconfig/{id}/clients"), &token, None)
        .await;
    let client_id = s(&clients[0]["client_id"]);

    // Delete: the listener closes.
    let (st, _) = env
        .call(
            "DELETE",
            &format!("/v1/sgconfig/{id}/destinations/echo"),
            &token,
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    roundtrip(&mut open, b"open streams finish").await;

    // A caller the client's ACL refuses: the client's warning reaches clientLogs.
    let body = json!({"id": "denied", "ip": "127.0.0.1", "port": 9});
    let (st, d) = env
        .call(
            "POST",
            &format!("/v1/sgconfig/{id}/destinations"),
            &token,
            Some(&body),
        )
        .await;
    assert_eq!(st, 200, "{d}");
    let denied = d["cloud_port"].as_u64().unwrap() as u16;
    // The gateway resets the caller once the client refuses; that may even beat connect().
    if let Ok(mut refused) = TcpStream::connect(("127.0.0.1", denied)).await {
        let mut buf = [0u8; 1];
        let _ = tokio::time::timeout(WAIT, refused.read(&mut buf)).await;
    }
    env.gw.as_ref().unwrap().wait_line("client log").await;
    let q = format!("/v1/sgconfig/{id}/clientLogs?type=warn&client_id={client_id}");
    let (st, logs) = env.call("GET", &q, &token, None).await;
    assert_eq!(st, 200);
    let line = &logs.as_array().unwrap()[0];
    assert_eq!(
        (line["level"].as_str(), line["client_id"].as_str()),
        (Some("warn"), Some(client_id.as_str()))
    );
    assert!(s(&line["message"]).contains("denied"), "{logs}");
    let (_, none) = env
        .call(
            "GET",
            &format!("/v1/sgconfig/{id}/clientLogs?type=error"),
            &token,
            None,
        )
        .await;
    assert_eq!(none, json!([]));

    // DELETE clients disconnects it; it comes back by itself with a new tunnel.
    let body = json!({"deleteList": [client_id]});
    let (st, del) = env
        .call(
            "DELETE",
            &format!("/v1/sgconfig/{id}/clients"),
            &token,
            Some(&body),
        )
        .await;
    assert_eq!(
        (st, del["deleted"].clone()),
        (200, json!([client_id])),
        "{del}"
    );
    env.gw
        .as_ref()
        .unwrap()
        .wait_line("tunnel down: disconnected through the management API")
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    while client.all().matches("tunnel up").count() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "client did not reconnect: {}",
            client.all()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A regenerated token disconnects the client, which cannot come back with the old one.
    let (st, g) = env
        .call(
            "PUT",
            &format!("/v1/sgconfig/{id}"),
            &token,
            Some(&json!({"regen_token": true})),
        )
        .await;
    assert_eq!(st, 200);
    assert_ne!(s(&g["security_token"]), token);
    let gw_log = env.gw.as_ref().unwrap();
    gw_log
        .wait_line("tunnel down: security token changed")
        .await;
    client.wait_line("reason=token_rejected").await;
    let new_token = s(&g["security_token"]);
    let (_, gone) = env
        .call(
            "GET",
            &format!("/v1/sgconfig/{id}/disconnectedClients"),
            &new_token,
            None,
        )
        .await;
    assert!(
        gone.as_array()
            .unwrap()
            .iter()
            .any(|c| c["client_id"] == json!(client_id)),
        "{gone}"
    );
    env.gw.as_ref().unwrap().wait_line("tunnel refused").await;
    let (_, c) = env
        .call(
            "GET",
            &format!("/v1/sgconfig/{id}/clients"),
            &new_token,
            None,
        )
        .await;
    assert_eq!(c, json!([]));
}

/// Malformed requests: each answered with the right status and a message naming the
/// problem; none changes the state file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let env = Env::start().await;
    let (id, token) = env.create_gateway().await;
    let (other, other_token) = env.create_gateway().await;
    let body = json!({"id": "d1", "ip": "127.0.0.1", "port": 7, "timeout": 5});
    let (st, _) = env
        .call(
            "POST",
            &format!("/v1/sgconfig/{id}/destinations"),
            &token,
            Some(&body),
        )
        .await;
    assert_eq!(st, 200);
    let before = env.state_bytes();
    let dests = format!("/v1/sgconfig/{id}/destinations");
    let d1 = format!("{dests}/d1");
    let pem = std::fs::read_to_string(env.path("ca.pem")).unwrap();
    let big = "x".repeat(100 * 1024);
    let bad_pem = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
    let key = std::fs::read_to_string(env.path("gateway.key")).unwrap();
    let ca_key_mismatch =
        json!({"client_tls": "serverside", "server_cert": pem, "server_key": key});
    let seven: Vec<&str> = vec![pem.as_str(); 7];
    let g = format!("/v1/sgconfig/{id}");
    type Case<'a> = (&'a str, String, &'a str, Option<Value>, u16, String);
    let cases: Vec<Case> = vec![
        (
            "POST",
            dests.clone(),
            &token,
            Some(json!({"ip": 5, "port": 1})),
            400,
            "ip: expected a string, found integer".into(),
        ),
        (
            "POST",
            dests.clone(),
            &token,
            Some(json!({"ip": "h", "port": "eighty"})),
            400,
            "port: expected an integer".into(),
        ),
        (
            "POST",
            dests.clone(),
            &token,
            Some(json!({"ip": "h", "port": 1, "timeout": 500})),
            400,
            "timeout: 500 is out of range 1..=180".into(),
        ),
        (
            "POST",
            dests.clone(),
            &token,
            Some(json!({"ip": "h", "port": 70000})),
            400,
            "port: 70000 is out of range".into(),
        ),
        (
            "POST",
            dests.clone(),
            &token,
            Some(json!({"ip": "h", "port": 1, "colour": "red"})),
            400,
            "colour: unknown key".into(),
        ),
        (
            "POST",
            dests.clone(),
            &token,
            Some(json!({"ip": "h", "port": 1, "protocol": "FTP"})),
            400,
            "protocol: `FTP` is not one of".into(),
        ),
        (
            "POST",
            dests.clone(),
            &token,
            Some(json!({"port": 1})),
            400,
            "ip: missing required key".into(),
        ),
        (
            "POST",
            dests.clone(),
            &token,
            Some(json!([1, 2])),
            400,
            "must be a JSON object".into(),
        ),
        (
            "POST",
            dests.clone(),
            &token,
            Some(json!({"id": "d1", "ip": "h", "port": 1})),
            409,
            "destination `d1` already exists".into(),
        ),
        (
            "POST",
            dests.clone(),
            &token,
            Some(json!({"id": "a/b", "ip": "h", "port": 1})),
            400,
            "id: may have".into(),
        ),
        (
            "POST",
            dests.clone(),
            &token,
            Some(json!({"ip": "h", "port": 1, "cloud_host": "127.0.0.2"})),
            400,
            "cloud_host:".into(),
        ),
        (
            "POST",
            dests.clone(),
            &token,
            Some(json!({"ip": "h", "port": 1, "cloud_port": env.tunnel})),
            409,
            "cannot listen on".into(),
        ),
        (
            "PUT",
            d1.clone(),
            &token,
            Some(json!({"client_tls": "serverside", "server_cert": bad_pem, "server_key": key})),
            400,
            "server_cert/server_key: invalid peer certificate".into(),
        ),
        (
            "PUT",
            d1.clone(),
            &token,
            Some(
                json!({"client_tls": "serverside", "server_cert": "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n", "server_key": key}),
            ),
            400,
            "server_cert: bad PEM certificate".into(),
        ),
        (
            "PUT",
            d1.clone(),
            &token,
            Some(
                json!({"client_tls": "serverside", "server_cert": "/etc/passwd", "server_key": "/etc/shadow"}),
            ),
            400,
            "server_cert: must be PEM text".into(),
        ),
        (
            "PUT",
            d1.clone(),
            &token,
            Some(ca_key_mismatch),
            400,
            "destination d1".into(),
        ),
        (
            "PUT",
            d1.clone(),
            &token,
            Some(json!({"enable_client_tls": true, "client_certs": seven})),
            400,
            "at most 6".into(),
        ),
        (
            "PUT",
            d1.clone(),
            &token,
            Some(json!({"id": "other"})),
            400,
            "id: cannot be changed".into(),
        ),
        (
            "PUT",
            d1.clone(),
            &token,
            Some(json!({"timeout": "soon"})),
            400,
            "timeout: expected an integer".into(),
        ),
        (
            "PUT",
            format!("{d1}/ipTableRule"),
            &token,
            Some(json!({"src": "not-an-ip"})),
            400,
            "ip_table_rules".into(),
        ),
        (
            "PUT",
            format!("{d1}/ipTableRule"),
            &token,
            Some(json!({"src": "127.0.0.1", "port": 1})),
            400,
            "unknown field `port`".into(),
        ),
        (
            "DELETE",
            format!("{d1}/ipTableRule"),
            &token,
            Some(json!({"app": "nope"})),
            404,
            "no ip_table_rules".into(),
        ),
        (
            "DELETE",
            format!("{d1}/cert"),
            &token,
            Some(json!({"filename": ["x.pem"]})),
            404,
            "no certificate file `x.pem`".into(),
        ),
        (
            "PUT",
            format!("{d1}/genCerts"),
            &token,
            None,
            400,
            "nothing to generate".into(),
        ),
        (
            "PUT",
            format!("{d1}/cert"),
            &token,
            None,
            400,
            "upload certificates as multipart".into(),
        ),
        (
            "GET",
            format!("{dests}/nope"),
            &token,
            None,
            404,
            "no destination `nope`".into(),
        ),
        (
            "GET",
            format!("{dests}?type=all"),
            &token,
            None,
            400,
            "type: `all` is not one of enabled, disabled".into(),
        ),
        (
            "PUT",
            g.clone(),
            &token,
            Some(json!({"token_exp": 91, "regen_token": true})),
            400,
            "token_exp: 91 is out of range 0..=90".into(),
        ),
        (
            "PUT",
            g.clone(),
            &token,
            Some(json!({"enabled": "yes"})),
            400,
            "enabled: invalid type: string".into(),
        ),
        (
            "PUT",
            g.clone(),
            &token,
            Some(json!({"colour": "red"})),
            400,
            "unknown field `colour`".into(),
        ),
        (
            "PUT",
            g.clone(),
            &token,
            None,
            400,
            "a JSON body is required".into(),
        ),
        (
            "GET",
            g.clone(),
            "",
            None,
            401,
            "Authorization must be".into(),
        ),
        (
            "GET",
            g.clone(),
            "wrong-token",
            None,
            401,
            "invalid token".into(),
        ),
        (
            "GET",
            g.clone(),
            &other_token,
            None,
            403,
            "belongs to another gateway".into(),
        ),
        (
            "GET",
            "/v1/sgconfig".into(),
            &token,
            None,
            403,
            "cannot make account-level calls".into(),
        ),
        (
            "GET",
            "/v1/sgconfig/nope".into(),
            ADMIN,
            None,
            404,
            "no gateway `nope`".into(),
        ),
        (
            "PUT",
            "/v1/sgconfig/filegw".into(),
            ADMIN,
            Some(json!({"desc": "x"})),
            403,
            "defined in gateway.toml".into(),
        ),
        (
            "PUT",
            "/v1/setActivity".into(),
            ADMIN,
            Some(json!({"setActive": ["nope"]})),
            404,
            "no gateway `nope`".into(),
        ),
        (
            "POST",
            format!("{g}/clients"),
            &token,
            None,
            405,
            "method not allowed".into(),
        ),
        (
            "GET",
            "/v2/anything".into(),
            ADMIN,
            None,
            404,
            "no such API call".into(),
        ),
    ];
    let _ = other;
    for (method, path, tok, body, want, msg) in &cases {
        let (st, v) = if tok.is_empty() {
            env.curl(&[
                "-X",
                method,
                "-H",
                "Authorization: Basic abc",
                &env.url(path),
            ])
            .await
        } else {
            env.call(method, path, tok, body.as_ref()).await
        };
        let m = v["message"].as_str().unwrap_or_default();
        assert!(
            st == *want && m.contains(msg.as_str()),
            "{method} {path} {body:?}: got {st} {v}, want {want} containing {msg:?}"
        );
    }
    // Two server certificates in one upload.
    let auth = format!("Authorization: Bearer {token}");
    let one = format!("server_cert=@{}", env.path("gateway.pem").display());
    let url = env.url(&format!("{d1}/cert"));
    let (st, v) = env
        .curl(&["-X", "PUT", "-H", &auth, "-F", &one, "-F", &one, &url])
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        s(&v["message"]).contains("server_cert: upload one file"),
        "{v}"
    );
    // Larger than api_max_body (64 KiB here): refused from its Content-Length.
    let big = json!({"desc": big}).to_string();
    let (st, v) = env
        .curl(&[
            "-X",
            "PUT",
            "-H",
            &auth,
            "-H",
            "Expect: 100-continue",
            "-d",
            &big,
            &env.url(&d1),
        ])
        .await;
    assert_eq!(st, 413, "{v}");
    assert!(s(&v["message"]).contains("larger than"), "{v}");
    // Missing header, not JSON, the seed's invalid body.
    let (st, v) = env.curl(&["-X", "GET", &env.url(&g)]).await;
    assert_eq!((st, s(&v["message"]).contains("missing")), (401, true));
    let (st, v) = env
        .curl(&["-X", "PUT", "-H", &auth, "-d", "desc=hello", &env.url(&d1)])
        .await;
    assert_eq!(st, 400);
    assert!(s(&v["message"]).contains("not valid JSON"), "{v}");
    assert_eq!(
        env.state_bytes(),
        before,
        "a refused request changed the state file"
    );

    // A state file that cannot be written: the change is undone (500) and the running
    // gateway keeps the old configuration.
    let state = env.path("state.json");
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir_all(state.join("blocker")).unwrap();
    let (st, v) = env
        .call("PUT", &d1, &token, Some(&json!({"desc": "unsaved"})))
        .await;
    assert_eq!(st, 500, "{v}");
    assert!(s(&v["message"]).contains("nothing was changed"), "{v}");
    let (_, d) = env.call("GET", &d1, &token, None).await;
    assert_eq!(d["desc"], "");

    // An error quoting the caller's words is logged escaped: no forged line.
    let forged = format!("/v1/sgconfig/{id}/clients/x%0AERROR%20forged%20API%20line");
    let (st, v) = env.call("GET", &forged, &token, None).await;
    assert_eq!(st, 404, "{v}");
    let gw = env.gw.as_ref().unwrap();
    let line = gw.wait_line("forged API line").await;
    assert!(line.contains("x\\nERROR forged"), "{line}");
    assert!(
        !env.logs().lines().any(|l| l.starts_with("ERROR forged")),
        "{}",
        env.logs()
    );
}

/// A corrupt state file stops the gateway at start with a clear error (exit 2) instead of
/// starting without the gateways it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_file_is_refused_at_start() {
    let mut env = Env::start().await;
    env.create_gateway().await;
    let mut p = env.gw.take().unwrap();
    let _ = p.child.kill();
    let _ = wait_exit(&mut p.child).await;
    let state = env.path("state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    // A leftover temp file of an interrupted write is ignored...
    std::fs::write(env.path(".state.json.tmp-1-deadbeef"), "{ half").unwrap();
    // ... a destination that does not validate is named.
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["gateways"][0]["destinations"] = json!([{"created_at": 0, "updated_at": 0, "config": {"id": "bad", "ip": "h", "port": 1, "cloud_port": 0, "timeout": 999}}]);
    std::fs::write(&state, v.to_string()).unwrap();
    let cfg = env.path("gateway.toml");
    let out = Command::new(sgw_bin())
        .args(["gateway", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("destinations[0] (`bad`): timeout: 999 is out of range 1..=180"),
        "{err}"
    );
    std::fs::write(&state, &text[..text.len() / 2]).unwrap();
    let out = Command::new(sgw_bin())
        .args(["gateway", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a valid state file"), "{err}");
}

/// schemathesis (PyPI) generates requests from docs/openapi.json, including a stateful run
/// through the links (create a gateway, then use it); no request may get a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors() {
    let Some(st) = which("schemathesis") else {
        eprintln!("SKIP: schemathesis not installed (pip install schemathesis)");
        return;
    };
    let env = Env::start().await;
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let auth = format!("Authorization: Bearer {ADMIN}");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(240),
        tokio::process::Command::new(st)
            .args([
                "run",
                doc.to_str().unwrap(),
                "--url",
                &env.url(""),
                "-H",
                &auth,
            ])
            .args([
                "--tls-verify",
                "false",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "25",
            ])
            .args(["--seed", "7"])
            .env("SCHEMATHESIS_HOOKS", "")
            .output(),
    )
    .await
    .expect("schemathesis finished within 240 s")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    assert!(!env.logs().contains("panicked"), "{}", env.logs());
}

/// A gateway id from gateway.toml: its own token reads its destinations' certificates and
/// export without private keys or passwords (the operator's files; a `server_key` may be the
/// gateway's own key); the admin token gets them. An API-managed gateway's own token gets its
/// own keys, which it uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_toml_tenant_token_sees_no_private_keys() {
    let other = tempfile::tempdir().unwrap();
    sgw::init::write(other.path(), &sgw::init::InitOptions::default()).unwrap();
    let (pem, key) = (
        other.path().join("gateway.pem"),
        other.path().join("gateway.key"),
    );
    let extra = format!(
        "[[gateways.destinations]]\nid = \"web\"\nip = \"127.0.0.1\"\nport = 9\ncloud_port = 0\n\
         enable_client_tls = true\ntls = \"mutualauth\"\ndest_cert = \"{p}\"\ndest_key = \"{k}\"\n\
         client_tls = \"serverside\"\nserver_cert = \"{p}\"\nserver_key = \"{k}\"\n\
         proxy = {{ host = \"127.0.0.1\", port = 1080, protocol = 5, username = \"u\", password = \"proxy-pw-123\" }}\n",
        p = pem.display(),
        k = key.display()
    );
    let env = Env::start_with(&extra).await;
    let secret = |v: &Value| {
        let t = v.to_string();
        t.contains("PRIVATE KEY") || t.contains("proxy-pw-123")
    };
    for path in [
        "/v1/sgconfig/filegw/export",
        "/v1/sgconfig/filegw/destinations/web/export",
        "/v1/sgconfig/filegw/destinations/web/cert",
    ] {
        let (st, own) = env.call("GET", path, "file-token", None).await;
        assert_eq!(st, 200, "{path}: {own}");
        assert!(!secret(&own), "{path} with the gateway's token: {own}");
        assert!(
            own.to_string().contains("BEGIN CERTIFICATE"),
            "{path}: {own}"
        );
        let (st, admin) = env.call("GET", path, ADMIN, None).await;
        assert_eq!(st, 200, "{path}: {admin}");
        assert!(
            admin.to_string().contains("PRIVATE KEY"),
            "{path} with the admin token: {admin}"
        );
    }
    // An API-managed gateway: its own token gets the key it uploaded.
    let (id, token) = env.create_gateway().await;
    let key_text = std::fs::read_to_string(&key).unwrap();
    let pem_text = std::fs::read_to_string(&pem).unwrap();
    let doc = json!({"ip": "127.0.0.1", "port": 9, "client_tls": "serverside", "server_cert": pem_text, "server_key": key_text});
    let path = format!("/v1/sgconfig/{id}/destinations");
    let (st, d) = env.call("POST", &path, &token, Some(&doc)).await;
    assert_eq!(st, 200, "{d}");
    let path = format!("/v1/sgconfig/{id}/export");
    let (st, own) = env.call("GET", &path, &token, None).await;
    assert_eq!(st, 200, "{own}");
    assert!(own.to_string().contains("PRIVATE KEY"), "{own}");
    // The state file holds those keys: it is rewritten 0600 even if it was left readable.
    use std::os::unix::fs::PermissionsExt;
    let state = env.path("state.json");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.create_gateway().await;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// A request without a known token is answered 401 and its connection closed, so a stranger
/// can't keep an API slot by asking again and again on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_is_refused_and_disconnected() {
    let env = Env::start().await;
    let ca = env.path("ca.pem");
    let url = env.url("/v1/sgconfig");
    // Two requests on what curl would keep as one connection.
    let ca = ca.to_str().unwrap();
    let stranger = "Authorization: Bearer not-a-token".to_string();
    let admin = format!("Authorization: Bearer {ADMIN}");
    let mut args: Vec<&str> = Vec::new();
    for (i, auth) in [&stranger, &admin].into_iter().enumerate() {
        if i > 0 {
            args.push("--next");
        }
        args.extend([
            "--cacert",
            ca,
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            auth,
            &url,
        ]);
    }
    let (code, out, err) = curl(&args).await;
    assert_eq!(code, 0, "{err}");
    let heads: Vec<&str> = out.split("HTTP/1.1 ").filter(|h| !h.is_empty()).collect();
    assert_eq!(heads.len(), 2, "{out}");
    assert!(heads[0].starts_with("401"), "{out}");
    assert!(
        heads[0].to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    assert!(heads[1].starts_with("200"), "{out}");
    assert!(
        !heads[1].to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
}

/// A security token past its `token_exp` is refused by the API (401) and at the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused() {
    let mut env = Env::start().await;
    let (id, token) = env.create_gateway().await;
    let (st, _) = env
        .call("GET", &format!("/v1/sgconfig/{id}"), &token, None)
        .await;
    assert_eq!(st, 200);
    let mut p = env.gw.take().unwrap();
    let _ = p.child.kill();
    let _ = wait_exit(&mut p.child).await;
    let state = env.path("state.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    v["gateways"][0]["token_expires_at"] = json!(1);
    std::fs::write(&state, v.to_string()).unwrap();
    env.write_config(env.tunnel, env.api);
    env.launch().await;
    let (st, e) = env
        .call("GET", &format!("/v1/sgconfig/{id}"), &token, None)
        .await;
    assert_eq!(st, 401, "{e}");
    assert!(s(&e["message"]).contains("expired"), "{e}");
    let client = start_client(&env, &id, &token, "127.0.0.1:9");
    client.wait_line("reason=token_rejected").await;
    // A tunnel up when its token expires is closed then.
    let body = json!({"regen_token": true, "token_exp": 1});
    let (st, g) = env
        .call("PUT", &format!("/v1/sgconfig/{id}"), ADMIN, Some(&body))
        .await;
    assert_eq!(st, 200);
    let fresh = s(&g["security_token"]);
    drop(client);
    let mut p = env.gw.take().unwrap();
    let _ = p.child.kill();
    let _ = wait_exit(&mut p.child).await;
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 5;
    v["gateways"][0]["token_expires_at"] = json!(soon);
    std::fs::write(&state, v.to_string()).unwrap();
    env.launch().await;
    let client = start_client(&env, &id, &fresh, "127.0.0.1:9");
    client.wait_line("tunnel up").await;
    let line = env
        .gw
        .as_ref()
        .unwrap()
        .wait_line("the security token expired")
        .await;
    assert!(line.contains("token_expired"), "{line}");
    client.wait_line("reason=token_rejected").await;

    // The admin token still reaches the gateway and can issue a new token.
    let body = json!({"regen_token": true, "token_exp": 0});
    let (st, g) = env
        .call("PUT", &format!("/v1/sgconfig/{id}"), ADMIN, Some(&body))
        .await;
    assert_eq!(
        (st, g["token_expires_at"].clone()),
        (200, Value::Null),
        "{g}"
    );
}

/// The enrollment call hands out the same line `sgw enroll` prints, to the admin or the
/// gateway's own token only; the line decodes to this gateway's URL, id, token and CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_string_from_the_api() {
    let env = Env::start().await;
    let (id, token) = env.create_gateway().await;
    let path = format!("/v1/sgconfig/{id}/enrollment");
    // No public_url in this gateway.toml: the caller must say where clients connect.
    let (st, v) = env.call("GET", &path, ADMIN, None).await;
    assert_eq!(st, 409, "{v}");
    assert!(s(&v["message"]).contains("public_url"), "{v}");
    let with_url = format!("{path}?url=wss://gw.example:8443/tunnel");
    for who in [ADMIN, token.as_str()] {
        let (st, v) = env.call("GET", &with_url, who, None).await;
        assert_eq!(st, 200, "{v}");
        let e = sgw::enroll::Enrollment::decode(&s(&v["enrollment"])).unwrap();
        assert_eq!(e.url.to_string(), "wss://gw.example:8443/tunnel");
        assert_eq!(
            (e.gateway_id.as_str(), e.token.expose()),
            (id.as_str(), token.as_str())
        );
        assert!(e.ca_pem.is_none(), "no enroll_ca_file: the system's roots");
    }
    // Another gateway's token may not read this one's.
    let (other, other_token) = env.create_gateway().await;
    assert_ne!(other, id);
    let (st, _) = env.call("GET", &with_url, &other_token, None).await;
    assert_eq!(st, 403);
    let (st, v) = env
        .call("GET", &format!("{path}?url=http://x"), ADMIN, None)
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(!env.logs().contains(&token));
}
