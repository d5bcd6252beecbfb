//! The TTL reaper: deletes VMs whose `expires_at` has passed, upstream first, then in the
//! inventory (which releases their commitment), each deletion audited. It also forgets
//! `Idempotency-Key` records past their retention.

use crate::state::AppState;
use crate::store::idempotency;
use crate::store::time::now;
use crate::store::vms;

/// At most this many VMs per run, so a backlog is worked off in bounded calls.
const BATCH: u32 = 100;

pub async fn run(state: &AppState) -> Result<String, String> {
    let db = |e: sqlx::Error| format!("database: {e}");
    let expired = {
        let mut conn = state.store.pool().acquire().await.map_err(db)?;
        vms::expired(&mut conn, now(), BATCH).await.map_err(db)?
    };
    let purged = {
        let mut tx = state.store.begin_write().await.map_err(|e| e.to_string())?;
        let purged = idempotency::purge_expired(&mut tx, now())
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        purged
    };
    if expired.is_empty() {
        return Ok(format!(
            "no VM past its TTL; {purged} expired idempotency records purged"
        ));
    }
    let (deleted, failures) =
        crate::inventory::delete_for_job(state, &expired, "job:reaper", "ttl_expired").await?;
    if failures.is_empty() {
        Ok(format!("{deleted} VMs past their TTL deleted"))
    } else {
        Err(format!(
            "{deleted} VMs past their TTL deleted; not deleted: {}",
            failures.join("; ")
        ))
    }
}
