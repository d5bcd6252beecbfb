//! Administration done from the command line, on the database directly.

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::auth::Role;
use crate::config::Settings;
use crate::domain::team::validate_name;
use crate::http::keys::KeyView;
use crate::store::audit::{self, NewAuditEntry};
use crate::store::keys::{self, KeyRecord};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Mints an admin key (audited as actor `cli`) and returns the JSON to print: the only place
/// its secret ever appears.
pub async fn create_admin_key(
    settings: &Settings,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<String, AdminError> {
    let name = validate_name(name).map_err(|e| AdminError::Invalid(format!("--name {e}")))?;
    let now = crate::store::time::now();
    if expires_at.is_some_and(|at| at <= now) {
        return Err(AdminError::Invalid(
            "--expires-at must be in the future".into(),
        ));
    }
    let store = Store::connect(&settings.database).await?;
    let (record, token) = KeyRecord::mint(name, Role::Admin, None, now, expires_at)
        .map_err(|e| AdminError::Invalid(format!("randomness: {e}")))?;
    let mut tx = store.begin_write().await?;
    keys::insert(&mut tx, &record).await?;
    audit::record(
        &mut tx,
        NewAuditEntry {
            actor: "cli",
            actor_role: "admin",
            action: "key.create",
            target_type: "key",
            target_id: &record.id,
            team_id: None,
            before: None,
            after: Some(record.summary()),
            request_id: None,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    store.close().await;
    let mut printed = serde_json::to_value(KeyView::of(record))
        .map_err(|e| AdminError::Invalid(e.to_string()))?;
    printed["key"] = json!(token.expose_secret());
    Ok(printed.to_string())
}
