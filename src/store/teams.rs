//! Teams: budget cap, period, alert thresholds and quotas.

use chrono::{DateTime, Utc};
use sqlx::{Row, SqliteConnection};

use super::keys::KeyRecord;
use super::time::{from_db, to_db};
use crate::domain::money::Usdc;
use crate::domain::quota::Quotas;
use crate::domain::team::TeamId;

#[derive(Debug, Clone, PartialEq)]
pub struct Team {
    pub id: TeamId,
    pub name: String,
    pub cap: Usdc,
    pub period_start_day: u8,
    pub alert_thresholds: Vec<u8>,
    pub quotas: Quotas,
    /// Delete VMs the provider terminated, so Fluence releases their reserved balance.
    pub finalize_terminated: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, budget_cap_micros, period_start_day, alert_thresholds, quotas, finalize_terminated, created_at, updated_at";

fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<Team, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let thresholds: String = row.try_get("alert_thresholds")?;
    let quotas: String = row.try_get("quotas")?;
    let created_at: String = row.try_get("created_at")?;
    let updated_at: String = row.try_get("updated_at")?;
    let start_day: i64 = row.try_get("period_start_day")?;
    Ok(Team {
        id: TeamId::parse(&id).map_err(|e| sqlx::Error::Decode(e.into()))?,
        name: row.try_get("name")?,
        cap: Usdc::from_micros(row.try_get("budget_cap_micros")?),
        period_start_day: u8::try_from(start_day).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        alert_thresholds: serde_json::from_str(&thresholds)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        quotas: serde_json::from_str(&quotas).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        finalize_terminated: row.try_get::<i64, _>("finalize_terminated")? != 0,
        created_at: from_db(&created_at)?,
        updated_at: from_db(&updated_at)?,
    })
}

fn encode_json<T: serde::Serialize>(value: &T) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Whether a team with this id exists or ever existed (ids are never reused).
pub async fn id_taken(conn: &mut SqliteConnection, id: &TeamId) -> Result<bool, sqlx::Error> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM teams WHERE id = ?1")
        .bind(id.as_str())
        .fetch_optional(conn)
        .await?;
    Ok(found.is_some())
}

pub async fn insert(conn: &mut SqliteConnection, team: &Team) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO teams (id, name, budget_cap_micros, period_start_day, alert_thresholds, \
         quotas, created_at, updated_at, finalize_terminated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(team.id.as_str())
    .bind(&team.name)
    .bind(team.cap.micros())
    .bind(i64::from(team.period_start_day))
    .bind(encode_json(&team.alert_thresholds)?)
    .bind(encode_json(&team.quotas)?)
    .bind(to_db(team.created_at))
    .bind(to_db(team.updated_at))
    .bind(i64::from(team.finalize_terminated))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn update(conn: &mut SqliteConnection, team: &Team) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE teams SET name = ?2, budget_cap_micros = ?3, period_start_day = ?4, \
         alert_thresholds = ?5, quotas = ?6, updated_at = ?7, finalize_terminated = ?8 \
         WHERE id = ?1 AND deleted_at IS NULL",
    )
    .bind(team.id.as_str())
    .bind(&team.name)
    .bind(team.cap.micros())
    .bind(i64::from(team.period_start_day))
    .bind(encode_json(&team.alert_thresholds)?)
    .bind(encode_json(&team.quotas)?)
    .bind(to_db(team.updated_at))
    .bind(i64::from(team.finalize_terminated))
    .execute(conn)
    .await?;
    Ok(())
}

/// A live (not deleted) team.
pub async fn get(conn: &mut SqliteConnection, id: &str) -> Result<Option<Team>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM teams WHERE id = ?1 AND deleted_at IS NULL");
    sqlx::query(&sql)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// Live teams in id order, after `after` (a cursor), at most `limit`.
pub async fn list(
    conn: &mut SqliteConnection,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Team>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM teams WHERE deleted_at IS NULL AND id > ?1 ORDER BY id LIMIT ?2"
    );
    sqlx::query(&sql)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// What keeps a team from being deleted: its live VMs and its deployments in flight (not yet
/// final, or holding money not yet settled).
pub async fn live_work(
    conn: &mut SqliteConnection,
    id: &TeamId,
) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM vms WHERE team_id = ?1 AND deleted_at IS NULL) AS vms, \
                (SELECT count(*) FROM holds WHERE team_id = ?1 AND released_at IS NULL) \
                + (SELECT count(*) FROM deployments WHERE team_id = ?1 AND status IN \
                   ('queued', 'estimating', 'waiting_for_price', 'admitted', 'deploying', 'unknown') \
                   AND id NOT IN (SELECT id FROM holds WHERE released_at IS NULL)) AS holds",
    )
    .bind(id.as_str())
    .fetch_one(conn)
    .await?;
    Ok((row.try_get("vms")?, row.try_get("holds")?))
}

/// Marks the team deleted and revokes its keys in the same transaction; returns the keys that
/// were still active, as they were, for the audit trail.
pub async fn soft_delete(
    conn: &mut SqliteConnection,
    id: &TeamId,
    at: DateTime<Utc>,
) -> Result<Vec<KeyRecord>, sqlx::Error> {
    let active: Vec<KeyRecord> = super::keys::list(&mut *conn, Some(id.as_str()), None, u32::MAX)
        .await?
        .into_iter()
        .filter(|key| key.revoked_at.is_none())
        .collect();
    let at = to_db(at);
    sqlx::query("UPDATE teams SET deleted_at = ?2, updated_at = ?2 WHERE id = ?1")
        .bind(id.as_str())
        .bind(&at)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE api_keys SET revoked_at = ?2 WHERE team_id = ?1 AND revoked_at IS NULL")
        .bind(id.as_str())
        .bind(&at)
        .execute(&mut *conn)
        .await?;
    Ok(active)
}
