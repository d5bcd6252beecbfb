//! The whole run: start the processes pinned apart, seed the data, measure every target of
//! BENCHMARKS.md with its anchor in the same run, and write the table.
//!
//! Pinning: every server (the gateway, the anchors) runs on `--server-cpu`; this harness (the
//! load generator and the orchestration) and the simulator standing in for Fluence run on
//! `--client-cpu`. The simulator is idle while the gateway's read paths are loaded; it works
//! only during the inventory sync and the deployments run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::load::{self, Outcome, Shape, Target};
use crate::procs::{self, Process, Spec};
use crate::report::{self, Row};
use crate::{machine, seed};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// The gateway binary (a release build).
    #[arg(long)]
    pub gateway: PathBuf,
    /// Where the markdown table and the run's details are written.
    #[arg(long)]
    pub out: PathBuf,
    /// Databases and process logs (emptied first).
    #[arg(long)]
    pub work_dir: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub server_cpu: u32,
    #[arg(long, default_value_t = 1)]
    pub client_cpu: u32,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup_secs: u64,
    #[arg(long, default_value_t = 5)]
    pub measure_secs: u64,
    /// Each endpoint and anchor is measured once per round, rounds interleaved; medians kept.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 10_000)]
    pub vms: usize,
    #[arg(long, default_value_t = 1_000_000)]
    pub price_samples: u64,
    /// Deployments submitted in the admission run.
    #[arg(long, default_value_t = 2_000)]
    pub deployments: usize,
    #[arg(long, default_value_t = 3)]
    pub cold_starts: usize,
    /// The gateways' log filter; e.g. `info,sqlx::query=debug` logs every statement with its
    /// time (in the work directory's logs), to see where a slow figure goes. It costs time.
    #[arg(long, default_value = "info")]
    pub gateway_log_filter: String,
    /// Measure only the deployments (about 30 s): for working on the pipeline.
    #[arg(long)]
    pub only_deployments: bool,
}

const SIM_KEY: &str = "bench-sim-key";
const READY: &str = "fluence-gateway ready";
const SIM_READY: &str = "Fluence simulator listening";
const ANCHOR_READY: &str = "anchor listening";
/// The per-key and per-team quotas configured for the run: limiting stays on (every request
/// still takes a token), high enough not to bite.
const RATE_PER_SECOND: &str = "1000000";
/// The price history spans the gateway's default retention.
const PRICE_WINDOW: Duration = Duration::from_secs(90 * 24 * 3600);
const START_LIMIT: Duration = Duration::from_secs(30);

/// Runs one step under a time limit, naming it when it overruns.
async fn step<T>(
    name: &str,
    limit: Duration,
    work: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    eprintln!("bench: {name}");
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| format!("{name}: not done within {limit:?}"))?
        .map_err(|e| format!("{name}: {e}"))
}

struct Context<'a> {
    options: &'a Options,
    http: reqwest::Client,
    admin_token: String,
    anchor_binary: PathBuf,
}

struct Gateway {
    process: Process,
    addr: String,
    db: PathBuf,
    ready_after: Duration,
}

impl Context<'_> {
    fn log_dir(&self) -> PathBuf {
        self.options.work_dir.join("logs")
    }

    async fn simulator(&self, name: &str) -> Result<(Process, String), String> {
        let log_dir = self.log_dir();
        let mut process = Process::start(&Spec {
            name,
            program: &self.options.gateway,
            args: &[
                "simulator",
                "--listen",
                "127.0.0.1:0",
                "--api-key",
                SIM_KEY,
                "--manual-clock",
            ],
            env: &[],
            cpu: self.options.client_cpu,
            log_dir: &log_dir,
        })?;
        let addr = process.wait_listening(SIM_READY, START_LIMIT).await?;
        Ok((process, format!("http://{addr}")))
    }

    /// A gateway in `fluence` mode on a fresh database, pointed at `sim`.
    async fn gateway(&self, name: &str, sim: &str) -> Result<Gateway, String> {
        let db = self.options.work_dir.join(format!("{name}.db"));
        let log_dir = self.log_dir();
        let env = [
            ("GATEWAY__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
            (
                "GATEWAY__DATABASE__URL",
                format!("sqlite://{}", db.display()),
            ),
            ("GATEWAY__UPSTREAM__MODE", "fluence".to_owned()),
            ("GATEWAY__UPSTREAM__BASE_URL", sim.to_owned()),
            ("FLUENCE_API_KEY", SIM_KEY.to_owned()),
            ("GATEWAY_ADMIN_TOKEN", self.admin_token.clone()),
            (
                "GATEWAY__RATE_LIMIT__PER_KEY_PER_SECOND",
                RATE_PER_SECOND.to_owned(),
            ),
            (
                "GATEWAY__RATE_LIMIT__PER_KEY_BURST",
                RATE_PER_SECOND.to_owned(),
            ),
            (
                "GATEWAY__RATE_LIMIT__PER_TEAM_PER_SECOND",
                RATE_PER_SECOND.to_owned(),
            ),
            (
                "GATEWAY__RATE_LIMIT__PER_TEAM_BURST",
                RATE_PER_SECOND.to_owned(),
            ),
            // The sync, the sampler and the catalog refresh run when the harness asks, so that
            // no scheduled run lands inside a measured window.
            ("GATEWAY__JOBS__INVENTORY_INTERVAL_SECS", "86400".to_owned()),
            ("GATEWAY__JOBS__PRICES_INTERVAL_SECS", "86400".to_owned()),
            ("GATEWAY__JOBS__CATALOG_INTERVAL_SECS", "86400".to_owned()),
            (
                "GATEWAY__LOG__FILTER",
                self.options.gateway_log_filter.clone(),
            ),
        ];
        let mut process = Process::start(&Spec {
            name,
            program: &self.options.gateway,
            args: &["serve"],
            env: &env,
            cpu: self.options.server_cpu,
            log_dir: &log_dir,
        })?;
        let line = process.wait_for(READY, START_LIMIT).await?;
        let addr = line["listen"]
            .as_str()
            .ok_or_else(|| format!("{name}: no address in {line}"))?
            .to_owned();
        // The gateway's own timestamp of its ready line, against the wall clock at the spawn:
        // the poll interval of the log does not count.
        let ready_at = line["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .ok_or_else(|| format!("{name}: no timestamp in {line}"))?;
        let ready_after = (ready_at.with_timezone(&Utc) - process.spawned_at)
            .to_std()
            .map_err(|e| format!("{name}: ready before spawned? {e}"))?;
        Ok(Gateway {
            process,
            addr,
            db,
            ready_after,
        })
    }

    async fn anchor(&self, name: &str, args: &[&str]) -> Result<(Process, String), String> {
        let log_dir = self.log_dir();
        let mut process = Process::start(&Spec {
            name,
            program: &self.anchor_binary,
            args,
            env: &[],
            cpu: self.options.server_cpu,
            log_dir: &log_dir,
        })?;
        let addr = process.wait_listening(ANCHOR_READY, START_LIMIT).await?;
        Ok((process, addr))
    }

    /// A call to the gateway that must succeed; its JSON answer.
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let mut request = self.http.request(method.clone(), url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{method} {url}: {status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// A bootstrap admin token for this run only: 32 random bytes as hex.
fn random_token() -> Result<String, String> {
    Ok(read_random(32)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn read_random(n: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut buffer = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buffer))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(buffer)
}

/// Every figure but the deployments': cold starts, the syncs, the price history and the load
/// rounds of every read endpoint beside its anchors, and the peak RSS they leave.
async fn read_paths(
    context: &Context<'_>,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let options = context.options;
    let (simulator, sim) = step(
        "start the simulator",
        START_LIMIT,
        context.simulator("simulator"),
    )
    .await?;

    // Cold start first, on fresh databases, before anything else warms the page cache for them.
    let cold = step(
        "cold starts",
        Duration::from_secs(120),
        cold_starts(context, &sim),
    )
    .await?;
    rows.push(cold);

    let (hello, hello_addr) = step(
        "start the hello anchor",
        START_LIMIT,
        context.anchor("anchor-hello", &["hello"]),
    )
    .await?;
    let (hello_logged, hello_logged_addr) = step(
        "start the logged hello anchor",
        START_LIMIT,
        context.anchor("anchor-hello-logged", &["hello-logged"]),
    )
    .await?;
    let anchor_db = options.work_dir.join("anchor.db");
    let anchor_db_text = anchor_db.display().to_string();
    let (sqlx_anchor, sqlx_addr) = step(
        "start the sqlx anchor",
        Duration::from_secs(60),
        context.anchor("anchor-sqlx", &["sqlx-read", "--db", &anchor_db_text]),
    )
    .await?;

    let gateway = step(
        "start the gateway",
        START_LIMIT,
        context.gateway("gateway", &sim),
    )
    .await?;
    let base = format!("http://{}", gateway.addr);
    let gateway_pid = gateway.process.pid().ok_or("the gateway has exited")?;
    let mut memory = vec![format!("ready: {}", peak_mb(gateway_pid)?)];
    let keys = step(
        "create keys",
        Duration::from_secs(30),
        create_keys(context, &gateway, "bench"),
    )
    .await?;

    step(
        "seed VMs at the simulator",
        Duration::from_secs(120),
        seed::simulator_vms(&context.http, &sim, SIM_KEY, options.vms),
    )
    .await?;
    let syncs = step(
        "inventory syncs",
        Duration::from_secs(180),
        inventory_syncs(context, &base, &sim, &gateway.db, options.vms),
    )
    .await?;
    rows.extend(syncs);
    memory.push(format!(
        "after the inventory syncs: {}",
        peak_mb(gateway_pid)?
    ));

    step(
        "first price sample",
        Duration::from_secs(60),
        context.call(
            reqwest::Method::POST,
            &format!("{base}/v1/jobs/prices/run"),
            &context.admin_token,
            None,
        ),
    )
    .await?;
    let history = step(
        "seed the price history",
        Duration::from_secs(300),
        seed::price_history(&gateway.db, options.price_samples, PRICE_WINDOW),
    )
    .await?;
    notes.push(format!(
        "Price history: {} samples in `price_samples` ({} runs of the sampler's real snapshot of {} offers, one every {} s back to {}, each offer's price drifting by the hour within +-10 %, as the simulator's prices do), written in one `BEGIN IMMEDIATE` transaction before the reads.",
        report::count(history.samples as f64),
        report::count(history.runs as f64),
        history.offers_per_run,
        history.interval.as_secs(),
        history.oldest.to_rfc3339_opts(SecondsFormat::Secs, true)
    ));

    memory.push(format!(
        "after the price seeding: {}",
        peak_mb(gateway_pid)?
    ));
    let anchors = Anchors {
        hello: &hello_addr,
        hello_logged: &hello_logged_addr,
        sqlx: &sqlx_addr,
    };
    let probes = probes(context, &base, &keys, &anchors).await?;
    let measured = step(
        "load rounds",
        Duration::from_secs(
            60 + (probes.len() * options.rounds) as u64
                * (options.warmup_secs + options.measure_secs + 5),
        ),
        load_rounds(options, &probes, gateway_pid, &mut memory),
    )
    .await?;
    rows.extend(load_rows(&probes, &measured));

    let (peak_kib, now_kib) = procs::memory_kib(gateway_pid)?;
    notes.push(format!(
        "Peak RSS of the gateway, step by step: {}.",
        memory.join("; ")
    ));
    rows.push(Row {
        what: format!("peak RSS of the gateway (`VmHWM`), {} VMs, after the syncs, the price seeding and every load round", report::count(options.vms as f64)),
        figure: format!("{:.1} MB (now {:.1} MB)", peak_kib as f64 / 1024.0, now_kib as f64 / 1024.0),
        target: "< 50 MB".into(),
        anchor: "-".into(),
        ratio: "-".into(),
        met: Some((peak_kib as f64 / 1024.0) < 50.0),
    });
    gateway.process.stop().await;
    hello.stop().await;
    hello_logged.stop().await;
    sqlx_anchor.stop().await;
    simulator.stop().await;
    Ok(())
}

pub async fn run(options: Options) -> Result<(), String> {
    let began = Utc::now();
    let clock = Instant::now();
    let _ = std::fs::remove_dir_all(&options.work_dir);
    std::fs::create_dir_all(options.work_dir.join("logs"))
        .map_err(|e| format!("{}: {e}", options.work_dir.display()))?;
    let context = Context {
        options: &options,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| e.to_string())?,
        admin_token: random_token()?,
        anchor_binary: std::env::current_exe().map_err(|e| e.to_string())?,
    };
    let machine = machine::describe();
    let load_before = machine::load_average();
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    if !options.only_deployments {
        read_paths(&context, &mut rows, &mut notes).await?;
    }

    let deploys = step(
        "deployments",
        Duration::from_secs(300),
        deployments(&context),
    )
    .await?;
    rows.extend(deploys.0);
    notes.extend(deploys.1);

    notes.push(format!(
        "Load average (1, 5, 15 min) at the start of the run: {load_before}; at the end: {}. The machine is shared: other work running meanwhile moves absolute figures, hence the ratios to anchors measured in the same rounds.",
        machine::load_average()
    ));
    let table = report::render(&rows);
    let document = document(&options, &machine, began, clock.elapsed(), &table, &notes);
    println!("{document}");
    std::fs::write(&options.out, &document)
        .map_err(|e| format!("{}: {e}", options.out.display()))?;
    eprintln!("bench: written to {}", options.out.display());
    Ok(())
}

fn document(
    options: &Options,
    machine: &machine::Machine,
    began: chrono::DateTime<Utc>,
    took: Duration,
    table: &str,
    notes: &[String],
) -> String {
    let mut out = format!(
        "## Results of `bench/run`, {}\n\n\
         Machine: {} CPUs (`nproc --all`), {}, {}. `free -h`:\n\n```text\n{}\n```\n\n\
         Pinning (`taskset`): the gateway and both anchors on CPU {}; the load generator, the \
         harness and the simulator on CPU {}. Load: {} keep-alive HTTP/1.1 connections, closed \
         loop, {} s warm-up then {} s measured, {} rounds interleaved (every endpoint and its \
         anchor once per round); figures are the median round, ratios the median of the \
         per-round ratios, `n` the 2xx answers measured over all rounds. The whole run took {} s.\n\n",
        began.to_rfc3339_opts(SecondsFormat::Secs, true),
        machine.nproc,
        machine.cpu_model,
        machine.kernel,
        machine.free_h,
        options.server_cpu,
        options.client_cpu,
        options.connections,
        options.warmup_secs,
        options.measure_secs,
        options.rounds,
        took.as_secs(),
    );
    out.push_str(table);
    out.push('\n');
    for note in notes {
        out.push_str(&format!("- {note}\n"));
    }
    out
}

async fn cold_starts(context: &Context<'_>, sim: &str) -> Result<Row, String> {
    let mut times = Vec::new();
    for n in 0..context.options.cold_starts.max(1) {
        let gateway = context.gateway(&format!("cold-{n}"), sim).await?;
        times.push(gateway.ready_after);
        gateway.process.stop().await;
    }
    times.sort();
    let median = times[times.len() / 2];
    let worst = times[times.len() - 1];
    Ok(Row {
        what: format!(
            "cold start on a fresh database to the ready line (spawn to `{READY}` on stdout; migrations included), {} starts",
            times.len()
        ),
        figure: format!("median {}, worst {}", report::ms(median), report::ms(worst)),
        target: "< 300 ms".into(),
        anchor: "-".into(),
        ratio: "-".into(),
        met: Some(worst < Duration::from_millis(300)),
    })
}

struct Keys {
    /// A stored admin key (looked up in the database like any minted key).
    admin: String,
    /// A member key of the team.
    member: String,
}

async fn create_keys(context: &Context<'_>, gateway: &Gateway, team: &str) -> Result<Keys, String> {
    let base = format!("http://{}", gateway.addr);
    let output = tokio::process::Command::new(&context.options.gateway)
        .args(["admin", "create-key", "--name", "bench-admin"])
        .env(
            "GATEWAY__DATABASE__URL",
            format!("sqlite://{}", gateway.db.display()),
        )
        .env("GATEWAY__UPSTREAM__MODE", "fluence")
        .env("FLUENCE_API_KEY", SIM_KEY)
        .env("GATEWAY__LOG__FORMAT", "json")
        .output()
        .await
        .map_err(|e| format!("admin create-key: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "admin create-key: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let printed: Value = String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v["key"].is_string())
        })
        .ok_or("admin create-key printed no key")?;
    let admin = printed["key"].as_str().unwrap_or_default().to_owned();
    context
        .call(
            reqwest::Method::POST,
            &format!("{base}/v1/teams"),
            &context.admin_token,
            Some(
                &json!({"id": team, "name": format!("Team {team}"), "budget": {"cap": "1000000"}}),
            ),
        )
        .await?;
    let minted = context
        .call(
            reqwest::Method::POST,
            &format!("{base}/v1/teams/{team}/keys"),
            &context.admin_token,
            Some(&json!({"name": "bench member", "role": "member"})),
        )
        .await?;
    let member = minted["key"].as_str().ok_or("no member key")?.to_owned();
    Ok(Keys { admin, member })
}

async fn inventory_syncs(
    context: &Context<'_>,
    base: &str,
    sim: &str,
    db: &Path,
    vms: usize,
) -> Result<Vec<Row>, String> {
    let run = |label: &'static str| async move {
        let started = Instant::now();
        let outcome = context
            .call(
                reqwest::Method::POST,
                &format!("{base}/v1/jobs/inventory/run"),
                &context.admin_token,
                None,
            )
            .await?;
        Ok::<_, String>((label, started.elapsed(), outcome))
    };
    let first = run("first sync: every VM new (inserted, events recorded)").await?;
    let stored = count_live_vms(db).await?;
    if stored != vms as i64 {
        return Err(format!(
            "the sync stored {stored} VMs, not {vms}: {}",
            first.2
        ));
    }
    // A day later at Fluence: every VM was charged again, so the next sync writes 10k charges.
    seed::post_json(
        &context.http,
        &format!("{sim}/_sim/clock"),
        None,
        &json!({"advance_seconds": 86_400}),
    )
    .await?;
    let charged = run("a day later: every VM charged (10k ledger rows, updates)").await?;
    let unchanged = run("again, nothing changed upstream").await?;
    let mut rows = Vec::new();
    for (label, took, outcome) in [first, charged, unchanged] {
        let summary = outcome["outcome"]
            .as_str()
            .or_else(|| outcome["summary"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| outcome.to_string());
        rows.push(Row {
            what: format!(
                "inventory sync of {} upstream VMs, {label}",
                report::count(vms as f64)
            ),
            figure: format!(
                "{:.3} s (`POST /v1/jobs/inventory/run` round trip; job said: {})",
                took.as_secs_f64(),
                summary.replace('|', "/")
            ),
            target: "< 1 s".into(),
            anchor: "-".into(),
            ratio: "-".into(),
            met: Some(took < Duration::from_secs(1)),
        });
    }
    Ok(rows)
}

async fn count_live_vms(db: &Path) -> Result<i64, String> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query_scalar("SELECT COUNT(*) FROM vms WHERE deleted_at IS NULL")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())
}

/// What is loaded, and what it is compared with.
struct Probe {
    what: String,
    target: Target,
    connections: usize,
    /// The index of the anchor probe this one is compared with, and the rule.
    goal: Goal,
}

enum Goal {
    /// An anchor itself.
    Anchor,
    /// rps at least `ratio` times the anchor's (no target when `None`); optionally a p99 bound.
    Ratio {
        anchor: usize,
        ratio: Option<f64>,
        p99_under: Option<Duration>,
        text: String,
    },
    /// A p99 bound alone.
    P99 { under: Duration, text: String },
    /// Shown for context.
    Context,
}

/// A row measured beside the hello anchor for context: no target of its own, no key.
fn beside_hello(
    what: &str,
    addr: std::net::SocketAddr,
    path: &str,
    connections: usize,
    context: &str,
) -> Probe {
    Probe {
        what: what.to_owned(),
        target: Target {
            addr,
            path: path.to_owned(),
            bearer: None,
        },
        connections,
        goal: Goal::Ratio {
            anchor: 0,
            ratio: None,
            p99_under: None,
            text: format!("(context: {context})"),
        },
    }
}

/// Where the anchors listen.
struct Anchors<'a> {
    hello: &'a str,
    hello_logged: &'a str,
    sqlx: &'a str,
}

async fn probes(
    context: &Context<'_>,
    base: &str,
    keys: &Keys,
    anchors: &Anchors<'_>,
) -> Result<Vec<Probe>, String> {
    let addr = |text: &str| {
        text.parse::<std::net::SocketAddr>()
            .map_err(|e| format!("{text}: {e}"))
    };
    let gateway = addr(base.trim_start_matches("http://"))?;
    let connections = context.options.connections;
    let to_gateway = |path: &str, bearer: &str| Target {
        addr: gateway,
        path: path.to_owned(),
        bearer: Some(bearer.to_owned()),
    };
    // Checked once before loading, so that a run never measures an error page.
    let check = |path: String, bearer: String| async move {
        context
            .call(
                reqwest::Method::GET,
                &format!("{base}{path}"),
                &bearer,
                None,
            )
            .await
    };
    let vms = check("/v1/vms?limit=100".into(), keys.admin.clone()).await?;
    let listed = vms["items"].as_array().map_or(0, Vec::len);
    if listed != 100 {
        return Err(format!("GET /v1/vms?limit=100 listed {listed} VMs"));
    }
    let offers = check("/v1/offers".into(), keys.member.clone()).await?;
    let first_offer = offers["items"].get(0).cloned().unwrap_or(Value::Null);
    let configuration = first_offer["configuration"]
        .as_str()
        .ok_or("no offer")?
        .to_owned();
    let country = first_offer["country"]
        .as_str()
        .ok_or("no offer")?
        .to_owned();
    let filtered = format!("/v1/prices?configuration={configuration}&country={country}");
    let to = Utc::now();
    let from = to - chrono::Duration::days(90);
    let quarter = format!(
        "/v1/prices?from={}&to={}&bucket=day",
        from.to_rfc3339_opts(SecondsFormat::Secs, true),
        to.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    let mut paths = vec![
        "/v1/teams/bench".to_owned(),
        "/v1/prices".to_owned(),
        filtered.clone(),
        quarter.clone(),
    ];
    for list in CATALOG {
        paths.push(format!("/v1/catalog/{list}"));
    }
    for path in paths {
        let answer = check(path.clone(), keys.member.clone()).await?;
        if path.starts_with("/v1/prices") {
            let samples: i64 = answer["buckets"]
                .as_array()
                .map(|b| b.iter().filter_map(|b| b["samples"].as_i64()).sum())
                .unwrap_or(0);
            if samples == 0 {
                return Err(format!("{path} found no sample"));
            }
        }
    }

    let mut probes = vec![
        Probe {
            what: "anchor: axum \"hello\"".into(),
            target: Target {
                addr: addr(anchors.hello)?,
                path: "/".into(),
                bearer: None,
            },
            connections,
            goal: Goal::Anchor,
        },
        Probe {
            what: "anchor: naive axum + sqlx read of 100 rows as JSON".into(),
            target: Target {
                addr: addr(anchors.sqlx)?,
                path: "/items".into(),
                bearer: None,
            },
            connections,
            goal: Goal::Anchor,
        },
        beside_hello(
            "anchor: axum + sqlx read of 1 row by primary key as JSON",
            addr(anchors.sqlx)?,
            "/item",
            connections,
            "the most an endpoint reading SQLite once per request through sqlx can do",
        ),
        Probe {
            what: format!(
                "`GET /v1/vms?limit=100`, {} VMs, stored admin key, rate limiting on",
                report::count(context.options.vms as f64)
            ),
            target: to_gateway("/v1/vms?limit=100", &keys.admin),
            connections,
            goal: Goal::Ratio {
                anchor: 1,
                ratio: Some(5.0),
                p99_under: Some(Duration::from_millis(10)),
                text: ">= 5x the sqlx anchor; p99 < 10 ms".into(),
            },
        },
        Probe {
            what:
                "authenticated trivial endpoint: `GET /v1/teams/bench` with the team's member key"
                    .into(),
            target: to_gateway("/v1/teams/bench", &keys.member),
            connections,
            goal: Goal::Ratio {
                anchor: 0,
                ratio: Some(0.7),
                p99_under: None,
                text: ">= 0.7x hello".into(),
            },
        },
    ];
    // What every request to the gateway pays before its handler does anything: the most a
    // cached or trivial endpoint can reach.
    probes.push(beside_hello(
        "anchor: axum \"hello\" + the gateway's access log (a request id, a span, one JSON line per request, its own writer thread)",
        addr(anchors.hello_logged)?,
        "/",
        connections,
        "the most an endpoint that logs each request as the gateway does can do",
    ));
    probes.push(beside_hello(
        "`GET /healthz` (no key, no database: the gateway's whole layer stack and access log around a trivial handler)",
        gateway,
        "/healthz",
        connections,
        "the most any gateway endpoint can do",
    ));
    for list in CATALOG {
        probes.push(Probe {
            what: format!("cached `GET /v1/catalog/{list}`"),
            target: to_gateway(&format!("/v1/catalog/{list}"), &keys.member),
            connections,
            goal: Goal::Ratio {
                anchor: 0,
                ratio: Some(0.5),
                p99_under: None,
                text: ">= 0.5x hello".into(),
            },
        });
    }
    probes.push(Probe {
        what: "`GET /v1/offers` (latest snapshot)".into(),
        target: to_gateway("/v1/offers", &keys.member),
        connections,
        goal: Goal::Ratio {
            anchor: 0,
            ratio: Some(0.5),
            p99_under: None,
            text: ">= 0.5x hello".into(),
        },
    });
    // Latency of the query itself: one connection, so the p99 is not queueing behind others.
    probes.push(Probe {
        what: "`GET /v1/prices` (defaults: last 7 days, hour buckets, every configuration), 1 connection".into(),
        target: to_gateway("/v1/prices", &keys.member),
        connections: 1,
        goal: Goal::P99 { under: Duration::from_millis(50), text: "p99 < 50 ms".into() },
    });
    probes.push(Probe {
        what: format!("`GET {filtered}` (7 days, one series), 1 connection"),
        target: to_gateway(&filtered, &keys.member),
        connections: 1,
        goal: Goal::P99 {
            under: Duration::from_millis(50),
            text: "p99 < 50 ms".into(),
        },
    });
    probes.push(Probe {
        what:
            "`GET /v1/prices?from=<90 days ago>&to=<now>&bucket=day` (every sample), 1 connection"
                .into(),
        target: to_gateway(&quarter, &keys.member),
        connections: 1,
        goal: Goal::Context,
    });
    probes.push(Probe {
        what: "`GET /v1/prices` (defaults), 32 connections".into(),
        target: to_gateway("/v1/prices", &keys.member),
        connections,
        goal: Goal::Context,
    });
    Ok(probes)
}

const CATALOG: [&str; 5] = [
    "configurations",
    "countries",
    "hardware",
    "datacenters",
    "images",
];

/// Every probe once per round; outcomes indexed `[probe][round]`. In the first round the
/// gateway's peak RSS is read after each probe, to show which load raised it.
async fn load_rounds(
    options: &Options,
    probes: &[Probe],
    gateway_pid: u32,
    memory: &mut Vec<String>,
) -> Result<Vec<Vec<Outcome>>, String> {
    let mut measured: Vec<Vec<Outcome>> = probes.iter().map(|_| Vec::new()).collect();
    for round in 0..options.rounds.max(1) {
        for (index, probe) in probes.iter().enumerate() {
            eprintln!(
                "bench: round {} of {}: {}",
                round + 1,
                options.rounds,
                probe.what
            );
            let shape = Shape {
                connections: probe.connections,
                warmup: Duration::from_secs(options.warmup_secs),
                measure: Duration::from_secs(options.measure_secs),
            };
            let outcome = load::run(&probe.target, shape).await?;
            if outcome.failed > 0 {
                return Err(format!(
                    "{}: {} requests failed (first status {:?})",
                    probe.what, outcome.failed, outcome.first_bad_status
                ));
            }
            measured[index].push(outcome);
            if round == 0 && probe.target.bearer.is_some() {
                memory.push(format!("after {}: {}", probe.what, peak_mb(gateway_pid)?));
            }
        }
        // Later rounds repeat the same requests; what they add is memory not reused.
        memory.push(format!(
            "after round {} of {}: {}",
            round + 1,
            options.rounds,
            peak_mb(gateway_pid)?
        ));
    }
    Ok(measured)
}

/// The peak RSS so far, `VmHWM`, as text.
fn peak_mb(pid: u32) -> Result<String, String> {
    let (peak, _) = procs::memory_kib(pid)?;
    Ok(format!("{:.1} MB", peak as f64 / 1024.0))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The median round's figures, and every round's samples counted.
fn summary(outcomes: &[Outcome]) -> Outcome {
    let pick = |f: fn(&Outcome) -> f64| median(&mut outcomes.iter().map(f).collect::<Vec<_>>());
    Outcome {
        ok: outcomes.iter().map(|o| o.ok).sum(),
        failed: outcomes.iter().map(|o| o.failed).sum(),
        rps: pick(|o| o.rps),
        p50: Duration::from_secs_f64(pick(|o| o.p50.as_secs_f64())),
        p99: Duration::from_secs_f64(pick(|o| o.p99.as_secs_f64())),
        first_bad_status: None,
    }
}

fn load_rows(probes: &[Probe], measured: &[Vec<Outcome>]) -> Vec<Row> {
    probes
        .iter()
        .zip(measured)
        .map(|(probe, outcomes)| {
            let figure = summary(outcomes);
            match &probe.goal {
                Goal::Anchor => Row {
                    what: probe.what.clone(),
                    figure: report::load(&figure),
                    target: "-".into(),
                    anchor: "-".into(),
                    ratio: "-".into(),
                    met: None,
                },
                Goal::Ratio {
                    anchor,
                    ratio,
                    p99_under,
                    text,
                } => {
                    let anchor_outcomes = &measured[*anchor];
                    let mut ratios: Vec<f64> = outcomes
                        .iter()
                        .zip(anchor_outcomes)
                        .map(|(o, a)| o.rps / a.rps.max(f64::MIN_POSITIVE))
                        .collect();
                    let achieved = median(&mut ratios);
                    let p99_ok = p99_under.is_none_or(|bound| figure.p99 < bound);
                    Row {
                        what: probe.what.clone(),
                        figure: report::load(&figure),
                        target: text.clone(),
                        anchor: format!(
                            "{}: {}",
                            probes[*anchor].what.trim_start_matches("anchor: "),
                            report::load(&summary(anchor_outcomes))
                        ),
                        ratio: format!("{achieved:.2}x"),
                        met: ratio.map(|ratio| achieved >= ratio && p99_ok),
                    }
                }
                Goal::P99 { under, text } => Row {
                    what: probe.what.clone(),
                    figure: report::load(&figure),
                    target: text.clone(),
                    anchor: "-".into(),
                    ratio: "-".into(),
                    met: Some(figure.p99 < *under),
                },
                Goal::Context => Row {
                    what: probe.what.clone(),
                    figure: report::load(&figure),
                    target: "(context)".into(),
                    anchor: "-".into(),
                    ratio: "-".into(),
                    met: None,
                },
            }
        })
        .collect()
}

/// USDC decimal string to micro-USDC.
fn micros(text: &str) -> Result<i64, String> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 6 {
        return Err(format!("{text}: more than 6 decimals"));
    }
    let whole: i64 = whole.parse().map_err(|e| format!("{text}: {e}"))?;
    let fraction: i64 = format!("{fraction:0<6}")
        .parse()
        .map_err(|e| format!("{text}: {e}"))?;
    Ok(whole * 1_000_000 + fraction)
}

fn usdc(micros: i64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn deploy_body(name: &str) -> Value {
    json!({
        "name": name,
        "instances": 1,
        "configuration": "cpu-2-ram-4gb-storage-25gb",
        "countries": ["DE"],
        "image": "ubuntu-24-04-x64",
        "ssh_keys": [seed::SSH_KEY],
        "open_ports": [{"port": 80, "protocol": "tcp"}]
    })
}

/// Deployments by status, read from the gateway's database beside it (read-only).
async fn statuses(db: &Path) -> Result<Vec<(String, i64)>, String> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .map_err(|e| e.to_string())?;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM deployments GROUP BY status ORDER BY status")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok(rows)
}

/// Statuses a deployment leaves without the worker: queued until estimated and admitted,
/// deploying until Fluence answers.
const IN_PIPELINE: [&str; 4] = ["queued", "estimating", "admitted", "deploying"];

/// Estimate-reserve-forward on its own gateway and simulator (fresh, so that neither the 10k
/// VMs nor the load rounds weigh on it): `deployments` submitted as fast as 32 clients can,
/// under a cap that fits three quarters of them; timed until none is left in the pipeline.
async fn deployments(context: &Context<'_>) -> Result<(Vec<Row>, Vec<String>), String> {
    let options = context.options;
    let (simulator, sim) = context.simulator("simulator-deploy").await?;
    seed::post_json(
        &context.http,
        &format!("{sim}/_sim/balance"),
        None,
        &json!({"usdc": "1000000000"}),
    )
    .await?;
    seed::post_json(
        &context.http,
        &format!("{sim}/_sim/market"),
        None,
        &json!({"capacity": 1_000_000}),
    )
    .await?;
    let gateway = context.gateway("gateway-deploy", &sim).await?;
    let base = format!("http://{}", gateway.addr);
    let keys = create_keys(context, &gateway, "deploy").await?;
    let dry = context
        .call(
            reqwest::Method::POST,
            &format!("{base}/v1/deployments?dry_run=true"),
            &keys.member,
            Some(&deploy_body("dry")),
        )
        .await?;
    let commitment = micros(
        dry["commitment"]
            .as_str()
            .ok_or_else(|| format!("no commitment in {dry}"))?,
    )?;
    let n = options.deployments;
    let fit = (n * 3 / 4) as i64;
    let cap = commitment * fit;
    context
        .call(
            reqwest::Method::PATCH,
            &format!("{base}/v1/teams/deploy"),
            &context.admin_token,
            Some(&json!({"budget": {"cap": usdc(cap)}})),
        )
        .await?;

    let gateway_pid = gateway.process.pid().ok_or("the gateway has exited")?;
    let cpu_before = procs::cpu_seconds(gateway_pid)?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..options.connections {
        let next = next.clone();
        let http = context.http.clone();
        let url = format!("{base}/v1/deployments");
        let key = keys.member.clone();
        clients.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), String>(());
                }
                let response = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&deploy_body(&format!("d{i}")))
                    .send()
                    .await
                    .map_err(|e| format!("POST {url}: {e}"))?;
                if response.status() != reqwest::StatusCode::ACCEPTED {
                    let status = response.status();
                    return Err(format!(
                        "POST {url}: {status}: {}",
                        response.text().await.unwrap_or_default()
                    ));
                }
            }
        });
    }
    while let Some(joined) = clients.join_next().await {
        joined.map_err(|e| e.to_string())??;
    }
    let submitted = started.elapsed();
    let done = loop {
        let counts = statuses(&gateway.db).await?;
        let total: i64 = counts.iter().map(|(_, c)| c).sum();
        let busy: i64 = counts
            .iter()
            .filter(|(s, _)| IN_PIPELINE.contains(&s.as_str()))
            .map(|(_, c)| c)
            .sum();
        if total == n as i64 && busy == 0 {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(240) {
            return Err(format!(
                "deployments still in the pipeline after 240 s: {counts:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let counts = statuses(&gateway.db).await?;
    let count_of = |status: &str| {
        counts
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, c)| *c)
    };
    let forwarded = count_of("deployed") + count_of("unknown") + count_of("failed");
    let rate = forwarded as f64 / done.as_secs_f64();
    // CPU time the gateway spent on the whole run (requests and pipeline), per deployment: a
    // figure that other load on the machine moves much less than the rate.
    let cpu = procs::cpu_seconds(gateway_pid)? - cpu_before;

    let budget = context
        .call(
            reqwest::Method::GET,
            &format!("{base}/v1/teams/deploy/budget"),
            &context.admin_token,
            None,
        )
        .await?;
    let figure = |field: &str| {
        budget[field]
            .as_str()
            .ok_or_else(|| format!("no {field} in {budget}"))
            .and_then(micros)
    };
    let used = figure("spent")? + figure("committed")? + figure("reserved")?;
    let overspend = (used - figure("cap")?).max(0);
    let truth = context
        .http
        .get(format!("{sim}/_sim/state"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let truth: Value = truth.json().await.map_err(|e| e.to_string())?;
    let upstream_vms = truth["vms"].as_array().map_or(0, Vec::len) as i64;
    let deploy_calls = truth["calls"].as_array().map_or(0, |calls| {
        calls
            .iter()
            .filter(|c| c["method"] == "POST" && c["path"] == "/vms/v3")
            .count()
    }) as i64;
    gateway.process.stop().await;
    simulator.stop().await;

    let rows = vec![
        Row {
            what: format!(
                "deployments admitted and forwarded per second: {n} `POST /v1/deployments` from {} clients, cap fitting {fit}, simulator with no added latency; until none is queued, estimating, admitted or deploying",
                options.connections
            ),
            figure: format!(
                "{rate:.0}/s ({forwarded} forwarded in {:.2} s; submissions took {:.2} s)",
                done.as_secs_f64(),
                submitted.as_secs_f64()
            ),
            target: ">= 500/s".into(),
            anchor: "-".into(),
            ratio: "-".into(),
            met: Some(rate >= 500.0),
        },
        Row {
            what: "overspend: spent + committed + reserved - cap after the run".into(),
            figure: format!(
                "{} USDC (used {} of cap {})",
                usdc(overspend),
                usdc(used),
                usdc(cap)
            ),
            target: "0".into(),
            anchor: "-".into(),
            ratio: "-".into(),
            met: Some(overspend == 0),
        },
        Row {
            what: "VMs created at Fluence per deployment forwarded (duplicates would show above 1)"
                .into(),
            figure: format!(
                "{upstream_vms} VMs from {deploy_calls} `POST /vms/v3` for {forwarded} forwarded deployments"
            ),
            target: "= 1".into(),
            anchor: "-".into(),
            ratio: "-".into(),
            met: Some(upstream_vms == forwarded && deploy_calls == forwarded),
        },
    ];
    let notes = vec![
        format!(
            "Deployments: the gateway used {:.2} s of CPU from the first submission to the last forward, {:.2} ms per deployment submitted (user + system time from `/proc/PID/stat`), so one core could carry at most {:.0} deployments/s of this mix.",
            cpu,
            cpu * 1000.0 / n as f64,
            n as f64 / cpu.max(f64::MIN_POSITIVE)
        ),
        format!(
            "Deployments by final status: {}. Each commits {} USDC (the dry run's `commitment`).",
            counts
                .iter()
                .map(|(s, c)| format!("{s} {c}"))
                .collect::<Vec<_>>()
                .join(", "),
            usdc(commitment)
        ),
    ];
    Ok((rows, notes))
}
