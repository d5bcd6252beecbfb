//! Several statements sent to SQLite in one call, and committed in groups.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands it every statement, `BEGIN`
//! and `COMMIT` in turn, a round trip between threads each; and every commit waits for an
//! `fsync` (`synchronous=FULL`) with the write lock held. The deployment pipeline's hot writes
//! (a submission, the intent to send, a deploy's result) are a few statements whose only
//! decision is a compare-and-set SQLite can make itself, so each goes as one script: a
//! compare-and-set whose outcome the caller needs ends with `RETURNING`, and a statement that
//! must run only if the one before it changed a row says so with `WHERE changes() = 1`.
//!
//! Scripts that wait for the write lock at the same time are committed together: whoever gets
//! the process's turn to write runs every waiting script, each inside a savepoint of its own,
//! in one `BEGIN IMMEDIATE` transaction with one commit. A script that fails is rolled back to
//! its savepoint alone and its caller gets the error; a transaction that fails fails every
//! script in it, and nothing of any is kept. A caller learns its outcome only once the commit
//! is durable, so what a caller does after (send a deploy, answer 202) is ordered after its
//! own write exactly as with a transaction of its own.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{OwnedMutexGuard, oneshot};

use super::time::now;
use super::{Store, StoreError};

/// Each script runs inside this savepoint, so that a failing one is undone alone.
const SAVEPOINT: &str = "script";

/// Statements to run in one call, each ended with `; `.
pub struct Script {
    sql: QueryBuilder<'static, Sqlite>,
}

impl Default for Script {
    fn default() -> Script {
        Script::new()
    }
}

impl Script {
    pub fn new() -> Script {
        Script {
            sql: QueryBuilder::new(format!("SAVEPOINT {SAVEPOINT}; ")),
        }
    }

    /// The text so far, for a store function to add its statement to.
    pub(crate) fn sql(&mut self) -> &mut QueryBuilder<'static, Sqlite> {
        &mut self.sql
    }

    /// Runs the statements in the caller's transaction; returns the rows they returned. On an
    /// error none of its statements is kept, and the transaction is the caller's to end.
    pub async fn run_in(self, conn: &mut SqliteConnection) -> Result<Vec<SqliteRow>, StoreError> {
        self.execute(conn)
            .await
            .map_err(|failed| failed.error.into())
    }

    async fn execute(mut self, conn: &mut SqliteConnection) -> Result<Vec<SqliteRow>, Failed> {
        self.sql.push(format_args!("RELEASE {SAVEPOINT}"));
        match self.sql.build().fetch_all(&mut *conn).await {
            Ok(rows) => Ok(rows),
            Err(error) => {
                // It stopped at the failing statement, inside its savepoint; SQLite may also
                // have rolled back the whole transaction (a full disk, an I/O error), and then
                // the savepoint is gone too.
                let contained =
                    sqlx::query(&format!("ROLLBACK TO {SAVEPOINT}; RELEASE {SAVEPOINT}"))
                        .execute(&mut *conn)
                        .await
                        .is_ok();
                Err(Failed { error, contained })
            }
        }
    }
}

/// A script that failed, and whether undoing it left the transaction around it usable.
struct Failed {
    error: sqlx::Error,
    contained: bool,
}

type Build = Box<dyn FnOnce(DateTime<Utc>) -> Script + Send>;

struct Pending {
    id: u64,
    build: Build,
    reply: oneshot::Sender<Result<Vec<SqliteRow>, StoreError>>,
}

/// Scripts waiting for the write lock, and what was committed.
#[derive(Default)]
pub struct Queue {
    waiting: Mutex<Vec<Pending>>,
    next_id: AtomicU64,
    /// Transactions committed by this queue, and the scripts they carried (`GET /metrics`).
    commits: AtomicU64,
    scripts: AtomicU64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (commits, scripts) = self.counts();
        f.debug_struct("Queue")
            .field("commits", &commits)
            .field("scripts", &scripts)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Transactions committed so far, and the scripts they carried.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.scripts.load(Ordering::Relaxed),
        )
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the script out if it is still waiting; false if a group has taken it.
    fn withdraw(&self, id: u64) -> bool {
        let mut waiting = self.waiting();
        let before = waiting.len();
        waiting.retain(|p| p.id != id);
        waiting.len() < before
    }
}

/// Withdraws a caller's script if the caller is dropped before a group takes it, so that a
/// request that was given up on is not written later by someone else's commit.
struct Withdraw<'a> {
    queue: &'a Queue,
    id: u64,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.queue.withdraw(self.id);
    }
}

impl Store {
    /// Commits the script, alone or with others waiting at the same time, and returns the rows
    /// its statements returned. On an error nothing of it is kept.
    pub async fn run(&self, script: Script) -> Result<Vec<SqliteRow>, StoreError> {
        self.run_at(move |_| script).await
    }

    /// [`Store::run`] for a script that needs the time its transaction took the write lock:
    /// `build` is called with it, with the lock held.
    pub async fn run_at<F>(&self, build: F) -> Result<Vec<SqliteRow>, StoreError>
    where
        F: FnOnce(DateTime<Utc>) -> Script + Send + 'static,
    {
        let queue = &*self.scripts;
        let id = queue.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, mut answer) = oneshot::channel();
        queue.waiting().push(Pending {
            id,
            build: Box::new(build),
            reply,
        });
        let _withdraw = Withdraw { queue, id };
        loop {
            tokio::select! {
                biased;
                answered = &mut answer => {
                    // A group that took the script answers it, unless its task stopped (a
                    // runtime shutting down, a panic): then nothing of the group was committed.
                    return answered.unwrap_or_else(|_| {
                        Err(StoreError::Group("the commit carrying it stopped".into()))
                    });
                }
                turn = self.turn() => {
                    let turn = match turn {
                        Ok(turn) => turn,
                        // Waited the busy timeout for the turn: give up, unless a group has
                        // taken the script meanwhile (then its answer is on the way).
                        Err(error) if queue.withdraw(id) => return Err(error),
                        Err(_) => continue,
                    };
                    let group = std::mem::take(&mut *queue.waiting());
                    if group.is_empty() {
                        continue;
                    }
                    // In a task of its own, so that it runs to its end and answers everyone
                    // whatever happens to this caller.
                    tokio::spawn(commit(self.pool.clone(), turn, self.scripts.clone(), group));
                }
            }
        }
    }
}

/// Runs a group of scripts in one transaction and answers each caller.
async fn commit(
    pool: SqlitePool,
    turn: OwnedMutexGuard<()>,
    queue: std::sync::Arc<Queue>,
    group: Vec<Pending>,
) {
    let conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(error) => return fail_all(group.into_iter().map(|p| p.reply), &error),
    };
    let mut conn = GroupConnection { conn, ended: false };
    let carried = u64::try_from(group.len()).unwrap_or(u64::MAX);
    if run_group(&mut conn.conn, group).await {
        conn.ended = true;
        queue.commits.fetch_add(1, Ordering::Relaxed);
        queue.scripts.fetch_add(carried, Ordering::Relaxed);
    }
    drop(conn);
    drop(turn);
}

/// A group's connection: closed rather than returned to the pool unless its transaction
/// committed. Closing rolls back whatever it had begun, where a transaction left open by a
/// failure or a panic would hold the write lock for whoever borrows the connection next.
struct GroupConnection {
    conn: PoolConnection<Sqlite>,
    ended: bool,
}

impl Drop for GroupConnection {
    fn drop(&mut self) {
        if !self.ended {
            self.conn.close_on_drop();
        }
    }
}

/// Whether the transaction committed; either way every caller has been answered.
async fn run_group(conn: &mut PoolConnection<Sqlite>, group: Vec<Pending>) -> bool {
    if let Err(error) = sqlx::query("BEGIN IMMEDIATE").execute(&mut **conn).await {
        fail_all(group.into_iter().map(|p| p.reply), &error);
        return false;
    }
    let at = now();
    let mut outcomes = Vec::with_capacity(group.len());
    let mut broken = None;
    for pending in group {
        if broken.is_some() {
            outcomes.push((pending.reply, None));
            continue;
        }
        // A script that cannot even be built (a bug) fails alone, before any statement ran.
        let build = pending.build;
        let script = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build(at))) {
            Ok(script) => script,
            Err(_) => {
                let error = StoreError::Group("the script could not be built".into());
                let _ = pending.reply.send(Err(error));
                continue;
            }
        };
        match script.execute(conn).await {
            Ok(rows) => outcomes.push((pending.reply, Some(Ok(rows)))),
            Err(failed) if failed.contained => {
                outcomes.push((pending.reply, Some(Err(failed.error))));
            }
            Err(failed) => {
                broken = Some(failed.error);
                outcomes.push((pending.reply, None));
            }
        }
    }
    let committed = match broken {
        Some(error) => Err(error),
        None => sqlx::query("COMMIT").execute(&mut **conn).await.map(|_| ()),
    };
    match committed {
        Ok(()) => {
            for (reply, outcome) in outcomes {
                if let Some(outcome) = outcome {
                    let _ = reply.send(outcome.map_err(StoreError::from));
                }
            }
            true
        }
        Err(error) => {
            fail_all(outcomes.into_iter().map(|(reply, _)| reply), &error);
            false
        }
    }
}

/// Answers every caller of a group whose transaction failed: nothing of theirs was kept.
fn fail_all(
    replies: impl Iterator<Item = oneshot::Sender<Result<Vec<SqliteRow>, StoreError>>>,
    error: &sqlx::Error,
) {
    let message = error.to_string();
    let unavailable = super::unavailable(error);
    for reply in replies {
        let error = if unavailable {
            StoreError::Unavailable(message.clone())
        } else {
            StoreError::Group(message.clone())
        };
        let _ = reply.send(Err(error));
    }
}
