//! Shared test setup: a gateway on port 0 with its own SQLite file and its own simulator.

use std::net::SocketAddr;

use fluence_gateway::config::{Settings, Sources};
use fluence_gateway::simulator::{self, ClockMode, SimulatorConfig, SimulatorHandle};
use secrecy::SecretString;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SIM_KEY: &str = "test-fluence-key";
/// The bootstrap admin token of every [`TestApp::spawn`] gateway.
pub const ADMIN_TOKEN: &str = "test-bootstrap-admin-token-0123456789abcdef";

/// A well-formed OpenSSH ed25519 public key line (not anyone's real key).
pub const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH test@gateway";

/// A valid deploy request: `instances` VMs of the smallest configuration in Germany.
pub fn deploy_body(name: &str, instances: u32) -> Value {
    serde_json::json!({
        "name": name,
        "instances": instances,
        "configuration": "cpu-2-ram-4gb-storage-25gb",
        "countries": ["DE"],
        "image": "ubuntu-24-04-x64",
        "ssh_keys": [SSH_KEY],
        "open_ports": [{"port": 80, "protocol": "tcp"}]
    })
}

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
    pub sim: Option<SimulatorHandle>,
    pub db_dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), fluence_gateway::startup::StartupError>>>,
}

impl TestApp {
    /// A gateway in `fluence` mode against its own simulator, presenting `fluence_key` (which
    /// the simulator may refuse) and no admin token.
    pub async fn spawn_with_fluence_key(fluence_key: &str) -> TestApp {
        let sim = spawn_simulator().await;
        let db_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let base_url = sim.base_url();
        let settings = settings(
            &db_dir,
            &[
                ("GATEWAY__UPSTREAM__MODE", "fluence"),
                ("GATEWAY__UPSTREAM__BASE_URL", &base_url),
                ("FLUENCE_API_KEY", fluence_key),
            ],
        );
        TestApp::spawn_with(settings, Some(sim), db_dir).await
    }

    /// A gateway in `fluence` mode whose upstream is a fresh simulator of this test's own,
    /// with [`ADMIN_TOKEN`] as its bootstrap admin token.
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with_env(&[]).await
    }

    /// [`TestApp::spawn`] with more environment variables.
    pub async fn spawn_with_env(extra: &[(&str, &str)]) -> TestApp {
        let sim = spawn_simulator().await;
        let db_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let base_url = sim.base_url();
        let mut env = vec![
            ("GATEWAY__UPSTREAM__MODE", "fluence"),
            ("GATEWAY__UPSTREAM__BASE_URL", base_url.as_str()),
            ("FLUENCE_API_KEY", SIM_KEY),
            ("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN),
        ];
        env.extend_from_slice(extra);
        let settings = settings(&db_dir, &env);
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

    /// Sends a request with an optional bearer key and JSON body; returns status, headers and
    /// the body parsed as JSON (`Value::Null` when empty or not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method.clone(), self.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
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

    /// Creates a team with a cap (admin), or panics.
    pub async fn create_team(&self, id: &str, cap: &str) -> Value {
        let reply = self
            .call(
                reqwest::Method::POST,
                "/v1/teams",
                Some(ADMIN_TOKEN),
                Some(serde_json::json!({"id": id, "name": format!("Team {id}"), "budget": {"cap": cap}})),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply.json
    }

    /// Mints a key of `role` for `team` (admin) and returns the secret.
    pub async fn mint_key(&self, team: &str, role: &str) -> String {
        self.mint_key_reply(team, role).await.json["key"]
            .as_str()
            .unwrap_or_else(|| panic!("no key"))
            .to_owned()
    }

    pub async fn mint_key_reply(&self, team: &str, role: &str) -> Reply {
        let reply = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/teams/{team}/keys"),
                Some(ADMIN_TOKEN),
                Some(serde_json::json!({"name": format!("{role} key"), "role": role})),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply
    }

    /// The gateway's database, opened beside it (for arranging rows the API cannot create).
    pub async fn store(&self) -> fluence_gateway::store::Store {
        fluence_gateway::store::Store::connect(&fluence_gateway::config::DatabaseSettings {
            url: format!(
                "sqlite://{}",
                self.db_dir.path().join("gateway.db").display()
            ),
            busy_timeout_ms: 5000,
            max_connections: 2,
        })
        .await
        .unwrap_or_else(|e| panic!("store: {e}"))
    }

    /// A key of `role` (for `team`, or an admin key for `None`) that expired a second ago,
    /// arranged in the database because the API only accepts future expiries. Returns the key.
    pub async fn insert_expired_key(
        &self,
        role: fluence_gateway::auth::Role,
        team: Option<&str>,
    ) -> String {
        use secrecy::ExposeSecret;
        let now = chrono::Utc::now();
        let (mut record, token) = fluence_gateway::store::keys::KeyRecord::mint(
            "expired".into(),
            role,
            team.map(str::to_owned),
            now - chrono::TimeDelta::days(1),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        record.expires_at = Some(now - chrono::TimeDelta::seconds(1));
        let store = self.store().await;
        let mut tx = store.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
        fluence_gateway::store::keys::insert(&mut tx, &record)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        token.expose_secret().to_owned()
    }

    /// `POST /v1/deployments` (with `?team=` when `key` is an admin's).
    pub async fn deploy(&self, key: &str, team: Option<&str>, body: Value) -> Reply {
        let path = match team {
            Some(team) => format!("/v1/deployments?team={team}"),
            None => "/v1/deployments".to_owned(),
        };
        self.call(reqwest::Method::POST, &path, Some(key), Some(body))
            .await
    }

    /// Runs a job now through the API and returns its status.
    pub async fn run_job(&self, job: &str) -> Value {
        let reply = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/jobs/{job}/run"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json
    }

    pub async fn deployment(&self, id: &str) -> Value {
        let reply = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/deployments/{id}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json
    }

    /// The simulator's ground truth (`GET /_sim/state`).
    pub async fn sim_state(&self) -> Value {
        let sim = self.sim.as_ref().unwrap_or_else(|| panic!("no simulator"));
        reqwest::get(format!("{}/_sim/state", sim.base_url()))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A `/_sim/` control call; panics unless it succeeds.
    pub async fn sim_post(&self, path: &str, body: Value) -> Value {
        let sim = self.sim.as_ref().unwrap_or_else(|| panic!("no simulator"));
        let response = self
            .http
            .post(format!("{}{path}", sim.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let reply = Reply::read(response).await;
        assert!(reply.status < 300, "{path}: {}", reply.text);
        reply.json
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

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
