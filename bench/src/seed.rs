//! The data the targets speak of, put where the gateway would have it in production:
//! VMs created at the (simulated) Fluence account, for the gateway's inventory sync to find,
//! and a price history written into the gateway's own `price_samples` table in the shape its
//! sampler writes (a real snapshot, repeated back in time with drifting prices).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};

/// A well-formed OpenSSH ed25519 public key line (nobody's key).
pub const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH bench@gateway";
const VMS_PER_CREATE: usize = 100;

/// Creates `total` VMs at the simulator with its API key, as someone using the account
/// directly would: enough balance and capacity first, then creates of 100 instances.
pub async fn simulator_vms(
    http: &reqwest::Client,
    sim: &str,
    key: &str,
    total: usize,
) -> Result<(), String> {
    post_json(
        http,
        &format!("{sim}/_sim/balance"),
        None,
        &json!({"usdc": "1000000000"}),
    )
    .await?;
    post_json(
        http,
        &format!("{sim}/_sim/market"),
        None,
        &json!({"capacity": 1_000_000}),
    )
    .await?;
    let mut made = 0;
    let mut batch = 0;
    while made < total {
        let instances = VMS_PER_CREATE.min(total - made);
        let body = json!({
            "instances": instances,
            "constraints": {"basicConfiguration": "cpu-2-ram-4gb-storage-25gb"},
            "vmConfiguration": {"name": format!("seeded-{batch}"),
                                "osImage": "https://example.com/bench.qcow2",
                                "openPorts": [], "sshKeys": [SSH_KEY]}
        });
        let created = post_json(http, &format!("{sim}/vms/v3"), Some(key), &body).await?;
        let count = created.as_array().map_or(0, Vec::len);
        if count != instances {
            return Err(format!(
                "the simulator created {count} VMs, not {instances}: {created}"
            ));
        }
        made += count;
        batch += 1;
    }
    Ok(())
}

pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    sim_key: Option<&str>,
    body: &Value,
) -> Result<Value, String> {
    let mut request = http.post(url).json(body);
    if let Some(key) = sim_key {
        request = request.header("x-api-key", key);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("POST {url}: {status}: {text}"));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// What the price history holds once seeded.
pub struct PriceHistory {
    pub samples: u64,
    pub runs: u64,
    pub offers_per_run: u64,
    pub interval: Duration,
    pub oldest: DateTime<Utc>,
}

/// One offer of the snapshot the sampler took.
struct Offer {
    configuration: String,
    datacenter: String,
    country: String,
    city: String,
    tier: i64,
    price_micros: i64,
    capacity: i64,
}

/// Repeats the newest snapshot in the gateway's database back in time until the table holds
/// `total` samples, spread evenly over `window` before the snapshot, each run's prices drifting
/// within +-10 % of the snapshot's. One `BEGIN IMMEDIATE` transaction, as the sampler writes.
pub async fn price_history(
    db: &Path,
    total: u64,
    window: Duration,
) -> Result<PriceHistory, String> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
        .map_err(|e| e.to_string())?
        .busy_timeout(Duration::from_secs(30));
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| format!("open {}: {e}", db.display()))?;
    let latest: Option<String> =
        sqlx::query_scalar("SELECT MAX(sampled_at) FROM price_sample_runs")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    let latest = latest.ok_or("the sampler has taken no snapshot to repeat")?;
    let newest = DateTime::parse_from_rfc3339(&latest)
        .map_err(|e| format!("{latest}: {e}"))?
        .with_timezone(&Utc);
    let offers: Vec<Offer> = sqlx::query(
        "SELECT configuration, datacenter, country, city, tier, price_micros, capacity \
         FROM price_samples WHERE sampled_at = ?1 ORDER BY id",
    )
    .bind(&latest)
    .fetch_all(&mut conn)
    .await
    .map_err(|e| e.to_string())?
    .iter()
    .map(|row| {
        Ok(Offer {
            configuration: row.try_get("configuration")?,
            datacenter: row.try_get("datacenter")?,
            country: row.try_get("country")?,
            city: row.try_get("city")?,
            tier: row.try_get("tier")?,
            price_micros: row.try_get("price_micros")?,
            capacity: row.try_get("capacity")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()
    .map_err(|e: sqlx::Error| e.to_string())?;
    if offers.is_empty() {
        return Err("the sampler's snapshot holds no offer".into());
    }
    let per_run = offers.len() as u64;
    // The snapshot itself is one run; the others go before it.
    let runs = total.div_ceil(per_run).max(1);
    let interval = Duration::from_secs((window.as_secs() / runs).max(1));
    let step = chrono::Duration::from_std(interval).map_err(|e| e.to_string())?;

    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let mut written = per_run;
    let mut oldest = newest;
    // Rows per INSERT: 8 values each, well under SQLite's limit on bound parameters.
    const ROWS_PER_STATEMENT: usize = 1000;
    let mut pending: Vec<(String, usize, i64)> = Vec::with_capacity(ROWS_PER_STATEMENT);
    for run in 1..runs {
        let at = newest - step * i32::try_from(run).map_err(|e| e.to_string())?;
        oldest = at;
        let at_text = at.to_rfc3339_opts(SecondsFormat::Micros, true);
        // Prices move by the hour, as the simulator's do: runs within one hour repeat them.
        let hour = u64::try_from(at.timestamp() / 3600).unwrap_or(0);
        let in_this_run = per_run.min(total - written);
        sqlx::query("INSERT INTO price_sample_runs (sampled_at, offers) VALUES (?1, ?2)")
            .bind(&at_text)
            .bind(i64::try_from(in_this_run).unwrap_or(i64::MAX))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        for (index, offer) in offers.iter().take(in_this_run as usize).enumerate() {
            pending.push((
                at_text.clone(),
                index,
                drifted(offer.price_micros, hour, index),
            ));
            if pending.len() == ROWS_PER_STATEMENT {
                insert_samples(&mut conn, &offers, &mut pending).await?;
            }
        }
        written += in_this_run;
    }
    insert_samples(&mut conn, &offers, &mut pending).await?;
    sqlx::query("COMMIT")
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let samples: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM price_samples")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(PriceHistory {
        samples: u64::try_from(samples).unwrap_or(0),
        runs,
        offers_per_run: per_run,
        interval,
        oldest,
    })
}

async fn insert_samples(
    conn: &mut SqliteConnection,
    offers: &[Offer],
    pending: &mut Vec<(String, usize, i64)>,
) -> Result<(), String> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut insert: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
        "INSERT INTO price_samples (sampled_at, configuration, datacenter, country, city, tier, \
         price_micros, capacity) ",
    );
    insert.push_values(pending.iter(), |mut row, (at, index, price)| {
        let offer = &offers[*index];
        row.push_bind(at.as_str())
            .push_bind(offer.configuration.as_str())
            .push_bind(offer.datacenter.as_str())
            .push_bind(offer.country.as_str())
            .push_bind(offer.city.as_str())
            .push_bind(offer.tier)
            .push_bind(*price)
            .push_bind(offer.capacity);
    });
    insert
        .build()
        .execute(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    pending.clear();
    Ok(())
}

/// The snapshot's price moved by a deterministic -10 %..+10 % for each hour and offer, so that
/// buckets hold distinct prices and medians are real work.
fn drifted(price: i64, hour: u64, index: usize) -> i64 {
    let mut x = hour.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (index as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    let per_million = 900_000 + i64::try_from(x % 200_001).unwrap_or(0);
    price.saturating_mul(per_million) / 1_000_000
}
