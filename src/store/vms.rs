//! The VM inventory as Fluence's list shows it, the ledger of what each VM was charged, and the
//! events of each VM's life.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::time::{from_db, from_db_opt, to_db};
use crate::domain::money::Usdc;

/// One VM as a listing of Fluence's showed it.
#[derive(Debug, Clone)]
pub struct Sighting<'a> {
    pub status: &'a str,
    pub price_per_epoch: Usdc,
    pub total_spent: Usdc,
    pub reserved_balance: Usdc,
    pub next_billing_at: Option<DateTime<Utc>>,
    pub public_ip: Option<&'a str>,
    /// `{country, city, tier}`, or null once the provider terminated it.
    pub datacenter: Value,
    /// `[{port, protocol}]`.
    pub open_ports: Value,
    pub os_image: Option<&'a str>,
    /// Fluence's creation time: the date of the charge at deploy.
    pub created_at: Option<DateTime<Utc>>,
    /// `(vcpus, ram GiB, storage GiB)` as listed; `None` when the listing gave none.
    pub resources: Option<(i64, i64, i64)>,
}

/// What a sighting changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The VM is in the inventory.
    pub known: bool,
    /// The micro-USDC charged since the last sighting.
    pub charged: i64,
    pub status_changed: bool,
    /// It was seen `Terminated` for the first time.
    pub newly_terminated: bool,
}

/// Brings a known VM up to date with a sighting: a rise of its `totalSpent` is a charge in the
/// ledger, a status change an event. A charge is dated by Fluence's calendar, not by the moment
/// the gateway happened to look: at the billing instant that was due at the last sighting, or,
/// for the first charge, at the VM's creation (the charge at deploy).
pub async fn observe(
    conn: &mut SqliteConnection,
    id: &str,
    seen: &Sighting<'_>,
    at: DateTime<Utc>,
) -> Result<Observed, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT team_id, total_spent_micros, status, next_billing_at, terminated_at, seen_at, \
         deleted_at FROM vms WHERE id = ?1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(Observed::default());
    };
    let last_seen: Option<DateTime<Utc>> = from_db_opt(row.try_get("seen_at")?)?;
    if last_seen.is_some_and(|last| last > at) {
        // A listing older than one already applied (two jobs list concurrently): it can only
        // take the VM back in time.
        return Ok(Observed {
            known: true,
            ..Observed::default()
        });
    }
    let team_id: Option<String> = row.try_get("team_id")?;
    let before: i64 = row.try_get("total_spent_micros")?;
    let old_status: String = row.try_get("status")?;
    let due: Option<DateTime<Utc>> = from_db_opt(row.try_get("next_billing_at")?)?;
    let terminated_at: Option<String> = row.try_get("terminated_at")?;
    let deleted_at: Option<String> = row.try_get("deleted_at")?;
    let now_spent = seen.total_spent.micros();
    let charged = now_spent.saturating_sub(before).max(0);
    // totalSpent only grows; a smaller figure (a provider correction) is kept, not charged back.
    if charged > 0 {
        let first = due.or(seen.created_at).unwrap_or(at);
        for (amount, charged_at) in split_charges(charged, seen.price_per_epoch.micros(), first) {
            sqlx::query(
                "INSERT INTO ledger (vm_id, team_id, amount_micros, at) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(id)
            .bind(&team_id)
            .bind(amount)
            .bind(to_db(charged_at))
            .execute(&mut *conn)
            .await?;
        }
    }
    // A VM marked deleted because it had gone missing, listed again and not as stopped by its
    // user, is alive after all.
    let reappeared = deleted_at.is_some() && seen.status != "Stopped" && old_status == "Deleted";
    if reappeared {
        event(
            conn,
            id,
            team_id.as_deref(),
            "reappeared",
            Some(&old_status),
            Some(seen.status),
            None,
            at,
        )
        .await?;
    }
    // `Deleted` is the gateway's own; Fluence's list never says it, so it is not a change.
    let status_changed = old_status != seen.status && old_status != "Deleted";
    let newly_terminated = seen.status == "Terminated" && terminated_at.is_none();
    if status_changed {
        let kind = if newly_terminated {
            "terminated_by_provider"
        } else {
            "status_changed"
        };
        event(
            conn,
            id,
            team_id.as_deref(),
            kind,
            Some(&old_status),
            Some(seen.status),
            None,
            at,
        )
        .await?;
    }
    // The ports are kept when the gateway changed them after this listing was fetched: the
    // listing would put back the ones from before the change (RELIABILITY H1).
    sqlx::query(
        "UPDATE vms SET status = CASE WHEN deleted_at IS NULL OR ?16 THEN ?2 ELSE status END, \
         deleted_at = CASE WHEN ?16 THEN NULL ELSE deleted_at END, missing_since = NULL, \
         price_per_epoch_micros = ?3, total_spent_micros = MAX(total_spent_micros, ?4), \
         reserved_balance_micros = ?5, next_billing_at = ?6, seen_at = ?7, public_ip = ?8, \
         datacenter = ?9, os_image = COALESCE(?11, os_image), \
         open_ports = CASE WHEN ports_set_at >= ?7 THEN open_ports ELSE ?10 END, \
         terminated_at = COALESCE(terminated_at, ?12), vcpus = COALESCE(?13, vcpus), \
         ram_gib = COALESCE(?14, ram_gib), storage_gib = COALESCE(?15, storage_gib) WHERE id = ?1",
    )
    .bind(id)
    .bind(seen.status)
    .bind(seen.price_per_epoch.micros())
    .bind(now_spent)
    .bind(seen.reserved_balance.micros())
    .bind(seen.next_billing_at.map(to_db))
    .bind(to_db(at))
    .bind(seen.public_ip)
    .bind(seen.datacenter.to_string())
    .bind(seen.open_ports.to_string())
    .bind(seen.os_image)
    .bind(newly_terminated.then(|| to_db(at)))
    .bind(seen.resources.map(|r| r.0))
    .bind(seen.resources.map(|r| r.1))
    .bind(seen.resources.map(|r| r.2))
    .bind(reappeared)
    .execute(&mut *conn)
    .await?;
    Ok(Observed {
        known: true,
        charged,
        status_changed,
        newly_terminated,
    })
}

/// The most epochs one rise is spread over; a longer gap is past any real outage.
const MAX_SPLIT_EPOCHS: i64 = 400;

/// A rise of `totalSpent` seen at once may cover several epochs (the sync was down, a VM adopted
/// late): it is spread one price per 24 h from `first`, the remainder on the last, so that each
/// charge lands on the day (and in the budget period) Fluence made it.
pub fn split_charges(charged: i64, price: i64, first: DateTime<Utc>) -> Vec<(i64, DateTime<Utc>)> {
    if price <= 0 || charged <= price {
        return vec![(charged, first)];
    }
    let epochs = (charged / price).min(MAX_SPLIT_EPOCHS);
    let mut out: Vec<(i64, DateTime<Utc>)> = (0..epochs)
        .map(|k| {
            let at = first
                .checked_add_signed(chrono::TimeDelta::hours(24 * k))
                .unwrap_or(first);
            (price, at)
        })
        .collect();
    let rest = charged - price * epochs;
    if rest > 0 {
        if let Some(last) = out.last_mut() {
            last.0 += rest;
        }
    }
    out
}

/// Records an event of a VM's life.
#[allow(clippy::too_many_arguments)]
pub async fn event(
    conn: &mut SqliteConnection,
    vm_id: &str,
    team_id: Option<&str>,
    kind: &str,
    from_status: Option<&str>,
    to_status: Option<&str>,
    detail: Option<Value>,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO vm_events (vm_id, team_id, at, kind, from_status, to_status, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(vm_id)
    .bind(team_id)
    .bind(to_db(at))
    .bind(kind)
    .bind(from_status)
    .bind(to_status)
    .bind(detail.map(|d| d.to_string()))
    .execute(conn)
    .await?;
    Ok(())
}

/// A VM found in Fluence's list that the gateway did not create: recorded without a team, its
/// charges so far taken as the starting point (they predate the gateway's watch).
#[derive(Debug, Clone)]
pub struct Unowned<'a> {
    pub id: &'a str,
    pub fluence_id: &'a str,
    pub name: &'a str,
    pub created_at: DateTime<Utc>,
    pub sighting: Sighting<'a>,
}

pub async fn insert_unowned(
    conn: &mut SqliteConnection,
    vm: &Unowned<'_>,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let seen = &vm.sighting;
    let done = sqlx::query(
        "INSERT INTO vms (id, fluence_id, team_id, deployment_id, name, status, price_per_epoch_micros, \
         total_spent_micros, reserved_balance_micros, next_billing_at, created_at, seen_at, public_ip, \
         datacenter, open_ports, os_image, vcpus, ram_gib, storage_gib) \
         VALUES (?1, ?2, NULL, NULL, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(vm.id)
    .bind(vm.fluence_id)
    .bind(vm.name)
    .bind(seen.status)
    .bind(seen.price_per_epoch.micros())
    .bind(seen.total_spent.micros())
    .bind(seen.reserved_balance.micros())
    .bind(seen.next_billing_at.map(to_db))
    .bind(to_db(vm.created_at))
    .bind(to_db(at))
    .bind(seen.public_ip)
    .bind(seen.datacenter.to_string())
    .bind(seen.open_ports.to_string())
    .bind(seen.os_image)
    .bind(seen.resources.map_or(0, |r| r.0))
    .bind(seen.resources.map_or(0, |r| r.1))
    .bind(seen.resources.map_or(0, |r| r.2))
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        event(
            conn,
            vm.id,
            None,
            "discovered_unowned",
            None,
            Some(seen.status),
            Some(serde_json::json!({"name": vm.name})),
            at,
        )
        .await?;
    }
    Ok(done.rows_affected() == 1)
}

/// A live VM seen in an earlier listing, as the disappearance rule needs it.
#[derive(Debug, Clone)]
pub struct SeenLive {
    pub id: String,
    pub team_id: Option<String>,
    pub status: String,
    pub missing_since: Option<DateTime<Utc>>,
    /// Its deployment's hold is not settled: the deploy worker still waits for it.
    pub unsettled: bool,
}

/// Live VMs last seen before `before` (a listing taken at `before` can speak for them).
pub async fn seen_live(
    conn: &mut SqliteConnection,
    before: DateTime<Utc>,
) -> Result<Vec<SeenLive>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT v.id, v.team_id, v.status, v.missing_since, \
                (d.id IS NOT NULL AND d.settled_at IS NULL) AS unsettled \
         FROM vms v LEFT JOIN deployments d ON d.id = v.deployment_id \
         WHERE v.deleted_at IS NULL AND v.seen_at IS NOT NULL AND v.seen_at < ?1 ORDER BY v.id",
    )
    .bind(to_db(before))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(SeenLive {
                id: row.try_get("id")?,
                team_id: row.try_get("team_id")?,
                status: row.try_get("status")?,
                missing_since: from_db_opt(row.try_get("missing_since")?)?,
                unsettled: row.try_get::<i64, _>("unsettled")? != 0,
            })
        })
        .collect()
}

/// Notes that a VM is missing from a listing at `at` (first time only).
/// The event that records a deletion asked of Fluence, before the call.
pub const DELETE_REQUESTED: &str = "delete_requested";

/// Whether a deletion of the VM was ever asked of Fluence by its team or an admin.
pub async fn deletion_requested(
    conn: &mut SqliteConnection,
    id: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM vm_events WHERE vm_id = ?1 AND kind = ?2)")
        .bind(id)
        .bind(DELETE_REQUESTED)
        .fetch_one(conn)
        .await
}

pub async fn mark_missing(
    conn: &mut SqliteConnection,
    id: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vms SET missing_since = COALESCE(missing_since, ?2) WHERE id = ?1")
        .bind(id)
        .bind(to_db(at))
        .execute(conn)
        .await?;
    Ok(())
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
    deletions(&rows)
}

/// Owned VMs the provider terminated that are still live here, of teams whose policy is to
/// finalise them, as `(id, team, fluence id)`.
pub async fn terminated_to_finalize(
    conn: &mut SqliteConnection,
) -> Result<Vec<(String, Option<String>, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT v.id, v.team_id, v.fluence_id FROM vms v JOIN teams t ON t.id = v.team_id \
         WHERE v.deleted_at IS NULL AND v.terminated_at IS NOT NULL AND t.finalize_terminated = 1 \
         ORDER BY v.id",
    )
    .fetch_all(conn)
    .await?;
    deletions(&rows)
}

/// Rows of `id, team_id, fluence_id`: VMs a job is to delete.
fn deletions(
    rows: &[sqlx::sqlite::SqliteRow],
) -> Result<Vec<(String, Option<String>, String)>, sqlx::Error> {
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

/// A VM as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    pub id: String,
    pub fluence_id: String,
    pub team_id: Option<String>,
    pub deployment_id: Option<String>,
    pub name: String,
    pub status: String,
    pub public_ip: Option<String>,
    pub price_per_epoch: Usdc,
    pub total_spent: Usdc,
    pub reserved_balance: Usdc,
    pub next_billing_at: Option<DateTime<Utc>>,
    pub configuration: Option<String>,
    pub vcpus: i64,
    pub ram_gib: i64,
    pub storage_gib: i64,
    pub datacenter: Value,
    pub open_ports: Value,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub terminated_at: Option<DateTime<Utc>>,
}

const VM_COLUMNS: &str = "id, fluence_id, team_id, deployment_id, name, status, public_ip, \
    price_per_epoch_micros, total_spent_micros, reserved_balance_micros, next_billing_at, \
    configuration, vcpus, ram_gib, storage_gib, datacenter, open_ports, created_at, expires_at, \
    deleted_at, terminated_at";

fn json_or_null(text: Option<String>) -> Value {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<VmRecord, sqlx::Error> {
    let created_at: String = row.try_get("created_at")?;
    Ok(VmRecord {
        id: row.try_get("id")?,
        fluence_id: row.try_get("fluence_id")?,
        team_id: row.try_get("team_id")?,
        deployment_id: row.try_get("deployment_id")?,
        name: row.try_get("name")?,
        status: row.try_get("status")?,
        public_ip: row.try_get("public_ip")?,
        price_per_epoch: Usdc::from_micros(row.try_get("price_per_epoch_micros")?),
        total_spent: Usdc::from_micros(row.try_get("total_spent_micros")?),
        reserved_balance: Usdc::from_micros(row.try_get("reserved_balance_micros")?),
        next_billing_at: from_db_opt(row.try_get("next_billing_at")?)?,
        configuration: row.try_get("configuration")?,
        vcpus: row.try_get("vcpus")?,
        ram_gib: row.try_get("ram_gib")?,
        storage_gib: row.try_get("storage_gib")?,
        datacenter: json_or_null(row.try_get("datacenter")?),
        open_ports: json_or_null(row.try_get("open_ports")?),
        created_at: from_db(&created_at)?,
        expires_at: from_db_opt(row.try_get("expires_at")?)?,
        deleted_at: from_db_opt(row.try_get("deleted_at")?)?,
        terminated_at: from_db_opt(row.try_get("terminated_at")?)?,
    })
}

pub async fn get(conn: &mut SqliteConnection, id: &str) -> Result<Option<VmRecord>, sqlx::Error> {
    sqlx::query(&format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1"))
        .bind(id.to_ascii_lowercase())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// The inventory version: it moves whenever any row of `vms` is written (triggers of migration
/// `20261203120000`), so an answer read at one version is current while the version stands.
pub async fn inventory_version(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM inventory_version WHERE id = 1")
        .fetch_one(conn)
        .await
}

/// Whose VMs a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    Any,
    Team(&'a str),
    Unowned,
}

/// By id, after `cursor`; deleted ones only when `include_deleted`.
pub async fn list(
    conn: &mut SqliteConnection,
    owner: Owner<'_>,
    status: Option<&str>,
    include_deleted: bool,
    cursor: Option<&str>,
    limit: u32,
) -> Result<Vec<VmRecord>, sqlx::Error> {
    let mut query: QueryBuilder<'_, Sqlite> =
        QueryBuilder::new(format!("SELECT {VM_COLUMNS} FROM vms WHERE 1 = 1"));
    match owner {
        Owner::Any => {}
        Owner::Team(team) => {
            query.push(" AND team_id = ").push_bind(team);
        }
        Owner::Unowned => {
            query.push(" AND team_id IS NULL");
        }
    }
    if let Some(status) = status {
        query.push(" AND status = ").push_bind(status);
    }
    if !include_deleted && status != Some("Deleted") {
        query.push(" AND deleted_at IS NULL");
    }
    if let Some(cursor) = cursor {
        query.push(" AND id > ").push_bind(cursor);
    }
    query
        .push(" ORDER BY id LIMIT ")
        .push_bind(i64::from(limit));
    query
        .build()
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Sets the name and, when given, the ports the gateway just had Fluence apply, at `at`, once
/// Fluence answered: a listing fetched before then may still show the old ports and must not
/// restore them. A change of the name alone leaves the ports and their time as they are.
pub async fn set_name_and_ports(
    conn: &mut SqliteConnection,
    id: &str,
    name: &str,
    open_ports: Option<&Value>,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE vms SET name = ?2, open_ports = COALESCE(?3, open_ports), \
         ports_set_at = CASE WHEN ?3 IS NULL THEN ports_set_at ELSE ?4 END WHERE id = ?1",
    )
    .bind(id)
    .bind(name)
    .bind(open_ports.map(Value::to_string))
    .bind(to_db(at))
    .execute(conn)
    .await?;
    Ok(())
}

/// One event of a VM's life.
#[derive(Debug, Clone, PartialEq)]
pub struct VmEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub detail: Value,
}

/// A VM's events, oldest first, after `cursor` (an event id).
pub async fn events(
    conn: &mut SqliteConnection,
    vm_id: &str,
    cursor: Option<i64>,
    limit: u32,
) -> Result<Vec<VmEvent>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, at, kind, from_status, to_status, detail FROM vm_events \
         WHERE vm_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )
    .bind(vm_id)
    .bind(cursor.unwrap_or(0))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let at: String = row.try_get("at")?;
            Ok(VmEvent {
                id: row.try_get("id")?,
                at: from_db(&at)?,
                kind: row.try_get("kind")?,
                from_status: row.try_get("from_status")?,
                to_status: row.try_get("to_status")?,
                detail: json_or_null(row.try_get("detail")?),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_rise_covering_several_epochs_is_spread_one_price_per_day() {
        let first = at("2026-01-30T17:55:00Z");
        assert_eq!(split_charges(5, 10, first), vec![(5, first)]);
        assert_eq!(split_charges(10, 10, first), vec![(10, first)]);
        let spread = split_charges(35, 10, first);
        assert_eq!(
            spread,
            vec![
                (10, first),
                (10, at("2026-01-31T17:55:00Z")),
                (15, at("2026-02-01T17:55:00Z")),
            ]
        );
        assert_eq!(spread.iter().map(|(a, _)| a).sum::<i64>(), 35);
        assert_eq!(split_charges(35, 0, first), vec![(35, first)]);
    }
}
