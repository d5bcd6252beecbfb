//! Stored keys held in memory, so that checking a key costs no database read.
//!
//! What is kept is the key's record as the database had it: the digest of its secret, its
//! role, team, expiry and revocation. The presented secret is still compared against the digest
//! on every request, in constant time, and expiry is judged against the record each time; only
//! the read is saved. A revocation (or a team's deletion) made through this process empties the
//! cache as it commits. One made by another process on the same database file is seen once the
//! entry is older than the cache's lifetime, which is why the lifetime is short; a lifetime of 0
//! turns the cache off.
//!
//! Only keys found in the database are kept, at most `capacity` of them: a flood of unknown or
//! random keys neither grows the map nor evicts real keys (it is refused by the failed-auth
//! limit instead).

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::keys::KeyRecord;

pub struct KeyCache {
    lifetime: Duration,
    capacity: usize,
    /// Bumped by every revocation: a record read from the database before it must not be
    /// kept after it, even if the read finishes later.
    generation: AtomicU64,
    entries: RwLock<HashMap<String, (Instant, KeyRecord)>>,
}

/// What a lookup found: the record, or the generation to hand back to [`KeyCache::keep`] with
/// the record read from the database.
pub enum Lookup {
    Hit(KeyRecord),
    Miss(u64),
}

impl KeyCache {
    pub fn new(lifetime: Duration, capacity: usize) -> KeyCache {
        KeyCache {
            lifetime,
            capacity,
            generation: AtomicU64::new(0),
            entries: RwLock::default(),
        }
    }

    pub fn get(&self, prefix: &str) -> Lookup {
        self.get_at(prefix, Instant::now())
    }

    fn get_at(&self, prefix: &str, now: Instant) -> Lookup {
        // Read first: a revocation bumps the generation after it commits, so a database read
        // that starts after this load and sees the key active may be kept only if no
        // revocation committed in between.
        let generation = self.generation.load(Ordering::Acquire);
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        match entries.get(prefix) {
            Some((at, record)) if now.saturating_duration_since(*at) < self.lifetime => {
                Lookup::Hit(record.clone())
            }
            _ => Lookup::Miss(generation),
        }
    }

    /// Keeps a record read from the database, unless a revocation committed since `generation`
    /// was taken, or the cache is off or full.
    pub fn keep(&self, generation: u64, record: &KeyRecord) {
        if self.lifetime.is_zero() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= self.capacity && !entries.contains_key(&record.prefix) {
            let lifetime = self.lifetime;
            entries.retain(|_, (at, _)| at.elapsed() < lifetime);
            if entries.len() >= self.capacity {
                return;
            }
        }
        entries.insert(record.prefix.clone(), (Instant::now(), record.clone()));
    }

    /// Forgets every key; called once a revocation has committed.
    pub fn forget_all(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    /// Forgets every key when the returned guard is dropped: held across a revocation's commit,
    /// it runs after the commit, and also when the request is dropped while the commit is out
    /// (a timeout, a client gone), which a call after the `await` would miss.
    pub fn forget_all_after(&self) -> ForgetAll<'_> {
        ForgetAll(self)
    }

    /// Entries held, expired ones included until they are replaced or the cache fills.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// See [`KeyCache::forget_all_after`].
pub struct ForgetAll<'a>(&'a KeyCache);

impl Drop for ForgetAll<'_> {
    fn drop(&mut self) {
        self.0.forget_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn record(prefix: &str) -> KeyRecord {
        KeyRecord {
            id: format!("key_{prefix}"),
            prefix: prefix.to_owned(),
            secret_sha256: vec![1; 32],
            name: "n".into(),
            role: Role::Member,
            team_id: Some("ml".into()),
            created_at: chrono::Utc::now(),
            expires_at: None,
            revoked_at: None,
        }
    }

    fn miss(cache: &KeyCache, prefix: &str) -> u64 {
        match cache.get(prefix) {
            Lookup::Miss(generation) => generation,
            Lookup::Hit(_) => panic!("{prefix} should not be cached"),
        }
    }

    #[test]
    fn a_kept_key_is_found_until_its_lifetime_ends() {
        let lifetime = Duration::from_secs(5);
        let cache = KeyCache::new(lifetime, 10);
        let generation = miss(&cache, "fgw_a");
        cache.keep(generation, &record("fgw_a"));
        assert!(matches!(cache.get("fgw_a"), Lookup::Hit(r) if r.prefix == "fgw_a"));
        let later = Instant::now() + lifetime;
        assert!(matches!(cache.get_at("fgw_a", later), Lookup::Miss(_)));
    }

    #[test]
    fn the_guard_forgets_when_dropped() {
        let cache = KeyCache::new(Duration::from_secs(60), 10);
        let generation = miss(&cache, "fgw_a");
        cache.keep(generation, &record("fgw_a"));
        {
            let _forget = cache.forget_all_after();
            assert_eq!(cache.len(), 1);
        }
        assert!(cache.is_empty());
    }

    #[test]
    fn a_read_from_before_a_revocation_is_not_kept() {
        let cache = KeyCache::new(Duration::from_secs(60), 10);
        let generation = miss(&cache, "fgw_a");
        // The revocation commits while the request is reading the database.
        cache.forget_all();
        cache.keep(generation, &record("fgw_a"));
        miss(&cache, "fgw_a");
    }

    #[test]
    fn a_revocation_forgets_every_key() {
        let cache = KeyCache::new(Duration::from_secs(60), 10);
        for prefix in ["fgw_a", "fgw_b"] {
            let generation = miss(&cache, prefix);
            cache.keep(generation, &record(prefix));
        }
        assert_eq!(cache.len(), 2);
        cache.forget_all();
        assert!(cache.is_empty());
        miss(&cache, "fgw_a");
    }

    #[test]
    fn a_full_cache_keeps_what_it_has_and_a_zero_lifetime_keeps_nothing() {
        let cache = KeyCache::new(Duration::from_secs(60), 2);
        for prefix in ["fgw_a", "fgw_b", "fgw_c"] {
            let generation = miss(&cache, prefix);
            cache.keep(generation, &record(prefix));
        }
        assert_eq!(cache.len(), 2);
        miss(&cache, "fgw_c");
        let off = KeyCache::new(Duration::ZERO, 2);
        let generation = miss(&off, "fgw_a");
        off.keep(generation, &record("fgw_a"));
        assert!(off.is_empty());
    }
}
