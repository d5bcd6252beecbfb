//! The money a team's budget status is computed from: charges in the ledger, the live VMs
//! that will still be charged, and the holds of deployments in flight.

use chrono::{DateTime, Utc};
use sqlx::{Row, SqliteConnection};

use super::teams::Team;
use super::time::{from_db_opt, to_db};
use crate::domain::admission::BudgetSnapshot;
use crate::domain::billing;
use crate::domain::money::Usdc;
use crate::domain::period::BudgetPeriod;

/// Where a team stands in the period containing `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub period_start: DateTime<Utc>,
    pub resets_at: DateTime<Utc>,
    pub budget: BudgetSnapshot,
}

fn overflow(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("the {what} amount overflows").into())
}

/// Reads spent, committed and reserved for the team's current period, in one statement. Call
/// it inside the transaction whose snapshot the answer must describe (the admission's write
/// transaction, or one read transaction for a status).
///
/// It reads what migration `20261203180000_admission_reads.sql` keeps for it: each live VM's
/// billing times as integer microseconds in the team's index of live VMs, and the ledger
/// summed by day. `committed` is [`billing::committed`] summed over [`live_vms`] by SQLite in
/// integer microseconds, the precision of every stored timestamp, so it is exact; a test holds
/// it to the Rust rule over random inventories (`tests/api/store.rs`).
pub async fn standing(
    conn: &mut SqliteConnection,
    team: &Team,
    now: DateTime<Utc>,
) -> Result<Standing, sqlx::Error> {
    let period = BudgetPeriod::monthly(team.period_start_day)
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let (period_start, resets_at) = period.bounds(now);
    let row = sqlx::query(STANDING)
        .bind(team.id.as_str())
        .bind(to_db(period_start))
        .bind(to_db(resets_at))
        .bind(resets_at.timestamp_micros())
        .bind(billing::EPOCH_MICROS)
        .fetch_one(conn)
        .await?;
    let overflowing: i64 = row.try_get("overflowing")?;
    if overflowing > 0 {
        return Err(overflow("committed"));
    }
    let micros = |column: &str| row.try_get::<i64, _>(column).map(Usdc::from_micros);
    Ok(Standing {
        period_start,
        resets_at,
        budget: BudgetSnapshot {
            cap: team.cap,
            spent: micros("spent")?,
            committed: micros("committed")?,
            reserved: micros("reserved")?,
        },
    })
}

/// ?1 team, ?2 and ?3 the period's bounds as stored text (both at midnight UTC), ?4 its end in
/// microseconds since 1970, ?5 one epoch in microseconds.
///
/// - `spent`: the team's charges in the period (the days of `ledger_daily`), less the charges
///   of VMs whose deployment still holds its commitment: that hold already covers the charge
///   at deploy (and every later one), as `live` leaves such VMs out of `committed`. Counting
///   both made a team whose first VMs were listed and charged a moment before their hold
///   settled look short by those charges, refusing a deploy its cap fits (RELIABILITY C2, two
///   processes: one's inventory sync between the other's admissions).
/// - `committed`: for each of [`live_vms`] with a next billing time `next`, its price times the
///   billing instants `next + k * epoch` before `end` (the period's end, or the VM's expiry if
///   sooner): `ceil((end - next) / epoch)` when `next < end`, none otherwise. A product that
///   would overflow is counted in `overflowing` instead of summed.
/// - `reserved`: the team's open holds.
const STANDING: &str = "\
WITH live AS ( \
  SELECT v.price_per_epoch_micros AS price, v.next_billing_us AS next_us, \
    min(?4, COALESCE(v.expires_us, ?4)) AS end_us \
  FROM vms v \
  WHERE v.team_id = ?1 AND v.deleted_at IS NULL AND v.next_billing_us IS NOT NULL \
    AND (v.deployment_id IS NULL \
      OR v.deployment_id NOT IN (SELECT id FROM holds WHERE released_at IS NULL))), \
due AS ( \
  SELECT price, CASE WHEN next_us < end_us THEN (end_us - next_us + ?5 - 1) / ?5 ELSE 0 END AS instants \
  FROM live), \
priced AS ( \
  SELECT price, instants, instants > 0 AND price > 9223372036854775807 / instants AS overflowing \
  FROM due) \
SELECT \
  (SELECT COALESCE(SUM(amount_micros), 0) FROM ledger_daily \
   WHERE team_id = ?1 AND day >= substr(?2, 1, 10) AND day < substr(?3, 1, 10)) \
  - (SELECT COALESCE(SUM(l.amount_micros), 0) FROM holds h \
     JOIN vms v ON v.deployment_id = h.id JOIN ledger l ON l.vm_id = v.id \
     WHERE h.released_at IS NULL AND l.team_id = ?1 AND l.at >= ?2 AND l.at < ?3) AS spent, \
  COALESCE(SUM(CASE WHEN overflowing THEN 0 ELSE price * instants END), 0) AS committed, \
  COALESCE(SUM(overflowing), 0) AS overflowing, \
  (SELECT COALESCE(SUM(amount_micros), 0) FROM holds \
   WHERE team_id = ?1 AND released_at IS NULL) AS reserved \
FROM priced";

/// A live VM as the commitment rule needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveVmCharge {
    pub price_per_epoch: Usdc,
    pub next_billing_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Live VMs, except those of a deployment whose hold is still open: until the hold settles,
/// it is what covers them, and counting both would charge the team twice. [`standing`] sums
/// their commitment in SQL; this reads them one by one, for the test that holds the two to
/// the same rule.
pub async fn live_vms(
    conn: &mut SqliteConnection,
    team_id: &str,
) -> Result<Vec<LiveVmCharge>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT price_per_epoch_micros, next_billing_at, expires_at FROM vms v \
         WHERE team_id = ?1 AND deleted_at IS NULL AND NOT EXISTS \
         (SELECT 1 FROM holds h WHERE h.id = v.deployment_id AND h.released_at IS NULL)",
    )
    .bind(team_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(LiveVmCharge {
                price_per_epoch: Usdc::from_micros(row.try_get("price_per_epoch_micros")?),
                next_billing_at: from_db_opt(row.try_get("next_billing_at")?)?,
                expires_at: from_db_opt(row.try_get("expires_at")?)?,
            })
        })
        .collect()
}

/// Thresholds already crossed in the period starting at `period_start`.
pub async fn alerts_fired(
    conn: &mut SqliteConnection,
    team_id: &str,
    period_start: DateTime<Utc>,
) -> Result<Vec<u8>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT threshold FROM budget_alerts WHERE team_id = ?1 AND period_start = ?2 ORDER BY threshold",
    )
    .bind(team_id)
    .bind(to_db(period_start))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let threshold: i64 = row.try_get("threshold")?;
            u8::try_from(threshold).map_err(|e| sqlx::Error::Decode(Box::new(e)))
        })
        .collect()
}
