//! sgw: an on-premise tunnel client daemon and the gateway it connects to.
//!
//! Data flow of one connection: a caller connects to a destination's `cloud_port` on the
//! [`gateway`], which opens a stream over a [`mux`]ed [`tunnel`] to a [`client`]; the client
//! checks its [`acl`], [`dial`]s the on-prem endpoint and [`relay`]s bytes both ways.
#![forbid(unsafe_code)]

pub mod acl;
pub mod admin;
pub mod api;
pub mod client;
pub mod commands;
pub mod compress;
pub mod config;
pub mod daemon;
pub mod dial;
pub mod early;
pub mod enroll;
pub mod fsutil;
pub mod gateway;
pub mod http;
pub mod init;
pub mod listen;
pub mod mux;
pub mod proto;
pub mod relay;
pub mod socks5;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod tls;
pub mod tunnel;
pub mod udp;
