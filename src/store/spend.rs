//! Spend from the ledger, grouped for `GET /v1/spend`.

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::time::to_db;

/// How rows are grouped; any combination, in this order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grouping {
    pub team: bool,
    pub vm: bool,
    pub day: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendRow {
    pub team: Option<String>,
    pub vm: Option<String>,
    /// `YYYY-MM-DD`, UTC.
    pub day: Option<String>,
    pub micros: i64,
}

/// Charges with `from <= at < to`, of one team or all (unowned VMs' charges have no team).
/// One statement: a single snapshot, however long the report.
pub async fn grouped(
    conn: &mut SqliteConnection,
    team: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    by: Grouping,
) -> Result<Vec<SpendRow>, sqlx::Error> {
    let mut columns = Vec::new();
    if by.team {
        columns.push("team_id");
    }
    if by.vm {
        columns.push("vm_id");
    }
    if by.day {
        // Timestamps are RFC 3339 UTC text, so the first ten characters are the UTC day.
        columns.push("substr(at, 1, 10)");
    }
    let select = |c: &str, alias: &str, on: bool| {
        if on {
            format!("{c} AS {alias}")
        } else {
            format!("NULL AS {alias}")
        }
    };
    let mut query: QueryBuilder<'_, Sqlite> = QueryBuilder::new(format!(
        "SELECT {}, {}, {}, SUM(amount_micros) AS micros FROM ledger WHERE at >= ",
        select("team_id", "team", by.team),
        select("vm_id", "vm", by.vm),
        select("substr(at, 1, 10)", "day", by.day),
    ));
    query.push_bind(to_db(from));
    query.push(" AND at < ").push_bind(to_db(to));
    if let Some(team) = team {
        query.push(" AND team_id = ").push_bind(team);
    }
    if !columns.is_empty() {
        let list = columns.join(", ");
        query.push(format!(" GROUP BY {list} ORDER BY {list}"));
    }
    let rows = query.build().fetch_all(conn).await?;
    rows.iter()
        .map(|row| {
            Ok(SpendRow {
                team: row.try_get("team")?,
                vm: row.try_get("vm")?,
                day: row.try_get("day")?,
                micros: row.try_get::<Option<i64>, _>("micros")?.unwrap_or(0),
            })
        })
        .filter(|row: &Result<SpendRow, sqlx::Error>| {
            // An ungrouped sum over no rows is one row of NULL; it is no spend, not a row.
            !matches!(row, Ok(r) if r.micros == 0 && r.team.is_none() && r.vm.is_none() && r.day.is_none())
        })
        .collect()
}
