//! PostgreSQL as the store gateway replicas share (`state_store`, docs/HA.md).
//!
//! One table holds one row per API-managed gateway id: the same JSON document the state file
//! holds, and a revision. A change is one transaction that names the revision it started
//! from and bumps it, so a replica working from an old read gets a conflict instead of
//! overwriting. Each commit sends `NOTIFY sgw_state`; replicas `LISTEN` on a connection of
//! their own and re-read. Every call is bounded by [`CALL_TIMEOUT`]: a store that stops
//! answering makes changes fail with "unreachable" instead of holding the API.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Config};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::{debug, warn};

use super::{Change, StoreError};
use crate::config::state::{tenant_from_record, GatewayRecord, StateFile, STATE_VERSION};
use crate::config::PgStoreConfig;

/// The channel commits notify and replicas listen on.
const CHANNEL: &str = "sgw_state";
/// Longest wait for a connection, a query or a commit.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections one replica keeps for the API's reads and writes (changes are rare).
const POOL_SIZE: usize = 4;
/// Taken (as a transaction-level advisory lock) while the schema is checked and upgraded, so
/// replicas starting together don't race.
const MIGRATION_LOCK: i64 = 0x5367_7753_7461_7465;

/// The schema, one step per entry, applied in order at start; `sgw_schema` records how many
/// have been applied. Steps are never edited once released, only appended.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE sgw_gateways (
        id text PRIMARY KEY,
        revision bigint NOT NULL,
        doc jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )",
    // What each replica sees of each gateway id (clients, logs, counters), refreshed by a
    // heartbeat; rows older than a few heartbeats are a replica that is gone.
    "CREATE TABLE sgw_presence (
        replica text NOT NULL,
        gateway_id text NOT NULL,
        body jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (replica, gateway_id)
    );
    CREATE INDEX sgw_presence_updated ON sgw_presence (updated_at)",
];

/// Most gateway rows read (a store holding more is refused at start with this figure).
pub const MAX_GATEWAYS: i64 = 10_000;
/// Largest gateway document read; a larger row is skipped and logged, as one that does not
/// validate is.
const MAX_DOC_BYTES: i32 = 16 << 20;
/// Most presence rows read at once, and the largest one.
const MAX_PRESENCE_ROWS: i64 = 10_000;
const MAX_PRESENCE_BYTES: i32 = 4 << 20;
/// Presence rows of replicas silent this long are deleted (pod names change at every start).
const PRESENCE_KEPT: Duration = Duration::from_secs(3600);

/// The shared store: a small connection pool plus how to open the change feed.
pub struct PgStore {
    pool: Pool,
    config: Config,
    tls: MakeRustlsConnect,
    /// The URL (it has no password), for messages.
    url: String,
    replica: String,
}

/// Changes committed by any replica: [`Feed::changed`] returns when one may have happened.
pub struct Feed {
    rx: mpsc::Receiver<()>,
    /// The listening connection lives as long as its client.
    _client: tokio_postgres::Client,
}

impl Feed {
    /// Waits for a change; `false` when the connection is gone.
    pub async fn changed(&mut self) -> bool {
        self.rx.recv().await.is_some()
    }
}

impl PgStore {
    pub fn new(cfg: &PgStoreConfig, replica: &str) -> Result<Self, StoreError> {
        let url = cfg.url.clone();
        let bad = |why: String| StoreError::Failed(format!("state_store {url}: {why}"));
        let ssl_mode = crate::config::check_store_url(&url).map_err(bad)?;
        let mut config: Config = url
            .parse()
            .map_err(|_| bad("not a PostgreSQL URL".into()))?;
        if let Some(p) = &cfg.password {
            config.password(p.expose());
        }
        config.ssl_mode(ssl_mode);
        config
            .application_name(format!("sgw-gateway {replica}"))
            .connect_timeout(CALL_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
        crate::tls::install_crypto();
        let roots = match &cfg.ca {
            Some(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(certs.iter().cloned());
                std::sync::Arc::new(roots)
            }
            None => crate::tls::system_roots(),
        };
        let tls = MakeRustlsConnect::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CALL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Failed(format!("state_store {url}: {e}")))?;
        Ok(PgStore {
            pool,
            config,
            tls,
            url,
            replica: replica.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            url: self.url.clone(),
            why: why.to_string(),
        }
    }

    /// A driver error with its causes ("error performing TLS handshake: invalid peer
    /// certificate: UnknownIssuer"): the driver's own text stops at the first line.
    fn unreachable(&self, e: &tokio_postgres::Error) -> StoreError {
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            why.push_str(": ");
            why.push_str(&c.to_string());
            cause = c.source();
        }
        self.unavailable(why)
    }

    /// A failed query: the server's own refusal of the statement is a failure; a lost
    /// connection, a timeout, or the server going away or turning connections down
    /// (SQLSTATE classes 08 connection, 53 resources, 57 operator intervention such as a
    /// shutdown, 58 system) means the store is unreachable for now.
    fn query_error(&self, e: tokio_postgres::Error) -> StoreError {
        match e.as_db_error() {
            Some(db) if !matches!(db.code().code().get(..2), Some("08" | "53" | "57" | "58")) => {
                StoreError::Failed(format!(
                    "state_store {}: {} ({})",
                    self.url,
                    db.message(),
                    db.code().code()
                ))
            }
            _ => self.unreachable(&e),
        }
    }

    async fn bounded<T>(
        &self,
        what: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(CALL_TIMEOUT, what)
            .await
            .unwrap_or_else(|_| Err(self.unavailable(format!("no answer within {CALL_TIMEOUT:?}"))))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => self.query_error(e),
            other => self.unavailable(other),
        })
    }

    /// Creates or upgrades the schema (at start, and before `sgw state migrate` writes).
    pub async fn prepare(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.query_error(e))?;
            tx.batch_execute(&format!(
                "SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
                 CREATE TABLE IF NOT EXISTS sgw_schema (version integer NOT NULL)"
            ))
            .await
            .map_err(|e| self.query_error(e))?;
            let row = tx
                .query_one("SELECT coalesce(max(version), 0) FROM sgw_schema", &[])
                .await
                .map_err(|e| self.query_error(e))?;
            let have: i32 = row.try_get(0).map_err(|e| self.query_error(e))?;
            let known = MIGRATIONS.len();
            let have = usize::try_from(have).unwrap_or(0);
            if have > known {
                return Err(StoreError::Failed(format!(
                    "state_store {}: its schema is version {have}, newer than this build knows ({known}); upgrade sgw",
                    self.url
                )));
            }
            for (i, step) in MIGRATIONS.iter().enumerate().skip(have) {
                let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
                tx.batch_execute(step).await.map_err(|e| self.query_error(e))?;
                tx.execute("INSERT INTO sgw_schema (version) VALUES ($1)", &[&version])
                    .await
                    .map_err(|e| self.query_error(e))?;
                debug!(state_store = %self.url, version, "state store schema upgraded");
            }
            tx.commit().await.map_err(|e| self.query_error(e))
        })
        .await
    }

    /// Every gateway the store holds, with its revision, each validated as the state file's
    /// are. A row that does not validate (or is over [`MAX_DOC_BYTES`]) is logged and left out;
    /// its id is returned beside, so a replica keeps serving what it has for that id.
    pub async fn load(&self) -> Result<(StateFile, Vec<String>), StoreError> {
        let rows = self
            .bounded(async {
                let client = self.client().await?;
                client
                    .query(
                        "SELECT id, revision, CASE WHEN octet_length(doc::text) <= $1 THEN doc END
                         FROM sgw_gateways ORDER BY id LIMIT $2",
                        &[&MAX_DOC_BYTES, &(MAX_GATEWAYS + 1)],
                    )
                    .await
                    .map_err(|e| self.query_error(e))
            })
            .await?;
        if rows.len() as i64 > MAX_GATEWAYS {
            return Err(StoreError::Failed(format!(
                "state_store {}: more than {MAX_GATEWAYS} gateways",
                self.url
            )));
        }
        let mut gateways: Vec<GatewayRecord> = Vec::with_capacity(rows.len());
        let mut skipped = Vec::new();
        for row in rows {
            let Ok(id) = row.try_get::<_, String>(0) else {
                continue;
            };
            let read = (|| {
                let revision: i64 = row.try_get(1).map_err(|e| e.to_string())?;
                let doc: Option<serde_json::Value> = row.try_get(2).map_err(|e| e.to_string())?;
                let doc = doc.ok_or_else(|| format!("larger than {MAX_DOC_BYTES} bytes"))?;
                let mut rec: GatewayRecord = serde_json::from_value(doc)
                    .map_err(|e| format!("not a gateway document: {e}"))?;
                if rec.id != id {
                    return Err(format!("the row holds gateway `{}`", rec.id));
                }
                tenant_from_record(&rec).map_err(|e| e.to_string())?;
                rec.revision = revision;
                Ok(rec)
            })();
            match read {
                Ok(rec) => gateways.push(rec),
                Err(e) => {
                    warn!(state_store = %self.url, gateway.id = %id, error = %e, "gateway in the state store left out: it does not validate");
                    skipped.push(id);
                }
            }
        }
        Ok((
            StateFile {
                version: STATE_VERSION,
                gateways,
            },
            skipped,
        ))
    }

    /// Commits one change in one transaction; a record whose revision is no longer the
    /// store's is refused with [`StoreError::Conflict`], and nothing is written.
    pub async fn commit(&self, change: Change<'_>) -> Result<(), StoreError> {
        self.bounded(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.query_error(e))?;
            let doc = |r: &GatewayRecord| {
                serde_json::to_value(r)
                    .map_err(|e| StoreError::Failed(format!("cannot encode gateway `{}`: {e}", r.id)))
            };
            let stale = |id: &str| {
                StoreError::Conflict(format!(
                    "gateway `{id}` was changed or deleted through another replica since this one read it; nothing was changed: read it again and retry"
                ))
            };
            match change {
                Change::Put(r) => {
                    let n = tx
                        .execute(
                            "UPDATE sgw_gateways SET doc = $1, revision = revision + 1, updated_at = now()
                             WHERE id = $2 AND revision = $3",
                            &[&doc(r)?, &r.id, &r.revision],
                        )
                        .await
                        .map_err(|e| self.query_error(e))?;
                    if n != 1 {
                        return Err(stale(&r.id));
                    }
                }
                Change::Delete(r) => {
                    let n = tx
                        .execute(
                            "DELETE FROM sgw_gateways WHERE id = $1 AND revision = $2",
                            &[&r.id, &r.revision],
                        )
                        .await
                        .map_err(|e| self.query_error(e))?;
                    if n != 1 {
                        return Err(stale(&r.id));
                    }
                }
                Change::Insert(recs) => {
                    for r in recs {
                        let n = tx
                            .execute(
                                "INSERT INTO sgw_gateways (id, revision, doc) VALUES ($1, 1, $2)
                                 ON CONFLICT (id) DO NOTHING",
                                &[&r.id, &doc(r)?],
                            )
                            .await
                            .map_err(|e| self.query_error(e))?;
                        if n != 1 {
                            return Err(StoreError::Conflict(format!(
                                "gateway id `{}` already exists in the state store; nothing was changed",
                                r.id
                            )));
                        }
                    }
                }
            }
            // Delivered to every listener when (and only if) the transaction commits.
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.replica])
                .await
                .map_err(|e| self.query_error(e))?;
            tx.commit().await.map_err(|e| self.query_error(e))
        })
        .await
    }

    /// Records what this replica sees of `gateway_id` (its heartbeat).
    pub async fn publish(
        &self,
        gateway_id: &str,
        body: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.bounded(async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO sgw_presence (replica, gateway_id, body) VALUES ($1, $2, $3)
                     ON CONFLICT (replica, gateway_id) DO UPDATE SET body = $3, updated_at = now()",
                    &[&self.replica, &gateway_id, body],
                )
                .await
                .map(|_| ())
                .map_err(|e| self.query_error(e))
        })
        .await
    }

    /// What the other replicas published within `fresh`, as (gateway id, view) rows, within
    /// [`MAX_PRESENCE_ROWS`] rows of at most [`MAX_PRESENCE_BYTES`] each; rows of replicas
    /// silent for [`PRESENCE_KEPT`] are deleted on the way.
    pub async fn presence(
        &self,
        fresh: Duration,
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let secs = fresh.as_secs_f64();
        let kept = PRESENCE_KEPT.as_secs_f64();
        let rows = self
            .bounded(async {
                let client = self.client().await?;
                client
                    .execute(
                        "DELETE FROM sgw_presence WHERE updated_at < now() - make_interval(secs => $1)",
                        &[&kept],
                    )
                    .await
                    .map_err(|e| self.query_error(e))?;
                client
                    .query(
                        "SELECT gateway_id, body FROM sgw_presence
                         WHERE replica <> $1 AND updated_at > now() - make_interval(secs => $2)
                           AND octet_length(body::text) <= $3
                         ORDER BY updated_at DESC LIMIT $4",
                        &[&self.replica, &secs, &MAX_PRESENCE_BYTES, &MAX_PRESENCE_ROWS],
                    )
                    .await
                    .map_err(|e| self.query_error(e))
            })
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
            .collect())
    }

    /// Opens the change feed: a connection of its own that `LISTEN`s on [`CHANNEL`].
    pub async fn watch(&self) -> Result<Feed, StoreError> {
        self.bounded(async {
            let (client, mut conn) = self
                .config
                .connect(self.tls.clone())
                .await
                .map_err(|e| self.unreachable(&e))?;
            // Capacity one: a change pending is enough, since a re-read takes in all of them.
            let (tx, rx) = mpsc::channel(1);
            let url = self.url.clone();
            let me = self.replica.clone();
            tokio::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(m) = messages.next().await {
                    match m {
                        // This replica's own commits are applied already.
                        Ok(AsyncMessage::Notification(n)) if n.payload() == me => {}
                        Ok(AsyncMessage::Notification(_)) => {
                            let _ = tx.try_send(());
                        }
                        Ok(_) => {}
                        Err(e) => {
                            warn!(state_store = %url, error = %e, "state store change feed lost");
                            break;
                        }
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(|e| self.query_error(e))?;
            Ok(Feed {
                rx,
                _client: client,
            })
        })
        .await
    }
}
