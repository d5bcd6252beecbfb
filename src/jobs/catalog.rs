//! The catalog refresh: fetches Fluence's five discovery lists (basic configurations,
//! countries, hardware, datacenters, default images) and stores each in `catalog_cache`, where
//! `GET /v1/catalog/*` reads them. A list is stored as the gateway's own types serialise it,
//! never as the raw answer, so that only what the gateway understood is ever served.

use chrono::{DateTime, Utc};

use crate::fluence::{FluenceClient, FluenceError};
use crate::state::AppState;
use crate::store::StoreError;
use crate::store::catalog::{self, Cached};
use crate::store::time::now;

/// One of the discovery lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogList {
    Configurations,
    Countries,
    Hardware,
    Datacenters,
    Images,
}

impl CatalogList {
    pub const ALL: [CatalogList; 5] = [
        CatalogList::Configurations,
        CatalogList::Countries,
        CatalogList::Hardware,
        CatalogList::Datacenters,
        CatalogList::Images,
    ];

    /// Its key in `catalog_cache` and its path segment under `/v1/catalog/`.
    pub fn name(self) -> &'static str {
        match self {
            CatalogList::Configurations => "configurations",
            CatalogList::Countries => "countries",
            CatalogList::Hardware => "hardware",
            CatalogList::Datacenters => "datacenters",
            CatalogList::Images => "images",
        }
    }
}

/// Why a list was not refreshed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("Fluence: {0}")]
    Upstream(#[from] FluenceError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("encoding the list: {0}")]
    Encode(#[from] serde_json::Error),
}

impl From<sqlx::Error> for RefreshError {
    fn from(error: sqlx::Error) -> RefreshError {
        RefreshError::Store(StoreError::Sqlx(error))
    }
}

pub async fn run(state: &AppState) -> Result<String, String> {
    let mut refreshed = Vec::new();
    let mut failed = Vec::new();
    // Each list on its own: one failing endpoint does not keep the others stale.
    for list in CatalogList::ALL {
        match refresh(state, list).await {
            Ok(_) => refreshed.push(list.name()),
            Err(error) => failed.push(format!("{}: {error}", list.name())),
        }
    }
    if failed.is_empty() {
        Ok(format!("refreshed {}", refreshed.join(", ")))
    } else {
        Err(format!(
            "refreshed [{}]; failed: {}",
            refreshed.join(", "),
            failed.join("; ")
        ))
    }
}

/// Fetches one list now and stores it; returns what was stored.
pub async fn refresh(state: &AppState, list: CatalogList) -> Result<Cached, RefreshError> {
    let body = fetch(&state.fluence, list).await?;
    let fetched_at: DateTime<Utc> = now();
    let mut tx = state.store.begin_write().await?;
    catalog::put(&mut tx, list.name(), &body, fetched_at).await?;
    tx.commit().await?;
    state.catalog_answers.forget(list);
    Ok(Cached { body, fetched_at })
}

/// The list as JSON of the gateway's types (`crate::fluence::types`).
async fn fetch(fluence: &FluenceClient, list: CatalogList) -> Result<String, RefreshError> {
    Ok(match list {
        CatalogList::Configurations => {
            serde_json::to_string(&fluence.basic_configurations().await?)?
        }
        CatalogList::Countries => serde_json::to_string(&fluence.countries().await?)?,
        CatalogList::Hardware => serde_json::to_string(&fluence.hardware().await?)?,
        CatalogList::Datacenters => serde_json::to_string(&fluence.datacenters().await?)?,
        CatalogList::Images => serde_json::to_string(&fluence.default_images().await?)?,
    })
}
