//! Webhook deliveries from an outbox: an event is queued in the transaction that records it and
//! sent by the `webhooks` job, signed, and retried with backoff until the receiver takes it (2xx)
//! or the attempts run out (the row stays, with its last error, for an admin to see).

use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde_json::Value;
use sha2::Sha256;
use sqlx::{Row, SqliteConnection};

use crate::state::AppState;
use crate::store::time::{now, to_db};

/// Queues an event for delivery.
pub async fn enqueue(
    conn: &mut SqliteConnection,
    event: &str,
    body: &Value,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_outbox (event, body, created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?3)",
    )
    .bind(event)
    .bind(body.to_string())
    .bind(to_db(at))
    .execute(conn)
    .await?;
    Ok(())
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the timestamp is signed with the
/// body so that a captured delivery cannot be replayed later as a fresh one.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// The wait before attempt `attempts + 1`: 10 s doubling, at most an hour.
pub fn backoff(attempts: u32) -> TimeDelta {
    let seconds = 10_i64.saturating_mul(1_i64 << attempts.min(20));
    TimeDelta::seconds(seconds.min(3600))
}

/// The job: sends what is due. Returns a summary, or an error naming failed deliveries.
pub async fn deliver_due(state: &AppState) -> Result<String, String> {
    let settings = &state.settings.webhook;
    if !settings.enabled() {
        return Ok("no webhook configured".into());
    }
    let Some(secret) = state.settings.secrets.webhook_secret.as_ref() else {
        return Err("webhook.url is set without GATEWAY_WEBHOOK_SECRET".into());
    };
    let db = |e: sqlx::Error| format!("database: {e}");
    let due = {
        let mut conn = state.store.pool().acquire().await.map_err(db)?;
        sqlx::query(
            "SELECT id, event, body, attempts FROM webhook_outbox WHERE delivered_at IS NULL \
             AND attempts < ?1 AND next_attempt_at <= ?2 ORDER BY id LIMIT 50",
        )
        .bind(i64::from(settings.max_attempts))
        .bind(to_db(now()))
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(settings.timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("webhook client: {e}"))?;
    let (mut sent, mut failed) = (0, 0);
    for row in &due {
        let id: i64 = row.try_get("id").map_err(db)?;
        let event: String = row.try_get("event").map_err(db)?;
        let body: String = row.try_get("body").map_err(db)?;
        let attempts: i64 = row.try_get("attempts").map_err(db)?;
        let timestamp = Utc::now().timestamp();
        let outcome = client
            .post(&settings.url)
            .header("content-type", "application/json")
            .header("x-gateway-event", &event)
            .header("x-gateway-delivery", id.to_string())
            .header(
                "x-gateway-signature",
                signature(
                    secret.expose_secret().as_bytes(),
                    timestamp,
                    body.as_bytes(),
                ),
            )
            .body(body.clone())
            .send()
            .await;
        let error = match outcome {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("receiver answered {}", response.status().as_u16())),
            // Without the URL: it may carry credentials of the receiver.
            Err(e) => Some(format!("not delivered: {}", e.without_url())),
        };
        let at = now();
        let mut tx = state.store.begin_write().await.map_err(|e| e.to_string())?;
        match &error {
            None => {
                sent += 1;
                sqlx::query("UPDATE webhook_outbox SET delivered_at = ?2, attempts = attempts + 1 WHERE id = ?1")
                    .bind(id)
                    .bind(to_db(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
            Some(error) => {
                failed += 1;
                // The first retry comes 10 s after the first attempt, then 20 s, 40 s, ...
                let tried = u32::try_from(attempts).unwrap_or(u32::MAX);
                sqlx::query(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3 WHERE id = ?1",
                )
                .bind(id)
                .bind(to_db(at + backoff(tried)))
                .bind(error)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
        }
        tx.commit().await.map_err(db)?;
    }
    let given_up: i64 = {
        let mut conn = state.store.pool().acquire().await.map_err(db)?;
        sqlx::query_scalar(
            "SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL AND attempts >= ?1",
        )
        .bind(i64::from(settings.max_attempts))
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?
    };
    let summary =
        format!("{sent} delivered, {failed} to retry, {given_up} given up after max_attempts");
    if failed == 0 && given_up == 0 {
        Ok(summary)
    } else {
        Err(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 shape: key "Jefe", data "what do ya want for nothing?".
        let signed = signature(b"Jefe", 0, b"what do ya want for nothing?");
        assert!(signed.starts_with("t=0,v1="));
        // "0." prefixes the data, so the digest differs from the RFC's; recompute it here.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap_or_else(|e| panic!("{e}"));
        mac.update(b"0.what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(signed, format!("t=0,v1={hex}"));
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_up_to_an_hour() {
        assert_eq!(backoff(0), TimeDelta::seconds(10));
        assert_eq!(backoff(1), TimeDelta::seconds(20));
        assert_eq!(backoff(5), TimeDelta::seconds(320));
        assert_eq!(backoff(9), TimeDelta::seconds(3600));
        assert_eq!(backoff(u32::MAX), TimeDelta::seconds(3600));
    }
}
