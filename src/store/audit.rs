//! The audit trail: append-only, one row per mutation.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::script::Script;
use super::time::{from_db, new_id, to_db};

/// One mutation, as recorded. `before` and `after` are summaries and never hold a secret.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub actor_role: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub team_id: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub request_id: Option<String>,
}

/// What to record; the id and time are assigned on insert.
#[derive(Debug, Clone)]
pub struct NewAuditEntry<'a> {
    pub actor: &'a str,
    pub actor_role: &'a str,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: &'a str,
    pub team_id: Option<&'a str>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub request_id: Option<&'a str>,
}

pub async fn record(
    conn: &mut SqliteConnection,
    entry: NewAuditEntry<'_>,
    at: DateTime<Utc>,
) -> Result<String, sqlx::Error> {
    let id = new_id("aud");
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, actor_role, action, target_type, target_id, \
         team_id, before, after, request_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .bind(&id)
    .bind(to_db(at))
    .bind(entry.actor)
    .bind(entry.actor_role)
    .bind(entry.action)
    .bind(entry.target_type)
    .bind(entry.target_id)
    .bind(entry.team_id)
    .bind(entry.before.map(|v| v.to_string()))
    .bind(entry.after.map(|v| v.to_string()))
    .bind(entry.request_id)
    .execute(conn)
    .await?;
    Ok(id)
}

/// Adds the entry of the statement before it to the script: written only if that statement
/// changed a row (a compare-and-set that moved, an insert that inserted).
pub fn push_record_of_change(script: &mut Script, entry: NewAuditEntry<'_>, at: DateTime<Utc>) {
    let sql = script.sql();
    sql.push(
        "INSERT INTO audit_log (id, at, actor, actor_role, action, target_type, target_id, \
         team_id, before, after, request_id) SELECT ",
    );
    let mut values = sql.separated(", ");
    values.push_bind(new_id("aud"));
    values.push_bind(to_db(at));
    values.push_bind(entry.actor.to_owned());
    values.push_bind(entry.actor_role.to_owned());
    values.push_bind(entry.action.to_owned());
    values.push_bind(entry.target_type.to_owned());
    values.push_bind(entry.target_id.to_owned());
    values.push_bind(entry.team_id.map(str::to_owned));
    values.push_bind(entry.before.map(|v| v.to_string()));
    values.push_bind(entry.after.map(|v| v.to_string()));
    values.push_bind(entry.request_id.map(str::to_owned));
    sql.push(" WHERE changes() = 1; ");
}

/// Filters of `GET /v1/audit`; every one optional.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub team_id: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Newest first, before the cursor id, at most `limit`.
pub async fn list(
    conn: &mut SqliteConnection,
    filter: &AuditFilter,
    before_id: Option<&str>,
    limit: u32,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let mut query: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
        "SELECT id, at, actor, actor_role, action, target_type, target_id, team_id, before, \
         after, request_id FROM audit_log WHERE 1 = 1",
    );
    let equal = [
        ("team_id", &filter.team_id),
        ("actor", &filter.actor),
        ("action", &filter.action),
        ("target_type", &filter.target_type),
        ("target_id", &filter.target_id),
    ];
    for (column, value) in equal {
        if let Some(value) = value {
            query
                .push(format_args!(" AND {column} = "))
                .push_bind(value.clone());
        }
    }
    if let Some(from) = filter.from {
        query.push(" AND at >= ").push_bind(to_db(from));
    }
    if let Some(to) = filter.to {
        query.push(" AND at < ").push_bind(to_db(to));
    }
    if let Some(before_id) = before_id {
        query.push(" AND id < ").push_bind(before_id.to_owned());
    }
    query
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(limit));
    let rows = query.build().fetch_all(conn).await?;
    rows.iter()
        .map(|row| {
            let at: String = row.try_get("at")?;
            let json = |column: &str| -> Result<Option<Value>, sqlx::Error> {
                let text: Option<String> = row.try_get(column)?;
                text.map(|t| serde_json::from_str(&t))
                    .transpose()
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))
            };
            Ok(AuditEntry {
                id: row.try_get("id")?,
                at: from_db(&at)?,
                actor: row.try_get("actor")?,
                actor_role: row.try_get("actor_role")?,
                action: row.try_get("action")?,
                target_type: row.try_get("target_type")?,
                target_id: row.try_get("target_id")?,
                team_id: row.try_get("team_id")?,
                before: json("before")?,
                after: json("after")?,
                request_id: row.try_get("request_id")?,
            })
        })
        .collect()
}
