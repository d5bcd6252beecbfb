//! API keys: stored as a digest of their secret, found by their visible prefix.

use chrono::{DateTime, Utc};
use sqlx::{Row, SqliteConnection};

use secrecy::SecretString;

use super::time::{from_db, from_db_opt, new_id, to_db};
use crate::auth::{self, Role};

#[derive(Clone, PartialEq)]
pub struct KeyRecord {
    pub id: String,
    pub prefix: String,
    /// SHA-256 of the secret part; the secret itself is never stored.
    pub secret_sha256: Vec<u8>,
    pub name: String,
    pub role: Role,
    pub team_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeyRecord {
    /// A new key: its record (with only the digest of the secret) and the whole key, which the
    /// caller shows once and drops.
    pub fn mint(
        name: String,
        role: Role,
        team_id: Option<String>,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(KeyRecord, SecretString), getrandom::Error> {
        let minted = auth::mint()?;
        let record = KeyRecord {
            id: new_id("key"),
            prefix: minted.prefix,
            secret_sha256: minted.secret_sha256,
            name,
            role,
            team_id,
            created_at: now,
            expires_at,
            revoked_at: None,
        };
        Ok((record, minted.token))
    }

    /// What the audit trail and logs may say of a key: never its secret or digest.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "name": self.name, "role": self.role, "team": self.team_id,
            "prefix": self.prefix, "expires_at": self.expires_at, "revoked_at": self.revoked_at,
        })
    }
}

impl std::fmt::Debug for KeyRecord {
    /// The digest is left out: it is not the secret, but it has no business in a log either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("prefix", &self.prefix)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("team_id", &self.team_id)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str =
    "id, prefix, secret_sha256, name, role, team_id, created_at, expires_at, revoked_at";

fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<KeyRecord, sqlx::Error> {
    let created_at: String = row.try_get("created_at")?;
    let role: String = row.try_get("role")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        prefix: row.try_get("prefix")?,
        secret_sha256: row.try_get("secret_sha256")?,
        name: row.try_get("name")?,
        role: Role::parse(&role)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown role {role:?}").into()))?,
        team_id: row.try_get("team_id")?,
        created_at: from_db(&created_at)?,
        expires_at: from_db_opt(row.try_get("expires_at")?)?,
        revoked_at: from_db_opt(row.try_get("revoked_at")?)?,
    })
}

pub async fn insert(conn: &mut SqliteConnection, key: &KeyRecord) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_keys (id, prefix, secret_sha256, name, role, team_id, created_at, \
         expires_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(&key.id)
    .bind(&key.prefix)
    .bind(&key.secret_sha256)
    .bind(&key.name)
    .bind(key.role.as_str())
    .bind(&key.team_id)
    .bind(to_db(key.created_at))
    .bind(key.expires_at.map(to_db))
    .bind(key.revoked_at.map(to_db))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn by_prefix(
    conn: &mut SqliteConnection,
    prefix: &str,
) -> Result<Option<KeyRecord>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE prefix = ?1");
    sqlx::query(&sql)
        .bind(prefix)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// A key by id, within a team, or among admin keys when `team_id` is `None`.
pub async fn get(
    conn: &mut SqliteConnection,
    team_id: Option<&str>,
    key_id: &str,
) -> Result<Option<KeyRecord>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE team_id IS ?1 AND id = ?2");
    sqlx::query(&sql)
        .bind(team_id)
        .bind(key_id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// A team's keys (or the admin keys, for `None`) in id (creation) order, revoked ones included.
pub async fn list(
    conn: &mut SqliteConnection,
    team_id: Option<&str>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<KeyRecord>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM api_keys WHERE team_id IS ?1 AND id > ?2 ORDER BY id LIMIT ?3"
    );
    sqlx::query(&sql)
        .bind(team_id)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

pub async fn revoke(
    conn: &mut SqliteConnection,
    key_id: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
        .bind(key_id)
        .bind(to_db(at))
        .execute(conn)
        .await?;
    Ok(())
}
