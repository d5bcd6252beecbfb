//! The gateway's HTTP API: per-resource routers merged here, under one layer stack.

pub mod audit;
pub mod budget;
pub mod catalog;
pub mod deployments;
pub mod docs;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod jobs;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod page;
pub mod pages;
pub mod prices;
pub mod problem;
pub mod serve;
pub mod spend;
pub mod teams;
pub mod vms;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware;
use axum::routing::get;
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::error::Problem;
use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Limits of the layer stack.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub body_bytes: usize,
    pub request_timeout: Duration,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fluence-gateway",
        description = "A budget-keeping gateway in front of the Fluence CPU Cloud API. \
            Authenticate with `Authorization: Bearer <key>`; errors are RFC 9457 problem+json."
    ),
    components(schemas(crate::error::Problem, crate::error::FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "teams", description = "Teams, budgets and quotas"),
        (name = "keys", description = "API keys of a team"),
        (name = "audit", description = "Who changed what"),
        (name = "prices", description = "Marketplace offers and price history"),
        (name = "catalog", description = "Fluence's discovery lists, cached"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Documents the errors every secured operation can answer, as problem+json, so that the
/// document does not list only the happy paths.
struct ProblemResponses;

impl utoipa::Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        let common = [
            (
                "401",
                "no key, or an unknown, wrong, revoked or expired one",
            ),
            ("403", "the key's role may not do this"),
            ("429", "rate limited; see Retry-After"),
            ("503", "the database cannot answer now; nothing was changed"),
        ];
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                if operation.security.is_none() {
                    continue;
                }
                for (code, description) in common {
                    operation
                        .responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| problem(description).into());
                }
            }
        }
    }
}

/// Every documented route and the OpenAPI document generated from them, so the two cannot
/// drift. Tests walk the document to reach every route.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(teams::router())
        .merge(keys::router())
        .merge(budget::router())
        .merge(audit::router())
        .merge(deployments::router())
        .merge(jobs::router())
        .merge(vms::router())
        .merge(spend::router())
        .merge(prices::router())
        .merge(catalog::router())
        .split_for_parts();
    // After the merge: the operations exist only now.
    utoipa::Modify::modify(&ProblemResponses, &mut document);
    (router, document)
}

/// The OpenAPI document of the gateway's API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

/// The whole API with its layers. Outermost first: request id, tracing, metrics, problem
/// rendering, panic catching, timeout, body limit.
pub fn router(state: AppState, limits: Limits) -> Router {
    let registry = state.metrics.clone();
    let (api, document) = api();
    let document = Arc::new(document);
    let routes = api
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        .route("/docs", get(docs::page))
        // Open and outside the OpenAPI document, like `/docs`: for Prometheus, not API clients.
        .route("/metrics", get(metrics::scrape))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::layer,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);

    // `Router::layer` wraps every route and the fallback; the last call is the outermost.
    routes
        .layer(RequestBodyLimitLayer::new(limits.body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(CatchPanicLayer::custom(problem::panic_response))
        .layer(middleware::from_fn(problem::render))
        // Outside the panic and timeout layers, so it counts the status the client gets.
        .layer(middleware::from_fn_with_state(registry, metrics::track))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(middleware::from_fn(drop_unusable_request_id))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
        ]))
}

/// The span of one request: method, the matched route (never the raw path, which may hold
/// ids) and the request id.
fn request_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), route, request_id)
}

/// A client's `x-request-id` is kept only if it is short and plain, because it is echoed in
/// answers, logs and the audit trail; otherwise one is generated.
async fn drop_unusable_request_id(
    mut request: Request,
    next: middleware::Next,
) -> axum::response::Response {
    let usable = request.headers().get(&REQUEST_ID).is_none_or(|value| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 64
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if !usable {
        request.headers_mut().remove(&REQUEST_ID);
    }
    next.run(request).await
}

/// An answer already encoded as JSON.
pub(crate) fn encoded_json(body: axum::body::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn not_found() -> Problem {
    Problem::for_status(StatusCode::NOT_FOUND)
}

async fn method_not_allowed() -> Problem {
    Problem::for_status(StatusCode::METHOD_NOT_ALLOWED)
}
