//! Enrollment strings: everything an on-prem host needs to join a gateway, in one line that
//! the gateway operator hands over (`sgw enroll`, or the API's `enrollment` call) and the
//! on-prem operator pastes (`sgw client --enroll`), as `cloudflared tunnel run --token` does.
//!
//! The string is `sgw1_` followed by unpadded base64url of a JSON object: the tunnel URL, the
//! gateway id, its security token, and the CA the client should trust (absent: the system's
//! roots). It holds the token, so it is a secret: [`Enrollment`]'s `Debug` redacts it and
//! nothing here logs it. docs/DEPLOYMENT.md describes the format.

use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::config::{Secret, WssUrl};

/// What every enrollment string starts with; the digit is the format's version.
pub const PREFIX: &str = "sgw1_";
/// Longest string accepted: a URL, an id, a token and a CA chain fit with room to spare.
const MAX_LEN: usize = 64 * 1024;

/// One enrollment: where to connect, as whom, and whom to trust.
#[derive(Clone)]
pub struct Enrollment {
    pub url: WssUrl,
    pub gateway_id: String,
    pub token: Secret,
    /// PEM of the CA certificates to trust for the gateway; `None`: the system's roots.
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("url", &self.url.to_string())
            .field("gateway_id", &self.gateway_id)
            .field("token", &self.token)
            .field("ca", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("this is not an sgw enrollment string: it must start with `{PREFIX}` (copy the whole last line `sgw enroll` printed)")]
    Prefix,
    #[error("the enrollment string is incomplete or altered ({0}): copy the whole line `sgw enroll` printed, with nothing added or cut")]
    Damaged(&'static str),
    #[error("the enrollment string is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("the enrollment string holds a bad {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("no gateway id `{0}` in gateway.toml or the state file")]
    UnknownGateway(String),
    #[error("gateway.toml has no public_url: set it (sgw init writes one), or pass --url wss://NAME:PORT/tunnel")]
    NoUrl,
}

/// The JSON inside the string; unknown fields are refused, so a newer format fails clearly.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    url: String,
    gateway_id: String,
    token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
}

impl Enrollment {
    /// The one-line string. Fails only on a CA that is not PEM certificates.
    pub fn encode(&self) -> Result<String, EnrollError> {
        if let Some(ca) = &self.ca_pem {
            check_ca(ca)?;
        }
        let wire = Wire {
            url: self.url.to_string(),
            gateway_id: self.gateway_id.clone(),
            token: self.token.expose().to_owned(),
            ca: self.ca_pem.clone(),
        };
        let json = serde_json::to_vec(&wire).map_err(|e| EnrollError::Field {
            field: "document",
            reason: e.to_string(),
        })?;
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        ))
    }

    /// Reads a string as pasted: surrounding whitespace is ignored, anything else wrong is an
    /// error that says what. Error texts never quote the string.
    pub fn decode(s: &str) -> Result<Enrollment, EnrollError> {
        let s = s.trim();
        if s.len() > MAX_LEN {
            return Err(EnrollError::TooLong);
        }
        let body = s.strip_prefix(PREFIX).ok_or(EnrollError::Prefix)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| EnrollError::Damaged("not base64url"))?;
        let wire: Wire = serde_json::from_slice(&json)
            .map_err(|_| EnrollError::Damaged("not a complete document"))?;
        let field = |field, reason: String| EnrollError::Field { field, reason };
        let url = WssUrl::parse(&wire.url).map_err(|e| field("url", e.to_string()))?;
        if wire.gateway_id.is_empty()
            || wire.gateway_id.len() > 128
            || wire.gateway_id.chars().any(|c| c.is_control() || c == '"')
        {
            return Err(field(
                "gateway id",
                "empty, too long or with control characters".into(),
            ));
        }
        if wire.token.is_empty()
            || wire.token.len() > 1024
            || wire
                .token
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            // Never the token itself in the message.
            return Err(field("token", "empty, too long or with whitespace".into()));
        }
        if let Some(ca) = &wire.ca {
            check_ca(ca)?;
        }
        Ok(Enrollment {
            url,
            gateway_id: wire.gateway_id,
            token: Secret::new(wire.token),
            ca_pem: wire.ca,
        })
    }
}

/// The enrollment string for `gateway_id` of a gateway configured by `cfg` (and `managed`, the
/// API's gateway ids from the state file); `url` overrides `public_url`.
pub fn for_gateway(
    cfg: &crate::config::GatewayConfig,
    managed: &[crate::config::TenantConfig],
    gateway_id: &str,
    url: Option<&str>,
) -> Result<String, EnrollError> {
    let tenant = cfg
        .gateways
        .iter()
        .chain(managed)
        .find(|t| t.id == gateway_id)
        .ok_or_else(|| EnrollError::UnknownGateway(gateway_id.to_owned()))?;
    let url = match url {
        Some(u) => WssUrl::parse(u).map_err(|reason| EnrollError::Field {
            field: "--url",
            reason: reason.to_string(),
        })?,
        None => cfg.enroll.url.clone().ok_or(EnrollError::NoUrl)?,
    };
    Enrollment {
        url,
        gateway_id: tenant.id.clone(),
        token: tenant.token.clone(),
        ca_pem: cfg.enroll.ca_pem.clone(),
    }
    .encode()
}

fn check_ca(pem: &str) -> Result<(), EnrollError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(()),
        Ok(_) => Err(EnrollError::Field {
            field: "CA",
            reason: "no PEM certificate".into(),
        }),
        Err(e) => Err(EnrollError::Field {
            field: "CA",
            reason: e.to_string(),
        }),
    }
}

/// What [`write_client_dir`] wrote and what it kept.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub client_toml: PathBuf,
    pub written: Vec<PathBuf>,
    /// Files that existed and were left alone (the operator's ACL, the admin token).
    pub kept: Vec<PathBuf>,
}

/// Writes an on-prem host's files into `dir`: client.toml, the token and the CA (replaced on a
/// new enrollment), and, only where missing, a default-deny acl.list and an admin token.
/// Secrets are 0600, the rest 0644, the directory 0750 when created.
pub fn write_client_dir(
    dir: &Path,
    e: &Enrollment,
    admin_listen: &str,
) -> Result<ClientFiles, EnrollError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| EnrollError::Io { path, source }
    };
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    let mut out = ClientFiles {
        client_toml: dir.join("client.toml"),
        written: Vec::new(),
        kept: Vec::new(),
    };
    let mut put = |name: &str, body: &str, mode: u32, replace: bool| {
        let path = dir.join(name);
        if !replace && path.exists() {
            out.kept.push(path);
            return Ok(());
        }
        // Exactly this mode (an older file's looser one must not survive for a secret), owned
        // like the directory, all through the temp file's descriptor.
        crate::fsutil::write_owned(&path, body.as_bytes(), mode).map_err(io_err(&path))?;
        out.written.push(path);
        Ok::<(), EnrollError>(())
    };
    put("token", &format!("{}\n", e.token.expose()), 0o600, true)?;
    if let Some(ca) = &e.ca_pem {
        put("ca.pem", ca, 0o644, true)?;
    }
    put(
        "admin.token",
        &format!("{}\n", Secret::generate().expose()),
        0o600,
        false,
    )?;
    put(
        "acl.list",
        "# sgw ACL: first matching rule decides; nothing is allowed until a rule says so.\n# Example: acl allow 10.0.0.5:5432\n",
        0o644,
        false,
    )?;
    let toml = crate::init::client_toml(
        &e.url.to_string(),
        &e.gateway_id,
        e.ca_pem.is_some(),
        admin_listen,
    );
    put("client.toml", &toml, 0o644, true)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Enrollment {
        let (ca, _, _) = crate::init::ca_and_server("t", "t", vec!["localhost".into()]).unwrap();
        Enrollment {
            url: WssUrl::parse("wss://198.18.0.1:9000/tunnel").unwrap(),
            gateway_id: "gw1".into(),
            token: Secret::new("tok-abc-123"),
            ca_pem: Some(ca.pem()),
        }
    }

    #[test]
    fn round_trips_and_survives_surrounding_whitespace() {
        let s = sample().encode().unwrap();
        assert!(s.starts_with(PREFIX) && !s.contains(char::is_whitespace));
        let d = Enrollment::decode(&format!("  {s}\n")).unwrap();
        assert_eq!(d.url.to_string(), "wss://198.18.0.1:9000/tunnel");
        assert_eq!(d.gateway_id, "gw1");
        assert_eq!(d.token.expose(), "tok-abc-123");
        assert!(d.ca_pem.as_deref().unwrap().contains("BEGIN CERTIFICATE"));
        assert!(!format!("{d:?}").contains("tok-abc-123"));
    }

    #[test]
    fn every_truncation_is_refused_without_quoting_the_string() {
        let s = sample().encode().unwrap();
        for cut in 0..s.len() {
            let e = Enrollment::decode(&s[..cut])
                .expect_err("a cut string is refused")
                .to_string();
            assert!(!e.contains("tok-abc-123"), "{e}");
            if cut >= PREFIX.len() + 16 {
                assert!(!e.contains(&s[PREFIX.len()..PREFIX.len() + 16]), "{e}");
            }
        }
        assert!(matches!(
            Enrollment::decode("hello"),
            Err(EnrollError::Prefix)
        ));
        assert!(matches!(
            Enrollment::decode("sgw1_!!!"),
            Err(EnrollError::Damaged(_))
        ));
    }
}
