//! The gateway's metrics, served by `GET /metrics` in the Prometheus text format (0.0.4).
//!
//! [`Metrics`] holds what only the running process knows: HTTP requests by route template,
//! method and status with their latency, and upstream (Fluence) calls by endpoint and outcome
//! with theirs. Everything else is read when scraped, so it can never drift from the truth:
//! per-team budget figures and VM counts from SQLite (one read transaction, one snapshot), and
//! each job's runs and last outcome from [`crate::jobs::Jobs`].
//!
//! The exposition is written by hand rather than with a metrics crate: the format is a few
//! line shapes (`# HELP`, `# TYPE`, `name{label="value"} value`), the gateway needs only
//! counters, gauges and fixed-bucket histograms, and the build is offline against the crates
//! already locked.
//!
//! Cardinality is bounded by construction. Label values come only from route templates (never
//! the raw path, which holds ids), a fixed set of method names, status codes, upstream
//! endpoint names, job names, team ids (created by admins) and VM statuses (the documented
//! set, anything else folded into `other`). Nothing a client sends becomes a label.
//!
//! Money appears here, and only here, as floating-point numbers, because Prometheus has no
//! other kind; they are formatted exactly from integer micro-USDC (`12.500000`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::admission::BudgetSnapshot;
use crate::fluence::error::{Endpoint, FluenceError};
use crate::jobs::JobStatus;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency buckets, in seconds as written in the `le` label, and in
/// nanoseconds for comparing. One set for HTTP and upstream alike: from a cached read
/// (milliseconds) to a slow deploy call (seconds); anything slower lands in `+Inf`.
const BUCKETS: [(&str, u64); 11] = [
    ("0.005", 5_000_000),
    ("0.01", 10_000_000),
    ("0.025", 25_000_000),
    ("0.05", 50_000_000),
    ("0.1", 100_000_000),
    ("0.25", 250_000_000),
    ("0.5", 500_000_000),
    ("1", 1_000_000_000),
    ("2.5", 2_500_000_000),
    ("5", 5_000_000_000),
    ("10", 10_000_000_000),
];

/// The bucket an observation falls in: the first whose bound is at least the duration, or the
/// last slot (`+Inf` only) past every bound. Buckets are stored per slot and summed into
/// Prometheus's cumulative form when rendered.
fn bucket_index(nanos: u64) -> usize {
    BUCKETS
        .iter()
        .position(|(_, bound)| nanos <= *bound)
        .unwrap_or(BUCKETS.len())
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// How an upstream call ended: the `outcome` label of `gateway_upstream_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// A 2xx whose body decoded.
    Ok,
    /// Fluence refused the call (4xx): it had no effect.
    Status4xx,
    /// Fluence failed (5xx): the call may or may not have taken effect.
    Status5xx,
    /// Any other status, e.g. a 3xx (redirects are not followed).
    StatusOther,
    /// No complete response: could not connect, timed out, connection reset, body cut off.
    Transport,
    /// A 2xx whose body was not what the endpoint returns (or was too large).
    Decode,
    /// The caller stopped waiting before the call ended (e.g. the readiness probe's timeout).
    Cancelled,
    /// The gateway's bulkhead or circuit breaker kept the call back; nothing was sent.
    HeldBack,
}

impl UpstreamOutcome {
    pub const ALL: [UpstreamOutcome; 8] = [
        UpstreamOutcome::Ok,
        UpstreamOutcome::Status4xx,
        UpstreamOutcome::Status5xx,
        UpstreamOutcome::StatusOther,
        UpstreamOutcome::Transport,
        UpstreamOutcome::Decode,
        UpstreamOutcome::Cancelled,
        UpstreamOutcome::HeldBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamOutcome::Ok => "ok",
            UpstreamOutcome::Status4xx => "status_4xx",
            UpstreamOutcome::Status5xx => "status_5xx",
            UpstreamOutcome::StatusOther => "status_other",
            UpstreamOutcome::Transport => "transport",
            UpstreamOutcome::Decode => "decode",
            UpstreamOutcome::Cancelled => "cancelled",
            UpstreamOutcome::HeldBack => "held_back",
        }
    }

    /// The outcome of a finished call.
    pub fn of<T>(result: &Result<T, FluenceError>) -> UpstreamOutcome {
        match result {
            Ok(_) => UpstreamOutcome::Ok,
            Err(FluenceError::Status { status, .. }) => match status {
                400..=499 => UpstreamOutcome::Status4xx,
                500..=599 => UpstreamOutcome::Status5xx,
                _ => UpstreamOutcome::StatusOther,
            },
            Err(FluenceError::Transport { .. }) => UpstreamOutcome::Transport,
            Err(FluenceError::Decode { .. }) => UpstreamOutcome::Decode,
            Err(FluenceError::HeldBack { .. }) => UpstreamOutcome::HeldBack,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A histogram of atomics, for the upstream series whose label set is fixed up front. Its
/// `_count` is rendered as the sum of its buckets, so `+Inf == _count` holds in every scrape
/// even while observations land concurrently (`_sum` may then lag by one observation).
struct AtomicHistogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    fn new() -> Self {
        AtomicHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, duration: Duration) {
        let nanos = nanos(duration);
        self.buckets[bucket_index(nanos)].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's values: observations per bucket slot (not cumulative) and their sum.
#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len() + 1],
    sum_nanos: u64,
}

impl Histogram {
    fn observe(&mut self, duration: Duration) {
        let nanos = nanos(duration);
        self.buckets[bucket_index(nanos)] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
    }
}

struct UpstreamSeries {
    outcomes: [AtomicU64; UpstreamOutcome::ALL.len()],
    duration: AtomicHistogram,
}

/// The HTTP series of one route template and method.
#[derive(Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    duration: Histogram,
}

/// The process's own counters and histograms. One per process, shared by the HTTP layer and
/// the Fluence client through an `Arc`.
pub struct Metrics {
    /// Keyed by (route template, method). The set of routes and statuses is found as requests
    /// arrive, so it sits behind a mutex held for a few increments; rendering takes a
    /// consistent copy under the same lock.
    http: Mutex<BTreeMap<(String, &'static str), RouteStats>>,
    /// One per [`Endpoint::ALL`] entry, in that order: a fixed set, so plain atomics, and every
    /// endpoint shows from the first scrape with zeros (so `rate()` sees its first call).
    upstream: Vec<UpstreamSeries>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            http: Mutex::new(BTreeMap::new()),
            upstream: Endpoint::ALL
                .iter()
                .map(|_| UpstreamSeries {
                    outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
                    duration: AtomicHistogram::new(),
                })
                .collect(),
        }
    }

    /// Records one answered request. `route` must be a route template (or `unmatched`) and
    /// `method` one of [`method_label`]'s values: both become labels.
    pub fn observe_http(&self, route: &str, method: &'static str, status: u16, took: Duration) {
        let mut http = self.http.lock().unwrap_or_else(|p| p.into_inner());
        let stats = http.entry((route.to_owned(), method)).or_default();
        *stats.by_status.entry(status).or_default() += 1;
        stats.duration.observe(took);
    }

    fn upstream_series(&self, endpoint: Endpoint) -> Option<&UpstreamSeries> {
        let index = Endpoint::ALL.iter().position(|e| *e == endpoint)?;
        self.upstream.get(index)
    }

    /// Records one finished upstream call.
    pub fn observe_upstream(&self, endpoint: Endpoint, outcome: UpstreamOutcome, took: Duration) {
        if let Some(series) = self.upstream_series(endpoint) {
            series.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
            series.duration.observe(took);
        }
    }

    /// Starts timing an upstream call; the guard records it when told how it ended, or as
    /// [`UpstreamOutcome::Cancelled`] if it is dropped first (the caller's future was dropped
    /// mid-call, as a timeout around the call does).
    pub fn start_upstream(&self, endpoint: Endpoint) -> UpstreamCall<'_> {
        UpstreamCall {
            metrics: self,
            endpoint,
            started: std::time::Instant::now(),
            finished: false,
        }
    }

    /// The whole exposition: the process's own series, the jobs', and the database's when
    /// `database` is `Some` (`gateway_metrics_db_up` says whether it could be read).
    pub fn render(&self, jobs: &[JobStatus], database: Option<&DatabaseSnapshot>) -> String {
        let mut out = Exposition::default();
        self.render_http(&mut out);
        self.render_upstream(&mut out);
        render_jobs(&mut out, jobs);
        render_database(&mut out, database);
        out.text
    }

    fn render_http(&self, out: &mut Exposition) {
        let http = self
            .http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(key, stats)| (key.clone(), stats.by_status.clone(), stats.duration.clone()))
            .collect::<Vec<_>>();
        out.family(
            "gateway_http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status.",
        );
        for ((route, method), by_status, _) in &http {
            for (status, count) in by_status {
                out.sample(
                    "gateway_http_requests_total",
                    &[
                        ("route", route),
                        ("method", method),
                        ("status", &status.to_string()),
                    ],
                    &count.to_string(),
                );
            }
        }
        out.family(
            "gateway_http_request_duration_seconds",
            "histogram",
            "Time from receiving a request to its response headers, by route template and method.",
        );
        for ((route, method), _, duration) in &http {
            out.histogram(
                "gateway_http_request_duration_seconds",
                &[("route", route), ("method", method)],
                duration,
            );
        }
    }

    fn render_upstream(&self, out: &mut Exposition) {
        out.family(
            "gateway_upstream_requests_total",
            "counter",
            "Calls to the Fluence API by endpoint and outcome (ok, status_4xx, status_5xx, \
             status_other, transport, decode, cancelled, held_back).",
        );
        for (endpoint, series) in Endpoint::ALL.iter().zip(&self.upstream) {
            let endpoint = endpoint.to_string();
            for outcome in UpstreamOutcome::ALL {
                let count = series.outcomes[outcome.index()].load(Ordering::Relaxed);
                out.sample(
                    "gateway_upstream_requests_total",
                    &[("endpoint", &endpoint), ("outcome", outcome.as_str())],
                    &count.to_string(),
                );
            }
        }
        out.family(
            "gateway_upstream_request_duration_seconds",
            "histogram",
            "Duration of calls to the Fluence API, response body included, by endpoint.",
        );
        for (endpoint, series) in Endpoint::ALL.iter().zip(&self.upstream) {
            out.histogram(
                "gateway_upstream_request_duration_seconds",
                &[("endpoint", &endpoint.to_string())],
                &series.duration.snapshot(),
            );
        }
    }
}

/// The upstream guard's state (`fluence::guard`): calls out against the bulkhead's size, and
/// whether the breaker holds calls back.
pub fn render_guard(guard: &crate::fluence::guard::UpstreamGuard) -> String {
    render_gauges(&[
        (
            "gateway_upstream_in_flight",
            "Calls to the Fluence API out now.",
            guard.in_flight(),
        ),
        (
            "gateway_upstream_max_in_flight",
            "The bulkhead's size: calls beyond it are refused at once (outcome held_back).",
            guard.config().max_in_flight,
        ),
        (
            "gateway_upstream_breaker_open",
            "Whether repeated failures keep calls to Fluence held back until a probe succeeds (1) or not (0).",
            usize::from(guard.is_open()),
        ),
    ])
}

/// Gauges without labels, each `(name, help, value)`.
fn render_gauges(gauges: &[(&str, &str, usize)]) -> String {
    render_plain("gauge", gauges)
}

/// Families of one unlabelled sample each, of one type.
fn render_plain<T: std::fmt::Display>(kind: &str, samples: &[(&str, &str, T)]) -> String {
    let mut out = Exposition::default();
    for (name, help, value) in samples {
        out.family(name, kind, help);
        out.sample(name, &[], &value.to_string());
    }
    out.text
}

/// The admission step's batches (`deploy::admissions`): decisions over batches is the mean
/// batch size, how many admissions shared each write transaction.
pub fn render_admissions(admissions: &crate::deploy::admissions::Admissions) -> String {
    let (batches, decisions) = admissions.counts();
    render_plain(
        "counter",
        &[
            (
                "gateway_admission_batches_total",
                "Write transactions in which the deploy worker decided admissions.",
                batches,
            ),
            (
                "gateway_admission_decisions_total",
                "Admissions decided (admitted or rejected) in those transactions.",
                decisions,
            ),
        ],
    )
}

/// The store's grouped commits (`store::script`): scripts over commits is the mean group size,
/// how many pipeline writes shared each transaction and its `fsync`.
pub fn render_script_commits((commits, scripts): (u64, u64)) -> String {
    render_plain(
        "counter",
        &[
            (
                "gateway_write_group_commits_total",
                "Write transactions that committed a group of the pipeline's scripts.",
                commits,
            ),
            (
                "gateway_write_group_scripts_total",
                "Scripts (a submission, an intent to send, a deploy's result) committed in them.",
                scripts,
            ),
        ],
    )
}

/// The keyed rate limiters' state: entries held across the per-key, per-team and
/// failed-authentication limiters. Pruning keeps it bounded however many distinct keys or
/// addresses have been seen (RELIABILITY G2); this gauge shows that it does.
pub fn render_limits(limits: &crate::http::limits::RateLimits) -> String {
    render_gauges(&[(
        "gateway_rate_limiter_entries",
        "Entries held by the keyed rate limiters (per key, per team, failed authentication per address).",
        limits.tracked(),
    )])
}

/// Keys held by the in-memory key cache (`auth::cache`), at most its configured size.
pub fn render_key_cache(keys: &crate::auth::cache::KeyCache) -> String {
    render_gauges(&[(
        "gateway_key_cache_entries",
        "Keys checked recently and held in memory, so that their next check reads no database.",
        keys.len(),
    )])
}

/// Times one upstream call; see [`Metrics::start_upstream`].
pub struct UpstreamCall<'a> {
    metrics: &'a Metrics,
    endpoint: Endpoint,
    started: std::time::Instant,
    finished: bool,
}

impl UpstreamCall<'_> {
    pub fn finish(mut self, outcome: UpstreamOutcome) {
        self.finished = true;
        self.metrics
            .observe_upstream(self.endpoint, outcome, self.started.elapsed());
    }
}

impl Drop for UpstreamCall<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.metrics.observe_upstream(
                self.endpoint,
                UpstreamOutcome::Cancelled,
                self.started.elapsed(),
            );
        }
    }
}

/// The `method` label: the standard methods by name and anything else as `other`, since the
/// method is the client's to choose and must not open the label set.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn render_jobs(out: &mut Exposition, jobs: &[JobStatus]) {
    type Read = fn(&JobStatus) -> Option<String>;
    let families: [(&str, &str, &str, Read); 6] = [
        (
            "gateway_job_runs_total",
            "counter",
            "Runs of each background job since start, scheduled and on demand.",
            |job| Some(job.runs.to_string()),
        ),
        (
            "gateway_job_failures_total",
            "counter",
            "Runs of each background job that ended in an error.",
            |job| Some(job.failures.to_string()),
        ),
        (
            "gateway_job_running",
            "gauge",
            "1 while a run of the job is in progress.",
            |job| Some(u8::from(job.running).to_string()),
        ),
        (
            "gateway_job_last_run_timestamp_seconds",
            "gauge",
            "When the job's last run finished (Unix time); absent before its first run.",
            |job| job.last_finished_at.map(timestamp),
        ),
        (
            "gateway_job_last_duration_seconds",
            "gauge",
            "How long the job's last run took; absent before its first run.",
            |job| job.last_duration_ms.map(|ms| fixed(i128::from(ms), 3)),
        ),
        (
            "gateway_job_last_success",
            "gauge",
            "1 if the job's last run succeeded, 0 if it failed; absent before its first run.",
            |job| {
                job.last_outcome
                    .map(|outcome| u8::from(outcome == "ok").to_string())
            },
        ),
    ];
    for (name, kind, help, read) in families {
        out.family(name, kind, help);
        for job in jobs {
            if let Some(value) = read(job) {
                out.sample(name, &[("job", job.job.as_str())], &value);
            }
        }
    }
}

/// What the database says at scrape time, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct DatabaseSnapshot {
    /// Live teams in id order, with their budget figures for the current period.
    pub teams: Vec<(String, BudgetSnapshot)>,
    /// Live VMs (not deleted) counted by (team id, `""` for unowned, status label).
    pub vms: BTreeMap<(String, String), u64>,
    /// Budget alert thresholds crossed in each team's current period, as (team id, percent).
    pub alerts: Vec<(String, u8)>,
}

/// Teams read per query while walking the list; all pages come from the same transaction.
const TEAM_PAGE: u32 = 500;

/// Reads the per-team budget figures and the VM counts in one read transaction, so that they
/// describe one moment (in WAL mode a read transaction sees one snapshot): a settlement
/// committing meanwhile is counted once, as a hold or as a commitment, never both or neither.
pub async fn read_database(store: &crate::store::Store) -> Result<DatabaseSnapshot, sqlx::Error> {
    let mut snapshot = store.pool().begin().await?;
    let now = crate::store::time::now();
    let mut teams = Vec::new();
    let mut alerts = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = crate::store::teams::list(&mut snapshot, after.as_deref(), TEAM_PAGE).await?;
        let full = page.len() == TEAM_PAGE as usize;
        for team in &page {
            let standing = crate::store::budget::standing(&mut snapshot, team, now).await?;
            teams.push((team.id.as_str().to_owned(), standing.budget));
            for threshold in crate::store::budget::alerts_fired(
                &mut snapshot,
                team.id.as_str(),
                standing.period_start,
            )
            .await?
            {
                alerts.push((team.id.as_str().to_owned(), threshold));
            }
        }
        match page.last() {
            Some(last) if full => after = Some(last.id.as_str().to_owned()),
            _ => break,
        }
    }
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT COALESCE(team_id, ''), status, COUNT(*) FROM vms \
         WHERE deleted_at IS NULL GROUP BY team_id, status",
    )
    .fetch_all(&mut *snapshot)
    .await?;
    let mut vms = BTreeMap::new();
    for (team, status, count) in rows {
        let label = vm_status_label(&status).to_owned();
        *vms.entry((team, label)).or_default() += u64::try_from(count).unwrap_or(0);
    }
    snapshot.rollback().await?;
    Ok(DatabaseSnapshot { teams, vms, alerts })
}

/// The VM statuses always shown (with zeros) for every team: Fluence's documented set.
/// `Deleted` is not among them because deleted VMs are history, not inventory.
const VM_STATUSES: [&str; 7] = [
    "New",
    "Launching",
    "Active",
    "SmallBalance",
    "InsufficientFunds",
    "Terminated",
    "Stopped",
];

/// The `status` label of a stored VM status: one of [`VM_STATUSES`], or `other` for anything
/// Fluence may invent, so an upstream novelty cannot open the label set.
pub fn vm_status_label(stored: &str) -> &'static str {
    VM_STATUSES
        .iter()
        .find(|known| known.eq_ignore_ascii_case(stored))
        .copied()
        .unwrap_or("other")
}

fn render_database(out: &mut Exposition, database: Option<&DatabaseSnapshot>) {
    out.family(
        "gateway_metrics_db_up",
        "gauge",
        "1 if this scrape could read the database; 0 if not, and the team and VM series are missing.",
    );
    out.sample(
        "gateway_metrics_db_up",
        &[],
        if database.is_some() { "1" } else { "0" },
    );
    let Some(database) = database else {
        return;
    };
    type Field = fn(&BudgetSnapshot) -> i64;
    let budget: [(&str, &str, Field); 4] = [
        (
            "gateway_team_budget_cap_usdc",
            "The team's budget cap for the period, in USDC.",
            |b| b.cap.micros(),
        ),
        (
            "gateway_team_budget_spent_usdc",
            "Charges observed in the team's current period, in USDC.",
            |b| b.spent.micros(),
        ),
        (
            "gateway_team_budget_committed_usdc",
            "What the team's live VMs will still be charged before the period ends, in USDC.",
            |b| b.committed.micros(),
        ),
        (
            "gateway_team_budget_reserved_usdc",
            "Holds of the team's deployments admitted but not yet settled, in USDC.",
            |b| b.reserved.micros(),
        ),
    ];
    for (name, help, field) in budget {
        out.family(name, "gauge", help);
        for (team, snapshot) in &database.teams {
            out.sample(
                name,
                &[("team", team)],
                &fixed(i128::from(field(snapshot)), 6),
            );
        }
    }
    out.family(
        "gateway_team_budget_alert_fired",
        "gauge",
        "1 for each alert threshold (percent of the cap) the team crossed this period.",
    );
    for (team, threshold) in &database.alerts {
        out.sample(
            "gateway_team_budget_alert_fired",
            &[("team", team), ("threshold", &threshold.to_string())],
            "1",
        );
    }

    // Every live team shows every documented status, zeros included, so an alert on a count
    // falling to zero sees a zero rather than a vanished series.
    let mut vms: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (team, _) in &database.teams {
        for status in VM_STATUSES {
            vms.insert((team.as_str(), status), 0);
        }
    }
    for ((team, status), count) in &database.vms {
        *vms.entry((team.as_str(), status.as_str())).or_default() += count;
    }
    out.family(
        "gateway_vms",
        "gauge",
        "Live (not deleted) VMs by status and team; team=\"\" for VMs no team owns.",
    );
    for ((team, status), count) in vms {
        out.sample(
            "gateway_vms",
            &[("status", status), ("team", team)],
            &count.to_string(),
        );
    }
}

/// A fixed-point number: `value / 10^decimals` with exactly `decimals` digits after the point,
/// written from the integer so no float rounding can creep in (`12500000, 6` -> `12.500000`).
fn fixed(value: i128, decimals: u32) -> String {
    let sign = if value < 0 { "-" } else { "" };
    let magnitude = value.unsigned_abs();
    let scale = 10u128.pow(decimals);
    if decimals == 0 {
        return format!("{sign}{magnitude}");
    }
    format!(
        "{sign}{}.{:0width$}",
        magnitude / scale,
        magnitude % scale,
        width = decimals as usize
    )
}

/// Unix time in seconds with millisecond precision.
fn timestamp(at: DateTime<Utc>) -> String {
    fixed(i128::from(at.timestamp_millis()), 3)
}

/// Escapes a label value: backslash, double quote and line feed, as the format requires.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes `# HELP` text: backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The text being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, label_value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(label_value));
            }
            self.text.push('}');
        }
        self.text.push(' ');
        self.text.push_str(value);
        self.text.push('\n');
    }

    /// `_bucket` lines (cumulative, `+Inf` last), then `_sum` and `_count`; `_count` is the
    /// `+Inf` bucket by construction.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let bucket_name = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, count) in histogram.buckets.iter().enumerate() {
            cumulative += count;
            let le = BUCKETS.get(i).map_or("+Inf", |(le, _)| *le);
            let mut with_le = labels.to_vec();
            with_le.push(("le", le));
            self.sample(&bucket_name, &with_le, &cumulative.to_string());
        }
        self.sample(
            &format!("{name}_sum"),
            labels,
            &fixed(i128::from(histogram.sum_nanos), 9),
        );
        self.sample(&format!("{name}_count"), labels, &cumulative.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_is_exact() {
        assert_eq!(fixed(12_500_000, 6), "12.500000");
        assert_eq!(fixed(500_000_000, 6), "500.000000");
        assert_eq!(fixed(0, 6), "0.000000");
        assert_eq!(fixed(-1, 6), "-0.000001");
        assert_eq!(fixed(i128::from(i64::MIN), 6), "-9223372036854.775808");
        assert_eq!(fixed(1_234, 3), "1.234");
        assert_eq!(fixed(7, 0), "7");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(5_000_000), 0);
        assert_eq!(bucket_index(5_000_001), 1);
        assert_eq!(bucket_index(10_000_000_000), BUCKETS.len() - 1);
        assert_eq!(bucket_index(10_000_000_001), BUCKETS.len());
    }

    #[test]
    fn histograms_render_cumulative_buckets_ending_in_the_count() {
        let metrics = Metrics::new();
        metrics.observe_http("/v1/teams", "GET", 200, Duration::from_millis(1));
        metrics.observe_http("/v1/teams", "GET", 401, Duration::from_millis(30));
        metrics.observe_http("/v1/teams", "GET", 200, Duration::from_secs(11));
        let text = metrics.render(&[], None);
        assert!(text.contains(
            "gateway_http_requests_total{route=\"/v1/teams\",method=\"GET\",status=\"200\"} 2\n"
        ));
        assert!(text.contains(
            "gateway_http_request_duration_seconds_bucket{route=\"/v1/teams\",method=\"GET\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(
            "gateway_http_request_duration_seconds_bucket{route=\"/v1/teams\",method=\"GET\",le=\"0.05\"} 2\n"
        ));
        assert!(text.contains(
            "gateway_http_request_duration_seconds_bucket{route=\"/v1/teams\",method=\"GET\",le=\"10\"} 2\n"
        ));
        assert!(text.contains(
            "gateway_http_request_duration_seconds_bucket{route=\"/v1/teams\",method=\"GET\",le=\"+Inf\"} 3\n"
        ));
        assert!(text.contains(
            "gateway_http_request_duration_seconds_sum{route=\"/v1/teams\",method=\"GET\"} 11.031000000\n"
        ));
        assert!(text.contains(
            "gateway_http_request_duration_seconds_count{route=\"/v1/teams\",method=\"GET\"} 3\n"
        ));
        assert!(text.contains("gateway_metrics_db_up 0\n"));
        assert!(!text.contains("gateway_team_budget_cap_usdc{"));
    }

    #[test]
    fn a_dropped_upstream_call_counts_as_cancelled() {
        let metrics = Metrics::new();
        metrics
            .start_upstream(Endpoint::Countries)
            .finish(UpstreamOutcome::Ok);
        drop(metrics.start_upstream(Endpoint::Countries));
        let text = metrics.render(&[], None);
        assert!(text.contains(
            "gateway_upstream_requests_total{endpoint=\"GET /marketplace/countries\",outcome=\"ok\"} 1\n"
        ));
        assert!(text.contains(
            "gateway_upstream_requests_total{endpoint=\"GET /marketplace/countries\",outcome=\"cancelled\"} 1\n"
        ));
        assert!(text.contains(
            "gateway_upstream_request_duration_seconds_count{endpoint=\"GET /marketplace/countries\"} 2\n"
        ));
    }

    #[test]
    fn unknown_vm_statuses_fold_into_other() {
        assert_eq!(vm_status_label("ACTIVE"), "Active");
        assert_eq!(vm_status_label("Launching"), "Launching");
        assert_eq!(vm_status_label("Exploded"), "other");
    }
}
