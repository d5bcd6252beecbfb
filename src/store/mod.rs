//! All SQL lives here. SQLite through sqlx: WAL, `synchronous=FULL`, a busy timeout and foreign
//! keys, asserted at start-up; embedded migrations; every writing transaction begins with
//! `BEGIN IMMEDIATE` (see [`Store::begin_write`]).

pub mod audit;
pub mod budget;
pub mod catalog;
pub mod deployments;
pub mod idempotency;
pub mod keys;
pub mod meta;
pub mod prices;
pub mod script;
pub mod spend;
pub mod teams;
pub mod time;
pub mod vms;

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::config::DatabaseSettings;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database {what} is {found}, expected {expected}; refusing to run without it")]
    Pragma {
        what: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error("database directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Conflict(String),
    /// The database is busy, full or failing (a shared transaction's failure, told to each
    /// of its callers).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A shared transaction failed for a reason other than the database being unavailable.
    #[error("database: {0}")]
    Group(String),
}

/// Whether the error means the database is busy, full or failing (retry later) rather than a
/// bug.
pub fn unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            // Primary result codes: BUSY, LOCKED, IOERR, FULL, CANTOPEN.
            .is_some_and(|code| matches!(code & 0xff, 5 | 6 | 10 | 13 | 14)),
        _ => false,
    }
}

/// The gateway's database: a pool and the rules for writing to it.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// This process's writers take turns here before asking SQLite for its write lock. SQLite
    /// answers a second writer with "busy" and its busy handler sleeps (1, 2, 5, 10 ms and
    /// more) before asking again, so writers contending inside SQLite waited milliseconds
    /// for a lock held a fraction of one; queued here, the next writer starts the moment the
    /// last one commits. Other processes on the same file still meet the busy timeout.
    writers: Arc<Mutex<()>>,
    /// How long a writer waits for its turn: the database's busy timeout, as SQLite's would.
    turn_timeout: Duration,
    /// Scripts waiting to be committed together (`script`).
    scripts: Arc<script::Queue>,
}

/// A write transaction begun with `BEGIN IMMEDIATE`, holding this process's turn to write
/// until it commits, rolls back or is dropped (which rolls it back). It derefs to the
/// connection, so store functions take `&mut tx` as they take any connection.
pub struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    _turn: OwnedMutexGuard<()>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

impl Store {
    /// Opens (creating if needed) the database, runs the migrations and checks the pragmas the
    /// gateway's guarantees rest on.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str(&settings.url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Money is at stake and the write rate is low: FULL costs little and keeps the last
            // acknowledged commits across a power loss, which NORMAL does not.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_millis(settings.busy_timeout_ms))
            .foreign_keys(true)
            // Bounds the WAL file after checkpoints so it cannot grow without limit.
            .pragma("journal_size_limit", "67108864");
        create_parent_directory(options.get_filename())?;
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            // sqlx pings an idle connection before lending it out by default. A SQLite
            // connection is a file handle in this process, not a socket that can go stale, and
            // each ping is a round trip to the connection's worker thread: on a busy gateway
            // that was one extra thread hand-off for every request's key lookup.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        let store = Store {
            pool,
            writers: Arc::new(Mutex::new(())),
            turn_timeout: Duration::from_millis(settings.busy_timeout_ms),
            scripts: Arc::default(),
        };
        store.migrate().await?;
        store.check_pragmas().await?;
        Ok(store)
    }

    /// Runs the embedded migrations. sqlx takes no lock for SQLite, so two processes opening a
    /// new file together (two replicas, or `admin create-key` beside a starting gateway) can
    /// race: the loser's migration fails and rolls back. It then retries and finds the
    /// migrations applied by the winner.
    async fn migrate(&self) -> Result<(), StoreError> {
        const ATTEMPTS: u64 = 10;
        let mut attempt = 1;
        loop {
            match MIGRATOR.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt < ATTEMPTS => {
                    tracing::debug!(%error, attempt, "migration raced another process; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                    attempt += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Transactions that committed scripts, and the scripts they carried (`GET /metrics`).
    pub fn script_counts(&self) -> (u64, u64) {
        self.scripts.counts()
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction that takes SQLite's write lock up front. A deferred `BEGIN` that
    /// reads and then writes can fail with "database is locked" when another writer commits in
    /// between; `BEGIN IMMEDIATE` waits (up to `busy_timeout`) instead. The turn is taken
    /// before the connection, so writers waiting for it hold none of the pool's connections.
    pub async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let turn = self.turn().await?;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// This process's turn to write, waited for at most the busy timeout.
    async fn turn(&self) -> Result<OwnedMutexGuard<()>, StoreError> {
        tokio::time::timeout(self.turn_timeout, self.writers.clone().lock_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut.into())
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn check_pragmas(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Pragma {
                what: "journal_mode",
                found: journal,
                expected: "wal",
            });
        }
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await?;
        if synchronous != 2 {
            return Err(StoreError::Pragma {
                what: "synchronous",
                found: synchronous.to_string(),
                expected: "2 (FULL)",
            });
        }
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await?;
        if foreign_keys != 1 {
            return Err(StoreError::Pragma {
                what: "foreign_keys",
                found: foreign_keys.to_string(),
                expected: "1",
            });
        }
        let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await?;
        if busy_timeout <= 0 {
            return Err(StoreError::Pragma {
                what: "busy_timeout",
                found: busy_timeout.to_string(),
                expected: "> 0",
            });
        }
        Ok(())
    }
}

fn create_parent_directory(file: &Path) -> Result<(), StoreError> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && file != Path::new(":memory:") => {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                path: dir.display().to_string(),
                source,
            })
        }
        _ => Ok(()),
    }
}
