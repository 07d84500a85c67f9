//! The PostgreSQL store: the same signed document as the file store, in the one row of table
//! `cliniko_gateway_keystore` (`id = 1`), with a `revision` that every write bumps and a
//! `NOTIFY cliniko_gateway_keystore` sent on commit.
//!
//! Why one row and not a row per user: the document's MAC then binds every user to their key
//! exactly as in the file (someone with write access to the database but not the master key
//! cannot point bob at alice's key), and an edit is one `SELECT … FOR UPDATE` + `UPDATE`, the
//! row lock being the store's lock. Writes are rare (enrolments, ops' `keys` commands); the
//! document of a few thousand users is well under a megabyte.
//!
//! Replicas follow changes with `LISTEN` on a connection of their own (a change is seen within
//! milliseconds) and, as the backstop for a lost notification or connection, poll the revision
//! every `keystore.watch_interval` ([`crate::reload`]). TLS to the database is not built in:
//! `sslmode=require` is refused, so reach it over loopback, a unix socket or a local TLS proxy.

use super::KeyStoreError;
use super::blocking;
use super::file::{self, Document};
use crate::config::Secret;
use secrecy::ExposeSecret;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{MappedMutexGuard, MutexGuard, Notify};
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// How long one database operation (connect included) may take before it fails: a database
/// that stops answering (no reset) must not hold a reload, the follower or an enrolment.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Set on every session so the server, too, ends what runs too long or sits in a transaction
/// (a client that died mid-edit must not keep the row locked).
const SESSION_OPTIONS: &str = "-c statement_timeout=5000 -c lock_timeout=5000 \
    -c idle_in_transaction_session_timeout=30000";

/// The table, and the channel its writes notify.
const TABLE: &str = "cliniko_gateway_keystore";

/// Created on first use by any replica (under an advisory lock, so two starting at once do
/// not race); `document` is empty until the first write.
const SCHEMA: &str = "BEGIN;
SELECT pg_advisory_xact_lock(hashtext('cliniko_gateway_keystore'));
CREATE TABLE IF NOT EXISTS cliniko_gateway_keystore (
    id smallint PRIMARY KEY CHECK (id = 1),
    revision bigint NOT NULL,
    document text NOT NULL
);
INSERT INTO cliniko_gateway_keystore (id, revision, document) VALUES (1, 0, '')
    ON CONFLICT (id) DO NOTHING;
COMMIT;";

/// A connection to the key-store database (reconnected when lost).
pub struct PgStore {
    config: tokio_postgres::Config,
    client: tokio::sync::Mutex<Option<Client>>,
    /// Set when an operation timed out: its connection may sit on an unanswered query, so
    /// whoever takes the lock next connects afresh (the timed-out one may not get the lock
    /// back before a waiter does).
    hung: std::sync::atomic::AtomicBool,
    place: PathBuf,
}

impl PgStore {
    /// Parses the URL, connects and creates the table if needed.
    pub async fn open(url: &Secret<str>) -> Result<PgStore, KeyStoreError> {
        // The parser's message can quote the URL (and its password): only the category.
        let mut config = tokio_postgres::Config::from_str(url.expose_secret()).map_err(|_| {
            db_error(
                "read the URL",
                "CLINIKO_GATEWAY_POSTGRES_URL (or the keystore.postgres_url_file) is not a \
                 PostgreSQL URL; write it as postgresql://user@host:port/db",
            )
        })?;
        if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
            return Err(db_error(
                "read the URL",
                "sslmode=require in CLINIKO_GATEWAY_POSTGRES_URL is not supported: TLS to the \
                 database is not built in; reach it over loopback, a unix socket or a local TLS \
                 proxy, and drop sslmode (docs/key-store.md)",
            ));
        }
        bound_sessions(&mut config);
        let store = PgStore {
            config,
            client: tokio::sync::Mutex::new(None),
            hung: std::sync::atomic::AtomicBool::new(false),
            place: PathBuf::from(format!("postgresql table {TABLE}")),
        };
        store
            .bounded("create the table", async {
                store
                    .client()
                    .await?
                    .batch_execute(SCHEMA)
                    .await
                    .map_err(failed("create the table"))
            })
            .await?;
        Ok(store)
    }

    /// Runs `op` within [`OP_TIMEOUT`]; on expiry the connection (which may sit on an
    /// unanswered query) is dropped so the next use connects afresh.
    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, KeyStoreError>>,
    ) -> Result<T, KeyStoreError> {
        match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => {
                self.hung.store(true, std::sync::atomic::Ordering::Release);
                Err(db_error(
                    op,
                    "the database did not answer within 5 s; check that it is up and reachable",
                ))
            }
        }
    }

    /// Names the store in messages.
    pub fn place(&self) -> &Path {
        &self.place
    }

    /// The connected client, connecting first when there is none or it was lost.
    async fn client(&self) -> Result<MappedMutexGuard<'_, Client>, KeyStoreError> {
        let mut guard = self.client.lock().await;
        let hung = self.hung.swap(false, std::sync::atomic::Ordering::AcqRel);
        if hung || guard.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = self
                .config
                .connect(NoTls)
                .await
                .map_err(failed("connect"))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "key-store database connection lost; reconnecting on next use");
                }
            });
            *guard = Some(client);
        }
        MutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| db_error("use the connection", "it is closed"))
    }

    /// The stored document (`None` before the first write) and its revision.
    pub(super) async fn read(&self) -> Result<(Option<Document>, i64), KeyStoreError> {
        self.bounded("read", async {
            let sql = format!("SELECT revision, document FROM {TABLE} WHERE id = 1");
            let row = self.client().await?.query_one(&sql, &[]).await;
            let row = row.map_err(failed("read"))?;
            let revision: i64 = column(&row, 0, "revision", "bigint")?;
            let text: String = column(&row, 1, "document", "text")?;
            Ok((self.parse(&text)?, revision))
        })
        .await
    }

    /// The revision now stored: what replicas poll.
    pub async fn revision(&self) -> Result<i64, KeyStoreError> {
        self.bounded("read the revision", async {
            let sql = format!("SELECT revision FROM {TABLE} WHERE id = 1");
            let row = self.client().await?.query_one(&sql, &[]).await;
            let row = row.map_err(failed("read the revision"))?;
            column(&row, 0, "revision", "bigint")
        })
        .await
    }

    /// Runs `f` (off the async threads) on the stored document with its row locked; the
    /// signed bytes it returns replace the document, bump the revision and notify replicas.
    pub(super) async fn edit<T, F>(&self, f: F) -> Result<T, KeyStoreError>
    where
        T: Send + 'static,
        F: FnOnce(Option<Document>) -> Result<(Option<Vec<u8>>, T), KeyStoreError> + Send + 'static,
    {
        self.bounded("edit", async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(failed("begin"))?;
            let sql = format!("SELECT document FROM {TABLE} WHERE id = 1 FOR UPDATE");
            let row = tx.query_one(&sql, &[]).await.map_err(failed("read"))?;
            let text: String = column(&row, 0, "document", "text")?;
            let doc = self.parse(&text)?;
            let (bytes, out) = blocking(move || f(doc)).await?;
            if let Some(bytes) = bytes {
                let text =
                    String::from_utf8(bytes).map_err(|_| KeyStoreError::Crypto("not UTF-8"))?;
                let sql = format!(
                    "UPDATE {TABLE} SET document = $1, revision = revision + 1 WHERE id = 1"
                );
                tx.execute(&sql, &[&text]).await.map_err(failed("write"))?;
                // Delivered on commit, to every replica listening.
                tx.batch_execute(&format!("NOTIFY {TABLE}"))
                    .await
                    .map_err(failed("notify"))?;
            }
            tx.commit().await.map_err(failed("commit"))?;
            Ok(out)
        })
        .await
    }

    /// Listens for other replicas' writes, waking `wake` on each (and once per (re)connection,
    /// since a change may have landed while not listening), until the task is dropped.
    /// Reconnects after a pause when the connection is lost.
    pub async fn listen(self: Arc<Self>, wake: Arc<Notify>) {
        loop {
            // Bounded: a database that accepts and never answers must not stall the listener.
            let connected = tokio::time::timeout(OP_TIMEOUT, self.config.connect(NoTls)).await;
            if let Ok(Ok((client, mut conn))) = connected {
                let driver = async {
                    while let Some(m) =
                        futures_util::future::poll_fn(|cx| conn.poll_message(cx)).await
                    {
                        match m {
                            Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                };
                tokio::pin!(driver);
                let sql = format!("LISTEN {TABLE}");
                let listening = tokio::select! {
                    r = client.batch_execute(&sql) => r.is_ok(),
                    () = &mut driver => false,
                    () = tokio::time::sleep(OP_TIMEOUT) => false,
                };
                if listening {
                    wake.notify_one();
                    (&mut driver).await;
                }
            }
            tracing::warn!(
                "key-store database: not listening for changes; retrying in 1 s (the revision poll still runs)"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn parse(&self, text: &str) -> Result<Option<Document>, KeyStoreError> {
        if text.is_empty() {
            return Ok(None);
        }
        file::parse(&self.place, text.as_bytes()).map(Some)
    }
}

/// Bounds each session on both ends: the connect, a dead peer (keepalives, unacknowledged
/// writes) and, server-side, statements, lock waits and idle transactions.
fn bound_sessions(config: &mut tokio_postgres::Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(OP_TIMEOUT);
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(30));
    let options = match config.get_options() {
        Some(own) => format!("{SESSION_OPTIONS} {own}"),
        None => SESSION_OPTIONS.to_string(),
    };
    config.options(options);
}

/// Column `i` of the store's row, or an error naming it when a pre-existing table declares it
/// with another type.
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
    name: &str,
    want: &str,
) -> Result<T, KeyStoreError> {
    row.try_get(i).map_err(|_| {
        db_error(
            "read",
            &format!(
                "column {TABLE}.{name} is not {want}: the table predates this gateway or was \
                 altered; rename or drop it so the gateway creates its own (docs/key-store.md)"
            ),
        )
    })
}

fn db_error(op: &'static str, problem: &str) -> KeyStoreError {
    KeyStoreError::Database {
        op,
        problem: problem.into(),
    }
}

/// The driver's message: server errors and I/O causes, never the URL or a bound value.
fn failed(op: &'static str) -> impl Fn(tokio_postgres::Error) -> KeyStoreError {
    move |e| {
        let problem = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        KeyStoreError::Database { op, problem }
    }
}
