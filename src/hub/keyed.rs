//! Keyed fan-out: [`KeyedBroadcast`] keeps one topic per key (a user, a room, an order),
//! created on first use and dropped when it is no longer wanted, and one for all keys.

use super::{
    backend::{Backend, Connector},
    observe_send, subscribe_topic,
    topic::{Records, Topic},
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
/// (`KeyedBroadcastBuilder::redis`, feature `redis`), with the same
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
    backend: Option<Arc<dyn Backend>>,
    /// The name a backend knows a key by; set with the backend.
    name: Option<fn(&K) -> String>,
    /// The topic of every key, made on the first `subscribe_all`.
    all: OnceLock<Arc<Topic>>,
    map: Mutex<Map<K>>,
    /// Held across a send to a key and to every key's topic, so that both get sends in one
    /// order.
    order: Mutex<()>,
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
    /// The idempotency records of keys without a topic (dropped, or never made: a key without
    /// history that no one follows), so that a repeat within the idempotency lifetime is
    /// still known whatever happened to its key.
    records: HashMap<K, Records>,
    /// Forget expired records when `records` has this many keys.
    records_prune_at: usize,
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

    #[allow(dead_code, reason = "used by the backends behind features")]
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
        let settings = self.template.settings(self.linger, true);
        let backend = self
            .template
            .backend
            .as_ref()
            .map(|connector| connector.start(Arc::clone(&settings), true));
        KeyedBroadcast {
            inner: Arc::new(Inner {
                settings,
                backend,
                name: self.name,
                all: OnceLock::new(),
                order: Mutex::new(()),
                map: Mutex::new(Map {
                    keys: HashMap::new(),
                    queue: VecDeque::new(),
                    next_serial: 0,
                    created: 0,
                    dropped: 0,
                    retired: BroadcastStats::default(),
                    records: HashMap::new(),
                    records_prune_at: 64,
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
    /// A backend is set on this builder (`KeyedBroadcastBuilder::redis`, feature `redis`),
    /// where the key type's names are known; a template that already has one builds a hub whose
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
        // A stream that has ended is not worth a new key.
        let Some(topic) = self.subscribed_topic(key, conn, name.as_deref()) else {
            return Resume::Ended;
        };
        let backend = self.inner.backend.as_deref();
        let resume = subscribe_topic(&topic, backend, name.as_deref(), conn, cursor).await;
        if resume == Resume::Ended {
            drop(topic);
            self.drop_if_unwanted(key);
        }
        resume
    }

    /// The topic of `key`, created (and attached to the backend as `name`) unless `conn` has
    /// ended.
    fn subscribed_topic<Q>(
        &self,
        key: &Q,
        conn: &Connection,
        name: Option<&str>,
    ) -> Option<Arc<Topic>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = Instant::now();
        let mut map = self.lock();
        let dropped = map.check(CHECKS_PER_CALL, now, &self.inner);
        let topic = match map.keys.get_mut(key) {
            Some(slot) => {
                slot.idle_since = None;
                Arc::clone(&slot.topic)
            }
            None if conn.is_closed() => return None,
            None => {
                let topic = self.new_topic();
                if let (Some(backend), Some(name)) = (&self.inner.backend, name) {
                    backend.attach(Some(name), &topic);
                }
                map.insert(key.to_owned(), Arc::clone(&topic), None, &self.inner);
                topic
            }
        };
        drop(map);
        drop(dropped);
        Some(topic)
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
        let settings = &self.inner.settings;
        if let Some(backend) = &self.inner.backend {
            let send = async {
                let name = self.name(&key.to_owned()).map_err(SendError::NotStored)?;
                backend.send(Some(&name), idempotency, event).await
            };
            return observe_send(settings, true, send).await;
        }
        observe_send(settings, false, async {
            self.send_here(key, idempotency, event)
        })
        .await
    }

    /// Sends `event` in-process.
    fn send_here<Q>(
        &self,
        key: &Q,
        idempotency: Option<&str>,
        event: Event,
    ) -> Result<Sent, SendError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = Instant::now();
        let mut map = self.lock();
        let dropped = map.check(CHECKS_PER_CALL, now, &self.inner);
        let topic = match map.keys.get_mut(key) {
            Some(slot) => {
                slot.last_event = Some(now);
                Some(Arc::clone(&slot.topic))
            }
            None if !self.inner.has_history() => {
                // No topic to keep the record: the map keeps it.
                if let Some(idempotency) = idempotency {
                    let until = now + self.inner.settings.idempotency_ttl;
                    let id = event.last_id().map(Box::from);
                    if let Some(id) =
                        map.repeat_or_record(key.to_owned(), idempotency, id, now, until)
                    {
                        return Ok(Sent {
                            id,
                            reached: Some(0),
                            repeated: true,
                        });
                    }
                }
                None
            }
            None => {
                let topic = self.new_topic();
                map.insert(key.to_owned(), Arc::clone(&topic), Some(now), &self.inner);
                Some(topic)
            }
        };
        drop(map);
        drop(dropped);
        let all = self.inner.all.get();
        let Some(topic) = topic else {
            let id = event.last_id().map(Box::from);
            if let Some(all) = all {
                all.send(event);
            }
            return Ok(Sent {
                id,
                reached: Some(0),
                repeated: false,
            });
        };
        let Some(all) = all else {
            return Ok(self.send_to(key, topic, idempotency, event).0);
        };
        let _order = self
            .inner
            .order
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (sent, repeated) = self.send_to(key, topic, idempotency, event.clone());
        if !repeated {
            all.send(event);
        }
        Ok(sent)
    }

    /// Sends `event` to `key`'s topic; whether it was a repeated idempotency key.
    fn send_to<Q>(
        &self,
        key: &Q,
        topic: Arc<Topic>,
        idempotency: Option<&str>,
        event: Event,
    ) -> (Sent, bool)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (sent, repeated) = match idempotency {
            Some(idempotency) => topic.send_idempotent(idempotency, event),
            None => (topic.send(event), false),
        };
        if sent.reached == Some(0) && !self.inner.has_history() {
            drop(topic);
            self.drop_if_unwanted(key);
        }
        (sent, repeated)
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
        let topic = self
            .lock()
            .keys
            .get(key)
            .map(|slot| Arc::clone(&slot.topic));
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
            .inspect(|(key, slot)| map.retire(key, slot, now, &self.inner));
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

impl<K> Inner<K> {
    fn has_history(&self) -> bool {
        self.settings.history_events > 0
    }
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
                self.retire(&key, &slot, now, inner);
                dropped.push((key, slot));
            }
        }
        dropped
    }

    fn insert(&mut self, key: K, topic: Arc<Topic>, last_event: Option<Instant>, inner: &Inner<K>) {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.created += 1;
        inner.settings.metrics.keys(1.0);
        if let Some(records) = self.records.remove(&key) {
            topic.give_records(records);
        }
        self.queue.push_back((key.clone(), serial));
        let slot = Slot {
            topic,
            serial,
            idle_since: last_event,
            last_event,
        };
        self.keys.insert(key, slot);
    }

    /// Counts a dropped key and keeps its counters and idempotency records.
    fn retire(&mut self, key: &K, slot: &Slot, now: Instant, inner: &Inner<K>) {
        self.retired.add(slot.topic.stats());
        self.dropped += 1;
        inner.settings.metrics.keys(-1.0);
        let records = slot.topic.take_records(now);
        if !records.is_empty() {
            self.keep_records(key.clone(), records, now);
        }
    }

    /// Keeps `records` of `key`, which has no topic, first forgetting the expired ones of
    /// every key when the map has doubled since they were last forgotten.
    fn keep_records(&mut self, key: K, records: Records, now: Instant) {
        if self.records.len() >= self.records_prune_at {
            self.records.retain(|_, records| {
                records.retain(|_, (_, until)| now < *until);
                !records.is_empty()
            });
            self.records_prune_at = (self.records.len() * 2).max(64);
        }
        self.records.entry(key).or_default().extend(records);
    }

    /// The id of a send to `key`, which has no topic, with `idempotency` within its lifetime;
    /// or `None` after recording `id` for it, until `until`.
    fn repeat_or_record(
        &mut self,
        key: K,
        idempotency: &str,
        id: Option<Box<str>>,
        now: Instant,
        until: Instant,
    ) -> Option<Option<Box<str>>> {
        if let Some((id, expires)) = self.records.get(&key).and_then(|r| r.get(idempotency)) {
            if now < *expires {
                return Some(id.clone());
            }
        }
        let record = Records::from([(idempotency.into(), (id, until))]);
        self.keep_records(key, record, now);
        None
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
        if !inner.has_history() {
            return true;
        }
        let since = self
            .last_event
            .map_or(idle_since, |last| last.max(idle_since));
        now.saturating_duration_since(since) >= inner.settings.linger
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
            .field("linger", &self.inner.settings.linger)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        testing::{client, ready},
        Broadcast, EncodeError,
    };
    use std::collections::HashSet;
    use tokio::time::advance;

    const LINGER: Duration = Duration::from_secs(60);

    fn with_history() -> KeyedBroadcast<&'static str> {
        KeyedBroadcast::builder(Broadcast::builder().history(10))
            .linger(LINGER)
            .build()
    }

    fn without_history() -> KeyedBroadcast<&'static str> {
        KeyedBroadcast::new(Broadcast::builder())
    }

    /// Keys and queue entries held now, without the full check `stats` makes.
    fn held<K: Eq + Hash + Clone + Send + Sync + 'static>(
        hub: &KeyedBroadcast<K>,
    ) -> (usize, usize) {
        let map = hub.lock();
        (map.keys.len(), map.queue.len())
    }

    /// The epoch of an id `<epoch>-<number>`: 16 hex digits.
    fn epoch_of(id: &str) -> String {
        let (epoch, number) = id.split_once('-').expect("an id <epoch>-<number>");
        assert_eq!(epoch.len(), 16, "{id}");
        assert!(epoch.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert!(number.parse::<u64>().is_ok(), "{id}");
        epoch.to_owned()
    }

    /// The id a send gave its event.
    async fn send_id<K>(hub: &KeyedBroadcast<K>, key: &K, event: impl Into<Event>) -> String
    where
        K: Eq + Hash + Clone + Send + Sync + 'static,
    {
        let sent = hub.send(key, event).await.expect("a valid event");
        sent.id().expect("an id").to_owned()
    }

    /// The epoch of every key's topic, from `subscribe_all`.
    fn all_epoch<K: 'static>(hub: &KeyedBroadcast<K>) -> String {
        let all = hub.inner.all.get().expect("subscribe_all was called");
        all.position()
            .expect("an in-process topic knows its epoch")
            .0
            .to_string()
    }

    #[tokio::test]
    async fn each_key_delivers_to_its_own_subscribers_only() {
        let hub = without_history();
        let (alice, mut alice_body) = client(16, None);
        let (bob, mut bob_body) = client(16, None);
        assert_eq!(hub.subscribe(&"alice", &alice).await, Resume::Live);
        assert_eq!(hub.subscribe(&"bob", &bob).await, Resume::Live);
        assert_eq!(hub.send(&"alice", "a1").await.unwrap().reached(), Some(1));
        assert_eq!(hub.send(&"bob", "b1").await.unwrap().reached(), Some(1));
        assert_eq!(ready(&mut alice_body), "data: a1\n\n");
        assert_eq!(ready(&mut bob_body), "data: b1\n\n");
        let stats = hub.stats();
        assert_eq!((stats.keys, stats.keys_created), (2, 2));
        assert_eq!(stats.totals.subscribers, 2);
        assert_eq!(stats.totals.events_sent, 2);
    }

    #[tokio::test]
    async fn subscribing_twice_to_a_key_reports_itself_and_delivers_once() {
        let hub = without_history();
        let (conn, mut body) = client(16, None);
        assert_eq!(hub.subscribe(&"room", &conn).await, Resume::Live);
        assert_eq!(
            hub.subscribe(&"room", &conn).await,
            Resume::AlreadySubscribed
        );
        // Another key is another subscription.
        assert_eq!(hub.subscribe(&"other", &conn).await, Resume::Live);
        hub.send(&"room", "once").await.unwrap();
        hub.send(&"other", "too").await.unwrap();
        assert_eq!(ready(&mut body), "data: once\n\ndata: too\n\n");
        assert_eq!(hub.key_stats(&"room").unwrap().subscribers, 1);
    }

    #[tokio::test]
    async fn replay_and_reset_are_per_key() {
        let hub = with_history();
        let a1 = send_id(&hub, &"a", "a1").await;
        let a = epoch_of(&a1);
        assert_eq!(a1, format!("{a}-1"));
        for text in ["a2", "a3"] {
            hub.send(&"a", text).await.unwrap();
        }
        let b1 = send_id(&hub, &"b", "b1").await;
        let b = epoch_of(&b1);
        assert_eq!(b1, format!("{b}-1"));
        assert_ne!(a, b);
        let (conn, mut body) = client(16, Some(&a1));
        assert_eq!(hub.subscribe(&"a", &conn).await, Resume::Replayed(2));
        assert_eq!(
            ready(&mut body),
            format!("data: a2\nid: {a}-2\n\ndata: a3\nid: {a}-3\n\n")
        );
        // Key b has its own ids: a's third is not one of them, nor is a's first, though b
        // has an event numbered 1.
        for cursor in [format!("{a}-3"), a1] {
            let (conn, mut body) = client(16, Some(&cursor));
            assert_eq!(hub.subscribe(&"b", &conn).await, Resume::Reset);
            assert_eq!(
                ready(&mut body),
                format!("event: reset\ndata: \nid: {b}-1\n\n")
            );
        }
    }

    #[tokio::test]
    async fn a_send_to_an_unknown_key_without_history_creates_nothing() {
        let hub = without_history();
        let sent = hub
            .send(&"nobody", Event::new().id("7").data("x"))
            .await
            .unwrap();
        assert_eq!((sent.id(), sent.reached()), (Some("7"), Some(0)));
        let error = hub
            .send(&"nobody", Event::new().event("x"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, SendError::Invalid(EncodeError::EventNameWithoutData)),
            "{error:?}"
        );
        assert_eq!(held(&hub), (0, 0));
        let stats = hub.stats();
        assert_eq!((stats.keys, stats.keys_created), (0, 0));
    }

    #[tokio::test]
    async fn a_send_with_history_creates_the_key_unless_the_event_is_refused() {
        let hub = with_history();
        let error = hub.send(&"k", Event::new().event("x")).await.unwrap_err();
        assert!(
            matches!(error, SendError::Invalid(EncodeError::EventNameWithoutData)),
            "{error:?}"
        );
        assert_eq!(held(&hub), (0, 0));
        let id = send_id(&hub, &"k", "kept").await;
        let e = epoch_of(&id);
        assert_eq!(id, format!("{e}-1"));
        let (conn, mut body) = client(16, Some(&format!("{e}-0")));
        assert_eq!(hub.subscribe(&"k", &conn).await, Resume::Replayed(1));
        assert_eq!(ready(&mut body), format!("data: kept\nid: {e}-1\n\n"));
        assert_eq!(hub.stats().keys_created, 1);
    }

    #[tokio::test]
    async fn an_invalid_event_takes_no_number_of_its_key() {
        let hub = with_history();
        let first = send_id(&hub, &"k", "1").await;
        let e = epoch_of(&first);
        let error = hub.send(&"k", Event::new().event("x")).await.unwrap_err();
        assert!(matches!(error, SendError::Invalid(_)), "{error:?}");
        assert_eq!(send_id(&hub, &"k", "2").await, format!("{e}-2"));
    }

    #[tokio::test]
    async fn a_key_without_history_goes_with_its_last_subscriber() {
        let hub = without_history();
        let (conn, body) = client(16, None);
        hub.subscribe(&"k", &conn).await;
        assert_eq!(hub.send(&"k", "x").await.unwrap().reached(), Some(1));
        drop(body);
        // The check at the start of the next call drops it.
        hub.send(&"other", "y").await.unwrap();
        assert_eq!(held(&hub).0, 0);
        let stats = hub.stats();
        assert_eq!(
            (stats.keys, stats.keys_created, stats.keys_dropped),
            (0, 1, 1)
        );
        // Its counters stay in the totals.
        assert_eq!(stats.totals.events_sent, 1);
        assert_eq!(stats.totals.deliveries, 1);
    }

    #[tokio::test]
    async fn a_send_that_reaches_no_one_drops_a_key_without_history_at_once() {
        let hub: KeyedBroadcast<u32> = KeyedBroadcast::new(Broadcast::builder());
        // Ten busy keys ahead of it in the queue, so the checks do not reach it.
        let busy: Vec<_> = (0..10).map(|_| client(16, None)).collect();
        for (key, (conn, _)) in (1..).zip(&busy) {
            hub.subscribe(&key, conn).await;
        }
        let (conn, body) = client(16, None);
        hub.subscribe(&0, &conn).await;
        drop(body);
        assert_eq!(hub.send(&0, "y").await.unwrap().reached(), Some(0));
        assert_eq!(held(&hub).0, 10);
        let stats = hub.stats();
        assert_eq!((stats.keys, stats.keys_dropped), (10, 1));
        assert_eq!(stats.totals.events_sent, 1);
        assert_eq!(stats.totals.subscribers, 10);
    }

    #[tokio::test]
    async fn a_subscribe_of_an_ended_stream_creates_no_key() {
        let hub = with_history();
        let (conn, body) = client(16, None);
        drop(body);
        assert_eq!(hub.subscribe(&"k", &conn).await, Resume::Ended);
        assert_eq!(held(&hub), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_with_history_lingers_after_its_last_subscriber_left() {
        let hub = with_history();
        let (conn, body) = client(16, None);
        hub.subscribe(&"k", &conn).await;
        hub.send(&"k", "x").await.unwrap();
        advance(Duration::from_secs(30)).await;
        drop(body);
        assert_eq!(hub.stats().keys, 1);
        advance(LINGER - Duration::from_secs(1)).await;
        assert_eq!(hub.stats().keys, 1);
        advance(Duration::from_secs(2)).await;
        let stats = hub.stats();
        assert_eq!(
            (stats.keys, stats.keys_created, stats.keys_dropped),
            (0, 1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_with_history_lingers_after_its_last_event() {
        let hub = with_history();
        hub.send(&"k", "x").await.unwrap();
        advance(LINGER - Duration::from_secs(1)).await;
        hub.send(&"k", "y").await.unwrap();
        advance(LINGER - Duration::from_secs(1)).await;
        assert_eq!(hub.stats().keys, 1);
        advance(Duration::from_secs(2)).await;
        assert_eq!(hub.stats().keys, 0);
        assert_eq!(hub.stats().keys_dropped, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idempotency_key_outlives_its_dropped_key_for_the_idempotency_lifetime() {
        let hub = with_history();
        let first = hub.send_idempotent(&"k", "post-1", "x").await.unwrap();
        advance(LINGER + Duration::from_secs(1)).await;
        assert_eq!(hub.stats().keys_dropped, 1);
        // The key is gone; a retry within the lifetime (1 hour) is still a repeat.
        let (conn, mut body) = client(16, None);
        hub.subscribe(&"k", &conn).await;
        let again = hub.send_idempotent(&"k", "post-1", "x").await.unwrap();
        assert_eq!(again.id(), first.id());
        assert_eq!(again.reached(), Some(0));
        assert_eq!(ready(&mut body), "", "nothing was sent again");
        let other = hub.send_idempotent(&"k", "post-2", "y").await.unwrap();
        assert_ne!(other.id(), first.id());
        assert!(ready(&mut body).starts_with("data: y\n"));
        // After the lifetime the record is gone.
        drop((conn, body));
        advance(Duration::from_secs(3600)).await;
        let late = hub.send_idempotent(&"k", "post-1", "x").await.unwrap();
        assert_ne!(late.id(), first.id());
    }

    #[tokio::test]
    async fn a_key_without_history_or_subscribers_still_knows_its_idempotency_keys() {
        let hub = without_history();
        let (all, mut body) = client(16, None);
        assert_eq!(hub.subscribe_all(&all).await, Resume::Live);
        for _ in 0..2 {
            let sent = hub.send_idempotent(&"nobody", "post-1", "x").await.unwrap();
            assert_eq!(sent.reached(), Some(0));
        }
        assert_eq!(
            ready(&mut body),
            "data: x\n\n",
            "every key's subscriber got it once"
        );
        assert_eq!(hub.stats().keys, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscribed_key_is_kept_however_long() {
        let hub = with_history();
        let (conn, _body) = client(16, None);
        hub.subscribe(&"k", &conn).await;
        advance(LINGER * 10).await;
        assert_eq!(hub.stats().keys, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recreated_key_has_a_new_epoch_so_an_old_id_gets_the_reset_event() {
        let hub = with_history();
        let (conn, body) = client(16, None);
        hub.subscribe(&"k", &conn).await;
        let mut old_ids = Vec::new();
        for text in ["1", "2", "3"] {
            old_ids.push(send_id(&hub, &"k", text).await);
        }
        let old = epoch_of(&old_ids[0]);
        drop(body);
        hub.stats();
        advance(LINGER + Duration::from_secs(1)).await;
        assert_eq!(hub.stats().keys_dropped, 1);
        // The key comes back with new events, numbered from 1 again in a new epoch.
        let first = send_id(&hub, &"k", "4").await;
        let new = epoch_of(&first);
        assert_ne!(new, old);
        assert_eq!(first, format!("{new}-1"));
        for text in ["5", "6", "7"] {
            hub.send(&"k", text).await.unwrap();
        }
        let mut newest = 4;
        for old_id in &old_ids {
            let (conn, mut body) = client(16, Some(old_id));
            assert_eq!(
                hub.subscribe(&"k", &conn).await,
                Resume::Reset,
                "old id {old_id}"
            );
            assert_eq!(
                ready(&mut body),
                format!("event: reset\ndata: \nid: {new}-{newest}\n\n")
            );
            // Resuming from the reset's id misses nothing after it.
            hub.send(&"k", "next").await.unwrap();
            let (again, mut body) = client(16, Some(&format!("{new}-{newest}")));
            newest += 1;
            assert_eq!(hub.subscribe(&"k", &again).await, Resume::Replayed(1));
            assert_eq!(
                ready(&mut body),
                format!("data: next\nid: {new}-{newest}\n\n")
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_churned_keys_leave_the_hub_small() {
        for hub in [without_history(), with_history()] {
            let mut most = (0, 0);
            for i in 0..10_000u32 {
                let key: &'static str = Box::leak(i.to_string().into_boxed_str());
                let (conn, body) = client(16, None);
                hub.subscribe(&key, &conn).await;
                hub.send(&key, "x").await.unwrap();
                drop(body);
                advance(Duration::from_secs(1)).await;
                let (keys, queue) = held(&hub);
                most = (most.0.max(keys), most.1.max(queue));
            }
            // Keys with a history linger 60 s, at one new key per second, plus the few
            // seconds until a check notices that the subscriber left; the others go at once.
            assert!(most.0 <= 100 && most.1 <= 100, "held at most {most:?}");
            let stats = hub.stats();
            assert_eq!(stats.keys_created, 10_000);
            assert_eq!(stats.keys_dropped + stats.keys as u64, 10_000);
        }
    }

    // Guarantees.

    #[tokio::test]
    async fn a_cursor_of_another_key_gets_the_reset_event() {
        let hub: KeyedBroadcast<String> = KeyedBroadcast::new(Broadcast::builder().history(10));
        let keys: Vec<String> = (0..100).map(|i| format!("key-{i}")).collect();
        let mut ids = Vec::new();
        for key in &keys {
            ids.push(send_id(&hub, key, "x").await);
        }
        let epochs: HashSet<String> = ids.iter().map(|id| epoch_of(id)).collect();
        assert_eq!(epochs.len(), 100);
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(ids[i], format!("{}-1", epoch_of(&ids[i])));
            let (own, _body) = client(8, Some(&ids[i]));
            assert_eq!(hub.subscribe(key, &own).await, Resume::Replayed(0));
            let other = &ids[(i + 1) % ids.len()];
            let (conn, mut body) = client(8, Some(other));
            assert_eq!(hub.subscribe(key, &conn).await, Resume::Reset, "{key}");
            assert_eq!(
                ready(&mut body),
                format!("event: reset\ndata: \nid: {}\n\n", ids[i])
            );
        }
    }

    #[tokio::test]
    async fn a_reset_before_a_keys_first_event_carries_number_zero_and_resumes() {
        let hub = with_history();
        let (conn, mut body) = client(16, Some("forged"));
        assert_eq!(hub.subscribe(&"k", &conn).await, Resume::Reset);
        let reset = ready(&mut body);
        let id = reset
            .strip_prefix("event: reset\ndata: \nid: ")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .unwrap_or_else(|| panic!("{reset:?}"));
        let e = epoch_of(id);
        assert_eq!(id, format!("{e}-0"));
        hub.send(&"k", "a").await.unwrap();
        assert_eq!(ready(&mut body), format!("data: a\nid: {e}-1\n\n"));
        let (again, mut body) = client(16, Some(&format!("{e}-0")));
        assert_eq!(hub.subscribe(&"k", &again).await, Resume::Replayed(1));
        assert_eq!(ready(&mut body), format!("data: a\nid: {e}-1\n\n"));
    }

    #[tokio::test]
    async fn the_history_is_a_window_per_key() {
        let hub: KeyedBroadcast<String> = KeyedBroadcast::new(Broadcast::builder().history(100));
        let id = send_id(&hub, &"order-1".to_owned(), "placed").await;
        let e = epoch_of(&id);
        let mut others = Vec::new();
        for i in 0..1500 {
            let key = format!("order-{}", 2 + i % 3);
            let id = send_id(&hub, &key, i.to_string()).await;
            if i < 3 {
                others.push((key, epoch_of(&id)));
            }
        }
        let (conn, mut body) = client(16, Some(&format!("{e}-0")));
        assert_eq!(hub.subscribe("order-1", &conn).await, Resume::Replayed(1));
        assert_eq!(ready(&mut body), format!("data: placed\nid: {e}-1\n\n"));
        // The busy keys each had 500 events: their beginnings are gone, their last 100 kept.
        for (key, epoch) in &others {
            let (conn, mut body) = client(16, Some(&format!("{epoch}-0")));
            assert_eq!(hub.subscribe(key, &conn).await, Resume::Reset);
            assert_eq!(
                ready(&mut body),
                format!("event: reset\ndata: \nid: {epoch}-500\n\n")
            );
            let (conn, _body) = client(16, Some(&format!("{epoch}-400")));
            assert_eq!(hub.subscribe(key, &conn).await, Resume::Replayed(100));
            let (conn, _body) = client(16, Some(&format!("{epoch}-399")));
            assert_eq!(hub.subscribe(key, &conn).await, Resume::Reset);
        }
    }

    #[tokio::test]
    async fn the_same_idempotency_key_for_two_keys_sends_to_both() {
        let hub = with_history();
        let (a, mut a_body) = client(16, None);
        let (b, mut b_body) = client(16, None);
        hub.subscribe(&"a", &a).await;
        hub.subscribe(&"b", &b).await;
        let to_a = hub.send_idempotent(&"a", "idem", "x").await.unwrap();
        let to_b = hub.send_idempotent(&"b", "idem", "x").await.unwrap();
        assert_eq!((to_a.reached(), to_b.reached()), (Some(1), Some(1)));
        let (ea, eb) = (epoch_of(to_a.id().unwrap()), epoch_of(to_b.id().unwrap()));
        assert_eq!(to_a.id(), Some(format!("{ea}-1").as_str()));
        assert_eq!(to_b.id(), Some(format!("{eb}-1").as_str()));
        // A repeat for one key is a repeat for that key only.
        let again = hub.send_idempotent(&"a", "idem", "x").await.unwrap();
        assert_eq!((again.id(), again.reached()), (to_a.id(), Some(0)));
        assert_eq!(ready(&mut a_body), format!("data: x\nid: {ea}-1\n\n"));
        assert_eq!(ready(&mut b_body), format!("data: x\nid: {eb}-1\n\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_keys_idempotency_lifetime_ends_exactly_at_the_ttl() {
        let ttl = Duration::from_secs(30);
        let ms = Duration::from_millis(1);
        let hub: KeyedBroadcast<String> =
            KeyedBroadcast::new(Broadcast::builder().history(10).idempotency_ttl(ttl));
        let (conn, mut body) = client(16, None);
        hub.subscribe("k", &conn).await;
        let first = hub.send_idempotent("k", "idem", "x").await.unwrap();
        let e = epoch_of(first.id().unwrap());
        advance(ttl - ms).await;
        let repeat = hub.send_idempotent("k", "idem", "x").await.unwrap();
        assert_eq!((repeat.id(), repeat.reached()), (first.id(), Some(0)));
        advance(ms).await;
        let again = hub.send_idempotent("k", "idem", "x").await.unwrap();
        assert_eq!(again.id(), Some(format!("{e}-2").as_str()));
        assert_eq!(again.reached(), Some(1));
        assert_eq!(
            ready(&mut body),
            format!("data: x\nid: {e}-1\n\ndata: x\nid: {e}-2\n\n")
        );
    }

    #[tokio::test]
    async fn an_idempotent_repeat_is_not_sent_to_subscribe_all_either() {
        let hub = with_history();
        let (all, mut all_body) = client(16, None);
        assert_eq!(hub.subscribe_all(&all).await, Resume::Live);
        let first = hub.send_idempotent(&"k", "idem", "x").await.unwrap();
        let repeat = hub.send_idempotent(&"k", "idem", "x").await.unwrap();
        assert_eq!((repeat.id(), repeat.reached()), (first.id(), Some(0)));
        let e = all_epoch(&hub);
        assert_eq!(ready(&mut all_body), format!("data: x\nid: {e}-1\n\n"));
    }

    #[tokio::test]
    async fn subscribe_all_gets_every_keys_events_in_send_order_with_its_own_ids() {
        let hub = with_history();
        let (all, mut all_body) = client(16, None);
        let (a, mut a_body) = client(16, None);
        assert_eq!(hub.subscribe_all(&all).await, Resume::Live);
        assert_eq!(hub.subscribe_all(&all).await, Resume::AlreadySubscribed);
        hub.subscribe(&"a", &a).await;
        let a1 = send_id(&hub, &"a", "a1").await;
        let b1 = send_id(&hub, &"b", "b1").await;
        let a2 = send_id(&hub, &"a", "a2").await;
        let c1 = send_id(&hub, &"c", Event::new().event("note").data("c1")).await;
        let (ea, eb, ec) = (epoch_of(&a1), epoch_of(&b1), epoch_of(&c1));
        assert_eq!(
            [a1, b1, a2, c1],
            [
                format!("{ea}-1"),
                format!("{eb}-1"),
                format!("{ea}-2"),
                format!("{ec}-1")
            ]
        );
        let e = all_epoch(&hub);
        assert!(e != ea && e != eb && e != ec);
        assert_eq!(
            ready(&mut all_body),
            format!(
                "data: a1\nid: {e}-1\n\ndata: b1\nid: {e}-2\n\ndata: a2\nid: {e}-3\n\n\
                 event: note\ndata: c1\nid: {e}-4\n\n"
            )
        );
        assert_eq!(
            ready(&mut a_body),
            format!("data: a1\nid: {ea}-1\n\ndata: a2\nid: {ea}-2\n\n")
        );
    }

    #[tokio::test]
    async fn subscribe_all_resumes_exactly_after_one_of_its_ids() {
        let hub = with_history();
        let (first, _first_body) = client(16, None);
        hub.subscribe_all(&first).await;
        for (key, text) in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")] {
            hub.send(&key, text).await.unwrap();
        }
        let e = all_epoch(&hub);
        let (conn, mut body) = client(16, Some(&format!("{e}-2")));
        assert_eq!(hub.subscribe_all(&conn).await, Resume::Replayed(2));
        hub.send(&"b", "5").await.unwrap();
        assert_eq!(
            ready(&mut body),
            format!("data: 3\nid: {e}-3\n\ndata: 4\nid: {e}-4\n\ndata: 5\nid: {e}-5\n\n")
        );
        let (conn, mut body) = client(16, None);
        let cursor = format!("{e}-0");
        assert_eq!(
            hub.subscribe_all_from(&conn, Some(&cursor)).await,
            Resume::Replayed(5)
        );
        assert_eq!(ready(&mut body).matches("data: ").count(), 5);
    }

    #[tokio::test]
    async fn an_unknown_cursor_on_subscribe_all_gets_the_reset_event() {
        let hub = with_history();
        let (conn, mut body) = client(16, Some("forged"));
        assert_eq!(hub.subscribe_all(&conn).await, Resume::Reset);
        let e = all_epoch(&hub);
        assert_eq!(
            ready(&mut body),
            format!("event: reset\ndata: \nid: {e}-0\n\n")
        );
        let key_id = send_id(&hub, &"a", "x").await;
        // A key's id is not an id of every key's stream, though both are numbered 1.
        let (conn, mut body) = client(16, Some(&key_id));
        assert_eq!(hub.subscribe_all(&conn).await, Resume::Reset);
        assert_eq!(
            ready(&mut body),
            format!("event: reset\ndata: \nid: {e}-1\n\n")
        );
        // The reset's id resumes.
        let (conn, mut body) = client(16, Some(&format!("{e}-0")));
        assert_eq!(hub.subscribe_all(&conn).await, Resume::Replayed(1));
        assert_eq!(ready(&mut body), format!("data: x\nid: {e}-1\n\n"));
    }

    #[tokio::test]
    async fn subscribe_all_without_history_gets_events_as_they_are() {
        let hub = without_history();
        let (all, mut body) = client(16, Some("whatever"));
        assert_eq!(hub.subscribe_all(&all).await, Resume::Live);
        // No key has a subscriber: none is created, and every key's stream still gets it.
        let sent = hub.send(&"nobody", "x").await.unwrap();
        assert_eq!((sent.id(), sent.reached()), (None, Some(0)));
        hub.send(&"other", Event::new().id("7").data("y"))
            .await
            .unwrap();
        assert_eq!(ready(&mut body), "data: x\n\nid: 7\ndata: y\n\n");
        assert_eq!(held(&hub), (0, 0));
    }

    #[tokio::test]
    async fn recent_is_per_key() {
        let hub: KeyedBroadcast<String> = KeyedBroadcast::new(Broadcast::builder().history(2));
        let a1 = send_id(&hub, &"a".to_owned(), "a1").await;
        let e = epoch_of(&a1);
        hub.send("b", "b1").await.unwrap();
        hub.send("a", Event::new().event("note").data("a2\nline"))
            .await
            .unwrap();
        hub.send("b", "b2").await.unwrap();
        hub.send("a", "a3").await.unwrap();
        let recent = hub.recent("a", 10).await.unwrap();
        let seen: Vec<_> = recent
            .iter()
            .map(|entry| (entry.id().to_owned(), entry.event(), entry.data()))
            .collect();
        assert_eq!(
            seen,
            [
                (format!("{e}-2"), Some("note"), "a2\nline"),
                (format!("{e}-3"), None, "a3"),
            ]
        );
        let last = hub.recent("a", 1).await.unwrap();
        assert_eq!(last, recent[1..]);
        let b: Vec<_> = hub
            .recent("b", 10)
            .await
            .unwrap()
            .iter()
            .map(|entry| entry.data().to_owned())
            .collect();
        assert_eq!(b, ["b1", "b2"]);
        // An unknown key has nothing, and is not created.
        assert!(hub.recent("nobody", 10).await.unwrap().is_empty());
        assert_eq!(hub.stats().keys_created, 2);
    }

    #[tokio::test]
    async fn recent_is_empty_without_history() {
        let hub = without_history();
        let (conn, _body) = client(16, None);
        hub.subscribe(&"k", &conn).await;
        hub.send(&"k", "x").await.unwrap();
        assert!(hub.recent(&"k", 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn string_keys_take_str_arguments() {
        let hub: KeyedBroadcast<String> = KeyedBroadcast::new(Broadcast::builder().history(10));
        let (conn, mut body) = client(16, None);
        assert_eq!(hub.subscribe("alice", &conn).await, Resume::Live);
        let sent = hub.send("alice", "hi").await.unwrap();
        assert_eq!(sent.reached(), Some(1));
        let id = sent.id().unwrap().to_owned();
        let e = epoch_of(&id);
        let repeat = hub.send_idempotent("alice", "i", "hi").await.unwrap();
        assert_eq!(repeat.id(), Some(format!("{e}-2").as_str()));
        let (again, mut again_body) = client(16, None);
        assert_eq!(
            hub.subscribe_from("alice", &again, Some(&id)).await,
            Resume::Replayed(1)
        );
        assert_eq!(hub.recent("alice", 10).await.unwrap().len(), 2);
        assert_eq!(hub.key_stats("alice").unwrap().subscribers, 2);
        let owned = String::from("alice");
        assert_eq!(hub.send(&owned, "owned").await.unwrap().reached(), Some(2));
        assert_eq!(
            ready(&mut body),
            format!("data: hi\nid: {e}-1\n\ndata: hi\nid: {e}-2\n\ndata: owned\nid: {e}-3\n\n")
        );
        assert_eq!(
            ready(&mut again_body),
            format!("data: hi\nid: {e}-2\n\ndata: owned\nid: {e}-3\n\n")
        );
    }

    #[tokio::test]
    async fn integer_keys_take_references() {
        let hub: KeyedBroadcast<u64> = KeyedBroadcast::new(Broadcast::builder().history(10));
        let (conn, mut body) = client(16, None);
        assert_eq!(hub.subscribe(&42, &conn).await, Resume::Live);
        let sent = hub.send(&42, "x").await.unwrap();
        assert_eq!(sent.reached(), Some(1));
        assert_eq!(hub.send(&7, "y").await.unwrap().reached(), Some(0));
        let e = epoch_of(sent.id().unwrap());
        assert_eq!(ready(&mut body), format!("data: x\nid: {e}-1\n\n"));
        assert_eq!(hub.recent(&42, 10).await.unwrap().len(), 1);
        assert_eq!(hub.key_stats(&42).unwrap().subscribers, 1);
        assert_eq!(hub.key_stats(&7).unwrap().subscribers, 0);
    }

    #[tokio::test]
    async fn key_stats_does_not_create_the_key() {
        let hub = with_history();
        assert!(hub.key_stats(&"k").is_none());
        assert_eq!(held(&hub), (0, 0));
        assert!(hub.ready().await.is_ok());
    }
}
