//! Timestamps in SQLite: RFC 3339 UTC with exactly six fractional digits, so that text order is
//! time order and range queries can compare strings.

use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

/// The current time at the precision the database keeps, so that what an answer shows is what
/// a later read returns.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn to_db(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn from_db(text: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| sqlx::Error::Decode(format!("bad timestamp {text:?}: {e}").into()))
}

pub fn from_db_opt(text: Option<String>) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    text.as_deref().map(from_db).transpose()
}

/// A new prefixed, time-sortable id: `key_01J...`, `aud_01J...`. Ids minted in the same
/// millisecond still sort in minting order, so "newest first" by id is exact.
pub fn new_id(prefix: &str) -> String {
    static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);
    let mut generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let generator = generator.get_or_insert_with(ulid::Generator::new);
    // The generator only fails when 2^80 ids are minted in one millisecond.
    let id = generator.generate().unwrap_or_else(|_| ulid::Ulid::new());
    format!("{prefix}_{id}")
}
