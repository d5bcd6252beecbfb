//! D: SQLite under load. D1 drives many concurrent writers through the gateway's own write
//! paths (team changes, key mints, deploys with their admission and settlement) with readers
//! running, and counts any busy or locked error a client sees; D3 watches the WAL while a spend
//! report is read over and over under writers; D5 starts the binary on settings its start-up
//! check must refuse.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::Scenario;
use crate::check::{self, Tally};
use crate::hostile::roomy_world;
use crate::report::{Row, latency_summary, percentile};
use crate::world::{Gateway, GatewayOptions, Suite, World, binary, deploy_body};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "D1",
        invariant: "I8",
        run: |suite| Box::pin(d1(suite)),
    },
    Scenario {
        id: "D3",
        invariant: "I8",
        run: |suite| Box::pin(d3(suite)),
    },
    Scenario {
        id: "D5",
        invariant: "I8",
        run: |suite| Box::pin(d5(suite)),
    },
];

/// What a writer or reader saw.
#[derive(Default)]
struct Seen {
    latencies: Vec<f64>,
    /// Answers that name SQLite's lock (`busy`, `locked`) or are any 5xx.
    surfaced: u64,
    /// Other answers than the one expected.
    unexpected: Vec<String>,
}

/// An answer that is a busy or locked error: a 5xx, or a refusal naming the lock. A success is
/// never one, whatever its body holds (a minted key's random secret can spell "busy": one full
/// D1 run counted such a 201 as an error).
fn surfaces_the_lock(status: u16, text: &str) -> bool {
    let text = text.to_lowercase();
    status >= 500
        || (!(200..300).contains(&status) && (text.contains("locked") || text.contains("busy")))
}

/// One write through a real path, chosen by `i`: a team rename, a cap change, a key mint, or a
/// deploy (which the deploy worker then admits, forwards and settles: reservation,
/// settlement and inventory writes in the background).
async fn one_write(gateway: &Gateway, team: &str, member: &str, i: usize) -> (u16, String) {
    let reply = match i % 5 {
        0 => {
            gateway
                .admin(
                    Method::PATCH,
                    &format!("/v1/teams/{team}"),
                    Some(&json!({"name": format!("{team} rename {i}")})),
                )
                .await
        }
        1 => {
            gateway
                .admin(
                    Method::PATCH,
                    &format!("/v1/teams/{team}"),
                    Some(&json!({"budget": {"cap": format!("{}", 100_000 + i)}})),
                )
                .await
        }
        2 => {
            gateway
                .call(
                    &gateway.admin_token,
                    Method::POST,
                    &format!("/v1/teams/{team}/keys"),
                    Some(&json!({"name": format!("k{i}"), "role": "viewer"})),
                    None,
                )
                .await
        }
        3 => {
            gateway
                .call(
                    member,
                    Method::POST,
                    "/v1/deployments",
                    Some(&deploy_body(&format!("w{i}"), 1)),
                    Some(&format!("{team}-{i}")),
                )
                .await
        }
        _ => {
            gateway
                .admin(
                    Method::PATCH,
                    &format!("/v1/teams/{team}"),
                    Some(&json!({"quotas": {"max_vms": 1000 + i}})),
                )
                .await
        }
    };
    (reply.status, reply.text)
}

/// `tasks` writers of `writes` each, one team per writer, with `readers` readers looping until
/// the writers are done. Returns what the writers and readers saw and the wall time.
async fn write_storm(
    gateway: &Arc<Gateway>,
    tasks: usize,
    writes: usize,
    readers: usize,
    label: &str,
) -> (Seen, Seen, Duration) {
    let mut members = Vec::new();
    for t in 0..tasks {
        let team = format!("{label}-{t}");
        gateway.create_team(&team, "100000", json!({})).await;
        members.push((team.clone(), gateway.mint_key(&team, "member").await));
    }
    let done = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks + readers));
    let mut reader_tasks = Vec::new();
    for r in 0..readers {
        let (gateway, done, barrier) = (gateway.clone(), done.clone(), barrier.clone());
        let (team, member) = members[r % members.len()].clone();
        reader_tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut seen = Seen::default();
            let paths = [
                format!("/v1/teams/{team}/budget"),
                "/v1/deployments?limit=100".to_owned(),
                "/v1/spend?group_by=team,vm,day".to_owned(),
                "/v1/vms?limit=100".to_owned(),
            ];
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                let reply = gateway
                    .call(&member, Method::GET, &paths[i % paths.len()], None, None)
                    .await;
                seen.latencies.push(started.elapsed().as_secs_f64());
                if surfaces_the_lock(reply.status, &reply.text) {
                    seen.surfaced += 1;
                }
                if reply.status != 200 {
                    seen.unexpected
                        .push(format!("read {}: {}", reply.status, reply.text));
                }
                i += 1;
            }
            seen
        }));
    }
    let started = Instant::now();
    let mut writer_tasks = Vec::new();
    for (team, member) in members {
        let (gateway, barrier) = (gateway.clone(), barrier.clone());
        writer_tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut seen = Seen::default();
            for i in 0..writes {
                let began = Instant::now();
                let (status, text) = one_write(&gateway, &team, &member, i).await;
                seen.latencies.push(began.elapsed().as_secs_f64());
                if surfaces_the_lock(status, &text) {
                    seen.surfaced += 1;
                }
                if !(200..300).contains(&status) {
                    seen.unexpected.push(format!("write {i} {status}: {text}"));
                }
            }
            seen
        }));
    }
    let mut writers = Seen::default();
    for task in writer_tasks {
        let seen = task.await.unwrap_or_else(|e| panic!("writer: {e}"));
        writers.latencies.extend(seen.latencies);
        writers.surfaced += seen.surfaced;
        writers.unexpected.extend(seen.unexpected);
    }
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut readers_seen = Seen::default();
    for task in reader_tasks {
        let seen = task.await.unwrap_or_else(|e| panic!("reader: {e}"));
        readers_seen.latencies.extend(seen.latencies);
        readers_seen.surfaced += seen.surfaced;
        readers_seen.unexpected.extend(seen.unexpected);
    }
    (writers, readers_seen, wall)
}

/// D1: 16 writers through the API with 4 readers; no busy or locked error may reach a client.
pub async fn d1(suite: Arc<Suite>) -> Vec<Row> {
    let tasks = 16;
    let writes = suite.profile.pick(30, 500);
    let total = tasks * writes;
    let mut row = Row::new(
        format!("D1 {tasks} writers x {writes} writes, 4 readers"),
        "I8",
        suite.seed,
    );
    let world = roomy_world(&suite, "d1").await;
    let gateway = Arc::new(
        world
            .gateway(GatewayOptions::default().with_env("GATEWAY__JOBS__DEPLOYER_CONCURRENCY", "8"))
            .await,
    );
    let (mut writers, mut readers, wall) = write_storm(&gateway, tasks, writes, 4, "d1").await;
    check::quiesce(&world, &gateway).await;
    let mut tally = Tally::default();
    tally.add(&check::check(&world.db_path(), &world.sim.state().await).await);

    let surfaced = writers.surfaced + readers.surfaced;
    row.runs = total as u64;
    row.bad = surfaced;
    row.figures = format!(
        "busy or locked errors surfaced {surfaced}/{total} writes (+{} reads); write latency {}; {:.0} write tx/s over {:.1} s; reads {}; checker after settling: {}",
        readers.latencies.len(),
        latency_summary(&mut writers.latencies),
        total as f64 / wall.as_secs_f64(),
        wall.as_secs_f64(),
        latency_summary(&mut readers.latencies),
        tally.figures()
    );
    let mut unexpected = writers.unexpected;
    unexpected.extend(readers.unexpected);
    row.require(
        unexpected.is_empty(),
        format!(
            "{} unexpected answers, e.g. {}",
            unexpected.len(),
            unexpected
                .first()
                .map(|s| s.chars().take(200).collect::<String>())
                .unwrap_or_default()
        ),
    );
    row.require(tally.bad_runs == 0, tally.first_failure.unwrap_or_default());
    vec![row]
}

fn wal_bytes(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

/// D3 (full profile): writers for a while, a spend report read in a loop, the WAL sampled.
pub async fn d3(suite: Arc<Suite>) -> Vec<Row> {
    let Some(minutes) = suite.profile.pick(None, Some(2u64)) else {
        return Vec::new();
    };
    let mut row = Row::new(
        format!("D3 WAL under a spend report, {minutes} min of writers"),
        "I8",
        suite.seed,
    );
    let world = roomy_world(&suite, "d3").await;
    let gateway = Arc::new(world.gateway(GatewayOptions::default()).await);
    let db = world.db_path();
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, db) = (peak.clone(), stop.clone(), db.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let bytes = wal_bytes(&db);
                peak.fetch_max(bytes, Ordering::Relaxed);
                samples.push(bytes as f64);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        })
    };
    let report = {
        let (gateway, stop) = (gateway.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut reports, mut failures) = (0u64, 0u64);
            // The longest range the report allows (a year), every grouping.
            let from = (chrono::Utc::now() - chrono::TimeDelta::days(365))
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let path = format!("/v1/spend?group_by=team,vm,day&from={from}&format=csv");
            while !stop.load(Ordering::Relaxed) {
                let reply = gateway.admin(Method::GET, &path, None).await;
                reports += 1;
                failures += u64::from(reply.status != 200);
            }
            (reports, failures)
        })
    };
    let mut rounds = 0;
    let mut surfaced = 0;
    let mut writes = 0;
    while Instant::now() < deadline {
        let (seen, _, _) = write_storm(&gateway, 8, 20, 2, &format!("d3r{rounds}")).await;
        surfaced += seen.surfaced + seen.unexpected.len() as u64;
        writes += seen.latencies.len();
        // Settle the round's deploys so that the ledger and inventory grow too.
        gateway.run_job("inventory").await;
        world.sim.advance(6 * 3600).await;
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (reports, failures) = report.await.unwrap_or((0, 1));
    let mut samples = sampler.await.unwrap_or_default();
    let peak_mib = peak.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0);
    samples.sort_by(f64::total_cmp);
    let limit_mib = 64.0;
    row.runs = writes as u64;
    row.bad = surfaced + failures;
    row.figures = format!(
        "peak WAL {peak_mib:.2} MiB (limit {limit_mib} MiB), WAL p50 {:.2} MiB over {} samples; {writes} writes in {rounds} rounds, {reports} spend reports read ({failures} failed), write errors {surfaced}",
        percentile(&samples, 50.0) / (1024.0 * 1024.0),
        samples.len()
    );
    row.require(peak_mib < limit_mib, "the WAL outgrew its limit");
    row.require(reports > 0, "no spend report was read");
    row.require(failures == 0, "spend reports failed");
    vec![row]
}

/// Starts the binary on `database_url` with `extra` environment and waits for it to be ready
/// or to exit. `Ok(())` if it became ready (then it is killed), `Err(output)` if it exited.
async fn start_outcome(
    world: &World,
    database_url: &str,
    extra: &[(&str, &str)],
    label: &str,
) -> Result<(), String> {
    let log = world.dir.join(format!("d5-{label}.log"));
    let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
    let mut command = Command::new(binary());
    command
        .arg("serve")
        .env_remove("GATEWAY_FAILPOINTS")
        .env("GATEWAY__LOG__FORMAT", "json")
        .env("GATEWAY__UPSTREAM__MODE", "fluence")
        .env("GATEWAY__UPSTREAM__BASE_URL", &world.sim.base_url)
        .env("FLUENCE_API_KEY", &world.suite.fluence_key)
        .env("GATEWAY_ADMIN_TOKEN", &world.suite.admin_token)
        .env("GATEWAY__DATABASE__URL", database_url)
        .env("GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(file);
    for (key, value) in extra {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap_or_else(|e| panic!("spawn: {e}"));
    let deadline = Instant::now() + crate::world::WAIT;
    loop {
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        if output.contains("fluence-gateway ready") {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{status}: {}", output.trim()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{label}: neither ready nor exited within {:?}",
                crate::world::WAIT
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Byte 18 and 19 of an SQLite file: 2 and 2 mean WAL (the journal mode is stored in the file).
fn file_is_wal(db: &Path) -> bool {
    std::fs::read(db).is_ok_and(|bytes| bytes.len() > 19 && bytes[18] == 2 && bytes[19] == 2)
}

/// A setting start-up must refuse: what it is, the database URL, more environment, and the
/// word the refusal must name.
type Refusal<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);

/// D5: the pragmas start-up asserts, proven against the binary. What can be set from outside
/// (the busy timeout, a database that cannot be WAL) must stop start-up with a message naming
/// the setting; the good settings must start and leave a WAL file.
pub async fn d5(suite: Arc<Suite>) -> Vec<Row> {
    let mut row = Row::new("D5 start-up pragma assertions", "I8", suite.seed);
    let world = World::new(&suite, "d5").await;
    let good = world.dir.join("good.db");
    let good_url = format!("sqlite://{}", good.display());
    let mut outcomes = Vec::new();

    // Good settings start, and the file is in WAL mode.
    let started = start_outcome(&world, &good_url, &[], "good").await;
    row.runs += 1;
    let wal = file_is_wal(&good);
    let pragmas: Vec<(String, Value)> = {
        let pool = sqlx::SqlitePool::connect(&good_url)
            .await
            .unwrap_or_else(|e| panic!("open {good_url}: {e}"));
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap_or_default();
        pool.close().await;
        vec![("journal_mode".into(), json!(journal))]
    };
    if started.is_err() || !wal {
        row.bad += 1;
    }
    outcomes.push(format!(
        "good settings: {} (file in WAL: {wal}, {pragmas:?})",
        if started.is_ok() {
            "started"
        } else {
            "refused"
        }
    ));

    // Each wrong setting must be refused, naming what is wrong.
    let memory = "sqlite://d5-memory.db?mode=memory".to_owned();
    let refusals: [Refusal<'_>; 2] = [
        (
            "busy_timeout 0",
            format!("sqlite://{}", world.dir.join("busy.db").display()),
            vec![("GATEWAY__DATABASE__BUSY_TIMEOUT_MS", "0")],
            "busy_timeout",
        ),
        (
            "journal_mode memory (a database that cannot be WAL)",
            memory,
            vec![],
            "journal_mode",
        ),
    ];
    for (what, url, extra, names) in &refusals {
        row.runs += 1;
        match start_outcome(&world, url, extra, names).await {
            Ok(()) => {
                row.bad += 1;
                outcomes.push(format!("{what}: STARTED"));
            }
            Err(output) => {
                let named = output.contains(names);
                row.bad += u64::from(!named);
                outcomes.push(format!(
                    "{what}: refused{}",
                    if named {
                        format!(" naming {names}")
                    } else {
                        format!(
                            " without naming {names}: {}",
                            output.chars().take(200).collect::<String>()
                        )
                    }
                ));
            }
        }
    }
    row.figures = format!(
        "{}; synchronous = FULL and foreign_keys = ON are set by the binary on every connection and cannot be set otherwise from outside",
        outcomes.join("; ")
    );
    vec![row]
}
