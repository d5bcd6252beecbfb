//! Deployments, their holds, and the VMs they produce. Every status change is a
//! compare-and-set on the status it expects, so concurrent workers, a cancel racing the worker,
//! or two processes on one database can never both take the same step.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::script::Script;
use super::time::{from_db, from_db_opt, to_db};
use crate::domain::deployment::Status;
use crate::domain::money::Usdc;
use crate::domain::quota::{Resources, Usage};

#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub id: String,
    pub team_id: String,
    pub name: String,
    pub upstream_name: String,
    pub status: Status,
    /// The validated request, as JSON (`deploy::Spec`).
    pub spec: Value,
    pub instances: u32,
    pub configuration: String,
    pub per_vm: Resources,
    pub estimate: Option<Value>,
    pub max_price: Option<Usdc>,
    pub commitment: Option<Usdc>,
    pub epochs: Option<i64>,
    pub reason_code: Option<String>,
    pub reason: Option<Value>,
    /// `<scope>|<key>` of the `Idempotency-Key` it was made with.
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub forwarded_at: Option<DateTime<Utc>>,
    pub unknown_since: Option<DateTime<Utc>>,
    pub settled_at: Option<DateTime<Utc>>,
    pub next_check_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, team_id, name, upstream_name, status, spec, instances, configuration, \
    vcpus, ram_gib, storage_gib, estimate, max_price_micros, commitment_micros, epochs, \
    reason_code, reason, idempotency_key, request_hash, created_by, created_at, updated_at, forwarded_at, \
    unknown_since, settled_at, next_check_at";

fn json(text: Option<String>) -> Result<Option<Value>, sqlx::Error> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

fn count<T: TryFrom<i64>>(row: &sqlx::sqlite::SqliteRow, column: &str) -> Result<T, sqlx::Error>
where
    T::Error: std::error::Error + Send + Sync + 'static,
{
    let value: i64 = row.try_get(column)?;
    T::try_from(value).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<Deployment, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let spec: String = row.try_get("spec")?;
    let created_at: String = row.try_get("created_at")?;
    let updated_at: String = row.try_get("updated_at")?;
    Ok(Deployment {
        id: row.try_get("id")?,
        team_id: row.try_get("team_id")?,
        name: row.try_get("name")?,
        upstream_name: row.try_get("upstream_name")?,
        status: status
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        spec: serde_json::from_str(&spec).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        instances: count(row, "instances")?,
        configuration: row.try_get("configuration")?,
        per_vm: Resources {
            vcpus: count(row, "vcpus")?,
            ram_gib: count(row, "ram_gib")?,
            storage_gib: count(row, "storage_gib")?,
        },
        estimate: json(row.try_get("estimate")?)?,
        max_price: row
            .try_get::<Option<i64>, _>("max_price_micros")?
            .map(Usdc::from_micros),
        commitment: row
            .try_get::<Option<i64>, _>("commitment_micros")?
            .map(Usdc::from_micros),
        epochs: row.try_get("epochs")?,
        reason_code: row.try_get("reason_code")?,
        reason: json(row.try_get("reason")?)?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_hash: row.try_get("request_hash")?,
        created_by: row.try_get("created_by")?,
        created_at: from_db(&created_at)?,
        updated_at: from_db(&updated_at)?,
        forwarded_at: from_db_opt(row.try_get("forwarded_at")?)?,
        unknown_since: from_db_opt(row.try_get("unknown_since")?)?,
        settled_at: from_db_opt(row.try_get("settled_at")?)?,
        next_check_at: from_db_opt(row.try_get("next_check_at")?)?,
    })
}

fn micros(amount: Option<Usdc>) -> Option<i64> {
    amount.map(Usdc::micros)
}

/// Adds the insert of a new deployment to the script, made only while its team is live and,
/// with `idempotency_since`, only if the team has no deployment made with the same
/// `Idempotency-Key` since then. It returns the deployment's id as a row when it was inserted.
pub fn push_insert(script: &mut Script, d: &Deployment, idempotency_since: Option<DateTime<Utc>>) {
    let sql = script.sql();
    sql.push(format_args!("INSERT INTO deployments ({COLUMNS}) SELECT "));
    let mut values = sql.separated(", ");
    values.push_bind(d.id.clone());
    values.push_bind(d.team_id.clone());
    values.push_bind(d.name.clone());
    values.push_bind(d.upstream_name.clone());
    values.push_bind(d.status.as_str());
    values.push_bind(d.spec.to_string());
    values.push_bind(i64::from(d.instances));
    values.push_bind(d.configuration.clone());
    values.push_bind(i64::try_from(d.per_vm.vcpus).unwrap_or(i64::MAX));
    values.push_bind(i64::try_from(d.per_vm.ram_gib).unwrap_or(i64::MAX));
    values.push_bind(i64::try_from(d.per_vm.storage_gib).unwrap_or(i64::MAX));
    values.push_bind(d.estimate.as_ref().map(Value::to_string));
    values.push_bind(micros(d.max_price));
    values.push_bind(micros(d.commitment));
    values.push_bind(d.epochs);
    values.push_bind(d.reason_code.clone());
    values.push_bind(d.reason.as_ref().map(Value::to_string));
    values.push_bind(d.idempotency_key.clone());
    values.push_bind(d.request_hash.clone());
    values.push_bind(d.created_by.clone());
    values.push_bind(to_db(d.created_at));
    values.push_bind(to_db(d.updated_at));
    values.push_bind(d.forwarded_at.map(to_db));
    values.push_bind(d.unknown_since.map(to_db));
    values.push_bind(d.settled_at.map(to_db));
    values.push_bind(d.next_check_at.map(to_db));
    sql.push(" WHERE EXISTS (SELECT 1 FROM teams WHERE id = ")
        .push_bind(d.team_id.clone())
        .push(" AND deleted_at IS NULL)");
    if let (Some(since), Some(key)) = (idempotency_since, &d.idempotency_key) {
        sql.push(" AND NOT EXISTS (SELECT 1 FROM deployments WHERE team_id = ")
            .push_bind(d.team_id.clone())
            .push(" AND idempotency_key = ")
            .push_bind(key.clone())
            .push(" AND created_at >= ")
            .push_bind(to_db(since))
            .push(")");
    }
    sql.push(" RETURNING id; ");
}

pub async fn get(conn: &mut SqliteConnection, id: &str) -> Result<Option<Deployment>, sqlx::Error> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM deployments WHERE id = ?1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// The team's deployment made with this scoped `Idempotency-Key` since `since`, if any.
pub async fn by_idempotency_key(
    conn: &mut SqliteConnection,
    team_id: &str,
    key: &str,
    since: DateTime<Utc>,
) -> Result<Option<Deployment>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM deployments WHERE team_id = ?1 AND idempotency_key = ?2 \
         AND created_at >= ?3 ORDER BY id DESC LIMIT 1"
    ))
    .bind(team_id)
    .bind(key)
    .bind(to_db(since))
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(decode)
    .transpose()
}

/// Newest first, after `cursor` (an id), optionally for one team and one status.
pub async fn list(
    conn: &mut SqliteConnection,
    team_id: Option<&str>,
    status: Option<Status>,
    cursor: Option<&str>,
    limit: u32,
) -> Result<Vec<Deployment>, sqlx::Error> {
    let mut query: QueryBuilder<'_, Sqlite> =
        QueryBuilder::new(format!("SELECT {COLUMNS} FROM deployments WHERE 1 = 1"));
    if let Some(team) = team_id {
        query.push(" AND team_id = ").push_bind(team);
    }
    if let Some(status) = status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(cursor) = cursor {
        query.push(" AND id < ").push_bind(cursor);
    }
    query
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(limit));
    query
        .build()
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Deployments the worker still has something to do for: every non-final status, and deployed
/// ones whose hold has not settled into their VMs yet. Oldest first.
pub async fn open(conn: &mut SqliteConnection) -> Result<Vec<Deployment>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM deployments WHERE status IN ('queued', 'estimating', \
         'waiting_for_price', 'admitted', 'deploying', 'unknown') \
         OR (status = 'deployed' AND settled_at IS NULL) ORDER BY id"
    ))
    .fetch_all(conn)
    .await?
    .iter()
    .map(decode)
    .collect()
}

/// Deployments the worker can take further before forwarding (`Status::is_before_forwarding`).
/// Oldest first.
pub async fn movable(conn: &mut SqliteConnection) -> Result<Vec<Deployment>, sqlx::Error> {
    let mut query: QueryBuilder<'_, Sqlite> = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM deployments WHERE status IN ("
    ));
    let mut statuses = query.separated(", ");
    for status in Status::ALL.into_iter().filter(|s| s.is_before_forwarding()) {
        statuses.push_bind(status.as_str());
    }
    query.push(") ORDER BY id");
    query
        .build()
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Which of the deployments `ids` are in `status`.
pub async fn with_status(
    conn: &mut SqliteConnection,
    ids: &[&str],
    status: Status,
) -> Result<HashSet<String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let mut query: QueryBuilder<'_, Sqlite> =
        QueryBuilder::new("SELECT id FROM deployments WHERE status = ");
    query.push_bind(status.as_str()).push(" AND id IN (");
    let mut listed = query.separated(", ");
    for id in ids {
        listed.push_bind(*id);
    }
    query.push(")");
    let found: Vec<String> = query.build_query_scalar().fetch_all(conn).await?;
    Ok(found.into_iter().collect())
}

/// Moves every queued deployment to `estimating` and returns them, oldest first: the deploy
/// worker takes them up at once. Call it in a write transaction.
pub async fn claim_queued(
    conn: &mut SqliteConnection,
    at: DateTime<Utc>,
) -> Result<Vec<Deployment>, sqlx::Error> {
    let mut claimed = sqlx::query(&format!(
        "UPDATE deployments SET status = 'estimating', updated_at = ?1 \
         WHERE status = 'queued' RETURNING {COLUMNS}"
    ))
    .bind(to_db(at))
    .fetch_all(conn)
    .await?
    .iter()
    .map(decode)
    .collect::<Result<Vec<_>, _>>()?;
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(claimed)
}

/// Deployments declared failed because none of their VMs appeared after a lost answer, since
/// `since`: Fluence may still show their VMs late, and then they are adopted, not lost.
pub async fn failed_unconfirmed(
    conn: &mut SqliteConnection,
    since: DateTime<Utc>,
) -> Result<Vec<Deployment>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM deployments WHERE status = 'failed' AND reason_code = 'not_created' \
         AND updated_at >= ?1 ORDER BY id"
    ))
    .bind(to_db(since))
    .fetch_all(conn)
    .await?
    .iter()
    .map(decode)
    .collect()
}

/// The fields a transition may set besides the status; `None` leaves a column as it is.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub estimate: Option<Value>,
    pub max_price: Option<Usdc>,
    pub commitment: Option<Usdc>,
    pub epochs: Option<i64>,
    pub reason: Option<(String, Value)>,
    pub forwarded_at: Option<DateTime<Utc>>,
    pub unknown_since: Option<DateTime<Utc>>,
    pub settled_at: Option<DateTime<Utc>>,
    /// `Some(None)` clears it.
    pub next_check_at: Option<Option<DateTime<Utc>>>,
    /// Clears `settled_at`: VMs adopted late must be settled again from Fluence's list.
    pub reopen: bool,
}

/// Moves a deployment to `to` if its status is one of `from`; false if it was not (someone
/// else moved it first).
pub async fn transition(
    conn: &mut SqliteConnection,
    id: &str,
    from: &[Status],
    to: Status,
    changes: Changes,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let mut query = QueryBuilder::new("");
    compare_and_set(&mut query, id, from, to, changes, at);
    let done = query.build().execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Adds [`transition`] to the script; it returns the deployment's id as a row when it moved.
pub fn push_transition(
    script: &mut Script,
    id: &str,
    from: &[Status],
    to: Status,
    changes: Changes,
    at: DateTime<Utc>,
) {
    compare_and_set(script.sql(), id, from, to, changes, at);
    script.sql().push(" RETURNING id; ");
}

fn compare_and_set(
    query: &mut QueryBuilder<'static, Sqlite>,
    id: &str,
    from: &[Status],
    to: Status,
    changes: Changes,
    at: DateTime<Utc>,
) {
    query.push("UPDATE deployments SET status = ");
    query.push_bind(to.as_str());
    query.push(", updated_at = ").push_bind(to_db(at));
    if let Some(estimate) = changes.estimate {
        query.push(", estimate = ").push_bind(estimate.to_string());
    }
    if let Some(price) = changes.max_price {
        query
            .push(", max_price_micros = ")
            .push_bind(price.micros());
    }
    if let Some(commitment) = changes.commitment {
        query
            .push(", commitment_micros = ")
            .push_bind(commitment.micros());
    }
    if let Some(epochs) = changes.epochs {
        query.push(", epochs = ").push_bind(epochs);
    }
    if let Some((code, reason)) = changes.reason {
        query.push(", reason_code = ").push_bind(code);
        query.push(", reason = ").push_bind(reason.to_string());
    }
    if let Some(at) = changes.forwarded_at {
        query.push(", forwarded_at = ").push_bind(to_db(at));
    }
    if let Some(at) = changes.unknown_since {
        query.push(", unknown_since = ").push_bind(to_db(at));
    }
    if let Some(at) = changes.settled_at {
        query.push(", settled_at = ").push_bind(to_db(at));
    }
    if let Some(next) = changes.next_check_at {
        query.push(", next_check_at = ").push_bind(next.map(to_db));
    }
    if changes.reopen {
        query.push(", settled_at = NULL");
    }
    query.push(" WHERE id = ").push_bind(id.to_owned());
    query.push(" AND status IN (");
    let mut statuses = query.separated(", ");
    for status in from {
        statuses.push_bind(status.as_str());
    }
    query.push(")");
}

/// Marks a deployed deployment's hold settled (once).
pub async fn mark_settled(
    conn: &mut SqliteConnection,
    id: &str,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE deployments SET settled_at = ?2, updated_at = ?2 WHERE id = ?1 AND settled_at IS NULL",
    )
    .bind(id)
    .bind(to_db(at))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

// ---------------------------------------------------------------------------------------------
// Holds
// ---------------------------------------------------------------------------------------------

pub async fn insert_hold(
    conn: &mut SqliteConnection,
    deployment_id: &str,
    team_id: &str,
    amount: Usdc,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO holds (id, team_id, amount_micros, created_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .bind(deployment_id)
    .bind(team_id)
    .bind(amount.micros())
    .bind(to_db(at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds the deployment's hold to the script, made only if the statement before it changed a
/// row (its move to `admitted`).
pub fn push_hold_of_change(
    script: &mut Script,
    deployment_id: &str,
    team_id: &str,
    amount: Usdc,
    at: DateTime<Utc>,
) {
    let sql = script.sql();
    sql.push("INSERT INTO holds (id, team_id, amount_micros, created_at) SELECT ");
    let mut values = sql.separated(", ");
    values.push_bind(deployment_id.to_owned());
    values.push_bind(team_id.to_owned());
    values.push_bind(amount.micros());
    values.push_bind(to_db(at));
    sql.push(" WHERE changes() = 1; ");
}

/// Releases the deployment's hold if it is open; idempotent.
pub async fn release_hold(
    conn: &mut SqliteConnection,
    deployment_id: &str,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE holds SET released_at = ?2 WHERE id = ?1 AND released_at IS NULL")
            .bind(deployment_id)
            .bind(to_db(at))
            .execute(conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// What the team uses for quotas: live VMs not covered by an open hold, plus the VMs of
/// deployments holding money (counted as asked for, since they may all appear).
pub async fn usage(conn: &mut SqliteConnection, team_id: &str) -> Result<Usage, sqlx::Error> {
    // One pass over the team's live VMs and one over its open holds, each summing every
    // resource at once. It runs inside the admission's write transaction, so its time is time
    // no other deployment can be admitted; the four passes over each it replaced took 3-4 times
    // as long with 1500 live VMs.
    let row = sqlx::query(
        "WITH live AS ( \
           SELECT count(*) AS vms, COALESCE(SUM(v.vcpus), 0) AS vcpus, \
             COALESCE(SUM(v.ram_gib), 0) AS ram_gib, COALESCE(SUM(v.storage_gib), 0) AS storage_gib \
           FROM vms v WHERE v.team_id = ?1 AND v.deleted_at IS NULL \
             AND (v.deployment_id IS NULL \
               OR v.deployment_id NOT IN (SELECT id FROM holds WHERE released_at IS NULL))), \
         held AS ( \
           SELECT COALESCE(SUM(d.instances), 0) AS vms, COALESCE(SUM(d.instances * d.vcpus), 0) AS vcpus, \
             COALESCE(SUM(d.instances * d.ram_gib), 0) AS ram_gib, \
             COALESCE(SUM(d.instances * d.storage_gib), 0) AS storage_gib \
           FROM deployments d JOIN holds h ON h.id = d.id \
           WHERE h.team_id = ?1 AND h.released_at IS NULL) \
         SELECT live.vms + held.vms AS vms, live.vcpus + held.vcpus AS vcpus, \
           live.ram_gib + held.ram_gib AS ram_gib, live.storage_gib + held.storage_gib AS storage_gib \
         FROM live, held",
    )
    .bind(team_id)
    .fetch_one(conn)
    .await?;
    Ok(Usage {
        vms: count(&row, "vms")?,
        resources: Resources {
            vcpus: count(&row, "vcpus")?,
            ram_gib: count(&row, "ram_gib")?,
            storage_gib: count(&row, "storage_gib")?,
        },
    })
}

// ---------------------------------------------------------------------------------------------
// The VMs a deployment produced
// ---------------------------------------------------------------------------------------------

/// A VM the gateway learnt of from a deploy answer or the reconciler's listing.
#[derive(Debug, Clone)]
pub struct NewVm<'a> {
    pub id: &'a str,
    pub fluence_id: &'a str,
    pub team_id: &'a str,
    pub deployment_id: &'a str,
    pub name: &'a str,
    pub status: &'a str,
    pub price_per_epoch: Usdc,
    pub configuration: &'a str,
    pub resources: Resources,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Records the VM unless it is already known (a replayed answer or a second sighting).
pub async fn insert_vm(conn: &mut SqliteConnection, vm: &NewVm<'_>) -> Result<bool, sqlx::Error> {
    let mut query = QueryBuilder::new("");
    vm_insert(&mut query, vm);
    let done = query.build().execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Adds [`insert_vm`] to the script.
pub fn push_insert_vm(script: &mut Script, vm: &NewVm<'_>) {
    vm_insert(script.sql(), vm);
    script.sql().push("; ");
}

fn vm_insert(query: &mut QueryBuilder<'static, Sqlite>, vm: &NewVm<'_>) {
    query.push(
        "INSERT INTO vms (id, fluence_id, team_id, deployment_id, name, status, \
         price_per_epoch_micros, configuration, vcpus, ram_gib, storage_gib, expires_at, created_at) \
         VALUES (",
    );
    let mut values = query.separated(", ");
    values.push_bind(vm.id.to_owned());
    values.push_bind(vm.fluence_id.to_owned());
    values.push_bind(vm.team_id.to_owned());
    values.push_bind(vm.deployment_id.to_owned());
    values.push_bind(vm.name.to_owned());
    values.push_bind(vm.status.to_owned());
    values.push_bind(vm.price_per_epoch.micros());
    values.push_bind(vm.configuration.to_owned());
    values.push_bind(i64::try_from(vm.resources.vcpus).unwrap_or(i64::MAX));
    values.push_bind(i64::try_from(vm.resources.ram_gib).unwrap_or(i64::MAX));
    values.push_bind(i64::try_from(vm.resources.storage_gib).unwrap_or(i64::MAX));
    values.push_bind(vm.expires_at.map(to_db));
    values.push_bind(to_db(vm.created_at));
    query.push(") ON CONFLICT (id) DO NOTHING");
}

/// The ids of the VMs recorded for a deployment.
pub async fn vm_ids(
    conn: &mut SqliteConnection,
    deployment_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM vms WHERE deployment_id = ?1 ORDER BY id")
        .bind(deployment_id)
        .fetch_all(conn)
        .await
}

/// The ids of the deployment's VMs that were deleted.
pub async fn deleted_vm_ids(
    conn: &mut SqliteConnection,
    deployment_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM vms WHERE deployment_id = ?1 AND deleted_at IS NOT NULL ORDER BY id",
    )
    .bind(deployment_id)
    .fetch_all(conn)
    .await
}
