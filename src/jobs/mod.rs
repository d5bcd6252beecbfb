//! Background jobs (PRODUCT.md section 6): each runs on its interval and on demand
//! (`POST /v1/jobs/{job}/run`), one run at a time, and records its last run for `/v1/jobs`.
//! Every job is idempotent and keeps its progress in the database, so a restart resumes it.

pub mod catalog;
pub mod deployer;
pub mod prices;
mod reaper;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::config::JobSettings;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobName {
    Deployer,
    Inventory,
    Prices,
    Catalog,
    Reaper,
    Webhooks,
}

impl JobName {
    pub const ALL: [JobName; 6] = [
        JobName::Deployer,
        JobName::Inventory,
        JobName::Prices,
        JobName::Catalog,
        JobName::Reaper,
        JobName::Webhooks,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobName::Deployer => "deployer",
            JobName::Inventory => "inventory",
            JobName::Reaper => "reaper",
            JobName::Prices => "prices",
            JobName::Catalog => "catalog",
            JobName::Webhooks => "webhooks",
        }
    }

    pub fn parse(text: &str) -> Option<JobName> {
        JobName::ALL.into_iter().find(|job| job.as_str() == text)
    }

    fn interval(self, settings: &JobSettings) -> Duration {
        Duration::from_secs(match self {
            JobName::Deployer => settings.deployer_interval_secs,
            JobName::Inventory => settings.inventory_interval_secs,
            JobName::Prices => settings.prices_interval_secs,
            JobName::Catalog => settings.catalog_interval_secs,
            JobName::Reaper => settings.reaper_interval_secs,
            JobName::Webhooks => settings.webhooks_interval_secs,
        })
    }

    /// Whether the job's first run is at start-up or one interval later. The deployer and the
    /// reaper pick up what a previous process left, so they start at once. The others wait:
    /// the sampler's and the catalog's endpoints fetch on first use (`/v1/offers` samples when
    /// nothing was ever sampled, a stale catalog list is fetched when read), and the inventory
    /// and webhook work is not urgent, so a restart, or a crash loop, sends no burst of calls.
    fn runs_at_start(self) -> bool {
        matches!(self, JobName::Deployer | JobName::Reaper)
    }
}

/// A job's last run, as `GET /v1/jobs` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobStatus {
    pub job: JobName,
    pub interval_secs: u64,
    pub runs: u64,
    pub failures: u64,
    pub running: bool,
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_finished_at: Option<DateTime<Utc>>,
    pub last_duration_ms: Option<u64>,
    /// `ok` or `error`.
    pub last_outcome: Option<&'static str>,
    /// What the run did, or why it failed.
    pub last_detail: Option<String>,
}

struct Entry {
    /// One run at a time: a scheduled run and an on-demand one take turns.
    lock: tokio::sync::Mutex<()>,
    status: Mutex<JobStatus>,
}

pub struct Jobs {
    entries: Vec<(JobName, Entry)>,
}

impl Jobs {
    pub fn new(settings: &JobSettings) -> Jobs {
        let entries = JobName::ALL
            .into_iter()
            .map(|job| {
                let status = JobStatus {
                    job,
                    interval_secs: job.interval(settings).as_secs(),
                    runs: 0,
                    failures: 0,
                    running: false,
                    last_started_at: None,
                    last_finished_at: None,
                    last_duration_ms: None,
                    last_outcome: None,
                    last_detail: None,
                };
                (
                    job,
                    Entry {
                        lock: tokio::sync::Mutex::new(()),
                        status: Mutex::new(status),
                    },
                )
            })
            .collect();
        Jobs { entries }
    }

    fn entry(&self, job: JobName) -> &Entry {
        // Every name has an entry: `new` makes one for each of `JobName::ALL`.
        let found = self.entries.iter().find(|(name, _)| *name == job);
        match found {
            Some((_, entry)) => entry,
            None => unreachable!("job {} has no entry", job.as_str()),
        }
    }

    pub fn statuses(&self) -> Vec<JobStatus> {
        self.entries
            .iter()
            .map(|(_, entry)| lock(&entry.status).clone())
            .collect()
    }

    /// Runs the job now (after any run in progress) and returns how it went.
    pub async fn run(&self, state: &AppState, job: JobName) -> JobStatus {
        let entry = self.entry(job);
        let _turn = entry.lock.lock().await;
        let started_at = crate::store::time::now();
        {
            let mut status = lock(&entry.status);
            status.running = true;
            status.last_started_at = Some(started_at);
        }
        let clock = Instant::now();
        let outcome = match job {
            JobName::Deployer => deployer::run(state).await,
            JobName::Inventory => crate::inventory::sync(state).await,
            JobName::Reaper => reaper::run(state).await,
            JobName::Prices => prices::run(state).await,
            JobName::Catalog => catalog::run(state).await,
            JobName::Webhooks => crate::webhook::deliver_due(state).await,
        };
        let mut status = lock(&entry.status);
        status.running = false;
        status.runs += 1;
        status.last_finished_at = Some(crate::store::time::now());
        status.last_duration_ms =
            Some(u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX));
        match outcome {
            Ok(detail) => {
                status.last_outcome = Some("ok");
                status.last_detail = Some(detail);
            }
            Err(detail) => {
                tracing::warn!(job = job.as_str(), %detail, "job run failed");
                status.failures += 1;
                status.last_outcome = Some("error");
                status.last_detail = Some(detail);
            }
        }
        status.clone()
    }
}

fn lock(status: &Mutex<JobStatus>) -> std::sync::MutexGuard<'_, JobStatus> {
    status
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts every job on its interval, the first run right away for the jobs that resume work
/// (the deployer picks up whatever a previous process left) and after one interval for the
/// others (see [`JobName::runs_at_start`]), and the deployer's advancing part whenever a
/// deployment is submitted ([`deployer::Wake`]). They stop when `stop` is cancelled, between
/// runs.
pub fn spawn(state: &AppState, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
    let woken = tokio::spawn(deployer::advance_when_woken(state.clone(), stop.clone()));
    let scheduled = JobName::ALL.into_iter().map(|job| {
        let state = state.clone();
        let stop = stop.clone();
        let every = job.interval(&state.settings.jobs);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let first = if job.runs_at_start() {
                start
            } else {
                start.checked_add(every).unwrap_or(start)
            };
            let mut ticks = tokio::time::interval_at(first, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                // A run in progress finishes (each step is short and durable) unless the
                // shutdown grace runs out, which the caller enforces.
                state.jobs.run(&state, job).await;
            }
        })
    });
    std::iter::once(woken).chain(scheduled).collect()
}
