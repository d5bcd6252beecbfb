//! The real binary, as an operator runs it: the standalone simulator, a gateway in `fluence`
//! mode pointed at it, and SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_fluence-gateway");

/// A child process whose JSON log lines arrive on a channel; killed when dropped.
struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Process {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(BINARY);
        command
            .args(args)
            .env_remove("RUST_LOG")
            .env("GATEWAY__LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("spawn: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, lines }
    }

    /// The first log line whose message contains `needle`, as JSON.
    fn wait_for(&self, needle: &str) -> Value {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("waiting for {needle:?}: {e}"));
            if let Ok(json) = serde_json::from_str::<Value>(&line) {
                if json["message"].as_str().is_some_and(|m| m.contains(needle)) {
                    return json;
                }
            }
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        self.child.wait().unwrap_or_else(|e| panic!("wait: {e}"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_gateway_in_fluence_mode_reports_the_standalone_simulator_as_a_healthy_upstream() {
    let simulator = Process::start(
        &[
            "simulator",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            "proc-key",
            "--manual-clock",
        ],
        &[],
    );
    let listening = simulator.wait_for("Fluence simulator listening");
    let sim_addr = listening["listen"].as_str().unwrap_or_default().to_owned();
    assert!(sim_addr.starts_with("127.0.0.1:"), "{listening}");

    let http = reqwest::Client::new();
    let without_key = http
        .get(format!("http://{sim_addr}/vms/v3"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(without_key.status(), 403);
    let body: Value = without_key.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        body,
        serde_json::json!({"error": "Auth failed. No such API Key"})
    );

    let db_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db_url = format!("sqlite://{}", db_dir.path().join("gateway.db").display());
    let base_url = format!("http://{sim_addr}");
    let mut gateway = Process::start(
        &["serve"],
        &[
            ("GATEWAY__SERVER__LISTEN", "127.0.0.1:0"),
            ("GATEWAY__DATABASE__URL", &db_url),
            ("GATEWAY__UPSTREAM__MODE", "fluence"),
            ("GATEWAY__UPSTREAM__BASE_URL", &base_url),
            ("FLUENCE_API_KEY", "proc-key"),
        ],
    );
    let ready = gateway.wait_for("fluence-gateway ready");
    assert_eq!(ready["upstream_mode"], "fluence");
    let addr = ready["listen"].as_str().unwrap_or_default().to_owned();

    let readyz: Value = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(readyz["status"], "ready", "{readyz}");
    assert_eq!(readyz["checks"]["upstream"]["ok"], true);
    assert_eq!(readyz["checks"]["upstream"]["base_url"], base_url.as_str());

    let status = gateway.terminate();
    assert!(
        status.success(),
        "SIGTERM ends the gateway cleanly: {status}"
    );
    gateway.wait_for("fluence-gateway stopped");
}

#[tokio::test]
async fn the_default_run_uses_the_built_in_simulator_and_says_so() {
    let db_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db_url = format!("sqlite://{}", db_dir.path().join("gateway.db").display());
    let mut gateway = Process::start(
        &[],
        &[
            ("GATEWAY__SERVER__LISTEN", "127.0.0.1:0"),
            ("GATEWAY__DATABASE__URL", &db_url),
        ],
    );
    let warning = gateway.wait_for("SIMULATOR");
    assert_eq!(warning["level"], "WARN");
    let ready = gateway.wait_for("fluence-gateway ready");
    assert_eq!(ready["upstream_mode"], "simulator");
    let addr = ready["listen"].as_str().unwrap_or_default().to_owned();
    let health: Value = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(health["upstream"]["mode"], "simulator");
    assert_eq!(health["upstream"]["simulated"], true);
    assert!(gateway.terminate().success());
}

#[test]
fn a_bad_setting_stops_start_up_with_a_message_naming_it() {
    let output = Command::new(BINARY)
        .env("GATEWAY__SERVER__LISTEN", "not-an-address")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GATEWAY__SERVER__LISTEN"), "{stderr}");
}

/// Every way a secret could be written down: plain, base64, hex, and as a bearer header.
fn forms_of(secret: &str) -> Vec<String> {
    use base64::Engine;
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        secret.to_owned(),
        format!("Bearer {secret}"),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        hex.clone(),
        hex.to_uppercase(),
    ]
}

fn find_any(haystack: &[u8], secrets: &[(&str, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (label, secret) in secrets {
        for form in forms_of(secret) {
            if haystack
                .windows(form.len())
                .any(|window| window == form.as_bytes())
            {
                found.push(format!("{label} as {form:?}"));
            }
        }
    }
    found
}

#[tokio::test]
async fn no_secret_reaches_logs_responses_or_the_database() {
    let fluence_key = "canary-fluence-key-3f9a1c";
    let admin_token = "canary-admin-token-77be20-5f0c1d9e2a4b6c8d";
    let sim = fluence_gateway::simulator::spawn(fluence_gateway::simulator::SimulatorConfig {
        api_keys: vec![secrecy::SecretString::from(fluence_key)],
        clock: fluence_gateway::simulator::ClockMode::Manual,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let db_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db_url = format!("sqlite://{}", db_dir.path().join("gateway.db").display());
    let base_url = sim.base_url();
    let log_path = db_dir.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(BINARY)
        .args(["serve"])
        .env("RUST_LOG", "trace")
        .env("GATEWAY__LOG__FORMAT", "json")
        .env("GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
        .env("GATEWAY__DATABASE__URL", &db_url)
        .env("GATEWAY__UPSTREAM__MODE", "fluence")
        .env("GATEWAY__UPSTREAM__BASE_URL", &base_url)
        .env("FLUENCE_API_KEY", fluence_key)
        .env("GATEWAY_ADMIN_TOKEN", admin_token)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = wait_for_listen(&log_path);

    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");
    let mut responses = Vec::new();
    let mut record = |text: String| responses.extend_from_slice(text.as_bytes());

    let ready = http
        .get(url("/readyz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    record(format!("{:?}", ready.headers()));
    record(ready.text().await.unwrap_or_default());
    let created = http
        .post(url("/v1/teams"))
        .bearer_auth(admin_token)
        .json(&serde_json::json!({"id": "ml", "name": "ML", "budget": {"cap": "5"}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    record(created.text().await.unwrap_or_default());
    // The one answer allowed to carry a secret: the key's creation. Kept out of the haystack.
    let minted: Value = http
        .post(url("/v1/teams/ml/keys"))
        .bearer_auth(admin_token)
        .json(&serde_json::json!({"name": "ci", "role": "member"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let team_key = minted["key"].as_str().unwrap_or_default().to_owned();
    let key_id = minted["id"].as_str().unwrap_or_default().to_owned();
    assert!(team_key.starts_with("fgw_"));
    let wrong = format!("{}Z", &team_key[..team_key.len() - 1]);
    for (key, path) in [
        (team_key.as_str(), "/v1/teams/ml/budget"),
        (wrong.as_str(), "/v1/teams/ml"),
        (team_key.as_str(), "/v1/teams/ml/keys"),
        (admin_token, "/v1/audit"),
        (admin_token, "/v1/teams/ml/keys"),
    ] {
        let reply = http
            .get(url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        record(format!("{:?}", reply.headers()));
        record(reply.text().await.unwrap_or_default());
    }
    let query_key = http
        .get(url(&format!("/v1/teams?api_key={team_key}")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    record(query_key.text().await.unwrap_or_default());
    let revoke = http
        .delete(url(&format!("/v1/teams/ml/keys/{key_id}")))
        .bearer_auth(admin_token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(revoke.status(), 204);
    let after = http
        .get(url("/v1/teams/ml"))
        .bearer_auth(&team_key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    record(after.text().await.unwrap_or_default());

    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()));
    let _ = child.wait();

    let secret_part = team_key[21..].to_owned();
    let secrets = [
        ("fluence key", fluence_key.to_owned()),
        ("admin token", admin_token.to_owned()),
        ("team key", team_key.clone()),
        ("team key secret", secret_part),
    ];
    let logs = std::fs::read(&log_path).unwrap_or_default();
    assert!(
        logs.len() > 1000,
        "trace logging captured: {} bytes",
        logs.len()
    );
    assert_eq!(
        find_any(&logs, &secrets),
        Vec::<String>::new(),
        "in the logs"
    );
    assert_eq!(
        find_any(&responses, &secrets),
        Vec::<String>::new(),
        "in responses"
    );
    for file in ["gateway.db", "gateway.db-wal", "gateway.db-shm"] {
        let bytes = std::fs::read(db_dir.path().join(file)).unwrap_or_default();
        assert_eq!(
            find_any(&bytes, &secrets),
            Vec::<String>::new(),
            "in {file}"
        );
    }
    let state = reqwest::get(format!("{base_url}/_sim/state"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert_eq!(
        find_any(state.as_bytes(), &secrets),
        Vec::<String>::new(),
        "upstream bodies"
    );
}

/// Reads the log file until the gateway says where it listens.
fn wait_for_listen(log_path: &std::path::Path) -> String {
    for _ in 0..300 {
        let text = std::fs::read_to_string(log_path).unwrap_or_default();
        for line in text.lines() {
            if let Ok(json) = serde_json::from_str::<Value>(line) {
                if json["message"] == "fluence-gateway ready" {
                    return json["listen"].as_str().unwrap_or_default().to_owned();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "the gateway never became ready: {}",
        std::fs::read_to_string(log_path).unwrap_or_default()
    );
}

#[tokio::test]
async fn admin_create_key_prints_a_working_admin_key_once() {
    let db_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db_url = format!("sqlite://{}", db_dir.path().join("gateway.db").display());
    let output = Command::new(BINARY)
        .args(["admin", "create-key", "--name", "ops-laptop"])
        .env("GATEWAY__DATABASE__URL", &db_url)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(printed["role"], "admin");
    assert_eq!(printed["name"], "ops-laptop");
    let key = printed["key"].as_str().unwrap_or_default();
    assert!(key.starts_with(printed["prefix"].as_str().unwrap_or("?")));
    let db = std::fs::read(db_dir.path().join("gateway.db")).unwrap_or_default();
    let wal = std::fs::read(db_dir.path().join("gateway.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "key stored in the clear"
        );
    }

    let mut gateway = Process::start(
        &["serve"],
        &[
            ("GATEWAY__SERVER__LISTEN", "127.0.0.1:0"),
            ("GATEWAY__DATABASE__URL", &db_url),
            ("GATEWAY__SIMULATOR__CLOCK", "manual"),
        ],
    );
    let addr = gateway.wait_for("fluence-gateway ready")["listen"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let http = reqwest::Client::new();
    let teams = http
        .get(format!("http://{addr}/v1/teams"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(teams.status(), 200, "the printed key is an admin key");
    let audit: Value = http
        .get(format!("http://{addr}/v1/audit?actor=cli"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(audit["items"][0]["action"], "key.create");
    assert!(gateway.terminate().success());

    let refused = Command::new(BINARY)
        .args(["admin", "create-key", "--name", ""])
        .env("GATEWAY__DATABASE__URL", &db_url)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!refused.status.success());
}
