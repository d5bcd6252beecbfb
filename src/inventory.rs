//! The inventory sync (PRODUCT.md section 6): Fluence's `GET /vms/v3` reconciled into SQLite.
//! Every known VM's status, address, price, ports and next charge are brought up to date and
//! every rise of its `totalSpent` becomes a charge in the ledger; VMs the gateway did not create
//! are recorded as unowned (admins only); VMs gone from the list are marked deleted; VMs the
//! provider terminated are flagged and, by their team's policy, deleted so that Fluence releases
//! the balance it holds for them. VMs whose name is a deployment's are left to the deploy
//! worker, which adopts them with their owner.

use std::collections::{HashMap, HashSet};

use chrono::TimeDelta;

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
    adopted: usize,
}

/// How long a VM seen before may be missing from Fluence's list before it counts as deleted
/// (unless its user had stopped it, which is how a deletion shows first).
pub const MISSING_FOR: TimeDelta = TimeDelta::minutes(10);

pub async fn sync(state: &AppState) -> Result<String, String> {
    let db = |e: sqlx::Error| format!("database: {e}");
    // Taken before the call: the listing speaks for this instant, and a VM the deploy worker
    // saw later must not be judged by it.
    let listed_at = now();
    let listing = match state.fluence.list_vms().await {
        Ok(listing) => listing,
        Err(error) => {
            // Alerts depend on the ledger and holds too, not on this listing alone.
            let _ = crate::alerts::check_all(state).await;
            return Err(format!("listing Fluence's VMs: {error}"));
        }
    };
    let at = listed_at;
    // Between the listing and its write: where an update of the ports can land (H1).
    state.settings.failpoints.hit("inventory.after_list").await;
    let mut tally = Tally::default();
    let mut tx = state.store.begin_write().await.map_err(|e| e.to_string())?;
    let deployments = deployment_names(&mut tx, at).await.map_err(db)?;
    let mut listed = HashSet::new();
    let mut late_failed = HashSet::new();
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
        match deployments.get(name) {
            // Declared failed when nothing had appeared: adopted below, through the deploy
            // worker's own path, once this transaction is done.
            Some(owner) if owner.failed_unconfirmed => {
                late_failed.insert(owner.deployment_id.clone());
                continue;
            }
            // Still the deploy worker's to adopt, with its team and hold.
            Some(owner) if owner.pending => continue,
            // A late VM of a deployment the worker is done with: it is the team's all the same.
            Some(owner) => {
                adopt_for(&mut tx, owner, vm, &seen, at).await.map_err(db)?;
                tally.adopted += 1;
                continue;
            }
            None => {}
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
    for vm in vms::seen_live(&mut tx, listed_at).await.map_err(db)? {
        if listed.contains(&vm.id) || vm.unsettled {
            continue;
        }
        // A VM its user stopped (how a deletion shows first), or whose deletion the gateway
        // asked for (a process may have died before recording it), is gone once unlisted; any
        // other is given a while, since one missing sighting may be the list lagging.
        let gone = vm.status == "Stopped"
            || vm
                .missing_since
                .is_some_and(|since| at - since >= MISSING_FOR)
            || vms::deletion_requested(&mut tx, &vm.id).await.map_err(db)?;
        if !gone {
            vms::mark_missing(&mut tx, &vm.id, at).await.map_err(db)?;
            continue;
        }
        if vms::mark_deleted(&mut tx, &vm.id, at).await.map_err(db)? {
            vms::event(
                &mut tx,
                &vm.id,
                vm.team_id.as_deref(),
                "disappeared",
                Some(&vm.status),
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

    if !late_failed.is_empty() {
        let view = crate::deploy::reconcile::Listing::new(listing.clone(), listed_at);
        for id in &late_failed {
            let mut conn = state.store.pool().acquire().await.map_err(db)?;
            let found = crate::store::deployments::get(&mut conn, id)
                .await
                .map_err(db)?;
            drop(conn);
            if let Some(deployment) = found {
                if crate::deploy::reconcile::adopt_late(state, &deployment, &view)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    tally.adopted += 1;
                }
            }
        }
    }
    let finalize = finalize_terminated(state).await;
    let alerts = crate::alerts::check_all(state).await;
    let summary = format!(
        "{} listed: {} updated, {} charged, {} adopted late, {} unowned found, {} gone, {} terminated by the provider, {} finalized",
        listing.len(),
        tally.updated,
        tally.charges,
        tally.adopted,
        tally.unowned,
        tally.disappeared,
        tally.terminated,
        finalize.as_ref().map_or(0, |n| *n),
    );
    match (finalize, alerts) {
        (Ok(_), Ok(fired)) => Ok(format!("{summary}; {fired} budget alerts")),
        (Err(e), _) | (_, Err(e)) => Err(format!("{summary}; {e}")),
    }
}

/// A deployment, as the sync needs it to recognise its VMs by name.
struct Owner {
    deployment_id: String,
    team_id: String,
    configuration: String,
    per_vm: crate::domain::quota::Resources,
    /// The deploy worker still acts on it (and adopts its VMs itself).
    pending: bool,
    /// Declared failed because nothing appeared after a lost answer, recently enough that VMs
    /// turning up now are its own.
    failed_unconfirmed: bool,
}

async fn deployment_names(
    conn: &mut sqlx::SqliteConnection,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<HashMap<String, Owner>, sqlx::Error> {
    use sqlx::Row;
    let late_window = crate::store::time::to_db(at - crate::deploy::reconcile::LATE_ARRIVAL_WINDOW);
    let rows = sqlx::query(
        "SELECT id, team_id, upstream_name, configuration, vcpus, ram_gib, storage_gib, \
         (status IN ('queued', 'estimating', 'waiting_for_price', 'admitted', 'deploying', 'unknown') \
          OR (status = 'deployed' AND settled_at IS NULL) \
          OR (status = 'failed' AND reason_code = 'not_created' AND updated_at >= ?1)) AS pending, \
         (status = 'failed' AND reason_code = 'not_created' AND updated_at >= ?1) AS failed_unconfirmed \
         FROM deployments",
    )
    .bind(late_window)
    .fetch_all(conn)
    .await?;
    let mut owners = HashMap::new();
    for row in &rows {
        let count = |c: &str| -> Result<u64, sqlx::Error> {
            Ok(u64::try_from(row.try_get::<i64, _>(c)?).unwrap_or(0))
        };
        owners.insert(
            row.try_get("upstream_name")?,
            Owner {
                deployment_id: row.try_get("id")?,
                team_id: row.try_get("team_id")?,
                configuration: row.try_get("configuration")?,
                per_vm: crate::domain::quota::Resources {
                    vcpus: count("vcpus")?,
                    ram_gib: count("ram_gib")?,
                    storage_gib: count("storage_gib")?,
                },
                pending: row.try_get::<i64, _>("pending")? != 0,
                failed_unconfirmed: row.try_get::<i64, _>("failed_unconfirmed")? != 0,
            },
        );
    }
    Ok(owners)
}

/// Records a VM of a finished deployment that appeared late, owned by its team, with all its
/// charges (they are the team's).
async fn adopt_for(
    conn: &mut sqlx::SqliteConnection,
    owner: &Owner,
    vm: &RunningInstance,
    seen: &Sighting<'_>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    let id = vm.id.canonical();
    crate::store::deployments::insert_vm(
        &mut *conn,
        &crate::store::deployments::NewVm {
            id: &id,
            fluence_id: vm.id.as_str(),
            team_id: &owner.team_id,
            deployment_id: &owner.deployment_id,
            name: vm.vm_name.as_deref().unwrap_or(""),
            status: seen.status,
            price_per_epoch: vm.price_per_epoch,
            configuration: &owner.configuration,
            resources: owner.per_vm,
            expires_at: None,
            created_at: vm.created_at,
        },
    )
    .await?;
    tracing::warn!(vm = %id, deployment = %owner.deployment_id, "a VM of a finished deployment appeared late; adopted");
    vms::event(
        &mut *conn,
        &id,
        Some(&owner.team_id),
        "adopted_late",
        None,
        Some(seen.status),
        Some(json!({"deployment": owner.deployment_id})),
        at,
    )
    .await?;
    vms::observe(conn, &id, seen, at).await?;
    Ok(())
}

/// Deletes the provider-terminated VMs of teams whose policy says so: Fluence keeps their
/// reserved balance until they are deleted.
async fn finalize_terminated(state: &AppState) -> Result<usize, String> {
    let db = |e: sqlx::Error| format!("database: {e}");
    let due: Vec<JobDeletion> = {
        let mut conn = state.store.pool().acquire().await.map_err(db)?;
        vms::terminated_to_finalize(&mut conn).await.map_err(db)?
    };
    let (done, failures) =
        delete_for_job(state, &due, "job:inventory", "terminated_by_provider").await?;
    if failures.is_empty() {
        Ok(done)
    } else {
        Err(format!(
            "finalizing terminated VMs: {}",
            failures.join("; ")
        ))
    }
}

/// A VM a job deletes: `(local id, team, Fluence id)`.
pub type JobDeletion = (String, Option<String>, String);

/// Deletes VMs for a job (the reaper, the finalizer): at Fluence first, then marked deleted
/// (which releases their commitment), each audited and recorded as an event with `cause`.
/// Returns how many were deleted and what failed.
pub async fn delete_for_job(
    state: &AppState,
    due: &[JobDeletion],
    actor: &str,
    cause: &str,
) -> Result<(usize, Vec<String>), String> {
    let db = |e: sqlx::Error| format!("database: {e}");
    if due.is_empty() {
        return Ok((0, Vec::new()));
    }
    let local: Vec<String> = due.iter().map(|(id, _, _)| id.clone()).collect();
    observe_before_delete(state, &local).await?;
    let targets: Vec<(String, String)> = due
        .iter()
        .map(|(id, _, fluence_id)| (id.clone(), fluence_id.clone()))
        .collect();
    let (gone, failures) = delete_at_fluence(state, &targets).await?;
    let at = now();
    let mut tx = state.store.begin_write().await.map_err(|e| e.to_string())?;
    let mut done = 0;
    for (id, team, _) in due.iter().filter(|(id, _, _)| gone.contains(id)) {
        if !vms::mark_deleted(&mut tx, id, at).await.map_err(db)? {
            continue;
        }
        done += 1;
        let detail = json!({"cause": cause});
        vms::event(
            &mut tx,
            id,
            team.as_deref(),
            "deleted",
            None,
            Some("Deleted"),
            Some(detail),
            at,
        )
        .await
        .map_err(db)?;
        audit::record(
            &mut tx,
            NewAuditEntry {
                actor,
                actor_role: "system",
                action: "vm.delete",
                target_type: "vm",
                target_id: id,
                team_id: team.as_deref(),
                before: None,
                after: Some(json!({"status": "Deleted", "cause": cause})),
                request_id: None,
            },
            at,
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok((done, failures))
}

/// Deletes VMs at Fluence, given as `(local id, Fluence id)`: one call for the batch; if it
/// fails (one VM already gone can fail it whole), Fluence's list says which are left, and those
/// are deleted one by one. Returns the local ids that are gone at Fluence now, and what failed.
pub async fn delete_at_fluence(
    state: &AppState,
    vms: &[(String, String)],
) -> Result<(Vec<String>, Vec<String>), String> {
    let ids: Vec<VmId> = vms.iter().map(|(_, f)| VmId::new(f.clone())).collect();
    if ids.is_empty() || state.fluence.delete_vms(&ids).await.is_ok() {
        return Ok((vms.iter().map(|(id, _)| id.clone()).collect(), Vec::new()));
    }
    let listed = listed_ids(state).await?;
    let mut failures = Vec::new();
    for (id, fluence_id) in vms.iter().filter(|(id, _)| listed.contains(id)) {
        let one = [VmId::new(fluence_id.clone())];
        if let Err(error) = state.fluence.delete_vms(&one).await {
            failures.push(format!("{id}: {error}"));
        }
    }
    let still_there = if failures.is_empty() {
        Vec::new()
    } else {
        listed_ids(state).await?
    };
    let gone = vms
        .iter()
        .map(|(id, _)| id.clone())
        .filter(|id| !still_there.contains(id))
        .collect();
    Ok((gone, failures))
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

/// Brings the given VMs up to date from Fluence's list right now, so that a charge made since
/// the last sync is in the ledger before they are deleted (nothing can be observed after).
pub async fn observe_before_delete(state: &AppState, ids: &[String]) -> Result<(), String> {
    let db = |e: sqlx::Error| format!("database: {e}");
    // Taken before the call, as in `sync`: the listing may predate anything recorded since.
    let at = now();
    let listing = state
        .fluence
        .list_vms()
        .await
        .map_err(|e| format!("listing Fluence's VMs: {e}"))?;
    let mut tx = state.store.begin_write().await.map_err(|e| e.to_string())?;
    for vm in listing.iter().filter(|vm| ids.contains(&vm.id.canonical())) {
        vms::observe(&mut tx, &vm.id.canonical(), &sighting_of(vm), at)
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}
