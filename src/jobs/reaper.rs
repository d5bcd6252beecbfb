//! The TTL reaper: deletes VMs whose `expires_at` has passed, upstream first, then in the
//! inventory (which releases their commitment), each deletion audited. It also forgets
//! `Idempotency-Key` records past their retention.

use serde_json::json;

use crate::state::AppState;
use crate::store::audit::{self, NewAuditEntry};
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
    let local: Vec<String> = expired.iter().map(|(id, _, _)| id.clone()).collect();
    crate::inventory::observe_before_delete(state, &local).await?;
    // Upstream first: a VM marked deleted here but alive at Fluence would be billed unseen.
    let targets: Vec<(String, String)> = expired
        .iter()
        .map(|(id, _, fluence_id)| (id.clone(), fluence_id.clone()))
        .collect();
    let (gone, failures) = crate::inventory::delete_at_fluence(state, &targets).await?;
    let expired: Vec<_> = expired
        .into_iter()
        .filter(|(id, _, _)| gone.contains(id))
        .collect();
    let at = now();
    let mut tx = state.store.begin_write().await.map_err(|e| e.to_string())?;
    let mut deleted = 0;
    for (id, team, _) in &expired {
        if vms::mark_deleted(&mut tx, id, at).await.map_err(db)? {
            deleted += 1;
            audit::record(
                &mut tx,
                NewAuditEntry {
                    actor: "job:reaper",
                    actor_role: "system",
                    action: "vm.delete",
                    target_type: "vm",
                    target_id: id,
                    team_id: team.as_deref(),
                    before: None,
                    after: Some(json!({"status": "Deleted", "cause": "ttl_expired"})),
                    request_id: None,
                },
                at,
            )
            .await
            .map_err(db)?;
        }
    }
    tx.commit().await.map_err(db)?;
    if failures.is_empty() {
        Ok(format!("{deleted} VMs past their TTL deleted"))
    } else {
        Err(format!(
            "{deleted} VMs past their TTL deleted; not deleted: {}",
            failures.join("; ")
        ))
    }
}
