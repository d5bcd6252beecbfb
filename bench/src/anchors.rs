//! The anchors every ratio is taken against, written the way a first axum service is written:
//! no tuning, no caching. Each prints one JSON line `{"message": "anchor listening", "listen"}`
//! once bound, in the shape of the gateway's ready line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

/// Rows in the anchor's table; each request reads [`ROWS_PER_READ`] of them.
const TABLE_ROWS: i64 = 10_000;
const ROWS_PER_READ: i64 = 100;

async fn serve(listen: SocketAddr, app: Router) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::json!({"message": "anchor listening", "listen": bound.to_string()})
    );
    axum::serve(listener, app)
        .await
        .map_err(|e| format!("serve: {e}"))
}

pub async fn hello(listen: SocketAddr) -> Result<(), String> {
    serve(
        listen,
        Router::new().route("/", get(|| async { "Hello, World!" })),
    )
    .await
}

/// Hello, plus what every request to the gateway pays for its access log, set up as the
/// gateway sets it up (`telemetry.rs`, `http/mod.rs`): a request id, a span with the method, the
/// matched route and that id, and one JSON line (with the span's fields) when the response is
/// sent, written to stdout by a thread of its own. The most any endpoint that logs each request
/// this way can do.
pub async fn hello_logged(listen: SocketAddr) -> Result<(), String> {
    let (writer, _guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::new(std::io::stdout()));
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .try_init()
        .map_err(|e| format!("logging: {e}"))?;
    let request_id = HeaderName::from_static("x-request-id");
    let app = Router::new()
        .route("/", get(|| async { "Hello, World!" }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("unmatched", MatchedPath::as_str);
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!("request", method = %request.method(), route, request_id = id)
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid));
    serve(listen, app).await
}

/// A row shaped like an inventory row: a few text columns and a few integers.
#[derive(Debug, Serialize)]
struct Item {
    id: String,
    team: String,
    name: String,
    status: String,
    price_micros: i64,
    total_spent_micros: i64,
    configuration: String,
    vcpus: i64,
    created_at: String,
}

pub async fn sqlx_read(listen: SocketAddr, db: PathBuf) -> Result<(), String> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
        .map_err(|e| e.to_string())?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .map_err(|e| format!("open {}: {e}", db.display()))?;
    fill(&pool).await.map_err(|e| format!("fill: {e}"))?;
    let app = Router::new()
        .route("/items", get(read_items))
        .route("/item", get(read_item))
        .with_state(pool);
    serve(listen, app).await
}

async fn fill(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY NOT NULL, team TEXT NOT NULL, \
         name TEXT NOT NULL, status TEXT NOT NULL, price_micros INTEGER NOT NULL, \
         total_spent_micros INTEGER NOT NULL, configuration TEXT NOT NULL, \
         vcpus INTEGER NOT NULL, created_at TEXT NOT NULL)",
    )
    .execute(pool)
    .await?;
    let mut tx = pool.begin().await?;
    for n in 0..TABLE_ROWS {
        sqlx::query("INSERT OR REPLACE INTO items VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")
            .bind(format!("0x{n:040x}"))
            .bind("bench")
            .bind(format!("vm-{n}"))
            .bind("Active")
            .bind(310_000 + n)
            .bind(620_000 + n)
            .bind("cpu-2-ram-4gb-storage-25gb")
            .bind(2)
            .bind("2026-12-01T00:00:00.000000Z")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

async fn read_items(
    State(pool): State<SqlitePool>,
) -> Result<Json<Vec<Item>>, (StatusCode, String)> {
    let rows = sqlx::query(
        "SELECT id, team, name, status, price_micros, total_spent_micros, configuration, vcpus, \
         created_at FROM items ORDER BY id LIMIT ?1",
    )
    .bind(ROWS_PER_READ)
    .fetch_all(&pool)
    .await
    .map_err(internal)?;
    let items = rows
        .iter()
        .map(|row| {
            Ok(Item {
                id: row.try_get("id")?,
                team: row.try_get("team")?,
                name: row.try_get("name")?,
                status: row.try_get("status")?,
                price_micros: row.try_get("price_micros")?,
                total_spent_micros: row.try_get("total_spent_micros")?,
                configuration: row.try_get("configuration")?,
                vcpus: row.try_get("vcpus")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(internal)?;
    Ok(Json(items))
}

/// One row by primary key: the least any endpoint that reads SQLite through sqlx once per
/// request (an API key lookup) can cost.
async fn read_item(State(pool): State<SqlitePool>) -> Result<Json<Item>, (StatusCode, String)> {
    let row = sqlx::query(
        "SELECT id, team, name, status, price_micros, total_spent_micros, configuration, vcpus, \
         created_at FROM items WHERE id = ?1",
    )
    .bind(format!("0x{:040x}", TABLE_ROWS / 2))
    .fetch_one(&pool)
    .await
    .map_err(internal)?;
    let item = Item {
        id: row.try_get("id").map_err(internal)?,
        team: row.try_get("team").map_err(internal)?,
        name: row.try_get("name").map_err(internal)?,
        status: row.try_get("status").map_err(internal)?,
        price_micros: row.try_get("price_micros").map_err(internal)?,
        total_spent_micros: row.try_get("total_spent_micros").map_err(internal)?,
        configuration: row.try_get("configuration").map_err(internal)?,
        vcpus: row.try_get("vcpus").map_err(internal)?,
        created_at: row.try_get("created_at").map_err(internal)?,
    };
    Ok(Json(item))
}

fn internal(error: sqlx::Error) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}
