//! Scale-out through Redis Streams: [`RedisBroadcast`] and [`RedisKeyedBroadcast`] (feature
//! `redis`).
//!
//! Every server holds, per stream, one reader task that tails the stream on a connection of
//! its own and feeds local [`Broadcast`] hubs; publishing only appends to the stream, so every
//! server delivers every event from its reader, in the stream's order, with the stream's ids.

use crate::{broadcast::Window, Broadcast, BroadcastStats, Connection, EncodeError, Event, Resume};
use crate::{BroadcastBuilder, SlowClient};
use ::redis::{
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    streams::{StreamId, StreamRangeReply, StreamReadReply},
    AsyncConnectionConfig, Client, RedisError, Script, Value,
};
use bytes::{BufMut, Bytes, BytesMut};
use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{sync::watch, task::AbortHandle, time::Instant};

/// Appends one event: checks the idempotency key, reads or creates the stream's epoch, adds
/// the entry and returns its id as the browser sees it (`<epoch>-<ms>-<seq>`).
///
/// KEYS: stream, meta, idempotency key (the stream itself when there is none).
/// ARGV: MAXLEN, a new epoch in case one is needed, the encoded fields, the routing key,
/// the idempotency key's lifetime in seconds (0: no idempotency key).
const PUBLISH: &str = r"
if ARGV[5] ~= '0' then
  local done = redis.call('GET', KEYS[3])
  if done then return done end
end
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if (not epoch) or redis.call('EXISTS', KEYS[1]) == 0 then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local entry = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
  'e', epoch, 'k', ARGV[4], 'f', ARGV[3])
local id = epoch .. '-' .. entry
if ARGV[5] ~= '0' then
  redis.call('SET', KEYS[3], id, 'EX', ARGV[5])
end
return id
";

/// How long a resume waits for this server's reader to reach a cursor that another server
/// already delivered.
const CATCH_UP: Duration = Duration::from_secs(3);
/// Entries the reader asks for at once.
const READ_COUNT: usize = 512;
/// The reader's first and longest pause between attempts to reach Redis.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
/// The epoch of a stream that holds no event yet.
const NO_EPOCH: &str = "0";

/// A hub shared by several servers through one Redis stream: an event published on any of
/// them reaches the subscribers of all of them, in one order, with the same ids.
///
/// Built with [`RedisBroadcast::builder`]; cloning is cheap (clones share everything). The
/// reader task ends when the last clone is dropped. See [Scale-out](crate#scale-out-with-redis)
/// for how events flow, what a reconnecting browser gets, and what happens when Redis fails.
///
/// ```no_run
/// use tower_eventsource::{Connection, EventSourceService, RedisBroadcast};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
/// let hub = RedisBroadcast::builder(client, "chat").max_len(10_000).build().await?;
/// let events = EventSourceService::new({
///     let hub = hub.clone();
///     move |conn: Connection, _req: http::Request<()>| {
///         let hub = hub.clone();
///         async move { hub.subscribe(&conn).await; } // local history, else Redis, else reset
///     }
/// });
/// let id = hub.publish("hello").await?; // stored in Redis; every server delivers it
/// # drop((events, id)); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBroadcast {
    hub: Arc<Hub>,
}

/// Many hubs, one per key (a user, a room, a topic), shared by several servers through a
/// fixed number of Redis streams: publishing to a key on one server reaches that key's
/// subscribers on every server, with resume per key.
///
/// Keys are spread over [`RedisBuilder::shards`] streams by a hash of the key that is the same
/// on every server, and each server runs one reader per stream, so its reads of Redis are
/// bounded by the number of streams however many keys there are. Each server keeps a local
/// history only for the keys that have subscribers on it; a key's local history is dropped
/// once it has had no subscriber here for one to two [`RedisBuilder::block`] intervals, after
/// which a reconnecting browser resumes through Redis.
///
/// Built with [`RedisBuilder::build_keyed`]; cloning is cheap.
#[derive(Clone)]
pub struct RedisKeyedBroadcast {
    hub: Arc<Hub>,
}

/// Why a publish stored nothing, or might not have.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishError {
    /// The event cannot be encoded; nothing was sent to Redis.
    Invalid(EncodeError),
    /// Redis could not be reached or refused the command. The event may or may not have been
    /// stored: publish it again with the same idempotency key
    /// ([`RedisBroadcast::publish_idempotent`]) to store it exactly once.
    Redis(RedisError),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Invalid(error) => write!(f, "invalid event: {error}"),
            PublishError::Redis(error) => write!(f, "publishing to Redis failed: {error}"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Invalid(error) => Some(error),
            PublishError::Redis(error) => Some(error),
        }
    }
}

/// Counters of a [`RedisBroadcast`] or [`RedisKeyedBroadcast`] on this server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// The local hubs' counters, summed; `events_sent` counts events delivered by the reader.
    pub local: BroadcastStats,
    /// Events published from this server.
    pub published: u64,
    /// Resumes served from the local history, without asking Redis.
    pub resumed_locally: u64,
    /// Resumes that read the missed events from Redis.
    pub resumed_from_redis: u64,
    /// Calls to Redis made by resumes.
    pub resume_calls: u64,
    /// Times the reader lost its connection to Redis (it reconnects by itself).
    pub reader_reconnects: u64,
    /// Times the stream was found lost, recreated or trimmed past the reader: every local
    /// subscriber was closed, and reconnects get the reset event.
    pub stream_resets: u64,
}

/// Builds a [`RedisBroadcast`] or a [`RedisKeyedBroadcast`]; from [`RedisBroadcast::builder`].
#[must_use]
pub struct RedisBuilder {
    client: Client,
    name: String,
    max_len: usize,
    /// The settings of each local hub (history, slow-client policy, reset event).
    hub: BroadcastBuilder,
    replay_limit: usize,
    block: Duration,
    idempotency_ttl: Duration,
    shards: usize,
    response_timeout: Duration,
}

impl fmt::Debug for RedisBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBuilder")
            .field("name", &self.name)
            .field("max_len", &self.max_len)
            .field("hub", &self.hub)
            .field("replay_limit", &self.replay_limit)
            .field("block", &self.block)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl RedisBuilder {
    /// Keeps about `entries` events in each Redis stream (`XADD ... MAXLEN ~`; Redis trims
    /// whole nodes, so a few more may stay). Default: 10,000.
    pub fn max_len(mut self, entries: usize) -> Self {
        self.max_len = entries.max(1);
        self
    }

    /// Keeps the latest `events` events of each hub (each key) in this server's memory, so
    /// that resuming from them costs Redis nothing. Default: 1,000.
    pub fn history(mut self, events: usize) -> Self {
        self.hub = self.hub.history(events);
        self
    }

    /// Also bounds each local history by the size of the encoded events, in bytes. Default:
    /// no bound beyond [`history`](Self::history).
    pub fn history_bytes(mut self, bytes: usize) -> Self {
        self.hub = self.hub.history_bytes(bytes);
        self
    }

    /// What to do with a subscriber whose buffer is full. Default: [`SlowClient::Disconnect`].
    pub fn slow_client(mut self, policy: SlowClient) -> Self {
        self.hub = self.hub.slow_client(policy);
        self
    }

    /// The event sent to a connection that cannot be resumed; the hub sets its id. Default:
    /// the [`Broadcast`] default (`event: reset` with empty data).
    ///
    /// # Errors
    ///
    /// When the event cannot be encoded (see [`EncodeError`]).
    pub fn reset_event(mut self, event: Event) -> Result<Self, EncodeError> {
        self.hub = self.hub.reset_event(event)?;
        Ok(self)
    }

    /// The most stream entries one resume reads from Redis when the cursor is older than the
    /// local history; a cursor further behind gets the reset event. For a keyed hub the
    /// entries of every key of the cursor's stream count. Default: 1,000.
    pub fn replay_limit(mut self, entries: usize) -> Self {
        self.replay_limit = entries;
        self
    }

    /// How long each read of the reader waits for new entries (`XREAD BLOCK`). It also bounds
    /// how long a stream deleted or recreated while quiet goes unnoticed. Default: 2 seconds.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.clamp(Duration::from_millis(1), Duration::from_secs(3600));
        self
    }

    /// How long Redis remembers an idempotency key. Default: 1 hour.
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(1 << 40));
        self
    }

    /// How long a publish or a resume waits for Redis to answer one call before it counts
    /// Redis as unreachable (a publish then fails; a resume that needs Redis tries once more,
    /// then gets the reset event). The reader waits this long beyond each
    /// [`block`](Self::block). Default: 5 seconds.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout.clamp(Duration::from_millis(1), Duration::from_secs(3600));
        self
    }

    /// How many streams a keyed hub spreads its keys over (at least 1); every server of one
    /// hub must use the same number. Not used by [`build`](Self::build). Default: 16.
    pub fn shards(mut self, streams: usize) -> Self {
        self.shards = streams.max(1);
        self
    }

    /// Connects and starts the reader of the stream named after the hub (the key `{NAME}`,
    /// with `{NAME}:meta` and `{NAME}:idem:*` beside it, all in one Redis Cluster hash slot).
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached now.
    pub async fn build(self) -> Result<RedisBroadcast, RedisError> {
        let streams = vec![format!("{{{}}}", self.name)];
        Ok(RedisBroadcast {
            hub: Hub::start(self, streams, false).await?,
        })
    }

    /// Connects and starts the readers of a keyed hub's streams (`{NAME:0}` to
    /// `{NAME:N-1}` for [`shards`](Self::shards) N, each with its own hash slot).
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached now.
    pub async fn build_keyed(self) -> Result<RedisKeyedBroadcast, RedisError> {
        let streams = (0..self.shards)
            .map(|shard| format!("{{{}:{shard}}}", self.name))
            .collect();
        Ok(RedisKeyedBroadcast {
            hub: Hub::start(self, streams, true).await?,
        })
    }
}

impl RedisBroadcast {
    /// A builder for the hub `name` on the Redis server `client` points at. Every server built
    /// with the same Redis and name shares the hub.
    pub fn builder(client: Client, name: impl Into<String>) -> RedisBuilder {
        RedisBuilder {
            client,
            name: name.into(),
            max_len: 10_000,
            hub: Broadcast::builder().history(1_000),
            replay_limit: 1_000,
            block: Duration::from_secs(2),
            idempotency_ttl: Duration::from_secs(3600),
            shards: 16,
            response_timeout: Duration::from_secs(5),
        }
    }

    /// Stores `event` in the stream and returns the id every server will give it. The event
    /// reaches subscribers (this server's included) through each server's reader, never
    /// directly. An id the event has is sent too, but the stream's id comes last and is the
    /// one the browser keeps.
    ///
    /// # Errors
    ///
    /// When the event cannot be encoded, or Redis cannot be reached; see [`PublishError`].
    pub async fn publish(&self, event: impl Into<Event>) -> Result<String, PublishError> {
        self.hub.publish("", None, event.into()).await
    }

    /// Like [`publish`](Self::publish), storing the event at most once for `key` (for
    /// [`RedisBuilder::idempotency_ttl`]): a retry after an error or a lost reply returns the
    /// id of the first success instead of storing the event again.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub async fn publish_idempotent(
        &self,
        key: &str,
        event: impl Into<Event>,
    ) -> Result<String, PublishError> {
        self.hub.publish("", Some(key), event.into()).await
    }

    /// Subscribes `conn`, first replaying what it missed since its `Last-Event-ID`, from this
    /// server's history or else from Redis, or sending the reset event when that cannot be
    /// proven complete; see [Scale-out](crate#scale-out-with-redis).
    pub async fn subscribe(&self, conn: &Connection) -> Resume {
        self.hub.subscribe("", conn, conn.last_event_id()).await
    }

    /// Like [`subscribe`](Self::subscribe), resuming after `cursor` instead of the
    /// connection's `Last-Event-ID` (see [`Broadcast::subscribe_from`]).
    pub async fn subscribe_from(&self, conn: &Connection, cursor: Option<&str>) -> Resume {
        self.hub.subscribe("", conn, cursor).await
    }

    /// The latest events of the stream (at most `count`), oldest first, each as its id and its
    /// encoded bytes (ending with its `id:` line and the blank line), read from Redis: the
    /// same on every server.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached.
    pub async fn recent(&self, count: usize) -> Result<Vec<(String, Bytes)>, RedisError> {
        self.hub.recent(count).await
    }

    /// This server's counters.
    pub fn stats(&self) -> RedisStats {
        self.hub.stats()
    }

    /// Closes every local subscriber's stream once what is queued has been sent.
    pub fn close_all(&self) {
        self.hub.close_all();
    }
}

impl RedisKeyedBroadcast {
    /// Stores `event` for `key`; see [`RedisBroadcast::publish`].
    ///
    /// # Errors
    ///
    /// As [`RedisBroadcast::publish`].
    pub async fn publish(
        &self,
        key: &str,
        event: impl Into<Event>,
    ) -> Result<String, PublishError> {
        self.hub.publish(key, None, event.into()).await
    }

    /// Stores `event` for `key` at most once for `idempotency_key`; see
    /// [`RedisBroadcast::publish_idempotent`].
    ///
    /// # Errors
    ///
    /// As [`RedisBroadcast::publish`].
    pub async fn publish_idempotent(
        &self,
        key: &str,
        idempotency_key: &str,
        event: impl Into<Event>,
    ) -> Result<String, PublishError> {
        self.hub
            .publish(key, Some(idempotency_key), event.into())
            .await
    }

    /// Subscribes `conn` to `key`'s events, resuming from its `Last-Event-ID`; see
    /// [`RedisBroadcast::subscribe`].
    pub async fn subscribe(&self, key: &str, conn: &Connection) -> Resume {
        self.hub.subscribe(key, conn, conn.last_event_id()).await
    }

    /// Like [`subscribe`](Self::subscribe), resuming after `cursor`.
    pub async fn subscribe_from(
        &self,
        key: &str,
        conn: &Connection,
        cursor: Option<&str>,
    ) -> Resume {
        self.hub.subscribe(key, conn, cursor).await
    }

    /// This server's counters, over every key.
    pub fn stats(&self) -> RedisStats {
        self.hub.stats()
    }

    /// How many keys have a local hub on this server now.
    pub fn local_keys(&self) -> usize {
        self.hub
            .shards
            .iter()
            .map(|shard| shard.lock().keys.len())
            .sum()
    }

    /// Closes every local subscriber's stream, of every key.
    pub fn close_all(&self) {
        self.hub.close_all();
    }
}

impl fmt::Debug for RedisBroadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroadcast")
            .field("stream", &self.hub.shards[0].stream)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisKeyedBroadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisKeyedBroadcast")
            .field("shards", &self.hub.shards.len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A position in a stream: an entry id, compared as two numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    ms: u64,
    seq: u64,
}

impl Pos {
    const ZERO: Pos = Pos { ms: 0, seq: 0 };

    fn parse(text: &str) -> Option<Pos> {
        let (ms, seq) = text.split_once('-')?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(Pos {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The position just before this one.
    fn pred(self) -> Pos {
        match self.seq {
            0 => Pos {
                ms: self.ms.saturating_sub(1),
                seq: if self.ms == 0 { 0 } else { u64::MAX },
            },
            seq => Pos {
                ms: self.ms,
                seq: seq - 1,
            },
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// An id as the browser sees it: `<epoch>-<ms>-<seq>`.
fn cursor_id(epoch: &str, pos: Pos) -> String {
    format!("{epoch}-{pos}")
}

/// Splits an id into its epoch and position; `None` for anything this hub never made.
fn parse_cursor(id: &str) -> Option<(&str, Pos)> {
    let (epoch, rest) = id.split_once('-')?;
    if epoch.is_empty() || epoch.len() > 32 || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some((epoch, Pos::parse(rest)?))
}

/// A new epoch: 16 hex digits that no earlier stream is likely to have had.
fn new_epoch() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{:016x}", RandomState::new().hash_one(nanos))
}

/// FNV-1a: a hash of a key that is the same on every server and every build.
fn shard_of(key: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// One stream entry, as read from Redis.
struct Entry {
    pos: Pos,
    epoch: Option<String>,
    key: String,
    fields: Bytes,
}

impl Entry {
    fn from_redis(entry: StreamId) -> Option<Entry> {
        let pos = Pos::parse(&entry.id)?;
        let text = |field: &str| match entry.map.get(field) {
            Some(Value::BulkString(bytes)) => String::from_utf8(bytes.clone()).ok(),
            Some(Value::SimpleString(text)) => Some(text.clone()),
            _ => None,
        };
        let fields = match entry.map.get("f") {
            Some(Value::BulkString(bytes)) => Bytes::copy_from_slice(bytes),
            _ => Bytes::new(),
        };
        Some(Entry {
            pos,
            epoch: text("e"),
            key: text("k").unwrap_or_default(),
            fields,
        })
    }

    /// The event's wire bytes: its fields, then its id, then the blank line.
    fn frame(&self, id: &str) -> Bytes {
        let mut frame = BytesMut::with_capacity(self.fields.len() + id.len() + 6);
        frame.extend_from_slice(&self.fields);
        frame.extend_from_slice(b"id: ");
        frame.extend_from_slice(id.as_bytes());
        frame.put_slice(b"\n\n");
        frame.freeze()
    }
}

struct Hub {
    common: Arc<Common>,
    shards: Vec<Arc<Shard>>,
    readers: Vec<AbortHandle>,
}

/// What every shard of a hub shares.
struct Common {
    client: Client,
    publisher: ConnectionManager,
    script: Script,
    keyed: bool,
    max_len: usize,
    hub: BroadcastBuilder,
    replay_limit: usize,
    block: Duration,
    idempotency_ttl: Duration,
    response_timeout: Duration,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    resumed_locally: AtomicU64,
    resumed_from_redis: AtomicU64,
    resume_calls: AtomicU64,
    reader_reconnects: AtomicU64,
    stream_resets: AtomicU64,
}

/// One stream and the local hubs it feeds.
struct Shard {
    stream: String,
    meta: String,
    state: Mutex<ShardState>,
    /// Bumped whenever the reader moves on.
    progress: watch::Sender<u64>,
}

struct ShardState {
    /// The stream's epoch, once known.
    epoch: Option<String>,
    /// The last entry the reader handled: every local hub holds what came after its window's
    /// start, up to here.
    last: Pos,
    keys: HashMap<Box<str>, KeyHub>,
}

struct KeyHub {
    hub: Broadcast,
    /// Had no subscriber at the last sweep.
    idle: bool,
}

impl ShardState {
    fn epoch(&self) -> &str {
        self.epoch.as_deref().unwrap_or(NO_EPOCH)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

impl Hub {
    async fn start(
        builder: RedisBuilder,
        streams: Vec<String>,
        keyed: bool,
    ) -> Result<Arc<Hub>, RedisError> {
        let publisher = builder
            .client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(builder.response_timeout)),
            )
            .await?;
        let common = Arc::new(Common {
            client: builder.client,
            publisher,
            script: Script::new(PUBLISH),
            keyed,
            max_len: builder.max_len,
            hub: builder.hub,
            replay_limit: builder.replay_limit,
            block: builder.block,
            idempotency_ttl: builder.idempotency_ttl,
            response_timeout: builder.response_timeout,
            stats: Counters::default(),
        });
        let mut shards = Vec::with_capacity(streams.len());
        let mut readers = Vec::with_capacity(streams.len());
        let mut setup = common.publisher.clone();
        for stream in streams {
            // Where the reader starts: the stream's epoch and newest entry now.
            let (epoch, newest): (Option<String>, StreamRangeReply) = ::redis::pipe()
                .cmd("HGET")
                .arg(format!("{stream}:meta"))
                .arg("epoch")
                .cmd("XREVRANGE")
                .arg(&stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut setup)
                .await?;
            let last = newest
                .ids
                .first()
                .and_then(|entry| Pos::parse(&entry.id))
                .unwrap_or(Pos::ZERO);
            let shard = Arc::new(Shard {
                meta: format!("{stream}:meta"),
                stream,
                state: Mutex::new(ShardState {
                    epoch,
                    last,
                    keys: HashMap::new(),
                }),
                progress: watch::Sender::new(0),
            });
            if !keyed {
                let mut state = shard.lock();
                common.key_hub(&mut state, "");
            }
            let reader = tokio::spawn(read(Arc::clone(&shard), Arc::clone(&common)));
            readers.push(reader.abort_handle());
            shards.push(shard);
        }
        Ok(Arc::new(Hub {
            common,
            shards,
            readers,
        }))
    }

    fn shard(&self, key: &str) -> &Arc<Shard> {
        &self.shards[shard_of(key, self.shards.len())]
    }

    async fn publish(
        &self,
        key: &str,
        idempotency: Option<&str>,
        event: Event,
    ) -> Result<String, PublishError> {
        let encoded = event.encode().map_err(PublishError::Invalid)?;
        // Without the blank line that ends it: each reader appends the id, then the blank line.
        let fields = &encoded[..encoded.len().saturating_sub(1)];
        let shard = self.shard(key);
        let common = &self.common;
        let mut invocation = common.script.key(&shard.stream);
        invocation.key(&shard.meta);
        match idempotency {
            Some(idempotency) => invocation.key(format!("{}:idem:{idempotency}", shard.stream)),
            None => invocation.key(&shard.stream),
        };
        invocation
            .arg(common.max_len)
            .arg(new_epoch())
            .arg(fields)
            .arg(key)
            .arg(match idempotency {
                Some(_) => common.idempotency_ttl.as_secs(),
                None => 0,
            });
        let mut conn = common.publisher.clone();
        let id: String = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(PublishError::Redis)?;
        common.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    async fn recent(&self, count: usize) -> Result<Vec<(String, Bytes)>, RedisError> {
        let shard = &self.shards[0];
        let mut conn = self.common.publisher.clone();
        let read = ::redis::pipe()
            .cmd("HGET")
            .arg(&shard.meta)
            .arg("epoch")
            .cmd("XREVRANGE")
            .arg(&shard.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .clone();
        // A read is safe to repeat: once, for a connection that broke since its last use.
        let (epoch, newest): (Option<String>, StreamRangeReply) =
            match read.query_async(&mut conn).await {
                Ok(reply) => reply,
                Err(_) => read.query_async(&mut conn).await?,
            };
        let Some(epoch) = epoch else {
            return Ok(Vec::new());
        };
        let mut recent: Vec<(String, Bytes)> = newest
            .ids
            .into_iter()
            .filter_map(Entry::from_redis)
            .take_while(|entry| entry.epoch.as_deref() == Some(&*epoch))
            .map(|entry| {
                let id = cursor_id(&epoch, entry.pos);
                let frame = entry.frame(&id);
                (id, frame)
            })
            .collect();
        recent.reverse();
        Ok(recent)
    }

    async fn subscribe(&self, key: &str, conn: &Connection, cursor: Option<&str>) -> Resume {
        let shard = self.shard(key);
        let common = &self.common;
        if conn.has_unusable_last_event_id() {
            return shard.reset(common, key, conn);
        }
        let Some(cursor) = cursor else {
            let mut state = shard.lock();
            return common.key_hub(&mut state, key).subscribe_from(conn, None);
        };
        let Some((epoch, pos)) = parse_cursor(cursor) else {
            return shard.reset(common, key, conn);
        };

        // 1. This server's history.
        {
            let mut state = shard.lock();
            if state.epoch() == epoch && pos <= state.last {
                let hub = common.key_hub(&mut state, key);
                if let Some(resume) =
                    hub.subscribe_with(conn, |window| local_plan(window, epoch, pos, common.keyed))
                {
                    common.stats.resumed_locally.fetch_add(1, Ordering::Relaxed);
                    return resume;
                }
            }
        }

        // 2. Redis: the cursor's entry must still be there, and the page read from it reaches
        // this server's history.
        common.stats.resume_calls.fetch_add(1, Ordering::Relaxed);
        let mut redis = common.publisher.clone();
        let read = ::redis::pipe()
            .cmd("HGET")
            .arg(&shard.meta)
            .arg("epoch")
            .cmd("XRANGE")
            .arg(&shard.stream)
            .arg(pos.to_string())
            .arg("+")
            .arg("COUNT")
            .arg(common.replay_limit.saturating_add(1))
            .clone();
        // A read is safe to repeat: once, for a connection that broke since its last use.
        let mut fetched: Result<(Option<String>, StreamRangeReply), RedisError> =
            read.query_async(&mut redis).await;
        if fetched.is_err() {
            fetched = read.query_async(&mut redis).await;
        }
        let Ok((Some(current), page)) = fetched else {
            return shard.reset(common, key, conn);
        };
        let mut entries: Vec<Entry> = page.ids.into_iter().filter_map(Entry::from_redis).collect();
        // The cursor's entry must be there; for a keyed hub, an entry of this key: another
        // key's id says nothing of what the client got of this key.
        if current != epoch
            || entries.first().is_none_or(|first| {
                first.pos != pos
                    || first.epoch.as_deref() != Some(epoch)
                    || (common.keyed && first.key != key)
            })
        {
            return shard.reset(common, key, conn);
        }
        // Stop at an entry of another epoch: the stream was recreated after it.
        if let Some(other) = entries
            .iter()
            .position(|e| e.epoch.as_deref() != Some(epoch))
        {
            entries.truncate(other);
        }
        let reached = entries.last().map_or(pos, |entry| entry.pos);

        // 3. Wait (bounded) until this server's reader has delivered the cursor's entry.
        let mut progress = shard.progress.subscribe();
        let deadline = Instant::now() + CATCH_UP;
        loop {
            {
                let mut state = shard.lock();
                if state.epoch() == epoch && pos <= state.last {
                    let hub = common.key_hub(&mut state, key);
                    let resume = hub.subscribe_with(conn, |window| {
                        local_plan(window, epoch, pos, common.keyed).or_else(|| {
                            let (_, before) =
                                parse_cursor(window.before()).filter(|(e, _)| *e == epoch)?;
                            if reached < before {
                                return None;
                            }
                            let frames = entries
                                .iter()
                                .filter(|e| e.key == key && pos < e.pos && e.pos <= before)
                                .map(|e| e.frame(&cursor_id(epoch, e.pos)))
                                .collect();
                            Some((frames, 0))
                        })
                    });
                    return match resume {
                        Some(resume) => {
                            common
                                .stats
                                .resumed_from_redis
                                .fetch_add(1, Ordering::Relaxed);
                            resume
                        }
                        None => hub.subscribe_reset(conn),
                    };
                }
            }
            if tokio::time::timeout_at(deadline, progress.changed())
                .await
                .is_err()
            {
                return shard.reset(common, key, conn);
            }
        }
    }

    fn stats(&self) -> RedisStats {
        let mut local = BroadcastStats::default();
        for shard in &self.shards {
            let state = shard.lock();
            for key in state.keys.values() {
                let stats = key.hub.stats();
                local.subscribers += stats.subscribers;
                local.events_sent += stats.events_sent;
                local.deliveries += stats.deliveries;
                local.slow_disconnects += stats.slow_disconnects;
                local.events_skipped += stats.events_skipped;
                local.resets += stats.resets;
            }
        }
        let counters = &self.common.stats;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RedisStats {
            local,
            published: get(&counters.published),
            resumed_locally: get(&counters.resumed_locally),
            resumed_from_redis: get(&counters.resumed_from_redis),
            resume_calls: get(&counters.resume_calls),
            reader_reconnects: get(&counters.reader_reconnects),
            stream_resets: get(&counters.stream_resets),
        }
    }

    fn close_all(&self) {
        for shard in &self.shards {
            for key in shard.lock().keys.values() {
                key.hub.close_all();
            }
        }
    }
}

/// Where a cursor resumes in a local history: after the kept events up to it, when the
/// history holds everything after it. With `exact` (a keyed hub, whose stream holds other
/// keys' entries too), only the id of a kept event or the one just before them is a cursor of
/// this hub's.
fn local_plan(
    window: &Window<'_>,
    epoch: &str,
    pos: Pos,
    exact: bool,
) -> Option<(Vec<Bytes>, usize)> {
    let (before_epoch, before) = parse_cursor(window.before())?;
    if before_epoch != epoch || pos < before {
        return None;
    }
    if exact && pos != before {
        let cursor = cursor_id(epoch, pos);
        return (0..window.len())
            .rfind(|&at| window.id(at) == cursor)
            .map(|at| (Vec::new(), at + 1));
    }
    // Ids in a history increase.
    let (mut low, mut high) = (0, window.len());
    while low < high {
        let mid = (low + high) / 2;
        match parse_cursor(window.id(mid)) {
            Some((_, at)) if at <= pos => low = mid + 1,
            _ => high = mid,
        }
    }
    Some((Vec::new(), low))
}

impl Common {
    /// The local hub of `key`, created (holding what comes after the reader's position) if
    /// there is none.
    fn key_hub<'a>(&self, state: &'a mut ShardState, key: &str) -> &'a Broadcast {
        let start = cursor_id(state.epoch(), state.last);
        let key_hub = state.keys.entry(key.into()).or_insert_with(|| {
            let hub = self.new_broadcast();
            hub.restart_after(&start, false);
            KeyHub { hub, idle: false }
        });
        key_hub.idle = false;
        &key_hub.hub
    }

    fn new_broadcast(&self) -> Broadcast {
        self.hub.clone().build()
    }
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, ShardState> {
        // The lock is never held across user code, so a poisoned lock still holds a
        // consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reset(&self, common: &Common, key: &str, conn: &Connection) -> Resume {
        let mut state = self.lock();
        common.key_hub(&mut state, key).subscribe_reset(conn)
    }

    /// Handles what one look of the reader found; `true` when it moved the reader without
    /// reading (a new stream, or a trim past it), so that it looks again at once.
    fn apply(
        &self,
        common: &Common,
        meta: Option<String>,
        first: Option<Pos>,
        read: Vec<StreamId>,
    ) -> bool {
        let mut state = self.lock();
        let state = &mut *state;
        match (meta, &state.epoch) {
            (Some(meta), Some(epoch)) if meta != *epoch => {
                // A new stream: whatever this server had not read of the old one is lost.
                common.stats.stream_resets.fetch_add(1, Ordering::Relaxed);
                Self::restart(state, meta, true);
                return true;
            }
            (Some(meta), None) => {
                // The first event of a stream that was empty: nothing was missed.
                Self::restart(state, meta, false);
                return true;
            }
            (None, Some(_)) if first.is_none() && state.last != Pos::ZERO => {
                // The stream is gone; a new one starts its ids afresh, so read it from the
                // start once its epoch shows.
                state.last = Pos::ZERO;
                return true;
            }
            _ => {}
        }
        if let Some(first) = first {
            if state.last != Pos::ZERO && first.pred() > state.last {
                // Trimmed past the reader: entries may be lost.
                common.stats.stream_resets.fetch_add(1, Ordering::Relaxed);
                state.last = first.pred();
                let start = cursor_id(state.epoch(), state.last);
                for key in state.keys.values() {
                    key.hub.restart_after(&start, true);
                }
                return true;
            }
        }
        for entry in read.into_iter().filter_map(Entry::from_redis) {
            if entry.pos <= state.last {
                continue;
            }
            state.last = entry.pos;
            // Entries of another epoch are an old stream's, or a newer one's that the next
            // round restarts with.
            if entry.epoch.as_deref() != state.epoch.as_deref() {
                continue;
            }
            if let Some(key) = state.keys.get(entry.key.as_str()) {
                let id = cursor_id(state.epoch(), entry.pos);
                key.hub.send_frame(&id, entry.frame(&id));
            }
        }
        false
    }

    /// Starts over with the stream of `epoch`, from its first entry.
    fn restart(state: &mut ShardState, epoch: String, close: bool) {
        let start = cursor_id(&epoch, Pos::ZERO);
        for key in state.keys.values() {
            key.hub.restart_after(&start, close);
        }
        state.epoch = Some(epoch);
        state.last = Pos::ZERO;
    }

    /// Drops the local hubs of keys that had no subscriber at this sweep and the last one.
    fn sweep(&self) {
        self.lock().keys.retain(|_, key| {
            let unused = key.hub.stats().subscribers == 0;
            let keep = !(unused && key.idle);
            key.idle = unused;
            keep
        });
    }
}

/// The reader of one stream: tails it on a connection of its own, delivering each entry to
/// the local hub of its key; reconnects with backoff and goes on from the last entry it
/// handled.
async fn read(shard: Arc<Shard>, common: Arc<Common>) {
    // Longer than the block, so that a read that waits is not cut off by the client.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(common.block + common.response_timeout));
    let block_ms = common.block.as_millis() as u64;
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = BACKOFF.0;
    let mut swept = Instant::now();
    let mut round: u64 = 0;
    loop {
        let redis = match &mut conn {
            Some(redis) => redis,
            None => match common
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(redis) => conn.insert(redis),
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    continue;
                }
            },
        };
        // One atomic look: the epoch, the oldest entry (to prove nothing after the last one
        // handled was trimmed) and the entries after it, read together so that no trim can
        // fall in between.
        let last = shard.lock().last;
        let result: Result<
            (Option<String>, StreamRangeReply, Option<StreamReadReply>),
            RedisError,
        > = ::redis::pipe()
            .atomic()
            .cmd("HGET")
            .arg(&shard.meta)
            .arg("epoch")
            .cmd("XRANGE")
            .arg(&shard.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("STREAMS")
            .arg(&shard.stream)
            .arg(last.to_string())
            .query_async(redis)
            .await;
        let idle = match result {
            Ok((meta, first, read)) => {
                backoff = BACKOFF.0;
                let first = first.ids.first().and_then(|entry| Pos::parse(&entry.id));
                let read: Vec<StreamId> = read
                    .into_iter()
                    .flat_map(|reply| reply.keys)
                    .flat_map(|key| key.ids)
                    .collect();
                let found = !read.is_empty();
                let moved = shard.apply(&common, meta, first, read);
                !found && !moved
            }
            Err(_) => {
                common
                    .stats
                    .reader_reconnects
                    .fetch_add(1, Ordering::Relaxed);
                conn = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
                false
            }
        };
        if let (true, Some(redis)) = (idle, &mut conn) {
            // Nothing new: wait (bounded) until there is, then look again. What this read
            // returns is read again by the atomic look.
            let last = shard.lock().last;
            let waited: Result<Value, RedisError> = ::redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(&shard.stream)
                .arg(last.to_string())
                .query_async(redis)
                .await;
            if waited.is_err() {
                common
                    .stats
                    .reader_reconnects
                    .fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
        round += 1;
        shard.progress.send_replace(round);
        if common.keyed && swept.elapsed() >= common.block {
            shard.sweep();
            swept = Instant::now();
        }
    }
}
