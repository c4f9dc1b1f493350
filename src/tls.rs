//! TLS settings for destinations: the client's TLS to on-prem endpoints (`enable_client_tls`,
//! `tls = "mutualauth"`, `reject_unauth`, `client_certs`, `sni`) and the gateway's TLS toward
//! callers (`client_tls`). Built once per configuration, never per connection.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{CallerTls, TlsIdentity};
use crate::proto::EndpointTls;

/// Selects the process's crypto provider, once (several may be compiled in).
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The operating system's CA certificates, read once.
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            Arc::new(roots)
        })
        .clone()
}

/// Why TLS settings can't be built: the setting at fault and what is wrong with it, never
/// key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct TlsError {
    pub setting: String,
    pub problem: String,
}

impl TlsError {
    pub fn new(setting: impl Into<String>, problem: impl std::fmt::Display) -> TlsError {
        TlsError {
            setting: setting.into(),
            problem: problem.to_string(),
        }
    }
}

/// How the client connects TLS to one endpoint.
#[derive(Clone)]
pub struct EndpointConnector {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
    /// Certificates are not verified (`reject_unauth = false`): said at every connect.
    pub unverified: bool,
}

impl std::fmt::Debug for EndpointConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConnector")
            .field("server_name", &self.server_name)
            .field("unverified", &self.unverified)
            .finish()
    }
}

/// Builds the TLS settings for a destination's endpoint; `host` is its `ip`, the server name
/// when `sni` is empty. Errors name the field at fault and never quote key material.
pub fn endpoint_connector(spec: &EndpointTls, host: &str) -> Result<EndpointConnector, TlsError> {
    install_crypto();
    let name = if spec.sni.is_empty() { host } else { &spec.sni };
    let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
        TlsError::new(
            "sni",
            format!("`{name}` is not a valid server name or address"),
        )
    })?;
    let builder = rustls::ClientConfig::builder();
    let builder = if spec.reject_unauth {
        let roots = if spec.client_certs.is_empty() {
            system_roots()
        } else {
            let mut roots = RootCertStore::empty();
            for (i, pem) in spec.client_certs.iter().enumerate() {
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let c = c.map_err(|e| {
                        TlsError::new(format!("client_certs[{i}]"), format!("bad PEM: {e}"))
                    })?;
                    roots.add(c).map_err(|e| {
                        TlsError::new(format!("client_certs[{i}]"), format!("unusable CA: {e}"))
                    })?;
                }
            }
            Arc::new(roots)
        };
        if roots.is_empty() {
            return Err(TlsError::new(
                "reject_unauth",
                "no client_certs given and no system CA found",
            ));
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny::new()))
    };
    let cfg = if !spec.mutual {
        builder.with_no_client_auth()
    } else if spec.dest_cert.is_empty() || spec.dest_key.0.is_empty() {
        return Err(TlsError::new(
            "tls",
            "mutualauth needs dest_cert and dest_key: none from the gateway and none in client.toml [[destinations]]",
        ));
    } else {
        let certs: Result<Vec<_>, _> =
            CertificateDer::pem_slice_iter(spec.dest_cert.as_bytes()).collect();
        let certs = certs.map_err(|e| TlsError::new("dest_cert", format!("bad PEM: {e}")))?;
        if certs.is_empty() {
            return Err(TlsError::new("dest_cert", "contains no PEM certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(spec.dest_key.0.as_bytes())
            .map_err(|_| TlsError::new("dest_key", "contains no usable PEM private key"))?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::new("dest_cert/dest_key", e))?
    };
    Ok(EndpointConnector {
        connector: TlsConnector::from(Arc::new(cfg)),
        server_name,
        unverified: !spec.reject_unauth,
    })
}

/// TLS that accepts any server certificate: only to learn whether something speaks TLS and
/// HTTP at an address (`sgw doctor` on the gateway's own API), never to send a secret.
pub fn unverified_connector() -> TlsConnector {
    install_crypto();
    let cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny::new()))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

/// The gateway's TLS toward a destination's callers; `None` for `client_tls = "none"`.
pub fn caller_acceptor(mode: &CallerTls) -> Result<Option<TlsAcceptor>, TlsError> {
    install_crypto();
    let (id, mutual): (&TlsIdentity, bool) = match mode {
        CallerTls::None => return Ok(None),
        CallerTls::ServerSide(id) => (id, false),
        CallerTls::Mutual(id) => (id, true),
    };
    let builder = rustls::ServerConfig::builder();
    let builder = if mutual {
        let mut roots = RootCertStore::empty();
        for c in &id.certs {
            roots.add(c.clone()).map_err(|e| {
                TlsError::new("server_cert", format!("unusable as a CA for callers: {e}"))
            })?;
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| TlsError::new("server_cert", e))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let cfg = builder
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| TlsError::new("server_cert/server_key", e))?;
    Ok(Some(TlsAcceptor::from(Arc::new(cfg))))
}

/// `reject_unauth = false`: any certificate is accepted (signatures are still checked so the
/// handshake is well-formed). The client logs a warning at every connect.
#[derive(Debug)]
struct AcceptAny {
    schemes: Vec<SignatureScheme>,
}

impl AcceptAny {
    fn new() -> Self {
        let schemes = rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes();
        AcceptAny { schemes }
    }
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// What an operator needs to know of a certificate: the names it holds, when it expires,
/// whether it is a CA. For `sgw doctor`; read from DER that the peer or a file supplied, so
/// every failure is a value, never a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// DNS names and IP addresses of its subjectAltName (the CN when it has none).
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
    pub is_ca: bool,
}

/// At most this many names are kept from one certificate.
const MAX_CERT_NAMES: usize = 16;

impl CertFacts {
    pub fn of(der: &[u8]) -> Option<CertFacts> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in san.value.general_names.iter().take(MAX_CERT_NAMES) {
                match n {
                    GeneralName::DNSName(d) => names.push(crate::telemetry::clean(d, 64)),
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                            16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            names.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        if names.is_empty() {
            if let Some(cn) = cert.subject().iter_common_name().next() {
                if let Ok(cn) = cn.as_str() {
                    names.push(format!("CN={}", crate::telemetry::clean(cn, 64)));
                }
            }
        }
        Some(CertFacts {
            names,
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
        })
    }

    /// Whole days from `now_unix` until it expires (negative once expired).
    pub fn days_left(&self, now_unix: i64) -> i64 {
        (self.not_after - now_unix).div_euclid(86_400)
    }

    /// The expiry as a date (UTC).
    pub fn expiry_date(&self) -> String {
        jiff::Timestamp::from_second(self.not_after)
            .map(|t| t.strftime("%Y-%m-%d").to_string())
            .unwrap_or_else(|_| "an unreadable date".into())
    }
}
