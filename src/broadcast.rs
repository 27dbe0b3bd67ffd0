//! Fan-out: [`Broadcast`] sends one event to many connections, with replay on reconnect.

use crate::{
    connection::{Connection, Refused},
    event::is_resumable_id,
    EncodeError, Event,
};
use bytes::Bytes;
use futures_core::Stream;
use std::{
    collections::VecDeque,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

/// A hub that sends each event to every subscribed [`Connection`], and replays what a
/// reconnecting browser missed.
///
/// [`send`](Broadcast::send) encodes the event once and hands the same bytes to every
/// subscriber; it never waits for a slow client (see [`SlowClient`]) and forgets clients that
/// have gone. Cloning is cheap: clones share the subscribers and the history. Several
/// `Broadcast` values serve several topics.
///
/// # History and replay
///
/// With a history ([`BroadcastBuilder::history`]), every event gets an id (events without one
/// get the next number of a counter that starts at the microseconds since the Unix epoch when
/// the hub was built, so ids keep increasing across restarts), and the hub keeps the latest
/// events. [`subscribe`](Broadcast::subscribe) reads the connection's
/// [`last_event_id`](Connection::last_event_id):
///
/// - none: the connection gets live events only;
/// - the id of an event in the history (or of the one just before it): the connection first
///   gets exactly the events after it, in order, then live events, with no gap and no
///   duplicate;
/// - any other id (older than the history, from before a restart, or forged): the connection
///   first gets the reset event (see [`BroadcastBuilder::reset_event`]), whose id is the
///   newest id, so the page knows to reload its state and later reconnects resume from there.
///
/// Ids must be unique within a hub: a repeated id resumes from its latest use. The default
/// counter keeps increasing across restarts of one server as long as the clock does not go
/// back; servers behind one load balancer each have their own history and ids, so a browser
/// that reconnects to another one gets the reset event (or, if ids happen to match, a wrong
/// replay): give such servers one hub, or ids from one source.
///
/// ```
/// use http::Request;
/// use tower_eventsource::{Broadcast, Connection, EventSourceService};
///
/// let hub = Broadcast::builder().history(1000).build();
/// let events = EventSourceService::new({
///     let hub = hub.clone();
///     move |conn: Connection, _req: Request<()>| {
///         hub.subscribe(&conn);
///         async {}
///     }
/// });
/// // elsewhere: hub.send("news");
/// # drop(events);
/// ```
#[derive(Clone)]
pub struct Broadcast {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    history_events: usize,
    history_bytes: usize,
    slow_client: SlowClient,
    reset: Event,
}

struct State {
    subscribers: Vec<Subscriber>,
    /// Prune gone subscribers when `subscribe` finds the list this long.
    prune_at: usize,
    history: VecDeque<Entry>,
    history_size: usize,
    /// The id of the event just before the oldest one in `history`.
    before_history: Box<str>,
    next_id: u64,
    stats: BroadcastStats,
}

struct Subscriber {
    conn: Connection,
}

struct Entry {
    id: Box<str>,
    frame: Bytes,
}

/// What [`Broadcast`] does with a subscriber whose buffer is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowClient {
    /// Close its stream once what is queued has been sent. The browser reconnects and, with a
    /// history that still holds what it missed, resumes from its `Last-Event-ID` and loses
    /// nothing; otherwise it gets the reset event.
    #[default]
    Disconnect,
    /// Keep the client and skip the event for it, counting it in
    /// [`BroadcastStats::events_skipped`].
    Skip,
}

/// How [`Broadcast::subscribe`] started a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resume {
    /// No `Last-Event-ID`, or no history: live events only.
    Live,
    /// The connection's `Last-Event-ID` was found; this many missed events were replayed.
    Replayed(usize),
    /// The `Last-Event-ID` is not in the history; the reset event was sent.
    Reset,
    /// The connection's stream had already ended; it was not subscribed.
    Ended,
    /// The connection was already subscribed to this hub: nothing was done, so it still gets
    /// each event once.
    AlreadySubscribed,
}

/// What [`Broadcast::send`] did with an event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sent {
    pub(crate) id: Option<Box<str>>,
    pub(crate) reached: usize,
}

impl Sent {
    /// The event's id: the one it was given, or with a history the one the hub assigned.
    /// `None` for an event without id on a hub without history.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// How many subscribers it was handed to.
    pub fn reached(&self) -> usize {
        self.reached
    }
}

/// Counters of a [`Broadcast`], from [`Broadcast::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BroadcastStats {
    /// Connections subscribed now.
    pub subscribers: usize,
    /// Events sent since the hub was built.
    pub events_sent: u64,
    /// Deliveries: events handed to a subscriber's buffer, replays included.
    pub deliveries: u64,
    /// Subscribers disconnected because their buffer was full ([`SlowClient::Disconnect`]).
    pub slow_disconnects: u64,
    /// Events skipped for subscribers whose buffer was full ([`SlowClient::Skip`]).
    pub events_skipped: u64,
    /// Reconnections whose `Last-Event-ID` was not in the history, answered with the reset
    /// event.
    pub resets: u64,
}

/// Builds a [`Broadcast`]; from [`Broadcast::builder`]. Cloning it gives the same settings,
/// for instance to build the hub of each key of a [`KeyedBroadcast`](crate::KeyedBroadcast).
#[derive(Clone, Debug)]
#[must_use]
pub struct BroadcastBuilder {
    history_events: usize,
    history_bytes: usize,
    slow_client: SlowClient,
    first_id: Option<u64>,
    reset: Event,
}

impl BroadcastBuilder {
    /// Keeps the latest `events` events for replay. Default: 0, no history (no ids are
    /// assigned, nothing is replayed, no reset event is sent).
    pub fn history(mut self, events: usize) -> Self {
        self.history_events = events;
        self
    }

    /// Also bounds the history by the size of the encoded events, in bytes. Default: no bound
    /// beyond [`history`](Self::history).
    pub fn history_bytes(mut self, bytes: usize) -> Self {
        self.history_bytes = bytes;
        self
    }

    /// What to do with a subscriber whose buffer is full. Default: [`SlowClient::Disconnect`].
    pub fn slow_client(mut self, policy: SlowClient) -> Self {
        self.slow_client = policy;
        self
    }

    /// The first id the hub assigns, from 1 to 2<sup>63</sup> (values outside are moved into
    /// that range). Default: the microseconds since the Unix epoch when the hub is built.
    pub fn first_id(mut self, id: u64) -> Self {
        self.first_id = Some(id.clamp(1, 1 << 63));
        self
    }

    /// The event sent to a connection whose `Last-Event-ID` is not in the history; the hub
    /// sets its id. Default: `event: reset` with empty data. Give it a data line: without
    /// one, browsers fire nothing.
    ///
    /// # Errors
    ///
    /// When the event cannot be encoded (see [`EncodeError`]).
    pub fn reset_event(mut self, event: Event) -> Result<Self, EncodeError> {
        event.validate()?;
        self.reset = event;
        Ok(self)
    }

    /// Whether the hubs it builds keep a history (and so assign ids).
    pub(crate) fn has_history(&self) -> bool {
        self.history_events > 0
    }

    /// Makes the first assigned id greater than `floor`, so that the hub never assigns an id
    /// that a dropped hub below `floor` assigned.
    pub(crate) fn ids_after(mut self, floor: u64) -> Self {
        let first = self.first_id.unwrap_or_else(now_micros);
        self.first_id = Some(first.max(floor.saturating_add(1)));
        self
    }

    /// The hub.
    pub fn build(self) -> Broadcast {
        let first_id = self.first_id.unwrap_or_else(now_micros);
        Broadcast {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    subscribers: Vec::new(),
                    prune_at: 64,
                    history: VecDeque::new(),
                    history_size: 0,
                    before_history: first_id.saturating_sub(1).to_string().into(),
                    next_id: first_id,
                    stats: BroadcastStats::default(),
                }),
                history_events: self.history_events,
                history_bytes: self.history_bytes,
                slow_client: self.slow_client,
                reset: self.reset,
            }),
        }
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |since| since.as_micros() as u64)
}

impl Broadcast {
    /// A hub without history, disconnecting slow clients.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a hub with a history or another slow-client policy.
    pub fn builder() -> BroadcastBuilder {
        BroadcastBuilder {
            history_events: 0,
            history_bytes: usize::MAX,
            slow_client: SlowClient::Disconnect,
            first_id: None,
            reset: Event::new().event("reset").data(""),
        }
    }

    /// Subscribes `conn` (the hub keeps a clone), first replaying what it missed since its
    /// `Last-Event-ID`; see [Replay](Broadcast#history-and-replay).
    ///
    /// A replay goes into the connection's buffer past its bound: it is bounded by the history
    /// instead, and shares the history's bytes rather than copying them. Subscribing a
    /// connection that is already subscribed does nothing and returns
    /// [`Resume::AlreadySubscribed`].
    pub fn subscribe(&self, conn: &Connection) -> Resume {
        self.subscribe_from(conn, conn.last_event_id())
    }

    /// Like [`subscribe`](Self::subscribe), resuming after `cursor` instead of the
    /// connection's `Last-Event-ID`.
    ///
    /// For a page that loads what it shows first (`GET /messages`, say) and then opens
    /// `/events?after=<its newest id>`: pass `conn.last_event_id().or(after)`, so that a
    /// reconnecting browser resumes from what it saw last and nothing sent between the two
    /// requests is lost. Like `Last-Event-ID`, the cursor is client input: it is only looked
    /// up in the history. A connection whose `Last-Event-ID` is unusable
    /// ([`Connection::has_unusable_last_event_id`]) gets the reset event whatever the cursor:
    /// it was resuming from something the hub cannot find.
    pub fn subscribe_from(&self, conn: &Connection, cursor: Option<&str>) -> Resume {
        let mut state = self.lock();
        if Self::has_subscriber(&state, conn) {
            return Resume::AlreadySubscribed;
        }
        let unusable = conn.has_unusable_last_event_id();
        let resume = if !self.has_history() || (cursor.is_none() && !unusable) {
            if conn.is_closed() {
                return Resume::Ended;
            }
            Resume::Live
        } else {
            let cursor = cursor.filter(|_| !unusable);
            match cursor.and_then(|cursor| state.find(cursor)) {
                Some(after) => {
                    let frames = state.history.range(after..).map(|e| e.frame.clone());
                    let count = frames.len();
                    if !conn.send_unbounded(frames) {
                        return Resume::Ended;
                    }
                    state.stats.deliveries += count as u64;
                    Resume::Replayed(count)
                }
                None => {
                    if !self.send_reset(&mut state, conn) {
                        return Resume::Ended;
                    }
                    Resume::Reset
                }
            }
        };
        Self::add_subscriber(&mut state, conn);
        resume
    }

    /// Sends `event` to every subscriber, and says which id it has and how many subscribers
    /// it reached.
    ///
    /// The event is encoded once; every subscriber gets the same bytes. With a history, an
    /// event without an id gets the next id, and the event is kept for replay even when no one
    /// is subscribed. Subscribers whose client has gone are forgotten; those whose buffer is
    /// full are handled by the [`SlowClient`] policy. It never waits.
    ///
    /// # Errors
    ///
    /// When the event cannot be encoded, and, with a history, when its id could never come
    /// back in `Last-Event-ID` ([`EncodeError::UnresumableId`]); nothing is sent.
    pub fn send(&self, event: impl Into<Event>) -> Result<Sent, EncodeError> {
        let mut event = event.into();
        event.validate()?;
        let mut state = self.lock();
        let state = &mut *state;
        if !self.has_history() {
            let id = event.last_id().map(Box::from);
            let reached = self.deliver(state, &event.finish());
            return Ok(Sent { id, reached });
        }
        let id: Box<str> = match event.last_id() {
            Some(id) if is_resumable_id(id) => id.into(),
            Some(_) => return Err(EncodeError::UnresumableId),
            None => {
                let id = state.next_id.to_string();
                state.next_id += 1;
                event = event.id(&id);
                id.into()
            }
        };
        let frame = event.finish();
        self.remember(state, id.clone(), frame.clone());
        let reached = self.deliver(state, &frame);
        Ok(Sent {
            id: Some(id),
            reached,
        })
    }

    /// The hub's counters.
    pub fn stats(&self) -> BroadcastStats {
        let mut state = self.lock();
        state.subscribers.retain(|s| !s.conn.is_closed());
        BroadcastStats {
            subscribers: state.subscribers.len(),
            ..state.stats
        }
    }

    /// Closes every subscriber's stream once what is queued has been sent, and forgets them.
    pub fn close_all(&self) {
        let subscribers = std::mem::take(&mut self.lock().subscribers);
        for subscriber in subscribers {
            subscriber.conn.close();
        }
    }

    /// Sends `conn` the reset event with the newest id, and counts it; `false` if its stream
    /// had ended.
    fn send_reset(&self, state: &mut State, conn: &Connection) -> bool {
        let newest = match state.history.back() {
            Some(entry) => &entry.id,
            None => &state.before_history,
        };
        let reset = self.inner.reset.clone().id(newest).finish();
        let sent = conn.send_unbounded([reset]);
        state.stats.resets += u64::from(sent);
        sent
    }

    /// Whether `conn` is subscribed already. Only a connection that has joined some hub is
    /// looked for, newest first.
    fn has_subscriber(state: &State, conn: &Connection) -> bool {
        conn.has_joined_a_hub()
            && state
                .subscribers
                .iter()
                .rev()
                .any(|subscriber| subscriber.conn.is_same_stream(conn))
    }

    /// Keeps a clone of `conn`, first forgetting gone subscribers when the list has doubled
    /// since they were last forgotten.
    fn add_subscriber(state: &mut State, conn: &Connection) {
        if state.subscribers.len() >= state.prune_at {
            state.subscribers.retain(|s| !s.conn.is_closed());
            state.prune_at = (state.subscribers.len() * 2).max(64);
        }
        conn.note_joined_hub();
        state.subscribers.push(Subscriber { conn: conn.clone() });
    }

    fn deliver(&self, state: &mut State, frame: &Bytes) -> usize {
        let mut reached = 0;
        let stats = &mut state.stats;
        let policy = self.inner.slow_client;
        state
            .subscribers
            .retain(|subscriber| match subscriber.conn.try_send(frame.clone()) {
                Ok(()) => {
                    reached += 1;
                    true
                }
                Err((Refused::Full, _)) if policy == SlowClient::Skip => {
                    stats.events_skipped += 1;
                    true
                }
                Err((Refused::Full, _)) => {
                    subscriber.conn.close();
                    stats.slow_disconnects += 1;
                    false
                }
                Err((Refused::Ended, _)) => false,
            });
        stats.events_sent += 1;
        stats.deliveries += reached as u64;
        reached
    }

    fn remember(&self, state: &mut State, id: Box<str>, frame: Bytes) {
        state.history_size += frame.len();
        state.history.push_back(Entry { id, frame });
        while state.history.len() > self.inner.history_events
            || state.history_size > self.inner.history_bytes
        {
            let Some(oldest) = state.history.pop_front() else {
                break;
            };
            state.history_size -= oldest.frame.len();
            state.before_history = oldest.id;
        }
    }

    fn has_history(&self) -> bool {
        self.inner.history_events > 0
    }

    /// Whether an open connection is subscribed; when none is, the closed ones are forgotten.
    /// Usually answered by the first subscriber.
    pub(crate) fn has_open_subscribers(&self) -> bool {
        let mut state = self.lock();
        let open = state.subscribers.iter().any(|s| !s.conn.is_closed());
        if !open {
            state.subscribers.clear();
        }
        open
    }

    /// The id the hub would assign next: every id it assigned is below it.
    pub(crate) fn next_id(&self) -> u64 {
        self.lock().next_id
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across user code, so a poisoned lock still holds a
        // consistent state.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Where the events after `cursor` start in the history, if the hub knows `cursor`: the
    /// latest event with that id, or the one just before the history.
    fn find(&self, cursor: &str) -> Option<usize> {
        self.history
            .iter()
            .rposition(|entry| *entry.id == *cursor)
            .map(|at| at + 1)
            .or_else(|| (*cursor == *self.before_history).then_some(0))
    }
}

/// The history as seen by a hub fed from elsewhere (the `redis` feature): the id just before
/// the oldest kept event, and the kept events' ids, oldest first.
#[cfg(feature = "redis")]
pub(crate) struct Window<'a> {
    state: &'a State,
}

#[cfg(feature = "redis")]
impl Window<'_> {
    /// The id of the event just before the oldest one kept: the history holds every event
    /// sent after it.
    pub(crate) fn before(&self) -> &str {
        &self.state.before_history
    }

    /// How many events are kept.
    pub(crate) fn len(&self) -> usize {
        self.state.history.len()
    }

    /// The id of the kept event at `index`, oldest first.
    pub(crate) fn id(&self, index: usize) -> &str {
        &self.state.history[index].id
    }
}

/// Hooks for hubs whose events and ids come from elsewhere (the `redis` feature).
#[cfg(feature = "redis")]
impl Broadcast {
    /// Forgets the history, which from now on holds what is sent after `before`; with
    /// `close`, also closes every subscriber's stream.
    pub(crate) fn restart_after(&self, before: &str, close: bool) {
        let subscribers = {
            let mut state = self.lock();
            state.history.clear();
            state.history_size = 0;
            state.before_history = before.into();
            if close {
                std::mem::take(&mut state.subscribers)
            } else {
                Vec::new()
            }
        };
        for subscriber in subscribers {
            subscriber.conn.close();
        }
    }

    /// Keeps and delivers `frame`, an event already encoded with `id` as its last id field.
    pub(crate) fn send_frame(&self, id: &str, frame: Bytes) -> usize {
        let mut state = self.lock();
        let state = &mut *state;
        if self.has_history() {
            self.remember(state, id.into(), frame.clone());
        } else {
            state.before_history = id.into();
        }
        self.deliver(state, &frame)
    }

    /// Subscribes `conn` if `plan` finds where it resumes: `plan` returns the frames to replay
    /// first and the index of the first kept event to replay after them. `None` when `plan`
    /// found nothing: nothing was sent and `conn` is not subscribed.
    pub(crate) fn subscribe_with(
        &self,
        conn: &Connection,
        plan: impl FnOnce(&Window<'_>) -> Option<(Vec<Bytes>, usize)>,
    ) -> Option<Resume> {
        let mut state = self.lock();
        if Self::has_subscriber(&state, conn) {
            return Some(Resume::AlreadySubscribed);
        }
        if conn.is_closed() {
            return Some(Resume::Ended);
        }
        let (mut frames, skip) = plan(&Window { state: &state })?;
        frames.extend(state.history.range(skip..).map(|e| e.frame.clone()));
        let count = frames.len();
        if !conn.send_unbounded(frames) {
            return Some(Resume::Ended);
        }
        state.stats.deliveries += count as u64;
        Self::add_subscriber(&mut state, conn);
        Some(Resume::Replayed(count))
    }

    /// Sends `conn` the reset event, with the newest id, and subscribes it.
    pub(crate) fn subscribe_reset(&self, conn: &Connection) -> Resume {
        let mut state = self.lock();
        if Self::has_subscriber(&state, conn) {
            return Resume::AlreadySubscribed;
        }
        if !self.send_reset(&mut state, conn) {
            return Resume::Ended;
        }
        Self::add_subscriber(&mut state, conn);
        Resume::Reset
    }
}

impl Default for Broadcast {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broadcast")
            .field("history_events", &self.inner.history_events)
            .field("history_bytes", &self.inner.history_bytes)
            .field("slow_client", &self.inner.slow_client)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Feeding a hub from a stream.
impl Broadcast {
    /// Sends every item of `stream` to the subscribers, in order, as [`send`](Self::send)
    /// does, until the stream ends.
    ///
    /// The way to serve one source of events (a tokio `broadcast` or `mpsc` receiver, a
    /// database's change feed) to many clients: one task reads the source, and each event is
    /// encoded once and handed to every subscriber's buffer, waking only the clients'
    /// connections. A handler per client that [forwards](Connection::forward) its own receiver
    /// instead encodes every event once per client and wakes its own task for each; keep that
    /// for streams that differ per client. Like `send`, it never waits for a slow client.
    ///
    /// ```
    /// use http::Request;
    /// use tokio_stream::wrappers::ReceiverStream;
    /// use tower_eventsource::{Broadcast, Connection, EventSourceService};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    /// let hub = Broadcast::new();
    /// tokio::spawn({
    ///     let hub = hub.clone();
    ///     async move { hub.forward(ReceiverStream::new(rx)).await }
    /// });
    /// let events = EventSourceService::new(move |conn: Connection, _req: Request<()>| {
    ///     hub.subscribe(&conn);
    ///     async {}
    /// });
    /// // elsewhere: tx.send("news".to_string()).await;
    /// # drop((events, tx));
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The first item `send` refuses (see its errors): nothing of it is sent, and the rest of
    /// `stream` is left unread. `Ok(())` once `stream` has ended.
    pub async fn forward<S>(&self, stream: S) -> Result<(), EncodeError>
    where
        S: Stream,
        S::Item: Into<Event>,
    {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
            self.send(item)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        connection::LastEventId,
        testing::{client, client_with, ready},
    };
    use http_body::Body;
    use std::{
        pin::Pin,
        task::{Context, Poll, Waker},
    };

    fn hub(history: usize) -> Broadcast {
        Broadcast::builder().history(history).first_id(1).build()
    }

    #[test]
    fn events_without_id_get_increasing_ids_with_history() {
        let hub = hub(10);
        let (conn, mut body) = client(8, None);
        assert_eq!(hub.subscribe(&conn), Resume::Live);
        hub.send("a").unwrap();
        hub.send(Event::new().id("mine").data("b")).unwrap();
        hub.send("c").unwrap();
        assert_eq!(
            ready(&mut body),
            "data: a\nid: 1\n\nid: mine\ndata: b\n\ndata: c\nid: 2\n\n"
        );
    }

    #[test]
    fn without_history_events_are_sent_as_they_are() {
        let hub = Broadcast::new();
        let (conn, mut body) = client(8, Some("3"));
        assert_eq!(hub.subscribe(&conn), Resume::Live);
        assert_eq!(hub.send("a").map(|sent| sent.reached()), Ok(1));
        assert_eq!(ready(&mut body), "data: a\n\n");
    }

    #[test]
    fn replay_after_a_known_id_is_exact_and_comes_before_live_events() {
        let hub = hub(10);
        for text in ["1", "2", "3", "4", "5"] {
            hub.send(text).unwrap();
        }
        let (conn, mut body) = client(8, Some("2"));
        assert_eq!(hub.subscribe(&conn), Resume::Replayed(3));
        hub.send("6").unwrap();
        assert_eq!(
            ready(&mut body),
            "data: 3\nid: 3\n\ndata: 4\nid: 4\n\ndata: 5\nid: 5\n\ndata: 6\nid: 6\n\n"
        );
    }

    #[test]
    fn replay_from_the_newest_id_sends_nothing_old() {
        let hub = hub(10);
        hub.send("1").unwrap();
        let (conn, mut body) = client(8, Some("1"));
        assert_eq!(hub.subscribe(&conn), Resume::Replayed(0));
        assert_eq!(ready(&mut body), "");
    }

    #[test]
    fn subscribe_from_resumes_after_the_given_cursor() {
        let hub = hub(10);
        for text in ["1", "2", "3"] {
            hub.send(text).unwrap();
        }
        let (conn, mut body) = client(8, None);
        assert_eq!(hub.subscribe_from(&conn, Some("2")), Resume::Replayed(1));
        assert_eq!(ready(&mut body), "data: 3\nid: 3\n\n");
    }

    #[test]
    fn replay_finds_user_ids() {
        let hub = hub(10);
        hub.send(Event::new().id("x").data("1")).unwrap();
        hub.send(Event::new().id("y").data("2")).unwrap();
        let (conn, mut body) = client(8, Some("x"));
        assert_eq!(hub.subscribe(&conn), Resume::Replayed(1));
        assert_eq!(ready(&mut body), "id: y\ndata: 2\n\n");
    }

    #[test]
    fn the_id_just_before_the_history_replays_all_of_it() {
        let hub = hub(3);
        for text in ["1", "2", "3", "4", "5"] {
            hub.send(text).unwrap();
        }
        let (conn, mut body) = client(8, Some("2"));
        assert_eq!(hub.subscribe(&conn), Resume::Replayed(3));
        assert_eq!(
            ready(&mut body),
            "data: 3\nid: 3\n\ndata: 4\nid: 4\n\ndata: 5\nid: 5\n\n"
        );
    }

    #[test]
    fn a_cursor_older_than_the_history_gets_the_reset_event_with_the_newest_id() {
        let hub = hub(3);
        for text in ["1", "2", "3", "4", "5"] {
            hub.send(text).unwrap();
        }
        let (conn, mut body) = client(8, Some("1"));
        assert_eq!(hub.subscribe(&conn), Resume::Reset);
        hub.send("6").unwrap();
        assert_eq!(
            ready(&mut body),
            "event: reset\ndata: \nid: 5\n\ndata: 6\nid: 6\n\n"
        );
        assert_eq!(hub.stats().resets, 1);
    }

    #[test]
    fn an_unknown_cursor_on_an_empty_history_resets_to_before_the_first_id() {
        let hub = Broadcast::builder().history(3).first_id(100).build();
        let (conn, mut body) = client(8, Some("forged\u{e9}"));
        assert_eq!(hub.subscribe(&conn), Resume::Reset);
        assert_eq!(ready(&mut body), "event: reset\ndata: \nid: 99\n\n");
        // Reconnecting with the id from the reset event resumes without a gap.
        hub.send("a").unwrap();
        let (again, mut body) = client(8, Some("99"));
        assert_eq!(hub.subscribe(&again), Resume::Replayed(1));
        assert_eq!(ready(&mut body), "data: a\nid: 100\n\n");
    }

    #[test]
    fn the_reset_event_can_be_chosen() {
        let hub = Broadcast::builder()
            .history(3)
            .first_id(1)
            .reset_event(Event::new().event("reload").data("state is gone"))
            .unwrap()
            .build();
        let (conn, mut body) = client(8, Some("7"));
        assert_eq!(hub.subscribe(&conn), Resume::Reset);
        assert_eq!(
            ready(&mut body),
            "event: reload\ndata: state is gone\nid: 0\n\n"
        );
    }

    #[test]
    fn an_invalid_reset_event_is_refused() {
        let builder = Broadcast::builder().reset_event(Event::new().event("reload"));
        assert_eq!(builder.unwrap_err(), EncodeError::EventNameWithoutData);
    }

    #[test]
    fn a_replay_longer_than_the_buffer_leaves_room_for_live_events() {
        let hub = hub(100);
        for i in 1..=20 {
            hub.send(i.to_string()).unwrap();
        }
        let (conn, mut body) = client(4, Some("1"));
        assert_eq!(hub.subscribe(&conn), Resume::Replayed(19));
        assert_eq!(hub.send("live").map(|sent| sent.reached()), Ok(1));
        assert!(!conn.is_closed());
        let received = ready(&mut body);
        assert_eq!(received.matches("data: ").count(), 20);
        assert!(received.ends_with("data: live\nid: 21\n\n"));
        assert_eq!(hub.stats().slow_disconnects, 0);
    }

    #[test]
    fn first_id_zero_does_not_collide_with_the_cursor_before_the_history() {
        let hub = Broadcast::builder().history(10).first_id(0).build();
        hub.send("a").unwrap();
        let (conn, mut body) = client(4, Some("1"));
        assert_eq!(hub.subscribe(&conn), Resume::Replayed(0));
        assert_eq!(ready(&mut body), "");
        let (conn, mut body) = client(4, Some("0"));
        assert_eq!(hub.subscribe(&conn), Resume::Replayed(1));
        assert_eq!(ready(&mut body), "data: a\nid: 1\n\n");
    }

    #[test]
    fn the_history_byte_budget_evicts_old_events() {
        // Each event "data: N\nid: N\n\n" is 15 bytes.
        let hub = Broadcast::builder()
            .history(100)
            .history_bytes(30)
            .first_id(1)
            .build();
        for text in ["1", "2", "3", "4"] {
            hub.send(text).unwrap();
        }
        let (old, _body) = client(8, Some("1"));
        assert_eq!(hub.subscribe(&old), Resume::Reset);
        let (recent, mut body) = client(8, Some("2"));
        assert_eq!(hub.subscribe(&recent), Resume::Replayed(2));
        assert_eq!(ready(&mut body), "data: 3\nid: 3\n\ndata: 4\nid: 4\n\n");
    }

    #[test]
    fn a_stalled_subscriber_is_disconnected_while_a_thousand_others_get_every_event() {
        let hub = hub(100);
        let (stalled, mut stalled_body) = client(4, None);
        hub.subscribe(&stalled);
        let mut others: Vec<_> = (0..1000).map(|_| client(16, None)).collect();
        for (conn, _) in &others {
            hub.subscribe(conn);
        }
        let mut expected = String::new();
        for i in 1..=10 {
            let reached = hub.send(i.to_string()).unwrap().reached();
            assert_eq!(reached, if i <= 4 { 1001 } else { 1000 });
            expected.push_str(&format!("data: {i}\nid: {i}\n\n"));
        }
        for (_, body) in &mut others {
            assert_eq!(ready(body), expected);
        }
        assert!(stalled.is_closed());
        // What was queued before the disconnect still goes out, then the stream ends.
        let queued: String = (1..=4).map(|i| format!("data: {i}\nid: {i}\n\n")).collect();
        assert_eq!(ready(&mut stalled_body), queued);
        assert!(stalled_body.is_end_stream());
        let stats = hub.stats();
        assert_eq!(stats.slow_disconnects, 1);
        assert_eq!(stats.subscribers, 1000);
        assert_eq!(stats.events_sent, 10);
        assert_eq!(stats.deliveries, 10_004);
    }

    #[test]
    fn with_skip_a_stalled_subscriber_misses_counted_events_and_stays() {
        let hub = Broadcast::builder()
            .history(100)
            .first_id(1)
            .slow_client(SlowClient::Skip)
            .build();
        let (stalled, mut stalled_body) = client(4, None);
        hub.subscribe(&stalled);
        let (other, mut other_body) = client(16, None);
        hub.subscribe(&other);
        for i in 1..=10 {
            hub.send(i.to_string()).unwrap();
        }
        assert!(!stalled.is_closed());
        assert_eq!(hub.stats().events_skipped, 6);
        assert_eq!(ready(&mut other_body).matches("data:").count(), 10);
        assert_eq!(ready(&mut stalled_body).matches("data:").count(), 4);
        hub.send("11").unwrap();
        assert_eq!(ready(&mut stalled_body), "data: 11\nid: 11\n\n");
    }

    #[test]
    fn send_encodes_once_for_ten_thousand_subscribers() {
        let hub = hub(10);
        let mut clients: Vec<_> = (0..10_000).map(|_| client(4, None)).collect();
        for (conn, _) in &clients {
            hub.subscribe(conn);
        }
        assert_eq!(hub.send("shared").map(|sent| sent.reached()), Ok(10_000));
        let mut cx = Context::from_waker(Waker::noop());
        let mut pointers = std::collections::HashSet::new();
        for (_, body) in &mut clients {
            let Poll::Ready(Some(Ok(frame))) = Pin::new(body).poll_frame(&mut cx) else {
                panic!("no frame queued");
            };
            let data = frame.into_data().expect("data frame");
            assert_eq!(&data[..], b"data: shared\nid: 1\n\n");
            pointers.insert(data.as_ptr());
        }
        assert_eq!(pointers.len(), 1, "every subscriber got the same bytes");
    }

    #[test]
    fn gone_subscribers_are_forgotten() {
        let hub = Broadcast::new();
        let (a, body_a) = client(4, None);
        let (b, _body_b) = client(4, None);
        hub.subscribe(&a);
        hub.subscribe(&b);
        drop(body_a);
        assert_eq!(hub.send("x").map(|sent| sent.reached()), Ok(1));
        assert_eq!(hub.stats().subscribers, 1);
    }

    #[test]
    fn subscribers_of_an_idle_hub_are_pruned_as_they_go() {
        let hub = Broadcast::new();
        for _ in 0..1000 {
            let (conn, body) = client(4, None);
            hub.subscribe(&conn);
            drop(body);
        }
        assert!(hub.lock().subscribers.len() <= 128);
    }

    #[test]
    fn invalid_events_are_not_sent_and_take_no_id() {
        let hub = hub(10);
        let (conn, mut body) = client(4, None);
        hub.subscribe(&conn);
        assert_eq!(
            hub.send(Event::new().event("x")),
            Err(EncodeError::EventNameWithoutData)
        );
        hub.send("ok").unwrap();
        assert_eq!(ready(&mut body), "data: ok\nid: 1\n\n");
    }

    #[test]
    fn close_all_ends_every_stream_after_its_queue() {
        let hub = Broadcast::new();
        let (conn, mut body) = client(4, None);
        hub.subscribe(&conn);
        hub.send("bye").unwrap();
        hub.close_all();
        assert_eq!(ready(&mut body), "data: bye\n\n");
        assert!(body.is_end_stream());
        assert_eq!(hub.stats().subscribers, 0);
    }
    #[test]
    fn subscribing_a_connection_twice_is_a_no_op_that_says_so() {
        let hub = hub(10);
        let (conn, mut body) = client(8, None);
        assert_eq!(hub.subscribe(&conn), Resume::Live);
        assert_eq!(hub.subscribe(&conn.clone()), Resume::AlreadySubscribed);
        assert_eq!(hub.send("once").map(|sent| sent.reached()), Ok(1));
        assert_eq!(ready(&mut body), "data: once\nid: 1\n\n");
        // Another hub is another subscription.
        let other = hub_with_first_id(100);
        assert_eq!(other.subscribe(&conn), Resume::Live);
        assert_eq!(other.send("two").map(|sent| sent.reached()), Ok(1));
    }

    fn hub_with_first_id(first: u64) -> Broadcast {
        Broadcast::builder().history(10).first_id(first).build()
    }

    #[test]
    fn an_unusable_last_event_id_gets_the_reset_event_whatever_the_cursor() {
        let hub = hub(10);
        hub.send("missed").unwrap();
        let (conn, mut body) = client_with(8, LastEventId::unusable());
        assert_eq!(hub.subscribe_from(&conn, Some("0")), Resume::Reset);
        assert_eq!(ready(&mut body), "event: reset\ndata: \nid: 1\n\n");
        // Without a history there is nothing to resume: live events.
        let (conn, _body) = client_with(8, LastEventId::unusable());
        assert_eq!(Broadcast::new().subscribe(&conn), Resume::Live);
    }

    #[test]
    fn replays_share_the_history_bytes_instead_of_copying_them() {
        // Events larger than a body frame are handed over one by one, so the body's frames are
        // the queued bytes themselves.
        let hub = hub(10);
        let big = "x".repeat(70 * 1024);
        for _ in 0..3 {
            hub.send(big.as_str()).unwrap();
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut seen: Vec<Vec<*const u8>> = Vec::new();
        let clients: Vec<_> = (0..200).map(|_| client(1, Some("0"))).collect();
        for (conn, _) in &clients {
            assert_eq!(hub.subscribe(conn), Resume::Replayed(3));
        }
        for (_, mut body) in clients {
            let mut pointers = Vec::new();
            while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
                pointers.push(frame.into_data().expect("data frame").as_ptr());
            }
            seen.push(pointers);
        }
        assert_eq!(seen[0].len(), 3);
        assert!(seen.iter().all(|pointers| *pointers == seen[0]));
    }

    #[test]
    fn pruning_runs_when_the_list_doubles_since_the_last_prune() {
        let hub = Broadcast::new();
        let live: Vec<_> = (0..100).map(|_| client(4, None)).collect();
        for (conn, _) in &live {
            hub.subscribe(conn);
        }
        let mut lengths = Vec::new();
        for _ in 0..1000 {
            let (conn, body) = client(4, None);
            hub.subscribe(&conn);
            drop(body);
            lengths.push(hub.lock().subscribers.len());
        }
        // 100 live ones: the list grows to twice that, then is pruned back to the live ones,
        // first at 128 (the threshold the live ones left), then every 100 subscribes.
        assert_eq!(lengths.iter().max(), Some(&200));
        assert_eq!(lengths.iter().min(), Some(&101));
        assert_eq!(lengths.iter().filter(|&&len| len == 101).count(), 11);
    }

    #[test]
    fn a_connection_on_several_hubs_is_found_again_on_each() {
        let hubs: Vec<_> = (0..3).map(|_| Broadcast::new()).collect();
        let others: Vec<_> = (0..100).map(|_| client(4, None)).collect();
        let (conn, mut body) = client(4, None);
        for hub in &hubs {
            assert_eq!(hub.subscribe(&conn), Resume::Live);
            for (other, _) in &others {
                assert_eq!(hub.subscribe(other), Resume::Live);
            }
        }
        for hub in &hubs {
            assert_eq!(hub.subscribe(&conn), Resume::AlreadySubscribed);
            assert_eq!(hub.send("x").map(|sent| sent.reached()), Ok(101));
        }
        assert_eq!(ready(&mut body), "data: x\n\n".repeat(3));
    }
}
