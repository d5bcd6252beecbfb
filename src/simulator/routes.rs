//! The Fluence endpoints, and the layer in front of them that checks the key, records the call
//! and applies injected faults.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::DateTime;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Simulator;
use super::catalog::{CONFIGURATIONS, DEFAULT_IMAGES, IMAGES_PUBLISHED_MICROS};
use super::error::ApiError;
use super::faults::{Fault, FaultKind};
use super::server::KillHandle;
use super::state::{CallRecord, CreateOptions, SshKeyCreateResponse};
use crate::fluence::types::{
    CreateSshKeyRequest, CreateVmRequest, DefaultImage, DeleteSshKeyRequest, DeleteVmsRequest,
    DeleteVmsResponse, EstimateRequest, OfferConstraints, PatchVmsRequest,
};

/// Request bodies larger than this are refused; nothing Fluence takes comes close.
const BODY_LIMIT: usize = 4 * 1024 * 1024;

pub fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/marketplace/offers", post(offers))
        .route(
            "/marketplace/basic_configurations",
            get(basic_configurations),
        )
        .route("/marketplace/countries", get(countries))
        .route("/marketplace/hardware", get(hardware))
        .route("/v1/marketplace/datacenters", get(datacenters))
        .route("/vms/v3/default_images", get(default_images))
        .route("/vms/v3/estimate", post(estimate))
        .route(
            "/vms/v3",
            post(create_vms)
                .get(list_vms)
                .patch(patch_vms)
                .delete(delete_vms),
        )
        .route("/vms/v3/status", get(vm_status))
        .route(
            "/ssh_keys",
            get(list_ssh_keys)
                .post(create_ssh_key)
                .delete(delete_ssh_key),
        )
        .route_layer(middleware::from_fn_with_state(sim.clone(), fluence_layer))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(sim)
}

pub async fn not_found() -> Response {
    ApiError::not_found("Not found").into_response()
}

// ---------------------------------------------------------------------------------------------
// The layer: auth, call record, faults
// ---------------------------------------------------------------------------------------------

async fn fluence_layer(State(sim): State<Simulator>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let kill = request.extensions().get::<KillHandle>().cloned();
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
            .into_response();
    };
    let call = sim.record_call(&method, &path, query, &bytes);

    if !sim.authorised(&parts.headers) {
        let status = sim.state().switches.auth_failure_status;
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
        sim.finish_call(call, Some(status));
        return ApiError::new(status, "Auth failed. No such API Key").into_response();
    }

    let taken = sim.faults().take(&method, &path);
    let fault = taken.as_ref().map(|t| t.fault.clone());
    let mut request = Request::from_parts(parts, Body::from(bytes));
    if let Some(fault) = &fault {
        match fault.kind {
            FaultKind::ErrorBeforeCommit => {
                let response = injected_error(fault);
                sim.finish_call(call, Some(response.status()));
                return response;
            }
            FaultKind::Delay => tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await,
            FaultKind::CommitPartial => {
                request.extensions_mut().insert(CreateOptions {
                    only: Some(fault.instances_created),
                    hidden_for: None,
                });
            }
            FaultKind::VisibilityDelay => {
                request.extensions_mut().insert(CreateOptions {
                    only: None,
                    hidden_for: Some(fault.seconds),
                });
            }
            // A lost answer and a slow list together (RELIABILITY.md A7): `seconds` on a fault
            // that commits keeps what it created out of lists for that long as well.
            FaultKind::CommitThenError
            | FaultKind::CommitThenReset
            | FaultKind::CommitThenHang
            | FaultKind::MalformedBody
                if fault.seconds > 0 =>
            {
                request.extensions_mut().insert(CreateOptions {
                    only: None,
                    hidden_for: Some(fault.seconds),
                });
            }
            _ => {}
        }
    }

    let response = next.run(request).await;
    let (Some(fault), Some(taken)) = (fault, taken) else {
        sim.finish_call(call, Some(response.status()));
        return response;
    };
    if fault.kind.needs_commit() && !response.status().is_success() {
        sim.faults().give_back(taken);
        sim.finish_call(call, Some(response.status()));
        return response;
    }
    let response = match fault.kind {
        FaultKind::CommitThenError | FaultKind::CommitPartial => injected_error(&fault),
        FaultKind::MalformedBody => {
            let mut broken = Response::new(Body::from(r#"{"vmId": "0x, [truncated"#));
            *broken.status_mut() = response.status();
            broken.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            broken
        }
        FaultKind::CommitThenReset => {
            sim.finish_call(call, None);
            match kill {
                Some(kill) => kill.kill(),
                // Served without our accept loop (in-process `oneshot`): no socket to reset.
                None => return injected_error(&fault),
            }
            return std::future::pending().await;
        }
        FaultKind::CommitThenHang => {
            sim.finish_call(call, None);
            return std::future::pending().await;
        }
        FaultKind::ErrorBeforeCommit | FaultKind::Delay | FaultKind::VisibilityDelay => response,
    };
    sim.finish_call(call, Some(response.status()));
    response
}

fn injected_error(fault: &Fault) -> Response {
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    ApiError::new(status, "Internal server error").into_response()
}

impl Simulator {
    fn authorised(&self, headers: &HeaderMap) -> bool {
        let from_api_key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let from_bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.trim()
                    .strip_prefix("Bearer ")
                    .or_else(|| v.trim().strip_prefix("bearer "))
            })
            .map(str::trim);
        [from_api_key, from_bearer]
            .into_iter()
            .flatten()
            .any(|given| {
                !given.is_empty()
                    && self
                        .inner
                        .api_keys
                        .iter()
                        .any(|key| key.expose_secret() == given)
            })
    }

    /// Records the call (method, path, query, body; never headers) and returns its position.
    fn record_call(&self, method: &str, path: &str, query: Option<String>, body: &[u8]) -> usize {
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
        };
        let mut state = self.state();
        state.calls.push(CallRecord {
            method: method.to_owned(),
            path: path.to_owned(),
            query,
            status: None,
            body,
        });
        state.calls.len() - 1
    }

    fn finish_call(&self, call: usize, status: Option<StatusCode>) {
        if let Some(record) = self.state().calls.get_mut(call) {
            record.status = status.map(|s| s.as_u16());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// Parses a JSON body ourselves, so malformed JSON and wrong types get Fluence's 400 body.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))
}

/// `instances` below 1 is a rule violation (422), even when negative, not a type error.
fn check_instances(bytes: &[u8]) -> Result<(), ApiError> {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(());
    };
    let instances = value.get("instances").and_then(Value::as_i64);
    if instances.is_some_and(|n| n < 1) {
        return Err(ApiError::unprocessable("instances must be at least 1"));
    }
    Ok(())
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
            .into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Marketplace
// ---------------------------------------------------------------------------------------------

async fn offers(State(sim): State<Simulator>, body: Bytes) -> Result<Response, ApiError> {
    let constraints: OfferConstraints = if body.iter().all(u8::is_ascii_whitespace) {
        OfferConstraints::default()
    } else {
        parse::<Option<OfferConstraints>>(&body)?.unwrap_or_default()
    };
    let mut state = sim.state();
    state.sync();
    let now = state.now();
    let offers = state
        .market
        .list(&constraints, now)
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    Ok(json_response(StatusCode::OK, &offers))
}

async fn basic_configurations() -> Response {
    let slugs: Vec<&str> = CONFIGURATIONS.iter().map(|c| c.slug).collect();
    json_response(StatusCode::OK, &slugs)
}

async fn countries(State(sim): State<Simulator>) -> Response {
    json_response(StatusCode::OK, &sim.state().market.countries())
}

async fn hardware(State(sim): State<Simulator>) -> Response {
    json_response(StatusCode::OK, &sim.state().market.hardware())
}

async fn datacenters(State(sim): State<Simulator>) -> Response {
    json_response(StatusCode::OK, &sim.state().market.datacenter_list())
}

async fn default_images() -> Response {
    let published = DateTime::from_timestamp_micros(IMAGES_PUBLISHED_MICROS).unwrap_or_default();
    let images: Vec<DefaultImage> = DEFAULT_IMAGES
        .iter()
        .map(|image| DefaultImage {
            id: image.id.to_owned(),
            name: image.name.to_owned(),
            distribution: image.distribution.to_owned(),
            slug: image.slug.to_owned(),
            download_url: image.download_url.to_owned(),
            username: image.username.to_owned(),
            created_at: published,
            updated_at: published,
        })
        .collect();
    json_response(StatusCode::OK, &images)
}

// ---------------------------------------------------------------------------------------------
// VMs
// ---------------------------------------------------------------------------------------------

async fn estimate(State(sim): State<Simulator>, body: Bytes) -> Result<Response, ApiError> {
    check_instances(&body)?;
    let request: EstimateRequest = parse(&body)?;
    let constraints = request.constraints.unwrap_or_default();
    let estimate = sim.state().estimate(&constraints, request.instances)?;
    Ok(json_response(StatusCode::OK, &estimate))
}

async fn create_vms(State(sim): State<Simulator>, request: Request) -> Result<Response, ApiError> {
    let options = request
        .extensions()
        .get::<CreateOptions>()
        .copied()
        .unwrap_or_default();
    let body = axum::body::to_bytes(request.into_body(), BODY_LIMIT)
        .await
        .map_err(|_| ApiError::bad_request("Unreadable request body"))?;
    check_instances(&body)?;
    let request: CreateVmRequest = parse(&body)?;
    let created = sim.state().create(&request, options)?;
    Ok(json_response(StatusCode::CREATED, &created))
}

async fn list_vms(State(sim): State<Simulator>) -> Response {
    let (instances, strip_zero) = {
        let mut state = sim.state();
        let instances = state.list();
        (instances, state.switches.decimals_without_leading_zero)
    };
    if !strip_zero {
        return json_response(StatusCode::OK, &instances);
    }
    let mut value = serde_json::to_value(&instances).unwrap_or(Value::Null);
    for vm in value.as_array_mut().into_iter().flatten() {
        for field in ["pricePerEpoch", "reservedBalance", "totalSpent"] {
            if let Some(Value::String(text)) = vm.get_mut(field) {
                if let Some(rest) = text.strip_prefix("0.") {
                    *text = format!(".{rest}");
                }
            }
        }
    }
    json_response(StatusCode::OK, &value)
}

async fn vm_status(State(sim): State<Simulator>, RawQuery(query): RawQuery) -> Response {
    let ids: Vec<String> = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("ids="))
        .flat_map(|list| {
            list.replace("%2C", ",")
                .replace("%2c", ",")
                .split(',')
                .map(|id| id.trim().to_owned())
                .filter(|id| !id.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    let statuses = sim.state().statuses(&ids);
    json_response(StatusCode::OK, &statuses)
}

async fn patch_vms(State(sim): State<Simulator>, body: Bytes) -> Result<Response, ApiError> {
    let request: PatchVmsRequest = parse(&body)?;
    sim.state().patch(&request.updates)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_vms(State(sim): State<Simulator>, body: Bytes) -> Result<Response, ApiError> {
    let request: DeleteVmsRequest = parse(&body)?;
    let (removed_ids, transactions) = sim.state().delete(&request.vm_ids)?;
    Ok(json_response(
        StatusCode::OK,
        &DeleteVmsResponse {
            removed_ids,
            transactions,
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// SSH keys
// ---------------------------------------------------------------------------------------------

async fn list_ssh_keys(State(sim): State<Simulator>) -> Response {
    json_response(StatusCode::OK, &sim.state().ssh_keys())
}

async fn create_ssh_key(State(sim): State<Simulator>, body: Bytes) -> Result<Response, ApiError> {
    let request: CreateSshKeyRequest = parse(&body)?;
    let (key, shape) = {
        let mut state = sim.state();
        let (key, is_new) = state.add_ssh_key(&request.name, &request.public_key)?;
        (key, (is_new, state.switches.ssh_key_create_response))
    };
    let (is_new, style) = shape;
    let status = if is_new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    match style {
        SshKeyCreateResponse::Object => Ok(json_response(status, &key)),
        SshKeyCreateResponse::ArraySnakeCase => {
            let mut value = serde_json::to_value(&key).unwrap_or(Value::Null);
            if let Some(object) = value.as_object_mut() {
                if let Some(public_key) = object.remove("publicKey") {
                    object.insert("public_key".to_owned(), public_key);
                }
            }
            Ok(json_response(status, &vec![value]))
        }
    }
}

async fn delete_ssh_key(State(sim): State<Simulator>, body: Bytes) -> Result<Response, ApiError> {
    let request: DeleteSshKeyRequest = parse(&body)?;
    sim.state().delete_ssh_key(&request.fingerprint)?;
    Ok(StatusCode::OK.into_response())
}
