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
