//! Keyed fan-out: [`KeyedBroadcast`] keeps one [`Broadcast`] per key (a user, a room, a
//! topic), created on first use and dropped when it is no longer wanted.

use crate::{
    broadcast::Sent, Broadcast, BroadcastBuilder, BroadcastStats, Connection, EncodeError, Event,
    Resume,
};
use std::{
    collections::{HashMap, VecDeque},
    fmt,
    hash::Hash,
    marker::PhantomData,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};
use tokio::time::Instant;

/// How long a key with a history is kept without subscribers and without events.
const DEFAULT_LINGER: Duration = Duration::from_secs(300);

/// How many entries of the check queue each call looks at.
const CHECKS_PER_CALL: usize = 4;

/// Many hubs under one roof: each key (a user, a room, a topic) has its own [`Broadcast`],
/// created when the key is first used and dropped when no one needs it any more.
///
/// Every key behaves like a `Broadcast` built from the template given to
/// [`new`](Self::new): its own subscribers, history, replay on reconnect, reset event and
/// slow-client policy. Cloning is cheap: clones share the keys.
///
/// # When keys come and go
///
/// - [`subscribe`](Self::subscribe) creates the key if it does not exist.
/// - [`send`](Self::send) creates it only when the template has a history (the event is kept
///   for replay); without a history, a send to a key that does not exist reaches no one and
///   creates nothing.
/// - A key **without history** is dropped once it has no open subscriber.
/// - A key **with a history** is dropped once it has had no open subscriber and no event for
///   the linger time ([`KeyedBroadcastBuilder::linger`]), so that a browser that reconnects
///   within it still resumes exactly.
///
/// The hub notices that the last subscriber of a key has gone when it checks the key, not at
/// the instant the client leaves, and counts the linger from then: a key is kept at least the
/// linger time after its last subscriber left or its last event, whichever is later. Keys
/// are checked a few at a time on each call (`subscribe`, `send`), in turn, so the work is
/// bounded per call and a key that is no longer wanted goes within a bounded number of calls;
/// [`stats`](Self::stats) checks every key. Time is tokio's clock
/// ([`tokio::time::Instant`]).
///
/// # Ids
///
/// With a history, each key assigns ids like a `Broadcast`. When a key is dropped and later
/// created again, the new hub assigns ids above every id the hub assigned to any dropped key,
/// so an id from the dropped key is never found in the new history: a browser that
/// reconnects with it gets the reset event, never a wrong replay. Ids you set yourself must
/// likewise never repeat within a key, across its drops too.
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
/// route publishes to one user.
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
/// let hub: KeyedBroadcast<String> =
///     KeyedBroadcast::new(Broadcast::builder().history(100).first_id(1));
///
/// let events = EventSourceService::new({
///     let hub = hub.clone();
///     move |conn: Connection, req: Request<Body>| {
///         // Stands in for your authentication: take the user from what it verified.
///         let user = req.headers().get("x-user").and_then(|v| v.to_str().ok());
///         if let Some(user) = user {
///             hub.subscribe(&user.to_owned(), &conn); // replays what this browser missed
///         }
///         async {} // the hub keeps the stream open
///     }
/// });
/// let app: Router = Router::new().route_service("/events", events).route(
///     "/notify/{user}",
///     post({
///         let hub = hub.clone();
///         move |Path(user): Path<String>, text: String| async move {
///             let _ = hub.send(&user, text);
///         }
///     }),
/// );
///
/// let alice = Request::get("/events").header("x-user", "alice").body(Body::empty()).unwrap();
/// let stream = app.clone().oneshot(alice).await.unwrap();
/// // The handler runs in its own task: wait until it has subscribed.
/// while hub.key_stats(&"alice".to_owned()).is_none_or(|s| s.subscribers == 0) {
///     tokio::task::yield_now().await;
/// }
/// for (user, text) in [("bob", "for bob"), ("alice", "for alice")] {
///     let post = Request::post(format!("/notify/{user}")).body(Body::from(text)).unwrap();
///     app.clone().oneshot(post).await.unwrap();
/// }
/// hub.close_all(); // ends the streams, so that the body can be read to its end
/// let body = stream.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(body, "data: for alice\nid: 1\n\n");
/// # }
/// ```
pub struct KeyedBroadcast<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    template: BroadcastBuilder,
    history: bool,
    linger: Duration,
    map: Mutex<Map<K>>,
}

struct Map<K> {
    keys: HashMap<K, Slot>,
    /// Each key once, with its slot's serial, in the order the keys are checked. An entry
    /// whose key was dropped (or dropped and created again) by other means is skipped.
    queue: VecDeque<(K, u64)>,
    next_serial: u64,
    /// Every id that a dropped key's hub assigned is below this.
    id_floor: u64,
    created: u64,
    dropped: u64,
    /// The counters of the dropped keys.
    retired: BroadcastStats,
}

struct Slot {
    /// Cloned out of the map for each call: a count above one means a call is using it.
    hub: Arc<Broadcast>,
    serial: u64,
    /// When a check first found the key without open subscribers; `None` while subscribed.
    idle_since: Option<Instant>,
    last_event: Option<Instant>,
}

/// Counters of a [`KeyedBroadcast`], from [`KeyedBroadcast::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyedBroadcastStats {
    /// Keys that exist now.
    pub keys: usize,
    /// Keys created since the hub was built.
    pub keys_created: u64,
    /// Keys dropped since the hub was built.
    pub keys_dropped: u64,
    /// The counters of every key added up: subscriptions now (a connection subscribed to two
    /// keys counts twice), and the events, deliveries, disconnects, skips and resets since the
    /// hub was built, those of dropped keys included.
    pub totals: BroadcastStats,
}

/// Builds a [`KeyedBroadcast`]; from [`KeyedBroadcast::builder`].
#[must_use]
pub struct KeyedBroadcastBuilder<K> {
    template: BroadcastBuilder,
    linger: Duration,
    key: PhantomData<fn() -> K>,
}

impl<K> KeyedBroadcastBuilder<K>
where
    K: Eq + Hash + Clone + Send + Sync,
{
    /// How long a key with a history is kept after its last subscriber left or its last
    /// event, whichever is later (see [When keys come and go](KeyedBroadcast#when-keys-come-and-go)).
    /// Default: 5 minutes. Keys without history do not linger.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The hub.
    pub fn build(self) -> KeyedBroadcast<K> {
        KeyedBroadcast {
            inner: Arc::new(Inner {
                history: self.template.has_history(),
                template: self.template,
                linger: self.linger,
                map: Mutex::new(Map {
                    keys: HashMap::new(),
                    queue: VecDeque::new(),
                    next_serial: 0,
                    id_floor: 0,
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
    K: Eq + Hash + Clone + Send + Sync,
{
    /// A hub whose keys are built from `template`, with the default linger.
    pub fn new(template: BroadcastBuilder) -> Self {
        Self::builder(template).build()
    }

    /// A builder, to set the linger.
    pub fn builder(template: BroadcastBuilder) -> KeyedBroadcastBuilder<K> {
        KeyedBroadcastBuilder {
            template,
            linger: DEFAULT_LINGER,
            key: PhantomData,
        }
    }

    /// Subscribes `conn` to `key`, creating the key if needed, after replaying what the
    /// connection missed since its `Last-Event-ID`; see [`Broadcast::subscribe`].
    ///
    /// Subscribing a connection to a key it is already subscribed to does nothing and returns
    /// [`Resume::AlreadySubscribed`]. A connection may be subscribed to several keys.
    pub fn subscribe(&self, key: &K, conn: &Connection) -> Resume {
        self.subscribe_from(key, conn, conn.last_event_id())
    }

    /// Like [`subscribe`](Self::subscribe), resuming after `cursor` instead of the
    /// connection's `Last-Event-ID`; see [`Broadcast::subscribe_from`].
    pub fn subscribe_from(&self, key: &K, conn: &Connection, cursor: Option<&str>) -> Resume {
        let now = Instant::now();
        let mut map = self.lock();
        let dropped = map.check(CHECKS_PER_CALL, now, &self.inner);
        let hub = match map.keys.get_mut(key) {
            Some(slot) => {
                slot.idle_since = None;
                Arc::clone(&slot.hub)
            }
            // A stream that has ended is not worth a new key.
            None if conn.is_closed() => {
                drop(map);
                return Resume::Ended;
            }
            None => {
                let hub = Arc::new(map.new_hub(&self.inner.template));
                map.insert(key.clone(), Arc::clone(&hub), None);
                hub
            }
        };
        drop(map);
        drop(dropped);
        let resume = hub.subscribe_from(conn, cursor);
        if resume == Resume::Ended {
            drop(hub);
            self.drop_if_unwanted(key);
        }
        resume
    }

    /// Sends `event` to the subscribers of `key`, and says which id it has and how many
    /// subscribers it reached; see [`Broadcast::send`].
    ///
    /// With a history, the key is created if needed and keeps the event for replay. Without
    /// one, a send to a key that does not exist reaches no one and creates nothing.
    ///
    /// # Errors
    ///
    /// Those of [`Broadcast::send`]; nothing is sent and no key is created.
    pub fn send(&self, key: &K, event: impl Into<Event>) -> Result<Sent, EncodeError> {
        let event = event.into();
        let now = Instant::now();
        let mut map = self.lock();
        let dropped = map.check(CHECKS_PER_CALL, now, &self.inner);
        let hub = match map.keys.get_mut(key) {
            Some(slot) => {
                slot.last_event = Some(now);
                Arc::clone(&slot.hub)
            }
            None if !self.inner.history => {
                drop(map);
                event.validate()?;
                return Ok(Sent {
                    id: event.last_id().map(Box::from),
                    reached: 0,
                });
            }
            None => {
                // A new hub has no subscriber: sending to it only fills its history, and
                // an event it refuses creates no key.
                let hub = map.new_hub(&self.inner.template);
                let sent = hub.send(event);
                if sent.is_ok() {
                    map.insert(key.clone(), Arc::new(hub), Some(now));
                }
                drop(map);
                return sent;
            }
        };
        drop(map);
        drop(dropped);
        let sent = hub.send(event)?;
        if sent.reached == 0 && !self.inner.history {
            drop(hub);
            self.drop_if_unwanted(key);
        }
        Ok(sent)
    }

    /// The counters of `key`, or `None` when the key does not exist. Does not create it.
    ///
    /// Also a way to wait, in a test, until a handler has subscribed a connection.
    pub fn key_stats(&self, key: &K) -> Option<BroadcastStats> {
        let hub = self
            .lock()
            .keys
            .get(key)
            .map(|slot| Arc::clone(&slot.hub))?;
        Some(hub.stats())
    }

    /// The hub's counters. Checks every key first, dropping those no longer wanted.
    pub fn stats(&self) -> KeyedBroadcastStats {
        let now = Instant::now();
        let mut map = self.lock();
        let everything = map.queue.len();
        let dropped = map.check(everything, now, &self.inner);
        let hubs: Vec<_> = map
            .keys
            .values()
            .map(|slot| Arc::clone(&slot.hub))
            .collect();
        let mut stats = KeyedBroadcastStats {
            keys: map.keys.len(),
            keys_created: map.created,
            keys_dropped: map.dropped,
            totals: map.retired,
        };
        drop(map);
        drop(dropped);
        for hub in hubs {
            add(&mut stats.totals, hub.stats());
        }
        stats
    }

    /// Closes every subscriber's stream of every key once what is queued has been sent; see
    /// [`Broadcast::close_all`]. Keys then go as described in
    /// [When keys come and go](KeyedBroadcast#when-keys-come-and-go).
    pub fn close_all(&self) {
        let hubs: Vec<_> = self
            .lock()
            .keys
            .values()
            .map(|slot| Arc::clone(&slot.hub))
            .collect();
        for hub in hubs {
            hub.close_all();
        }
    }

    /// Drops `key` at once if no call uses it and it is no longer wanted.
    fn drop_if_unwanted(&self, key: &K) {
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
            .inspect(|(_, slot)| map.retire(slot, &self.inner));
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
                self.retire(&slot, inner);
                dropped.push((key, slot));
            }
        }
        dropped
    }

    fn new_hub(&self, template: &BroadcastBuilder) -> Broadcast {
        match self.id_floor {
            0 => template.clone().build(),
            floor => template.clone().ids_after(floor).build(),
        }
    }

    fn insert(&mut self, key: K, hub: Arc<Broadcast>, last_event: Option<Instant>) {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.created += 1;
        self.queue.push_back((key.clone(), serial));
        let slot = Slot {
            hub,
            serial,
            idle_since: last_event,
            last_event,
        };
        self.keys.insert(key, slot);
    }

    /// Counts a dropped key and keeps what must outlive it.
    fn retire(&mut self, slot: &Slot, inner: &Inner<K>) {
        if inner.history {
            self.id_floor = self.id_floor.max(slot.hub.next_id());
        }
        add(&mut self.retired, slot.hub.stats());
        self.dropped += 1;
    }
}

impl Slot {
    /// Whether the key can be dropped now: no call is using it, no open connection is
    /// subscribed, and without history at once, with one after the linger.
    fn unwanted<K>(&mut self, now: Instant, inner: &Inner<K>) -> bool {
        if Arc::strong_count(&self.hub) > 1 {
            return false;
        }
        if self.hub.has_open_subscribers() {
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

/// Adds `more` to `totals`; every field is named, so a new counter cannot be forgotten.
fn add(totals: &mut BroadcastStats, more: BroadcastStats) {
    let BroadcastStats {
        subscribers,
        events_sent,
        deliveries,
        slow_disconnects,
        events_skipped,
        resets,
    } = more;
    totals.subscribers += subscribers;
    totals.events_sent += events_sent;
    totals.deliveries += deliveries;
    totals.slow_disconnects += slow_disconnects;
    totals.events_skipped += events_skipped;
    totals.resets += resets;
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
            .field("template", &self.inner.template)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{client, ready};
    use tokio::time::advance;

    const LINGER: Duration = Duration::from_secs(60);

    fn with_history() -> KeyedBroadcast<&'static str> {
        KeyedBroadcast::builder(Broadcast::builder().history(10).first_id(1))
            .linger(LINGER)
            .build()
    }

    fn without_history() -> KeyedBroadcast<&'static str> {
        KeyedBroadcast::new(Broadcast::builder())
    }

    /// Keys and queue entries held now, without the full check `stats` makes.
    fn held<K: Eq + Hash + Clone + Send + Sync>(hub: &KeyedBroadcast<K>) -> (usize, usize) {
        let map = hub.lock();
        (map.keys.len(), map.queue.len())
    }

    #[tokio::test]
    async fn each_key_delivers_to_its_own_subscribers_only() {
        let hub = without_history();
        let (alice, mut alice_body) = client(16, None);
        let (bob, mut bob_body) = client(16, None);
        assert_eq!(hub.subscribe(&"alice", &alice), Resume::Live);
        assert_eq!(hub.subscribe(&"bob", &bob), Resume::Live);
        assert_eq!(hub.send(&"alice", "a1").unwrap().reached(), 1);
        assert_eq!(hub.send(&"bob", "b1").unwrap().reached(), 1);
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
        assert_eq!(hub.subscribe(&"room", &conn), Resume::Live);
        assert_eq!(hub.subscribe(&"room", &conn), Resume::AlreadySubscribed);
        // Another key is another subscription.
        assert_eq!(hub.subscribe(&"other", &conn), Resume::Live);
        hub.send(&"room", "once").unwrap();
        hub.send(&"other", "too").unwrap();
        assert_eq!(ready(&mut body), "data: once\n\ndata: too\n\n");
        assert_eq!(hub.key_stats(&"room").unwrap().subscribers, 1);
    }

    #[tokio::test]
    async fn replay_and_reset_are_per_key() {
        let hub = with_history();
        for text in ["a1", "a2", "a3"] {
            hub.send(&"a", text).unwrap();
        }
        hub.send(&"b", "b1").unwrap();
        let (conn, mut body) = client(16, Some("1"));
        assert_eq!(hub.subscribe(&"a", &conn), Resume::Replayed(2));
        assert_eq!(ready(&mut body), "data: a2\nid: 2\n\ndata: a3\nid: 3\n\n");
        // Key b has its own ids: "3" is not one of them.
        let (conn, mut body) = client(16, Some("3"));
        assert_eq!(hub.subscribe(&"b", &conn), Resume::Reset);
        assert_eq!(ready(&mut body), "event: reset\ndata: \nid: 1\n\n");
    }

    #[tokio::test]
    async fn a_send_to_an_unknown_key_without_history_creates_nothing() {
        let hub = without_history();
        let sent = hub.send(&"nobody", Event::new().id("7").data("x")).unwrap();
        assert_eq!((sent.id(), sent.reached()), (Some("7"), 0));
        assert_eq!(
            hub.send(&"nobody", Event::new().event("x")),
            Err(EncodeError::EventNameWithoutData)
        );
        assert_eq!(held(&hub), (0, 0));
        let stats = hub.stats();
        assert_eq!((stats.keys, stats.keys_created), (0, 0));
    }

    #[tokio::test]
    async fn a_send_with_history_creates_the_key_unless_the_event_is_refused() {
        let hub = with_history();
        assert_eq!(
            hub.send(&"k", Event::new().event("x")),
            Err(EncodeError::EventNameWithoutData)
        );
        assert_eq!(held(&hub), (0, 0));
        assert_eq!(hub.send(&"k", "kept").unwrap().id(), Some("1"));
        let (conn, mut body) = client(16, Some("0"));
        assert_eq!(hub.subscribe(&"k", &conn), Resume::Replayed(1));
        assert_eq!(ready(&mut body), "data: kept\nid: 1\n\n");
        assert_eq!(hub.stats().keys_created, 1);
    }

    #[tokio::test]
    async fn a_key_without_history_goes_with_its_last_subscriber() {
        let hub = without_history();
        let (conn, body) = client(16, None);
        hub.subscribe(&"k", &conn);
        assert_eq!(hub.send(&"k", "x").unwrap().reached(), 1);
        drop(body);
        // The check at the start of the next call drops it.
        hub.send(&"other", "y").unwrap();
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
            hub.subscribe(&key, conn);
        }
        let (conn, body) = client(16, None);
        hub.subscribe(&0, &conn);
        drop(body);
        assert_eq!(hub.send(&0, "y").unwrap().reached(), 0);
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
        assert_eq!(hub.subscribe(&"k", &conn), Resume::Ended);
        assert_eq!(held(&hub), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_with_history_lingers_after_its_last_subscriber_left() {
        let hub = with_history();
        let (conn, body) = client(16, None);
        hub.subscribe(&"k", &conn);
        hub.send(&"k", "x").unwrap();
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
        hub.send(&"k", "x").unwrap();
        advance(LINGER - Duration::from_secs(1)).await;
        hub.send(&"k", "y").unwrap();
        advance(LINGER - Duration::from_secs(1)).await;
        assert_eq!(hub.stats().keys, 1);
        advance(Duration::from_secs(2)).await;
        assert_eq!(hub.stats().keys, 0);
        assert_eq!(hub.stats().keys_dropped, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscribed_key_is_kept_however_long() {
        let hub = with_history();
        let (conn, _body) = client(16, None);
        hub.subscribe(&"k", &conn);
        advance(LINGER * 10).await;
        assert_eq!(hub.stats().keys, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recreated_key_answers_an_old_id_with_the_reset_event() {
        let hub = with_history();
        let (conn, body) = client(16, None);
        hub.subscribe(&"k", &conn);
        for text in ["1", "2", "3"] {
            hub.send(&"k", text).unwrap();
        }
        drop(body);
        hub.stats();
        advance(LINGER + Duration::from_secs(1)).await;
        assert_eq!(hub.stats().keys_dropped, 1);
        // The key comes back with new events; it never assigns ids the dropped one did.
        for text in ["4", "5", "6", "7"] {
            hub.send(&"k", text).unwrap();
        }
        for old in ["1", "2", "3"] {
            let (conn, mut body) = client(16, Some(old));
            assert_eq!(hub.subscribe(&"k", &conn), Resume::Reset, "old id {old}");
            let reset = ready(&mut body);
            assert!(reset.starts_with("event: reset\n"), "{reset}");
            // Resuming from the reset's id misses nothing after it.
            let newest = reset.rsplit("id: ").next().unwrap().trim_end().to_owned();
            hub.send(&"k", "next").unwrap();
            let (again, mut body) = client(16, Some(&newest));
            assert!(matches!(hub.subscribe(&"k", &again), Resume::Replayed(1)));
            assert!(ready(&mut body).starts_with("data: next\n"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_churned_keys_leave_the_hub_small() {
        for hub in [without_history(), with_history()] {
            let mut most = (0, 0);
            for i in 0..10_000u32 {
                let key: &'static str = Box::leak(i.to_string().into_boxed_str());
                let (conn, body) = client(16, None);
                hub.subscribe(&key, &conn);
                hub.send(&key, "x").unwrap();
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
}
