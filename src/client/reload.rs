//! SIGHUP for the client: re-read the config file and the ACL it names, apply both or neither.

use std::path::Path;

use crate::acl::Acl;
use crate::config::ClientConfig;
use crate::telemetry::LogControl;

use super::ClientHandle;

/// SIGHUP: validates the config file and the ACL it names; applies both only if both are
/// valid (log level and rules apply live; other changed settings are named as needing a
/// restart). On any error every message is logged and nothing changes.
pub fn reload_from_files(
    config: &Path,
    acl_override: Option<&Path>,
    running: &ClientConfig,
    handle: &ClientHandle,
    log: &LogControl,
) {
    let new = match ClientConfig::load(config) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                tracing::error!(error = %e, "config reload failed, keeping the running configuration");
            }
            return;
        }
    };
    // `acl_file` and `default_policy` change only on restart (as logged below): the rules are
    // re-read from the running file under the running policy, so the next reload can't flip
    // between the two.
    let acl_path = acl_override.map_or_else(|| running.acl_file.clone(), Path::to_path_buf);
    let acl = match Acl::load(&acl_path, running.default_policy) {
        Ok(a) => a,
        Err(errs) => {
            for e in errs.messages() {
                tracing::error!(error = %e, "ACL reload failed, keeping the running configuration and rules");
            }
            return;
        }
    };
    if let Err(e) = log.apply(&new.log) {
        tracing::error!(error = %e, "cannot apply log_level");
    }
    let mut restart = Vec::new();
    if new.gateways != running.gateways {
        restart.push("gateway");
    }
    if new.acl_file != running.acl_file || new.default_policy != running.default_policy {
        restart.push("acl_file/default_policy");
    }
    if new.admin_listen != running.admin_listen || new.admin_token != running.admin_token {
        restart.push("admin_listen/admin_token");
    }
    if new.admin_socket != running.admin_socket {
        restart.push("admin_socket");
    }
    if new.workers != running.workers {
        restart.push("workers");
    }
    if (new.log.format, new.log.buffer_lines) != (running.log.format, running.log.buffer_lines) {
        restart.push("log_format/log_buffer_lines");
    }
    if (new.limits, new.keepalive, new.reconnect, new.shutdown_grace)
        != (
            running.limits,
            running.keepalive,
            running.reconnect,
            running.shutdown_grace,
        )
    {
        restart.push("limits/keepalive/reconnect/shutdown_grace");
    }
    if !restart.is_empty() {
        tracing::warn!(settings = ?restart, "these changed settings take effect after a restart");
    }
    tracing::info!(rules = acl.rules.len(), "configuration reloaded");
    // Re-read under the ACL's write lock: an edit made since the check above is kept.
    if acl_override.is_none() && handle.reload_acl().is_ok() {
        return;
    }
    handle.set_acl(acl);
}
