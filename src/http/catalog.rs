//! `/v1/catalog/{configurations,countries,hardware,datacenters,images}`: Fluence's discovery
//! lists, served from `catalog_cache`.
//!
//! A copy younger than `jobs.catalog_ttl_secs` is served as is; an older one (or none) is
//! fetched now and stored. When Fluence cannot be reached, a stale copy is still served, marked
//! `"stale": true` and with `Warning: 110 - "stale"`; with no copy at all the answer is 503
//! `upstream_unavailable`. Items are the gateway's own types, in the API's snake_case.

use std::sync::Mutex;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::domain::quota::resources_of;
use crate::error::ApiError;
use crate::fluence::types::{AvailableHardware, DatacenterInfo, DefaultImage};
use crate::jobs::catalog::{self, CatalogList, RefreshError};
use crate::state::AppState;
use crate::store::catalog::Cached;
use crate::store::time::now;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(configurations))
        .routes(routes!(countries))
        .routes(routes!(hardware))
        .routes(routes!(datacenters))
        .routes(routes!(images))
}

/// A catalog list and when the gateway fetched it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CatalogAnswer<T: ToSchema> {
    pub items: Vec<T>,
    pub fetched_at: DateTime<Utc>,
    /// True when Fluence could not be reached and this copy is older than the catalog TTL.
    pub stale: bool,
}

/// A basic configuration, with the resources its slug names (null when the slug is not of the
/// `cpu-<n>-ram-<n>gb-storage-<n>gb` form).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigurationItem {
    #[schema(example = "cpu-2-ram-4gb-storage-25gb")]
    pub slug: String,
    pub vcpus: Option<u64>,
    pub ram_gib: Option<u64>,
    pub storage_gib: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CountryItem {
    /// ISO 3166-1 alpha-2.
    #[schema(example = "DE")]
    pub code: String,
}

/// One value of the `hardware` filter vocabulary, tagged by `category`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "category", rename_all = "snake_case")]
pub enum HardwareItem {
    Cpu {
        manufacturer: String,
        architecture: String,
    },
    Memory {
        #[serde(rename = "type")]
        kind: String,
        generation: String,
    },
    Storage {
        #[serde(rename = "type")]
        kind: String,
    },
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DatacenterItem {
    pub id: String,
    #[schema(example = "de-fra-1")]
    pub slug: String,
    pub country: String,
    pub city: String,
    /// Tells apart several datacenters in one city.
    pub index: u32,
    pub tier: u8,
    pub certifications: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageItem {
    pub id: String,
    #[schema(example = "ubuntu-24-04-x64")]
    pub slug: String,
    pub name: String,
    pub distribution: String,
    pub download_url: String,
    pub username: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Fluence's basic configurations.
#[utoipa::path(get, path = "/v1/catalog/configurations", tag = "catalog",
    responses((status = 200, body = CatalogAnswer<ConfigurationItem>), (status = 503)),
    security(("bearer" = [])))]
async fn configurations(
    State(state): State<AppState>,
    _caller: Principal,
) -> Result<Response, ApiError> {
    serve(&state, CatalogList::Configurations, |slugs: Vec<String>| {
        slugs
            .into_iter()
            .map(|slug| {
                let resources = resources_of(&slug, 0).ok();
                ConfigurationItem {
                    vcpus: resources.map(|r| r.vcpus),
                    ram_gib: resources.map(|r| r.ram_gib),
                    storage_gib: resources.map(|r| r.storage_gib),
                    slug,
                }
            })
            .collect()
    })
    .await
}

/// The countries Fluence has capacity in.
#[utoipa::path(get, path = "/v1/catalog/countries", tag = "catalog",
    responses((status = 200, body = CatalogAnswer<CountryItem>), (status = 503)),
    security(("bearer" = [])))]
async fn countries(
    State(state): State<AppState>,
    _caller: Principal,
) -> Result<Response, ApiError> {
    serve(&state, CatalogList::Countries, |codes: Vec<String>| {
        codes.into_iter().map(|code| CountryItem { code }).collect()
    })
    .await
}

/// The hardware Fluence offers: CPUs, memory and storage kinds.
#[utoipa::path(get, path = "/v1/catalog/hardware", tag = "catalog",
    responses((status = 200, body = CatalogAnswer<HardwareItem>), (status = 503)),
    security(("bearer" = [])))]
async fn hardware(State(state): State<AppState>, _caller: Principal) -> Result<Response, ApiError> {
    serve(
        &state,
        CatalogList::Hardware,
        |hardware: AvailableHardware| {
            let cpus = hardware.cpu.into_iter().map(|c| HardwareItem::Cpu {
                manufacturer: c.manufacturer,
                architecture: c.architecture,
            });
            let memory = hardware.memory.into_iter().map(|m| HardwareItem::Memory {
                kind: m.kind,
                generation: m.generation,
            });
            let storage = hardware
                .storage
                .into_iter()
                .map(|s| HardwareItem::Storage { kind: s.kind });
            cpus.chain(memory).chain(storage).collect()
        },
    )
    .await
}

/// Fluence's datacenters.
#[utoipa::path(get, path = "/v1/catalog/datacenters", tag = "catalog",
    responses((status = 200, body = CatalogAnswer<DatacenterItem>), (status = 503)),
    security(("bearer" = [])))]
async fn datacenters(
    State(state): State<AppState>,
    _caller: Principal,
) -> Result<Response, ApiError> {
    serve(
        &state,
        CatalogList::Datacenters,
        |list: Vec<DatacenterInfo>| {
            list.into_iter()
                .map(|dc| DatacenterItem {
                    id: dc.id,
                    slug: dc.slug,
                    country: dc.country_code,
                    city: dc.city_code,
                    index: dc.index,
                    tier: dc.tier,
                    certifications: dc.certifications,
                })
                .collect()
        },
    )
    .await
}

/// Fluence's default VM images.
#[utoipa::path(get, path = "/v1/catalog/images", tag = "catalog",
    responses((status = 200, body = CatalogAnswer<ImageItem>), (status = 503)),
    security(("bearer" = [])))]
async fn images(State(state): State<AppState>, _caller: Principal) -> Result<Response, ApiError> {
    serve(&state, CatalogList::Images, |list: Vec<DefaultImage>| {
        list.into_iter()
            .map(|image| ImageItem {
                id: image.id,
                slug: image.slug,
                name: image.name,
                distribution: image.distribution,
                download_url: image.download_url,
                username: image.username,
                created_at: image.created_at,
                updated_at: image.updated_at,
            })
            .collect()
    })
    .await
}

/// The cached list if fresh, else a fresh fetch, else the stale copy (see the module doc);
/// `view` turns the stored list into the answer's items.
async fn serve<F, V>(
    state: &AppState,
    list: CatalogList,
    view: impl FnOnce(F) -> Vec<V>,
) -> Result<Response, ApiError>
where
    F: DeserializeOwned,
    V: Serialize + ToSchema,
{
    let ttl = i64::try_from(state.settings.jobs.catalog_ttl_secs)
        .ok()
        .and_then(TimeDelta::try_seconds)
        .unwrap_or(TimeDelta::MAX);
    let generation = match state.catalog_answers.fresh(list, ttl) {
        Kept::Fresh(body) => return Ok(super::encoded_json(body)),
        Kept::Missing(generation) => generation,
    };
    let cached = {
        let mut conn = state.store.pool().acquire().await?;
        crate::store::catalog::get(&mut conn, list.name()).await?
    };
    let (entry, stale): (Cached, bool) = match cached {
        Some(copy) if now() - copy.fetched_at < ttl => (copy, false),
        cached => match catalog::refresh(state, list).await {
            Ok(fresh) => (fresh, false),
            Err(RefreshError::Upstream(error)) => match cached {
                Some(copy) => {
                    tracing::warn!(list = list.name(), %error, "catalog fetch failed; serving the stale copy");
                    (copy, true)
                }
                None => {
                    tracing::warn!(list = list.name(), %error, "catalog fetch failed; no copy cached");
                    return Err(ApiError::UpstreamUnavailable(format!(
                        "Fluence's {} list could not be fetched and no copy is cached; retry later.",
                        list.name()
                    )));
                }
            },
            Err(RefreshError::Store(error)) => return Err(error.into()),
            Err(RefreshError::Encode(error)) => return Err(ApiError::internal(error)),
        },
    };
    let stored: F = serde_json::from_str(&entry.body).map_err(ApiError::internal)?;
    let answer = CatalogAnswer {
        items: view(stored),
        fetched_at: entry.fetched_at,
        stale,
    };
    if !stale {
        let body = Bytes::from(serde_json::to_vec(&answer).map_err(ApiError::internal)?);
        state
            .catalog_answers
            .keep(list, generation, entry.fetched_at, body.clone());
        return Ok(super::encoded_json(body));
    }
    let mut response = Json(answer).into_response();
    // RFC 7234's "Response is Stale" warning, for clients that look at headers only.
    response.headers_mut().insert(
        HeaderName::from_static("warning"),
        HeaderValue::from_static("110 - \"stale\""),
    );
    Ok(response)
}

/// The answers last served from a fresh copy, encoded, so that the next request within the
/// copy's lifetime reads no database and decodes nothing. A refresh of a list forgets its
/// answer, and an answer made from a copy read before that refresh is not kept (the refresh
/// bumps the list's generation); a stale copy's answer is never kept.
#[derive(Default)]
pub struct Answers(Mutex<[Slot; CatalogList::ALL.len()]>);

#[derive(Default)]
struct Slot {
    generation: u64,
    /// The encoded answer and when the copy it was made from was fetched.
    answer: Option<(DateTime<Utc>, Bytes)>,
}

/// A kept answer, or the generation to hand back to [`Answers::keep`].
enum Kept {
    Fresh(Bytes),
    Missing(u64),
}

impl Answers {
    fn fresh(&self, list: CatalogList, ttl: TimeDelta) -> Kept {
        let slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &slots[list as usize];
        match &slot.answer {
            Some((fetched_at, body)) if now() - *fetched_at < ttl => Kept::Fresh(body.clone()),
            _ => Kept::Missing(slot.generation),
        }
    }

    fn keep(&self, list: CatalogList, generation: u64, fetched_at: DateTime<Utc>, body: Bytes) {
        let mut slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[list as usize];
        if slot.generation == generation {
            slot.answer = Some((fetched_at, body));
        }
    }

    pub fn forget(&self, list: CatalogList) {
        let mut slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[list as usize];
        slot.generation += 1;
        slot.answer = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(answers: &Answers, list: CatalogList) -> u64 {
        match answers.fresh(list, TimeDelta::hours(1)) {
            Kept::Missing(generation) => generation,
            Kept::Fresh(_) => panic!("{} should not be kept", list.name()),
        }
    }

    #[test]
    fn an_answer_is_kept_for_its_copys_lifetime_and_only_for_its_list() {
        let answers = Answers::default();
        let generation = missing(&answers, CatalogList::Countries);
        answers.keep(CatalogList::Countries, generation, now(), Bytes::from("[]"));
        assert!(matches!(
            answers.fresh(CatalogList::Countries, TimeDelta::hours(1)),
            Kept::Fresh(body) if body == "[]"
        ));
        missing(&answers, CatalogList::Hardware);
        let old = now() - TimeDelta::hours(2);
        answers.keep(CatalogList::Images, 0, old, Bytes::from("[]"));
        missing(&answers, CatalogList::Images);
    }

    #[test]
    fn an_answer_read_before_a_refresh_is_not_kept_after_it() {
        let answers = Answers::default();
        let generation = missing(&answers, CatalogList::Countries);
        // The refresh commits and forgets while the request is encoding the old copy.
        answers.forget(CatalogList::Countries);
        answers.keep(
            CatalogList::Countries,
            generation,
            now(),
            Bytes::from("old"),
        );
        let after = missing(&answers, CatalogList::Countries);
        answers.keep(CatalogList::Countries, after, now(), Bytes::from("new"));
        assert!(matches!(
            answers.fresh(CatalogList::Countries, TimeDelta::hours(1)),
            Kept::Fresh(body) if body == "new"
        ));
    }
}
