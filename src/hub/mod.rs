//! Fan-out: [`Broadcast`] sends one event to many connections, with replay on reconnect, in
//! this process or across servers; [`KeyedBroadcast`] does so per key.
//!
//! Data flows one way: a send goes to the backend (in-process: straight to the topic), the
//! backend feeds each server's topics, and a topic hands the encoded bytes to its
//! subscribers' connections.

mod backend;
mod keyed;
#[cfg(feature = "redis")]
mod redis;
mod topic;

pub use keyed::{KeyedBroadcast, KeyedBroadcastBuilder, KeyedBroadcastStats};

use crate::{
    observe::{BackendKind, HubMetrics, ResumeOutcome},
    Connection, EncodeError, Event,
};
use backend::{Backend, Connector};
use futures_core::Stream;
use std::{fmt, future::Future, sync::Arc, time::Duration};
use topic::Topic;

/// A hub that sends each event to every subscribed [`Connection`], and replays what a
/// reconnecting browser missed; in this process, or shared by every server through a backend
/// such as Redis.
///
/// [`send`](Broadcast::send) encodes the event once and hands the same bytes to every
/// subscriber; it never waits for a slow client (see [`SlowClient`]) and forgets clients that
/// have gone. Cloning is cheap: clones share the subscribers and the history. Several
/// `Broadcast` values serve several topics; [`KeyedBroadcast`] serves one per key.
///
/// ```
/// use http::Request;
/// use tower_eventsource::{Broadcast, Connection, EventSourceService};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let hub = Broadcast::builder().history(1000).build();
/// let events = EventSourceService::new({
///     let hub = hub.clone();
///     move |conn: Connection, _req: Request<()>| {
///         let hub = hub.clone();
///         async move {
///             hub.subscribe(&conn).await; // replays what this browser missed
///         }
///     }
/// });
/// let sent = hub.send("news").await.unwrap();
/// assert!(sent.id().is_some()); // with a history, every event gets an id
/// # drop(events);
/// # }
/// ```
///
/// # Backends
///
/// The backend is chosen on the builder; every other line is the same for each:
///
/// - in-process (the default): `Broadcast::builder().history(1000).build()`;
/// - Redis (feature `redis`): `Broadcast::builder().history(1000).redis(client,
///   "chat").build()`: every server built with the same Redis and name shares the hub, and
///   an event sent on any of them reaches the subscribers of all of them. See
///   `BroadcastBuilder::redis`.
///
/// `build` never waits: a backend connects in the background, and
/// [`ready`](Broadcast::ready) says whether it can be reached, so an application can refuse
/// to start with a clear message.
///
/// # Guarantees
///
/// The same on every backend:
///
/// | | |
/// |---|---|
/// | **Ids** | With a [history](BroadcastBuilder::history), every event gets an id `<epoch>-<number>`: its number counts the hub's (or the key's) events from 1, and its epoch names this numbering. An id set on the event is sent too, before it; the hub's comes last, and is the one the browser keeps. Without a history, events go as they are. |
/// | **Ordering** | Every subscriber gets a hub's (a key's) events in one order, the same on every server. |
/// | **Resume window** | A browser that reconnects with the id of one of the latest `history(n)` events of its hub (its key) gets exactly the events after it, in order, then live events: no gap, no duplicate. With a keyed hub this window is per key, however busy the other keys are. |
/// | **Reset** | Any other id (too old, from another hub or key, from before the history was lost, forged) gets the reset event ([`reset_event`](BroadcastBuilder::reset_event)), once. Its id is the hub's newest, so the next reconnect resumes from there, on any server. The page should reload its state when it sees it. |
/// | **Restarts** | In-process, the history lives as long as the hub: after a restart every old id gets the reset event. On Redis the history lives in Redis and survives restarts of the servers; if Redis loses it, old ids get the reset event. |
/// | **Backend down** | [`send`](Broadcast::send) fails within the [response timeout](BroadcastBuilder::response_timeout) and says whether the event may have been stored; open streams stay open and get what is sent once it is back; a resume that needs the backend closes the stream ([`Resume::Unavailable`]) so the browser retries with its id. |
/// | **Repeats** | [`send_idempotent`](Broadcast::send_idempotent) stores an event at most once per idempotency key within the [idempotency lifetime](BroadcastBuilder::idempotency_ttl), so a retry after an error or a lost reply never duplicates it. |
/// | **Slow clients** | A subscriber whose buffer is full is disconnected or skipped ([`SlowClient`]); events that reach a server together (after an outage, say) take one place in each buffer, so a client that reads is never counted as slow for them. |
#[derive(Clone)]
pub struct Broadcast {
    inner: Arc<Shared>,
}

struct Shared {
    topic: Arc<Topic>,
    backend: Option<Arc<dyn Backend>>,
}

/// The settings every topic of a hub shares.
pub(crate) struct Settings {
    pub(crate) history_events: usize,
    pub(crate) history_bytes: usize,
    pub(crate) slow_client: SlowClient,
    pub(crate) reset: Event,
    pub(crate) idempotency_ttl: Duration,
    #[allow(dead_code, reason = "used by the backends behind features")]
    pub(crate) response_timeout: Duration,
    /// How long a keyed hub keeps a key's history without subscribers and events.
    pub(crate) linger: Duration,
    /// The hub's name in metrics and spans.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) name: Arc<str>,
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) backend: BackendKind,
    pub(crate) metrics: HubMetrics,
}

/// What a hub does with a subscriber whose buffer is full.
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

/// How a subscribe started a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resume {
    /// No `Last-Event-ID`, or no history: live events only.
    Live,
    /// The connection's `Last-Event-ID` was found; this many missed events were replayed.
    Replayed(usize),
    /// The `Last-Event-ID` cannot be resumed from; the reset event was sent.
    Reset,
    /// The connection's stream had already ended; it was not subscribed.
    Ended,
    /// The connection was already subscribed to this hub (this key): nothing was done, so it
    /// still gets each event once.
    AlreadySubscribed,
    /// The backend could not be reached to resume the connection, or this server has not yet
    /// reached it since it started: the stream was closed, so that the browser reconnects
    /// later with the same `Last-Event-ID` and loses nothing.
    Unavailable,
}

/// What a send did with an event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sent {
    pub(crate) id: Option<Box<str>>,
    pub(crate) reached: Option<usize>,
    /// A repeated idempotency key: nothing was sent (for the metrics).
    pub(crate) repeated: bool,
}

impl Sent {
    /// The event's id: with a history, the one the hub gave it (the same on every server);
    /// without one, the id set on the event, if any. For a repeated idempotency key, the id
    /// of the first send.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// How many subscribers it was handed to: known in-process (`0` for a repeated
    /// idempotency key); `None` on a shared backend, where each server delivers the event
    /// when its reader gets it.
    pub fn reached(&self) -> Option<usize> {
        self.reached
    }
}

/// Why a send failed, and whether the event may have been stored all the same.
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// The event cannot be encoded; nothing was stored or sent.
    Invalid(EncodeError),
    /// The backend could not be reached; the event was not stored.
    NotStored(BackendError),
    /// The backend did not confirm the send (it timed out, or the connection broke after the
    /// event was written): the event may have been stored, and then every subscriber gets it.
    /// Send it again with the same idempotency key
    /// ([`send_idempotent`](Broadcast::send_idempotent)) to store it exactly once.
    MaybeStored(BackendError),
}

impl SendError {
    /// Whether the event may have been stored, and so may reach subscribers.
    pub fn may_have_been_stored(&self) -> bool {
        matches!(self, SendError::MaybeStored(_))
    }
}

impl From<EncodeError> for SendError {
    fn from(error: EncodeError) -> Self {
        SendError::Invalid(error)
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Invalid(error) => write!(f, "invalid event: {error}"),
            SendError::NotStored(error) => write!(f, "event not stored: {error}"),
            SendError::MaybeStored(error) => {
                write!(f, "event may or may not have been stored: {error}")
            }
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Invalid(error) => Some(error),
            SendError::NotStored(error) | SendError::MaybeStored(error) => Some(error),
        }
    }
}

/// A hub's backend could not be reached, answered too late, or refused the hub. Its message
/// names the backend and what failed, never a password.
#[derive(Debug)]
pub struct BackendError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    pub(crate) fn new(
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        BackendError {
            message: message.into(),
            source,
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|source| source as _)
    }
}

/// One kept event, from [`Broadcast::recent`]: what a page shows before it opens its stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryEntry {
    id: String,
    event: Option<String>,
    data: String,
}

impl HistoryEntry {
    /// The event's id, as the browser sees it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The event's type (`event:`), if it has one.
    pub fn event(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The event's data, its lines joined with LF, as the browser's `event.data`.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// Reads back an event this crate encoded: fields `name: value`, one a line.
    pub(crate) fn parse(frame: &[u8]) -> HistoryEntry {
        let text = String::from_utf8_lossy(frame);
        let mut entry = HistoryEntry {
            id: String::new(),
            event: None,
            data: String::new(),
        };
        let mut has_data = false;
        for line in text.split('\n') {
            let Some((name, value)) = line.split_once(": ") else {
                continue;
            };
            match name {
                "id" => entry.id = value.to_owned(),
                "event" => entry.event = Some(value.to_owned()),
                "data" => {
                    if has_data {
                        entry.data.push('\n');
                    }
                    has_data = true;
                    entry.data.push_str(value);
                }
                _ => {}
            }
        }
        entry
    }
}

/// Counters of a hub on this server, from [`Broadcast::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BroadcastStats {
    /// Connections subscribed now.
    pub subscribers: usize,
    /// Events this server handed to its subscribers (in-process: events sent).
    pub events_sent: u64,
    /// Deliveries: events handed to a subscriber's buffer, replays included.
    pub deliveries: u64,
    /// Subscribers disconnected because their buffer was full ([`SlowClient::Disconnect`]).
    pub slow_disconnects: u64,
    /// Events skipped for subscribers whose buffer was full ([`SlowClient::Skip`]).
    pub events_skipped: u64,
    /// Reconnections answered with the reset event.
    pub resets: u64,
    /// Reconnections that resumed with a replay (of zero events or more).
    pub replays: u64,
    /// Of those, the replays that read missed events from the backend.
    pub replays_from_backend: u64,
    /// Resumes closed because the backend could not be reached ([`Resume::Unavailable`]).
    pub resumes_unavailable: u64,
    /// Sends that failed because of the backend.
    pub send_errors: u64,
    /// Times this server's reader lost the backend (it reconnects by itself).
    pub reader_reconnects: u64,
    /// Times the backend's history was found lost, recreated or moved past this server's
    /// reader: the subscribers that may have missed events got the reset event.
    pub stream_resets: u64,
}

impl BroadcastStats {
    /// Adds `more` to these counters.
    pub(crate) fn add(&mut self, more: BroadcastStats) {
        let BroadcastStats {
            subscribers,
            events_sent,
            deliveries,
            slow_disconnects,
            events_skipped,
            resets,
            replays,
            replays_from_backend,
            resumes_unavailable,
            send_errors,
            reader_reconnects,
            stream_resets,
        } = more;
        self.subscribers += subscribers;
        self.events_sent += events_sent;
        self.deliveries += deliveries;
        self.slow_disconnects += slow_disconnects;
        self.events_skipped += events_skipped;
        self.resets += resets;
        self.replays += replays;
        self.replays_from_backend += replays_from_backend;
        self.resumes_unavailable += resumes_unavailable;
        self.send_errors += send_errors;
        self.reader_reconnects += reader_reconnects;
        self.stream_resets += stream_resets;
    }
}

/// Builds a [`Broadcast`]; from [`Broadcast::builder`]. Cloning it gives the same settings,
/// for instance to build the hub of each key of a [`KeyedBroadcast`].
#[derive(Clone, Debug)]
#[must_use]
pub struct BroadcastBuilder {
    history_events: usize,
    history_bytes: usize,
    slow_client: SlowClient,
    reset: Event,
    idempotency_ttl: Duration,
    response_timeout: Duration,
    backend: Option<Arc<dyn Connector>>,
    name: Option<String>,
}

impl BroadcastBuilder {
    /// The hub's name in metrics (the `hub` label) and spans, so that a dashboard tells hubs
    /// apart; give each hub its own. Default: the backend's name for the hub (the name given
    /// to `redis`), or `default` in-process.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Keeps the latest `events` events for replay: a browser that reconnects with the id of
    /// one of them resumes exactly (per key, for a [`KeyedBroadcast`]). Default: 0, no history
    /// (no ids are assigned, nothing is replayed, no reset event is sent).
    pub fn history(mut self, events: usize) -> Self {
        self.history_events = events;
        self
    }

    /// Also bounds the history by the size of the encoded events, in bytes: a browser
    /// resumes only when what it missed fits. Default: no bound beyond
    /// [`history`](Self::history).
    pub fn history_bytes(mut self, bytes: usize) -> Self {
        self.history_bytes = bytes;
        self
    }

    /// What to do with a subscriber whose buffer is full. Default: [`SlowClient::Disconnect`].
    pub fn slow_client(mut self, policy: SlowClient) -> Self {
        self.slow_client = policy;
        self
    }

    /// The event sent to a connection that cannot be resumed; the hub sets its id. Default:
    /// `event: reset` with empty data. Give it a data line: without one, browsers fire
    /// nothing.
    ///
    /// # Errors
    ///
    /// When the event cannot be encoded (see [`EncodeError`]).
    pub fn reset_event(mut self, event: Event) -> Result<Self, EncodeError> {
        event.validate()?;
        self.reset = event;
        Ok(self)
    }

    /// How long [`send_idempotent`](Broadcast::send_idempotent) remembers an idempotency key.
    /// Default: 1 hour.
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl.clamp(Duration::from_millis(1), Duration::from_secs(1 << 40));
        self
    }

    /// How long a send, a resume or [`ready`](Broadcast::ready) waits for a shared backend
    /// before it counts it as unreachable. Not used in-process. Default: 5 seconds.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout.clamp(Duration::from_millis(1), Duration::from_secs(3600));
        self
    }

    #[allow(dead_code, reason = "used by the backends behind features")]
    pub(crate) fn with_backend(mut self, backend: Arc<dyn Connector>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The settings of a hub (`keyed` or not), registering its metrics.
    fn settings(&self, linger: Duration, keyed: bool) -> Arc<Settings> {
        let name = match (&self.name, &self.backend) {
            (Some(name), _) => name.as_str(),
            (None, Some(connector)) => connector.hub_name(),
            (None, None) => "default",
        };
        let kind = self
            .backend
            .as_ref()
            .map_or(BackendKind::Memory, |connector| connector.kind());
        Arc::new(Settings {
            name: name.into(),
            backend: kind,
            metrics: HubMetrics::register(name, kind, keyed),
            linger,
            history_events: self.history_events,
            history_bytes: self.history_bytes,
            slow_client: self.slow_client,
            reset: self.reset.clone(),
            idempotency_ttl: self.idempotency_ttl,
            response_timeout: self.response_timeout,
        })
    }

    /// The hub. It never waits: a backend connects in the background (see
    /// [`Broadcast::ready`]). With the `metrics` feature, its metrics are registered here, with
    /// the recorder installed now.
    pub fn build(self) -> Broadcast {
        let settings = self.settings(Duration::ZERO, false);
        let (topic, backend) = match &self.backend {
            None => (Topic::local(settings), None),
            Some(connector) => {
                let backend = connector.start(Arc::clone(&settings), false);
                let topic = Arc::new(Topic::fed(settings));
                backend.attach(None, &topic);
                return Broadcast {
                    inner: Arc::new(Shared {
                        topic,
                        backend: Some(backend),
                    }),
                };
            }
        };
        Broadcast {
            inner: Arc::new(Shared {
                topic: Arc::new(topic),
                backend,
            }),
        }
    }
}

impl Broadcast {
    /// An in-process hub without history, disconnecting slow clients.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder: history, slow-client policy, reset event, backend.
    pub fn builder() -> BroadcastBuilder {
        BroadcastBuilder {
            history_events: 0,
            history_bytes: usize::MAX,
            slow_client: SlowClient::Disconnect,
            reset: Event::new().event("reset").data(""),
            idempotency_ttl: Duration::from_secs(3600),
            response_timeout: Duration::from_secs(5),
            backend: None,
            name: None,
        }
    }

    /// Whether the hub's backend can be reached and accepts this hub; always `Ok` in-process.
    /// Waits at most the [response timeout](BroadcastBuilder::response_timeout).
    ///
    /// # Errors
    ///
    /// What stands in the way, for instance Redis refusing the connection, or another hub
    /// of another kind under the same name.
    pub async fn ready(&self) -> Result<(), BackendError> {
        match &self.inner.backend {
            None => Ok(()),
            Some(backend) => backend.ready().await,
        }
    }

    /// Subscribes `conn` (the hub keeps a clone), first replaying what it missed since its
    /// `Last-Event-ID`; see [Guarantees](Broadcast#guarantees).
    ///
    /// A replay goes into the connection's buffer past its bound: it is bounded by the history
    /// instead. Subscribing a connection that is already subscribed does nothing and returns
    /// [`Resume::AlreadySubscribed`]. Nothing happens until it is awaited.
    pub async fn subscribe(&self, conn: &Connection) -> Resume {
        self.subscribe_from(conn, conn.last_event_id()).await
    }

    /// Like [`subscribe`](Self::subscribe), resuming after `cursor` instead of the
    /// connection's `Last-Event-ID`.
    ///
    /// For a page that loads what it shows first ([`recent`](Self::recent), say) and then
    /// opens `/events?after=<its newest id>`: pass `conn.last_event_id().or(after)`, so that a
    /// reconnecting browser resumes from what it saw last and nothing sent between the two
    /// requests is lost. Like `Last-Event-ID`, the cursor is client input: it is only looked
    /// up. A connection whose `Last-Event-ID` is unusable
    /// ([`Connection::has_unusable_last_event_id`]) gets the reset event whatever the cursor:
    /// it was resuming from something the hub cannot find.
    pub async fn subscribe_from(&self, conn: &Connection, cursor: Option<&str>) -> Resume {
        subscribe_topic(
            &self.inner.topic,
            self.inner.backend.as_deref(),
            None,
            conn,
            cursor,
        )
        .await
    }

    /// Sends `event` to every subscriber, and says which id it has.
    ///
    /// The event is encoded once; every subscriber gets the same bytes. With a history, the
    /// event gets the next id and is kept for replay even when no one is subscribed.
    /// In-process it is delivered before this returns; on a shared backend it is stored there,
    /// and every server (this one included) delivers it when its reader gets it. It never
    /// waits for a slow client.
    ///
    /// # Errors
    ///
    /// When the event cannot be encoded, or the backend cannot store it; [`SendError`] says
    /// whether it may have been stored all the same.
    pub async fn send(&self, event: impl Into<Event>) -> Result<Sent, SendError> {
        self.send_with(None, event.into()).await
    }

    /// Like [`send`](Self::send), storing the event at most once for `idempotency_key` within
    /// the [idempotency lifetime](BroadcastBuilder::idempotency_ttl): a repeat returns the
    /// first send's id and sends nothing. For retries after an error whose event may have
    /// been stored, or a client that posts twice.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn send_idempotent(
        &self,
        idempotency_key: &str,
        event: impl Into<Event>,
    ) -> Result<Sent, SendError> {
        self.send_with(Some(idempotency_key), event.into()).await
    }

    async fn send_with(&self, idempotency: Option<&str>, event: Event) -> Result<Sent, SendError> {
        event.validate()?;
        let settings = self.inner.topic.settings();
        match &self.inner.backend {
            Some(backend) => {
                observe_send(settings, true, backend.send(None, idempotency, event)).await
            }
            None => {
                let topic = &self.inner.topic;
                let send = async {
                    Ok(match idempotency {
                        Some(key) => topic.send_idempotent(key, event).0,
                        None => topic.send(event),
                    })
                };
                observe_send(settings, false, send).await
            }
        }
    }

    /// The latest kept events (at most `count`), oldest first: on a shared backend read from
    /// it, the same on every server. Empty without a history.
    ///
    /// # Errors
    ///
    /// When the backend cannot be reached.
    pub async fn recent(&self, count: usize) -> Result<Vec<HistoryEntry>, BackendError> {
        match &self.inner.backend {
            Some(backend) => backend.recent(None, count).await,
            None => Ok(self.inner.topic.recent(count)),
        }
    }

    /// The hub's counters on this server.
    pub fn stats(&self) -> BroadcastStats {
        let mut stats = self.inner.topic.stats();
        if let Some(backend) = &self.inner.backend {
            backend.add_stats(&mut stats);
        }
        stats
    }

    /// Closes every subscriber's stream on this server once what is queued has been sent,
    /// and forgets them.
    pub fn close_all(&self) {
        self.inner.topic.close_all();
    }

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
    ///     let hub = hub.clone();
    ///     async move {
    ///         hub.subscribe(&conn).await;
    ///     }
    /// });
    /// // elsewhere: tx.send("news".to_string()).await;
    /// # drop((events, tx));
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The first item `send` refuses (see its errors); the rest of `stream` is left unread.
    /// `Ok(())` once `stream` has ended.
    pub async fn forward<S>(&self, stream: S) -> Result<(), SendError>
    where
        S: Stream,
        S::Item: Into<Event>,
    {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
            self.send(item).await?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn topic(&self) -> &Topic {
        &self.inner.topic
    }
}

/// Runs a valid event's `send` (on a `shared` backend, or in-process), with its outcome and
/// duration in the hub's metrics and, on a shared backend, in a span `sse.send` of its own.
async fn observe_send(
    settings: &Settings,
    shared: bool,
    send: impl Future<Output = Result<Sent, SendError>>,
) -> Result<Sent, SendError> {
    let timer = settings.metrics.start_send();
    #[cfg(feature = "tracing")]
    let result = {
        let span = match shared {
            true => tracing::info_span!(
                "sse.send",
                hub = &*settings.name,
                backend = settings.backend.as_str()
            ),
            false => tracing::Span::none(),
        };
        tracing::Instrument::instrument(send, span).await
    };
    #[cfg(not(feature = "tracing"))]
    let result = send.await;
    let _ = shared;
    let outcome = result.as_ref().map(|sent| sent.repeated).map_err(|_| ());
    settings.metrics.send(outcome, timer);
    result
}

/// Subscribes `conn` to `topic`: by the topic itself when it can tell where the connection
/// resumes, else through the backend. The outcome goes to the hub's metrics and the stream's
/// span.
async fn subscribe_topic(
    topic: &Arc<Topic>,
    backend: Option<&dyn Backend>,
    key: Option<&str>,
    conn: &Connection,
    cursor: Option<&str>,
) -> Resume {
    let resume = async {
        let unusable = conn.has_unusable_last_event_id();
        if let Some(backend) = backend {
            // Events stored before the backend's first look would not reach this subscriber.
            if !backend.feeding().await {
                conn.close();
                return Resume::Unavailable;
            }
        }
        if let Some(resume) = topic.subscribe_here(conn, cursor, unusable) {
            return resume;
        }
        match backend {
            Some(backend) => {
                let cursor = cursor.filter(|_| !unusable);
                backend.subscribe(key, topic, conn, cursor).await
            }
            // An in-process topic always knows.
            None => Resume::Ended,
        }
    }
    .await;
    let outcome = match resume {
        Resume::Live => ResumeOutcome::Live,
        Resume::Replayed(_) => ResumeOutcome::Replayed,
        Resume::Reset => ResumeOutcome::Reset,
        _ => return resume,
    };
    let settings = topic.settings();
    settings.metrics.resumed(outcome);
    #[cfg(feature = "tracing")]
    conn.record_subscription(&settings.name, outcome.as_str());
    resume
}

impl Default for Broadcast {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broadcast")
            .field("backend", &self.inner.backend.as_ref().map(|b| b.name()))
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
