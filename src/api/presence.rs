//! One view of a gateway id across replicas: each replica publishes what it sees (connected
//! clients, clients gone, client log lines, counters) of the gateway ids the store holds, and
//! reads the others', every [`HEARTBEAT`]; the API's clients, clientLogs,
//! disconnectedClients and stats calls answer with this replica's live view merged with the
//! others' from that read, so no API call waits on the store. A replica that stops publishing
//! (killed, cut off) drops out of the view after [`FRESH`]; so do all the others while this
//! replica can't read the store. Gateway ids from gateway.toml are this replica's own and are
//! neither published nor merged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
/// Most clients one merged answer lists.
const MAX_CLIENTS: usize = 10_000;

/// Views by gateway id.
type Views = HashMap<String, Vec<View>>;

/// The other replicas' views, as last read: when, and by gateway id.
#[derive(Default)]
pub(super) struct Others(std::sync::Mutex<Option<(Instant, Views)>>);

impl Others {
    fn set(&self, views: Views) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), views));
    }

    fn for_id(&self, id: &str) -> Vec<View> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_mut() {
            Some((at, views)) if at.elapsed() < FRESH => views.get(id).cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

/// What one replica sees of one gateway id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct View {
    pub clients: Vec<ClientView>,
    pub disconnected: Vec<GoneClient>,
    pub logs: Vec<ClientLogLine>,
    /// `None`: the replica does not serve the id.
    pub stats: Option<IdCounts>,
}

/// Publishes this replica's view of the gateway ids the store holds, and reads the other
/// replicas', until `shutdown` (a store nothing else reads: returns at once).
pub async fn publish_presence<B: Backend>(api: Arc<Api<B>>, shutdown: CancellationToken) {
    if !api.store.shared() {
        return;
    }
    loop {
        let ids = api.managed_ids().await;
        let mut reachable = true;
        for id in &ids {
            let Ok(body) = serde_json::to_value(api.local_view(id)) else {
                continue;
            };
            if let Err(e) = api.store.publish(id, &body).await {
                // The store being down is reported by the follower; this only waits for it.
                debug!(gateway.id = %id, error = %e, "presence not published");
                reachable = false;
                break;
            }
        }
        if reachable {
            match api.store.presence(FRESH).await {
                Ok(rows) => {
                    let mine: HashSet<&String> = ids.iter().collect();
                    let mut views = Views::new();
                    for (id, body) in rows {
                        if !mine.contains(&id) {
                            continue;
                        }
                        if let Ok(mut v) = serde_json::from_value::<View>(body) {
                            v.clients.truncate(MAX_CLIENTS);
                            v.disconnected.truncate(MAX_LINES);
                            v.logs.truncate(MAX_LINES);
                            views.entry(id).or_default().push(v);
                        }
                    }
                    api.others.set(views);
                }
                Err(e) => debug!(error = %e, "other replicas' views not read"),
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

    /// This replica's live view of `id` merged with the other replicas' last read ones.
    pub(super) fn view(&self, id: &str) -> View {
        let mut all = self.local_view(id);
        for v in self.others.for_id(id) {
            merge(&mut all, v);
        }
        all
    }
}

/// Adds one replica's view: a client connected to several replicas is one client with the
/// sum of its tunnels and streams; lines and gone clients are joined in time order without
/// repeats; counters add up, but clients are counted once.
fn merge(all: &mut View, v: View) {
    let mut at: HashMap<String, usize> = all
        .clients
        .iter()
        .enumerate()
        .map(|(i, c)| (c.client_id.clone(), i))
        .collect();
    for c in v.clients {
        match at.get(&c.client_id) {
            Some(&i) => {
                let x = &mut all.clients[i];
                x.tunnels = x.tunnels.saturating_add(c.tunnels);
                x.active_streams = x.active_streams.saturating_add(c.active_streams);
                x.streams_opened = x.streams_opened.saturating_add(c.streams_opened);
            }
            None if all.clients.len() < MAX_CLIENTS => {
                at.insert(c.client_id.clone(), all.clients.len());
                all.clients.push(c);
            }
            None => {}
        }
    }
    let mut gone: HashSet<(String, u64)> = all
        .disconnected
        .iter()
        .map(|g| (g.client_id.clone(), g.disconnected_at_ms))
        .collect();
    for g in v.disconnected {
        if gone.insert((g.client_id.clone(), g.disconnected_at_ms)) {
            all.disconnected.push(g);
        }
    }
    all.disconnected.sort_by_key(|g| g.disconnected_at_ms);
    let over = all.disconnected.len().saturating_sub(MAX_LINES);
    all.disconnected.drain(..over);
    let key = |l: &ClientLogLine| {
        (
            l.client_id.clone(),
            l.time_ms,
            l.level.clone(),
            l.message.clone(),
        )
    };
    let mut lines: HashSet<(String, u64, String, String)> = all.logs.iter().map(key).collect();
    for l in v.logs {
        if lines.insert(key(&l)) {
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
