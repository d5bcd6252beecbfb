//! `GET /v1/spend`: charges from the ledger over a range, grouped by team, VM and/or day, as
//! JSON or CSV (`Accept: text/csv` or `?format=csv`), exact to the micro-USDC. Team keys see
//! their own team's spend only.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, TimeDelta, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Query;
use crate::auth::Principal;
use crate::domain::money::Usdc;
use crate::error::{ApiError, FieldErrors};
use crate::state::AppState;
use crate::store::spend::{self, Grouping, SpendRow};
use crate::store::time::now;

/// The longest range one report may cover.
pub const MAX_RANGE_DAYS: i64 = 366;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_spend))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SpendParams {
    /// Inclusive; default the start of the current UTC month.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive; default now.
    pub to: Option<DateTime<Utc>>,
    /// Any of `team`, `vm`, `day`, comma-separated; default `team`.
    pub group_by: Option<String>,
    /// Admin keys: one team only.
    pub team: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SpendReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: Vec<&'static str>,
    pub rows: Vec<SpendRowView>,
    pub total: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SpendRowView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    pub spent: String,
}

fn parse_grouping(text: Option<&str>, problems: &mut FieldErrors) -> (Grouping, Vec<&'static str>) {
    let mut by = Grouping::default();
    for part in text.unwrap_or("team").split(',').map(str::trim) {
        match part {
            "team" => by.team = true,
            "vm" => by.vm = true,
            "day" => by.day = true,
            "" => {}
            other => problems.add("group_by", format!("{other:?} is not one of team, vm, day")),
        }
    }
    let names = [("team", by.team), ("vm", by.vm), ("day", by.day)]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name)
        .collect();
    (by, names)
}

/// Spend over a range, grouped.
#[utoipa::path(get, path = "/v1/spend", tag = "spend", params(SpendParams),
    responses((status = 200, body = SpendReport, description = "JSON, or text/csv with the same rows"),
              (status = 404), (status = 422)),
    security(("bearer" = [])))]
async fn get_spend(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Query(params): Query<SpendParams>,
) -> Result<Response, ApiError> {
    let team = match (&principal.team, params.team.as_deref()) {
        (Some(own), None) => Some(own.as_str().to_owned()),
        (Some(own), Some(named)) if named == own.as_str() => Some(named.to_owned()),
        (Some(_), Some(_)) => return Err(super::teams::not_found()),
        (None, named) => named.map(str::to_owned),
    };
    let mut problems = FieldErrors::default();
    let (by, group_by) = parse_grouping(params.group_by.as_deref(), &mut problems);
    let at = now();
    let to = params.to.unwrap_or(at);
    let from = params.from.unwrap_or_else(|| {
        Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(at)
    });
    if from >= to {
        problems.add("from", "must be before `to`");
    } else if to - from > TimeDelta::days(MAX_RANGE_DAYS) {
        problems.add(
            "to",
            format!("the range may cover at most {MAX_RANGE_DAYS} days"),
        );
    }
    let csv = match params.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(_) => {
            problems.add("format", "must be `json` or `csv`");
            false
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/csv")),
    };
    problems.finish()?;

    let mut conn = state.store.pool().acquire().await?;
    if let Some(team) = &team {
        // An admin naming a team that does not exist learns so, rather than seeing no spend.
        if !crate::store::teams::id_taken(
            &mut conn,
            &crate::domain::team::TeamId::parse(team).map_err(|_| super::teams::not_found())?,
        )
        .await?
        {
            return Err(super::teams::not_found());
        }
    }
    let rows = spend::grouped(&mut conn, team.as_deref(), from, to, by).await?;
    let total = rows
        .iter()
        .try_fold(0_i64, |sum, row| sum.checked_add(row.micros))
        .ok_or_else(|| ApiError::internal("spend total overflows"))?;
    if csv {
        let mut out = group_by.join(",");
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str("spent\n");
        for row in &rows {
            let mut cells = Vec::new();
            if by.team {
                cells.push(csv_cell(row.team.as_deref().unwrap_or("")));
            }
            if by.vm {
                cells.push(csv_cell(row.vm.as_deref().unwrap_or("")));
            }
            if by.day {
                cells.push(csv_cell(row.day.as_deref().unwrap_or("")));
            }
            cells.push(Usdc::from_micros(row.micros).to_string());
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        let mut response = out.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        return Ok(response);
    }
    let view = |row: SpendRow| SpendRowView {
        team: by.team.then_some(row.team),
        vm: if by.vm { row.vm } else { None },
        day: if by.day { row.day } else { None },
        spent: Usdc::from_micros(row.micros).to_string(),
    };
    Ok(axum::Json(SpendReport {
        from,
        to,
        group_by,
        rows: rows.into_iter().map(view).collect(),
        total: Usdc::from_micros(total).to_string(),
    })
    .into_response())
}

/// One CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180); a leading
/// `=`, `+`, `-` or `@` is prefixed with `'` so that a spreadsheet never runs it as a formula.
fn csv_cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}
