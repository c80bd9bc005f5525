//! The embedded history store: in this process, bounded on both axes (the most recent
//! history.max_events per user, at most history.max_users users, the least recently used evicted),
//! and reporting its bytes. Sharded so that concurrent requests for different users rarely wait on
//! one lock; a std Mutex, as no lock is ever held across an await.
use super::{HistoryStore, NewEvent, StoreError, StoredEvent};
use crate::serve::config::HistorySection;
use lru::LruCache;
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Bytes a map entry and a history cost besides their strings (hash map slot, LRU links, deque
/// and set headers): an estimate, so that the reported figure tracks the allocator's.
const USER_OVERHEAD: usize = 200;
/// Bytes an event costs besides its strings (the struct in its deque slot).
const EVENT_OVERHEAD: usize = 72;

struct UserHistory {
    events: VecDeque<StoredEvent>,
    /// Event ids seen, oldest first, at most 4 × max_events (a repeat older than that is new).
    ids: VecDeque<String>,
    id_set: HashSet<String>,
    last_write: Instant,
    bytes: usize,
}

pub struct MemoryStore {
    shards: Vec<Mutex<LruCache<String, UserHistory>>>,
    hasher: std::collections::hash_map::RandomState,
    max_events: usize,
    ttl: Option<Duration>,
    users: AtomicUsize,
    bytes: AtomicUsize,
}

fn event_bytes(e: &StoredEvent) -> usize {
    EVENT_OVERHEAD + e.item.len() + e.behaviour.as_ref().map_or(0, String::len)
}

impl MemoryStore {
    pub fn new(cfg: &HistorySection) -> MemoryStore {
        let per_shard = cfg.max_users.div_ceil(SHARDS).max(1);
        MemoryStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(NonZeroUsize::new(per_shard).expect(">0"))))
                .collect(),
            hasher: Default::default(),
            max_events: cfg.max_events,
            ttl: (cfg.ttl_secs > 0).then(|| Duration::from_secs(cfg.ttl_secs)),
            users: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    fn shard(&self, user: &str) -> &Mutex<LruCache<String, UserHistory>> {
        &self.shards[self.hasher.hash_one(user) as usize % SHARDS]
    }

    fn expired(&self, h: &UserHistory) -> bool {
        self.ttl.is_some_and(|t| h.last_write.elapsed() >= t)
    }

    fn forget(&self, user: &str, h: &UserHistory) {
        self.users.fetch_sub(1, Ordering::Relaxed);
        self.bytes
            .fetch_sub(h.bytes + user.len() + USER_OVERHEAD, Ordering::Relaxed);
    }

    fn append_one(&self, e: &NewEvent) -> bool {
        let mut shard = self.shard(&e.user).lock().expect("history shard");
        if shard.peek(&e.user).is_some_and(|h| self.expired(h)) {
            if let Some(h) = shard.pop(&e.user) {
                self.forget(&e.user, &h);
            }
        }
        if !shard.contains(&e.user) {
            let fresh = UserHistory {
                events: VecDeque::new(),
                ids: VecDeque::new(),
                id_set: HashSet::new(),
                last_write: Instant::now(),
                bytes: 0,
            };
            if let Some((old_user, old)) = shard.push(e.user.clone(), fresh) {
                // The shard was full: its least recently used user is evicted.
                if old_user != e.user {
                    self.forget(&old_user, &old);
                }
            }
            self.users.fetch_add(1, Ordering::Relaxed);
            self.bytes
                .fetch_add(e.user.len() + USER_OVERHEAD, Ordering::Relaxed);
        }
        let h = shard.get_mut(&e.user).expect("just inserted");
        let before = h.bytes;
        if let Some(id) = &e.event_id {
            if h.id_set.contains(id) {
                return false;
            }
            h.id_set.insert(id.clone());
            h.ids.push_back(id.clone());
            h.bytes += 2 * (id.len() + 48);
            while h.ids.len() > 4 * self.max_events {
                let old = h.ids.pop_front().expect("non-empty");
                h.id_set.remove(&old);
                h.bytes -= 2 * (old.len() + 48);
            }
        }
        h.bytes += event_bytes(&e.event);
        h.events.push_back(e.event.clone());
        while h.events.len() > self.max_events {
            let old = h.events.pop_front().expect("non-empty");
            h.bytes -= event_bytes(&old);
        }
        h.last_write = Instant::now();
        if h.bytes >= before {
            self.bytes.fetch_add(h.bytes - before, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(before - h.bytes, Ordering::Relaxed);
        }
        true
    }
}

#[async_trait::async_trait]
impl HistoryStore for MemoryStore {
    async fn append(&self, events: &[NewEvent]) -> Result<usize, StoreError> {
        Ok(events.iter().filter(|e| self.append_one(e)).count())
    }

    async fn read(&self, users: &[String]) -> Result<Vec<Vec<StoredEvent>>, StoreError> {
        Ok(users
            .iter()
            .map(|u| {
                let mut shard = self.shard(u).lock().expect("history shard");
                match shard.get(u) {
                    Some(h) if !self.expired(h) => h.events.iter().cloned().collect(),
                    _ => Vec::new(),
                }
            })
            .collect())
    }

    async fn delete(&self, user: &str) -> Result<bool, StoreError> {
        let mut shard = self.shard(user).lock().expect("history shard");
        Ok(match shard.pop(user) {
            Some(h) => {
                self.forget(user, &h);
                true
            }
            None => false,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn usage(&self) -> Option<(usize, usize)> {
        Some((
            self.users.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(user: &str, item: &str, id: Option<&str>) -> NewEvent {
        NewEvent {
            user: user.into(),
            event_id: id.map(str::to_string),
            event: StoredEvent {
                item: item.into(),
                behaviour: None,
                timestamp: None,
            },
        }
    }

    fn store(max_events: usize, max_users: usize) -> MemoryStore {
        MemoryStore::new(&HistorySection {
            max_events,
            max_users,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn keeps_the_most_recent_events_and_counts_a_repeated_id_once() {
        let s = store(3, 100);
        let n = s
            .append(&[
                ev("u", "a", Some("1")),
                ev("u", "b", Some("2")),
                ev("u", "b", Some("2")),
                ev("u", "c", None),
                ev("u", "d", None),
            ])
            .await
            .unwrap();
        assert_eq!(n, 4);
        let items: Vec<String> = s.read(&["u".into()]).await.unwrap()[0]
            .iter()
            .map(|e| e.item.clone())
            .collect();
        assert_eq!(items, ["b", "c", "d"]);
        assert!(s.read(&["nobody".into()]).await.unwrap()[0].is_empty());
        assert!(s.delete("u").await.unwrap());
        assert!(!s.delete("u").await.unwrap());
        assert_eq!(
            s.usage(),
            Some((0, 0)),
            "an erased user leaves nothing counted"
        );
    }

    #[tokio::test]
    async fn evicts_the_least_recently_used_user_at_its_bound_and_memory_stays_flat() {
        // 1,000,000 distinct users through a store of 10,000: the count and the bytes stay at
        // the bound's level however many users pass.
        let s = store(50, 10_000);
        let mut at_bound = None;
        for i in 0..1_000_000u32 {
            s.append_one(&ev(&format!("user-{i}"), "item-123456", None));
            if i == 20_000 {
                at_bound = s.usage();
            }
        }
        let (users, bytes) = s.usage().unwrap();
        assert!(users <= 10_000 + SHARDS, "{users} users kept");
        let (_, b0) = at_bound.unwrap();
        assert!(
            (bytes as f64) < b0 as f64 * 1.05,
            "bytes {bytes} at 1M users vs {b0} at 20k"
        );
        // The most recent users are kept, the oldest evicted.
        assert!(!s.read(&["user-999999".into()]).await.unwrap()[0].is_empty());
        assert!(s.read(&["user-0".into()]).await.unwrap()[0].is_empty());
    }

    #[tokio::test]
    async fn a_history_past_its_ttl_is_forgotten() {
        let s = MemoryStore::new(&HistorySection {
            ttl_secs: 1,
            ..Default::default()
        });
        s.append(&[ev("u", "a", None)]).await.unwrap();
        assert_eq!(s.read(&["u".into()]).await.unwrap()[0].len(), 1);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(s.read(&["u".into()]).await.unwrap()[0].is_empty());
        s.append(&[ev("u", "b", None)]).await.unwrap();
        let items = s.read(&["u".into()]).await.unwrap();
        assert_eq!(items[0].len(), 1, "a new event starts a new history");
    }
}
