//! The inventory sync (PRODUCT.md section 6): Fluence's `GET /vms/v3` reconciled into SQLite.
//! Every known VM's status, address, price, ports and next charge are brought up to date and
//! every rise of its `totalSpent` becomes a charge in the ledger; VMs the gateway did not create
//! are recorded as unowned (admins only); VMs gone from the list are marked deleted; VMs the
//! provider terminated are flagged and, by their team's policy, deleted so that Fluence releases
//! the balance it holds for them. VMs whose name is a deployment's are left to the deploy
//! worker, which adopts them with their owner.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::domain::ids::VmId;
use crate::fluence::types::{ResourceType, RunningInstance};
use crate::state::AppState;
use crate::store::audit::{self, NewAuditEntry};
use crate::store::time::now;
use crate::store::vms::{self, Sighting, Unowned};

/// The sighting of a listed VM, with only the fields the gateway keeps (an allow-list: nothing
/// of the provider's answer is passed through as is).
pub fn sighting_of(vm: &RunningInstance) -> Sighting<'_> {
    Sighting {
        status: vm.status.as_str(),
        price_per_epoch: vm.price_per_epoch,
        total_spent: vm.total_spent,
        reserved_balance: vm.reserved_balance,
        next_billing_at: vm.next_billing_at,
        public_ip: vm.public_ip.as_deref(),
        datacenter: vm.datacenter.as_ref().map_or(
            Value::Null,
            |dc| json!({"country": dc.country_code, "city": dc.city_code, "tier": dc.tier}),
        ),
        open_ports: json!(
            vm.ports
                .iter()
                .map(|p| json!({"port": p.port, "protocol": p.protocol}))
                .collect::<Vec<_>>()
        ),
        os_image: vm.os_image.as_deref(),
        created_at: Some(vm.created_at),
        resources: resources_of(vm),
    }
}

/// `(vcpus, ram GiB, storage GiB)` from a listing's resources, when it lists any.
fn resources_of(vm: &RunningInstance) -> Option<(i64, i64, i64)> {
    if vm.resources.is_empty() {
        return None;
    }
    let sum = |kind: ResourceType| -> i64 {
        vm.resources
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| r.amount())
            .map(|a| i64::try_from(a).unwrap_or(i64::MAX))
            .fold(0_i64, i64::saturating_add)
    };
    Some((
        sum(ResourceType::Vcpu),
        sum(ResourceType::Ram),
        sum(ResourceType::Storage),
    ))
}

/// What one sync did.
#[derive(Debug, Default)]
struct Tally {
    updated: usize,
    charges: usize,
    unowned: usize,
    disappeared: usize,
    terminated: usize,
    finalized: usize,
}

pub async fn sync(state: &AppState) -> Result<String, String> {
    let db = |e: sqlx::Error| format!("database: {e}");
    let listing = state
        .fluence
        .list_vms()
        .await
        .map_err(|e| format!("listing Fluence's VMs: {e}"))?;
    let at = now();
    let mut tally = Tally::default();
    let mut tx = state.store.begin_write().await.map_err(|e| e.to_string())?;
    let deployment_names: HashSet<String> =
        sqlx::query_scalar::<_, String>("SELECT upstream_name FROM deployments")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?
            .into_iter()
            .collect();
    let mut listed = HashSet::new();
    for vm in &listing {
        let id = vm.id.canonical();
        listed.insert(id.clone());
        let seen = sighting_of(vm);
        let observed = vms::observe(&mut tx, &id, &seen, at).await.map_err(db)?;
        if observed.known {
            tally.updated += 1;
            tally.charges += usize::from(observed.charged > 0);
            tally.terminated += usize::from(observed.newly_terminated);
            continue;
        }
        let name = vm.vm_name.as_deref().unwrap_or("");
        if deployment_names.contains(name) {
            // One of the gateway's own, not recorded yet (its answer was lost or is late):
            // the deploy worker adopts it with its team.
            continue;
        }
        let unowned = Unowned {
            id: &id,
            fluence_id: vm.id.as_str(),
            name,
            created_at: vm.created_at,
            sighting: seen,
        };
        if vms::insert_unowned(&mut tx, &unowned, at)
            .await
            .map_err(db)?
        {
            tracing::warn!(vm = %id, "a VM created outside the gateway was found; recorded as unowned");
            tally.unowned += 1;
        }
    }
    // Seen before and gone now: deleted at Fluence (by hand, or by the provider after a
    // termination). VMs never seen yet are the deploy worker's to wait for.
    for (id, team) in vms::seen_live(&mut tx).await.map_err(db)? {
        if listed.contains(&id) {
            continue;
        }
        if vms::mark_deleted(&mut tx, &id, at).await.map_err(db)? {
            vms::event(
                &mut tx,
                &id,
                team.as_deref(),
                "disappeared",
                None,
                Some("Deleted"),
                None,
                at,
            )
            .await
            .map_err(db)?;
            tally.disappeared += 1;
        }
    }
    tx.commit().await.map_err(db)?;

    let finalize = finalize_terminated(state).await;
    let alerts = crate::alerts::check_all(state).await;
    let summary = format!(
        "{} listed: {} updated, {} charged, {} unowned found, {} gone, {} terminated by the provider, {} finalized",
        listing.len(),
        tally.updated,
        tally.charges,
        tally.unowned,
        tally.disappeared,
        tally.terminated,
        finalize.as_ref().map_or(0, |n| *n) + tally.finalized,
    );
    match (finalize, alerts) {
        (Ok(_), Ok(fired)) => Ok(format!("{summary}; {fired} budget alerts")),
        (Err(e), _) | (_, Err(e)) => Err(format!("{summary}; {e}")),
    }
}

/// Deletes the provider-terminated VMs of teams whose policy says so: Fluence keeps their
/// reserved balance until they are deleted.
async fn finalize_terminated(state: &AppState) -> Result<usize, String> {
    let db = |e: sqlx::Error| format!("database: {e}");
    let due = {
        let mut conn = state.store.pool().acquire().await.map_err(db)?;
        vms::terminated_to_finalize(&mut conn).await.map_err(db)?
    };
    if due.is_empty() {
        return Ok(0);
    }
    let ids: Vec<VmId> = due.iter().map(|(_, _, f)| VmId::new(f.clone())).collect();
    state
        .fluence
        .delete_vms(&ids)
        .await
        .map_err(|e| format!("finalizing {} terminated VMs: {e}", ids.len()))?;
    let at = now();
    let mut tx = state.store.begin_write().await.map_err(|e| e.to_string())?;
    let mut done = 0;
    for (id, team, _) in &due {
        if vms::mark_deleted(&mut tx, id, at).await.map_err(db)? {
            done += 1;
            audit::record(
                &mut tx,
                NewAuditEntry {
                    actor: "job:inventory",
                    actor_role: "system",
                    action: "vm.delete",
                    target_type: "vm",
                    target_id: id,
                    team_id: Some(team),
                    before: Some(json!({"status": "Terminated"})),
                    after: Some(json!({"status": "Deleted", "cause": "terminated_by_provider"})),
                    request_id: None,
                },
                at,
            )
            .await
            .map_err(db)?;
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(done)
}

/// Brings the given VMs up to date from Fluence's list right now, so that a charge made since
/// the last sync is in the ledger before they are deleted (nothing can be observed after).
pub async fn observe_before_delete(state: &AppState, ids: &[String]) -> Result<(), String> {
    let db = |e: sqlx::Error| format!("database: {e}");
    let listing = state
        .fluence
        .list_vms()
        .await
        .map_err(|e| format!("listing Fluence's VMs: {e}"))?;
    let at = now();
    let mut tx = state.store.begin_write().await.map_err(|e| e.to_string())?;
    for vm in listing.iter().filter(|vm| ids.contains(&vm.id.canonical())) {
        vms::observe(&mut tx, &vm.id.canonical(), &sighting_of(vm), at)
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}
