//! Keyed fan-out: [`KeyedBroadcast`] keeps one topic per key (a user, a room, an order),
//! created on first use and dropped when it is no longer wanted, and one for all keys.

use super::{
    backend::{Backend, Connector},
    subscribe_topic,
    topic::Topic,
    BackendError, BroadcastBuilder, BroadcastStats, HistoryEntry, Resume, SendError, Sent,
    Settings,
};
use crate::{Connection, Event};
use std::{
    borrow::Borrow,
    collections::{HashMap, VecDeque},
    fmt,
    hash::Hash,
    marker::PhantomData,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::Duration,
};
use tokio::time::Instant;

/// How long a key with a history is kept without subscribers and without events.
const DEFAULT_LINGER: Duration = Duration::from_secs(300);

/// How many entries of the check queue each call looks at.
const CHECKS_PER_CALL: usize = 4;

/// Many hubs under one roof: each key (a user, a room, an order) behaves as its own
/// [`Broadcast`](crate::Broadcast), created when the key is first used and dropped when no
/// one needs it any more; [`subscribe_all`](Self::subscribe_all) follows every key at once.
///
/// Every key has its own subscribers, history window ([`BroadcastBuilder::history`] counts
/// each key's events, however busy the others are), ids, replay on reconnect, reset event and
/// slow-client policy, as set on the template given to [`new`](Self::new) or
/// [`builder`](Self::builder). The backend is chosen as for a `Broadcast`, on the builder
/// ([`KeyedBroadcastBuilder::redis`]), with the same
/// [guarantees](crate::Broadcast#guarantees). Cloning is cheap: clones share the keys.
///
/// Methods take the key by reference to anything the key type borrows as: `&str` for
/// `String` keys, `&42` for integer keys.
///
/// # When keys come and go
///
/// - [`subscribe`](Self::subscribe) creates the key on this server if it does not exist.
/// - [`send`](Self::send) in-process creates it only when the template has a history (the
///   event is kept for replay); without a history, a send to a key that does not exist
///   reaches no one and creates nothing.
/// - A key **without history** is dropped once it has no open subscriber.
/// - A key **with a history** is dropped once it has had no open subscriber and no event for
///   the linger time ([`KeyedBroadcastBuilder::linger`]), so that a browser that reconnects
///   within it still resumes exactly. On Redis the key's history lives in Redis for the
///   linger time after its last event, kept as long as any server has a subscriber to it.
///
/// The hub notices that the last subscriber of a key has gone when it checks the key, not at
/// the instant the client leaves, and counts the linger from then. Keys are checked a few at
/// a time on each call, in turn, so the work is bounded per call;
/// [`stats`](Self::stats) checks every key. Time is tokio's clock
/// ([`tokio::time::Instant`]).
///
/// A key that is dropped and created again starts a new numbering (a new epoch), so an id
/// from its earlier life gets the reset event, never a wrong replay.
///
/// # Locks
///
/// The map of keys is locked only to find, create or drop a key; delivery to the key's
/// subscribers happens after that lock is released. The key type's `Hash`, `Eq`, `Clone`
/// and `Drop` run while the map is locked (as in any shared map): keep them plain.
///
/// # Example
///
/// Per-user streams in axum: each user's connection subscribes to that user's key, and a
/// route sends to one user.
///
/// ```
/// use axum::{body::Body, extract::Path, routing::post, Router};
/// use http::Request;
/// use http_body_util::BodyExt;
/// use tower::ServiceExt;
/// use tower_eventsource::{Broadcast, Connection, EventSourceService, KeyedBroadcast};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Each user keeps the last 100 events for replay.
/// let hub: KeyedBroadcast<String> = KeyedBroadcast::new(Broadcast::builder().history(100));
///
/// let events = EventSourceService::new({
///     let hub = hub.clone();
///     move |conn: Connection, req: Request<Body>| {
///         // Stands in for your authentication: take the user from what it verified.
///         let user = req.headers().get("x-user").and_then(|v| v.to_str().ok()).map(str::to_owned);
///         let hub = hub.clone();
///         async move {
///             if let Some(user) = user {
///                 hub.subscribe(&user, &conn).await; // replays what this browser missed
///             }
///         } // the hub keeps the stream open
///     }
/// });
/// let app: Router = Router::new().route_service("/events", events).route(
///     "/notify/{user}",
///     post({
///         let hub = hub.clone();
///         move |Path(user): Path<String>, text: String| async move {
///             let _ = hub.send(&user, text).await;
///         }
///     }),
/// );
///
/// let alice = Request::get("/events").header("x-user", "alice").body(Body::empty()).unwrap();
/// let stream = app.clone().oneshot(alice).await.unwrap();
/// // The handler runs in its own task: wait until it has subscribed.
/// while hub.key_stats("alice").is_none_or(|s| s.subscribers == 0) {
///     tokio::task::yield_now().await;
/// }
/// for (user, text) in [("bob", "for bob"), ("alice", "for alice")] {
///     let post = Request::post(format!("/notify/{user}")).body(Body::from(text)).unwrap();
///     app.clone().oneshot(post).await.unwrap();
/// }
/// hub.close_all(); // ends the streams, so that the body can be read to its end
/// let body = stream.into_body().collect().await.unwrap().to_bytes();
/// let body = String::from_utf8(body.to_vec()).unwrap();
/// assert!(body.starts_with("data: for alice\nid: "), "{body}");
/// # }
/// ```
pub struct KeyedBroadcast<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    settings: Arc<Settings>,
    history: bool,
    linger: Duration,
    backend: Option<Arc<dyn Backend>>,
    /// The name a backend knows a key by; set with the backend.
    name: Option<fn(&K) -> String>,
    /// The topic of every key, made on the first `subscribe_all`.
    all: OnceLock<Arc<Topic>>,
    map: Mutex<Map<K>>,
}

struct Map<K> {
    keys: HashMap<K, Slot>,
    /// Each key once, with its slot's serial, in the order the keys are checked. An entry
    /// whose key was dropped (or dropped and created again) by other means is skipped.
    queue: VecDeque<(K, u64)>,
    next_serial: u64,
    created: u64,
    dropped: u64,
    /// The counters of the dropped keys.
    retired: BroadcastStats,
}

struct Slot {
    /// Cloned out of the map for each call: a count above one means a call is using it.
    topic: Arc<Topic>,
    serial: u64,
    /// When a check first found the key without open subscribers; `None` while subscribed.
    idle_since: Option<Instant>,
    last_event: Option<Instant>,
}

/// Counters of a [`KeyedBroadcast`] on this server, from [`KeyedBroadcast::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyedBroadcastStats {
    /// Keys that exist on this server now.
    pub keys: usize,
    /// Keys created since the hub was built.
    pub keys_created: u64,
    /// Keys dropped since the hub was built.
    pub keys_dropped: u64,
    /// The counters of every key and of [`subscribe_all`](KeyedBroadcast::subscribe_all)
    /// added up: subscriptions now (a connection subscribed to two keys counts twice), and
    /// the events, deliveries, disconnects, skips and resets since the hub was built, those
    /// of dropped keys included; with the backend's own counters.
    pub totals: BroadcastStats,
}

/// Builds a [`KeyedBroadcast`]; from [`KeyedBroadcast::builder`].
#[must_use]
pub struct KeyedBroadcastBuilder<K> {
    template: BroadcastBuilder,
    linger: Duration,
    name: Option<fn(&K) -> String>,
    key: PhantomData<fn() -> K>,
}

impl<K> KeyedBroadcastBuilder<K>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
{
    /// How long a key with a history is kept after its last subscriber left or its last
    /// event, whichever is later (see [When keys come and go](KeyedBroadcast#when-keys-come-and-go)).
    /// Default: 5 minutes. Keys without history do not linger.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    pub(crate) fn with_backend(
        mut self,
        backend: Arc<dyn Connector>,
        name: fn(&K) -> String,
    ) -> Self {
        self.template = self.template.with_backend(backend);
        self.name = Some(name);
        self
    }

    /// The hub. It never waits: a backend connects in the background (see
    /// [`KeyedBroadcast::ready`]).
    pub fn build(self) -> KeyedBroadcast<K> {
        let settings = self.template.settings(self.linger);
        let backend = self
            .template
            .backend
            .as_ref()
            .map(|connector| connector.start(Arc::clone(&settings), true));
        KeyedBroadcast {
            inner: Arc::new(Inner {
                history: self.template.has_history(),
                settings,
                linger: self.linger,
                backend,
                name: self.name,
                all: OnceLock::new(),
                map: Mutex::new(Map {
                    keys: HashMap::new(),
                    queue: VecDeque::new(),
                    next_serial: 0,
                    created: 0,
                    dropped: 0,
                    retired: BroadcastStats::default(),
                }),
            }),
        }
    }
}

impl<K> KeyedBroadcast<K>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
{
    /// An in-process hub whose keys are built from `template`, with the default linger.
    pub fn new(template: BroadcastBuilder) -> Self {
        Self::builder(template).build()
    }

    /// A builder, to set the linger or the backend.
    ///
    /// A backend is set on this builder ([`KeyedBroadcastBuilder::redis`]), where the key
    /// type's names are known; a template that already has one builds a hub whose
    /// [`ready`](Self::ready) says so and whose sends fail.
    pub fn builder(template: BroadcastBuilder) -> KeyedBroadcastBuilder<K> {
        KeyedBroadcastBuilder {
            template,
            linger: DEFAULT_LINGER,
            name: None,
            key: PhantomData,
        }
    }

    /// Whether the hub's backend can be reached and accepts this hub; always `Ok` in-process.
    /// See [`Broadcast::ready`](crate::Broadcast::ready).
    ///
    /// # Errors
    ///
    /// What stands in the way.
    pub async fn ready(&self) -> Result<(), BackendError> {
        match &self.inner.backend {
            None => Ok(()),
            Some(_) if self.inner.name.is_none() => Err(unnamed()),
            Some(backend) => backend.ready().await,
        }
    }

    /// The name the backend knows `key` by.
    fn name(&self, key: &K) -> Result<String, BackendError> {
        self.inner.name.map(|name| name(key)).ok_or_else(unnamed)
    }

    /// Subscribes `conn` to `key`, creating the key if needed, after replaying what the
    /// connection missed since its `Last-Event-ID`; see
    /// [`Broadcast::subscribe`](crate::Broadcast::subscribe).
    ///
    /// Subscribing a connection to a key it is already subscribed to does nothing and returns
    /// [`Resume::AlreadySubscribed`]. A connection may be subscribed to several keys.
    pub async fn subscribe<Q>(&self, key: &Q, conn: &Connection) -> Resume
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.subscribe_from(key, conn, conn.last_event_id()).await
    }

    /// Like [`subscribe`](Self::subscribe), resuming after `cursor` instead of the
    /// connection's `Last-Event-ID`; see
    /// [`Broadcast::subscribe_from`](crate::Broadcast::subscribe_from).
    pub async fn subscribe_from<Q>(
        &self,
        key: &Q,
        conn: &Connection,
        cursor: Option<&str>,
    ) -> Resume
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let name = match &self.inner.backend {
            None => None,
            Some(_) => match self.name(&key.to_owned()) {
                Ok(name) => Some(name),
                Err(_) => {
                    conn.close();
                    return Resume::Unavailable;
                }
            },
        };
        let now = Instant::now();
        let mut map = self.lock();
        let dropped = map.check(CHECKS_PER_CALL, now, &self.inner);
        let topic = match map.keys.get_mut(key) {
            Some(slot) => {
                slot.idle_since = None;
                Arc::clone(&slot.topic)
            }
            // A stream that has ended is not worth a new key.
            None if conn.is_closed() => {
                drop(map);
                return Resume::Ended;
            }
            None => {
                let topic = self.new_topic();
                if let (Some(backend), Some(name)) = (&self.inner.backend, &name) {
                    backend.attach(Some(name), &topic);
                }
                map.insert(key.to_owned(), Arc::clone(&topic), None);
                topic
            }
        };
        drop(map);
        drop(dropped);
        let backend = self.inner.backend.as_deref();
        let resume = subscribe_topic(&topic, backend, name.as_deref(), conn, cursor).await;
        if resume == Resume::Ended {
            drop(topic);
            self.drop_if_unwanted(key);
        }
        resume
    }

    /// Subscribes `conn` to every key's events (an admin dashboard): each send to any key
    /// reaches it too, in one order, with resume and the reset event as for one key. Its ids
    /// number the events of all keys together, so they differ from the ids the same events
    /// have for their key's subscribers.
    pub async fn subscribe_all(&self, conn: &Connection) -> Resume {
        self.subscribe_all_from(conn, conn.last_event_id()).await
    }

    /// Like [`subscribe_all`](Self::subscribe_all), resuming after `cursor`.
    pub async fn subscribe_all_from(&self, conn: &Connection, cursor: Option<&str>) -> Resume {
        let topic = self.all();
        subscribe_topic(topic, self.inner.backend.as_deref(), None, conn, cursor).await
    }

    fn all(&self) -> &Arc<Topic> {
        self.inner.all.get_or_init(|| {
            let topic = self.new_topic();
            if let Some(backend) = &self.inner.backend {
                backend.attach(None, &topic);
            }
            topic
        })
    }

    fn new_topic(&self) -> Arc<Topic> {
        let settings = Arc::clone(&self.inner.settings);
        Arc::new(match self.inner.backend {
            Some(_) => Topic::fed(settings),
            None => Topic::local(settings),
        })
    }

    /// Sends `event` to the subscribers of `key` (and of [every key](Self::subscribe_all)),
    /// and says which id it has for `key`; see [`Broadcast::send`](crate::Broadcast::send).
    ///
    /// In-process with a history, the key is created if needed and keeps the event for
    /// replay. Without one, a send to a key that does not exist reaches no one and creates
    /// nothing.
    ///
    /// # Errors
    ///
    /// Those of [`Broadcast::send`](crate::Broadcast::send); nothing is sent and no key is
    /// created.
    pub async fn send<Q>(&self, key: &Q, event: impl Into<Event>) -> Result<Sent, SendError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.send_with(key, None, event.into()).await
    }

    /// Like [`send`](Self::send), storing the event at most once for `idempotency_key` within
    /// the idempotency lifetime; see
    /// [`Broadcast::send_idempotent`](crate::Broadcast::send_idempotent). Idempotency keys
    /// are per key: the same one used for two keys sends to both.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn send_idempotent<Q>(
        &self,
        key: &Q,
        idempotency_key: &str,
        event: impl Into<Event>,
    ) -> Result<Sent, SendError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.send_with(key, Some(idempotency_key), event.into())
            .await
    }

    async fn send_with<Q>(
        &self,
        key: &Q,
        idempotency: Option<&str>,
        event: Event,
    ) -> Result<Sent, SendError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        event.validate()?;
        if let Some(backend) = &self.inner.backend {
            let name = self.name(&key.to_owned()).map_err(SendError::NotStored)?;
            return backend.send(Some(&name), idempotency, event).await;
        }
        let now = Instant::now();
        let mut map = self.lock();
        let dropped = map.check(CHECKS_PER_CALL, now, &self.inner);
        let topic = match map.keys.get_mut(key) {
            Some(slot) => {
                slot.last_event = Some(now);
                Some(Arc::clone(&slot.topic))
            }
            None if !self.inner.history => None,
            None => {
                let topic = self.new_topic();
                map.insert(key.to_owned(), Arc::clone(&topic), Some(now));
                Some(topic)
            }
        };
        drop(map);
        drop(dropped);
        if let Some(all) = self.inner.all.get() {
            all.send(event.clone());
        }
        let Some(topic) = topic else {
            return Ok(Sent {
                id: event.last_id().map(Box::from),
                reached: Some(0),
            });
        };
        let sent = match idempotency {
            Some(idempotency) => topic.send_idempotent(idempotency, event),
            None => topic.send(event),
        };
        if sent.reached == Some(0) && !self.inner.history {
            drop(topic);
            self.drop_if_unwanted(key);
        }
        Ok(sent)
    }

    /// The latest kept events of `key` (at most `count`), oldest first; see
    /// [`Broadcast::recent`](crate::Broadcast::recent).
    ///
    /// # Errors
    ///
    /// When the backend cannot be reached.
    pub async fn recent<Q>(&self, key: &Q, count: usize) -> Result<Vec<HistoryEntry>, BackendError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(backend) = &self.inner.backend {
            let name = self.name(&key.to_owned())?;
            return backend.recent(Some(&name), count).await;
        }
        let topic = self.lock().keys.get(key).map(|slot| Arc::clone(&slot.topic));
        Ok(topic.map(|topic| topic.recent(count)).unwrap_or_default())
    }

    /// The counters of `key` on this server, or `None` when the key does not exist here.
    /// Does not create it.
    ///
    /// Also a way to wait, in a test, until a handler has subscribed a connection.
    pub fn key_stats<Q>(&self, key: &Q) -> Option<BroadcastStats>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let topic = self
            .lock()
            .keys
            .get(key)
            .map(|slot| Arc::clone(&slot.topic))?;
        Some(topic.stats())
    }

    /// The hub's counters on this server. Checks every key first, dropping those no longer
    /// wanted.
    pub fn stats(&self) -> KeyedBroadcastStats {
        let now = Instant::now();
        let mut map = self.lock();
        let everything = map.queue.len();
        let dropped = map.check(everything, now, &self.inner);
        let topics: Vec<_> = map
            .keys
            .values()
            .map(|slot| Arc::clone(&slot.topic))
            .collect();
        let mut stats = KeyedBroadcastStats {
            keys: map.keys.len(),
            keys_created: map.created,
            keys_dropped: map.dropped,
            totals: map.retired,
        };
        drop(map);
        drop(dropped);
        for topic in topics.iter().chain(self.inner.all.get()) {
            stats.totals.add(topic.stats());
        }
        if let Some(backend) = &self.inner.backend {
            backend.add_stats(&mut stats.totals);
        }
        stats
    }

    /// Closes every subscriber's stream of every key on this server once what is queued has
    /// been sent. Keys then go as described in
    /// [When keys come and go](KeyedBroadcast#when-keys-come-and-go).
    pub fn close_all(&self) {
        let topics: Vec<_> = self
            .lock()
            .keys
            .values()
            .map(|slot| Arc::clone(&slot.topic))
            .collect();
        for topic in topics.iter().chain(self.inner.all.get()) {
            topic.close_all();
        }
    }

    /// Drops `key` at once if no call uses it and it is no longer wanted.
    fn drop_if_unwanted<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = Instant::now();
        let mut map = self.lock();
        let map = &mut *map;
        let unwanted = map
            .keys
            .get_mut(key)
            .is_some_and(|slot| slot.unwanted(now, &self.inner));
        let removed = unwanted
            .then(|| map.keys.remove_entry(key))
            .flatten()
            .inspect(|(_, slot)| map.retire(slot));
        drop(removed);
    }

    fn lock(&self) -> MutexGuard<'_, Map<K>> {
        // Under the lock only the key's own `Hash`, `Eq` or `Clone` could panic; the map then
        // holds at worst a queue entry without its key, which the checks skip.
        self.inner
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn unnamed() -> BackendError {
    BackendError::new(
        "the keyed hub's backend was set on its template: set it with \
         KeyedBroadcastBuilder::redis, which names the keys",
        None,
    )
}

impl<K> Map<K>
where
    K: Eq + Hash + Clone,
{
    /// Checks up to `entries` entries of the queue, dropping the keys no longer wanted, and
    /// hands them back to be freed once the lock is released.
    fn check(&mut self, entries: usize, now: Instant, inner: &Inner<K>) -> Vec<(K, Slot)> {
        let mut dropped = Vec::new();
        for _ in 0..entries {
            let Some((key, serial)) = self.queue.pop_front() else {
                break;
            };
            let Some(slot) = self.keys.get_mut(&key) else {
                continue;
            };
            if slot.serial != serial {
                continue;
            }
            if !slot.unwanted(now, inner) {
                self.queue.push_back((key, serial));
                continue;
            }
            if let Some((key, slot)) = self.keys.remove_entry(&key) {
                self.retire(&slot);
                dropped.push((key, slot));
            }
        }
        dropped
    }

    fn insert(&mut self, key: K, topic: Arc<Topic>, last_event: Option<Instant>) {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.created += 1;
        self.queue.push_back((key.clone(), serial));
        let slot = Slot {
            topic,
            serial,
            idle_since: last_event,
            last_event,
        };
        self.keys.insert(key, slot);
    }

    /// Counts a dropped key and keeps its counters.
    fn retire(&mut self, slot: &Slot) {
        self.retired.add(slot.topic.stats());
        self.dropped += 1;
    }
}

impl Slot {
    /// Whether the key can be dropped now: no call is using it, no open connection is
    /// subscribed, and without history at once, with one after the linger.
    fn unwanted<K>(&mut self, now: Instant, inner: &Inner<K>) -> bool {
        if Arc::strong_count(&self.topic) > 1 {
            return false;
        }
        if self.topic.has_open_subscribers() {
            self.idle_since = None;
            return false;
        }
        let idle_since = *self.idle_since.get_or_insert(now);
        if !inner.history {
            return true;
        }
        let since = self
            .last_event
            .map_or(idle_since, |last| last.max(idle_since));
        now.saturating_duration_since(since) >= inner.linger
    }
}

impl<K> Clone for KeyedBroadcast<K> {
    fn clone(&self) -> Self {
        KeyedBroadcast {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> fmt::Debug for KeyedBroadcast<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = match self.inner.map.lock() {
            Ok(map) => map.keys.len(),
            Err(poisoned) => poisoned.into_inner().keys.len(),
        };
        f.debug_struct("KeyedBroadcast")
            .field("backend", &self.inner.backend.as_ref().map(|b| b.name()))
            .field("linger", &self.inner.linger)
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

impl<K> fmt::Debug for KeyedBroadcastBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBroadcastBuilder")
            .field("template", &self.template)
            .field("linger", &self.linger)
            .finish()
    }
}
