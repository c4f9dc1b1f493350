//! What the API needs of the running gateway ([`Backend`]) and the typed answers it gets:
//! the wiring (`daemon`) implements it for the gateway, so neither imports the other.

use std::future::Future;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::TenantConfig;

/// Why the running gateway could not take a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A cloud port could not be bound (in use).
    #[error("{0}")]
    Conflict(String),
    /// The configuration is refused (TLS material that does not load).
    #[error("{0}")]
    Invalid(String),
}

/// The running gateway as the API sees it.
pub trait Backend: Send + Sync + 'static {
    /// Makes the gateway serve `cfg` (new or changed gateway id); returns it as it runs
    /// (`cloud_port = 0` resolved). On error nothing changed.
    fn apply(
        &self,
        cfg: TenantConfig,
    ) -> impl Future<Output = Result<TenantConfig, ApplyError>> + Send;
    /// Stops serving a gateway id and disconnects its clients.
    fn remove(&self, id: &str) -> impl Future<Output = ()> + Send;
    fn tenant(&self, id: &str) -> Option<TenantConfig>;
    fn gateway_ids(&self) -> Vec<String>;
    /// Whether `token` is some gateway id's security token, compared with every one (so the
    /// time taken does not tell which) and without copying any configuration: every request
    /// with a stranger's token asks.
    fn any_token_is(&self, token: &str) -> bool;
    /// Connected clients.
    fn clients(&self, id: &str) -> Vec<ClientView>;
    /// Closes these clients' tunnels; returns the ids that were connected.
    fn disconnect(&self, id: &str, client_ids: &[String]) -> Vec<String>;
    /// Warn/error lines clients pushed, oldest first.
    fn client_logs(&self, id: &str) -> Vec<ClientLogLine>;
    /// Clients that went away recently, oldest first.
    fn disconnected(&self, id: &str) -> Vec<GoneClient>;
    /// Counters of one gateway id (None: unknown id).
    fn stats(&self, id: &str) -> Option<IdCounts>;
}

/// One connected client (`GET .../clients`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientView {
    pub client_id: String,
    pub version: String,
    pub hostname: String,
    pub env: String,
    pub tunnels: usize,
    pub active_streams: usize,
    pub streams_opened: u64,
}

/// A client that went away (`GET .../disconnectedClients`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GoneClient {
    pub client_id: String,
    pub version: String,
    pub hostname: String,
    pub env: String,
    /// Unix milliseconds, shown as RFC 3339.
    #[serde(
        rename = "disconnected_at",
        serialize_with = "rfc3339",
        deserialize_with = "from_rfc3339"
    )]
    pub disconnected_at_ms: u64,
    pub reason: String,
}

/// One line a client pushed (`GET .../clientLogs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLogLine {
    pub client_id: String,
    pub level: String,
    pub message: String,
    /// Unix milliseconds, shown as RFC 3339.
    #[serde(
        rename = "time",
        serialize_with = "rfc3339",
        deserialize_with = "from_rfc3339"
    )]
    pub time_ms: u64,
}

/// The counters of one gateway id (`GET .../stats`); [`IdCounts::add`] sums them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdCounts {
    pub clients: u64,
    pub tunnels: u64,
    pub tunnels_accepted: u64,
    pub streams_active: u64,
    pub streams_opened: u64,
    pub streams_failed: u64,
    pub streams_denied: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl IdCounts {
    /// Adds `o`'s counters (saturating), for the account-wide total.
    pub fn add(&mut self, o: &IdCounts) {
        let pairs = [
            (&mut self.clients, o.clients),
            (&mut self.tunnels, o.tunnels),
            (&mut self.tunnels_accepted, o.tunnels_accepted),
            (&mut self.streams_active, o.streams_active),
            (&mut self.streams_opened, o.streams_opened),
            (&mut self.streams_failed, o.streams_failed),
            (&mut self.streams_denied, o.streams_denied),
            (&mut self.bytes_up, o.bytes_up),
            (&mut self.bytes_down, o.bytes_down),
        ];
        for (a, b) in pairs {
            *a = a.saturating_add(b);
        }
    }
}

/// Unix milliseconds as an RFC 3339 time; `None` when out of range.
pub fn rfc3339_text(ms: u64) -> Option<String> {
    jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .ok()
        .map(|t| t.to_string())
}

fn rfc3339<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    rfc3339_text(*ms).serialize(s)
}

/// [`rfc3339`] read back (another replica's view); a time that does not parse is 0.
fn from_rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    Ok(text
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .and_then(|t| u64::try_from(t.as_millisecond()).ok())
        .unwrap_or(0))
}
