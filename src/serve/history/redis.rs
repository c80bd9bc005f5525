//! The shared history store: a Redis server (or a managed one, or Redis Cluster), used by every
//! replica. One user's events are a list and its recent event ids a sorted set, both under one
//! hash tag (`{prefix}{<hash of the user>}:e` and `:i`), so they share a Cluster slot and one
//! Lua script updates them atomically. An append is one round trip for the whole request (one
//! script per user, pipelined); reading a batch of users is one pipelined round trip. The
//! connection manager reconnects by itself after Redis restarts; it connects lazily, so seqserve
//! starts (and serves requests that carry their own history) while Redis is down.
use super::{HistoryStore, NewEvent, StoreError, StoredEvent};
use crate::serve::config::HistorySection;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// KEYS: events list, ids zset. ARGV: max_events, ttl_secs, then (event_id or "", payload) pairs.
/// Appends the events whose id is new (or absent), trims the list to the most recent max_events
/// and the ids to the most recent 4 × max_events, sets the expiry; returns how many it appended.
const APPEND: &str = r#"
local max = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local added = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local new = 1
  if id ~= '' then
    new = redis.call('ZADD', KEYS[2], 'NX', now, id)
    now = now + 1
  end
  if new == 1 then
    redis.call('RPUSH', KEYS[1], ARGV[i + 1])
    added = added + 1
  end
end
redis.call('LTRIM', KEYS[1], -max, -1)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(4 * max) - 1)
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return added
"#;

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    max_events: usize,
    ttl_secs: u64,
}

fn err(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Protocol(e.to_string())
    }
}

impl RedisStore {
    pub fn new(cfg: &HistorySection) -> Result<RedisStore, String> {
        let client =
            redis::Client::open(cfg.url.as_str()).map_err(|e| format!("history.url: {e}"))?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        // Reconnects quickly (the caller's timeout bounds each operation anyway); retries for as
        // long as the process lives.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(usize::MAX);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("history.url: {e}"))?;
        Ok(RedisStore {
            conn,
            prefix: cfg.key_prefix.clone(),
            max_events: cfg.max_events,
            ttl_secs: cfg.ttl_secs,
        })
    }

    /// The user's keys: a hash of the id (never the id itself), inside a hash tag.
    fn keys(&self, user: &str) -> (String, String) {
        let h = Sha256::digest(user.as_bytes());
        let tag: String = h[..16].iter().map(|b| format!("{b:02x}")).collect();
        (
            format!("{}{{{tag}}}:e", self.prefix),
            format!("{}{{{tag}}}:i", self.prefix),
        )
    }
}

#[async_trait::async_trait]
impl HistoryStore for RedisStore {
    async fn append(&self, events: &[NewEvent]) -> Result<usize, StoreError> {
        // One script per user (its events in order), all in one pipelined round trip.
        let mut by_user: BTreeMap<&str, Vec<&NewEvent>> = BTreeMap::new();
        for e in events {
            by_user.entry(e.user.as_str()).or_default().push(e);
        }
        let mut pipe = redis::pipe();
        for (user, evs) in &by_user {
            let (ek, ik) = self.keys(user);
            let cmd = pipe
                .cmd("EVAL")
                .arg(APPEND)
                .arg(2)
                .arg(ek)
                .arg(ik)
                .arg(self.max_events)
                .arg(self.ttl_secs);
            for e in evs {
                let payload = serde_json::to_string(&e.event).expect("events serialise");
                cmd.arg(e.event_id.as_deref().unwrap_or("")).arg(payload);
            }
        }
        let mut conn = self.conn.clone();
        let added: Vec<usize> = pipe.query_async(&mut conn).await.map_err(err)?;
        Ok(added.iter().sum())
    }

    async fn read(&self, users: &[String]) -> Result<Vec<Vec<StoredEvent>>, StoreError> {
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd("LRANGE")
                .arg(self.keys(u).0)
                .arg(-(self.max_events as i64))
                .arg(-1);
        }
        let mut conn = self.conn.clone();
        let lists: Vec<Vec<String>> = pipe.query_async(&mut conn).await.map_err(err)?;
        lists
            .into_iter()
            .map(|l| {
                l.iter()
                    .map(|s| {
                        serde_json::from_str(s)
                            .map_err(|e| StoreError::Protocol(format!("a stored event: {e}")))
                    })
                    .collect()
            })
            .collect()
    }

    async fn delete(&self, user: &str) -> Result<bool, StoreError> {
        let (ek, ik) = self.keys(user);
        let mut conn = self.conn.clone();
        let n: usize = redis::cmd("DEL")
            .arg(ek)
            .arg(ik)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(n > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(())
    }
}
