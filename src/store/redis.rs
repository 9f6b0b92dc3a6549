//! The Redis store: every key under `{prefix}:`, one Lua script per commit.
//!
//! Layout (`p` = prefix):
//! - `p:{kind}:{id}`: hash with `v` (version), `body`, and `s` / `u` (the index values it was
//!   written with, so moves and deletes clean up even if the caller's `old_indexes` are partial);
//! - `p:idx:{kind}:all`, `p:idx:{kind}:status:{status}`, `p:idx:{kind}:user:{user}`: sets of ids;
//! - `p:timers`: ZSET id -> due ms, and `p:timer-bodies`: hash id -> body;
//! - `p:outbox`: stream, one entry per event (fields `id` and `e` = EventRecord JSON), and
//!   `p:outbox-ids`: hash event id -> stream id(s, comma separated) so ack is O(batch);
//! - `p:seen:{key}`: duplicate keys, `SET ... PX ttl`.
//!
//! Scripts build key names from the prefix, so they are for standalone Redis (or a cluster with
//! a hash-tagged prefix such as `{sandboxd}`, which puts every key in one slot).

use std::time::Duration;

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use sandboxd_actors::domain::EventRecord;
use sandboxd_actors::ports::{
    Commit, IndexQuery, Kind, Record, StateStore, StoreError, TimerRecord,
};

/// The longest duplicate-key TTL honoured (every store clamps to it): 100 years.
const MAX_SEEN_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
/// Records per `load_many` pipeline, and pipelines in flight at once.
const LOAD_CHUNK: usize = 1_000;
const LOAD_PARALLEL: usize = 4;

const COMMIT_LUA: &str = r#"
local p = ARGV[1]
local i = 2
local function nxt() local v = ARGV[i]; i = i + 1; return v end
local function opt()
  local flag = nxt(); local v = nxt()
  if flag == '1' then return v end
  return nil
end

local writes = {}
for w = 1, tonumber(nxt()) do
  local t = {}
  t.kind = nxt(); t.id = nxt(); t.exp = nxt(); t.newv = nxt()
  t.body = opt()
  t.s = opt(); t.u = opt(); t.os = opt(); t.ou = opt()
  writes[w] = t
end
local consume = {}
for k = 1, tonumber(nxt()) do consume[k] = nxt() end
local cancel = {}
for k = 1, tonumber(nxt()) do cancel[k] = nxt() end
local arms = {}
for k = 1, tonumber(nxt()) do
  local id = nxt(); local due = nxt(); local body = nxt()
  arms[k] = {id, due, body}
end
local outs = {}
for k = 1, tonumber(nxt()) do
  local id = nxt(); local json = nxt()
  outs[k] = {id, json}
end
local seen = opt()
local ttl = nxt()

local tz = p .. ':timers'
local tb = p .. ':timer-bodies'

-- Checks: versions, consumed timers, duplicate key. Nothing is written before all pass.
for _, t in ipairs(writes) do
  local cur = redis.call('HGET', p .. ':' .. t.kind .. ':' .. t.id, 'v')
  if t.exp == '0' then
    if cur then return {'CONFLICT', t.kind, t.id, t.exp, cur} end
  elseif cur ~= t.exp then
    return {'CONFLICT', t.kind, t.id, t.exp, cur or '0'}
  end
end
for _, id in ipairs(consume) do
  if not redis.call('ZSCORE', tz, id) then return {'TIMER_GONE', id} end
end
if seen and redis.call('EXISTS', p .. ':seen:' .. seen) == 1 then
  return {'DUPLICATE', seen}
end

-- Entity writes and indexes.
for _, t in ipairs(writes) do
  local rk = p .. ':' .. t.kind .. ':' .. t.id
  local ip = p .. ':idx:' .. t.kind .. ':'
  local stored = redis.call('HMGET', rk, 's', 'u')
  local function rm(what, val)
    if val then redis.call('SREM', ip .. what .. ':' .. val, t.id) end
  end
  rm('status', t.os); rm('user', t.ou); rm('status', stored[1]); rm('user', stored[2])
  redis.call('DEL', rk)
  if t.body then
    local fields = {'v', t.newv, 'body', t.body}
    if t.s then
      fields[#fields + 1] = 's'; fields[#fields + 1] = t.s
      redis.call('SADD', ip .. 'status:' .. t.s, t.id)
    end
    if t.u then
      fields[#fields + 1] = 'u'; fields[#fields + 1] = t.u
      redis.call('SADD', ip .. 'user:' .. t.u, t.id)
    end
    redis.call('HSET', rk, unpack(fields))
    redis.call('SADD', ip .. 'all', t.id)
  else
    rm('status', t.s); rm('user', t.u)
    redis.call('SREM', ip .. 'all', t.id)
  end
end

-- Timers: removals, then (re-)arming.
for _, id in ipairs(cancel) do redis.call('ZREM', tz, id); redis.call('HDEL', tb, id) end
for _, id in ipairs(consume) do redis.call('ZREM', tz, id); redis.call('HDEL', tb, id) end
for _, a in ipairs(arms) do
  redis.call('ZADD', tz, a[2], a[1])
  redis.call('HSET', tb, a[1], a[3])
end

-- Outbox, in order.
local ob = p .. ':outbox'
local oi = p .. ':outbox-ids'
for _, o in ipairs(outs) do
  local sid = redis.call('XADD', ob, '*', 'id', o[1], 'e', o[2])
  local prev = redis.call('HGET', oi, o[1])
  if prev then sid = prev .. ',' .. sid end
  redis.call('HSET', oi, o[1], sid)
end

if seen then redis.call('SET', p .. ':seen:' .. seen, '1', 'PX', ttl) end
return {'OK'}
"#;

const ACK_LUA: &str = r#"
local ob = ARGV[1] .. ':outbox'
local oi = ARGV[1] .. ':outbox-ids'
local n = 0
for k = 2, #ARGV do
  local sids = redis.call('HGET', oi, ARGV[k])
  if sids then
    for sid in string.gmatch(sids, '[^,]+') do n = n + redis.call('XDEL', ob, sid) end
    redis.call('HDEL', oi, ARGV[k])
  end
end
return n
"#;

const DUE_LUA: &str = r#"
local tz = ARGV[1] .. ':timers'
local tb = ARGV[1] .. ':timer-bodies'
local r = redis.call('ZRANGEBYSCORE', tz, '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local out = {}
for k = 1, #r, 2 do
  out[#out + 1] = {r[k], tonumber(r[k + 1]), redis.call('HGET', tb, r[k]) or ''}
end
return out
"#;

/// A Redis-backed [`StateStore`].
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    commit_script: Script,
    ack_script: Script,
    due_script: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {error}"))
}

/// The URL with any password replaced, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
            return format!("{scheme}://{user}@{host}");
        }
    }
    url.to_string()
}

/// Escape glob metacharacters so SCAN MATCH takes the prefix literally.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn push_opt(args: &mut Vec<String>, value: Option<&str>) {
    match value {
        Some(value) => {
            args.push("1".into());
            args.push(value.to_string());
        }
        None => {
            args.push("0".into());
            args.push(String::new());
        }
    }
}

fn kind_from_str(kind: &str) -> &'static str {
    match kind {
        "lease" => Kind::Lease.as_str(),
        "account" => Kind::Account.as_str(),
        "template" => Kind::Template.as_str(),
        _ => "unknown",
    }
}

impl RedisStore {
    /// Connect (failing with an error naming the URL if Redis does not answer).
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let shown = redact_url(url);
        if prefix.is_empty() {
            return Err(anyhow!("the Redis key prefix must not be empty"));
        }
        let client = Client::open(url).with_context(|| format!("invalid Redis URL {shown}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = tokio::time::timeout(
            Duration::from_secs(15),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| anyhow!("timed out connecting to Redis at {shown}"))?
        .with_context(|| format!("cannot connect to Redis at {shown}"))?;
        let mut store = Self {
            conn,
            prefix: prefix.to_string(),
            commit_script: Script::new(COMMIT_LUA),
            ack_script: Script::new(ACK_LUA),
            due_script: Script::new(DUE_LUA),
        };
        let pong: String = redis::cmd("PING")
            .query_async(&mut store.conn)
            .await
            .with_context(|| format!("Redis at {shown} did not answer PING"))?;
        if pong != "PONG" {
            return Err(anyhow!("Redis at {shown} answered PING with {pong:?}"));
        }
        for script in [&store.commit_script, &store.ack_script, &store.due_script] {
            script
                .load_async(&mut store.conn)
                .await
                .with_context(|| format!("cannot load Lua scripts into Redis at {shown}"))?;
        }
        Ok(store)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    fn record_key(&self, kind: Kind, id: &str) -> String {
        format!("{}:{}:{id}", self.prefix, kind.as_str())
    }

    fn index_key(&self, kind: Kind, rest: &str) -> String {
        format!("{}:idx:{}:{rest}", self.prefix, kind.as_str())
    }

    /// Remove every key under this store's prefix (SCAN + UNLINK; never FLUSHDB). For tests.
    pub async fn delete_prefix(&self) -> anyhow::Result<u64> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .context("SCAN failed")?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .context("UNLINK failed")?;
                deleted += n;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(deleted)
    }

    fn commit_args(&self, commit: &Commit) -> Result<Vec<String>, StoreError> {
        let mut args = Vec::with_capacity(16 + commit.writes.len() * 16);
        args.push(self.prefix.clone());
        args.push(commit.writes.len().to_string());
        for write in &commit.writes {
            args.push(write.kind.as_str().to_string());
            args.push(write.id.clone());
            args.push(write.expected_version.to_string());
            args.push(write.new_version.to_string());
            push_opt(&mut args, write.body.as_deref());
            push_opt(&mut args, write.indexes.status.as_deref());
            push_opt(&mut args, write.indexes.user.as_deref());
            push_opt(&mut args, write.old_indexes.status.as_deref());
            push_opt(&mut args, write.old_indexes.user.as_deref());
        }
        args.push(commit.consume_timers.len().to_string());
        args.extend(commit.consume_timers.iter().cloned());
        args.push(commit.cancel_timers.len().to_string());
        args.extend(commit.cancel_timers.iter().cloned());
        args.push(commit.arm_timers.len().to_string());
        for timer in &commit.arm_timers {
            args.push(timer.id.clone());
            args.push(timer.due_ms.to_string());
            args.push(timer.body.clone());
        }
        args.push(commit.outbox.len().to_string());
        for event in &commit.outbox {
            let json = serde_json::to_string(event).map_err(|error| {
                StoreError::Corrupt(format!("cannot encode outbox entry {}: {error}", event.id))
            })?;
            args.push(event.id.clone());
            args.push(json);
        }
        match &commit.seen_event {
            Some((key, ttl)) => {
                push_opt(&mut args, Some(key));
                // Clamped: Redis rejects an expiry that overflows its clock, and a script error
                // after the first write would leave a partial commit.
                let ttl_ms = u64::try_from(ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .clamp(1, MAX_SEEN_TTL_MS);
                args.push(ttl_ms.to_string());
            }
            None => {
                push_opt(&mut args, None);
                args.push("0".into());
            }
        }
        Ok(args)
    }
}

fn parse_commit_reply(reply: Vec<String>) -> Result<(), StoreError> {
    let bad = || StoreError::Unavailable(format!("unexpected commit reply {reply:?}"));
    match reply.first().map(String::as_str) {
        Some("OK") => Ok(()),
        Some("CONFLICT") if reply.len() == 5 => {
            let expected = reply[3].parse().map_err(|_| bad())?;
            let found = reply[4].parse().map_err(|_| bad())?;
            Err(StoreError::Conflict {
                kind: kind_from_str(&reply[1]),
                id: reply[2].clone(),
                expected,
                found,
            })
        }
        Some("TIMER_GONE") if reply.len() == 2 => Err(StoreError::TimerGone(reply[1].clone())),
        Some("DUPLICATE") if reply.len() == 2 => Err(StoreError::Duplicate(reply[1].clone())),
        _ => Err(bad()),
    }
}

fn record_from(
    id: &str,
    version: Option<String>,
    body: Option<String>,
) -> Result<Option<Record>, StoreError> {
    match (version, body) {
        (Some(version), Some(body)) => {
            let version = version.parse().map_err(|_| {
                StoreError::Corrupt(format!("record {id}: bad version {version:?}"))
            })?;
            Ok(Some(Record {
                id: id.to_string(),
                version,
                body,
            }))
        }
        (None, None) => Ok(None),
        _ => Err(StoreError::Corrupt(format!(
            "record {id}: missing version or body"
        ))),
    }
}

#[async_trait]
impl StateStore for RedisStore {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        if commit.is_empty() {
            return Ok(());
        }
        let args = self.commit_args(&commit)?;
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self
            .commit_script
            .arg(args)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        parse_commit_reply(reply)
    }

    async fn load(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        let mut conn = self.conn.clone();
        let (version, body): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.record_key(kind, id))
            .arg("v")
            .arg("body")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        record_from(id, version, body)
    }

    async fn load_many(&self, kind: Kind, ids: &[String]) -> Result<Vec<Record>, StoreError> {
        // Futures built up front (no closure over the borrowed ids, which async_trait's
        // higher-ranked lifetimes reject), then run a few pipelines at a time, in order.
        let mut batches = Vec::with_capacity(ids.len().div_ceil(LOAD_CHUNK));
        for chunk in ids.chunks(LOAD_CHUNK) {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HMGET")
                    .arg(self.record_key(kind, id))
                    .arg("v")
                    .arg("body");
            }
            batches.push(async move {
                let rows: Vec<(Option<String>, Option<String>)> =
                    pipe.query_async(&mut conn).await.map_err(unavailable)?;
                if rows.len() != chunk.len() {
                    return Err(StoreError::Unavailable(format!(
                        "redis: {} replies for {} HMGETs",
                        rows.len(),
                        chunk.len()
                    )));
                }
                chunk
                    .iter()
                    .zip(rows)
                    .map(|(id, (version, body))| record_from(id, version, body))
                    .collect::<Result<Vec<_>, StoreError>>()
            });
        }
        let chunks: Vec<Vec<Option<Record>>> = futures::stream::iter(batches)
            .buffered(LOAD_PARALLEL)
            .try_collect()
            .await?;
        Ok(chunks.into_iter().flatten().flatten().collect())
    }

    async fn ids(&self, query: IndexQuery) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let kind = query.kind;
        let mut ids: Vec<String> = match (&query.status, &query.user) {
            (None, None) => {
                redis::cmd("SMEMBERS")
                    .arg(self.index_key(kind, "all"))
                    .query_async(&mut conn)
                    .await
            }
            (Some(status), None) => {
                redis::cmd("SMEMBERS")
                    .arg(self.index_key(kind, &format!("status:{status}")))
                    .query_async(&mut conn)
                    .await
            }
            (None, Some(user)) => {
                redis::cmd("SMEMBERS")
                    .arg(self.index_key(kind, &format!("user:{user}")))
                    .query_async(&mut conn)
                    .await
            }
            (Some(status), Some(user)) => {
                redis::cmd("SINTER")
                    .arg(self.index_key(kind, &format!("status:{status}")))
                    .arg(self.index_key(kind, &format!("user:{user}")))
                    .query_async(&mut conn)
                    .await
            }
        }
        .map_err(unavailable)?;
        ids.sort_unstable();
        Ok(ids)
    }

    async fn due_timers(
        &self,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let rows: Vec<(String, i64, String)> = self
            .due_script
            .arg(&self.prefix)
            .arg(until_ms)
            .arg(limit.min(i64::MAX as usize) as i64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(id, due_ms, body)| TimerRecord { id, due_ms, body })
            .collect())
    }

    async fn timer_count(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("ZCARD")
            .arg(self.key("timers"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn outbox(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(self.key("outbox"))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        entries
            .into_iter()
            .map(|(stream_id, fields)| {
                let json = fields
                    .into_iter()
                    .find(|(name, _)| name == "e")
                    .map(|(_, value)| value)
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("outbox entry {stream_id} has no event"))
                    })?;
                serde_json::from_str(&json).map_err(|error| {
                    StoreError::Corrupt(format!("outbox entry {stream_id}: {error}"))
                })
            })
            .collect()
    }

    async fn ack_outbox(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: i64 = self
            .ack_script
            .arg(&self.prefix)
            .arg(ids)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("XLEN")
            .arg(self.key("outbox"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
    }
}
