//! The in-process lookup cache in front of Redis: least recently used entries go first once it
//! is full, and an entry older than the TTL is fetched again. Every change this replica makes
//! clears it at once; changes made by other replicas clear it when the shared change counter in
//! Redis moves (polled by the maintenance task), so a stale spec lives at most one poll interval.

use std::{
    num::NonZeroUsize,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lru::LruCache;

use crate::{schema::Compiled, spec::ToolSpec};

/// A cached spec with its compiled schemas, so invocations never recompile.
#[derive(Debug, Clone)]
pub struct Entry {
    pub spec: Arc<ToolSpec>,
    pub parameters: Compiled,
    pub returns: Option<Compiled>,
}

/// Keyed by name and version; the empty version caches "latest active".
type Key = (String, String);

#[derive(Debug)]
pub struct SpecCache {
    entries: Mutex<LruCache<Key, (Instant, Entry)>>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Entries dropped because their TTL had passed while they were still being asked for.
    expired_hot: AtomicU64,
    /// Bumped by every clear: a fill that started before a clear must not land after it.
    generation: AtomicU64,
    /// False until the shared change counter has been read once; before that nothing is
    /// cached, since a change made meanwhile by another replica could not be noticed.
    armed: AtomicBool,
}

impl SpecCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(LruCache::new(non_zero(capacity))),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            expired_hot: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            armed: AtomicBool::new(false),
        }
    }

    pub fn get(&self, name: &str, version: &str, ttl: Duration) -> Option<Entry> {
        let key = (name.to_owned(), version.to_owned());
        let found = match self.entries.lock() {
            Ok(mut entries) => match entries.get(&key) {
                Some((at, entry)) if at.elapsed() < ttl => Some(entry.clone()),
                Some(_) => {
                    entries.pop(&key);
                    self.expired_hot.fetch_add(1, Ordering::Relaxed);
                    None
                }
                None => None,
            },
            Err(_) => None,
        };
        let (counter, label) = if found.is_some() {
            (&self.hits, "hit")
        } else {
            (&self.misses, "miss")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tta_tool_cache_lookups_total", "result" => label).increment(1);
        found
    }

    /// The generation to pass to [`SpecCache::put`]; read it before fetching from Redis.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Starts caching once the change counter is being followed.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Caches `entry` unless the cache was cleared since `generation` was read.
    pub fn put(&self, name: &str, version: &str, entry: Entry, capacity: usize, generation: u64) {
        if !self.armed.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if self.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if entries.cap().get() != capacity.max(1) {
                entries.resize(non_zero(capacity));
            }
            entries.put(
                (name.to_owned(), version.to_owned()),
                (Instant::now(), entry),
            );
        }
    }

    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            entries.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |entries| entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    pub fn expired_hot(&self) -> u64 {
        self.expired_hot.load(Ordering::Relaxed)
    }
}

fn non_zero(capacity: usize) -> NonZeroUsize {
    NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        schema::SchemaLimits,
        spec::{compile_stored, validate},
    };

    fn entry(name: &str) -> Entry {
        let wire = tta_proto::v1::ToolSpec {
            name: name.into(),
            version: "1.0.0".into(),
            description: "d".into(),
            parameters_schema: r#"{"type":"object"}"#.into(),
            ..Default::default()
        };
        let limits = SchemaLimits {
            max_params: 16,
            max_depth: 5,
        };
        let spec = validate(&wire, limits).unwrap().spec;
        let (parameters, returns) = compile_stored(&spec).unwrap();
        Entry {
            spec: Arc::new(spec),
            parameters,
            returns,
        }
    }

    #[test]
    fn least_recently_used_entries_go_first() {
        let cache = SpecCache::new(2);
        cache.arm();
        let ttl = Duration::from_secs(60);
        cache.put("a", "", entry("a"), 2, 0);
        cache.put("b", "", entry("b"), 2, 0);
        assert!(cache.get("a", "", ttl).is_some());
        cache.put("c", "", entry("c"), 2, 0);
        assert!(cache.get("b", "", ttl).is_none());
        assert!(cache.get("a", "", ttl).is_some());
        assert!(cache.get("c", "", ttl).is_some());
        assert_eq!((cache.hits(), cache.misses()), (3, 1));
    }

    #[test]
    fn expired_entries_are_fetched_again() {
        let cache = SpecCache::new(4);
        cache.arm();
        cache.put("a", "", entry("a"), 4, 0);
        assert!(cache.get("a", "", Duration::ZERO).is_none());
        assert_eq!(cache.expired_hot(), 1);
        assert!(cache.is_empty());
    }

    #[test]
    fn clearing_empties_it() {
        let cache = SpecCache::new(4);
        cache.arm();
        let before = cache.generation();
        cache.put("a", "1.0.0", entry("a"), 4, before);
        cache.clear();
        assert!(cache.get("a", "1.0.0", Duration::from_secs(60)).is_none());
        // A fill that started before the clear does not land after it.
        cache.put("a", "1.0.0", entry("a"), 4, before);
        assert!(cache.is_empty());
    }

    #[test]
    fn nothing_is_cached_before_it_is_armed() {
        let cache = SpecCache::new(4);
        cache.put("a", "", entry("a"), 4, cache.generation());
        assert!(cache.is_empty());
    }
}
