//! The reliability suite of RELIABILITY.md: every scenario driven against real processes (the
//! gateway binary, the standalone simulator binary, kill -9 and restart) and judged by the
//! invariant checker against the simulator's ground truth, ending with the report card of
//! section 4.6.
//!
//! `cargo test` runs the `quick` profile (small N) with the other tests. The `full` profile
//! runs every scenario at the N its table names:
//!
//! ```text
//! RELIABILITY_PROFILE=full cargo test --release --locked --test reliability
//! ```
//!
//! Other settings: `RELIABILITY_SEED` (default: from the clock, printed in every row),
//! `RELIABILITY_ONLY=C1,B1` (only the scenarios whose id starts with one of these), and
//! `RELIABILITY_REPORT=FILE` (also write the card there). The card is always written to
//! `target/tmp/reliability/report-<profile>.md`. The process exits non-zero if any row fails,
//! and its last line is `reliability: N passed, M failed`.
//!
//! A row on a `seeded` build runs the same scenario with a deliberate bug switched on by a
//! failpoint (check-then-act admission, a recovery that re-sends): it passes only if the
//! scenario caught the bug, which proves the scenario can fail.

mod budget;
mod check;
mod crash;
mod floods;
mod guard;
mod hostile;
mod report;
mod secrets;
mod storage;
mod upstream;
mod world;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use report::{Profile, Row};
use world::Suite;

pub type Run = fn(Arc<Suite>) -> Pin<Box<dyn Future<Output = Vec<Row>> + Send>>;

/// One scenario of the suite: its id (as RELIABILITY.md names it) and how to run it. Each
/// module lists its own in a `SCENARIOS` constant.
pub struct Scenario {
    pub id: &'static str,
    pub invariant: &'static str,
    pub run: Run,
}

/// Every scenario, in the order they run. J1 is not here: it sweeps what all of them left.
const GROUPS: &[&[Scenario]] = &[
    budget::SCENARIOS,
    storage::SCENARIOS,
    hostile::SCENARIOS,
    upstream::SCENARIOS,
    crash::SCENARIOS,
    guard::SCENARIOS,
    floods::SCENARIOS,
];

fn main() -> ExitCode {
    let profile = match Profile::from_env() {
        Ok(profile) => profile,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::FAILURE;
        }
    };
    let seed = std::env::var("RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(1)
        });
    let only: Vec<String> = std::env::var("RELIABILITY_ONLY")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_uppercase())
        .filter(|s| !s.is_empty())
        .collect();
    let selected = |id: &str| only.is_empty() || only.iter().any(|o| id.starts_with(o.as_str()));

    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reliability");
    let run_dir = root.join(format!("{}-{seed}", profile.name()));
    let _ = std::fs::remove_dir_all(&run_dir);
    let suite = match Suite::new(profile, seed, run_dir.clone()) {
        Ok(suite) => Arc::new(suite),
        Err(e) => {
            eprintln!("reliability: cannot create {}: {e}", run_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("reliability: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    eprintln!(
        "reliability: profile {}, seed {seed}, run directory {}",
        profile.name(),
        run_dir.display()
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    // Every scenario is bounded: a hang is a failure, not a stuck CI run.
    let bound = Duration::from_secs(profile.pick(8 * 60, 40 * 60));
    for scenario in GROUPS
        .iter()
        .flat_map(|group| group.iter())
        .filter(|s| selected(s.id))
    {
        let began = Instant::now();
        eprintln!("reliability: {} ...", scenario.id);
        let outcome = runtime.block_on(async {
            let task = tokio::spawn((scenario.run)(suite.clone()));
            tokio::time::timeout(bound, task).await
        });
        let produced = match outcome {
            Ok(Ok(rows)) => rows,
            Ok(Err(joined)) => vec![broken(scenario, seed, panic_text(joined))],
            Err(_) => vec![broken(
                scenario,
                seed,
                format!("did not finish within {bound:?}"),
            )],
        };
        for row in &produced {
            eprintln!(
                "reliability: {} {} in {:.1} s: runs {}, bad {}, {}{}",
                row.scenario,
                if row.passed() { "passed" } else { "FAILED" },
                began.elapsed().as_secs_f64(),
                row.runs,
                row.bad,
                row.figures,
                row.failure
                    .as_deref()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default()
            );
        }
        rows.extend(produced);
    }
    if selected("J1") {
        rows.push(runtime.block_on(secrets::j1_sweep(&suite)));
    }

    let header = format!(
        "## Reliability report card: profile `{}`, seed {seed}\n\n{} on {} cores, {:.0} s in all, gateway `{}` test build",
        profile.name(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64(),
        env!("CARGO_PKG_VERSION"),
    );
    let card = report::render(profile, &rows, &header);
    println!("{card}");
    let mut targets = vec![root.join(format!("report-{}.md", profile.name()))];
    if let Ok(extra) = std::env::var("RELIABILITY_REPORT") {
        targets.push(PathBuf::from(extra));
    }
    for target in targets {
        if let Err(e) = std::fs::write(&target, &card) {
            eprintln!("reliability: cannot write {}: {e}", target.display());
        }
    }

    let passed = rows.iter().filter(|r| r.passed()).count();
    let failed = rows.len() - passed;
    if failed == 0 {
        // Kept only when something failed: the logs and databases are the evidence.
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        eprintln!(
            "reliability: logs and databases kept in {}",
            run_dir.display()
        );
    }
    println!("reliability: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn broken(scenario: &Scenario, seed: u64, why: String) -> Row {
    let mut row = Row::new(scenario.id, scenario.invariant, seed);
    row.runs = 1;
    row.bad = 1;
    row.failure = Some(why);
    row
}

fn panic_text(joined: tokio::task::JoinError) -> String {
    match joined.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .map(|s| format!("panicked: {}", s.chars().take(2000).collect::<String>()))
            .unwrap_or_else(|| "panicked".to_owned()),
        Err(e) => format!("cancelled: {e}"),
    }
}
