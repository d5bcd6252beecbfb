//! Several statements sent to SQLite in one call.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands it every statement, `BEGIN`
//! and `COMMIT` in turn: a round trip between threads each, and on a busy gateway those hand-offs
//! cost more than the statements. The deployment pipeline's hot writes are a few statements
//! whose only decision is a compare-and-set SQLite can make itself, so they go as one script.
//! A statement that must run only if the one before it changed a row says so with
//! `WHERE changes() = 1`; a compare-and-set that the caller must learn the outcome of ends with
//! `RETURNING`, and the script's answer is the rows its statements returned.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::{Store, StoreError};

/// Statements to run in one call, each ended with `; `.
pub struct Script {
    sql: QueryBuilder<'static, Sqlite>,
    /// Whether it begins its own transaction (`Script::transaction`) or runs in the caller's.
    whole: bool,
}

impl Script {
    /// A transaction of its own, run by [`Store::run`]: `BEGIN IMMEDIATE`, the statements,
    /// `COMMIT`, all in the one call.
    pub fn transaction() -> Script {
        Script {
            sql: QueryBuilder::new("BEGIN IMMEDIATE; "),
            whole: true,
        }
    }

    /// Statements for a transaction the caller has begun, run by [`Script::run_in`].
    pub fn statements() -> Script {
        Script {
            sql: QueryBuilder::new(""),
            whole: false,
        }
    }

    /// The text so far, for a store function to add its statement to.
    pub(crate) fn sql(&mut self) -> &mut QueryBuilder<'static, Sqlite> {
        &mut self.sql
    }

    /// Runs the statements in the caller's transaction; returns the rows they returned.
    pub async fn run_in(
        mut self,
        conn: &mut SqliteConnection,
    ) -> Result<Vec<SqliteRow>, StoreError> {
        debug_assert!(!self.whole, "a whole transaction is run by Store::run");
        if self.sql.sql().is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.sql.build().fetch_all(conn).await?)
    }
}

impl Store {
    /// Runs a [`Script::transaction`] and returns the rows its statements returned. It takes
    /// the process's turn to write, as [`Store::begin_write`] does. On an error nothing of it
    /// is kept.
    pub async fn run(&self, script: Script) -> Result<Vec<SqliteRow>, StoreError> {
        debug_assert!(
            script.whole,
            "statements without their BEGIN run by Script::run_in"
        );
        let turn = self.turn().await?;
        let mut conn = self.pool.acquire().await?;
        let mut sql = script.sql;
        sql.push("COMMIT");
        // In a task of its own, so that it runs to its end whatever happens to the caller: a
        // caller dropped between `BEGIN` and `COMMIT` (a client that hung up) would stop the
        // script there and return the connection to the pool inside a transaction.
        let task = tokio::spawn(async move {
            let rows = sql.build().fetch_all(&mut *conn).await;
            if rows.is_err() {
                // The script stopped at the failing statement, maybe inside its transaction:
                // closing the connection rolls that back, and the pool opens a fresh one.
                conn.close_on_drop();
            }
            drop(conn);
            drop(turn);
            rows
        });
        match task.await {
            Ok(rows) => Ok(rows?),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Only a runtime shutting down cancels the task; the process is ending.
            Err(_) => Err(sqlx::Error::PoolClosed.into()),
        }
    }
}
