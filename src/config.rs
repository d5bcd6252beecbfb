//! Layered, validated configuration.
//!
//! Embedded `config/default.toml` < a TOML file (`--config` or `GATEWAY_CONFIG`) < environment
//! variables `GATEWAY__SECTION__KEY`. Secrets come only from the environment or `*_FILE` paths.
//! Loading takes the environment as a value so tests never mutate the process environment.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::domain::money::Usdc;
use crate::fluence::client::validate_base_url;

/// The defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

const ENV_PREFIX: &str = "GATEWAY__";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub rate_limit: RateLimitSettings,
    pub database: DatabaseSettings,
    pub upstream: UpstreamSettings,
    pub simulator: SimulatorSettings,
    pub jobs: JobSettings,
    pub webhook: WebhookSettings,
    pub log: LogSettings,
    #[serde(skip)]
    pub secrets: Secrets,
    /// From `GATEWAY_FAILPOINTS`; honoured only by test builds (see `failpoint`).
    #[serde(skip)]
    pub failpoints: crate::failpoint::Failpoints,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub request_timeout_secs: u64,
    pub body_limit_bytes: usize,
    pub shutdown_grace_secs: u64,
    pub header_read_timeout_secs: u64,
}

/// The in-memory cache of checked keys (`auth::cache`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub key_cache_secs: u64,
    pub key_cache_entries: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub per_key_per_second: u32,
    pub per_key_burst: u32,
    pub per_team_per_second: u32,
    pub per_team_burst: u32,
    pub failed_auth_per_minute: u32,
    pub failed_auth_burst: u32,
    pub prune_interval_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub busy_timeout_ms: u64,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamMode {
    /// The built-in simulator, in this process.
    Simulator,
    /// The real Fluence API, or an external simulator, at `base_url`.
    Fluence,
}

impl UpstreamMode {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamMode::Simulator => "simulator",
            UpstreamMode::Fluence => "fluence",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthSchemeSetting {
    XApiKey,
    Bearer,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub mode: UpstreamMode,
    pub base_url: String,
    pub auth_scheme: AuthSchemeSetting,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_in_flight: u32,
    pub breaker_failures: u32,
    pub breaker_open_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimClock {
    Wall,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimBilling {
    PerInstance,
    Global,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSettings {
    pub listen: SocketAddr,
    pub seed: u64,
    pub clock: SimClock,
    pub launch_seconds: u64,
    pub billing_mode: SimBilling,
    pub initial_balance: Usdc,
}

/// Where budget events are sent. An empty `url` means none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub url: String,
    pub timeout_ms: u64,
    pub max_attempts: u32,
}

impl WebhookSettings {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    pub deployer_interval_secs: u64,
    pub inventory_interval_secs: u64,
    pub prices_interval_secs: u64,
    pub catalog_interval_secs: u64,
    pub reaper_interval_secs: u64,
    pub webhooks_interval_secs: u64,
    pub deployer_concurrency: u32,
    /// Whether a submitted deployment wakes the deploy worker at once, instead of waiting for
    /// its next scheduled run.
    pub deployer_on_submit: bool,
    pub price_recheck_secs: u64,
    pub reconcile_grace_secs: u64,
    pub billing_guard_secs: u64,
    pub idempotency_retention_hours: u64,
    pub price_retention_days: u64,
    pub catalog_ttl_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Auto,
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

/// Secrets, redacted in `Debug` by `secrecy`.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub fluence_api_key: Option<SecretString>,
    pub admin_token: Option<SecretString>,
    /// The key webhook bodies are signed with (HMAC-SHA256).
    pub webhook_secret: Option<SecretString>,
}

/// Why the configuration cannot be used. Each message names the key or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("configuration: {}", .0.join("; "))]
    Problems(Vec<String>),
}

/// What [`Settings::load`] reads: an optional file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub config_file: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

impl Sources {
    /// The process's own environment, and `--config` if given.
    pub fn from_process(config_file: Option<PathBuf>) -> Self {
        Sources {
            config_file,
            env: std::env::vars().collect(),
        }
    }
}

/// Settings and the warnings found while loading them (to be logged once logging is up).
#[derive(Debug)]
pub struct Loaded {
    pub settings: Settings,
    pub warnings: Vec<String>,
}

impl Settings {
    pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
        let env: BTreeMap<&str, &str> = sources
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let known = known_keys()?;
        let mut warnings = Vec::new();

        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        let file = sources
            .config_file
            .clone()
            .or_else(|| env.get("GATEWAY_CONFIG").map(PathBuf::from));
        if let Some(file) = &file {
            if !file.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        let mut overrides = Vec::new();
        for (name, value) in &env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            if known.contains(&key) {
                overrides.push((key, (*value).to_owned()));
            } else {
                warnings.push(format!("unknown setting {name} ignored"));
            }
        }
        figment = figment.merge(EnvLayer { overrides });

        let mut settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        settings.secrets = Secrets {
            fluence_api_key: secret(&env, "FLUENCE_API_KEY")?,
            admin_token: secret(&env, "GATEWAY_ADMIN_TOKEN")?,
            webhook_secret: secret(&env, "GATEWAY_WEBHOOK_SECRET")?,
        };
        if let Some(token) = &settings.secrets.admin_token {
            check_admin_token(token)?;
        }
        if let Some(spec) = env.get("GATEWAY_FAILPOINTS") {
            settings.failpoints = crate::failpoint::Failpoints::parse(spec)
                .map_err(|e| ConfigError::Invalid(format!("GATEWAY_FAILPOINTS: {e}")))?;
        }
        settings.validate()?;
        Ok(Loaded { settings, warnings })
    }

    /// Checks that go beyond types. Every problem is reported, not just the first.
    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.upstream.mode == UpstreamMode::Fluence && self.secrets.fluence_api_key.is_none() {
            problems.push(
                "upstream.mode is `fluence` but FLUENCE_API_KEY (or FLUENCE_API_KEY_FILE) is not set"
                    .to_owned(),
            );
        }
        if let Err(problem) = validate_base_url(&self.upstream.base_url) {
            problems.push(format!("upstream.base_url: {problem}"));
        }
        if !self.database.url.starts_with("sqlite:") {
            problems.push("database.url must start with `sqlite:`".to_owned());
        }
        let positive = [
            (
                "server.request_timeout_secs",
                self.server.request_timeout_secs,
            ),
            (
                "server.body_limit_bytes",
                self.server.body_limit_bytes as u64,
            ),
            ("database.busy_timeout_ms", self.database.busy_timeout_ms),
            (
                "server.header_read_timeout_secs",
                self.server.header_read_timeout_secs,
            ),
            (
                "rate_limit.per_team_per_second",
                u64::from(self.rate_limit.per_team_per_second),
            ),
            (
                "rate_limit.per_team_burst",
                u64::from(self.rate_limit.per_team_burst),
            ),
            (
                "rate_limit.per_key_per_second",
                u64::from(self.rate_limit.per_key_per_second),
            ),
            (
                "rate_limit.per_key_burst",
                u64::from(self.rate_limit.per_key_burst),
            ),
            (
                "rate_limit.failed_auth_per_minute",
                u64::from(self.rate_limit.failed_auth_per_minute),
            ),
            (
                "rate_limit.failed_auth_burst",
                u64::from(self.rate_limit.failed_auth_burst),
            ),
            (
                "rate_limit.prune_interval_secs",
                self.rate_limit.prune_interval_secs,
            ),
            (
                "database.max_connections",
                u64::from(self.database.max_connections),
            ),
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            (
                "upstream.max_in_flight",
                u64::from(self.upstream.max_in_flight),
            ),
            (
                "upstream.breaker_failures",
                u64::from(self.upstream.breaker_failures),
            ),
            (
                "upstream.breaker_open_secs",
                self.upstream.breaker_open_secs,
            ),
            (
                "upstream.request_timeout_ms",
                self.upstream.request_timeout_ms,
            ),
            (
                "jobs.deployer_interval_secs",
                self.jobs.deployer_interval_secs,
            ),
            (
                "jobs.inventory_interval_secs",
                self.jobs.inventory_interval_secs,
            ),
            ("jobs.prices_interval_secs", self.jobs.prices_interval_secs),
            (
                "jobs.catalog_interval_secs",
                self.jobs.catalog_interval_secs,
            ),
            ("jobs.reaper_interval_secs", self.jobs.reaper_interval_secs),
            (
                "jobs.webhooks_interval_secs",
                self.jobs.webhooks_interval_secs,
            ),
            ("webhook.timeout_ms", self.webhook.timeout_ms),
            ("webhook.max_attempts", u64::from(self.webhook.max_attempts)),
            (
                "jobs.deployer_concurrency",
                u64::from(self.jobs.deployer_concurrency),
            ),
            (
                "jobs.idempotency_retention_hours",
                self.jobs.idempotency_retention_hours,
            ),
            ("jobs.price_retention_days", self.jobs.price_retention_days),
            ("jobs.catalog_ttl_secs", self.jobs.catalog_ttl_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                problems.push(format!("{key} must be greater than 0"));
            }
        }
        if self.webhook.enabled() {
            if !(self.webhook.url.starts_with("https://")
                || self.webhook.url.starts_with("http://"))
            {
                problems.push("webhook.url must be an http(s) URL".to_owned());
            }
            if self.secrets.webhook_secret.is_none() {
                problems.push(
                    "webhook.url is set but GATEWAY_WEBHOOK_SECRET (or GATEWAY_WEBHOOK_SECRET_FILE) is not: deliveries are always signed"
                        .to_owned(),
                );
            }
        }
        // Upper bounds keep every duration derived from these far inside chrono's range.
        let bounded = [
            (
                "jobs.deployer_concurrency",
                u64::from(self.jobs.deployer_concurrency),
                64,
            ),
            (
                "jobs.price_recheck_secs",
                self.jobs.price_recheck_secs,
                7 * 86_400,
            ),
            (
                "jobs.reconcile_grace_secs",
                self.jobs.reconcile_grace_secs,
                86_400,
            ),
            (
                "jobs.billing_guard_secs",
                self.jobs.billing_guard_secs,
                86_400,
            ),
            (
                "jobs.idempotency_retention_hours",
                self.jobs.idempotency_retention_hours,
                24 * 30,
            ),
            (
                "jobs.price_retention_days",
                self.jobs.price_retention_days,
                3650,
            ),
            (
                "jobs.catalog_ttl_secs",
                self.jobs.catalog_ttl_secs,
                30 * 86_400,
            ),
            (
                "upstream.request_timeout_ms",
                self.upstream.request_timeout_ms,
                600_000,
            ),
            (
                "database.busy_timeout_ms",
                self.database.busy_timeout_ms,
                600_000,
            ),
        ];
        for (key, value, max) in bounded {
            if value > max {
                problems.push(format!("{key} must be at most {max}"));
            }
        }
        if self.simulator.launch_seconds > 600 {
            problems.push("simulator.launch_seconds must be at most 600".to_owned());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            problems.push(format!(
                "log.filter {:?} is not a valid filter",
                self.log.filter
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Problems(problems))
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.server.request_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_grace_secs)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.server.header_read_timeout_secs)
    }
}

/// Reads `NAME` or the file named by `NAME_FILE` (not both); a trailing newline is dropped.
/// An empty variable counts as unset (compose files pass `${NAME:-}`), an empty file does not.
fn secret(env: &BTreeMap<&str, &str>, name: &str) -> Result<Option<SecretString>, ConfigError> {
    let file_var = format!("{name}_FILE");
    let direct = env.get(name).filter(|value| !value.is_empty());
    let value = match (direct, env.get(file_var.as_str())) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid(format!(
                "set {name} or {file_var}, not both"
            )));
        }
        (Some(value), None) => (*value).to_owned(),
        (None, Some(path)) => std::fs::read_to_string(Path::new(path))
            .map_err(|e| ConfigError::Invalid(format!("{file_var}: cannot read {path}: {e}")))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if value.trim().is_empty() {
        return Err(ConfigError::Invalid(format!("{name} is empty")));
    }
    Ok(Some(SecretString::from(value)))
}

/// The bootstrap token opens everything, so it must be hard to guess, and usable as a bearer
/// token (visible ASCII, no spaces).
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

fn check_admin_token(token: &SecretString) -> Result<(), ConfigError> {
    use secrecy::ExposeSecret;
    let token = token.expose_secret();
    if token.len() < MIN_ADMIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::Invalid(format!(
            "GATEWAY_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LEN} visible ASCII characters \
             without spaces (e.g. `openssl rand -hex 32`)"
        )));
    }
    Ok(())
}

/// Every `section.key` of the defaults: the only names the environment may set.
fn known_keys() -> Result<BTreeSet<String>, ConfigError> {
    let dict = Toml::string(DEFAULT_TOML)
        .data()
        .map_err(|e| ConfigError::Invalid(format!("embedded defaults: {e}")))?;
    let mut keys = BTreeSet::new();
    for sections in dict.values() {
        for (section, value) in sections {
            if let Some(dict) = value.as_dict() {
                keys.extend(dict.keys().map(|key| format!("{section}.{key}")));
            }
        }
    }
    Ok(keys)
}

/// Figment's errors already name the key and the source; keep that, one line.
fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `GATEWAY__*` overrides, as a figment provider whose errors name the variable.
struct EnvLayer {
    overrides: Vec<(String, String)>,
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").interpolater(|_profile, keys| {
            format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (key, raw) in &self.overrides {
            let Some((section, field)) = key.split_once('.') else {
                continue;
            };
            // Values are typed the way figment types environment variables (numbers, booleans,
            // otherwise strings); a quoted value stays a string.
            let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
            let entry = root
                .entry(section.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, dict) = entry {
                dict.insert(field.to_owned(), value);
            }
        }
        Ok(Profile::Default.collect(root))
    }
}
