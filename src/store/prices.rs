//! Marketplace price history: the sampler's snapshots (`price_sample_runs`, `price_samples`),
//! the latest snapshot for `/v1/offers`, a range of samples for `/v1/prices`, and retention.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::time::{from_db, to_db};
use crate::domain::money::Usdc;

/// One offer as a snapshot saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub configuration: String,
    /// `<country>-<city>-<index>`, lower case.
    pub datacenter: String,
    /// ISO alpha-2, upper case.
    pub country: String,
    pub city: String,
    pub tier: i64,
    /// One VM per epoch.
    pub price: Usdc,
    /// Basic instances available, summed over the offer's servers.
    pub capacity: i64,
}

/// Records a snapshot: the run, and every sample with the run's time. Call it inside one write
/// transaction, so that a snapshot is stored whole or not at all.
pub async fn insert_snapshot(
    conn: &mut SqliteConnection,
    at: DateTime<Utc>,
    samples: &[Sample],
) -> Result<(), sqlx::Error> {
    let at = to_db(at);
    sqlx::query(
        "INSERT INTO price_sample_runs (sampled_at, offers) VALUES (?1, ?2) \
         ON CONFLICT (sampled_at) DO UPDATE SET offers = offers + excluded.offers",
    )
    .bind(&at)
    .bind(i64::try_from(samples.len()).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await?;
    for sample in samples {
        sqlx::query(
            "INSERT INTO price_samples (sampled_at, configuration, datacenter, country, city, \
             tier, price_micros, capacity) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&at)
        .bind(&sample.configuration)
        .bind(&sample.datacenter)
        .bind(&sample.country)
        .bind(&sample.city)
        .bind(sample.tier)
        .bind(sample.price.micros())
        .bind(sample.capacity)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Deletes the samples (and runs) taken before `before`; returns how many samples went.
pub async fn purge_before(
    conn: &mut SqliteConnection,
    before: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let before = to_db(before);
    let deleted = sqlx::query("DELETE FROM price_samples WHERE sampled_at < ?1")
        .bind(&before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM price_sample_runs WHERE sampled_at < ?1")
        .bind(&before)
        .execute(&mut *conn)
        .await?;
    Ok(deleted)
}

/// Filters of the latest snapshot.
#[derive(Debug, Clone, Default)]
pub struct OfferFilter {
    pub configuration: Option<String>,
    /// Upper case.
    pub country: Option<String>,
    pub max_price: Option<Usdc>,
}

/// The newest snapshot's time and its samples that pass `filter`, cheapest first (then by
/// configuration and datacenter); `None` when nothing was ever sampled.
pub async fn latest_snapshot(
    conn: &mut SqliteConnection,
    filter: &OfferFilter,
) -> Result<Option<(DateTime<Utc>, Vec<Sample>)>, sqlx::Error> {
    let latest: Option<String> =
        sqlx::query_scalar("SELECT MAX(sampled_at) FROM price_sample_runs")
            .fetch_one(&mut *conn)
            .await?;
    let Some(latest) = latest else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT configuration, datacenter, country, city, tier, price_micros, capacity \
         FROM price_samples WHERE sampled_at = ?1 \
         AND (?2 IS NULL OR configuration = ?2) \
         AND (?3 IS NULL OR country = ?3) \
         AND (?4 IS NULL OR price_micros <= ?4) \
         ORDER BY price_micros, configuration, datacenter, id",
    )
    .bind(&latest)
    .bind(&filter.configuration)
    .bind(&filter.country)
    .bind(filter.max_price.map(Usdc::micros))
    .fetch_all(&mut *conn)
    .await?;
    let samples = rows
        .iter()
        .map(|row| {
            Ok(Sample {
                configuration: row.try_get("configuration")?,
                datacenter: row.try_get("datacenter")?,
                country: row.try_get("country")?,
                city: row.try_get("city")?,
                tier: row.try_get("tier")?,
                price: Usdc::from_micros(row.try_get("price_micros")?),
                capacity: row.try_get("capacity")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some((from_db(&latest)?, samples)))
}

/// Every price sampled in `[from, to)` that passes the filters (country upper case), handed to
/// `each` one sampler run at a time (its time and its prices), oldest first.
///
/// The prices of a run come back as one `group_concat` text: grouping by `sampled_at` follows
/// the index order, so SQLite does it without sorting, and a week of samples crosses from
/// SQLite to Rust as a few hundred rows instead of tens of thousands (each row is a hand-off
/// between sqlx's worker thread and the caller, which cost far more than reading it). Rows are
/// streamed, never collected: 90 days of a million samples held at once as rows, then as runs,
/// took 30 MB a request, and glibc kept most of it in the arena of the connection's thread.
pub async fn each_run_between(
    conn: &mut SqliteConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    configuration: Option<&str>,
    country: Option<&str>,
    mut each: impl FnMut(DateTime<Utc>, Vec<Usdc>),
) -> Result<(), sqlx::Error> {
    let mut query: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
        "SELECT sampled_at, group_concat(price_micros) AS prices FROM price_samples \
         WHERE sampled_at >= ",
    );
    query
        .push_bind(to_db(from))
        .push(" AND sampled_at < ")
        .push_bind(to_db(to));
    // Written only when given, not as `(? IS NULL OR ...)`: the planner chooses the series
    // index only for a condition it can see.
    if let Some(configuration) = configuration {
        query.push(" AND configuration = ").push_bind(configuration);
    }
    if let Some(country) = country {
        query.push(" AND country = ").push_bind(country);
    }
    query.push(" GROUP BY sampled_at ORDER BY sampled_at");
    let mut rows = query.build().fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        let at: &str = row.try_get("sampled_at")?;
        let prices: &str = row.try_get("prices")?;
        let prices = prices
            .split(',')
            .map(|micros| {
                micros
                    .parse::<i64>()
                    .map(Usdc::from_micros)
                    .map_err(|e| sqlx::Error::Decode(format!("bad price {micros:?}: {e}").into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        each(from_db(at)?, prices);
    }
    Ok(())
}
