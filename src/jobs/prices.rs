//! The price sampler: takes a snapshot of the whole marketplace (`POST /marketplace/offers` with
//! no constraint), stores every offer with the snapshot's time in one transaction, and deletes
//! samples older than `jobs.price_retention_days`. `GET /v1/offers` runs it too when nothing was
//! ever sampled.

use chrono::TimeDelta;

use crate::fluence::FluenceError;
use crate::fluence::types::{MarketOffering, OfferConstraints};
use crate::state::AppState;
use crate::store::StoreError;
use crate::store::prices::{self, Sample};
use crate::store::time::now;

/// Why a snapshot was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("Fluence: {0}")]
    Upstream(#[from] FluenceError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for SampleError {
    fn from(error: sqlx::Error) -> SampleError {
        SampleError::Store(StoreError::Sqlx(error))
    }
}

pub async fn run(state: &AppState) -> Result<String, String> {
    let (offers, purged) = sample(state).await.map_err(|e| e.to_string())?;
    Ok(format!(
        "{offers} offers sampled; {purged} samples past the retention deleted"
    ))
}

/// Takes and stores one snapshot; returns how many offers it held and how many old samples the
/// retention removed.
pub async fn sample(state: &AppState) -> Result<(usize, u64), SampleError> {
    let offers = state.fluence.offers(&OfferConstraints::default()).await?;
    // The time the answer arrived: every row of the snapshot carries it, so "the latest
    // snapshot" is exactly the rows of the newest run.
    let at = now();
    let samples: Vec<Sample> = offers.iter().map(sample_of).collect();
    let days = i64::try_from(state.settings.jobs.price_retention_days).unwrap_or(i64::MAX);
    // Settings bound the retention far inside chrono's range; the fallback keeps everything.
    let cutoff = TimeDelta::try_days(days).and_then(|keep| at.checked_sub_signed(keep));
    let mut tx = state.store.begin_write().await?;
    prices::insert_snapshot(&mut tx, at, &samples).await?;
    let purged = match cutoff {
        Some(cutoff) => prices::purge_before(&mut tx, cutoff).await?,
        None => 0,
    };
    tx.commit().await?;
    state.offer_pages.forget();
    Ok((samples.len(), purged))
}

/// The stored form of one offer: its basic configuration price, and the basic instances all of
/// its servers can still take.
fn sample_of(offer: &MarketOffering) -> Sample {
    let dc = &offer.datacenter;
    let capacity = offer
        .servers
        .iter()
        .map(|server| i64::from(server.available_basic_instances))
        .sum();
    Sample {
        configuration: offer.configuration.slug.clone(),
        datacenter: format!(
            "{}-{}-{}",
            dc.country_code.to_ascii_lowercase(),
            dc.city_code.to_ascii_lowercase(),
            dc.city_index
        ),
        country: dc.country_code.to_ascii_uppercase(),
        city: dc.city_code.clone(),
        tier: i64::from(dc.tier),
        price: offer.configuration.price,
        capacity,
    }
}
