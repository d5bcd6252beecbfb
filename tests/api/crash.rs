//! RELIABILITY.md B1 and B4: the real binary killed with SIGKILL at each of the eight crash
//! points of a deploy, restarted on the same SQLite file, and compared with the simulator.
//!
//! The simulator runs inside the test process, so it outlives every gateway it serves and is
//! the ground truth: what it created is what exists. After each restart the module proves,
//! against `/_sim/state` and the gateway's own API, that recovery needs no manual action and
//! that
//! - no deploy intent produced two sets of VMs, and no name was ever sent in two
//!   `POST /vms/v3` calls (I1: a crash is reconciled, never resubmitted);
//! - every live VM of a deployment's name is recorded on that deployment, which is `deployed`
//!   (I2: nothing lost), and every recorded VM exists (no phantom);
//! - a `failed` deployment has nothing upstream and no budget held (C5: no leaked hold);
//! - `PRAGMA integrity_check` is `ok` after all the kills (I8);
//! - a retried `Idempotency-Key` after a crash yields exactly one deployment.
//!
//! B4 crashes twice at the settlement point (the second time while recovering from the first)
//! and proves recovery is idempotent: one settlement, one set of VMs, nothing held.
//!
//! Crash points inside the gateway are reached with `GATEWAY_FAILPOINTS=<name>=pause` (the
//! test build prints `FAILPOINT <name> reached` on stderr and parks the task); the two around
//! the upstream (4, 5) with simulator faults, watched through `/_sim/state`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fluence_gateway::simulator::SimulatorHandle;
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::mpsc;

use crate::helpers::{ADMIN_TOKEN, Reply, SIM_KEY, deploy_body, spawn_simulator};

const BINARY: &str = env!("CARGO_BIN_EXE_fluence-gateway");
/// The longest any one wait may take: a crash point, readiness, or consistency.
const WAIT: Duration = Duration::from_secs(30);
const TEAM: &str = "ml";
const INSTANCES: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// One run of the gateway binary. Both output streams are read by threads into a channel, so
/// the async test never blocks the runtime its in-process simulator is served on.
struct Gateway {
    child: Child,
    lines: mpsc::UnboundedReceiver<(Stream, String)>,
    /// Lines received but not yet matched by a wait.
    unread: Vec<(Stream, String)>,
    /// Every line so far, to show what the gateway said when an assertion fails.
    log: Arc<Mutex<Vec<String>>>,
    address: String,
}

impl Gateway {
    async fn start(db_url: &str, sim_base: &str, failpoints: Option<&str>) -> Gateway {
        let mut command = Command::new(BINARY);
        command
            .arg("serve")
            .env_remove("RUST_LOG")
            .env_remove("GATEWAY_FAILPOINTS")
            .env("GATEWAY__UPSTREAM__MODE", "fluence")
            .env("GATEWAY__UPSTREAM__BASE_URL", sim_base)
            .env("FLUENCE_API_KEY", SIM_KEY)
            .env("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("GATEWAY__DATABASE__URL", db_url)
            // Port 0 and the address from the ready line: no window in which another test
            // could take a port picked beforehand.
            .env("GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
            .env("GATEWAY__LOG__FORMAT", "json")
            .env("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "1")
            .env("GATEWAY__JOBS__RECONCILE_GRACE_SECS", "0")
            .env("GATEWAY__UPSTREAM__REQUEST_TIMEOUT_MS", "1000")
            .env("GATEWAY__DATABASE__BUSY_TIMEOUT_MS", "500")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(spec) = failpoints {
            command.env("GATEWAY_FAILPOINTS", spec);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BINARY}: {e}"));
        let (tx, lines) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        forward(stdout, Stream::Stdout, tx.clone(), log.clone());
        forward(stderr, Stream::Stderr, tx, log.clone());
        let mut gateway = Gateway {
            child,
            lines,
            unread: Vec::new(),
            log,
            address: String::new(),
        };
        let ready = gateway
            .wait_for(Stream::Stdout, "fluence-gateway ready")
            .await;
        let ready: Value = serde_json::from_str(&ready).unwrap_or(Value::Null);
        gateway.address = ready["listen"]
            .as_str()
            .unwrap_or_else(|| panic!("ready line without `listen`: {ready}"))
            .to_owned();
        gateway
    }

    /// The first line on `stream` containing `needle`. Lines other waits passed over are kept:
    /// the deployer's first run starts with the server, so a failpoint may speak before "ready".
    async fn wait_for(&mut self, stream: Stream, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        let matches = |(from, line): &(Stream, String)| *from == stream && line.contains(needle);
        loop {
            if let Some(at) = self.unread.iter().position(matches) {
                let (_, line) = self.unread.remove(at);
                return line;
            }
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.unread.push(line),
                Ok(None) => panic!("the gateway ended before {needle:?}:\n{}", self.log_text()),
                Err(_) => panic!("no {needle:?} within {WAIT:?}:\n{}", self.log_text()),
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn log_text(&self) -> String {
        self.log
            .lock()
            .map(|lines| lines.join("\n"))
            .unwrap_or_default()
    }

    /// kill -9: `Child::kill` is SIGKILL on Unix, so nothing of the gateway runs after it.
    fn kill(&mut self) {
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("kill -9 the gateway: {e}"));
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("wait for the gateway: {e}"));
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward(
    source: impl Read + Send + 'static,
    stream: Stream,
    tx: mpsc::UnboundedSender<(Stream, String)>,
    log: Arc<Mutex<Vec<String>>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines().map_while(Result::ok) {
            if let Ok(mut all) = log.lock() {
                all.push(line.clone());
            }
            // The receiver goes with its gateway; the pipe still has to be drained.
            let _ = tx.send((stream, line));
        }
    });
}

/// How the harness knows the gateway stands at the crash point.
#[derive(Debug, Clone, Copy)]
enum CrashAt {
    /// A failpoint paused the pipeline and said so on stderr.
    Failpoint(&'static str),
    /// The simulator has the deploy call and has not created anything yet (point 4).
    UpstreamHolding,
    /// The simulator created the VMs and will never answer (point 5).
    UpstreamCommitted,
}

struct Scenario {
    /// Names the case in messages and in the timing line.
    label: &'static str,
    crash_at: CrashAt,
    /// A one-shot simulator fault armed before the deploy.
    fault: Option<Value>,
    /// How many gateways are killed at the crash point before the clean restart (B4: 2).
    crashes: u32,
    /// Sends the deploy with this `Idempotency-Key`, and retries it after the restart.
    idempotency_key: Option<&'static str>,
    /// How long after the kill the simulator may still act on the dead gateway's call.
    upstream_busy_for: Option<Duration>,
    /// The final status the point must end in, where only one is right.
    expect: Option<&'static str>,
}

/// One case's world: its own simulator, database and HTTP client.
struct Harness {
    sim: SimulatorHandle,
    db_dir: TempDir,
    http: reqwest::Client,
}

impl Harness {
    async fn new() -> Harness {
        Harness {
            sim: spawn_simulator().await,
            db_dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
            http: reqwest::Client::new(),
        }
    }

    fn db_url(&self) -> String {
        format!(
            "sqlite://{}",
            self.db_dir.path().join("gateway.db").display()
        )
    }

    async fn gateway(&self, failpoints: Option<&str>) -> Gateway {
        Gateway::start(&self.db_url(), &self.sim.base_url(), failpoints).await
    }

    async fn sim_state(&self) -> Value {
        self.http
            .get(format!("{}/_sim/state", self.sim.base_url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /_sim/state: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("/_sim/state body: {e}"))
    }

    async fn sim_fault(&self, fault: &Value) {
        let response = self
            .http
            .post(format!("{}/_sim/faults", self.sim.base_url()))
            .json(fault)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /_sim/faults: {e}"));
        let reply = Reply::read(response).await;
        assert!(reply.status < 300, "arming {fault}: {}", reply.text);
    }

    /// An admin call to the gateway.
    async fn admin(
        &self,
        gateway: &Gateway,
        method: Method,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method.clone(), gateway.url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        Reply::read(response).await
    }

    /// Polls `/_sim/state` until `reached` holds, or panics after [`WAIT`].
    async fn until_sim(&self, what: &str, reached: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if reached(&self.sim_state().await) {
                return;
            }
            assert!(Instant::now() < deadline, "the simulator never saw {what}");
            // Short: points 4 and 5 must be killed before the 1 s upstream timeout fires.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn deploy_calls(state: &Value) -> Vec<&Value> {
    state["calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .filter(|c| c["method"] == "POST" && c["path"] == "/vms/v3")
                .collect()
        })
        .unwrap_or_default()
}

fn live_vms(state: &Value) -> Vec<&Value> {
    state["vms"]
        .as_array()
        .map(|vms| vms.iter().filter(|vm| vm["deleted_at"].is_null()).collect())
        .unwrap_or_default()
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// Final for this scenario: nothing left for the deployer, and any hold settled.
fn is_final(deployment: &Value) -> bool {
    match str_of(&deployment["status"]) {
        "deployed" => !deployment["settled_at"].is_null(),
        "failed" | "rejected" | "cancelled" | "expired" => true,
        _ => false,
    }
}

/// Runs one crash scenario end to end and checks every invariant; returns the seconds from the
/// clean restart to a consistent state.
async fn crash_and_recover(scenario: Scenario) -> f64 {
    let label = scenario.label;
    let harness = Harness::new().await;
    if let Some(fault) = &scenario.fault {
        harness.sim_fault(fault).await;
    }
    let failpoint = match scenario.crash_at {
        CrashAt::Failpoint(name) => Some(format!("{name}=pause")),
        CrashAt::UpstreamHolding | CrashAt::UpstreamCommitted => None,
    };
    let mut gateway = harness.gateway(failpoint.as_deref()).await;

    let team = harness
        .admin(
            &gateway,
            Method::POST,
            "/v1/teams",
            Some(json!({"id": TEAM, "name": "ML", "budget": {"cap": "500"}})),
            None,
        )
        .await;
    assert_eq!(team.status, 201, "{label}: create team: {}", team.text);

    let deploy_path = format!("/v1/deployments?team={TEAM}");
    let body = deploy_body("web", INSTANCES);
    // The request parked at point 1 never answers; it dies with its gateway.
    let mut parked = None;
    let mut upstream_name = None;
    if let Some(key) = scenario.idempotency_key {
        let request = harness
            .http
            .post(gateway.url(&deploy_path))
            .bearer_auth(ADMIN_TOKEN)
            .header("Idempotency-Key", key)
            .json(&body);
        parked = Some(tokio::spawn(request.send()));
    } else {
        let created = harness
            .admin(
                &gateway,
                Method::POST,
                &deploy_path,
                Some(body.clone()),
                None,
            )
            .await;
        assert_eq!(created.status, 202, "{label}: deploy: {}", created.text);
        upstream_name = Some(str_of(&created.json["upstream_name"]).to_owned());
    }

    let mut crashed = Instant::now();
    for crash in 1..=scenario.crashes {
        match scenario.crash_at {
            CrashAt::Failpoint(name) => {
                gateway
                    .wait_for(Stream::Stderr, &format!("FAILPOINT {name} reached"))
                    .await;
            }
            CrashAt::UpstreamHolding => {
                harness
                    .until_sim("the deploy call", |s| !deploy_calls(s).is_empty())
                    .await;
            }
            CrashAt::UpstreamCommitted => {
                let name = upstream_name.clone().unwrap_or_default();
                harness
                    .until_sim("the deploy's VMs", |s| {
                        live_vms(s).iter().any(|vm| vm["name"] == name.as_str())
                    })
                    .await;
            }
        }
        gateway.kill();
        crashed = Instant::now();
        if crash < scenario.crashes {
            // B4: the next gateway crashes at the same point while recovering from this one.
            gateway = harness.gateway(failpoint.as_deref()).await;
        }
    }
    if let Some(parked) = parked {
        parked.abort();
    }

    let restarted = Instant::now();
    let gateway = harness.gateway(None).await;

    let mut retried_id = None;
    if let Some(key) = scenario.idempotency_key {
        // The client's retry of the request it never got an answer to. A 409 says "still in
        // flight, retry shortly", which a client may honour for a little while; the request it
        // refers to died with the process, so it must not last.
        let deadline = Instant::now() + Duration::from_secs(5);
        let retried = loop {
            let reply = harness
                .admin(
                    &gateway,
                    Method::POST,
                    &deploy_path,
                    Some(body.clone()),
                    Some(key),
                )
                .await;
            if reply.status != 409 || Instant::now() >= deadline {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // Nothing of the first request survived but its claim; a 409 here means the claim
        // still locks the key although its owner is gone, and the client cannot get on.
        assert_eq!(
            retried.status, 202,
            "{label}: the retry with the same Idempotency-Key after the crash, for 5 s: {}",
            retried.text
        );
        retried_id = Some(str_of(&retried.json["id"]).to_owned());
    }

    let mut deployments = until_final(&harness, &gateway, label).await;
    let consistent = restarted.elapsed().as_secs_f64();
    if let Some(busy) = scenario.upstream_busy_for {
        // Final by the gateway's account, but the simulator may still be working on the call
        // the dead gateway left: agreement counts only once the upstream has gone quiet.
        tokio::time::sleep_until((crashed + busy).into()).await;
        deployments = until_final(&harness, &gateway, label).await;
    }

    let sim = harness.sim_state().await;
    let budget = harness
        .admin(
            &gateway,
            Method::GET,
            &format!("/v1/teams/{TEAM}/budget"),
            None,
            None,
        )
        .await;
    let mut settlements = Vec::new();
    for deployment in &deployments {
        let audit = harness
            .admin(
                &gateway,
                Method::GET,
                &format!(
                    "/v1/audit?action=deployment.settled&target_id={}",
                    str_of(&deployment["id"])
                ),
                None,
                None,
            )
            .await;
        assert_eq!(audit.status, 200, "{label}: audit: {}", audit.text);
        settlements.push(audit.json["items"].as_array().map_or(0, Vec::len));
    }
    let context = format!(
        "{label}\ndeployments: {deployments:#?}\nsimulator: {sim:#}\ngateway log:\n{}",
        gateway.log_text()
    );
    drop(gateway);

    check_against_simulator(&deployments, &sim, &context);
    for (deployment, settled) in deployments.iter().zip(&settlements) {
        if deployment["status"] == "deployed" {
            assert_eq!(
                *settled, 1,
                "one settlement per deployment, however often recovery ran: {context}"
            );
        }
    }
    assert_eq!(budget.status, 200, "{label}: budget: {}", budget.text);
    assert_eq!(
        budget.json["reserved"], "0",
        "every hold is released once all are final: {}\n{context}",
        budget.text
    );
    assert_eq!(integrity_check(&harness.db_url()).await, "ok", "{context}");

    if let Some(id) = retried_id {
        assert_eq!(
            deployments.len(),
            1,
            "exactly one deployment for the Idempotency-Key: {context}"
        );
        assert_eq!(deployments[0]["id"], id.as_str(), "{context}");
    }
    if let Some(status) = scenario.expect {
        for deployment in &deployments {
            assert_eq!(deployment["status"], status, "{context}");
        }
    }
    if scenario.expect == Some("deployed") {
        for deployment in &deployments {
            assert_eq!(
                deployment["vms"].as_array().map_or(0, Vec::len),
                INSTANCES as usize,
                "the whole set is recorded: {context}"
            );
        }
    }
    consistent
}

/// Polls the team's deployments until every one is final, or panics after [`WAIT`].
async fn until_final(harness: &Harness, gateway: &Gateway, label: &str) -> Vec<Value> {
    let path = format!("/v1/deployments?team={TEAM}");
    let deadline = Instant::now() + WAIT;
    loop {
        // Runs the deployer now rather than on its 1 s tick; runs take turns, so this is safe.
        let _ = harness
            .admin(gateway, Method::POST, "/v1/jobs/deployer/run", None, None)
            .await;
        let list = harness.admin(gateway, Method::GET, &path, None, None).await;
        assert_eq!(list.status, 200, "{label}: list: {}", list.text);
        let items = list.json["items"].as_array().cloned().unwrap_or_default();
        if !items.is_empty() && items.iter().all(is_final) {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: not consistent {WAIT:?} after the restart: {items:#?}\nsimulator: {:#}\ngateway log:\n{}",
            harness.sim_state().await,
            gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The B1 checks (a)-(d): the gateway's deployments against the simulator's record.
fn check_against_simulator(deployments: &[Value], sim: &Value, context: &str) {
    let calls = deploy_calls(sim);
    let live = live_vms(sim);
    let all_ids: Vec<String> = sim["vms"]
        .as_array()
        .map(|vms| {
            vms.iter()
                .map(|vm| str_of(&vm["id"]).to_lowercase())
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<&str> = deployments
        .iter()
        .map(|d| str_of(&d["upstream_name"]))
        .collect();

    // Everything upstream belongs to some deployment: no call or VM under a name it lost.
    for call in &calls {
        let name = str_of(&call["body"]["vmConfiguration"]["name"]);
        assert!(
            names.contains(&name),
            "a deploy call for {name:?}, which no deployment has: {context}"
        );
    }
    for vm in &live {
        assert!(
            names.contains(&str_of(&vm["name"])),
            "an orphan VM upstream: {vm}: {context}"
        );
    }

    for deployment in deployments {
        let name = str_of(&deployment["upstream_name"]);
        let status = str_of(&deployment["status"]);
        assert!(!name.is_empty(), "no upstream_name: {context}");
        let sends = calls
            .iter()
            .filter(|c| c["body"]["vmConfiguration"]["name"] == name)
            .count();
        assert!(
            sends <= 1,
            "(a) {name} was sent {sends} times; a crash must be reconciled, never resent: {context}"
        );
        let upstream: Vec<String> = live
            .iter()
            .filter(|vm| vm["name"] == name)
            .map(|vm| str_of(&vm["id"]).to_lowercase())
            .collect();
        let instances = deployment["instances"].as_u64().unwrap_or_default();
        assert!(
            upstream.len() as u64 <= instances,
            "(a) more than one set of VMs named {name}: {upstream:?}: {context}"
        );
        let recorded: Vec<String> = deployment["vms"]
            .as_array()
            .map(|vms| vms.iter().map(|id| str_of(id).to_lowercase()).collect())
            .unwrap_or_default();
        for id in &upstream {
            assert!(
                recorded.contains(id),
                "(b) VM {id} of {name} exists upstream but the deployment does not list it: {context}"
            );
        }
        if !upstream.is_empty() {
            assert_eq!(status, "deployed", "(b) {name} has VMs upstream: {context}");
        }
        for id in &recorded {
            assert!(
                all_ids.contains(id),
                "(c) the deployment lists {id}, which the simulator never created: {context}"
            );
        }
        if status == "failed" {
            assert!(
                upstream.is_empty(),
                "(d) {name} failed but its VMs exist: {upstream:?}: {context}"
            );
        }
    }
}

/// SQLite's own check of the file every gateway was killed on (I8).
async fn integrity_check(db_url: &str) -> String {
    let pool = sqlx::SqlitePool::connect(db_url)
        .await
        .unwrap_or_else(|e| panic!("open {db_url}: {e}"));
    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap_or_else(|e| panic!("integrity_check: {e}"));
    pool.close().await;
    verdict
}

fn at_failpoint(label: &'static str, name: &'static str, expect: Option<&'static str>) -> Scenario {
    Scenario {
        label,
        crash_at: CrashAt::Failpoint(name),
        fault: None,
        crashes: 1,
        idempotency_key: None,
        upstream_busy_for: None,
        expect,
    }
}

#[tokio::test]
async fn b1_crash_after_idempotency_claim_point_1() {
    let seconds = crash_and_recover(Scenario {
        idempotency_key: Some("b1-1"),
        // Before the deployment exists: the retry creates it, and it goes the whole way.
        ..at_failpoint("B1 point 1", "idempotency.after_claim", Some("deployed"))
    })
    .await;
    eprintln!("B1 point 1: consistent {seconds:.2} s after restart");
}

#[tokio::test]
async fn b1_crash_after_admission_commit_point_2() {
    // Admitted, nothing sent: the pipeline continues from the hold it already has.
    let seconds = crash_and_recover(at_failpoint(
        "B1 point 2",
        "admission.after_commit",
        Some("deployed"),
    ))
    .await;
    eprintln!("B1 point 2: consistent {seconds:.2} s after restart");
}

#[tokio::test]
async fn b1_crash_before_the_deploy_is_sent_point_3() {
    // The intent is durable but nothing left: reconciliation finds no VM and fails it; a
    // resend would be a guess.
    let seconds = crash_and_recover(at_failpoint(
        "B1 point 3",
        "deploy.before_send",
        Some("failed"),
    ))
    .await;
    eprintln!("B1 point 3: consistent {seconds:.2} s after restart");
}

#[tokio::test]
async fn b1_crash_while_upstream_holds_the_deploy_point_4() {
    // Whether the upstream goes on to create the VMs once its client is gone is its own
    // business (this simulator drops the held call, so nothing is created), so no outcome is
    // expected: the gateway has to agree with the simulator once the delay is over.
    let seconds = crash_and_recover(Scenario {
        label: "B1 point 4",
        crash_at: CrashAt::UpstreamHolding,
        fault: Some(
            json!({"endpoint": "POST /vms/v3", "fault": "delay", "delay_ms": 3000, "count": 1}),
        ),
        crashes: 1,
        idempotency_key: None,
        upstream_busy_for: Some(Duration::from_millis(3000 + 500)),
        expect: None,
    })
    .await;
    eprintln!("B1 point 4: consistent {seconds:.2} s after restart");
}

#[tokio::test]
async fn b1_crash_after_upstream_commit_before_the_answer_point_5() {
    let seconds = crash_and_recover(Scenario {
        label: "B1 point 5",
        crash_at: CrashAt::UpstreamCommitted,
        fault: Some(json!({"endpoint": "POST /vms/v3", "fault": "commit_then_hang", "count": 1})),
        crashes: 1,
        idempotency_key: None,
        upstream_busy_for: None,
        expect: Some("deployed"),
    })
    .await;
    eprintln!("B1 point 5: consistent {seconds:.2} s after restart");
}

#[tokio::test]
async fn b1_crash_after_the_answer_before_it_is_recorded_point_6() {
    let seconds = crash_and_recover(at_failpoint(
        "B1 point 6",
        "deploy.after_response",
        Some("deployed"),
    ))
    .await;
    eprintln!("B1 point 6: consistent {seconds:.2} s after restart");
}

#[tokio::test]
async fn b1_crash_after_the_vms_are_recorded_point_7() {
    let seconds = crash_and_recover(at_failpoint(
        "B1 point 7",
        "deploy.after_commit",
        Some("deployed"),
    ))
    .await;
    eprintln!("B1 point 7: consistent {seconds:.2} s after restart");
}

#[tokio::test]
async fn b1_crash_during_settlement_point_8() {
    let seconds = crash_and_recover(at_failpoint(
        "B1 point 8",
        "settle.before_commit",
        Some("deployed"),
    ))
    .await;
    eprintln!("B1 point 8: consistent {seconds:.2} s after restart");
}

#[tokio::test]
async fn b4_crash_during_recovery_from_a_crash_during_settlement() {
    let seconds = crash_and_recover(Scenario {
        crashes: 2,
        ..at_failpoint("B4 point 8 twice", "settle.before_commit", Some("deployed"))
    })
    .await;
    eprintln!("B4 point 8 twice: consistent {seconds:.2} s after restart");
}
