//! The processes a scenario runs against: the standalone simulator binary, gateway binaries in
//! `fluence` mode pointed at it, each on its own SQLite file, and the suite-wide secrets.
//!
//! Every byte a process prints and every answer a client receives is also written to a file
//! under the run directory, so the J1 sweep can look for the canary secrets in all of it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::report::Profile;

/// The gateway binary cargo built for this test.
const BUILT: &str = env!("CARGO_BIN_EXE_fluence-gateway");
static BINARY_COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The gateway binary of this run: a copy taken when the run starts, so that a rebuild of
/// `target/` during a long run (`bench/run` builds the same path without failpoints) cannot
/// swap it underneath the scenarios.
pub fn binary() -> &'static Path {
    BINARY_COPY.get().map_or(Path::new(BUILT), PathBuf::as_path)
}
/// The longest any one wait may take: a start, a crash point, a consistent state.
pub const WAIT: Duration = Duration::from_secs(30);

/// A well-formed OpenSSH ed25519 public key line (not anyone's real key).
pub const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH rel@gateway";

/// A valid deploy request: `instances` VMs of the smallest configuration in Germany.
pub fn deploy_body(name: &str, instances: u32) -> Value {
    json!({
        "name": name,
        "instances": instances,
        "configuration": "cpu-2-ram-4gb-storage-25gb",
        "countries": ["DE"],
        "image": "ubuntu-24-04-x64",
        "ssh_keys": [SSH_KEY],
        "open_ports": [{"port": 80, "protocol": "tcp"}]
    })
}

/// What the whole run shares: its profile and seed, where it writes, and the secrets every
/// process is given, which must never come back out (J1).
pub struct Suite {
    pub profile: Profile,
    pub seed: u64,
    pub run_dir: PathBuf,
    /// The Fluence key the simulator accepts and every gateway holds: a canary.
    pub fluence_key: String,
    /// The bootstrap admin token of every gateway: a canary.
    pub admin_token: String,
    /// Team keys minted during the run, with a label: canaries too.
    team_keys: Mutex<Vec<String>>,
    /// Client-side record of every answer the suite received.
    responses: Mutex<File>,
    next_id: AtomicU64,
}

impl Suite {
    pub fn new(profile: Profile, seed: u64, run_dir: PathBuf) -> std::io::Result<Suite> {
        std::fs::create_dir_all(&run_dir)?;
        let copy = run_dir.join("fluence-gateway");
        std::fs::copy(BUILT, &copy)?;
        let _ = BINARY_COPY.set(copy);
        let responses = File::create(run_dir.join("responses.log"))?;
        Ok(Suite {
            profile,
            seed,
            fluence_key: format!("canary-fluence-{:016x}", seed ^ 0x5eed_f1ce),
            admin_token: format!("canary-admin-{:016x}-{:016x}", seed, !seed),
            team_keys: Mutex::new(Vec::new()),
            responses: Mutex::new(responses),
            next_id: AtomicU64::new(0),
            run_dir,
        })
    }

    /// A fresh directory under the run directory, named for `label`.
    pub fn dir(&self, label: &str) -> PathBuf {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let safe: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = self.run_dir.join(format!("{n:05}-{safe}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        dir
    }

    pub fn remember_team_key(&self, key: &str) {
        lock(&self.team_keys).push(key.to_owned());
    }

    /// Every secret the run handed out, labelled.
    pub fn canaries(&self) -> Vec<(String, String)> {
        let mut all = vec![
            ("fluence key".to_owned(), self.fluence_key.clone()),
            ("admin token".to_owned(), self.admin_token.clone()),
        ];
        for (i, key) in lock(&self.team_keys).iter().enumerate() {
            all.push((format!("team key {i}"), key.clone()));
        }
        all
    }

    fn record(&self, what: &str, reply: &Reply) {
        let mut file = lock(&self.responses);
        let _ = writeln!(
            file,
            "{what} -> {} {:?}\n{}",
            reply.status, reply.headers, reply.text
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A child process whose output is read by threads into a channel and a log file; killed
/// with SIGKILL when dropped.
struct Output {
    lines: mpsc::UnboundedReceiver<(Stream, String)>,
    /// Lines received but not yet matched by a wait.
    unread: Vec<(Stream, String)>,
    log_path: PathBuf,
}

impl Output {
    fn capture(child: &mut Child, log_path: PathBuf) -> Output {
        let (tx, lines) = mpsc::unbounded_channel();
        let file = Arc::new(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display())),
        ));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        forward(stdout, Stream::Stdout, tx.clone(), file.clone());
        forward(stderr, Stream::Stderr, tx, file);
        Output {
            lines,
            unread: Vec::new(),
            log_path,
        }
    }

    /// The first line on `stream` containing `needle`. Lines other waits passed over are kept.
    async fn wait_for(&mut self, stream: Stream, needle: &str) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let matches = |(from, line): &(Stream, String)| *from == stream && line.contains(needle);
        loop {
            if let Some(at) = self.unread.iter().position(matches) {
                return Ok(self.unread.remove(at).1);
            }
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.unread.push(line),
                Ok(None) => return Err(format!("the process ended before {needle:?}")),
                Err(_) => return Err(format!("no {needle:?} within {WAIT:?}")),
            }
        }
    }

    fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn forward(
    source: impl Read + Send + 'static,
    stream: Stream,
    tx: mpsc::UnboundedSender<(Stream, String)>,
    file: Arc<Mutex<File>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines().map_while(Result::ok) {
            let _ = writeln!(lock(&file), "{line}");
            // The receiver goes with its process; the pipe still has to be drained.
            let _ = tx.send((stream, line));
        }
    });
}

/// The standalone simulator binary (`fluence-gateway simulator`), with a manual clock.
pub struct Simulator {
    child: Child,
    _output: Output,
    pub base_url: String,
    http: reqwest::Client,
}

impl Simulator {
    pub async fn start(suite: &Suite, dir: &Path) -> Simulator {
        let seed = suite.seed.to_string();
        let mut child = Command::new(binary())
            .args(["simulator", "--listen", "127.0.0.1:0", "--manual-clock"])
            .args(["--api-key", &suite.fluence_key, "--seed", &seed])
            .env_remove("RUST_LOG")
            .env("GATEWAY__LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the simulator: {e}"));
        let mut output = Output::capture(&mut child, dir.join("simulator.log"));
        let line = output
            .wait_for(Stream::Stdout, "Fluence simulator listening")
            .await
            .unwrap_or_else(|e| panic!("simulator: {e}"));
        let listening: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let address = listening["listen"]
            .as_str()
            .unwrap_or_else(|| panic!("simulator line without `listen`: {line}"));
        Simulator {
            child,
            _output: output,
            base_url: format!("http://{address}"),
            http: reqwest::Client::new(),
        }
    }

    /// Ground truth: every VM, charge and call the simulator has seen.
    pub async fn state(&self) -> Value {
        self.control(Method::GET, "/_sim/state", None).await.json
    }

    /// A call to the control API; panics unless it succeeds.
    pub async fn control(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base_url));
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on the simulator: {e}"));
        let reply = Reply::read(response).await;
        assert!(
            reply.status < 300,
            "{method} {path} {body:?} on the simulator: {} {}",
            reply.status,
            reply.text
        );
        reply
    }

    /// Arms one `/_sim/faults` entry.
    pub async fn fault(&self, fault: Value) {
        self.control(Method::POST, "/_sim/faults", Some(fault))
            .await;
    }

    /// Moves virtual time forward, running whatever falls due.
    pub async fn advance(&self, seconds: u64) {
        self.control(
            Method::POST,
            "/_sim/clock",
            Some(json!({"advance_seconds": seconds})),
        )
        .await;
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start a gateway beyond the defaults of [`Gateway::start`].
#[derive(Debug, Clone, Default)]
pub struct GatewayOptions {
    /// `GATEWAY_FAILPOINTS`: crash points and seeded bugs.
    pub failpoints: Option<String>,
    /// More environment, applied last (so it can override a default).
    pub env: Vec<(String, String)>,
    /// A CPU to pin the process to (`taskset -c`), for latency figures (RELIABILITY.md 4.4):
    /// the gateway on one core, the suite's load and the simulator on the other.
    pub cpu: Option<u32>,
}

impl GatewayOptions {
    pub fn failpoints(spec: impl Into<String>) -> GatewayOptions {
        GatewayOptions {
            failpoints: Some(spec.into()),
            env: Vec::new(),
            cpu: None,
        }
    }

    pub fn on_cpu(mut self, cpu: u32) -> GatewayOptions {
        self.cpu = Some(cpu);
        self
    }

    pub fn with_env(mut self, key: &str, value: impl Into<String>) -> GatewayOptions {
        self.env.push((key.to_owned(), value.into()));
        self
    }
}

/// One run of the gateway binary, at `RUST_LOG=trace` so the J1 sweep sees everything.
pub struct Gateway {
    child: Child,
    output: Output,
    pub address: String,
    pub admin_token: String,
    http: reqwest::Client,
    suite: Arc<Suite>,
}

impl Gateway {
    pub async fn start(
        suite: &Arc<Suite>,
        sim: &Simulator,
        db_path: &Path,
        options: GatewayOptions,
    ) -> Gateway {
        let log_path = db_path.with_extension(format!(
            "{}.log",
            suite.next_id.fetch_add(1, Ordering::Relaxed)
        ));
        let mut command = match options.cpu {
            Some(cpu) => {
                let mut taskset = Command::new("taskset");
                taskset.arg("-c").arg(cpu.to_string()).arg(binary());
                taskset
            }
            None => Command::new(binary()),
        };
        command
            .arg("serve")
            .env_remove("GATEWAY_FAILPOINTS")
            .env("RUST_LOG", "trace")
            .env("GATEWAY__LOG__FORMAT", "json")
            .env("GATEWAY__UPSTREAM__MODE", "fluence")
            .env("GATEWAY__UPSTREAM__BASE_URL", &sim.base_url)
            .env("FLUENCE_API_KEY", &suite.fluence_key)
            .env("GATEWAY_ADMIN_TOKEN", &suite.admin_token)
            .env(
                "GATEWAY__DATABASE__URL",
                format!("sqlite://{}", db_path.display()),
            )
            // Port 0 and the address from the ready line: no port picked beforehand.
            .env("GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
            .env("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "1")
            .env("GATEWAY__JOBS__RECONCILE_GRACE_SECS", "0")
            .env("GATEWAY__UPSTREAM__REQUEST_TIMEOUT_MS", "1000")
            .env("GATEWAY__DATABASE__BUSY_TIMEOUT_MS", "5000")
            // The suite drives many requests from one key and team; the limits have their own rows.
            .env("GATEWAY__RATE_LIMIT__PER_KEY_PER_SECOND", "100000")
            .env("GATEWAY__RATE_LIMIT__PER_KEY_BURST", "100000")
            .env("GATEWAY__RATE_LIMIT__PER_TEAM_PER_SECOND", "100000")
            .env("GATEWAY__RATE_LIMIT__PER_TEAM_BURST", "100000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(spec) = &options.failpoints {
            command.env("GATEWAY_FAILPOINTS", spec);
        }
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary().display()));
        let output = Output::capture(&mut child, log_path);
        let mut gateway = Gateway {
            child,
            output,
            address: String::new(),
            admin_token: suite.admin_token.clone(),
            http: reqwest::Client::new(),
            suite: suite.clone(),
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The first line on `stream` containing `needle`; panics with the log tail otherwise.
    pub async fn wait_for(&mut self, stream: Stream, needle: &str) -> String {
        match self.output.wait_for(stream, needle).await {
            Ok(line) => line,
            Err(why) => panic!("gateway: {why}:\n{}", self.output.tail(40)),
        }
    }

    /// The last lines the gateway printed, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.output.tail(lines)
    }

    /// kill -9: `Child::kill` is SIGKILL on Unix, so nothing of the gateway runs after it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("wait for the gateway: {e}"))
    }

    /// A call with `key` as bearer token; the answer is recorded for the J1 sweep.
    pub async fn call(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method.clone(), self.url(path))
            .bearer_auth(key);
        if let Some(idempotency_key) = idempotency_key {
            request = request.header("Idempotency-Key", idempotency_key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let reply = match request.send().await {
            Ok(response) => Reply::read(response).await,
            Err(e) => panic!("{method} {path}: {e}:\n{}", self.output.tail(40)),
        };
        // A key's creation is the one answer allowed to carry a secret (its only showing).
        let mints_a_key = method == Method::POST && path.contains("/keys") && reply.status == 201;
        if !mints_a_key {
            self.suite.record(&format!("{method} {path}"), &reply);
        }
        reply
    }

    /// The client the gateway's own calls use, for requests a scenario builds itself.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request a scenario built itself (odd headers, raw bodies); the answer is
    /// recorded for the J1 sweep like any other. `Err` when no answer came (a reset).
    pub async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Reply, reqwest::Error> {
        let reply = Reply::read(request.send().await?).await;
        self.suite.record(what, &reply);
        Ok(reply)
    }

    /// A line of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`); 0 if unreadable.
    pub fn memory_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.pid(), field)
    }

    /// A call with the bootstrap admin token.
    pub async fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        self.call(&self.admin_token, method, path, body, None).await
    }

    /// Creates team `id` with budget `cap` (USDC) and optional extra fields; panics unless 201.
    pub async fn create_team(&self, id: &str, cap: &str, extra: Value) -> Value {
        let mut body = json!({"id": id, "name": id, "budget": {"cap": cap}});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let reply = self.admin(Method::POST, "/v1/teams", Some(&body)).await;
        assert_eq!(reply.status, 201, "create team {id}: {}", reply.text);
        reply.json
    }

    /// Mints a key for `team` with `role` and returns its secret (remembered as a canary).
    pub async fn mint_key(&self, team: &str, role: &str) -> String {
        let reply = self
            .admin(
                Method::POST,
                &format!("/v1/teams/{team}/keys"),
                Some(&json!({"name": format!("{role}-key"), "role": role})),
            )
            .await;
        assert_eq!(reply.status, 201, "mint key for {team}: {}", reply.text);
        let key = reply.json["key"].as_str().unwrap_or_default().to_owned();
        self.suite.remember_team_key(&key);
        key
    }

    /// Runs a background job now and returns its run record.
    pub async fn run_job(&self, job: &str) -> Value {
        let reply = self
            .admin(Method::POST, &format!("/v1/jobs/{job}/run"), None)
            .await;
        assert!(reply.status < 300, "run {job}: {}", reply.text);
        reply.json
    }

    /// Every deployment of `team`, following the list's cursor.
    pub async fn deployments(&self, team: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/deployments?team={team}&limit=500");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let reply = self.admin(Method::GET, &path, None).await;
            assert_eq!(reply.status, 200, "list deployments: {}", reply.text);
            all.extend(reply.json["items"].as_array().cloned().unwrap_or_default());
            match reply.json["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return all,
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`); 0 if unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One scenario's world: a simulator and a directory for its gateways' databases and logs.
pub struct World {
    pub suite: Arc<Suite>,
    pub sim: Simulator,
    pub dir: PathBuf,
}

impl World {
    pub async fn new(suite: &Arc<Suite>, label: &str) -> World {
        let dir = suite.dir(label);
        let sim = Simulator::start(suite, &dir).await;
        World {
            suite: suite.clone(),
            sim,
            dir,
        }
    }

    /// The database every gateway of this world opens.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join("gateway.db")
    }

    pub async fn gateway(&self, options: GatewayOptions) -> Gateway {
        Gateway::start(&self.suite, &self.sim, &self.db_path(), options).await
    }
}
