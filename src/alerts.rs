//! Budget alert thresholds (PRODUCT.md section 4): when a team's `spent + committed + reserved`
//! reaches a threshold (percent of its cap), the crossing is recorded once per period, audited,
//! and queued for the webhook in the same transaction.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::state::AppState;
use crate::store::audit::{self, NewAuditEntry};
use crate::store::budget;
use crate::store::teams::{self, Team};
use crate::store::time::{now, to_db};

/// The thresholds `usage` has reached, `usage` and `cap` in micro-USDC. A zero cap is reached
/// by any use at all.
pub fn reached(thresholds: &[u8], used_micros: i128, cap_micros: i128) -> Vec<u8> {
    thresholds
        .iter()
        .copied()
        .filter(|t| {
            // used / cap >= t / 100, in integers: no rounding decides an alert.
            used_micros * 100 >= i128::from(*t) * cap_micros && (cap_micros > 0 || used_micros > 0)
        })
        .collect()
}

/// Checks every team; returns how many thresholds were newly crossed.
pub async fn check_all(state: &AppState) -> Result<usize, String> {
    let db = |e: sqlx::Error| format!("database: {e}");
    let all = {
        let mut conn = state.store.pool().acquire().await.map_err(db)?;
        teams::list(&mut conn, None, u32::MAX).await.map_err(db)?
    };
    let (mut fired, mut errors) = (0, Vec::new());
    for team in &all {
        // One team's failure does not keep the others' alerts from firing.
        match check(state, team, now()).await {
            Ok(n) => fired += n,
            Err(error) => errors.push(format!("{}: {error}", team.id)),
        }
    }
    if errors.is_empty() {
        Ok(fired)
    } else {
        Err(format!("budget alerts: {}", errors.join("; ")))
    }
}

async fn check(state: &AppState, team: &Team, at: DateTime<Utc>) -> Result<usize, String> {
    let db = |e: sqlx::Error| format!("database: {e}");
    // A read first: most checks find nothing new, and need not take the write lock that
    // admissions wait on.
    {
        let mut read = state.store.pool().begin().await.map_err(db)?;
        let standing = budget::standing(&mut read, team, at).await.map_err(db)?;
        let b = standing.budget;
        let used = i128::from(b.spent.micros())
            + i128::from(b.committed.micros())
            + i128::from(b.reserved.micros());
        let fired = budget::alerts_fired(&mut read, team.id.as_str(), standing.period_start)
            .await
            .map_err(db)?;
        read.rollback().await.map_err(db)?;
        let reached = reached(&team.alert_thresholds, used, i128::from(b.cap.micros()));
        if reached.iter().all(|t| fired.contains(t)) {
            return Ok(0);
        }
    }
    let mut tx = state.store.begin_write().await.map_err(|e| e.to_string())?;
    let standing = budget::standing(&mut tx, team, at).await.map_err(db)?;
    let b = standing.budget;
    let used = i128::from(b.spent.micros())
        + i128::from(b.committed.micros())
        + i128::from(b.reserved.micros());
    let mut fired = 0;
    for threshold in reached(&team.alert_thresholds, used, i128::from(b.cap.micros())) {
        let inserted = sqlx::query(
            "INSERT INTO budget_alerts (team_id, period_start, threshold, fired_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(team.id.as_str())
        .bind(to_db(standing.period_start))
        .bind(i64::from(threshold))
        .bind(to_db(at))
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected()
            == 1;
        if !inserted {
            continue;
        }
        fired += 1;
        let event = json!({
            "event": "budget.threshold_crossed",
            "team": team.id.as_str(),
            "threshold": threshold,
            "period_start": standing.period_start,
            "resets_at": standing.resets_at,
            "cap": b.cap.to_string(),
            "spent": b.spent.to_string(),
            "committed": b.committed.to_string(),
            "reserved": b.reserved.to_string(),
            "at": at,
        });
        tracing::warn!(team = %team.id, threshold, "budget threshold crossed");
        audit::record(
            &mut tx,
            NewAuditEntry {
                actor: "job:inventory",
                actor_role: "system",
                action: "budget.threshold_crossed",
                target_type: "team",
                target_id: team.id.as_str(),
                team_id: Some(team.id.as_str()),
                before: None,
                after: Some(event.clone()),
                request_id: None,
            },
            at,
        )
        .await
        .map_err(db)?;
        if state.settings.webhook.enabled() {
            crate::webhook::enqueue(&mut tx, "budget.threshold_crossed", &event, at)
                .await
                .map_err(db)?;
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(fired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_reached_exactly_at_their_percent() {
        let cap = 500_000_000;
        assert_eq!(reached(&[50, 80, 100], 249_999_999, cap), Vec::<u8>::new());
        assert_eq!(reached(&[50, 80, 100], 250_000_000, cap), vec![50]);
        assert_eq!(reached(&[50, 80, 100], 400_000_000, cap), vec![50, 80]);
        assert_eq!(reached(&[50, 80, 100], 500_000_000, cap), vec![50, 80, 100]);
        assert_eq!(reached(&[50], 0, 0), Vec::<u8>::new());
        assert_eq!(reached(&[50], 1, 0), vec![50]);
    }
}
