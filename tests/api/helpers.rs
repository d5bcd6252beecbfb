//! Shared test setup: a gateway on port 0 with its own SQLite file and its own simulator.

use std::net::SocketAddr;

use fluence_gateway::config::{Settings, Sources};
use fluence_gateway::simulator::{self, ClockMode, SimulatorConfig, SimulatorHandle};
use secrecy::SecretString;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SIM_KEY: &str = "test-fluence-key";

/// A simulator with a manual clock that accepts [`SIM_KEY`].
pub async fn spawn_simulator() -> SimulatorHandle {
    simulator::spawn(SimulatorConfig {
        api_keys: vec![SecretString::from(SIM_KEY)],
        clock: ClockMode::Manual,
        ..SimulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("simulator: {e}"))
}

/// Settings as the process would load them from `env` (plus a temporary database).
pub fn settings(db_dir: &TempDir, env: &[(&str, &str)]) -> Settings {
    let mut vars: Vec<(String, String)> = vec![(
        "GATEWAY__DATABASE__URL".into(),
        format!("sqlite://{}", db_dir.path().join("gateway.db").display()),
    )];
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Settings::load(&Sources {
        config_file: None,
        env: vars,
    })
    .unwrap_or_else(|e| panic!("settings: {e}"))
    .settings
}

pub struct TestApp {
    pub address: SocketAddr,
    pub http: reqwest::Client,
    // Owned so that the simulator and the database outlive the gateway that uses them.
    #[allow(dead_code)]
    pub sim: Option<SimulatorHandle>,
    #[allow(dead_code)]
    pub db_dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), fluence_gateway::startup::StartupError>>>,
}

impl TestApp {
    /// A gateway in `fluence` mode whose upstream is a fresh simulator of this test's own.
    pub async fn spawn() -> TestApp {
        let sim = spawn_simulator().await;
        let db_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let base_url = sim.base_url();
        let settings = settings(
            &db_dir,
            &[
                ("GATEWAY__UPSTREAM__MODE", "fluence"),
                ("GATEWAY__UPSTREAM__BASE_URL", &base_url),
                ("FLUENCE_API_KEY", SIM_KEY),
            ],
        );
        TestApp::spawn_with(settings, Some(sim), db_dir).await
    }

    /// A gateway with the given settings.
    pub async fn spawn_with(
        settings: Settings,
        sim: Option<SimulatorHandle>,
        db_dir: TempDir,
    ) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(fluence_gateway::run(settings, listener, async move {
            let _ = rx.await;
        }));
        TestApp {
            address,
            http: reqwest::Client::new(),
            sim,
            db_dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Stops the gateway and returns how `run` ended.
    pub async fn stop(mut self) -> Result<(), fluence_gateway::startup::StartupError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| panic!("gateway task: {e}")),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
