//! The Fluence client against a stub HTTP server that records what it receives and answers with
//! a canned status and body.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use fluence_gateway::domain::ids::VmId;
use fluence_gateway::fluence::types::{
    CreateSshKeyRequest, CreateVmRequest, EstimateRequest, OfferConstraints, PatchVmsRequest,
    RunningInstance,
};
use fluence_gateway::fluence::{
    AuthScheme, ClientConfig, ClientConfigError, Endpoint, FluenceClient, FluenceError,
};
use serde_json::{Value, json};

/// Must never appear in any `Display` or `Debug` output.
const KEY: &str = "canary-7f3a9c0d-SECRET-KEY";

const VM_A: &str = "0xA4c123B1612dd272d1371C17149d439536b3216F";
const VM_B: &str = "0xdAeeb975729fAE923D5A4fd12aAbFe228F219e9C";

#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON: {e}"))
    }
}

#[derive(Clone)]
struct Reply {
    status: u16,
    body: String,
    delay: Duration,
}

#[derive(Clone)]
struct StubState {
    reply: Reply,
    recorded: Arc<Mutex<Vec<Recorded>>>,
}

struct Stub {
    base_url: String,
    recorded: Arc<Mutex<Vec<Recorded>>>,
}

impl Stub {
    async fn replying(status: u16, body: impl Into<String>) -> Stub {
        Stub::start(Reply {
            status,
            body: body.into(),
            delay: Duration::ZERO,
        })
        .await
    }

    async fn start(reply: Reply) -> Stub {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let state = StubState {
            reply,
            recorded: recorded.clone(),
        };
        let app = Router::new().fallback(answer).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let address = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("address: {e}"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Stub {
            base_url: format!("http://{address}"),
            recorded,
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        requests[0].clone()
    }

    fn client(&self) -> FluenceClient {
        client_for(&self.base_url, AuthScheme::XApiKey)
    }
}

async fn answer(
    State(state): State<StubState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state
        .recorded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Recorded {
            method,
            uri: uri.to_string(),
            headers,
            body,
        });
    tokio::time::sleep(state.reply.delay).await;
    let status = StatusCode::from_u16(state.reply.status).unwrap_or(StatusCode::IM_A_TEAPOT);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        state.reply.body.clone(),
    )
        .into_response();
    if status.is_redirection() {
        response.headers_mut().insert(
            header::LOCATION,
            header::HeaderValue::from_static("/marketplace/countries"),
        );
    }
    response
}

fn client_for(base_url: &str, auth: AuthScheme) -> FluenceClient {
    let mut config = ClientConfig::new(base_url, KEY);
    config.auth = auth;
    FluenceClient::new(config).unwrap_or_else(|e| panic!("client: {e}"))
}

fn assert_no_key(text: &str) {
    assert!(!text.contains(KEY), "the key leaked into: {text}");
    assert!(
        !text.contains("SECRET"),
        "part of the key leaked into: {text}"
    );
}

fn assert_error_hides_key(error: &FluenceError) {
    assert_no_key(&error.to_string());
    assert_no_key(&format!("{error:?}"));
}

fn create_vm_request() -> CreateVmRequest {
    serde_json::from_str(include_str!("fixtures/create_vm_request.json"))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn the_key_is_sent_as_x_api_key_by_default() {
    let stub = Stub::replying(200, r#"["BE","DE"]"#).await;
    let client = stub.client();
    assert_eq!(client.last_success(), None);

    let countries = client.countries().await.unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(countries, ["BE", "DE"]);
    let request = stub.only_request();
    assert_eq!(request.method, Method::GET);
    assert_eq!(request.uri, "/marketplace/countries");
    assert_eq!(request.header("x-api-key"), Some(KEY));
    assert_eq!(request.header("authorization"), None);
    let agent = request.header("user-agent").unwrap_or_default();
    assert!(agent.starts_with("fluence-gateway/"), "{agent}");
    // Clones share the readiness timestamp.
    assert!(client.clone().last_success().is_some());
}

#[tokio::test]
async fn the_bearer_scheme_sends_an_authorization_header_instead() {
    let stub = Stub::replying(200, "[]").await;
    let client = client_for(&stub.base_url, AuthScheme::Bearer);

    client.ssh_keys().await.unwrap_or_else(|e| panic!("{e}"));

    let request = stub.only_request();
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(request.header("x-api-key"), None);
}

#[tokio::test]
async fn every_endpoint_uses_its_own_method_and_path() {
    let stub = Stub::replying(500, r#"{"error":"boom"}"#).await;
    // Fifteen 500s in a row would open the circuit breaker (tested in `guard`); here every
    // call must reach the wire.
    let client = stub
        .client()
        .with_guard(fluence_gateway::fluence::guard::GuardConfig {
            failures: 100,
            ..Default::default()
        });
    let ids = [VmId::new(VM_A)];
    let estimate = EstimateRequest {
        constraints: None,
        instances: 1,
    };
    let patch = PatchVmsRequest { updates: vec![] };
    let key = CreateSshKeyRequest {
        name: "k".into(),
        public_key: "ssh-ed25519 AAAA".into(),
    };
    let errors = vec![
        client.offers(&OfferConstraints::default()).await.err(),
        client.basic_configurations().await.err(),
        client.countries().await.err(),
        client.hardware().await.err(),
        client.datacenters().await.err(),
        client.default_images().await.err(),
        client.estimate(&estimate).await.err(),
        client.deploy(&create_vm_request()).await.err(),
        client.list_vms().await.err(),
        client.vm_statuses(&ids).await.err(),
        client.patch_vms(&patch).await.err(),
        client.delete_vms(&ids).await.err(),
        client.ssh_keys().await.err(),
        client.create_ssh_key(&key).await.err(),
        client.delete_ssh_key("SHA256:x").await.err(),
    ];

    let requests = stub.requests();
    assert_eq!(requests.len(), Endpoint::ALL.len());
    for ((endpoint, error), request) in Endpoint::ALL.iter().zip(errors).zip(requests) {
        let Some(error) = error else {
            panic!("{endpoint} did not fail on a 500")
        };
        assert_eq!(error.endpoint(), *endpoint);
        assert_eq!(error.status(), Some(500));
        assert!(error.is_ambiguous(), "{error}");
        assert_eq!(request.method, endpoint.method(), "{endpoint}");
        let path = request.uri.split('?').next().unwrap_or_default();
        assert_eq!(path, endpoint.path(), "{endpoint}");
        // A body, and so a content type, exactly when the method carries one.
        let has_body = !request.body.is_empty();
        assert_eq!(has_body, request.method != Method::GET, "{endpoint}");
        if has_body {
            assert_eq!(request.header("content-type"), Some("application/json"));
        }
    }
}

#[tokio::test]
async fn delete_vms_carries_its_json_body_and_tolerates_an_empty_answer() {
    let stub = Stub::replying(200, "").await;
    let ids = [VmId::new(VM_A), VmId::new(VM_B)];

    let response = stub
        .client()
        .delete_vms(&ids)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(response, Default::default());
    let request = stub.only_request();
    assert_eq!(request.method, Method::DELETE);
    assert_eq!(request.uri, "/vms/v3");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.json(), json!({ "vmIds": [VM_A, VM_B] }));
}

#[tokio::test]
async fn delete_vms_decodes_the_snake_case_answer_and_ignores_a_non_json_one() {
    let stub = Stub::replying(200, include_str!("fixtures/delete_vms_response.json")).await;
    let ids = [VmId::new(VM_A)];
    let response = stub
        .client()
        .delete_vms(&ids)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.removed_ids.len(), 2);
    assert_eq!(response.transactions.len(), 1);

    let stub = Stub::replying(200, "OK").await;
    let response = stub
        .client()
        .delete_vms(&ids)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response, Default::default());
}

#[tokio::test]
async fn delete_ssh_key_sends_the_fingerprint_as_a_json_body() {
    let stub = Stub::replying(200, "").await;
    let fingerprint = "SHA256:FjcXCzoKRrOW+pjGfiJB5TGShTsTybxUBWnfG1lxnRI";

    stub.client()
        .delete_ssh_key(fingerprint)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let request = stub.only_request();
    assert_eq!(request.method, Method::DELETE);
    assert_eq!(request.uri, "/ssh_keys");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.json(), json!({ "fingerprint": fingerprint }));
}

#[tokio::test]
async fn a_redirect_is_not_followed_but_returned_as_a_status_error() {
    let stub = Stub::replying(302, "").await;

    let error = stub.client().countries().await.err();

    let Some(FluenceError::Status {
        endpoint: Endpoint::Countries,
        status: 302,
        message: None,
    }) = error
    else {
        panic!("expected a 302 status error, got {error:?}")
    };
    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test]
async fn a_closed_port_is_a_transport_error_that_was_not_sent() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let client = client_for(&format!("http://127.0.0.1:{port}"), AuthScheme::XApiKey);

    let error = client.deploy(&create_vm_request()).await.err();

    let Some(error) = error else {
        panic!("a closed port answered")
    };
    assert!(
        matches!(
            error,
            FluenceError::Transport {
                endpoint: Endpoint::Deploy,
                may_have_been_sent: false,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_ambiguous() && !error.is_definite_rejection());
    assert_error_hides_key(&error);
    assert_eq!(client.last_success(), None);
}

#[tokio::test]
async fn a_request_timeout_may_have_been_sent() {
    let stub = Stub::start(Reply {
        status: 201,
        body: "[]".into(),
        delay: Duration::from_secs(5),
    })
    .await;
    let mut config = ClientConfig::new(&stub.base_url, KEY);
    config.request_timeout = Duration::from_millis(200);
    let client = FluenceClient::new(config).unwrap_or_else(|e| panic!("{e}"));

    let error = client.deploy(&create_vm_request()).await.err();

    let Some(error) = error else {
        panic!("the slow answer arrived in time")
    };
    assert!(
        matches!(
            error,
            FluenceError::Transport {
                endpoint: Endpoint::Deploy,
                may_have_been_sent: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_ambiguous());
    assert!(error.to_string().contains("timed out"), "{error}");
    assert_error_hides_key(&error);
    assert_eq!(stub.requests().len(), 1, "the client must not retry");
}

#[tokio::test]
async fn a_422_is_a_definite_rejection_with_fluences_message() {
    let stub = Stub::replying(422, include_str!("fixtures/create_vm_422.json")).await;
    let client = stub.client();

    let error = client.deploy(&create_vm_request()).await.err();

    let Some(error) = error else {
        panic!("a 422 was accepted")
    };
    assert_eq!(
        error,
        FluenceError::Status {
            endpoint: Endpoint::Deploy,
            status: 422,
            message: Some("No suitable offer found".into()),
        }
    );
    assert!(error.is_definite_rejection() && !error.is_ambiguous() && !error.is_auth_failure());
    assert_eq!(
        error.to_string(),
        "POST /vms/v3: HTTP 422: No suitable offer found"
    );
    assert_eq!(client.last_success(), None);
    assert_eq!(stub.requests().len(), 1, "the client must not retry");
}

#[tokio::test]
async fn a_401_or_403_is_an_auth_failure_and_an_echoed_key_is_scrubbed() {
    for status in [401, 403] {
        let echo = json!({ "error": format!("Auth failed. No such API Key {KEY}") });
        let stub = Stub::replying(status, echo.to_string()).await;

        let error = stub.client().list_vms().await.err();

        let Some(error) = error else {
            panic!("a {status} was accepted")
        };
        assert!(error.is_auth_failure() && error.is_definite_rejection());
        assert_eq!(error.status(), Some(status));
        assert_error_hides_key(&error);
        assert!(error.to_string().contains("Auth failed"), "{error}");
    }
}

#[tokio::test]
async fn a_long_error_message_is_truncated() {
    let long = "x".repeat(5_000);
    let stub = Stub::replying(400, json!({ "error": long }).to_string()).await;

    let error = stub.client().hardware().await.err();

    let Some(FluenceError::Status {
        message: Some(message),
        ..
    }) = error
    else {
        panic!("expected a status error with a message, got {error:?}")
    };
    assert!(message.chars().count() <= 501, "{}", message.len());
    assert!(message.starts_with("xxx"));
}

#[tokio::test]
async fn a_non_json_error_body_has_no_message() {
    let stub = Stub::replying(502, "<html>Bad Gateway</html>").await;
    let error = stub.client().countries().await.err();
    assert_eq!(
        error,
        Some(FluenceError::Status {
            endpoint: Endpoint::Countries,
            status: 502,
            message: None,
        })
    );
}

#[tokio::test]
async fn garbage_in_a_201_is_a_decode_error_and_ambiguous() {
    let stub = Stub::replying(201, "<<not json>>").await;
    let client = stub.client();

    let error = client.deploy(&create_vm_request()).await.err();

    let Some(error) = error else {
        panic!("garbage decoded")
    };
    assert!(
        matches!(
            error,
            FluenceError::Decode {
                endpoint: Endpoint::Deploy,
                status: 201,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_ambiguous() && !error.is_definite_rejection());
    assert_error_hides_key(&error);
    assert_eq!(client.last_success(), None);
}

#[tokio::test]
async fn deploy_sends_the_request_and_accepts_an_array_or_a_single_object() {
    let stub = Stub::replying(201, include_str!("fixtures/create_vm_response.json")).await;
    let created = stub
        .client()
        .deploy(&create_vm_request())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.len(), 2);
    let request = stub.only_request();
    assert_eq!(request.header("content-type"), Some("application/json"));
    let fixture: Value = serde_json::from_str(include_str!("fixtures/create_vm_request.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(request.json(), fixture);

    // Any 2xx, and a bare object, are accepted.
    let stub = Stub::replying(200, json!({ "vmId": VM_A, "vmName": "web-1" }).to_string()).await;
    let created = stub
        .client()
        .deploy(&create_vm_request())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].vm_id, VmId::new(VM_A.to_ascii_lowercase()));
    assert_eq!(created[0].vm_name, "web-1");
}

#[tokio::test]
async fn statuses_join_ids_with_commas_and_skip_the_call_for_none() {
    let stub = Stub::replying(200, include_str!("fixtures/vm_status.json")).await;
    let client = stub.client();

    assert_eq!(client.vm_statuses(&[]).await, Ok(vec![]));
    assert!(stub.requests().is_empty());

    let statuses = client
        .vm_statuses(&[VmId::new(VM_A), VmId::new(VM_B)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(statuses.len(), 2);
    assert_eq!(
        stub.only_request().uri,
        format!("/vms/v3/status?ids={VM_A},{VM_B}")
    );
}

#[tokio::test]
async fn patch_accepts_a_204() {
    let stub = Stub::replying(204, "").await;
    let patch: PatchVmsRequest =
        serde_json::from_str(include_str!("fixtures/patch_vms_request.json"))
            .unwrap_or_else(|e| panic!("{e}"));

    stub.client()
        .patch_vms(&patch)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let request = stub.only_request();
    assert_eq!(request.method, Method::PATCH);
    assert_eq!(request.header("content-type"), Some("application/json"));
    let fixture: Value = serde_json::from_str(include_str!("fixtures/patch_vms_request.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(request.json(), fixture);
}

#[tokio::test]
async fn create_ssh_key_tells_new_from_existing_in_either_shape() {
    let mut key: Value = serde_json::from_str(include_str!("fixtures/ssh_keys.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let request: CreateSshKeyRequest =
        serde_json::from_str(include_str!("fixtures/create_ssh_key_request.json"))
            .unwrap_or_else(|e| panic!("{e}"));

    // 201 with one object using `publicKey`: created.
    let stub = Stub::replying(201, key[0].to_string()).await;
    let (created, new) = stub
        .client()
        .create_ssh_key(&request)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(new);
    assert_eq!(created.public_key, request.public_key);

    // 200 with a one-element array using `public_key`: already registered.
    if let Some(object) = key[0].as_object_mut() {
        let public_key = object.remove("publicKey").unwrap_or_default();
        object.insert("public_key".into(), public_key);
    }
    let stub = Stub::replying(200, key.to_string()).await;
    let (existing, new) = stub
        .client()
        .create_ssh_key(&request)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!new);
    assert_eq!(existing, created);

    // An empty array names no key.
    let stub = Stub::replying(200, "[]").await;
    let error = stub.client().create_ssh_key(&request).await.err();
    assert!(
        matches!(error, Some(FluenceError::Decode { status: 200, .. })),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_base_url_with_a_trailing_slash_and_a_prefix_works() {
    let stub = Stub::replying(200, "[]").await;
    let client = client_for(&format!("{}/prefix/", stub.base_url), AuthScheme::XApiKey);
    assert_eq!(client.base_url(), format!("{}/prefix", stub.base_url));

    client
        .default_images()
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(stub.only_request().uri, "/prefix/vms/v3/default_images");
}

#[test]
fn configuration_and_client_never_show_the_key() {
    let config = ClientConfig::new("https://api.fluence.dev/", KEY);
    assert_no_key(&format!("{config:?}"));
    for auth in [AuthScheme::XApiKey, AuthScheme::Bearer] {
        let mut config = config.clone();
        config.auth = auth;
        let client = FluenceClient::new(config).unwrap_or_else(|e| panic!("{e}"));
        assert_no_key(&format!("{client:?}"));
        assert_eq!(client.base_url(), "https://api.fluence.dev");
    }
}

#[test]
fn bad_configurations_are_refused_without_showing_the_key() {
    let bad_key = format!("{KEY}\n");
    let error = FluenceClient::new(ClientConfig::new("https://api.fluence.dev", &*bad_key)).err();
    assert_eq!(error, Some(ClientConfigError::ApiKey));
    if let Some(error) = error {
        assert_no_key(&error.to_string());
        assert_no_key(&format!("{error:?}"));
    }

    let error = FluenceClient::new(ClientConfig::new("https://api.fluence.dev", "")).err();
    assert_eq!(error, Some(ClientConfigError::ApiKey));

    for url in [
        "ftp://api.fluence.dev",
        "https://me:pw@api.fluence.dev",
        "https://api.fluence.dev/?x=1",
        "api.fluence.dev",
    ] {
        let error = FluenceClient::new(ClientConfig::new(url, KEY)).err();
        assert!(
            matches!(error, Some(ClientConfigError::BaseUrl(_))),
            "{url}: {error:?}"
        );
    }

    let mut config = ClientConfig::new("https://api.fluence.dev", KEY);
    config.request_timeout = Duration::ZERO;
    assert!(matches!(
        FluenceClient::new(config).err(),
        Some(ClientConfigError::Timeout(_))
    ));
}

/// The listing is decoded while it arrives: a large one (several hundred chunks on the wire)
/// comes out whole and equal to decoding it at once.
#[tokio::test]
async fn a_large_listing_is_decoded_while_it_arrives() {
    let one: Vec<Value> = serde_json::from_str(include_str!("fixtures/list_vms.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let many: Vec<Value> = (0..3000).map(|i| one[i % one.len()].clone()).collect();
    let body = serde_json::to_string(&many).unwrap_or_else(|e| panic!("{e}"));
    assert!(body.len() > 2_000_000, "{} bytes", body.len());
    let expected: Vec<RunningInstance> =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}"));
    let stub = Stub::replying(200, body).await;
    let client = stub.client();

    let listed = client.list_vms().await.unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(listed, expected);
    assert!(client.last_success().is_some());
}

#[tokio::test]
async fn a_listing_that_is_not_a_list_of_vms_is_a_decode_error() {
    for body in ["<<not json>>", "[{\"id\": 7}]", "[", "[] trailing"] {
        let stub = Stub::replying(200, body).await;
        let client = stub.client();
        let error = client.list_vms().await.err();
        assert!(
            matches!(
                error,
                Some(FluenceError::Decode {
                    endpoint: Endpoint::ListVms,
                    status: 200,
                    ..
                })
            ),
            "{body}: {error:?}"
        );
        assert_eq!(client.last_success(), None);
    }
}
