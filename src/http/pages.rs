//! List answers kept encoded, each with the version of the data it was read from, so that the
//! same request asked again while that version stands reads one number instead of a page of
//! rows (`GET /v1/vms`: the inventory version, which triggers move on every write to `vms`).
//!
//! A page is read after its version, so a kept page is never older than the version it is
//! kept under; a page kept under a version that has since moved is never served again.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;

/// At most this many bytes of kept pages; further pages are served but not kept until the
/// version moves and the kept ones are dropped.
const BUDGET_BYTES: usize = 4 << 20;

#[derive(Default)]
pub struct Pages(Mutex<Kept>);

#[derive(Default)]
struct Kept {
    /// The newest version a page was kept under; every kept page is of this version.
    version: i64,
    pages: HashMap<String, Bytes>,
    bytes: usize,
}

impl Pages {
    /// The page kept for `request` if it was read at `version`.
    pub fn get(&self, request: &str, version: i64) -> Option<Bytes> {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.version == version {
            kept.pages.get(request).cloned()
        } else {
            None
        }
    }

    /// Keeps the answer to `request` read at `version`. A newer version drops every page kept
    /// under an older one; a page of an older version than the kept ones is not kept.
    pub fn keep(&self, request: String, version: i64, body: Bytes) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if version > kept.version {
            kept.version = version;
            kept.pages.clear();
            kept.bytes = 0;
        }
        if version < kept.version || kept.bytes + body.len() > BUDGET_BYTES {
            return;
        }
        kept.bytes += body.len();
        if let Some(replaced) = kept.pages.insert(request, body) {
            kept.bytes -= replaced.len();
        }
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
}
