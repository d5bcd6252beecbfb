//! The deploy worker's run: advance every deployment that can move (a bounded number at once),
//! then settle what only Fluence's list can settle. Between runs, a submitted deployment wakes
//! the worker at once ([`Wake`]), for the advancing part only.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::deploy::StepError;
use crate::deploy::reconcile::{self, Listing};
use crate::deploy::worker;
use crate::domain::deployment::Status;
use crate::state::AppState;
use crate::store::deployments::{self, Deployment};

/// A deployment submitted between two runs would otherwise wait up to `deployer_interval_secs`
/// before it is even estimated; the submission wakes the worker instead, which claims every
/// queued deployment in one transaction and advances each in a task of its own, without
/// waiting for the others (a slow one holds up none). Fluence's list, which settles what was
/// forwarded, is asked for on the schedule alone, so a burst of submissions is not a burst of
/// list calls.
pub struct Wake {
    submitted: Notify,
    /// Deployments a task of this process is advancing: the scheduled run leaves them alone.
    in_flight: Mutex<HashSet<String>>,
    /// Signalled whenever a task gives a deployment back.
    released: Notify,
    /// `deployer_concurrency`, shared by the scheduled and the woken tasks.
    permits: Semaphore,
}

impl Wake {
    pub fn new(concurrency: u32) -> Wake {
        Wake {
            submitted: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
            released: Notify::new(),
            permits: Semaphore::new(concurrency.max(1) as usize),
        }
    }

    /// Called once a submitted deployment is committed. Wakes made while the worker is busy
    /// are kept as one: it then claims every deployment submitted meanwhile.
    pub fn submitted(&self) {
        self.submitted.notify_one();
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A deployment taken up by a task; given back when the task ends, however it ends.
struct Claim {
    state: AppState,
    id: String,
}

impl Claim {
    /// `None` if a task already has it.
    fn take(state: &AppState, id: &str) -> Option<Claim> {
        state
            .deployer_wake
            .in_flight()
            .insert(id.to_owned())
            .then(|| Claim {
                state: state.clone(),
                id: id.to_owned(),
            })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.state.deployer_wake.in_flight().remove(&self.id);
        self.state.deployer_wake.released.notify_waiters();
    }
}

/// Waits until no task is advancing any of `ids`.
async fn until_released(wake: &Wake, ids: &[String]) {
    loop {
        // Registered before the check, so a release between the two is not missed.
        let released = wake.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        if ids.iter().all(|id| !wake.in_flight().contains(id)) {
            return;
        }
        released.await;
    }
}

type Advanced = (String, Result<Status, StepError>);

/// Starts a task advancing each deployment no task has yet.
fn take_up(state: &AppState, movable: Vec<Deployment>, tasks: &mut JoinSet<Advanced>) {
    for deployment in movable {
        let Some(claim) = Claim::take(state, &deployment.id) else {
            continue;
        };
        let state = state.clone();
        tasks.spawn(async move {
            let _claim = claim;
            let _permit = state.deployer_wake.permits.acquire().await;
            let id = deployment.id.clone();
            (id, worker::advance(&state, deployment).await)
        });
    }
}

fn failure(joined: Result<Advanced, tokio::task::JoinError>) -> Option<String> {
    match joined {
        Ok((_, Ok(_))) => None,
        Ok((id, Err(error))) => Some(format!("{id}: {error}")),
        Err(panic) => Some(format!("a deployment step panicked: {panic}")),
    }
}

/// Advances what submissions wake the worker for, until `stop` is cancelled; then lets the
/// steps in progress end (each is short and durable; the caller bounds the wait).
pub async fn advance_when_woken(state: AppState, stop: CancellationToken) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = state.deployer_wake.submitted.notified() => {
                let claimed = match state.store.begin_write().await {
                    Ok(mut tx) => match deployments::claim_queued(&mut tx, crate::store::time::now()).await {
                        Ok(claimed) => tx.commit().await.map(|()| claimed).map_err(|e| e.to_string()),
                        Err(error) => Err(error.to_string()),
                    },
                    Err(error) => Err(error.to_string()),
                };
                match claimed {
                    Ok(claimed) => take_up(&state, claimed, &mut tasks),
                    // The deployments stay queued; the scheduled run takes them.
                    Err(error) => tracing::warn!(%error, "claiming submitted deployments failed"),
                }
            }
            Some(joined) = tasks.join_next() => {
                if let Some(error) = failure(joined) {
                    tracing::warn!(%error, "deployment step failed; the next run retries it");
                }
            }
        }
    }
    while let Some(joined) = tasks.join_next().await {
        if let Some(error) = failure(joined) {
            tracing::warn!(%error, "deployment step failed; the next run retries it");
        }
    }
}

/// Advances every deployment that can move before forwarding and that no task has yet, a
/// bounded number at once, and waits for them and for those other tasks had. Returns how many
/// were movable and the errors of those it advanced that could not move.
async fn advance_movable(state: &AppState) -> (usize, Vec<String>) {
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
    let listed: Vec<String> = movable.iter().map(|d| d.id.clone()).collect();
    let mut tasks = JoinSet::new();
    take_up(state, movable, &mut tasks);
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        errors.extend(failure(joined));
    }
    // Those a woken task had: the run ends when they have moved as far as they can too, so
    // that a run asked for (`POST /v1/jobs/deployer/run`) still means "everything movable has
    // moved". Those woken later do not hold it up.
    until_released(&state.deployer_wake, &listed).await;
    (listed.len(), errors)
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
