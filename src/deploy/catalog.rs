//! The parts of Fluence's catalog a deploy request is checked against (default images, basic
//! configurations), cached so that validating a request costs no upstream call most of the time.
//! One fetch at a time per list; a failure is remembered briefly, so that while Fluence is down
//! requests fail fast instead of queueing behind one slow fetch after another.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::fluence::FluenceClient;
use crate::fluence::types::DefaultImage;

/// How long a fetched list is trusted; Fluence changes these lists rarely.
const TTL: Duration = Duration::from_secs(600);
/// How long a failed fetch is answered from memory.
const FAILURE_TTL: Duration = Duration::from_secs(10);

type Entry<T> = Mutex<Option<(Instant, Result<Vec<T>, String>)>>;

#[derive(Default)]
pub struct CatalogCache {
    images: Entry<DefaultImage>,
    configurations: Entry<String>,
}

impl CatalogCache {
    pub async fn default_images(
        &self,
        fluence: &FluenceClient,
    ) -> Result<Vec<DefaultImage>, String> {
        cached(&self.images, || fluence.default_images()).await
    }

    pub async fn configurations(&self, fluence: &FluenceClient) -> Result<Vec<String>, String> {
        cached(&self.configurations, || fluence.basic_configurations()).await
    }
}

async fn cached<T, F, Fut>(entry: &Entry<T>, fetch: F) -> Result<Vec<T>, String>
where
    T: Clone,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Vec<T>, crate::fluence::FluenceError>>,
{
    let mut slot = entry.lock().await;
    if let Some((at, outcome)) = slot.as_ref() {
        let fresh_for = if outcome.is_ok() { TTL } else { FAILURE_TTL };
        if at.elapsed() < fresh_for {
            return outcome.clone();
        }
    }
    let outcome = fetch().await.map_err(|e| e.to_string());
    *slot = Some((Instant::now(), outcome.clone()));
    outcome
}
