//! `GET /metrics`: valid Prometheus text, requests counted by route template (never the raw
//! path), consistent histograms, upstream calls by endpoint and outcome, per-team budget
//! gauges from the database, VM counts, every job, no secret, and a database that cannot be
//! read costing only the database's series.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, SIM_KEY, TestApp, deploy_body};

/// Label pairs in the order written.
type Labels = Vec<(String, String)>;

/// One sample line: its name, its labels in order, and its value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

fn is_name(text: &str, colons: bool) -> bool {
    let mut chars = text.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'));
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// Parses `{a="x",b="y\"z"}` (the braces included) from the start of `text`; returns the
/// labels and the rest of the line.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = text.strip_prefix('{').ok_or("no {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_owned(), value));
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by ,".into());
        }
    }
}

/// A small checker of the text format (0.0.4): every line is a `# HELP`, a `# TYPE` or a
/// sample; names and label names are well formed; label values use only the three escapes;
/// values are numbers; every sample belongs to a family whose `TYPE` came first, declared once.
fn parse_exposition(text: &str) -> Vec<Sample> {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), Some(_)) => assert!(is_name(name, true), "{line}"),
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(is_name(name, true), "{line}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "TYPE declared twice: {line}"
                    );
                }
                _ => panic!("a malformed comment line: {line:?}"),
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        assert!(is_name(name, true), "bad metric name in {line:?}");
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).unwrap_or_else(|e| panic!("{e}: {line:?}"))
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value: {line:?}"))
            .split(' ');
        let value = fields
            .next()
            .and_then(parse_value)
            .unwrap_or_else(|| panic!("bad value: {line:?}"));
        if let Some(timestamp) = fields.next() {
            assert!(timestamp.parse::<i64>().is_ok(), "bad timestamp: {line:?}");
        }
        assert!(fields.next().is_none(), "trailing fields: {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample before its TYPE: {line:?}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// The value of the sample with exactly this name and these labels (in any order).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    wanted.sort();
    samples
        .iter()
        .find(|sample| {
            let mut have = sample.labels.clone();
            have.sort();
            sample.name == name && have == wanted
        })
        .map(|sample| sample.value)
}

fn value_or_zero(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or(0.0)
}

/// Every histogram series of `family`: buckets in ascending `le`, cumulative counts never
/// decreasing, `+Inf` last and equal to `_count`, and a `_sum`. Returns how many series.
fn check_histograms(samples: &[Sample], family: &str) -> usize {
    let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for sample in samples
        .iter()
        .filter(|s| s.name == format!("{family}_bucket"))
    {
        let le = sample
            .labels
            .iter()
            .find(|(k, _)| k == "le")
            .and_then(|(_, v)| parse_value(v))
            .unwrap_or_else(|| panic!("a bucket without le: {sample:?}"));
        let rest: Vec<(String, String)> = sample
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        series.entry(rest).or_default().push((le, sample.value));
    }
    for (labels, buckets) in &series {
        assert!(
            buckets.windows(2).all(|w| w[0].0 < w[1].0),
            "le ascending: {labels:?}"
        );
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "cumulative: {labels:?} {buckets:?}"
        );
        let (last_le, inf) = buckets[buckets.len() - 1];
        assert!(last_le.is_infinite(), "+Inf last: {labels:?}");
        let refs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            value(samples, &format!("{family}_count"), &refs),
            Some(inf),
            "+Inf == _count: {labels:?}"
        );
        let sum = value(samples, &format!("{family}_sum"), &refs)
            .unwrap_or_else(|| panic!("no _sum: {labels:?}"));
        assert!(sum >= 0.0);
    }
    series.len()
}

/// Scrapes `/metrics` (no key), checks the answer's type and format, and returns the text and
/// its samples.
async fn scrape(app: &TestApp) -> (String, Vec<Sample>) {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.unwrap_or_else(|e| panic!("{e}"));
    let samples = parse_exposition(&text);
    (text, samples)
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(ADMIN_TOKEN), "the admin token leaked");
    assert!(!text.contains(SIM_KEY), "the Fluence key leaked");
}

#[tokio::test]
async fn requests_are_counted_by_route_template_method_and_status() {
    let app = TestApp::spawn().await;
    app.create_team("ml", "500").await;
    let ok = app
        .call(Method::GET, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let missing = app
        .call(Method::GET, "/no/such/route/123", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(missing.status, 404);
    let anonymous = app.call(Method::GET, "/v1/teams", None, None).await;
    assert_eq!(anonymous.status, 401);
    let odd_method = app
        .call(
            Method::from_bytes(b"BREW").unwrap_or_else(|e| panic!("{e}")),
            "/v1/teams",
            None,
            None,
        )
        .await;
    assert_eq!(odd_method.status, 405);

    let (text, samples) = scrape(&app).await;
    let requests = "gateway_http_requests_total";
    let count = |route: &str, method: &str, status: &str| {
        value_or_zero(
            &samples,
            requests,
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(count("/v1/teams/{team}", "GET", "200"), 1.0, "{text}");
    assert_eq!(count("/v1/teams", "POST", "201"), 1.0, "{text}");
    assert_eq!(count("unmatched", "GET", "404"), 1.0, "{text}");
    assert_eq!(count("/v1/teams", "GET", "401"), 1.0, "{text}");
    assert_eq!(count("/v1/teams", "other", "405"), 1.0, "{text}");
    // Only templates: neither the team id nor the unknown path became a label.
    assert!(!text.contains("/v1/teams/ml"), "{text}");
    assert!(!text.contains("/no/such"), "{text}");
    assert!(!text.contains("BREW"), "{text}");
    for sample in samples.iter().filter(|s| s.name == requests) {
        let route = &sample.labels[0].1;
        assert!(route == "unmatched" || route.starts_with('/'), "{sample:?}");
    }

    let series = check_histograms(&samples, "gateway_http_request_duration_seconds");
    assert!(
        series >= 4,
        "one series per route and method seen: {series}"
    );
    assert_eq!(
        value(
            &samples,
            "gateway_http_request_duration_seconds_count",
            &[("route", "/v1/teams/{team}"), ("method", "GET")]
        ),
        Some(1.0)
    );
    check_histograms(&samples, "gateway_upstream_request_duration_seconds");

    // A scrape counts itself from the next scrape on.
    let (_, again) = scrape(&app).await;
    assert!(
        value_or_zero(
            &again,
            requests,
            &[("route", "/metrics"), ("method", "GET"), ("status", "200")]
        ) >= 1.0
    );
    assert_no_secret(&text);
}

#[tokio::test]
async fn team_budgets_vms_upstream_calls_and_jobs_are_exposed() {
    let app = TestApp::spawn_with_env(&[
        ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false"),
        ("GATEWAY__JOBS__REAPER_INTERVAL_SECS", "3600"),
    ])
    .await;
    app.run_job("deployer").await;
    app.create_team("ml", "500").await;
    app.create_team("ops", "12.5").await;

    let (text, samples) = scrape(&app).await;
    assert!(
        text.contains("gateway_team_budget_cap_usdc{team=\"ml\"} 500.000000\n"),
        "{text}"
    );
    assert!(text.contains("gateway_team_budget_cap_usdc{team=\"ops\"} 12.500000\n"));
    for family in ["spent", "committed", "reserved"] {
        assert!(
            text.contains(&format!(
                "gateway_team_budget_{family}_usdc{{team=\"ml\"}} 0.000000\n"
            )),
            "{family}: {text}"
        );
    }
    assert_eq!(value(&samples, "gateway_metrics_db_up", &[]), Some(1.0));
    assert_eq!(
        value(
            &samples,
            "gateway_vms",
            &[("status", "Active"), ("team", "ml")]
        ),
        Some(0.0),
        "a team without VMs shows zeros"
    );

    // One deploy that Fluence refuses (a 4xx), one that goes through.
    app.sim_post(
        "/_sim/faults",
        json!({"endpoint": "POST /vms/v3", "fault": "error_before_commit", "status": 422, "count": 1}),
    )
    .await;
    let refused = app
        .deploy(ADMIN_TOKEN, Some("ml"), deploy_body("refused", 1))
        .await;
    assert_eq!(refused.status, 202, "{}", refused.text);
    app.run_job("deployer").await;
    let accepted = app
        .deploy(ADMIN_TOKEN, Some("ml"), deploy_body("web", 2))
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    app.run_job("deployer").await;
    app.run_job("reaper").await;
    let id = accepted.json["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(app.deployment(&id).await["status"], "deployed");

    let (text, samples) = scrape(&app).await;
    let upstream = |endpoint: &str, outcome: &str| {
        value_or_zero(
            &samples,
            "gateway_upstream_requests_total",
            &[("endpoint", endpoint), ("outcome", outcome)],
        )
    };
    assert_eq!(upstream("POST /vms/v3", "status_4xx"), 1.0, "{text}");
    assert_eq!(upstream("POST /vms/v3", "ok"), 1.0, "{text}");
    assert!(upstream("POST /vms/v3/estimate", "ok") >= 2.0, "{text}");
    assert_eq!(upstream("POST /vms/v3", "transport"), 0.0);
    assert_eq!(
        value(
            &samples,
            "gateway_upstream_request_duration_seconds_count",
            &[("endpoint", "POST /vms/v3")]
        ),
        Some(2.0)
    );
    assert!(check_histograms(&samples, "gateway_upstream_request_duration_seconds") >= 15);

    // The two VMs are live and the team's; once settled, they are its commitment and their
    // first charge is spent. Each figure is the budget API's, exactly.
    let vms: f64 = samples
        .iter()
        .filter(|s| {
            s.name == "gateway_vms" && s.labels.iter().any(|(k, v)| k == "team" && v == "ml")
        })
        .map(|s| s.value)
        .sum();
    assert_eq!(vms, 2.0, "{text}");
    let budget = app
        .call(Method::GET, "/v1/teams/ml/budget", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(budget.status, 200, "{}", budget.text);
    let mut charged = 0.0;
    for figure in ["cap", "spent", "committed", "reserved"] {
        let exposed = value(
            &samples,
            &format!("gateway_team_budget_{figure}_usdc"),
            &[("team", "ml")],
        )
        .unwrap_or_else(|| panic!("{figure}: {text}"));
        let api: f64 = budget.json[figure]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{figure}: {}", budget.text));
        assert_eq!(exposed, api, "{figure}: the same figure as the budget API");
        if figure != "cap" {
            charged += exposed;
        }
    }
    assert!(
        charged > 0.0,
        "the deployment counts against the budget: {text}"
    );

    // Every job, with its last run.
    for job in ["deployer", "reaper"] {
        let labels = [("job", job)];
        assert!(value_or_zero(&samples, "gateway_job_runs_total", &labels) >= 1.0);
        assert_eq!(
            value(&samples, "gateway_job_failures_total", &labels),
            Some(0.0)
        );
        assert_eq!(
            value(&samples, "gateway_job_last_success", &labels),
            Some(1.0)
        );
        let at = value(&samples, "gateway_job_last_run_timestamp_seconds", &labels)
            .unwrap_or_else(|| panic!("{job}: {text}"));
        let now = chrono::Utc::now().timestamp() as f64;
        assert!((now - at).abs() < 300.0, "{job}: {at} vs {now}");
        assert!(value(&samples, "gateway_job_last_duration_seconds", &labels).is_some());
        assert_eq!(value(&samples, "gateway_job_running", &labels), Some(0.0));
    }
    assert_no_secret(&text);
}

#[tokio::test]
async fn a_failing_upstream_probe_is_counted_by_outcome() {
    let app = TestApp::spawn_with_env(&[
        ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false"),
        ("GATEWAY__JOBS__REAPER_INTERVAL_SECS", "3600"),
    ])
    .await;
    app.sim_post(
        "/_sim/faults",
        json!({"endpoint": "GET /marketplace/countries", "fault": "error_before_commit", "status": 503, "count": 1}),
    )
    .await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let (text, samples) = scrape(&app).await;
    assert_eq!(
        value(
            &samples,
            "gateway_upstream_requests_total",
            &[
                ("endpoint", "GET /marketplace/countries"),
                ("outcome", "status_5xx")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            "gateway_http_requests_total",
            &[("route", "/readyz"), ("method", "GET"), ("status", "503")]
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn an_unreadable_database_still_serves_the_process_metrics() {
    let app = TestApp::spawn_with_env(&[
        ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false"),
        ("GATEWAY__JOBS__REAPER_INTERVAL_SECS", "3600"),
    ])
    .await;
    app.create_team("ml", "500").await;
    // Take away a table the scrape reads: its query fails as a broken database's would.
    let store = app.store().await;
    sqlx::query("ALTER TABLE vms RENAME TO vms_gone")
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store.close().await;

    let (text, samples) = scrape(&app).await;
    assert_eq!(value(&samples, "gateway_metrics_db_up", &[]), Some(0.0));
    assert!(!text.contains("gateway_team_budget_cap_usdc{"), "{text}");
    assert!(!text.contains("gateway_vms{"), "{text}");
    assert_eq!(
        value(
            &samples,
            "gateway_http_requests_total",
            &[
                ("route", "/v1/teams"),
                ("method", "POST"),
                ("status", "201")
            ]
        ),
        Some(1.0)
    );
    assert!(value(&samples, "gateway_job_runs_total", &[("job", "deployer")]).is_some());
}
