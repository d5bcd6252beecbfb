//! `Idempotency-Key` records: one per (scope, key), first in flight, then holding the answer.

use chrono::{DateTime, Utc};
use sqlx::{Row, SqliteConnection};

use super::time::{from_db, to_db};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    InFlight {
        request_hash: String,
        locked_until: DateTime<Utc>,
    },
    Done {
        request_hash: String,
        status: u16,
        content_type: Option<String>,
        /// `None` when the answer carried a one-time secret and was not kept.
        body: Option<Vec<u8>>,
    },
}

/// The live record for `(scope, key)`; an expired one counts as absent.
pub async fn get(
    conn: &mut SqliteConnection,
    scope: &str,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Option<Record>, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT request_hash, state, status, content_type, body, locked_until FROM idempotency_keys \
         WHERE scope = ?1 AND key = ?2 AND expires_at > ?3",
    )
    .bind(scope)
    .bind(key)
    .bind(to_db(now))
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    let request_hash: String = row.try_get("request_hash")?;
    let state: String = row.try_get("state")?;
    if state == "in_flight" {
        let locked_until: String = row.try_get("locked_until")?;
        return Ok(Some(Record::InFlight {
            request_hash,
            locked_until: from_db(&locked_until)?,
        }));
    }
    let status: i64 = row.try_get("status")?;
    Ok(Some(Record::Done {
        request_hash,
        status: u16::try_from(status).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        content_type: row.try_get("content_type")?,
        body: row.try_get("body")?,
    }))
}

/// Claims `(scope, key)` for a request now starting, replacing an expired or abandoned record.
pub async fn begin(
    conn: &mut SqliteConnection,
    scope: &str,
    key: &str,
    request_hash: &str,
    now: DateTime<Utc>,
    locked_until: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, state, created_at, locked_until, expires_at) \
         VALUES (?1, ?2, ?3, 'in_flight', ?4, ?5, ?6) \
         ON CONFLICT (scope, key) DO UPDATE SET request_hash = excluded.request_hash, state = 'in_flight', \
         status = NULL, content_type = NULL, body = NULL, created_at = excluded.created_at, \
         locked_until = excluded.locked_until, expires_at = excluded.expires_at",
    )
    .bind(scope)
    .bind(key)
    .bind(request_hash)
    .bind(to_db(now))
    .bind(to_db(locked_until))
    .bind(to_db(expires_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores the answer of the request holding `(scope, key)`.
pub async fn finish(
    conn: &mut SqliteConnection,
    scope: &str,
    key: &str,
    status: u16,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'done', status = ?3, content_type = ?4, body = ?5 \
         WHERE scope = ?1 AND key = ?2",
    )
    .bind(scope)
    .bind(key)
    .bind(i64::from(status))
    .bind(content_type)
    .bind(body)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets `(scope, key)`: the request failed in a way a retry may fix (a 5xx, a 429).
pub async fn forget(
    conn: &mut SqliteConnection,
    scope: &str,
    key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE scope = ?1 AND key = ?2")
        .bind(scope)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes records past their retention; returns how many.
pub async fn purge_expired(
    conn: &mut SqliteConnection,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= ?1")
        .bind(to_db(now))
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Forgets every claim still in flight: at start-up, the requests that made them died with the
/// previous process. Returns how many.
pub async fn release_in_flight(conn: &mut SqliteConnection) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE state = 'in_flight'")
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}
