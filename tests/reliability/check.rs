//! The invariant checker of RELIABILITY.md section 4.1: the gateway's SQLite file against the
//! simulator's ground truth (`/_sim/state`), after every run.
//!
//! It reads the database directly, not the API, so it judges what is stored rather than what
//! the gateway chooses to show. Call it once the run has settled and an inventory sync has
//! passed (the sync is what records VMs that appeared late).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use fluence_gateway::domain::money::Usdc;
use serde_json::Value;
use sqlx::Row;

use crate::world::{Gateway, WAIT, World};

/// What a run did wrong; all zero (and `integrity` = "ok") is a good run.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// VMs alive in the simulator that the gateway has no live record of, or that it records
    /// under the wrong deployment (I2).
    pub lost: u64,
    /// VMs the gateway shows as live that the simulator does not have (I2).
    pub phantom: u64,
    /// Deploy intents that reached the simulator more than once or produced more VMs than
    /// asked for (I1).
    pub dup: u64,
    /// Teams whose simulator charges exceed their cap (I3).
    pub overspend: u64,
    /// |open holds - what open deployments should hold|, in micro-USDC, summed over teams.
    pub drift_micros: i64,
    /// `PRAGMA integrity_check` (I8).
    pub integrity: String,
    /// One line per finding, for the failure message.
    pub details: Vec<String>,
}

impl Verdict {
    pub fn is_bad(&self) -> bool {
        self.lost + self.phantom + self.dup + self.overspend > 0
            || self.drift_micros != 0
            || self.integrity != "ok"
    }

    pub fn summary(&self) -> String {
        format!(
            "lost {} phantom {} dup {} overspend {} drift {} µUSDC integrity {}{}",
            self.lost,
            self.phantom,
            self.dup,
            self.overspend,
            self.drift_micros,
            self.integrity,
            if self.details.is_empty() {
                String::new()
            } else {
                format!(": {}", self.details.join("; "))
            }
        )
    }
}

/// Totals over many verdicts, for a report row.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub runs: u64,
    pub bad_runs: u64,
    pub lost: u64,
    pub phantom: u64,
    pub dup: u64,
    pub overspend: u64,
    pub drift_micros: i64,
    pub integrity_failures: u64,
    pub first_failure: Option<String>,
}

impl Tally {
    pub fn add(&mut self, verdict: &Verdict) {
        self.runs += 1;
        self.lost += verdict.lost;
        self.phantom += verdict.phantom;
        self.dup += verdict.dup;
        self.overspend += verdict.overspend;
        self.drift_micros += verdict.drift_micros.abs();
        self.integrity_failures += u64::from(verdict.integrity != "ok");
        if verdict.is_bad() {
            self.bad_runs += 1;
            if self.first_failure.is_none() {
                self.first_failure = Some(verdict.summary());
            }
        }
    }

    pub fn figures(&self) -> String {
        format!(
            "lost {}/{n}, duplicate sets {}/{n}, phantom {}, overspend {}, hold drift {} µUSDC, integrity_check failures {}/{n}",
            self.lost,
            self.dup,
            self.phantom,
            self.overspend,
            self.drift_micros,
            self.integrity_failures,
            n = self.runs
        )
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn micros(value: &Value) -> i64 {
    Usdc::parse(text(value)).map(Usdc::micros).unwrap_or(0)
}

struct Deployment {
    id: String,
    team: String,
    upstream_name: String,
    status: String,
    instances: i64,
    commitment: i64,
    settled: bool,
}

/// Statuses whose admission left money held until they settle.
fn holds_money(deployment: &Deployment) -> bool {
    match deployment.status.as_str() {
        "admitted" | "deploying" | "unknown" => true,
        "deployed" => !deployment.settled,
        _ => false,
    }
}

/// Compares the database at `db_path` with the simulator's `state`.
pub async fn check(db_path: &Path, state: &Value) -> Verdict {
    let url = format!("sqlite://{}", db_path.display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let mut verdict = Verdict {
        integrity: sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| format!("integrity_check failed to run: {e}")),
        ..Verdict::default()
    };

    let deployments: Vec<Deployment> = sqlx::query(
        "SELECT id, team_id, upstream_name, status, instances, \
                COALESCE(commitment_micros, 0) AS commitment, settled_at IS NOT NULL AS settled \
         FROM deployments",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_else(|e| panic!("read deployments: {e}"))
    .iter()
    .map(|row| Deployment {
        id: row.get("id"),
        team: row.get("team_id"),
        upstream_name: row.get("upstream_name"),
        status: row.get("status"),
        instances: row.get("instances"),
        commitment: row.get("commitment"),
        settled: row.get("settled"),
    })
    .collect();
    // id -> (deployment id, team, live)
    let vms: HashMap<String, (Option<String>, Option<String>, bool)> =
        sqlx::query("SELECT id, deployment_id, team_id, deleted_at IS NULL AS live FROM vms")
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("read vms: {e}"))
            .iter()
            .map(|row| {
                (
                    row.get::<String, _>("id").to_lowercase(),
                    (
                        row.get("deployment_id"),
                        row.get("team_id"),
                        row.get("live"),
                    ),
                )
            })
            .collect();
    let open_holds: Vec<(String, String, i64)> =
        sqlx::query("SELECT id, team_id, amount_micros FROM holds WHERE released_at IS NULL")
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("read holds: {e}"))
            .iter()
            .map(|row| (row.get("id"), row.get("team_id"), row.get("amount_micros")))
            .collect();
    let caps: HashMap<String, i64> = sqlx::query("SELECT id, budget_cap_micros FROM teams")
        .fetch_all(&pool)
        .await
        .unwrap_or_else(|e| panic!("read teams: {e}"))
        .iter()
        .map(|row| (row.get("id"), row.get("budget_cap_micros")))
        .collect();
    pool.close().await;

    let empty = Vec::new();
    let sim_vms = state["vms"].as_array().unwrap_or(&empty);
    let calls: Vec<&Value> = state["calls"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|c| c["method"] == "POST" && c["path"] == "/vms/v3")
        .collect();
    let by_name: HashMap<&str, &Deployment> = deployments
        .iter()
        .map(|d| (d.upstream_name.as_str(), d))
        .collect();

    // I1: one intent, at most one call and one set.
    for deployment in &deployments {
        let name = deployment.upstream_name.as_str();
        // A call Fluence answered with 429 provably created nothing, so the bounded retry
        // after it (RELIABILITY.md A4) is not a second send.
        let sends = calls
            .iter()
            .filter(|c| text(&c["body"]["vmConfiguration"]["name"]) == name)
            .filter(|c| c["status"] != 429)
            .count();
        let created = sim_vms
            .iter()
            .filter(|vm| text(&vm["name"]) == name)
            .count();
        if sends > 1 || created as i64 > deployment.instances {
            verdict.dup += 1;
            verdict.details.push(format!(
                "{name}: {sends} deploy calls, {created} VMs for {} instances",
                deployment.instances
            ));
        }
    }

    // I2: every live upstream VM is recorded, and on its own deployment when it has one.
    let mut live_upstream = HashSet::new();
    for vm in sim_vms.iter().filter(|vm| vm["deleted_at"].is_null()) {
        let id = text(&vm["id"]).to_lowercase();
        live_upstream.insert(id.clone());
        let owner = by_name.get(text(&vm["name"]));
        let recorded = vms.get(&id);
        let ok = match (owner, recorded) {
            (_, None) => false,
            (_, Some((_, _, false))) => false,
            (Some(owner), Some((deployment, _, true))) => {
                deployment.as_deref() == Some(owner.id.as_str())
            }
            // Not the gateway's name: recorded is enough (an unowned VM flagged to admins).
            (None, Some((_, _, true))) => true,
        };
        if !ok {
            verdict.lost += 1;
            verdict.details.push(format!(
                "VM {id} ({}) is live upstream but {}",
                text(&vm["name"]),
                match recorded {
                    None => "unknown to the gateway".to_owned(),
                    Some((d, _, live)) => format!("recorded as live={live} on {d:?}"),
                }
            ));
        }
    }
    for (id, (deployment, _, live)) in &vms {
        if *live && !live_upstream.contains(id) {
            verdict.phantom += 1;
            verdict.details.push(format!(
                "VM {id} of {deployment:?} is live in the gateway only"
            ));
        }
    }

    // I3: what the simulator charged each team's VMs stays within the team's cap.
    let team_of_vm: HashMap<String, &str> = sim_vms
        .iter()
        .filter_map(|vm| {
            let team = by_name.get(text(&vm["name"]))?.team.as_str();
            Some((text(&vm["id"]).to_lowercase(), team))
        })
        .collect();
    let mut charged: HashMap<&str, i64> = HashMap::new();
    for charge in state["charges"].as_array().unwrap_or(&empty) {
        if let Some(team) = team_of_vm.get(&text(&charge["vm_id"]).to_lowercase()) {
            *charged.entry(team).or_default() += micros(&charge["amount"]);
        }
    }
    for (team, total) in charged {
        let cap = caps.get(team).copied().unwrap_or(0);
        if total > cap {
            verdict.overspend += 1;
            verdict.details.push(format!(
                "team {team} charged {total} µUSDC over a cap of {cap}"
            ));
        }
    }

    // Holds: exactly the open deployments hold money, each its commitment.
    let mut expected: HashMap<&str, i64> = HashMap::new();
    for deployment in deployments.iter().filter(|d| holds_money(d)) {
        *expected.entry(deployment.team.as_str()).or_default() += deployment.commitment;
    }
    let mut held: HashMap<&str, i64> = HashMap::new();
    for (_, team, amount) in &open_holds {
        *held.entry(team.as_str()).or_default() += amount;
    }
    let teams: HashSet<&str> = expected.keys().chain(held.keys()).copied().collect();
    for team in teams {
        let drift = held.get(team).copied().unwrap_or(0) - expected.get(team).copied().unwrap_or(0);
        if drift != 0 {
            verdict.drift_micros += drift.abs();
            verdict.details.push(format!(
                "team {team} holds {drift:+} µUSDC more than its open deployments"
            ));
        }
    }
    verdict
}

/// Deployments the pipeline still owes a decision or a settlement.
async fn unsettled(db_path: &Path) -> i64 {
    let url = format!("sqlite://{}", db_path.display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let count = sqlx::query_scalar(
        "SELECT COUNT(*) FROM deployments WHERE status IN \
         ('queued', 'estimating', 'admitted', 'deploying', 'unknown') \
         OR (status = 'deployed' AND settled_at IS NULL)",
    )
    .fetch_one(&pool)
    .await
    .unwrap_or_else(|e| panic!("count unsettled deployments: {e}"));
    pool.close().await;
    count
}

/// Runs the deployer and the inventory sync until every deployment is decided and settled
/// (waiting-for-price ones aside), then once more so the sync has seen the final state.
/// Panics with the gateway's log tail if that takes longer than [`WAIT`].
pub async fn quiesce(world: &World, gateway: &Gateway) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        gateway.run_job("deployer").await;
        gateway.run_job("inventory").await;
        let left = unsettled(&world.db_path()).await;
        if left == 0 {
            gateway.run_job("inventory").await;
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} deployments still unsettled after {WAIT:?}:\n{}",
            gateway.log_tail(40)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
