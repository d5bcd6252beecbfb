//! E and F and H: hostile clients against the real binary. E1 throws a corpus of bad bodies at
//! every write endpoint, E2 injects privileged fields into each of them, F1 tries every way
//! around authentication on every route the gateway's own route table lists, F2 uses one
//! team's key on another team's ids, H1 generates port updates and checks what reached the
//! simulator, and H3 tries to make the gateway fetch an image URL.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fluence_gateway::domain::deploy_input::{MAX_OPEN_PORTS, MAX_SSH_KEYS};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Scenario;
use crate::check;
use crate::report::{Row, SplitMix};
use crate::world::{Gateway, GatewayOptions, Reply, SSH_KEY, Suite, World, deploy_body};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "E1",
        invariant: "I6",
        run: |suite| Box::pin(e1(suite)),
    },
    Scenario {
        id: "E2",
        invariant: "I4",
        run: |suite| Box::pin(e2(suite)),
    },
    Scenario {
        id: "F1",
        invariant: "I4",
        run: |suite| Box::pin(f1(suite)),
    },
    Scenario {
        id: "F2",
        invariant: "I4",
        run: |suite| Box::pin(f2(suite)),
    },
    Scenario {
        id: "H1",
        invariant: "I6",
        run: |suite| Box::pin(h1(suite)),
    },
    Scenario {
        id: "H3",
        invariant: "I6",
        run: |suite| Box::pin(h3(suite)),
    },
];

/// The request id every probe sends, so that answers can be compared byte for byte.
const PROBE_ID: &str = "probe";

/// Gateways of this module: no limiter in the way of a corpus, and no background job that
/// would change stored rows while a scenario compares them.
fn quiet_gateway() -> GatewayOptions {
    GatewayOptions::default()
        .with_env("GATEWAY__RATE_LIMIT__FAILED_AUTH_PER_MINUTE", "1000000")
        .with_env("GATEWAY__RATE_LIMIT__FAILED_AUTH_BURST", "1000000")
        .with_env("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600")
        .with_env("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false")
        .with_env("GATEWAY__JOBS__INVENTORY_INTERVAL_SECS", "3600")
        .with_env("GATEWAY__JOBS__PRICES_INTERVAL_SECS", "3600")
        .with_env("GATEWAY__JOBS__CATALOG_INTERVAL_SECS", "3600")
        .with_env("GATEWAY__JOBS__REAPER_INTERVAL_SECS", "3600")
}

pub async fn roomy_world(suite: &Arc<Suite>, label: &str) -> World {
    let world = World::new(suite, label).await;
    world
        .sim
        .control(
            Method::POST,
            "/_sim/market",
            Some(json!({"capacity": 1_000_000})),
        )
        .await;
    world
}

/// Deploys one VM for `team` with `key` and waits until it is in the inventory; its id.
pub async fn one_vm(world: &World, gateway: &Gateway, key: &str, name: &str) -> (String, String) {
    let reply = gateway
        .call(
            key,
            Method::POST,
            "/v1/deployments",
            Some(&deploy_body(name, 1)),
            None,
        )
        .await;
    assert_eq!(reply.status, 202, "deploy {name}: {}", reply.text);
    let deployment = reply.json["id"].as_str().unwrap_or_default().to_owned();
    check::quiesce(world, gateway).await;
    let got = gateway
        .call(
            key,
            Method::GET,
            &format!("/v1/deployments/{deployment}"),
            None,
            None,
        )
        .await;
    let vm = got.json["vms"][0]
        .as_str()
        .unwrap_or_else(|| panic!("deployment {name} has no VM: {}", got.text))
        .to_owned();
    (deployment, vm)
}

/// Every call the simulator has recorded.
async fn sim_calls(world: &World) -> Vec<Value> {
    world.sim.state().await["calls"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Calls that change something at Fluence.
fn mutations(calls: &[Value]) -> usize {
    calls
        .iter()
        .filter(|c| c["method"] != "GET" && c["path"] != "/marketplace/offers")
        .filter(|c| !text(&c["path"]).contains("estimate"))
        .count()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// A request with raw bytes and an optional content type.
async fn raw(
    gateway: &Gateway,
    key: &str,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    try_raw(gateway, key, method.clone(), path, content_type, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`raw`], with a missing answer (a reset) as an error.
async fn try_raw(
    gateway: &Gateway,
    key: &str,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Result<Reply, String> {
    let mut request = gateway
        .http()
        .request(method.clone(), gateway.url(path))
        .bearer_auth(key)
        .header("x-request-id", PROBE_ID)
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    gateway
        .send(&format!("{method} {path}"), request)
        .await
        .map_err(|e| format!("no answer: {e:?}"))
}

/// Why a refusal is not the problem+json the contract promises, if it is not.
fn problem_fault(reply: &Reply) -> Option<String> {
    let content_type = reply
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type != "application/problem+json" {
        return Some(format!("content type {content_type:?}"));
    }
    if reply.json["status"] != reply.status {
        return Some(format!(
            "body status {} for {}",
            reply.json["status"], reply.status
        ));
    }
    for field in ["type", "title", "code", "request_id"] {
        if !reply.json[field].is_string() {
            return Some(format!("no {field}"));
        }
    }
    if reply.text.contains("panicked") || reply.text.contains("RUST_BACKTRACE") {
        return Some("a stack trace".into());
    }
    None
}

/// One corpus entry: where it goes, what it sends, and the statuses that are right for it.
struct Case {
    name: String,
    target: Target,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    expect: &'static [u16],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Deploy,
    CreateTeam,
    PatchTeam,
    PatchVm,
    MintKey,
}

impl Target {
    const ALL: [Target; 5] = [
        Target::Deploy,
        Target::CreateTeam,
        Target::PatchTeam,
        Target::PatchVm,
        Target::MintKey,
    ];

    fn label(self) -> &'static str {
        match self {
            Target::Deploy => "POST /v1/deployments",
            Target::CreateTeam => "POST /v1/teams",
            Target::PatchTeam => "PATCH /v1/teams/{team}",
            Target::PatchVm => "PATCH /v1/vms/{id}",
            Target::MintKey => "POST /v1/teams/{team}/keys",
        }
    }

    fn method(self) -> Method {
        match self {
            Target::PatchTeam | Target::PatchVm => Method::PATCH,
            _ => Method::POST,
        }
    }

    fn path(self, team: &str, vm: &str) -> String {
        match self {
            Target::Deploy => "/v1/deployments".into(),
            Target::CreateTeam => "/v1/teams".into(),
            Target::PatchTeam => format!("/v1/teams/{team}"),
            Target::PatchVm => format!("/v1/vms/{vm}"),
            Target::MintKey => format!("/v1/teams/{team}/keys"),
        }
    }

    /// Team routes take the admin token; the deploy and VM routes a member key.
    fn admin_only(self) -> bool {
        matches!(
            self,
            Target::CreateTeam | Target::PatchTeam | Target::MintKey
        )
    }

    /// A body this endpoint accepts, for cases that spoil one field of it.
    fn valid(self) -> Value {
        match self {
            Target::Deploy => deploy_body("corpus", 1),
            Target::CreateTeam => {
                json!({"id": "corpus", "name": "Corpus", "budget": {"cap": "10"}})
            }
            Target::PatchTeam => json!({"name": "Renamed"}),
            Target::PatchVm => json!({"open_ports": [{"port": 80, "protocol": "tcp"}]}),
            Target::MintKey => json!({"name": "k", "role": "member"}),
        }
    }
}

const MALFORMED: &[u16] = &[400];
const INVALID: &[u16] = &[422];
/// JSON that serde may reject while reading (400) or while matching fields (422).
const UNREADABLE: &[u16] = &[400, 422];
const MEDIA: &[u16] = &[415];
const TOO_LARGE: &[u16] = &[413];

fn spoiled(target: Target, name: &str, patch: Value) -> Case {
    let mut body = target.valid();
    if let (Some(body), Some(patch)) = (body.as_object_mut(), patch.as_object()) {
        for (key, value) in patch {
            body.insert(key.clone(), value.clone());
        }
    }
    Case {
        name: name.to_owned(),
        target,
        content_type: Some("application/json"),
        body: body.to_string().into_bytes(),
        expect: INVALID,
    }
}

fn corpus() -> Vec<Case> {
    let raw_case = |target, name: &str, ct, body: Vec<u8>, expect| Case {
        name: name.to_owned(),
        target,
        content_type: ct,
        body,
        expect,
    };
    let json_ct = Some("application/json");
    let deep_object = format!(
        "{{\"name\":{}1{}}}",
        "{\"a\":".repeat(10_000),
        "}".repeat(10_000)
    );
    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut cases = Vec::new();
    for target in Target::ALL {
        let first_key = target
            .valid()
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_default();
        let valid = target.valid().to_string();
        let generic: Vec<Case> = vec![
            raw_case(target, "empty body", json_ct, Vec::new(), MALFORMED),
            raw_case(
                target,
                "truncated",
                json_ct,
                valid.as_bytes()[..valid.len() / 2].to_vec(),
                MALFORMED,
            ),
            // Non-JSON numbers as the value of a field the endpoint knows (an unknown key
            // would be refused before its value is read).
            raw_case(
                target,
                "NaN",
                json_ct,
                format!("{{\"{first_key}\": NaN}}").into_bytes(),
                MALFORMED,
            ),
            raw_case(
                target,
                "Infinity",
                json_ct,
                format!("{{\"{first_key}\": Infinity}}").into_bytes(),
                MALFORMED,
            ),
            raw_case(
                target,
                "-Infinity",
                json_ct,
                format!("{{\"{first_key}\": -Infinity}}").into_bytes(),
                MALFORMED,
            ),
            raw_case(
                target,
                "invalid utf-8",
                json_ct,
                b"{\"name\": \"\xff\xfe\xfd\"}".to_vec(),
                MALFORMED,
            ),
            raw_case(
                target,
                "lone surrogate escape",
                json_ct,
                b"{\"name\": \"\\ud800\"}".to_vec(),
                MALFORMED,
            ),
            raw_case(
                target,
                "trailing garbage",
                json_ct,
                format!("{valid} {{}}").into_bytes(),
                UNREADABLE,
            ),
            raw_case(
                target,
                "nested 10000 deep (object)",
                json_ct,
                deep_object.clone().into_bytes(),
                UNREADABLE,
            ),
            raw_case(
                target,
                "nested 10000 deep (array)",
                json_ct,
                deep_array.clone().into_bytes(),
                INVALID,
            ),
            raw_case(
                target,
                "not json",
                json_ct,
                b"name=x&instances=1".to_vec(),
                INVALID,
            ),
            raw_case(target, "null", json_ct, b"null".to_vec(), INVALID),
            raw_case(target, "array", json_ct, b"[]".to_vec(), INVALID),
            raw_case(target, "string", json_ct, b"\"x\"".to_vec(), INVALID),
            raw_case(target, "number", json_ct, b"5".to_vec(), INVALID),
            raw_case(target, "empty object", json_ct, b"{}".to_vec(), INVALID),
            raw_case(
                target,
                "unknown field",
                json_ct,
                {
                    let mut v = target.valid();
                    v["surprise"] = json!(1);
                    v.to_string().into_bytes()
                },
                INVALID,
            ),
            raw_case(
                target,
                "duplicate key",
                json_ct,
                {
                    // The first key of the valid body, once more with another value.
                    let inner = valid.trim_start_matches('{');
                    format!("{{\"{first_key}\": \"dup\", {inner}").into_bytes()
                },
                INVALID,
            ),
            raw_case(
                target,
                "text/plain",
                Some("text/plain"),
                valid.clone().into_bytes(),
                MEDIA,
            ),
            raw_case(
                target,
                "form",
                Some("application/x-www-form-urlencoded"),
                b"name=x".to_vec(),
                MEDIA,
            ),
            raw_case(
                target,
                "xml",
                Some("application/xml"),
                b"<name>x</name>".to_vec(),
                MEDIA,
            ),
            raw_case(
                target,
                "no content type",
                None,
                valid.clone().into_bytes(),
                MEDIA,
            ),
            raw_case(
                target,
                "200 KB",
                json_ct,
                {
                    let mut body = target.valid();
                    body["name"] = json!("n".repeat(200 * 1024));
                    body.to_string().into_bytes()
                },
                TOO_LARGE,
            ),
        ];
        // An empty merge patch of a team is a valid request that changes nothing.
        cases.extend(
            generic
                .into_iter()
                .filter(|c| !(target == Target::PatchTeam && c.name == "empty object")),
        );
    }

    let d = Target::Deploy;
    let deploy_patches: Vec<(&str, Value)> = vec![
        ("name unicode", json!({"name": "wéb-ßerver"})),
        ("name with spaces", json!({"name": "web server"})),
        ("name 10 KB", json!({"name": "n".repeat(10 * 1024)})),
        ("name empty", json!({"name": ""})),
        ("name control character", json!({"name": "a\u{0007}b"})),
        ("name number", json!({"name": 5})),
        ("port 0", json!({"open_ports": [{"port": 0}]})),
        ("port 65536", json!({"open_ports": [{"port": 65536}]})),
        (
            "port 10250",
            json!({"open_ports": [{"port": 10250, "protocol": "tcp"}]}),
        ),
        ("port -1", json!({"open_ports": [{"port": -1}]})),
        ("port text", json!({"open_ports": [{"port": "80"}]})),
        ("port 1.5", json!({"open_ports": [{"port": 1.5}]})),
        (
            "protocol icmp",
            json!({"open_ports": [{"port": 80, "protocol": "icmp"}]}),
        ),
        (
            "too many ports",
            json!({"open_ports": (1..=(MAX_OPEN_PORTS as u64 + 1)).map(|p| json!({"port": 1000 + p})).collect::<Vec<_>>()}),
        ),
        ("instances 0", json!({"instances": 0})),
        ("instances -1", json!({"instances": -1})),
        ("instances 2^31", json!({"instances": 2_147_483_648_u64})),
        (
            "instances 2^63",
            json!({"instances": 9_223_372_036_854_775_808_u64}),
        ),
        (
            "instances 2^64",
            json!({"instances": 18_446_744_073_709_551_616_f64}),
        ),
        ("instances 1.5", json!({"instances": 1.5})),
        ("instances text", json!({"instances": "2"})),
        ("instances null", json!({"instances": null})),
        ("ssh_keys empty", json!({"ssh_keys": []})),
        (
            "too many ssh keys",
            json!({"ssh_keys": (0..=MAX_SSH_KEYS).map(|i| format!("{SSH_KEY}{i}")).collect::<Vec<_>>()}),
        ),
        ("ssh key garbage", json!({"ssh_keys": ["not a key"]})),
        (
            "ssh key 20 KB",
            json!({"ssh_keys": [format!("ssh-ed25519 {}", "A".repeat(20 * 1024))]}),
        ),
        ("ssh_keys a string", json!({"ssh_keys": SSH_KEY})),
        ("configuration garbage", json!({"configuration": "large"})),
        (
            "configuration zero",
            json!({"configuration": "cpu-0-ram-0gb-storage-0gb"}),
        ),
        ("country lower-case three", json!({"countries": ["deu"]})),
        ("countries a string", json!({"countries": "DE"})),
        ("max price negative", json!({"max_price_per_epoch": "-1"})),
        (
            "max price 7 decimals",
            json!({"max_price_per_epoch": "1.0000001"}),
        ),
        ("max price NaN text", json!({"max_price_per_epoch": "NaN"})),
        ("max price float", json!({"max_price_per_epoch": 1.5})),
        (
            "max price overflow",
            json!({"max_price_per_epoch": "99999999999999999999"}),
        ),
        ("max price zero", json!({"max_price_per_epoch": "0"})),
        ("ttl negative", json!({"ttl_hours": -1})),
        ("ttl huge", json!({"ttl_hours": 9_999_999})),
        ("start_before text", json!({"start_before": "tomorrow"})),
        (
            "start_before past",
            json!({"start_before": "2001-01-01T00:00:00Z", "max_price_per_epoch": "1"}),
        ),
        (
            "extra storage negative",
            json!({"extra_storage": [{"gib": -1, "type": "SSD"}]}),
        ),
        (
            "extra storage kind",
            json!({"extra_storage": [{"gib": 10, "type": "tape"}]}),
        ),
        ("image empty", json!({"image": ""})),
        ("image number", json!({"image": 7})),
        ("hardware a list", json!({"hardware": [1]})),
    ];
    for (name, patch) in deploy_patches {
        cases.push(spoiled(d, name, patch));
    }
    let v = Target::PatchVm;
    let vm_patches: Vec<(&str, Value)> = vec![
        ("port 0", json!({"open_ports": [{"port": 0}]})),
        ("port 65536", json!({"open_ports": [{"port": 65536}]})),
        ("port 10250", json!({"open_ports": [{"port": 10250}]})),
        (
            "add 10250",
            json!({"open_ports": null, "add_ports": [{"port": 10250}]}),
        ),
        ("full list and edit", json!({"add_ports": [{"port": 81}]})),
        (
            "remove 22 without consent",
            json!({"open_ports": null, "remove_ports": [{"port": 22, "protocol": "tcp"}]}),
        ),
        ("consent text", json!({"allow_closing_ssh": "yes"})),
        ("name 10 KB", json!({"name": "n".repeat(10 * 1024)})),
        ("name unicode", json!({"name": "ünï"})),
        ("ports a map", json!({"open_ports": {"80": "tcp"}})),
        (
            "too many ports",
            json!({"open_ports": (1..=(MAX_OPEN_PORTS as u64 + 1)).map(|p| json!({"port": 2000 + p})).collect::<Vec<_>>()}),
        ),
    ];
    for (name, patch) in vm_patches {
        let mut case = spoiled(v, name, patch);
        // `"open_ports": null` means "absent" to serde; drop it to test the edit alone.
        if name.starts_with("add") || name.starts_with("remove") {
            let mut body: Value = serde_json::from_slice(&case.body).unwrap_or(Value::Null);
            if let Some(body) = body.as_object_mut() {
                body.remove("open_ports");
            }
            case.body = body.to_string().into_bytes();
        }
        cases.push(case);
    }
    for (name, patch) in [
        ("id unicode", json!({"id": "équipe"})),
        ("id 10 KB", json!({"id": "a".repeat(10 * 1024)})),
        ("name 10 KB", json!({"name": "n".repeat(10 * 1024)})),
        ("cap float", json!({"budget": {"cap": 1.5}})),
        ("cap NaN text", json!({"budget": {"cap": "NaN"}})),
        (
            "cap overflow",
            json!({"budget": {"cap": "99999999999999999999"}}),
        ),
        ("max_vms -1", json!({"quotas": {"max_vms": -1}})),
        (
            "max_vms 2^63",
            json!({"quotas": {"max_vms": 9_223_372_036_854_775_808_u64}}),
        ),
    ] {
        cases.push(spoiled(Target::CreateTeam, name, patch));
    }
    for (name, patch) in [
        ("cap negative", json!({"budget": {"cap": "-5"}})),
        ("max_vcpus 1.5", json!({"quotas": {"max_vcpus": 1.5}})),
    ] {
        cases.push(spoiled(Target::PatchTeam, name, patch));
    }
    for (name, patch) in [
        ("role owner", json!({"role": "owner"})),
        ("role admin", json!({"role": "admin"})),
        ("expiry past", json!({"expires_at": "2001-01-01T00:00:00Z"})),
    ] {
        cases.push(spoiled(Target::MintKey, name, patch));
    }
    cases
}

/// Sends `body` with a matching Content-Length over a plain socket, writing and reading at
/// once so that an early 413 is seen even when the gateway stops reading. The status of the
/// answer, if one came.
async fn socket_status(
    gateway: &Gateway,
    key: &str,
    method: &Method,
    path: &str,
    body: Vec<u8>,
) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(&gateway.address)
        .await
        .ok()?;
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {PROBE_ID}\r\n\r\n",
        gateway.address,
        body.len()
    );
    let write = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 * 1024) {
            writer.write_all(chunk).await?;
        }
        std::io::Result::Ok(())
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buffer[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    write.abort();
    read.ok()?;
    let line = String::from_utf8_lossy(&answer);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// E1: the corpus, with RSS sampled throughout.
pub async fn e1(suite: Arc<Suite>) -> Vec<Row> {
    let mut row = Row::new("E1 bad-body corpus", "I6", suite.seed);
    let world = roomy_world(&suite, "e1").await;
    let gateway = world.gateway(quiet_gateway()).await;
    gateway.create_team("e1", "1000", json!({})).await;
    let member = gateway.mint_key("e1", "member").await;
    let (_, vm) = one_vm(&world, &gateway, &member, "e1-vm").await;
    // Warm every cache a valid request would fill (the image catalog), so that any call the
    // corpus causes upstream is the corpus's doing.
    let warm = gateway
        .call(
            &member,
            Method::POST,
            "/v1/deployments?dry_run=true",
            Some(&deploy_body("warm", 1)),
            None,
        )
        .await;
    assert_eq!(warm.status, 200, "dry run: {}", warm.text);
    let team_before = gateway.admin(Method::GET, "/v1/teams/e1", None).await.text;
    let deployments_before = gateway.deployments("e1").await.len();
    let calls_before = sim_calls(&world).await.len();

    // Peak RSS of the run: the kernel's high-water mark, reset now where the kernel allows,
    // and a sampler as a second opinion.
    let pid = gateway.pid();
    let reset_hwm = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let rss_before = gateway.memory_kib("VmRSS");
    let hwm_before = gateway.memory_kib("VmHWM");
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let rss = crate::world::proc_status_kib(pid, "VmRSS");
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let mut wrong = Vec::new();
    let mut server_errors = 0u64;
    let cases = corpus();
    for case in &cases {
        let key = if case.target.admin_only() {
            gateway.admin_token.clone()
        } else {
            member.clone()
        };
        let path = case.target.path("e1", &vm);
        row.runs += 1;
        if case.expect == TOO_LARGE {
            // The gateway answers 413 from the length alone and closes; over a socket, so
            // that the answer is read even though the client is still writing.
            let status = socket_status(
                &gateway,
                &key,
                &case.target.method(),
                &path,
                case.body.clone(),
            )
            .await;
            server_errors += u64::from(status.is_some_and(|s| s >= 500));
            if status != Some(413) {
                row.bad += 1;
                wrong.push(format!(
                    "{} / {}: {status:?}",
                    case.target.label(),
                    case.name
                ));
            }
            continue;
        }
        let reply = match try_raw(
            &gateway,
            &key,
            case.target.method(),
            &path,
            case.content_type,
            case.body.clone(),
        )
        .await
        {
            Ok(reply) => reply,
            Err(e) => {
                row.bad += 1;
                wrong.push(format!("{} / {}: {e}", case.target.label(), case.name));
                continue;
            }
        };
        server_errors += u64::from(reply.status >= 500);
        let fault = if !case.expect.contains(&reply.status) {
            Some(format!(
                "status {} (expected {:?})",
                reply.status, case.expect
            ))
        } else {
            problem_fault(&reply)
        };
        if let Some(fault) = fault {
            row.bad += 1;
            wrong.push(format!(
                "{} / {}: {fault}: {}",
                case.target.label(),
                case.name,
                reply.text.chars().take(160).collect::<String>()
            ));
        }
    }
    // The 10 MB bodies, one per endpoint, over a plain socket.
    for target in Target::ALL {
        let key = if target.admin_only() {
            gateway.admin_token.clone()
        } else {
            member.clone()
        };
        let mut body = b"{\"name\": \"".to_vec();
        body.resize(10 * 1024 * 1024, b'a');
        let status = socket_status(
            &gateway,
            &key,
            &target.method(),
            &target.path("e1", &vm),
            body,
        )
        .await;
        row.runs += 1;
        server_errors += u64::from(status.is_some_and(|s| s >= 500));
        if status != Some(413) {
            row.bad += 1;
            wrong.push(format!("{} / 10 MB: {status:?}", target.label()));
        }
    }
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let hwm_after = gateway.memory_kib("VmHWM");
    let sampled_peak = peak.load(Ordering::Relaxed);
    // Without a reset the high-water mark may date from start-up; the sampler then decides.
    let peak_kib = if reset_hwm {
        hwm_after.max(sampled_peak)
    } else if hwm_after > hwm_before {
        hwm_after
    } else {
        sampled_peak
    };
    let increase_mb = peak_kib.saturating_sub(rss_before) as f64 / 1024.0;

    let calls_after = sim_calls(&world).await;
    let upstream = calls_after.len().saturating_sub(calls_before);
    let team_after = gateway.admin(Method::GET, "/v1/teams/e1", None).await.text;
    let deployments_after = gateway.deployments("e1").await.len();
    let log = gateway.log_tail(usize::MAX);
    let panics = log.matches("panicked").count();
    let alive = gateway.admin(Method::GET, "/healthz", None).await.status;

    row.figures = format!(
        "{} cases on 5 endpoints: 5xx {server_errors}, panics {panics}, upstream calls {upstream}, wrong status or body {}/{}, peak RSS +{increase_mb:.1} MB (RSS {:.1} MB before; high-water mark {})",
        row.runs,
        row.bad,
        row.runs,
        rss_before as f64 / 1024.0,
        if reset_hwm {
            "reset"
        } else {
            "not resettable, sampled"
        },
    );
    row.require(server_errors == 0, "a 5xx answered bad input");
    row.require(panics == 0, "the gateway panicked");
    row.require(upstream == 0, "bad input reached Fluence");
    row.require(increase_mb < 20.0, "peak RSS rose 20 MB or more");
    row.require(team_before == team_after, "the team changed");
    row.require(
        deployments_before == deployments_after,
        "bad input stored a deployment",
    );
    row.require(alive == 200, "the gateway is not healthy after the corpus");
    if !wrong.is_empty() {
        row.require(
            false,
            wrong
                .iter()
                .take(60)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    vec![row]
}

/// Every row of the tables a request could change, as text, for before/after comparison.
/// Columns that record use rather than state (`last_used_at`) are left out.
async fn stored_state(world: &World) -> BTreeMap<String, Vec<String>> {
    let url = format!("sqlite://{}", world.db_path().display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let mut state = BTreeMap::new();
    for table in [
        "teams",
        "api_keys",
        "vms",
        "deployments",
        "holds",
        "ledger",
        "budget_alerts",
        "idempotency_keys",
        "vm_events",
    ] {
        let columns: Vec<String> = sqlx::query(&format!("PRAGMA table_info({table})"))
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("columns of {table}: {e}"))
            .iter()
            .map(|r| r.get::<String, _>("name"))
            .filter(|c| !c.contains("last_used"))
            .collect();
        let select = columns
            .iter()
            .map(|c| format!("quote({c})"))
            .collect::<Vec<_>>()
            .join(" || '|' || ");
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT {select} FROM {table} ORDER BY rowid"))
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("rows of {table}: {e}"));
        state.insert(table.to_owned(), rows);
    }
    pool.close().await;
    state
}

/// E2: privileged fields, at the top level and nested, into every write endpoint.
pub async fn e2(suite: Arc<Suite>) -> Vec<Row> {
    let mut row = Row::new("E2 mass assignment", "I4", suite.seed);
    let world = roomy_world(&suite, "e2").await;
    let gateway = world.gateway(quiet_gateway()).await;
    gateway.create_team("e2", "1000", json!({})).await;
    let member = gateway.mint_key("e2", "member").await;
    let (_, vm) = one_vm(&world, &gateway, &member, "e2-vm").await;
    let before = stored_state(&world).await;
    let calls_before = mutations(&sim_calls(&world).await);

    let fields = [
        "team_id",
        "team",
        "price",
        "pricePerEpoch",
        "price_per_epoch",
        "cost",
        "status",
        "owner",
        "is_admin",
        "role",
        "cap",
        "reserved",
        "spent",
        "id",
        "created_at",
        "deleted_at",
        "commitment",
    ];
    let values = [json!("x"), json!(true), json!(0), json!("0.000001")];
    let endpoints: Vec<(Method, String, bool, Value)> = vec![
        (
            Method::POST,
            "/v1/teams".into(),
            true,
            Target::CreateTeam.valid(),
        ),
        (
            Method::PATCH,
            "/v1/teams/e2".into(),
            true,
            Target::PatchTeam.valid(),
        ),
        (
            Method::POST,
            "/v1/teams/e2/keys".into(),
            true,
            Target::MintKey.valid(),
        ),
        (
            Method::POST,
            "/v1/deployments".into(),
            false,
            deploy_body("inject", 1),
        ),
        (
            Method::POST,
            "/v1/deployments?dry_run=true".into(),
            false,
            deploy_body("inject", 1),
        ),
        (
            Method::PATCH,
            format!("/v1/vms/{vm}"),
            false,
            Target::PatchVm.valid(),
        ),
    ];
    let mut accepted = Vec::new();
    for (method, path, admin, valid) in &endpoints {
        let key = if *admin {
            &gateway.admin_token
        } else {
            &member
        };
        for field in fields {
            // The field beside the valid ones, and inside every nested object of the body.
            let mut bodies = Vec::new();
            let mut top = valid.clone();
            if top.get(field).is_none() {
                top[field] = values[row.runs as usize % values.len()].clone();
                bodies.push(top);
            }
            if let Some(object) = valid.as_object() {
                for (name, inner) in object {
                    let nested = match inner {
                        Value::Object(_) => Some(inner.clone()),
                        Value::Array(items) => items.first().filter(|i| i.is_object()).cloned(),
                        _ => None,
                    };
                    if let Some(mut nested) = nested {
                        nested[field] = json!("x");
                        let mut body = valid.clone();
                        body[name] = if inner.is_array() {
                            json!([nested])
                        } else {
                            nested
                        };
                        bodies.push(body);
                    }
                }
            }
            for body in bodies {
                let reply = raw(
                    &gateway,
                    key,
                    method.clone(),
                    path,
                    Some("application/json"),
                    body.to_string().into_bytes(),
                )
                .await;
                row.runs += 1;
                if reply.status != 422 || reply.json["code"] != "validation_failed" {
                    row.bad += 1;
                    accepted.push(format!("{method} {path} with {field}: {}", reply.status));
                }
            }
        }
    }
    let after = stored_state(&world).await;
    let changed: Vec<String> = before
        .iter()
        .filter(|(table, rows)| after.get(*table) != Some(rows))
        .map(|(table, _)| table.clone())
        .collect();
    let calls_after = mutations(&sim_calls(&world).await);
    row.figures = format!(
        "{} injections ({} fields x {} endpoints, top level and nested): accepted {}, tables changed {} {:?}, upstream mutations {}",
        row.runs,
        fields.len(),
        endpoints.len(),
        row.bad,
        changed.len(),
        changed,
        calls_after - calls_before
    );
    row.require(changed.is_empty(), "stored state changed");
    row.require(calls_after == calls_before, "an injection reached Fluence");
    if !accepted.is_empty() {
        row.require(
            false,
            accepted
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    vec![row]
}

/// A secured route of the OpenAPI document the binary serves.
struct Route {
    method: Method,
    template: String,
}

async fn secured_routes(gateway: &Gateway) -> Vec<Route> {
    let reply = gateway
        .send(
            "GET /openapi.json",
            gateway.http().get(gateway.url("/openapi.json")),
        )
        .await
        .unwrap_or_else(|e| panic!("openapi.json: {e}"));
    assert_eq!(reply.status, 200, "openapi.json");
    let mut routes = Vec::new();
    for (template, item) in reply.json["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            if operation.get("security").is_none() {
                continue;
            }
            if let Ok(method) = Method::from_bytes(method.to_uppercase().as_bytes()) {
                routes.push(Route {
                    method,
                    template: template.clone(),
                });
            }
        }
    }
    routes
}

/// A credential that must be refused: its name, its headers, and a query to append.
type CredentialCase = (String, Vec<(String, String)>, Option<String>);

/// F1: every credential that must not work, on every secured route.
pub async fn f1(suite: Arc<Suite>) -> Vec<Row> {
    let mut row = Row::new("F1 auth bypass matrix", "I4", suite.seed);
    let world = roomy_world(&suite, "f1").await;
    let gateway = world.gateway(quiet_gateway()).await;
    gateway.create_team("ml", "100", json!({})).await;
    gateway.create_team("ops", "100", json!({})).await;
    let member = gateway.mint_key("ml", "member").await;
    let viewer = gateway.mint_key("ml", "viewer").await;
    let foreign = gateway.mint_key("ops", "member").await;
    let revoked = {
        let reply = gateway
            .admin(
                Method::POST,
                "/v1/teams/ml/keys",
                Some(&json!({"name": "doomed", "role": "member"})),
            )
            .await;
        assert_eq!(reply.status, 201, "mint: {}", reply.text);
        let key = reply.json["key"].as_str().unwrap_or_default().to_owned();
        suite.remember_team_key(&key);
        let id = reply.json["id"].as_str().unwrap_or_default();
        let gone = gateway
            .admin(Method::DELETE, &format!("/v1/teams/ml/keys/{id}"), None)
            .await;
        assert_eq!(gone.status, 204, "revoke: {}", gone.text);
        key
    };
    let routes = secured_routes(&gateway).await;
    gateway.run_job("prices").await;
    gateway.run_job("catalog").await;
    let calls_before = sim_calls(&world).await.len();

    // Shapes of a key, learnt from a real one: `<prefix>_<id>_<secret>`.
    let cut = member.rfind('_').unwrap_or(member.len() / 2);
    let (head, secret) = member.split_at(cut);
    let flip = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    };
    let admin = gateway.admin_token.clone();
    let bearer = |k: &str| format!("Bearer {k}");
    let auth = |v: String| vec![("authorization".to_owned(), v)];
    // (case, headers, query appended to the path). Each must be refused with 401.
    let mut cases: Vec<CredentialCase> = vec![
        ("no header".into(), vec![], None),
        ("empty header".into(), auth(String::new()), None),
        ("scheme only".into(), auth("Bearer".into()), None),
        ("scheme and space".into(), auth("Bearer ".into()), None),
        ("basic scheme".into(), auth(format!("Basic {admin}")), None),
        ("token scheme".into(), auth(format!("Token {admin}")), None),
        (
            "lower-case scheme".into(),
            auth(format!("bearer {admin}")),
            None,
        ),
        (
            "upper-case scheme".into(),
            auth(format!("BEARER {admin}")),
            None,
        ),
        ("no scheme".into(), auth(admin.clone()), None),
        ("two spaces".into(), auth(format!("Bearer  {admin}")), None),
        ("tab".into(), auth(format!("Bearer\t{admin}")), None),
        (
            "trailing junk".into(),
            auth(format!("Bearer {admin} x")),
            None,
        ),
        (
            "comma list".into(),
            auth(format!("Bearer {admin}, Bearer {admin}")),
            None,
        ),
        (
            "admin token case-flipped".into(),
            auth(bearer(&flip(&admin))),
            None,
        ),
        (
            "admin token truncated".into(),
            auth(bearer(&admin[..admin.len() - 1])),
            None,
        ),
        (
            "admin token extended".into(),
            auth(bearer(&format!("{admin}x"))),
            None,
        ),
        ("admin token prefix".into(), auth(bearer(&admin[..8])), None),
        (
            "member key truncated".into(),
            auth(bearer(&member[..member.len() - 1])),
            None,
        ),
        (
            "member key extended".into(),
            auth(bearer(&format!("{member}0"))),
            None,
        ),
        (
            "member key case-flipped".into(),
            auth(bearer(&flip(&member))),
            None,
        ),
        ("member prefix only".into(), auth(bearer(head)), None),
        (
            "member secret only".into(),
            auth(bearer(secret.trim_start_matches('_'))),
            None,
        ),
        (
            "right id, wrong secret".into(),
            auth(bearer(&format!(
                "{head}_{}",
                "y".repeat(secret.len().saturating_sub(1))
            ))),
            None,
        ),
        (
            "right id, empty secret".into(),
            auth(bearer(&format!("{head}_"))),
            None,
        ),
        (
            "unknown id, well-formed".into(),
            auth(bearer(&format!("fgw_0123456789abcdef_{}", "x".repeat(43)))),
            None,
        ),
        ("revoked key".into(), auth(bearer(&revoked)), None),
        (
            "revoked key, wrong secret".into(),
            auth(bearer(&format!(
                "{}_{}",
                &revoked[..revoked.rfind('_').unwrap_or(0)],
                "z".repeat(43)
            ))),
            None,
        ),
        (
            "the Fluence key".into(),
            auth(bearer(&suite.fluence_key)),
            None,
        ),
        (
            "8 KB token".into(),
            auth(bearer(&"k".repeat(8 * 1024))),
            None,
        ),
        (
            "null byte escape".into(),
            auth(bearer(&format!("{admin}%00"))),
            None,
        ),
        (
            "base64 of the token".into(),
            auth(bearer(&{
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(&admin)
            })),
            None,
        ),
        (
            "X-API-KEY header".into(),
            vec![("x-api-key".into(), admin.clone())],
            None,
        ),
        (
            "cookie".into(),
            vec![("cookie".into(), format!("token={admin}"))],
            None,
        ),
        (
            "proxy-authorization".into(),
            vec![("proxy-authorization".into(), bearer(&admin))],
            None,
        ),
        (
            "x-forwarded-user admin".into(),
            vec![("x-forwarded-user".into(), "admin".into())],
            None,
        ),
        (
            "x-original-url".into(),
            vec![("x-original-url".into(), "/healthz".into())],
            None,
        ),
    ];
    for name in [
        "api_key",
        "key",
        "token",
        "access_token",
        "authorization",
        "bearer",
    ] {
        cases.push((
            format!("?{name}= admin token"),
            vec![],
            Some(format!("{name}={admin}")),
        ));
        cases.push((
            format!("?{name}= member key"),
            vec![],
            Some(format!("{name}={member}")),
        ));
    }
    cases.push((
        "query key beside a good header".into(),
        auth(bearer(&admin)),
        Some(format!("api_key={admin}")),
    ));
    cases.push((
        "query key beside a member header".into(),
        auth(bearer(&member)),
        Some(format!("token={member}")),
    ));
    // Identical answers for these three: nothing tells which keys exist.
    let enumeration = [
        "unknown id, well-formed",
        "revoked key",
        "right id, wrong secret",
    ];

    let mut bypasses = 0u64;
    let mut wrong = Vec::new();
    let mut distinguishable = 0u64;
    let mut probes = 0u64;
    for route in &routes {
        let path = route
            .template
            .replace("{team}", "ml")
            .replace("{key_id}", "key_00000000000000000000000000")
            .replace("{job}", "prices")
            .replace("{id}", "0x00000000000000000000000000000000000000aa");
        let mut bodies: BTreeMap<String, String> = BTreeMap::new();
        let label = format!("{} {}", route.method, route.template);
        let send_case = |headers: &[(String, String)], target: String| {
            let mut request = gateway
                .http()
                .request(route.method.clone(), gateway.url(&target))
                .header("x-request-id", PROBE_ID);
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str());
            }
            if route.method != Method::GET && route.method != Method::DELETE {
                request = request.json(&json!({}));
            }
            gateway.send(&label, request)
        };
        for (case, headers, query) in &cases {
            let target = match query {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            let reply = send_case(headers, target)
                .await
                .unwrap_or_else(|e| panic!("{} {} / {case}: {e}", route.method, path));
            probes += 1;
            if reply.status < 400 {
                bypasses += 1;
            }
            if reply.status != 401 || problem_fault(&reply).is_some() {
                wrong.push(format!(
                    "{} {} / {case}: {}",
                    route.method, route.template, reply.status
                ));
            }
            bodies.insert(case.clone(), reply.text);
        }
        // Two Authorization headers, both good.
        let twice = send_case(
            &[
                ("authorization".into(), bearer(&admin)),
                ("authorization".into(), bearer(&admin)),
            ],
            path.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("two headers: {e}"));
        probes += 1;
        if twice.status < 400 {
            bypasses += 1;
        }
        if twice.status != 401 {
            wrong.push(format!(
                "{} {} / two headers: {}",
                route.method, route.template, twice.status
            ));
        }
        let first = bodies.get(enumeration[0]).cloned().unwrap_or_default();
        for case in &enumeration[1..] {
            if bodies.get(*case) != Some(&first) {
                distinguishable += 1;
            }
        }
        // Roles: a viewer never writes; team keys never reach admin-only routes.
        let admin_only = route.template.starts_with("/v1/audit")
            || route.template.starts_with("/v1/jobs")
            || route.template.starts_with("/v1/keys")
            || route.template.contains("{key_id}")
            || route.template == "/v1/teams/{team}/keys"
            || (route.template.starts_with("/v1/teams") && route.method != Method::GET);
        let writes = route.method != Method::GET;
        for (who, key) in [
            ("member", &member),
            ("viewer", &viewer),
            ("foreign", &foreign),
        ] {
            if !(admin_only || (who == "viewer" && writes)) {
                continue;
            }
            let reply = send_case(&auth(bearer(key)), path.clone())
                .await
                .unwrap_or_else(|e| panic!("{who}: {e}"));
            probes += 1;
            // 404 is right where the route names another team (foreign) or a missing VM.
            let refused = matches!(reply.status, 403 | 404);
            if !refused {
                if reply.status < 300 {
                    bypasses += 1;
                }
                wrong.push(format!(
                    "{who} key on {} {}: {}",
                    route.method, route.template, reply.status
                ));
            }
        }
    }
    let upstream = sim_calls(&world).await.len().saturating_sub(calls_before);
    row.runs = probes;
    row.bad = bypasses + distinguishable + wrong.len() as u64;
    row.figures = format!(
        "{} routes from /openapi.json x {} credential cases + two headers + role cases = {probes} probes: bypasses {bypasses}, not 401/403 {}, unknown/revoked/wrong-secret bodies distinguishable {distinguishable}, upstream calls {upstream}",
        routes.len(),
        cases.len(),
        wrong.len()
    );
    if !wrong.is_empty() {
        row.require(
            false,
            wrong
                .iter()
                .take(80)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    row.require(routes.len() >= 20, "the route table lists too few routes");
    row.require(upstream == 0, "a refused request reached Fluence");
    vec![row]
}

/// F2: team A with team B's ids, byte-compared with ids that exist nowhere.
pub async fn f2(suite: Arc<Suite>) -> Vec<Row> {
    let mut row = Row::new("F2 cross-team access (BOLA)", "I4", suite.seed);
    let world = roomy_world(&suite, "f2").await;
    let gateway = world.gateway(quiet_gateway()).await;
    gateway.create_team("team-a", "1000", json!({})).await;
    gateway.create_team("team-b", "1000", json!({})).await;
    let a = gateway.mint_key("team-a", "member").await;
    let a_viewer = gateway.mint_key("team-a", "viewer").await;
    let b = gateway.mint_key("team-b", "member").await;
    let (b_deployment, b_vm) = one_vm(&world, &gateway, &b, "b-vm").await;
    let (_, a_vm) = one_vm(&world, &gateway, &a, "a-vm").await;
    let before = stored_state(&world).await;
    let mutations_before = mutations(&sim_calls(&world).await);

    let missing_vm = "0x00000000000000000000000000000000deadbeef";
    let missing_dep = "dep_01JDX3ZP6Q8W9E2R4T5Y7U1ABC";
    let upper = format!("0x{}", b_vm.trim_start_matches("0x").to_uppercase());
    // (what, method, path to B's thing, path to nothing, body)
    let probes: Vec<(&str, Method, String, String, Option<Value>)> = vec![
        (
            "GET vm",
            Method::GET,
            format!("/v1/vms/{b_vm}"),
            format!("/v1/vms/{missing_vm}"),
            None,
        ),
        (
            "GET vm upper-case id",
            Method::GET,
            format!("/v1/vms/{upper}"),
            format!("/v1/vms/{missing_vm}"),
            None,
        ),
        (
            "GET vm events",
            Method::GET,
            format!("/v1/vms/{b_vm}/events"),
            format!("/v1/vms/{missing_vm}/events"),
            None,
        ),
        (
            "PATCH vm ports",
            Method::PATCH,
            format!("/v1/vms/{b_vm}"),
            format!("/v1/vms/{missing_vm}"),
            Some(json!({"open_ports": [{"port": 80}]})),
        ),
        (
            "PATCH vm name",
            Method::PATCH,
            format!("/v1/vms/{b_vm}"),
            format!("/v1/vms/{missing_vm}"),
            Some(json!({"name": "mine"})),
        ),
        (
            "PATCH vm bad body",
            Method::PATCH,
            format!("/v1/vms/{b_vm}"),
            format!("/v1/vms/{missing_vm}"),
            Some(json!({"open_ports": [{"port": 0}]})),
        ),
        (
            "DELETE vm",
            Method::DELETE,
            format!("/v1/vms/{b_vm}"),
            format!("/v1/vms/{missing_vm}"),
            None,
        ),
        (
            "DELETE vm upper-case id",
            Method::DELETE,
            format!("/v1/vms/{upper}"),
            format!("/v1/vms/{missing_vm}"),
            None,
        ),
        (
            "GET deployment",
            Method::GET,
            format!("/v1/deployments/{b_deployment}"),
            format!("/v1/deployments/{missing_dep}"),
            None,
        ),
        (
            "cancel deployment",
            Method::POST,
            format!("/v1/deployments/{b_deployment}/cancel"),
            format!("/v1/deployments/{missing_dep}/cancel"),
            None,
        ),
        (
            "GET team",
            Method::GET,
            "/v1/teams/team-b".into(),
            "/v1/teams/no-such-team".into(),
            None,
        ),
        (
            "GET budget",
            Method::GET,
            "/v1/teams/team-b/budget".into(),
            "/v1/teams/no-such-team/budget".into(),
            None,
        ),
        (
            "GET spend",
            Method::GET,
            "/v1/spend?team=team-b".into(),
            "/v1/spend?team=no-such-team".into(),
            None,
        ),
        (
            "GET vms of B",
            Method::GET,
            "/v1/vms?team=team-b".into(),
            "/v1/vms?team=no-such-team".into(),
            None,
        ),
        (
            "GET deployments of B",
            Method::GET,
            "/v1/deployments?team=team-b".into(),
            "/v1/deployments?team=no-such-team".into(),
            None,
        ),
        (
            "dry run for B",
            Method::POST,
            "/v1/deployments?dry_run=true&team=team-b".into(),
            "/v1/deployments?dry_run=true&team=no-such-team".into(),
            Some(deploy_body("x", 1)),
        ),
        (
            "deploy for B",
            Method::POST,
            "/v1/deployments?team=team-b".into(),
            "/v1/deployments?team=no-such-team".into(),
            Some(deploy_body("x", 1)),
        ),
    ];
    let mut foreign_successes = 0u64;
    let mut distinguishable = Vec::new();
    for key in [&a, &a_viewer] {
        for (what, method, foreign_path, missing_path, body) in &probes {
            let label = format!("{method} {what}");
            let send = |path: &str| {
                let mut request = gateway
                    .http()
                    .request(method.clone(), gateway.url(path))
                    .bearer_auth(key)
                    .header("x-request-id", PROBE_ID);
                if let Some(body) = body {
                    request = request.json(body);
                }
                gateway.send(&label, request)
            };
            let foreign = send(foreign_path)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let missing = send(missing_path)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            row.runs += 1;
            if foreign.status < 300 {
                foreign_successes += 1;
            }
            // Lists filtered by `?team=` are refused or empty, the same for both.
            if foreign.status != missing.status || foreign.text != missing.text {
                distinguishable.push(format!(
                    "{what}: {} {} vs {} {}",
                    foreign.status,
                    foreign.text.chars().take(100).collect::<String>(),
                    missing.status,
                    missing.text.chars().take(100).collect::<String>()
                ));
            }
            if foreign.text.contains(&b_vm) || foreign.text.contains(&b_deployment) {
                foreign_successes += 1;
            }
        }
    }
    // A's own listings never show B's things.
    for path in ["/v1/vms", "/v1/deployments", "/v1/spend?group_by=vm"] {
        let reply = gateway.call(&a, Method::GET, path, None, None).await;
        row.runs += 1;
        if reply.text.contains(&b_vm)
            || reply.text.contains(&b_deployment)
            || reply.text.contains("team-b")
        {
            foreign_successes += 1;
        }
    }
    let after = stored_state(&world).await;
    let changed: Vec<&String> = before
        .iter()
        .filter(|(t, rows)| after.get(*t) != Some(rows))
        .map(|(t, _)| t)
        .collect();
    let mutations_after = mutations(&sim_calls(&world).await);
    let b_alive = world.sim.state().await["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|vm| text(&vm["id"]).eq_ignore_ascii_case(&b_vm) && vm["deleted_at"].is_null());

    // Idempotency keys are per team: B's key value is a new key for A.
    let shared = "shared-idempotency-key";
    let b_first = gateway
        .call(
            &b,
            Method::POST,
            "/v1/deployments",
            Some(&deploy_body("same", 1)),
            Some(shared),
        )
        .await;
    let a_same = gateway
        .call(
            &a,
            Method::POST,
            "/v1/deployments",
            Some(&deploy_body("same", 1)),
            Some(shared),
        )
        .await;
    let a_other = gateway
        .call(
            &a,
            Method::POST,
            "/v1/deployments",
            Some(&deploy_body("other", 2)),
            Some(&format!("{shared}-2")),
        )
        .await;
    let b_replay = gateway
        .call(
            &b,
            Method::POST,
            "/v1/deployments",
            Some(&deploy_body("same", 1)),
            Some(shared),
        )
        .await;
    row.runs += 1;
    let scoped = b_first.status == 202
        && a_same.status == 202
        && a_other.status == 202
        && a_same.json["team"] == "team-a"
        && a_same.json["id"] != b_first.json["id"]
        && b_replay.text == b_first.text;
    let _ = a_vm;

    row.bad = foreign_successes + distinguishable.len() as u64 + u64::from(!scoped);
    row.figures = format!(
        "{} probes (member and viewer of A on B's VM, deployment, team, budget, spend; upper-case ids): foreign successes {foreign_successes}, distinguishable from not-found {} (status and bytes), upstream mutations {}, tables changed {}, B's VM alive {b_alive}; idempotency key scoped per team: {scoped}; no batch DELETE route exists",
        row.runs,
        distinguishable.len(),
        mutations_after - mutations_before,
        changed.len()
    );
    row.require(
        mutations_after == mutations_before,
        "a foreign id reached Fluence",
    );
    row.require(changed.is_empty(), "a foreign request changed stored state");
    row.require(b_alive, "B's VM is gone");
    row.require(
        scoped,
        format!(
            "idempotency scoping: B {} A {} {} replay {}",
            b_first.status,
            a_same.status,
            a_same.text.chars().take(120).collect::<String>(),
            b_replay.status
        ),
    );
    if !distinguishable.is_empty() {
        row.require(
            false,
            distinguishable
                .iter()
                .take(4)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    vec![row]
}

type PortSet = BTreeSet<(u16, String)>;

/// The port set of `vm` as the simulator lists it.
async fn sim_ports(world: &World, vm: &str) -> Option<PortSet> {
    let reply = reqwest::Client::new()
        .get(format!("{}/vms/v3", world.sim.base_url))
        .header("x-api-key", &world.suite.fluence_key)
        .send()
        .await
        .ok()?;
    let listed: Value = reply.json().await.ok()?;
    let items = listed
        .as_array()
        .cloned()
        .or_else(|| listed["items"].as_array().cloned())
        .or_else(|| listed["vms"].as_array().cloned())?;
    let found = items
        .iter()
        .find(|v| text(&v["id"]).eq_ignore_ascii_case(vm))?;
    Some(port_set(&found["ports"]))
}

fn port_set(ports: &Value) -> PortSet {
    ports
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                u16::try_from(p["port"].as_u64()?).ok()?,
                p["protocol"].as_str().unwrap_or("tcp").to_lowercase(),
            ))
        })
        .collect()
}

/// H1: generated port updates; the model of what must be open is checked against what the
/// simulator holds after every accepted one.
pub async fn h1(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(1000, 1000);
    let mut row = Row::new(format!("H1 {n} port updates"), "I6", suite.seed);
    let world = roomy_world(&suite, "h1").await;
    let gateway = world.gateway(quiet_gateway()).await;
    gateway.create_team("h1", "1000", json!({})).await;
    let member = gateway.mint_key("h1", "member").await;
    let (_, vm) = one_vm(&world, &gateway, &member, "h1-vm").await;
    let mut current = sim_ports(&world, &vm)
        .await
        .unwrap_or_else(|| panic!("the simulator does not list {vm}"));
    let ssh = (22u16, "tcp".to_owned());
    let pool: [(i64, &str); 12] = [
        (22, "tcp"),
        (22, "udp"),
        (80, "tcp"),
        (443, "tcp"),
        (8080, "tcp"),
        (53, "udp"),
        (5432, "tcp"),
        (9000, "sctp"),
        (10250, "tcp"),
        (0, "tcp"),
        (65536, "tcp"),
        (3000, "tcp"),
    ];
    let mut rng = SplitMix(suite.seed ^ 0x4831);
    let (mut lockouts, mut mismatches, mut wrong_status, mut accepted, mut patches_checked) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut first_fault = None;
    // Whether the update that produced the current set consented to closing SSH.
    let mut closed_with_consent = false;
    let mut patch_calls_seen = mutations_of(&sim_calls(&world).await, "PATCH");
    for _ in 0..n {
        let pick = |rng: &mut SplitMix| -> Vec<(i64, &str)> {
            (0..rng.below(5))
                .map(|_| pool[rng.below(pool.len() as u64) as usize])
                .collect()
        };
        let consent = rng.chance(10);
        let replace = rng.chance(50);
        let (add, remove) = if replace {
            (pick(&mut rng), Vec::new())
        } else {
            (pick(&mut rng), pick(&mut rng))
        };
        let entries = |ports: &[(i64, &str)]| -> Value {
            json!(
                ports
                    .iter()
                    .map(|(p, proto)| json!({"port": p, "protocol": proto}))
                    .collect::<Vec<_>>()
            )
        };
        let mut body = if replace {
            json!({"open_ports": entries(&add)})
        } else {
            let mut body = json!({});
            if !add.is_empty() || remove.is_empty() {
                body["add_ports"] = entries(&add);
            }
            if !remove.is_empty() {
                body["remove_ports"] = entries(&remove);
            }
            body
        };
        if consent {
            body["allow_closing_ssh"] = json!(true);
        }
        // The model: what the gateway must send, or why it must refuse.
        // Port 10250 is refused wherever it appears, even in a removal.
        let invalid = add
            .iter()
            .chain(&remove)
            .any(|(p, _)| !(1..=65535).contains(p) || *p == 10250);
        let as_set = |ports: &[(i64, &str)]| -> PortSet {
            ports
                .iter()
                .map(|(p, proto)| (*p as u16, proto.to_string()))
                .collect()
        };
        // Removing 22/tcp without consent is refused too.
        let closes_ssh_silently = !replace && !consent && as_set(&remove).contains(&ssh);
        let expected: Option<PortSet> = if invalid || closes_ssh_silently {
            None
        } else {
            let mut set = if replace {
                as_set(&add)
            } else {
                let mut set = current.clone();
                for port in as_set(&remove) {
                    set.remove(&port);
                }
                set.extend(as_set(&add));
                set
            };
            if set.iter().any(|(p, _)| *p == 10250) {
                None
            } else {
                if !consent {
                    set.insert(ssh.clone());
                }
                Some(set)
            }
        };
        let reply = gateway
            .call(
                &member,
                Method::PATCH,
                &format!("/v1/vms/{vm}"),
                Some(&body),
                None,
            )
            .await;
        row.runs += 1;
        let calls = sim_calls(&world).await;
        let patch_calls = mutations_of(&calls, "PATCH");
        let sent = patch_calls > patch_calls_seen;
        patch_calls_seen = patch_calls;
        let now = sim_ports(&world, &vm).await.unwrap_or_default();
        let mut fault = None;
        match (&expected, reply.status) {
            (Some(set), 200) => {
                accepted += 1;
                patches_checked += 1;
                let last_patch = calls
                    .iter()
                    .rev()
                    .find(|c| c["method"] == "PATCH" && c["path"] == "/vms/v3")
                    .map(|c| port_set(&c["body"]["updates"][0]["openPorts"]))
                    .unwrap_or_default();
                let shown = port_set(&reply.json["open_ports"]);
                if &now != set || &last_patch != set || &shown != set {
                    mismatches += 1;
                    fault = Some(format!(
                        "model {set:?}, sent {last_patch:?}, simulator {now:?}, gateway {shown:?} for {body} on {current:?}"
                    ));
                }
                current = now.clone();
            }
            (None, 422) => {
                if sent || now != current {
                    mismatches += 1;
                    fault = Some("a refused update reached Fluence".into());
                }
            }
            (_, status) => {
                wrong_status += 1;
                fault = Some(format!(
                    "status {status} for {body} (model {expected:?}): {}",
                    reply.text.chars().take(160).collect::<String>()
                ));
            }
        }
        if reply.status == 200 {
            closed_with_consent = consent;
        }
        if !current.contains(&ssh) && !closed_with_consent {
            lockouts += 1;
        }
        if let (Some(fault), None) = (fault, &first_fault) {
            first_fault = Some(fault);
        }
    }
    row.bad = lockouts + mismatches + wrong_status;
    row.figures = format!(
        "{n} generated updates ({accepted} accepted): lockouts {lockouts}, upstream PATCH bodies checked against the simulator {patches_checked}/{accepted} with {mismatches} mismatches, wrong status {wrong_status}"
    );
    if let Some(fault) = first_fault {
        row.require(false, fault);
    }
    vec![row]
}

fn mutations_of(calls: &[Value], method: &str) -> usize {
    calls
        .iter()
        .filter(|c| c["method"] == method && c["path"] == "/vms/v3")
        .count()
}

/// H3: image URLs that point anywhere but a public https origin. Every host a URL names
/// that could resolve is pointed at by nothing; a loopback listener counts any connection the
/// gateway makes to the loopback hosts and ports of the corpus.
pub async fn h3(suite: Arc<Suite>) -> Vec<Row> {
    let mut row = Row::new("H3 image URL SSRF corpus", "I6", suite.seed);
    let world = roomy_world(&suite, "h3").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind the catch-all: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    let connections = Arc::new(AtomicU64::new(0));
    let counter = {
        let connections = connections.clone();
        tokio::spawn(async move {
            while let Ok((_socket, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let gateway = world.gateway(quiet_gateway()).await;
    gateway.create_team("h3", "1000", json!({})).await;
    let member = gateway.mint_key("h3", "member").await;
    let calls_before = mutations(&sim_calls(&world).await);

    let mut corpus: Vec<String> = [
        "http://127.0.0.1/disk.qcow2",
        "https://127.0.0.1/disk.qcow2",
        "https://127.1/disk.qcow2",
        "https://0.0.0.0/disk.qcow2",
        "https://169.254.169.254/latest/meta-data.qcow2",
        "http://169.254.169.254/latest/meta-data/",
        "https://[::1]/disk.qcow2",
        "https://[::ffff:127.0.0.1]/disk.qcow2",
        "https://[fe80::1]/disk.qcow2",
        "https://[fd00::1]/disk.qcow2",
        "https://0x7f000001/disk.qcow2",
        "https://2130706433/disk.qcow2",
        "https://017700000001/disk.qcow2",
        "https://10.0.0.1/disk.qcow2",
        "https://172.16.0.1/disk.qcow2",
        "https://192.168.1.1/disk.qcow2",
        "https://100.64.0.1/disk.qcow2",
        "file:///etc/passwd",
        "file:///etc/passwd.qcow2",
        "gopher://127.0.0.1:25/_HELO.qcow2",
        "ftp://example.com/disk.qcow2",
        "dict://127.0.0.1:11211/stat.qcow2",
        "javascript:alert(1)",
        "data:application/octet-stream;base64,AAAA",
        "https://user:pass@images.example.com/disk.qcow2",
        "https://user@images.example.com/disk.qcow2",
        "https://images.example.com/disk.exe",
        "https://images.example.com/disk",
        "https://images.example.com/disk.qcow2.sh",
        "//images.example.com/disk.qcow2",
        "https:///disk.qcow2",
        "https://localhost/disk.qcow2",
        "https://localhost./disk.qcow2",
        "https://LOCALHOST/disk.qcow2",
        "https://metadata.google.internal/disk.qcow2",
        " https://127.0.0.1/disk.qcow2",
        "https://127.0.0.1%2f@images.example.com/disk.qcow2",
        "HTTP://127.0.0.1/disk.qcow2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    corpus.push(format!("http://127.0.0.1:{port}/disk.qcow2"));
    corpus.push(format!("https://127.0.0.1:{port}/disk.qcow2"));
    corpus.push(format!("https://localhost:{port}/disk.qcow2"));
    corpus.push(format!(
        "https://images.example.com/{}.qcow2",
        "a".repeat(4096)
    ));
    corpus.push(format!(
        "https://{}.example.com/disk.qcow2",
        "a".repeat(300)
    ));
    let mut accepted = Vec::new();
    for url in &corpus {
        for dry_run in [true, false] {
            let mut body = deploy_body("ssrf", 1);
            body["image"] = json!(url);
            let path = if dry_run {
                "/v1/deployments?dry_run=true"
            } else {
                "/v1/deployments"
            };
            let reply = gateway
                .call(&member, Method::POST, path, Some(&body), None)
                .await;
            row.runs += 1;
            if reply.status != 422 || reply.json["errors"][0]["field"] != "image" {
                row.bad += 1;
                accepted.push(format!("{url} ({path}): {}", reply.status));
            }
        }
    }
    // Let anything the gateway might have started in the background happen.
    gateway.run_job("deployer").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    counter.abort();
    let outbound = connections.load(Ordering::Relaxed);
    let upstream = mutations(&sim_calls(&world).await) - calls_before;
    row.figures = format!(
        "{} hostile URLs x (dry run, deploy): rejected {}/{} ({:.0}%), connections to the loopback catch-all {outbound}, upstream mutations {upstream}",
        corpus.len(),
        row.runs - row.bad,
        row.runs,
        100.0 * (row.runs - row.bad) as f64 / row.runs as f64
    );
    row.require(outbound == 0, "the gateway connected to the catch-all");
    row.require(upstream == 0, "a hostile image reached Fluence");
    if !accepted.is_empty() {
        row.require(
            false,
            accepted
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    vec![row]
}
