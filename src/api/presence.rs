//! One view of a gateway id across replicas: each replica publishes what it sees (connected
//! clients, clients gone, client log lines, counters) to the shared store every
//! [`HEARTBEAT`], and the API's clients, clientLogs, disconnectedClients and stats calls
//! answer with this replica's own view merged with the other replicas' fresh ones. A replica
//! that stops publishing (killed, cut off) drops out of the view after [`FRESH`].
//!
//! Without a shared store, or while it is unreachable, the calls answer with this replica's
//! own view.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::access::Api;
use super::backend::{Backend, ClientLogLine, ClientView, GoneClient, IdCounts};

/// How often a replica publishes its view.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How old another replica's view may be and still count.
pub const FRESH: Duration = Duration::from_secs(15);
/// Most log lines and gone clients one merged answer holds (as one replica keeps).
const MAX_LINES: usize = 1000;

/// What one replica sees of one gateway id.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct View {
    pub clients: Vec<ClientView>,
    pub disconnected: Vec<GoneClient>,
    pub logs: Vec<ClientLogLine>,
    /// `None`: the replica does not serve the id.
    pub stats: Option<IdCounts>,
}

/// Publishes this replica's view of every gateway id it serves until `shutdown` (a store
/// nothing else reads: returns at once).
pub async fn publish_presence<B: Backend>(api: Arc<Api<B>>, shutdown: CancellationToken) {
    if !api.store.shared() {
        return;
    }
    loop {
        for id in api.backend.gateway_ids() {
            let view = api.local_view(&id);
            let body = match serde_json::to_value(&view) {
                Ok(b) => b,
                Err(_) => continue,
            };
            if let Err(e) = api.store.publish(&id, &body).await {
                // The store being down is reported by the follower; this only waits for it.
                debug!(gateway.id = %id, error = %e, "presence not published");
                break;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
}

impl<B: Backend> Api<B> {
    fn local_view(&self, id: &str) -> View {
        View {
            clients: self.backend.clients(id),
            disconnected: self.backend.disconnected(id),
            logs: self.backend.client_logs(id),
            stats: self.backend.stats(id),
        }
    }

    /// This replica's view of `id` merged with the other replicas' fresh ones.
    pub(super) async fn view(&self, id: &str) -> View {
        let mut all = self.local_view(id);
        let others = match self.store.presence(id, FRESH).await {
            Ok(o) => o,
            Err(e) => {
                debug!(gateway.id = %id, error = %e, "other replicas' views unavailable; answering with this one's");
                Vec::new()
            }
        };
        for v in others {
            let Ok(v) = serde_json::from_value::<View>(v) else {
                continue;
            };
            merge(&mut all, v);
        }
        all
    }
}

/// Adds one replica's view: a client connected to several replicas is one client with the
/// sum of its tunnels and streams; lines and gone clients are joined in time order without
/// repeats; counters add up, but clients are counted once.
fn merge(all: &mut View, v: View) {
    for c in v.clients {
        match all.clients.iter_mut().find(|x| x.client_id == c.client_id) {
            Some(x) => {
                x.tunnels += c.tunnels;
                x.active_streams += c.active_streams;
                x.streams_opened += c.streams_opened;
            }
            None => all.clients.push(c),
        }
    }
    for g in v.disconnected {
        let seen = all
            .disconnected
            .iter()
            .any(|x| x.client_id == g.client_id && x.disconnected_at_ms == g.disconnected_at_ms);
        if !seen {
            all.disconnected.push(g);
        }
    }
    all.disconnected.sort_by_key(|g| g.disconnected_at_ms);
    let over = all.disconnected.len().saturating_sub(MAX_LINES);
    all.disconnected.drain(..over);
    for l in v.logs {
        if !all.logs.contains(&l) {
            all.logs.push(l);
        }
    }
    all.logs.sort_by_key(|l| l.time_ms);
    let over = all.logs.len().saturating_sub(MAX_LINES);
    all.logs.drain(..over);
    match (&mut all.stats, v.stats) {
        (Some(a), Some(b)) => a.add(&b),
        (None, Some(b)) => all.stats = Some(b),
        _ => {}
    }
    if let Some(s) = &mut all.stats {
        s.clients = all.clients.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, tunnels: usize) -> ClientView {
        ClientView {
            client_id: id.into(),
            version: "v".into(),
            hostname: "h".into(),
            env: "e".into(),
            tunnels,
            active_streams: 1,
            streams_opened: 2,
        }
    }

    #[test]
    fn one_client_on_two_replicas_is_one_client_with_both_tunnels() {
        let line = |t| ClientLogLine {
            client_id: "c".into(),
            level: "warn".into(),
            message: "m".into(),
            time_ms: t,
        };
        let counts = IdCounts {
            clients: 1,
            tunnels: 2,
            bytes_up: 10,
            ..IdCounts::default()
        };
        let mut a = View {
            clients: vec![client("c", 2)],
            logs: vec![line(2), line(1)],
            stats: Some(counts),
            ..View::default()
        };
        let b = View {
            clients: vec![client("c", 1), client("d", 1)],
            logs: vec![line(1), line(3)],
            stats: Some(counts),
            ..View::default()
        };
        // Through JSON, as it travels.
        let b: View = serde_json::from_value(serde_json::to_value(&b).unwrap()).unwrap();
        merge(&mut a, b);
        assert_eq!(a.clients.len(), 2);
        assert_eq!((a.clients[0].tunnels, a.clients[0].streams_opened), (3, 4));
        let times: Vec<u64> = a.logs.iter().map(|l| l.time_ms).collect();
        assert_eq!(times, [1, 2, 3]);
        let s = a.stats.unwrap();
        assert_eq!((s.clients, s.tunnels, s.bytes_up), (2, 4, 20));
    }
}
