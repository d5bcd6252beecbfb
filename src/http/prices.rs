//! `/v1/offers` (the marketplace's latest snapshot, filtered) and `/v1/prices` (price history
//! in UTC hour or day buckets), both served from the sampler's `price_samples`.
//!
//! A bucket's median is the lower of the two middle prices when it holds an even number of
//! samples: always a price that was actually offered, and exact in micro-USDC.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Query;
use crate::auth::Principal;
use crate::domain::money::Usdc;
use crate::error::{ApiError, FieldErrors};
use crate::jobs::JobName;
use crate::state::AppState;
use crate::store::prices::{self, OfferFilter, Sample};
use crate::store::time::now;

/// The default history window, ending now.
const DEFAULT_WINDOW_DAYS: i64 = 7;
/// The longest history one request may ask for.
const MAX_RANGE_DAYS: i64 = 366;
/// The most buckets one answer may hold.
const MAX_BUCKETS: i64 = 10_000;
/// Longer filter values than this name nothing Fluence has.
const MAX_FILTER_LEN: usize = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_offers))
        .routes(routes!(price_history))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OffersParams {
    /// A basic configuration slug, exactly.
    pub configuration: Option<String>,
    /// ISO alpha-2 country code, any case.
    pub country: Option<String>,
    /// Per VM per epoch, a decimal string: offers at or below it.
    pub max_price: Option<String>,
}

/// One offer of the latest snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct OfferView {
    #[schema(example = "cpu-2-ram-4gb-storage-25gb")]
    pub configuration: String,
    /// `<country>-<city>-<index>`, lower case.
    #[schema(example = "de-fra-1")]
    pub datacenter: String,
    #[schema(example = "DE")]
    pub country: String,
    #[schema(example = "FRA")]
    pub city: String,
    pub tier: i64,
    /// One VM of the configuration per 24 h epoch, a decimal string.
    #[schema(example = "0.3125")]
    pub price_per_epoch: String,
    /// Basic instances still available, summed over the offer's servers.
    pub capacity: i64,
    pub sampled_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OffersAnswer {
    /// When the snapshot was taken.
    pub sampled_at: DateTime<Utc>,
    /// Cheapest first, then by configuration and datacenter.
    pub items: Vec<OfferView>,
}

/// The offers of the newest price sample, filtered. When nothing was ever sampled the sampler
/// runs first; 503 `upstream_unavailable` if Fluence cannot be reached then.
#[utoipa::path(get, path = "/v1/offers", tag = "prices", params(OffersParams),
    responses((status = 200, body = OffersAnswer), (status = 422), (status = 503)),
    security(("bearer" = [])))]
async fn list_offers(
    State(state): State<AppState>,
    _caller: Principal,
    Query(params): Query<OffersParams>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    let configuration = slug_filter(&mut errors, "configuration", params.configuration);
    let country = country_filter(&mut errors, params.country);
    let max_price = match params.max_price.as_deref().map(Usdc::parse).transpose() {
        Ok(price) => price,
        Err(e) => {
            errors.add(
                "max_price",
                format!("{e}; write a decimal string such as \"0.5\""),
            );
            None
        }
    };
    errors.finish()?;
    let filter = OfferFilter {
        configuration,
        country,
        max_price,
    };
    let request = format!("{filter:?}");
    // Read before the snapshot: a sampler run committing meanwhile moves it.
    let generation = state.offer_pages.generation();
    if let Some(body) = state.offer_pages.get(&request, generation) {
        return Ok(super::encoded_json(body));
    }
    let snapshot = match latest(&state, &filter).await? {
        Some(snapshot) => snapshot,
        None => {
            // Never sampled (a new database): take the first snapshot now, through the job so
            // that it takes turns with scheduled runs and shows in `/v1/jobs`. Detached, so
            // that a client hanging up does not cut the run short.
            let runner = state.clone();
            tokio::spawn(async move { runner.jobs.run(&runner, JobName::Prices).await })
                .await
                .map_err(ApiError::internal)?;
            latest(&state, &filter).await?.ok_or_else(|| {
                ApiError::UpstreamUnavailable(
                    "No price sample has been taken yet and Fluence's marketplace could not be \
                     reached; retry later."
                        .into(),
                )
            })?
        }
    };
    let (sampled_at, samples) = snapshot;
    let items = samples
        .into_iter()
        .map(|s: Sample| OfferView {
            configuration: s.configuration,
            datacenter: s.datacenter,
            country: s.country,
            city: s.city,
            tier: s.tier,
            price_per_epoch: s.price.to_string(),
            capacity: s.capacity,
            sampled_at,
        })
        .collect();
    let body = Bytes::from(
        serde_json::to_vec(&OffersAnswer { sampled_at, items }).map_err(ApiError::internal)?,
    );
    state.offer_pages.keep(request, generation, body.clone());
    Ok(super::encoded_json(body))
}

/// The latest snapshot, read in one transaction so that its time and its rows agree.
async fn latest(
    state: &AppState,
    filter: &OfferFilter,
) -> Result<Option<(DateTime<Utc>, Vec<Sample>)>, ApiError> {
    let mut tx = state.store.pool().begin().await?;
    let snapshot = prices::latest_snapshot(&mut tx, filter).await?;
    tx.commit().await?;
    Ok(snapshot)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PricesParams {
    /// A basic configuration slug; all configurations when omitted.
    pub configuration: Option<String>,
    /// ISO alpha-2 country code, any case; all countries when omitted.
    pub country: Option<String>,
    /// RFC 3339, inclusive; default `to` minus 7 days.
    pub from: Option<DateTime<Utc>>,
    /// RFC 3339, exclusive; default now.
    pub to: Option<DateTime<Utc>>,
    /// `hour` (default) or `day`, aligned to UTC.
    pub bucket: Option<String>,
}

/// One bucket of price history: the prices of every offer sampled in `[start, end)` (and in
/// the asked range) that passed the filters.
#[derive(Debug, Serialize, ToSchema)]
pub struct PriceBucket {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `null` when the bucket holds no sample.
    #[schema(example = "0.3125")]
    pub min: Option<String>,
    /// The middle price; of an even count, the lower of the two middle prices.
    pub median: Option<String>,
    pub max: Option<String>,
    pub samples: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PricesAnswer {
    pub configuration: Option<String>,
    pub country: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// `hour` or `day`.
    pub bucket: &'static str,
    /// Every bucket overlapping `[from, to)`, oldest first, empty ones included.
    pub buckets: Vec<PriceBucket>,
}

/// Price history per UTC hour or day: min, median, max and the number of samples.
#[utoipa::path(get, path = "/v1/prices", tag = "prices", params(PricesParams),
    responses((status = 200, body = PricesAnswer), (status = 422)),
    security(("bearer" = [])))]
async fn price_history(
    State(state): State<AppState>,
    _caller: Principal,
    Query(params): Query<PricesParams>,
) -> Result<Json<PricesAnswer>, ApiError> {
    let mut errors = FieldErrors::default();
    let configuration = slug_filter(&mut errors, "configuration", params.configuration);
    let country = country_filter(&mut errors, params.country);
    let (bucket, size_secs) = match params.bucket.as_deref().unwrap_or("hour") {
        "hour" => ("hour", 3600),
        "day" => ("day", 86_400),
        _ => {
            errors.add("bucket", "must be `hour` or `day`");
            ("hour", 3600)
        }
    };
    let to = params.to.unwrap_or_else(now);
    let from = params
        .from
        .or_else(|| to.checked_sub_signed(TimeDelta::days(DEFAULT_WINDOW_DAYS)));
    let mut plan = None;
    match from {
        None => errors.add("to", "is too far in the past"),
        Some(from) if from >= to => errors.add("to", "must be later than `from`"),
        Some(from) if to - from > TimeDelta::days(MAX_RANGE_DAYS) => errors.add(
            "from",
            format!("the range may span at most {MAX_RANGE_DAYS} days"),
        ),
        Some(from) => {
            // The first bucket holds `from`; the last holds the last instant before `to`.
            let start = from.timestamp() - from.timestamp().rem_euclid(size_secs);
            let end = to.timestamp() + i64::from(to.timestamp_subsec_nanos() > 0);
            let count = (end - start + size_secs - 1).div_euclid(size_secs);
            if count > MAX_BUCKETS {
                errors.add(
                    "bucket",
                    format!("the range would need {count} buckets; at most {MAX_BUCKETS}"),
                );
            } else {
                plan = Some((from, start, count));
            }
        }
    }
    errors.finish()?;
    let Some((from, start, count)) = plan else {
        return Err(ApiError::internal("no bucket plan for a valid request"));
    };

    let slots = usize::try_from(count).map_err(ApiError::internal)?;
    let mut summaries = Summaries::new(start, size_secs, slots);
    {
        let mut tx = state.store.pool().begin().await?;
        prices::each_run_between(
            &mut tx,
            from,
            to,
            configuration.as_deref(),
            country.as_deref(),
            |at, run| summaries.add((at.timestamp() - start).div_euclid(size_secs), run),
        )
        .await?;
        tx.commit().await?;
    }
    Ok(Json(PricesAnswer {
        configuration,
        country,
        from,
        to,
        bucket,
        buckets: summaries.finish()?,
    }))
}

/// The buckets' summaries, built as the runs stream in oldest first: only the bucket being
/// filled holds its prices. Holding every price of the range until the end took 8 bytes a
/// sample (16 with the vectors' growth), 16 MB for 90 days of a million samples.
struct Summaries {
    /// The first bucket's start (a Unix time) and the buckets' size.
    start: i64,
    size_secs: i64,
    slots: usize,
    done: Vec<PriceBucket>,
    /// The bucket being filled (the next after `done`), and its prices.
    filling: Vec<Usdc>,
    /// A bucket time out of range, or a run older than the bucket being filled.
    error: Option<String>,
}

impl Summaries {
    fn new(start: i64, size_secs: i64, slots: usize) -> Summaries {
        Summaries {
            start,
            size_secs,
            slots,
            done: Vec::with_capacity(slots),
            filling: Vec::new(),
            error: None,
        }
    }

    /// Adds a run's prices to bucket `index`; runs come oldest first.
    fn add(&mut self, index: i64, run: Vec<Usdc>) {
        // Runs come from `[from, to)`, which the buckets cover; anything else is skipped.
        let Some(index) = usize::try_from(index).ok().filter(|&i| i < self.slots) else {
            return;
        };
        if index < self.done.len() {
            self.error
                .get_or_insert_with(|| format!("a run for bucket {index} came after it closed"));
            return;
        }
        while self.done.len() < index && self.error.is_none() {
            self.close();
        }
        self.filling.extend(run);
    }

    /// Summarises the bucket being filled and starts the next.
    fn close(&mut self) {
        let mut slot = std::mem::take(&mut self.filling);
        slot.sort_unstable();
        let i = i64::try_from(self.done.len()).unwrap_or(i64::MAX);
        let bucket_start = self.start + i * self.size_secs;
        let instant = |secs: i64| DateTime::from_timestamp(secs, 0);
        let (Some(start), Some(end)) = (
            instant(bucket_start),
            instant(bucket_start + self.size_secs),
        ) else {
            self.error
                .get_or_insert_with(|| format!("bucket time {bucket_start} out of range"));
            return;
        };
        let median = slot.len().checked_sub(1).map(|last| slot[last / 2]);
        self.done.push(PriceBucket {
            start,
            end,
            min: slot.first().map(ToString::to_string),
            median: median.map(|m| m.to_string()),
            max: slot.last().map(ToString::to_string),
            samples: u64::try_from(slot.len()).unwrap_or(u64::MAX),
        });
    }

    /// Every bucket, empty ones included.
    fn finish(mut self) -> Result<Vec<PriceBucket>, ApiError> {
        while self.done.len() < self.slots && self.error.is_none() {
            self.close();
        }
        match self.error {
            Some(error) => Err(ApiError::internal(error)),
            None => Ok(self.done),
        }
    }
}

/// A configuration filter: non-empty, of sane length.
fn slug_filter(errors: &mut FieldErrors, field: &str, value: Option<String>) -> Option<String> {
    let value = value?;
    if value.is_empty() || value.len() > MAX_FILTER_LEN {
        errors.add(field, format!("must be 1 to {MAX_FILTER_LEN} characters"));
        return None;
    }
    Some(value)
}

/// A country filter: two ASCII letters, compared in upper case.
fn country_filter(errors: &mut FieldErrors, value: Option<String>) -> Option<String> {
    let value = value?;
    if value.len() != 2 || !value.bytes().all(|b| b.is_ascii_alphabetic()) {
        errors.add("country", "must be an ISO 3166-1 alpha-2 code such as `DE`");
        return None;
    }
    Some(value.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usdc(micros: &[i64]) -> Vec<Usdc> {
        micros.iter().copied().map(Usdc::from_micros).collect()
    }

    fn summary(bucket: &PriceBucket) -> (Option<&str>, Option<&str>, Option<&str>, u64) {
        (
            bucket.min.as_deref(),
            bucket.median.as_deref(),
            bucket.max.as_deref(),
            bucket.samples,
        )
    }

    #[test]
    fn buckets_are_summarised_as_runs_stream_in_with_the_gaps_kept() {
        let mut summaries = Summaries::new(3600, 3600, 4);
        summaries.add(0, usdc(&[3, 1]));
        summaries.add(0, usdc(&[2]));
        // Bucket 1 has no run; bucket 2 two; bucket 3 none; a run past the end is skipped.
        summaries.add(2, usdc(&[10, 40]));
        summaries.add(2, usdc(&[20, 30]));
        summaries.add(4, usdc(&[99]));
        let buckets = summaries.finish().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(buckets.len(), 4);
        assert_eq!(
            summary(&buckets[0]),
            (Some("0.000001"), Some("0.000002"), Some("0.000003"), 3)
        );
        assert_eq!(summary(&buckets[1]), (None, None, None, 0));
        // The lower middle of an even count, as before.
        assert_eq!(
            summary(&buckets[2]),
            (Some("0.00001"), Some("0.00002"), Some("0.00004"), 4)
        );
        assert_eq!(summary(&buckets[3]), (None, None, None, 0));
        assert_eq!(buckets[1].start.timestamp(), 7200);
        assert_eq!(buckets[3].end.timestamp(), 5 * 3600);
    }

    #[test]
    fn a_run_older_than_the_bucket_being_filled_is_an_error_not_a_wrong_answer() {
        let mut summaries = Summaries::new(0, 60, 3);
        summaries.add(2, usdc(&[5]));
        summaries.add(0, usdc(&[1]));
        assert!(summaries.finish().is_err());
    }
}
