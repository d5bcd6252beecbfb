//! The VM inventory as Fluence's list shows it, and the ledger of what each VM was charged.

use chrono::{DateTime, Utc};
use sqlx::{Row, SqliteConnection};

use super::time::to_db;
use crate::domain::money::Usdc;

/// One VM as a listing of Fluence's showed it.
#[derive(Debug, Clone)]
pub struct Sighting<'a> {
    pub status: &'a str,
    pub price_per_epoch: Usdc,
    pub total_spent: Usdc,
    pub reserved_balance: Usdc,
    pub next_billing_at: Option<DateTime<Utc>>,
}

/// Brings a known VM up to date with a sighting, and records any rise of its `totalSpent` as a
/// charge in the ledger. Returns false when the VM is not in the inventory.
pub async fn observe(
    conn: &mut SqliteConnection,
    id: &str,
    seen: &Sighting<'_>,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let Some(row) = sqlx::query("SELECT team_id, total_spent_micros FROM vms WHERE id = ?1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(false);
    };
    let team_id: Option<String> = row.try_get("team_id")?;
    let before: i64 = row.try_get("total_spent_micros")?;
    let now_spent = seen.total_spent.micros();
    // totalSpent only grows; a smaller figure (a provider correction) is kept, not charged back.
    if now_spent > before {
        sqlx::query(
            "INSERT INTO ledger (vm_id, team_id, amount_micros, at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(id)
        .bind(&team_id)
        .bind(now_spent - before)
        .bind(to_db(at))
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "UPDATE vms SET status = ?2, price_per_epoch_micros = ?3, total_spent_micros = MAX(total_spent_micros, ?4), \
         reserved_balance_micros = ?5, next_billing_at = ?6, seen_at = ?7 WHERE id = ?1",
    )
    .bind(id)
    .bind(seen.status)
    .bind(seen.price_per_epoch.micros())
    .bind(now_spent)
    .bind(seen.reserved_balance.micros())
    .bind(seen.next_billing_at.map(to_db))
    .bind(to_db(at))
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Live VMs whose TTL has passed, oldest first, with their team.
pub async fn expired(
    conn: &mut SqliteConnection,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<(String, Option<String>, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, team_id, fluence_id FROM vms WHERE deleted_at IS NULL AND expires_at IS NOT NULL \
         AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2",
    )
    .bind(to_db(now))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("id")?,
                row.try_get("team_id")?,
                row.try_get("fluence_id")?,
            ))
        })
        .collect()
}

/// Marks a VM deleted (status `Deleted`); false if it already was.
pub async fn mark_deleted(
    conn: &mut SqliteConnection,
    id: &str,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE vms SET status = 'Deleted', deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(to_db(at))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
