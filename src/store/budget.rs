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

/// Reads spent, committed and reserved for the team's current period. Call it inside the
/// transaction whose snapshot the answer must describe (the admission's write transaction, or
/// one read transaction for a status).
pub async fn standing(
    conn: &mut SqliteConnection,
    team: &Team,
    now: DateTime<Utc>,
) -> Result<Standing, sqlx::Error> {
    let period = BudgetPeriod::monthly(team.period_start_day)
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let (period_start, resets_at) = period.bounds(now);
    let team_id = team.id.as_str();
    let spent = spent_between(&mut *conn, team_id, period_start, resets_at).await?;
    let committed = live_vms(&mut *conn, team_id)
        .await?
        .iter()
        .try_fold(Usdc::ZERO, |sum, vm| {
            billing::committed(
                vm.price_per_epoch,
                vm.next_billing_at,
                resets_at,
                vm.expires_at,
            )
            .and_then(|c| sum.checked_add(c))
        })
        .ok_or_else(|| overflow("committed"))?;
    let reserved = reserved(&mut *conn, team_id).await?;
    Ok(Standing {
        period_start,
        resets_at,
        budget: BudgetSnapshot {
            cap: team.cap,
            spent,
            committed,
            reserved,
        },
    })
}

/// A live VM as the commitment rule needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveVmCharge {
    pub price_per_epoch: Usdc,
    pub next_billing_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Sum of the team's charges with `from <= at < to`, except charges of VMs whose deployment
/// still holds its commitment: that hold already covers the charge at deploy (and every later
/// one), like [`live_vms`] leaves such VMs out of `committed`. Counting both made a team whose
/// first VMs were listed and charged a moment before their hold settled look short by those
/// charges, refusing a deploy its cap fits (RELIABILITY C2, two processes: one's inventory sync
/// between the other's admissions).
pub async fn spent_between(
    conn: &mut SqliteConnection,
    team_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Usdc, sqlx::Error> {
    let micros: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(l.amount_micros), 0) FROM ledger l \
         WHERE l.team_id = ?1 AND l.at >= ?2 AND l.at < ?3 AND NOT EXISTS \
         (SELECT 1 FROM vms v JOIN holds h ON h.id = v.deployment_id \
          WHERE v.id = l.vm_id AND h.released_at IS NULL)",
    )
    .bind(team_id)
    .bind(to_db(from))
    .bind(to_db(to))
    .fetch_one(conn)
    .await?;
    Ok(Usdc::from_micros(micros))
}

/// Live VMs, except those of a deployment whose hold is still open: until the hold settles,
/// it is what covers them, and counting both would charge the team twice.
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

/// Sum of the team's open holds.
pub async fn reserved(conn: &mut SqliteConnection, team_id: &str) -> Result<Usdc, sqlx::Error> {
    let micros: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(amount_micros), 0) FROM holds WHERE team_id = ?1 AND released_at IS NULL",
    )
    .bind(team_id)
    .fetch_one(conn)
    .await?;
    Ok(Usdc::from_micros(micros))
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
