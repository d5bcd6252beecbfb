//! The parts of Fluence's catalog a deploy request is checked against (default images, basic
//! configurations), cached so that validating a request costs no upstream call most of the time.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::fluence::types::DefaultImage;
use crate::fluence::{FluenceClient, FluenceError};

/// How long a fetched list is trusted; Fluence changes these lists rarely.
const TTL: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct CatalogCache {
    images: Mutex<Option<(Instant, Vec<DefaultImage>)>>,
    configurations: Mutex<Option<(Instant, Vec<String>)>>,
}

impl CatalogCache {
    pub async fn default_images(
        &self,
        fluence: &FluenceClient,
    ) -> Result<Vec<DefaultImage>, FluenceError> {
        let mut cached = self.images.lock().await;
        if let Some((at, images)) = cached.as_ref() {
            if at.elapsed() < TTL {
                return Ok(images.clone());
            }
        }
        let images = fluence.default_images().await?;
        *cached = Some((Instant::now(), images.clone()));
        Ok(images)
    }

    pub async fn configurations(
        &self,
        fluence: &FluenceClient,
    ) -> Result<Vec<String>, FluenceError> {
        let mut cached = self.configurations.lock().await;
        if let Some((at, slugs)) = cached.as_ref() {
            if at.elapsed() < TTL {
                return Ok(slugs.clone());
            }
        }
        let slugs = fluence.basic_configurations().await?;
        *cached = Some((Instant::now(), slugs.clone()));
        Ok(slugs)
    }
}
