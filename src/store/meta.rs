//! `gateway_meta`: facts about the database itself.

use chrono::Utc;

use super::{Store, StoreError};
use crate::config::UpstreamMode;

const UPSTREAM_MODE: &str = "upstream_mode";

impl Store {
    /// Records the upstream mode on first start and refuses a database created for the other
    /// mode: simulated VMs, spend and holds must never mix with a real Fluence account's.
    pub async fn bind_upstream_mode(&self, mode: UpstreamMode) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT value FROM gateway_meta WHERE key = ?1")
                .bind(UPSTREAM_MODE)
                .fetch_optional(&mut *tx)
                .await?;
        match existing {
            Some(bound) if bound == mode.as_str() => {}
            Some(bound) => {
                return Err(StoreError::Conflict(format!(
                    "this database was created with upstream mode `{bound}` and cannot be used \
                     with `{}`; point GATEWAY__DATABASE__URL at another file",
                    mode.as_str()
                )));
            }
            None => {
                sqlx::query(
                    "INSERT INTO gateway_meta (key, value, updated_at) VALUES (?1, ?2, ?3)",
                )
                .bind(UPSTREAM_MODE)
                .bind(mode.as_str())
                .bind(Utc::now().to_rfc3339())
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
