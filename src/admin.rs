//! Administration done from the command line, on the database directly.

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::auth::{self, Role};
use crate::config::Settings;
use crate::store::audit::{self, NewAuditEntry};
use crate::store::keys::{self, KeyRecord};
use crate::store::time::new_id;
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
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(AdminError::Invalid(
            "--name must be 1-100 characters with no control characters".into(),
        ));
    }
    let now = crate::store::time::now();
    if expires_at.is_some_and(|at| at <= now) {
        return Err(AdminError::Invalid(
            "--expires-at must be in the future".into(),
        ));
    }
    let store = Store::connect(&settings.database).await?;
    let minted = auth::mint().map_err(|e| AdminError::Invalid(format!("randomness: {e}")))?;
    let record = KeyRecord {
        id: new_id("key"),
        prefix: minted.prefix,
        secret_sha256: minted.secret_sha256,
        name: name.to_owned(),
        role: Role::Admin.as_str().to_owned(),
        team_id: None,
        created_at: now,
        expires_at,
        revoked_at: None,
    };
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
            after: Some(json!({
                "id": record.id, "name": record.name, "role": record.role,
                "prefix": record.prefix, "expires_at": record.expires_at,
            })),
            request_id: None,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    store.close().await;
    Ok(json!({
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "team": null,
        "prefix": record.prefix,
        "expires_at": record.expires_at,
        "created_at": record.created_at,
        "key": minted.token.expose_secret(),
    })
    .to_string())
}
