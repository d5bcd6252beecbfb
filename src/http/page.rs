//! List pagination: `?limit=` (default 50, at most 500) and an opaque `?cursor=`; answers are
//! `{"items": [...], "next_cursor": ...}`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::error::ApiError;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// A resolved page request: how many items, after which sort key.
#[derive(Debug, Clone)]
pub struct Page {
    pub limit: u32,
    pub after: Option<String>,
}

impl Page {
    pub fn parse(limit: Option<u32>, cursor: Option<&str>) -> Result<Page, ApiError> {
        let mut problems = Vec::new();
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            problems.push(crate::error::FieldError {
                field: "limit".into(),
                message: format!("must be between 1 and {MAX_LIMIT}"),
            });
        }
        let after = match cursor {
            None => None,
            Some(cursor) => match URL_SAFE_NO_PAD
                .decode(cursor)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
            {
                Some(after) => Some(after),
                None => {
                    problems.push(crate::error::FieldError {
                        field: "cursor".into(),
                        message: "is not a cursor this API returned".into(),
                    });
                    None
                }
            },
        };
        if problems.is_empty() {
            Ok(Page { limit, after })
        } else {
            Err(ApiError::Validation(problems))
        }
    }

    /// How many rows to fetch: one more than a page, to know whether another page follows.
    pub fn fetch(&self) -> u32 {
        self.limit + 1
    }

    /// Cuts the extra row off and turns the last item's sort key into the next cursor.
    pub fn finish<T, V>(
        &self,
        mut rows: Vec<T>,
        key: impl Fn(&T) -> String,
        view: impl Fn(T) -> V,
    ) -> List<V> {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| URL_SAFE_NO_PAD.encode(key(last)))
        } else {
            None
        };
        List {
            items: rows.into_iter().map(view).collect(),
            next_cursor,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}
