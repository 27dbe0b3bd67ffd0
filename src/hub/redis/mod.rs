//! The Redis backend (feature `redis`): a hub shared by every server through Redis Streams.
//!
//! A hub named `NAME` keeps, all under the hash tag `{NAME}` (one Redis Cluster slot):
//!
//! - `{NAME}`: the hub's stream, every event of the hub (of every key) in one order, numbered
//!   1, 2, 3, … as stream ids `<n>-0`; each server's reader tails it and feeds its topics;
//! - `{NAME}:meta`: the hub's epoch `e`, newest number `n` and kind (`plain` or `keyed`);
//! - for a keyed hub with a history, per key `KEY`: `{NAME}:k:KEY`, the key's own stream
//!   (its last `history(n)` events, numbered per key), and `{NAME}:m:KEY`, its epoch and newest
//!   number; both expire after the linger time;
//! - `{NAME}:i:…`: idempotency records.
//!
//! One Lua script stores an event in all of them at once (see `publish.rs`); `read.rs` is the
//! reader. A resume reads the missed events from the key's (or hub's) stream and splices them
//! with what this server's topic holds, once the reader has caught up with the read.

mod publish;
mod read;

use super::{
    backend::{Backend, BoxFuture, Connector},
    topic::{frame_with_id, new_epoch, parse_id, Topic},
    BackendError, BroadcastBuilder, BroadcastStats, HistoryEntry, KeyedBroadcastBuilder, Resume,
    SendError, Sent, Settings,
};
use crate::{observe::BackendKind, Connection, Event};
use ::redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::StreamRangeReply,
    Client, RedisError, Value,
};
use bytes::Bytes;
use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, Weak,
    },
};
use tokio::{
    sync::{watch, OnceCell},
    task::AbortHandle,
};

/// The fewest entries the hub's stream keeps, for readers that fall behind: with no or a
/// small history, it still carries events from server to server.
const STREAM_MIN_LEN: usize = 1000;

impl BroadcastBuilder {
    /// Shares the hub with every server built with the same Redis and `name`, through Redis
    /// Streams (feature `redis`): an event sent on any of them reaches the subscribers of all
    /// of them, in one order, with the same ids, and a browser resumes on any of them.
    ///
    /// Every other setting means what it does in-process (see
    /// [Guarantees](crate::Broadcast#guarantees)): [`history`](Self::history) is the resume
    /// window, kept in Redis. `build` stays synchronous and connects in the background;
    /// [`Broadcast::ready`](crate::Broadcast::ready) says whether Redis can be reached. The
    /// client is the `redis` crate's, re-exported as [`tower_eventsource::redis`](crate::redis).
    ///
    /// ```no_run
    /// use tower_eventsource::{redis, Broadcast};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let hub = Broadcast::builder().history(1000).redis(client, "chat").build();
    /// hub.ready().await?; // refuse to start without Redis
    /// hub.send("hello").await?; // every server's subscribers get it
    /// # Ok(()) }
    /// ```
    ///
    /// The name may hold any character but `{` and `}`; a hub and a keyed hub cannot share
    /// one.
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(self, client: Client, name: impl Into<String>) -> Self {
        self.with_backend(Arc::new(RedisConnector {
            client,
            name: name.into(),
        }))
    }
}

impl<K> KeyedBroadcastBuilder<K>
where
    K: Eq + Hash + Clone + Send + Sync + fmt::Display + 'static,
{
    /// Shares the keyed hub with every server built with the same Redis and `name`; see
    /// [`BroadcastBuilder::redis`]. Keys are known to Redis by their `Display` text.
    ///
    /// ```no_run
    /// use tower_eventsource::{redis, Broadcast, KeyedBroadcast};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let orders: KeyedBroadcast<u64> =
    ///     KeyedBroadcast::builder(Broadcast::builder().history(100)).redis(client, "orders").build();
    /// orders.send(&42, "shipped").await?;
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(self, client: Client, name: impl Into<String>) -> Self {
        let connector = Arc::new(RedisConnector {
            client,
            name: name.into(),
        });
        self.with_backend(connector, |key| key.to_string())
    }
}

struct RedisConnector {
    client: Client,
    name: String,
}

impl fmt::Debug for RedisConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field(
                "addr",
                &self.client.get_connection_info().addr().to_string(),
            )
            .field("name", &self.name)
            .finish()
    }
}

impl Connector for RedisConnector {
    fn kind(&self) -> BackendKind {
        BackendKind::Redis
    }

    fn hub_name(&self) -> &str {
        &self.name
    }

    fn start(&self, settings: Arc<Settings>, keyed: bool) -> Arc<dyn Backend> {
        let name = &self.name;
        let core = Arc::new(Core {
            client: self.client.clone(),
            addr: self.client.get_connection_info().addr().to_string(),
            refused: (name.contains('{') || name.contains('}')).then(|| {
                format!(
                    "the hub name {name:?} holds `{{` or `}}`, which Redis keys of a hub cannot"
                )
            }),
            stream: format!("{{{name}}}"),
            meta: format!("{{{name}}}:meta"),
            prefix: format!("{{{name}}}"),
            keyed,
            settings,
            publisher: OnceCell::new(),
            topics: Mutex::new(Topics::default()),
            progress: watch::Sender::new(Progress::default()),
            counters: Counters::default(),
        });
        let backend = Arc::new(RedisBackend {
            core,
            reader: OnceLock::new(),
        });
        backend.start_reader();
        backend
    }
}

/// What the reader has fed the topics up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Progress {
    /// Whether the reader has looked at the stream: it feeds everything stored since.
    looked: bool,
    epoch: Option<Arc<str>>,
    number: u64,
}

struct RedisBackend {
    core: Arc<Core>,
    reader: OnceLock<AbortHandle>,
}

/// What the reader shares with the hub.
struct Core {
    client: Client,
    /// Where Redis is, for messages: never the URL, which may hold a password.
    addr: String,
    /// Why this hub can never work, found when it was built.
    refused: Option<String>,
    stream: String,
    meta: String,
    prefix: String,
    keyed: bool,
    settings: Arc<Settings>,
    publisher: OnceCell<ConnectionManager>,
    topics: Mutex<Topics>,
    progress: watch::Sender<Progress>,
    counters: Counters,
}

/// The topics this server's reader feeds.
#[derive(Default)]
struct Topics {
    /// The hub's own topic (every key's, for a keyed hub).
    all: Option<Weak<Topic>>,
    keys: HashMap<Box<str>, Weak<Topic>>,
    /// Prune gone keys when an attach finds the map this long.
    prune_at: usize,
}

#[derive(Default)]
struct Counters {
    replays_from_backend: AtomicU64,
    resumes_unavailable: AtomicU64,
    send_errors: AtomicU64,
    reader_reconnects: AtomicU64,
    stream_resets: AtomicU64,
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.get() {
            reader.abort();
        }
    }
}

impl RedisBackend {
    /// Starts the reader, once, when there is a runtime to run it on: at build, or else at
    /// the first call that has one.
    fn start_reader(&self) {
        if self.reader.get().is_some() || self.core.refused.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let _ = self.reader.get_or_init(|| {
            runtime
                .spawn(read::read(Arc::clone(&self.core)))
                .abort_handle()
        });
    }
}

impl Core {
    fn topics(&self) -> MutexGuard<'_, Topics> {
        self.topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The stream and meta keys of `key`'s history: the key's own for a keyed hub, else the
    /// hub's.
    fn keys_of(&self, key: Option<&str>) -> (String, String) {
        match key {
            Some(key) if self.keyed => (
                format!("{}:k:{key}", self.prefix),
                format!("{}:m:{key}", self.prefix),
            ),
            _ => (self.stream.clone(), self.meta.clone()),
        }
    }

    fn kind(&self) -> &'static str {
        if self.keyed {
            "keyed"
        } else {
            "plain"
        }
    }

    /// The resume window in Redis's terms: Redis refuses counts above `i64::MAX`.
    fn window(&self) -> u64 {
        self.settings.history_events.min(i64::MAX as usize) as u64
    }

    /// A connection for sends, resumes and reads of the history, made on first use.
    async fn publisher(&self) -> Result<ConnectionManager, BackendError> {
        if let Some(refused) = &self.refused {
            return Err(BackendError::new(refused.clone(), None));
        }
        let timeout = self.settings.response_timeout;
        let connect = self.publisher.get_or_try_init(|| async {
            let config = ConnectionManagerConfig::new()
                .set_number_of_retries(1)
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            self.client.get_connection_manager_with_config(config).await
        });
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn.clone()),
            Ok(Err(error)) => Err(self.error("cannot connect to", error)),
            Err(_) => Err(BackendError::new(
                format!("Redis at {} did not answer within {timeout:?}", self.addr),
                None,
            )),
        }
    }

    /// A message naming what failed and where, without the URL (which may hold a password).
    fn error(&self, what: &str, error: RedisError) -> BackendError {
        let detail = match error.kind() {
            ::redis::ErrorKind::AuthenticationFailed => "authentication failed".to_owned(),
            _ => error.to_string(),
        };
        BackendError::new(
            format!("{what} Redis at {}: {detail}", self.addr),
            Some(Box::new(error)),
        )
    }

    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until the reader has fed the topics up to `number` of the hub's `epoch`, at most
    /// the response timeout.
    async fn caught_up(&self, epoch: &str, number: u64) -> bool {
        let mut progress = self.progress.subscribe();
        let wait = async {
            let reached =
                progress.wait_for(|at| at.epoch.as_deref() == Some(epoch) && at.number >= number);
            reached.await.is_ok()
        };
        tokio::time::timeout(self.settings.response_timeout, wait)
            .await
            .unwrap_or(false)
    }

    /// Resumes `conn` on `topic` through Redis; see [`Backend::subscribe`].
    async fn subscribe(
        &self,
        key: Option<&str>,
        topic: &Topic,
        conn: &Connection,
        cursor: Option<&str>,
    ) -> Resume {
        match self.resume(key, topic, conn, cursor).await {
            Ok(resume) => resume,
            Err(_) => {
                self.count(&self.counters.resumes_unavailable);
                conn.close();
                Resume::Unavailable
            }
        }
    }

    async fn resume(
        &self,
        key: Option<&str>,
        topic: &Topic,
        conn: &Connection,
        cursor: Option<&str>,
    ) -> Result<Resume, BackendError> {
        let mut redis = self.publisher().await?;
        let (stream, meta) = self.keys_of(key);
        let cursor = cursor.and_then(parse_id);
        let window = self.window();
        let mut look = publish::LOOK.key(&self.meta);
        look.key(&meta)
            .key(&stream)
            .arg(cursor.map_or("", |(epoch, _)| epoch))
            .arg(cursor.map_or(0, |(_, after)| after))
            .arg(format!(
                "{}-0",
                cursor.map_or(0, |(_, after)| after.saturating_add(1))
            ))
            .arg(window.max(1));
        // A read is safe to repeat: once, for a connection that broke since its last use.
        type Look = (Vec<Option<String>>, Vec<Option<String>>, StreamRangeReply);
        let reply: Look = match self.timed(look.invoke_async(&mut redis), "read from").await {
            Ok(reply) => reply,
            Err(_) => {
                self.timed(look.invoke_async(&mut redis), "read from")
                    .await?
            }
        };
        let (hub, position, page) = reply;
        let hub_epoch = hub.first().cloned().flatten();
        let hub_number = number(hub.get(1));
        let (epoch, newest) = match position.first().cloned().flatten() {
            Some(epoch) => (epoch, number(position.get(1))),
            None => {
                // Nothing was ever sent to it (or it expired): start its numbering, so that
                // the reset event's id resumes.
                let (epoch, newest) = self.ensure(&mut redis, &stream, &meta).await?;
                (epoch, newest)
            }
        };
        let hub_epoch = match (hub_epoch, key) {
            (Some(hub_epoch), _) => hub_epoch,
            // The hub's own numbering was just started.
            (None, None) => epoch.clone(),
            (None, Some(_)) => String::new(),
        };
        // Nothing sent yet: nothing for the reader to catch up with.
        let behind = !hub_epoch.is_empty() && hub_number > 0;
        if behind && !self.caught_up(&hub_epoch, hub_number).await {
            return Err(BackendError::new("the reader is behind", None));
        }
        let resumable = cursor.and_then(|(cursor_epoch, after)| {
            if cursor_epoch != epoch || after > newest || newest - after > window {
                return None;
            }
            let entries: Vec<(u64, Bytes)> = page
                .ids
                .iter()
                .filter_map(|entry| Some((entry_number(&entry.id)?, fields(&entry.map)?)))
                .filter(|(number, _)| *number <= newest)
                .collect();
            let complete = entries.len() as u64 == newest - after
                && entries.first().is_none_or(|(first, _)| *first == after + 1);
            let frames = entries
                .into_iter()
                .map(|(number, fields)| (number, frame_with_id(&fields, &epoch, number)))
                .collect::<Vec<_>>();
            // As in-process: what was missed must fit in the history's bytes.
            let size: usize = frames.iter().map(|(_, frame)| frame.len()).sum();
            if !complete || size > self.settings.history_bytes {
                return None;
            }
            Some((after, frames))
        });
        Ok(match resumable {
            Some((after, frames)) => {
                let resume = topic.subscribe_after(conn, &epoch, after, frames, newest);
                if matches!(resume, Resume::Replayed(_)) {
                    self.count(&self.counters.replays_from_backend);
                }
                resume
            }
            None => topic.subscribe_reset(conn, &epoch, newest),
        })
    }

    /// Starts the numbering of `stream` if it has none; its epoch and newest number.
    async fn ensure(
        &self,
        redis: &mut ConnectionManager,
        stream: &str,
        meta: &str,
    ) -> Result<(String, u64), BackendError> {
        let linger = match (self.keyed, meta == self.meta) {
            (true, false) => self.settings.linger_ms(),
            _ => 0,
        };
        let mut invocation = publish::ENSURE.key(stream);
        invocation.key(meta).arg(&*new_epoch()).arg(linger);
        let (epoch, newest): (String, u64) = self
            .timed(invocation.invoke_async(redis), "resume on")
            .await?;
        Ok((epoch, newest))
    }

    async fn query<T: ::redis::FromRedisValue>(
        &self,
        pipe: &::redis::Pipeline,
        redis: &mut ConnectionManager,
    ) -> Result<T, BackendError> {
        // A read is safe to repeat: once, for a connection that broke since its last use.
        match self.timed(pipe.query_async(redis), "read from").await {
            Ok(reply) => Ok(reply),
            Err(_) => self.timed(pipe.query_async(redis), "read from").await,
        }
    }

    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RedisError>>,
        what: &str,
    ) -> Result<T, BackendError> {
        let timeout = self.settings.response_timeout;
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(self.error(&format!("cannot {what}"), error)),
            Err(_) => Err(BackendError::new(
                format!("Redis at {} did not answer within {timeout:?}", self.addr),
                None,
            )),
        }
    }

    async fn recent(
        &self,
        key: Option<&str>,
        count: usize,
    ) -> Result<Vec<HistoryEntry>, BackendError> {
        if self.settings.history_events == 0 || count == 0 {
            return Ok(Vec::new());
        }
        let mut redis = self.publisher().await?;
        let (stream, meta) = self.keys_of(key);
        let mut read = ::redis::pipe();
        read.atomic()
            .cmd("HGET")
            .arg(&meta)
            .arg("e")
            .cmd("XREVRANGE")
            .arg(&stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(
                count
                    .min(self.settings.history_events)
                    .min(i64::MAX as usize),
            );
        let (epoch, newest): (Option<String>, StreamRangeReply) =
            self.query(&read, &mut redis).await?;
        let Some(epoch) = epoch else {
            return Ok(Vec::new());
        };
        // Newest first, as far as the history's bytes reach, as in-process.
        let mut size = 0;
        let mut recent: Vec<HistoryEntry> = newest
            .ids
            .iter()
            .filter_map(|entry| {
                let number = entry_number(&entry.id)?;
                Some(frame_with_id(&fields(&entry.map)?, &epoch, number))
            })
            .take_while(|frame| {
                size += frame.len();
                size <= self.settings.history_bytes
            })
            .map(|frame| HistoryEntry::parse(&frame))
            .collect();
        recent.reverse();
        Ok(recent)
    }

    async fn ready(&self) -> Result<(), BackendError> {
        let mut redis = self.publisher().await?;
        let mut invocation = publish::READY.key(&self.meta);
        invocation.arg(self.kind());
        let kind: String = self
            .timed(invocation.invoke_async(&mut redis), "use")
            .await?;
        if kind != self.kind() {
            return Err(BackendError::new(
                format!(
                    "the hub {:?} in Redis at {} is a {kind} hub; this one is {}",
                    self.stream,
                    self.addr,
                    self.kind()
                ),
                None,
            ));
        }
        Ok(())
    }
}

/// The number of a stream entry `<n>-0`.
fn entry_number(id: &str) -> Option<u64> {
    id.strip_suffix("-0")?.parse().ok()
}

/// An entry's encoded fields.
fn fields(map: &HashMap<String, Value>) -> Option<Bytes> {
    match map.get("f")? {
        Value::BulkString(bytes) => Some(Bytes::copy_from_slice(bytes)),
        _ => None,
    }
}

fn number(value: Option<&Option<String>>) -> u64 {
    value
        .and_then(|value| value.as_deref())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.start_reader();
        Box::pin(self.core.ready())
    }

    fn feeding(&self) -> BoxFuture<'_, bool> {
        self.start_reader();
        Box::pin(async {
            let mut progress = self.core.progress.subscribe();
            let looked = async { progress.wait_for(|at| at.looked).await.is_ok() };
            let timeout = self.core.settings.response_timeout;
            tokio::time::timeout(timeout, looked).await.unwrap_or(false)
        })
    }

    fn attach(&self, key: Option<&str>, topic: &Arc<Topic>) {
        self.start_reader();
        let mut topics = self.core.topics();
        match key {
            None => topics.all = Some(Arc::downgrade(topic)),
            Some(key) => {
                if topics.keys.len() >= topics.prune_at {
                    topics.keys.retain(|_, topic| topic.strong_count() > 0);
                    topics.prune_at = (topics.keys.len() * 2).max(64);
                }
                topics.keys.insert(key.into(), Arc::downgrade(topic));
            }
        }
    }

    fn send<'a>(
        &'a self,
        key: Option<&'a str>,
        idempotency: Option<&'a str>,
        event: Event,
    ) -> BoxFuture<'a, Result<Sent, SendError>> {
        self.start_reader();
        Box::pin(async move {
            let sent = self.core.send(key, idempotency, event).await;
            if sent.is_err() {
                self.core.count(&self.core.counters.send_errors);
            }
            sent
        })
    }

    fn subscribe<'a>(
        &'a self,
        key: Option<&'a str>,
        topic: &'a Arc<Topic>,
        conn: &'a Connection,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Resume> {
        self.start_reader();
        Box::pin(self.core.subscribe(key, topic, conn, cursor))
    }

    fn recent<'a>(
        &'a self,
        key: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<HistoryEntry>, BackendError>> {
        Box::pin(self.core.recent(key, count))
    }

    fn add_stats(&self, stats: &mut BroadcastStats) {
        let counters = &self.core.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        stats.add(BroadcastStats {
            replays_from_backend: get(&counters.replays_from_backend),
            resumes_unavailable: get(&counters.resumes_unavailable),
            send_errors: get(&counters.send_errors),
            reader_reconnects: get(&counters.reader_reconnects),
            stream_resets: get(&counters.stream_resets),
            ..BroadcastStats::default()
        });
    }
}

impl Settings {
    /// The linger time of a keyed hub's keys, in milliseconds for Redis.
    fn linger_ms(&self) -> u64 {
        (self.linger.as_millis().min(i64::MAX as u128) as u64).max(1)
    }
}
