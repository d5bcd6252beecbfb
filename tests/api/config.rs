//! Configuration layering (defaults < file < environment) and its errors.

use std::io::Write;

use fluence_gateway::config::{ConfigError, LogFormat, Settings, Sources, UpstreamMode};
use secrecy::ExposeSecret;

fn load(
    file: Option<&str>,
    env: &[(&str, &str)],
) -> Result<fluence_gateway::config::Loaded, ConfigError> {
    let mut file_handle = None;
    let config_file = file.map(|text| {
        let mut f = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let path = f.path().to_owned();
        file_handle = Some(f);
        path
    });
    Settings::load(&Sources {
        config_file,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    })
}

fn message(result: Result<fluence_gateway::config::Loaded, ConfigError>) -> String {
    match result {
        Ok(_) => panic!("expected a configuration error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_defaults_are_those_of_the_product_contract() {
    let settings = load(None, &[]).unwrap_or_else(|e| panic!("{e}")).settings;
    assert_eq!(settings.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(settings.database.url, "sqlite://data/gateway.db");
    assert_eq!(settings.upstream.mode, UpstreamMode::Simulator);
    assert_eq!(settings.upstream.base_url, "https://api.fluence.dev");
    assert_eq!(settings.jobs.deployer_interval_secs, 1);
    assert_eq!(settings.jobs.inventory_interval_secs, 30);
    assert_eq!(settings.jobs.prices_interval_secs, 900);
    assert_eq!(settings.jobs.catalog_interval_secs, 3600);
    assert_eq!(settings.jobs.reaper_interval_secs, 60);
    assert_eq!(settings.jobs.price_retention_days, 90);
    assert_eq!(settings.jobs.catalog_ttl_secs, 3600);
    assert!(settings.secrets.fluence_api_key.is_none());
    assert!(settings.secrets.admin_token.is_none());
}

#[test]
fn a_file_overrides_the_defaults_and_the_environment_overrides_the_file() {
    let file = "[server]\nlisten = \"127.0.0.1:9000\"\n[log]\nformat = \"json\"\n[jobs]\nreaper_interval_secs = 5\n";
    let loaded = load(
        Some(file),
        &[
            ("GATEWAY__SERVER__LISTEN", "0.0.0.0:7000"),
            ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3"),
            ("GATEWAY__UPSTREAM__MODE", "fluence"),
            ("GATEWAY__UPSTREAM__BASE_URL", "http://127.0.0.1:8090"),
            ("FLUENCE_API_KEY", "k-123"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let settings = loaded.settings;
    assert_eq!(settings.server.listen.to_string(), "0.0.0.0:7000");
    assert_eq!(settings.log.format, LogFormat::Json);
    assert_eq!(settings.jobs.reaper_interval_secs, 5);
    assert_eq!(settings.jobs.deployer_interval_secs, 3);
    assert_eq!(settings.jobs.inventory_interval_secs, 30);
    assert_eq!(settings.upstream.mode, UpstreamMode::Fluence);
    assert_eq!(
        settings
            .secrets
            .fluence_api_key
            .as_ref()
            .map(|k| k.expose_secret().to_owned())
            .as_deref(),
        Some("k-123")
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn gateway_config_names_the_file_when_no_flag_does() {
    let mut f = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
    f.write_all(b"[server]\nlisten = \"127.0.0.1:9111\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let path = f.path().display().to_string();
    let settings = load(None, &[("GATEWAY_CONFIG", &path)])
        .unwrap_or_else(|e| panic!("{e}"))
        .settings;
    assert_eq!(settings.server.listen.to_string(), "127.0.0.1:9111");
}

#[test]
fn an_unknown_gateway_variable_is_a_warning_not_an_error() {
    let loaded =
        load(None, &[("GATEWAY__SERVER__LISTNE", "1.2.3.4:5")]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].contains("GATEWAY__SERVER__LISTNE"));
    assert_eq!(loaded.settings.server.listen.to_string(), "127.0.0.1:8080");
}

#[test]
fn a_bad_value_names_the_variable_it_came_from() {
    let text = message(load(None, &[("GATEWAY__SERVER__LISTEN", "not-an-address")]));
    assert!(text.contains("GATEWAY__SERVER__LISTEN"), "{text}");
    let text = message(load(None, &[("GATEWAY__UPSTREAM__MODE", "prod")]));
    assert!(text.contains("GATEWAY__UPSTREAM__MODE"), "{text}");
}

#[test]
fn an_unknown_key_or_bad_type_in_a_file_is_an_error_naming_it() {
    let text = message(load(Some("[server]\nlisten_port = 80\n"), &[]));
    assert!(text.contains("listen_port"), "{text}");
    let text = message(load(Some("[jobs]\nreaper_interval_secs = \"soon\"\n"), &[]));
    assert!(text.contains("reaper_interval_secs"), "{text}");
    let text = message(load(Some("this is not toml"), &[]));
    assert!(!text.is_empty());
}

#[test]
fn a_missing_config_file_is_an_error() {
    let text = message(load(
        None,
        &[("GATEWAY_CONFIG", "/nonexistent/gateway.toml")],
    ));
    assert!(text.contains("/nonexistent/gateway.toml"), "{text}");
}

#[test]
fn fluence_mode_requires_a_key() {
    let text = message(load(None, &[("GATEWAY__UPSTREAM__MODE", "fluence")]));
    assert!(text.contains("FLUENCE_API_KEY"), "{text}");
}

#[test]
fn every_invalid_value_is_reported_at_once() {
    let text = message(load(
        None,
        &[
            ("GATEWAY__JOBS__REAPER_INTERVAL_SECS", "0"),
            ("GATEWAY__UPSTREAM__BASE_URL", "ftp://example.com"),
            ("GATEWAY__DATABASE__URL", "postgres://x"),
        ],
    ));
    for needle in [
        "jobs.reaper_interval_secs",
        "upstream.base_url",
        "database.url",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
}

#[test]
fn a_base_url_with_credentials_is_refused() {
    let text = message(load(
        None,
        &[(
            "GATEWAY__UPSTREAM__BASE_URL",
            "https://user:pw@api.fluence.dev",
        )],
    ));
    assert!(text.contains("upstream.base_url"), "{text}");
    assert!(
        !text.contains("pw@"),
        "the URL's secret part is not echoed: {text}"
    );
}

#[test]
fn secrets_come_from_files_too_and_never_from_both_places() {
    let mut f = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
    f.write_all(b"file-secret-value-0123456789abcdef-xyz\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let path = f.path().display().to_string();
    let settings = load(None, &[("GATEWAY_ADMIN_TOKEN_FILE", &path)])
        .unwrap_or_else(|e| panic!("{e}"))
        .settings;
    assert_eq!(
        settings
            .secrets
            .admin_token
            .as_ref()
            .map(|k| k.expose_secret().to_owned())
            .as_deref(),
        Some("file-secret-value-0123456789abcdef-xyz")
    );
    let text = message(load(
        None,
        &[
            ("GATEWAY_ADMIN_TOKEN_FILE", &path),
            ("GATEWAY_ADMIN_TOKEN", "x"),
        ],
    ));
    assert!(text.contains("not both"), "{text}");
    let text = message(load(None, &[("FLUENCE_API_KEY", "  ")]));
    assert!(text.contains("FLUENCE_API_KEY is empty"), "{text}");
    // Compose passes `${FLUENCE_API_KEY:-}`: an empty variable is the same as none.
    let settings = load(None, &[("FLUENCE_API_KEY", "")])
        .unwrap_or_else(|e| panic!("{e}"))
        .settings;
    assert!(settings.secrets.fluence_api_key.is_none());
}

#[test]
fn a_weak_bootstrap_admin_token_is_refused() {
    for weak in [
        "short",
        "has spaces in it but is long enough to pass",
        "\u{e9}\u{e9}\u{e9}",
    ] {
        let text = message(load(None, &[("GATEWAY_ADMIN_TOKEN", weak)]));
        assert!(text.contains("GATEWAY_ADMIN_TOKEN"), "{text}");
        assert!(
            !text.contains(weak),
            "the token itself is not echoed: {text}"
        );
    }
}

#[test]
fn debug_output_of_the_settings_never_shows_a_secret() {
    let canary = "canary-7f3a9c1e-fluence-key";
    let admin = "canary-admin-token-55d2-0123456789abcdef";
    let settings = load(
        None,
        &[("FLUENCE_API_KEY", canary), ("GATEWAY_ADMIN_TOKEN", admin)],
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .settings;
    let debug = format!("{settings:?} {settings:#?}");
    assert!(!debug.contains(canary));
    assert!(!debug.contains(admin));
    assert!(debug.contains("REDACTED"), "{debug}");
}

#[test]
fn price_retention_and_catalog_ttl_are_bounded() {
    let text = message(load(
        None,
        &[
            ("GATEWAY__JOBS__PRICE_RETENTION_DAYS", "0"),
            ("GATEWAY__JOBS__CATALOG_TTL_SECS", "99999999"),
        ],
    ));
    assert!(text.contains("jobs.price_retention_days"), "{text}");
    assert!(text.contains("jobs.catalog_ttl_secs"), "{text}");
}
