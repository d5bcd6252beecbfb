//! List answers kept encoded, each with the version of the data it was read from, so that the
//! same request asked again while that version stands is answered from memory.
//!
//! Two kinds of version: one kept by the database (`GET /v1/vms`: the inventory version, which
//! triggers move on every write to `vms`, read once per request), or the pages' own generation,
//! moved by [`Pages::forget`] when this process writes the data (`GET /v1/offers`: the price
//! sampler), with a short lifetime for writes by another process sharing the database.
//!
//! A page is read after its version, so a kept page is never older than the version it is
//! kept under; a page kept under a version that has since moved is never served again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;

/// At most this many bytes of kept pages; further pages are served but not kept until the
/// version moves and the kept ones are dropped.
const BUDGET_BYTES: usize = 4 << 20;

#[derive(Default)]
pub struct Pages {
    kept: Mutex<Kept>,
    /// How long a page may be served at all; `None`: as long as its version stands.
    max_age: Option<Duration>,
}

#[derive(Default)]
struct Kept {
    /// The newest version a page was kept under; every kept page is of this version.
    version: i64,
    pages: HashMap<String, (Instant, Bytes)>,
    bytes: usize,
}

impl Pages {
    /// Pages served for at most `max_age`, whatever their version.
    pub fn with_max_age(max_age: Duration) -> Pages {
        Pages {
            kept: Mutex::default(),
            max_age: Some(max_age),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pages' own generation, as the version of a page about to be read, for data that
    /// [`Pages::forget`] follows.
    pub fn generation(&self) -> i64 {
        self.kept().version
    }

    /// The page kept for `request` if it was read at `version`.
    pub fn get(&self, request: &str, version: i64) -> Option<Bytes> {
        let kept = self.kept();
        match kept.pages.get(request) {
            Some((at, body))
                if kept.version == version && self.max_age.is_none_or(|max| at.elapsed() < max) =>
            {
                Some(body.clone())
            }
            _ => None,
        }
    }

    /// Keeps the answer to `request` read at `version`. A newer version drops every page kept
    /// under an older one; a page of an older version than the kept ones is not kept.
    pub fn keep(&self, request: String, version: i64, body: Bytes) {
        let mut kept = self.kept();
        if version > kept.version {
            kept.version = version;
            kept.pages.clear();
            kept.bytes = 0;
        }
        if version < kept.version || kept.bytes + body.len() > BUDGET_BYTES {
            return;
        }
        kept.bytes += body.len();
        if let Some((_, replaced)) = kept.pages.insert(request, (Instant::now(), body)) {
            kept.bytes -= replaced.len();
        }
    }

    /// Drops every kept page, once the data changed: a page read before this call is not
    /// kept after it (its version is now older than the generation).
    pub fn forget(&self) {
        let mut kept = self.kept();
        kept.version += 1;
        kept.pages.clear();
        kept.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_served_only_at_the_version_it_was_read_at() {
        let pages = Pages::default();
        pages.keep("a".into(), 3, Bytes::from("three"));
        assert_eq!(pages.get("a", 3).as_deref(), Some(&b"three"[..]));
        assert_eq!(pages.get("b", 3), None);
        assert_eq!(pages.get("a", 4), None);
        pages.keep("b".into(), 4, Bytes::from("four"));
        assert_eq!(
            pages.get("a", 3),
            None,
            "a newer version drops the older pages"
        );
        assert_eq!(pages.get("b", 4).as_deref(), Some(&b"four"[..]));
    }

    #[test]
    fn a_page_read_before_the_version_moved_is_not_kept_after_it() {
        let pages = Pages::default();
        pages.keep("new".into(), 7, Bytes::from("seven"));
        pages.keep("old".into(), 6, Bytes::from("six"));
        assert_eq!(pages.get("old", 6), None);
        assert_eq!(pages.get("old", 7), None);
        assert_eq!(pages.get("new", 7).as_deref(), Some(&b"seven"[..]));
    }

    #[test]
    fn pages_beyond_the_budget_are_not_kept() {
        let pages = Pages::default();
        let big = Bytes::from(vec![b'x'; BUDGET_BYTES - 10]);
        pages.keep("big".into(), 1, big);
        pages.keep("over".into(), 1, Bytes::from(vec![b'y'; 11]));
        assert_eq!(pages.get("over", 1), None);
        pages.keep("fits".into(), 1, Bytes::from(vec![b'z'; 10]));
        assert!(pages.get("fits", 1).is_some());
        // Replacing a page counts its new size only.
        pages.keep("fits".into(), 1, Bytes::from(vec![b'z'; 10]));
        assert!(pages.get("fits", 1).is_some());
    }

    #[test]
    fn a_forget_drops_the_pages_and_those_read_before_it() {
        let pages = Pages::default();
        let before = pages.generation();
        pages.keep("a".into(), before, Bytes::from("a"));
        assert!(pages.get("a", pages.generation()).is_some());
        let reading = pages.generation();
        pages.forget();
        assert_eq!(pages.get("a", pages.generation()), None);
        pages.keep("b".into(), reading, Bytes::from("read before the forget"));
        assert_eq!(pages.get("b", pages.generation()), None);
        assert_eq!(pages.get("b", reading), None);
    }

    #[test]
    fn a_page_outlives_its_max_age_in_no_case() {
        let pages = Pages::with_max_age(Duration::ZERO);
        pages.keep("a".into(), 0, Bytes::from("a"));
        assert_eq!(pages.get("a", 0), None);
        let lasting = Pages::with_max_age(Duration::from_secs(3600));
        lasting.keep("a".into(), 0, Bytes::from("a"));
        assert!(lasting.get("a", 0).is_some());
    }
}
