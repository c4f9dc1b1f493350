//! JSON control messages carried in HELLO, WELCOME, OPEN, CONFIG and LOG frames.
//!
//! Unknown fields are ignored on purpose: minor protocol versions add fields.

use serde::{Deserialize, Serialize};

/// First message of a tunnel, client to gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub version: String,
    pub proto: [u8; 2],
    pub hostname: String,
    pub env: String,
    /// Random per client process; groups the tunnels of one client.
    pub instance: String,
}

/// The gateway's answer to HELLO.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Welcome {
    pub client_id: String,
    pub gateway_id: String,
    pub proto: [u8; 2],
}

/// The JSON part of an OPEN frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenMeta {
    /// Destination id.
    pub dest: String,
    /// The caller's address as the gateway saw it (`ip:port`).
    pub caller: String,
}

/// One destination as the gateway sends it to clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DestinationSpec {
    pub id: String,
    pub protocol: String,
    pub ip: String,
    pub port: u16,
    /// Connect and idle timeout on the client's side, seconds.
    pub timeout: u32,
    /// Seed 000 `private`: only callers matching `ip_table_rules` may use the destination.
    #[serde(default)]
    pub private: bool,
    #[serde(default)]
    pub ip_table_rules: Vec<IpTableRuleSpec>,
}

/// Seed 000 ip table rule as the API writes it: `src` address or `a-b` range, `spt` port or
/// `a:b` range, `app` the rule's name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpTableRuleSpec {
    #[serde(default)]
    pub src: String,
    #[serde(default)]
    pub spt: String,
    #[serde(default)]
    pub app: String,
}

/// Gateway to client: the full destination list of the gateway (replaces the previous one).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigPush {
    pub destinations: Vec<DestinationSpec>,
}

/// Client to gateway: a warn/error log line for the clientLogs API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogPush {
    pub level: String,
    pub message: String,
    pub time: u64,
}
