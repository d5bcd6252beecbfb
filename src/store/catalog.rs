//! `catalog_cache`: Fluence's discovery lists as last fetched, one JSON body per list.

use chrono::{DateTime, Utc};
use sqlx::{Row, SqliteConnection};

use super::time::{from_db, to_db};

/// A cached list: its JSON body and when it was fetched.
#[derive(Debug, Clone)]
pub struct Cached {
    pub body: String,
    pub fetched_at: DateTime<Utc>,
}

pub async fn get(conn: &mut SqliteConnection, name: &str) -> Result<Option<Cached>, sqlx::Error> {
    let row = sqlx::query("SELECT body, fetched_at FROM catalog_cache WHERE name = ?1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| {
        let fetched_at: String = row.try_get("fetched_at")?;
        Ok(Cached {
            body: row.try_get("body")?,
            fetched_at: from_db(&fetched_at)?,
        })
    })
    .transpose()
}

/// Replaces a list's cached copy.
pub async fn put(
    conn: &mut SqliteConnection,
    name: &str,
    body: &str,
    fetched_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO catalog_cache (name, body, fetched_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET body = excluded.body, fetched_at = excluded.fetched_at",
    )
    .bind(name)
    .bind(body)
    .bind(to_db(fetched_at))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
