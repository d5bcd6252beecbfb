//! The deploy worker's run: advance every deployment that can move (a bounded number at once),
//! then settle what only Fluence's list can settle. Between runs, a submitted deployment wakes
//! the worker at once ([`Wake`]), for the advancing part only.

use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::deploy::reconcile::{self, Listing};
use crate::deploy::worker;
use crate::domain::deployment::Status;
use crate::state::AppState;
use crate::store::deployments;

/// A deployment submitted between two runs would otherwise wait up to `deployer_interval_secs`
/// before it is even estimated; the submission wakes the worker instead. Only the advancing
/// part runs then: Fluence's list, which settles what was forwarded, is asked for on the
/// schedule alone, so a burst of submissions is not a burst of list calls.
#[derive(Default)]
pub struct Wake {
    submitted: Notify,
    /// One advancing pass at a time, scheduled or woken: two would race for the same
    /// deployments (harmlessly, each step being a compare-and-set, but for nothing).
    advancing: tokio::sync::Mutex<()>,
}

impl Wake {
    /// Called once a submitted deployment is committed. Wakes made during a pass are kept as
    /// one: the pass after it sees every deployment submitted meanwhile.
    pub fn submitted(&self) {
        self.submitted.notify_one();
    }
}

/// Advances what submissions wake the worker for, until `stop` is cancelled.
pub async fn advance_when_woken(state: AppState, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = state.deployer_wake.submitted.notified() => {}
        }
        let (_, errors) = advance_movable(&state).await;
        for error in errors {
            tracing::warn!(%error, "deployment step failed; the next run retries it");
        }
    }
}

/// Advances every deployment that can move before forwarding, a bounded number at once.
/// Returns how many it took up and the errors of those that could not move.
async fn advance_movable(state: &AppState) -> (usize, Vec<String>) {
    let _turn = state.deployer_wake.advancing.lock().await;
    let movable = {
        let conn = state.store.pool().acquire().await;
        match conn {
            Ok(mut conn) => deployments::movable(&mut conn).await,
            Err(error) => Err(error),
        }
    };
    let movable = match movable {
        Ok(movable) => movable,
        Err(error) => return (0, vec![format!("database: {error}")]),
    };
    let advanced = movable.len();
    let permits = Arc::new(Semaphore::new(
        state.settings.jobs.deployer_concurrency.max(1) as usize,
    ));
    let mut tasks = JoinSet::new();
    for deployment in movable {
        let state = state.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let id = deployment.id.clone();
            (id, worker::advance(&state, deployment).await)
        });
    }
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(_))) => {}
            Ok((id, Err(error))) => errors.push(format!("{id}: {error}")),
            Err(panic) => errors.push(format!("a deployment step panicked: {panic}")),
        }
    }
    (advanced, errors)
}

pub async fn run(state: &AppState) -> Result<String, String> {
    let (advanced, mut errors) = advance_movable(state).await;

    // What is left needs Fluence's list: answers lost, and holds not yet settled.
    let open = list_open(state).await?;
    let pending: Vec<_> = open
        .into_iter()
        .filter(|d| {
            matches!(
                d.status,
                Status::Unknown | Status::Deploying | Status::Deployed
            )
        })
        .collect();
    let late = {
        let mut conn = state
            .store
            .pool()
            .acquire()
            .await
            .map_err(|e| format!("database: {e}"))?;
        deployments::failed_unconfirmed(
            &mut conn,
            crate::store::time::now() - reconcile::LATE_ARRIVAL_WINDOW,
        )
        .await
        .map_err(|e| format!("database: {e}"))?
    };
    let (mut reconciled, mut settled, mut late_adopted) = (0, 0, 0);
    // Fluence's list is asked for only while a deployment waits on it; late arrivals of failed
    // deployments are looked for then, and by the inventory sync on its own schedule, so a
    // failure does not turn into a list call every second for days.
    if !pending.is_empty() {
        let listed_at = crate::store::time::now();
        match state.fluence.list_vms().await {
            Ok(vms) => {
                let listing = Listing::new(vms, listed_at);
                for deployment in &late {
                    match reconcile::adopt_late(state, deployment, &listing).await {
                        Ok(adopted) => late_adopted += usize::from(adopted),
                        Err(error) => errors.push(format!("{}: {error}", deployment.id)),
                    }
                }
                for deployment in &pending {
                    let outcome = if deployment.status == Status::Deployed {
                        reconcile::settle_deployed(state, deployment, &listing)
                            .await
                            .map(|done| settled += usize::from(done))
                    } else {
                        reconcile::settle_unknown(state, deployment, &listing)
                            .await
                            .map(|status| reconciled += usize::from(status != deployment.status))
                    };
                    if let Err(error) = outcome {
                        errors.push(format!("{}: {error}", deployment.id));
                    }
                }
            }
            Err(error) => errors.push(format!("listing Fluence's VMs: {error}")),
        }
    }
    let summary = format!(
        "{advanced} advanced, {reconciled} reconciled, {settled} settled, {late_adopted} adopted late, {} waiting on Fluence",
        pending.len().saturating_sub(reconciled + settled)
    );
    if errors.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{summary}; {}", errors.join("; ")))
    }
}

async fn list_open(state: &AppState) -> Result<Vec<deployments::Deployment>, String> {
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(|e| format!("database: {e}"))?;
    deployments::open(&mut conn)
        .await
        .map_err(|e| format!("database: {e}"))
}
