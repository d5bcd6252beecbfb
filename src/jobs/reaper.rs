//! The TTL reaper: deletes VMs whose `expires_at` has passed, upstream first, then in the
//! inventory (which releases their commitment), each deletion audited. It also forgets
//! `Idempotency-Key` records past their retention.

use serde_json::json;

use crate::domain::ids::VmId;
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
    let ids: Vec<VmId> = expired
        .iter()
        .map(|(_, _, fluence_id)| VmId::new(fluence_id.clone()))
        .collect();
    // Upstream first: a VM marked deleted here but alive at Fluence would be billed unseen.
    // One call for the batch; if it fails (one VM already gone can fail it whole), Fluence's
    // list says which are still there, and those are deleted one by one, so a single stray id
    // never blocks the rest.
    let local: Vec<String> = expired.iter().map(|(id, _, _)| id.clone()).collect();
    crate::inventory::observe_before_delete(state, &local).await?;
    let mut failures = Vec::new();
    if let Err(error) = state.fluence.delete_vms(&ids).await {
        tracing::warn!(%error, "batch delete of expired VMs failed; deleting one by one");
        let listed = listed_ids(state).await?;
        for id in ids.iter().filter(|id| listed.contains(&id.canonical())) {
            if let Err(error) = state.fluence.delete_vms(std::slice::from_ref(id)).await {
                failures.push(format!("{}: {error}", id.as_str()));
            }
        }
    }
    let still_there = if failures.is_empty() {
        Vec::new()
    } else {
        listed_ids(state).await?
    };
    let expired: Vec<_> = expired
        .into_iter()
        .filter(|(id, _, _)| !still_there.contains(id))
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

/// The ids of every VM in Fluence's list, canonical.
async fn listed_ids(state: &AppState) -> Result<Vec<String>, String> {
    Ok(state
        .fluence
        .list_vms()
        .await
        .map_err(|e| format!("listing Fluence's VMs: {e}"))?
        .into_iter()
        .map(|vm| vm.id.canonical())
        .collect())
}
