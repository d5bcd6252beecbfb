//! The `/_sim/` control API: not part of Fluence, no key, for tests and demos.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::faults::FaultSpec;
use super::state::{IdCase, ResourceAmounts, SshKeyCreateResponse};
use super::{BillingMode, Simulator};
use crate::domain::money::{MICROS_PER_USDC, Usdc};
use crate::fluence::timefmt;

pub fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/_sim/clock", get(get_clock).post(advance_clock))
        .route("/_sim/faults", post(add_fault).delete(clear_faults))
        .route("/_sim/market", post(adjust_market))
        .route("/_sim/vms/{id}/terminate", post(terminate))
        .route("/_sim/balance", post(set_balance))
        .route("/_sim/config", get(get_config).post(set_config))
        .route("/_sim/state", get(ground_truth))
        .with_state(sim)
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("Invalid body: {e}")))
}

fn now_body(sim: &Simulator) -> Json<Value> {
    let mut state = sim.state();
    state.sync();
    Json(json!({ "now": timefmt::format_vm(&state.now()) }))
}

async fn get_clock(State(sim): State<Simulator>) -> Json<Value> {
    now_body(&sim)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    advance_seconds: u64,
}

async fn advance_clock(State(sim): State<Simulator>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let advance: Advance = parse(&body)?;
    let seconds = i64::try_from(advance.advance_seconds)
        .map_err(|_| ApiError::bad_request("advance_seconds is too large"))?;
    sim.state()
        .advance(seconds)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(now_body(&sim))
}

async fn add_fault(State(sim): State<Simulator>, body: Bytes) -> Result<Response, ApiError> {
    let spec: FaultSpec = parse(&body)?;
    sim.faults().add(spec).map_err(ApiError::bad_request)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn clear_faults(State(sim): State<Simulator>) -> Response {
    sim.faults().clear();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarketChange {
    #[serde(default)]
    configuration: Option<String>,
    #[serde(default)]
    country: Option<String>,
    /// A JSON number or a decimal string; relative to the generated prices, so 1 restores them.
    #[serde(default)]
    price_multiplier: Option<Value>,
    #[serde(default)]
    capacity: Option<u32>,
}

/// The largest `price_multiplier`. Far beyond any price shock worth testing, and small enough
/// that no price, deposit or total computed from it can leave micro-USDC's range.
const MAX_MULTIPLIER: i64 = 1000;

/// The multiplier's decimal text read exactly into parts per million (no float in between);
/// it must be greater than 0 and at most [`MAX_MULTIPLIER`].
fn multiplier_ppm(value: &Value) -> Result<i64, ApiError> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        _ => return Err(ApiError::bad_request("price_multiplier must be a number")),
    };
    let ppm = Usdc::parse(&text)
        .map(Usdc::micros)
        .map_err(|e| ApiError::bad_request(format!("price_multiplier {text:?} {e}")))?;
    if ppm <= 0 || ppm > MAX_MULTIPLIER * MICROS_PER_USDC {
        return Err(ApiError::bad_request(format!(
            "price_multiplier must be greater than 0 and at most {MAX_MULTIPLIER}"
        )));
    }
    Ok(ppm)
}

/// `capacity` sets each matching offer's free slots to N now, spread over its servers. It is not
/// a ceiling: VMs placed before the change still hold their slots, and deleting or terminating
/// them later gives those slots back on top of N, exactly as any release does. Tests that need
/// an exact count set capacity after the VMs they care about are gone.
async fn adjust_market(State(sim): State<Simulator>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let change: MarketChange = parse(&body)?;
    let ppm = change
        .price_multiplier
        .as_ref()
        .map(multiplier_ppm)
        .transpose()?;
    let mut state = sim.state();
    state.sync();
    let matched = state.market.adjust(
        change.configuration.as_deref(),
        change.country.as_deref(),
        ppm,
        change.capacity,
    );
    Ok(Json(json!({ "matched_offers": matched })))
}

async fn terminate(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    sim.state().provider_terminate(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Balance {
    usdc: Usdc,
}

async fn set_balance(State(sim): State<Simulator>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let balance: Balance = parse(&body)?;
    let mut state = sim.state();
    state.set_balance(balance.usdc);
    Ok(Json(json!({ "balance": state.balance })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigChange {
    price_drift: Option<bool>,
    decimals_without_leading_zero: Option<bool>,
    resource_amounts: Option<ResourceAmounts>,
    ssh_key_create_response: Option<SshKeyCreateResponse>,
    auth_failure_status: Option<u16>,
    stuck_launching: Option<bool>,
    created_id_case: Option<IdCase>,
    launch_seconds: Option<u64>,
    billing_mode: Option<BillingMode>,
}

async fn get_config(State(sim): State<Simulator>) -> Json<Value> {
    Json(serde_json::to_value(&sim.state().switches).unwrap_or(Value::Null))
}

async fn set_config(State(sim): State<Simulator>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let change: ConfigChange = parse(&body)?;
    if change
        .auth_failure_status
        .is_some_and(|s| s != 401 && s != 403)
    {
        return Err(ApiError::bad_request(
            "auth_failure_status must be 401 or 403",
        ));
    }
    if change.launch_seconds.is_some_and(|s| s > 600) {
        return Err(ApiError::bad_request(
            "launch_seconds must be within 0..=600",
        ));
    }
    let mut state = sim.state();
    state.sync();
    if let Some(drift) = change.price_drift {
        state.set_drift(drift);
    }
    let switches = &mut state.switches;
    if let Some(v) = change.decimals_without_leading_zero {
        switches.decimals_without_leading_zero = v;
    }
    if let Some(v) = change.resource_amounts {
        switches.resource_amounts = v;
    }
    if let Some(v) = change.ssh_key_create_response {
        switches.ssh_key_create_response = v;
    }
    if let Some(v) = change.auth_failure_status {
        switches.auth_failure_status = v;
    }
    if let Some(v) = change.stuck_launching {
        switches.stuck_launching = v;
    }
    if let Some(v) = change.created_id_case {
        switches.created_id_case = v;
    }
    if let Some(v) = change.launch_seconds {
        switches.launch_seconds = v;
    }
    if let Some(v) = change.billing_mode {
        switches.billing_mode = v;
    }
    Ok(Json(
        serde_json::to_value(&*switches).unwrap_or(Value::Null),
    ))
}

async fn ground_truth(State(sim): State<Simulator>) -> Json<Value> {
    Json(sim.state().ground_truth())
}
