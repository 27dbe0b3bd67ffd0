//! Sending through Redis: one Lua script stores an event in the hub's stream (and its key's),
//! numbers it and records its idempotency key, all at once.

use super::{Core, STREAM_MIN_LEN};
use crate::{
    hub::{topic::new_epoch, BackendError, SendError, Sent},
    Event,
};
use ::redis::{RedisError, Script};
use std::{sync::LazyLock, time::Duration};

/// Stores one event and returns its id (`<epoch>-<number>`, empty for a keyed hub without
/// history) and 0. A repeated idempotency key returns the first id and 1, and stores nothing.
///
/// KEYS: the hub's stream and meta, the key's stream and meta (the hub's again for a hub
/// without keys), the idempotency record.
/// ARGV: the hub's kind, the hub stream's length, the key stream's length (0: no history of
/// its own), a new epoch for the hub and one for the key in case either starts anew, the
/// encoded fields, the key, the idempotency record's lifetime and the key's linger time in
/// milliseconds.
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local done = redis.call('GET', KEYS[5])
if done then return {done, 1} end
local kind = redis.call('HGET', KEYS[2], 'kind')
if kind and kind ~= ARGV[1] then
  return redis.error_reply('WRONGKIND the hub is a ' .. kind .. ' hub, not a ' .. ARGV[1] .. ' one')
end
-- Where a numbering stands; a new epoch when it has none, or its stream is gone.
local function numbering(stream, meta, fresh)
  local e = redis.call('HGET', meta, 'e')
  local n = tonumber(redis.call('HGET', meta, 'n') or '0')
  if (not e) or (n > 0 and redis.call('EXISTS', stream) == 0) then
    redis.call('DEL', stream)
    return fresh, 0
  end
  return e, n
end
local he, hn = numbering(KEYS[1], KEYS[2], ARGV[4])
hn = hn + 1
redis.call('HSET', KEYS[2], 'e', he, 'n', hn, 'kind', ARGV[1])
local id = he .. '-' .. hn
local now = redis.call('TIME')
local t = tostring(tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
if ARGV[1] == 'keyed' then
  local ke, kn = '', 0
  id = ''
  if ARGV[3] ~= '0' then
    ke, kn = numbering(KEYS[3], KEYS[4], ARGV[5])
    kn = kn + 1
    redis.call('HSET', KEYS[4], 'e', ke, 'n', kn)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], kn .. '-0', 'f', ARGV[6])
    redis.call('PEXPIRE', KEYS[3], ARGV[9])
    redis.call('PEXPIRE', KEYS[4], ARGV[9])
    id = ke .. '-' .. kn
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], hn .. '-0',
    'k', ARGV[7], 'x', ke, 'o', kn, 't', t, 'f', ARGV[6])
else
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], hn .. '-0', 't', t, 'f', ARGV[6])
end
redis.call('SET', KEYS[5], id, 'PX', ARGV[8])
return {id, 0}
",
    )
});

/// Starts a numbering that has none (for a reset before any event): returns its epoch and
/// newest number.
///
/// KEYS: the stream, its meta. ARGV: a new epoch, the linger time in milliseconds (0: none).
pub(super) static ENSURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('HGET', KEYS[2], 'e')
local n = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
if (not e) or (n > 0 and redis.call('EXISTS', KEYS[1]) == 0) then
  redis.call('DEL', KEYS[1])
  e, n = ARGV[1], 0
  redis.call('HSET', KEYS[2], 'e', e, 'n', 0)
end
if ARGV[2] ~= '0' then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return {e, n}
",
    )
});

/// One atomic look for a resume: the hub's numbering, the key's, and the key's events after
/// the cursor when the cursor can be resumed from (its epoch is the key's, and it is at most
/// the window behind the newest), else none: a cursor too old or of another numbering costs
/// no read of the stream.
///
/// KEYS: the hub's meta, the key's meta (the hub's again for a hub without keys), the key's
/// stream. ARGV: the cursor's epoch (empty for none), its number, the first entry id after
/// it (`<number + 1>-0`), the window.
pub(super) static LOOK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local hub = redis.call('HMGET', KEYS[1], 'e', 'n')
local key = redis.call('HMGET', KEYS[2], 'e', 'n')
local page = {}
if ARGV[1] ~= '' and key[1] == ARGV[1] then
  local newest = tonumber(key[2] or '0') or 0
  local after = tonumber(ARGV[2])
  local window = tonumber(ARGV[4])
  if after < newest and newest - after <= window then
    page = redis.call('XRANGE', KEYS[3], ARGV[3], '+', 'COUNT', ARGV[4])
  end
end
return {hub, key, page}
",
    )
});

/// Records the hub's kind if none is, and returns the recorded one.
///
/// KEYS: the hub's meta. ARGV: the kind.
pub(super) static READY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HSETNX', KEYS[1], 'kind', ARGV[1])
return redis.call('HGET', KEYS[1], 'kind')
",
    )
});

impl Core {
    /// Stores `event` for `key`. Every send carries an idempotency key (a fresh one when the
    /// caller gave none), so that a send whose outcome is unknown is retried once, on a new
    /// connection, without storing it twice.
    pub(super) async fn send(
        &self,
        key: Option<&str>,
        idempotency: Option<&str>,
        event: Event,
    ) -> Result<Sent, SendError> {
        let own_id = event.last_id().map(Box::from);
        let encoded = event.finish();
        // Without the blank line that ends it: readers append the id, then the blank line.
        let fields = &encoded[..encoded.len() - 1];
        let (stream, meta) = self.keys_of(key);
        let key_name = key.unwrap_or("");
        let (idempotency, lifetime) = match idempotency {
            Some(idempotency) => (idempotency.to_owned(), self.settings.idempotency_ttl),
            // Long enough for the retry below.
            None => (
                new_epoch().to_string(),
                (self.settings.response_timeout * 4).max(Duration::from_secs(10)),
            ),
        };
        let record = format!(
            "{}:i:{}:{key_name}:{idempotency}",
            self.prefix,
            key_name.len()
        );
        let window = self.window() as usize;
        let key_len = if self.keyed { window } else { 0 };
        let mut invocation = PUBLISH.key(&self.stream);
        invocation
            .key(&self.meta)
            .key(&stream)
            .key(&meta)
            .key(&record)
            .arg(self.kind())
            .arg(window.max(STREAM_MIN_LEN))
            .arg(key_len)
            .arg(&*new_epoch())
            .arg(&*new_epoch())
            .arg(fields)
            .arg(key_name)
            .arg(lifetime.as_millis().min(i64::MAX as u128) as u64)
            .arg(self.settings.linger_ms());
        let deadline = tokio::time::Instant::now() + self.settings.response_timeout;
        let mut attempt = 0;
        let (id, repeated): (String, u8) = loop {
            attempt += 1;
            let mut redis = match tokio::time::timeout_at(deadline, self.publisher()).await {
                Ok(Ok(redis)) => redis,
                Ok(Err(error)) => return Err(SendError::NotStored(error)),
                Err(_) => return Err(SendError::NotStored(self.late())),
            };
            match tokio::time::timeout_at(deadline, invocation.invoke_async(&mut redis)).await {
                Ok(Ok(id)) => break id,
                Ok(Err(error)) if attempt == 1 && retry(&error) => continue,
                Ok(Err(error)) => {
                    let stored = !refused_before_sending(&error);
                    let error = self.error("cannot send to", error);
                    return Err(if stored {
                        SendError::MaybeStored(error)
                    } else {
                        SendError::NotStored(error)
                    });
                }
                Err(_) => return Err(SendError::MaybeStored(self.late())),
            }
        };
        let id = if self.settings.history_events == 0 {
            own_id
        } else {
            Some(id.into())
        };
        Ok(Sent {
            id,
            reached: None,
            // A retry that finds the record its first attempt left did send the event.
            repeated: repeated == 1 && attempt == 1,
        })
    }

    fn late(&self) -> BackendError {
        BackendError::new(
            format!(
                "Redis at {} did not answer within {:?}",
                self.addr, self.settings.response_timeout
            ),
            None,
        )
    }
}

/// Whether a failed call is worth one more try on a new connection: the connection broke.
fn retry(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal()
}

/// Whether Redis certainly stored nothing: it refused the connection, or answered the
/// script with an error (the script checks everything before it writes).
fn refused_before_sending(error: &RedisError) -> bool {
    error.is_connection_refusal() || error.code().is_some()
}
