//! The send handle, [`Connection`], and the bounded queue it shares with the body.

use crate::{
    body::MAX_FRAME,
    error::TryPushError,
    event::MAX_ID_LEN,
    observe::{StreamMetrics, StreamReport, Subscription},
    Event, PushError,
};
use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http::HeaderMap;
use std::{
    collections::VecDeque,
    fmt,
    future::{poll_fn, Future},
    pin::pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::Duration,
};
use tokio::{runtime::Handle, sync::Notify, time::Instant};

/// A handle for pushing events to one client's stream.
///
/// This is a send handle, not a connection driver like `hyper::server::conn`: the HTTP
/// connection is driven by the server, and this handle only feeds the response body.
/// It is cheap to clone, and `Send + Sync`, so several tasks can push to the same client.
///
/// Events wait in a bounded buffer (see
/// [`EventSourceService::buffer`](crate::EventSourceService::buffer)) until the server writes
/// them to the socket.
///
/// The stream ends after what was already queued when [`close`](Connection::close) is called,
/// or when every clone of the handle is dropped. When the client goes away, every clone sees
/// it at once: [`closed`](Connection::closed) resolves and pushes fail.
pub struct Connection {
    shared: Arc<Shared>,
}

/// What the handle and the body share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Woken when the buffer gets room, when the stream ends, and when a closing stream has
    /// handed its last frame to the body.
    changed: Notify,
    limits: Arc<Limits>,
    last_event_id: LastEventId,
}

/// The request's `Last-Event-ID`, as the stream sees it: absent (no header, or an empty one,
/// which a browser whose last id was reset would send), an id, or unusable (a header that is
/// present but cannot be an id: not UTF-8, longer than [`MAX_ID_LEN`] bytes, or sent more than
/// once). An unusable one is kept as an empty id, which a usable one never is. Boxed twice,
/// it takes one word of every stream's state, and an allocation only when it is present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LastEventId(Option<Box<Box<str>>>);

impl LastEventId {
    pub(crate) const ABSENT: LastEventId = LastEventId(None);

    pub(crate) fn unusable() -> Self {
        LastEventId(Some(Box::default()))
    }

    pub(crate) fn id(id: &str) -> Self {
        match id.is_empty() {
            true => LastEventId::ABSENT,
            false => LastEventId(Some(Box::new(id.into()))),
        }
    }

    /// Reads the `Last-Event-ID` header.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        match Self::parse(headers) {
            Ok(Some(id)) => LastEventId::id(id),
            Ok(None) => LastEventId::ABSENT,
            Err(Unusable) => LastEventId::unusable(),
        }
    }

    /// The `Last-Event-ID` header's id: `None` when there is no header or an empty one, an
    /// error when it is unusable.
    pub(crate) fn parse(headers: &HeaderMap) -> Result<Option<&str>, Unusable> {
        let mut values = headers.get_all("last-event-id").iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return match headers.contains_key("last-event-id") {
                true => Err(Unusable),
                false => Ok(None),
            };
        };
        match std::str::from_utf8(value.as_bytes()) {
            Ok(id) if id.len() <= MAX_ID_LEN => Ok(Some(id).filter(|id| !id.is_empty())),
            _ => Err(Unusable),
        }
    }

    fn as_id(&self) -> Option<&str> {
        self.0
            .as_deref()
            .map(|id| &**id)
            .filter(|id| !id.is_empty())
    }

    fn is_unusable(&self) -> bool {
        self.0.as_deref().is_some_and(|id| id.is_empty())
    }
}

/// Why a stream ended: the first cause that decided to end it.
///
/// [`Connection::closed`] returns it, and the metrics (`reason` label) and the `sse.stream`
/// span carry it. A stream that one cause began to end keeps that reason whatever finally
/// closes its socket: a client a hub disconnected as slow counts as
/// [`SlowClient`](CloseReason::SlowClient) even if it leaves before its last frame is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client went away: the server dropped the response body, because the connection
    /// closed or the response was dropped.
    ClientGone,
    /// This side closed it: [`Connection::close`], or a hub
    /// ([`Broadcast::close_all`](crate::Broadcast::close_all), or a resume that needed an
    /// unreachable backend).
    Closed,
    /// The client took nothing for the send timeout
    /// ([`EventSource::send_timeout`](crate::EventSource::send_timeout)).
    SendTimeout,
    /// A hub disconnected it because its buffer was full
    /// ([`SlowClient::Disconnect`](crate::SlowClient::Disconnect)).
    SlowClient,
    /// A graceful [`Shutdown`](crate::Shutdown) ended it.
    Shutdown,
    /// The handler finished: every handle of the connection was dropped (the handler
    /// returned), or the stream given to [`EventSource::stream`](crate::EventSource::stream)
    /// ended, or yielded an error or an event that cannot be encoded.
    HandlerDone,
    /// The handler, or the stream given to [`EventSource::stream`](crate::EventSource::stream),
    /// panicked.
    HandlerPanic,
}

impl CloseReason {
    /// Every reason, in the order of [`index`](Self::index).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const ALL: [CloseReason; 7] = [
        CloseReason::ClientGone,
        CloseReason::Closed,
        CloseReason::SendTimeout,
        CloseReason::SlowClient,
        CloseReason::Shutdown,
        CloseReason::HandlerDone,
        CloseReason::HandlerPanic,
    ];

    /// The reason as the metrics' `reason` label and the span's `reason` field say it:
    /// `client_gone`, `closed`, `send_timeout`, `slow_client`, `shutdown`, `handler_done` or
    /// `handler_panic`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::ClientGone => "client_gone",
            CloseReason::Closed => "closed",
            CloseReason::SendTimeout => "send_timeout",
            CloseReason::SlowClient => "slow_client",
            CloseReason::Shutdown => "shutdown",
            CloseReason::HandlerDone => "handler_done",
            CloseReason::HandlerPanic => "handler_panic",
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether the client ended it (by leaving, or by not reading), rather than this side.
    fn by_client(self) -> bool {
        matches!(self, CloseReason::ClientGone | CloseReason::SendTimeout)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `Last-Event-ID` header that cannot be an id.
pub(crate) struct Unusable;

/// Settings shared by the streams of a service on one runtime.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Events a connection may queue; at least one.
    pub(crate) buffer: usize,
    pub(crate) send_timeout: Option<Duration>,
    pub(crate) keep_alive: Option<Duration>,
    /// The runtime the streams were created on (see [`stream_runtime`]): its timers serve
    /// pushes and closes made from any thread. `None` in the settings themselves, and for a
    /// connection ended from the start.
    pub(crate) runtime: Option<Handle>,
    pub(crate) metrics: StreamMetrics,
}

struct State {
    queue: VecDeque<Queued>,
    /// Queued frames that count against the buffer: all but replays, `retry` and farewells.
    counted: usize,
    phase: Phase,
    /// Why the stream ended, once it has.
    reason: Option<CloseReason>,
    handles: u32,
    body: Option<Waker>,
    /// When a push first found the buffer full since the body last took from it.
    full_since: Option<Instant>,
    /// How many hubs have subscribed this connection (saturating): a hub looks for a
    /// connection among its subscribers only when it has joined one, so that subscribing
    /// twice is noticed at no cost to the others.
    hubs_joined: u16,
    /// Events in the frames popped since the last frame was handed to the body.
    popped_events: u64,
    report: StreamReport,
    /// The stream's places in the hubs' subscriber gauges, dropped when it ends.
    #[cfg(feature = "metrics")]
    subscriptions: Vec<Subscription>,
}

struct Queued {
    frame: Bytes,
    counted: bool,
    /// How many events the frame holds.
    events: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Events are accepted.
    Open,
    /// No more events are accepted; the body sends what is queued, then ends.
    Closing,
    /// The body is gone: the client disconnected or the response was dropped.
    Gone,
}

/// Why an internal send did not queue a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Full,
    Ended,
}

impl Connection {
    /// A new handle and the shared queue for the body to read, on the runtime of `limits`.
    pub(crate) fn new(limits: Arc<Limits>, last_event_id: LastEventId) -> (Self, Arc<Shared>) {
        let report = StreamReport::start(&limits.metrics);
        Self::with_phase(limits, last_event_id, Phase::Open, report)
    }

    /// A handle whose stream has already ended as if its client had gone: pushes fail with
    /// [`PushError::Disconnected`] and [`closed`](Self::closed) resolves at once. It needs no
    /// runtime, for a request that could not get a stream.
    pub(crate) fn ended(limits: Arc<Limits>, last_event_id: LastEventId) -> Self {
        let report = StreamReport::never();
        Self::with_phase(limits, last_event_id, Phase::Gone, report).0
    }

    fn with_phase(
        limits: Arc<Limits>,
        last_event_id: LastEventId,
        phase: Phase,
        report: StreamReport,
    ) -> (Self, Arc<Shared>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                counted: 0,
                reason: (phase != Phase::Open).then_some(CloseReason::ClientGone),
                phase,
                handles: 1,
                body: None,
                full_since: None,
                hubs_joined: 0,
                popped_events: 0,
                report,
                #[cfg(feature = "metrics")]
                subscriptions: Vec::new(),
            }),
            changed: Notify::new(),
            limits,
            last_event_id,
        });
        (
            Connection {
                shared: Arc::clone(&shared),
            },
            shared,
        )
    }

    /// Pushes one event, waiting while the buffer is full.
    ///
    /// Anything that converts into an [`Event`] can be pushed: `"text"` and `String` are
    /// data-only events, `["a", "b"]` is one event with two data lines.
    ///
    /// Cancel-safe: a push whose future is dropped while it waits has queued nothing.
    ///
    /// # Errors
    ///
    /// [`PushError::Invalid`] when the event cannot be encoded (nothing is sent);
    /// [`PushError::Closed`] once this side has closed the stream, and
    /// [`PushError::Disconnected`] once the client has gone.
    pub async fn push(&self, event: impl Into<Event>) -> Result<(), PushError> {
        let event = event.into();
        event.validate()?;
        match self.send(event.finish()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.why_ended()),
        }
    }

    /// Pushes every item of `stream`, in order, until the stream ends or this one does.
    ///
    /// The items are anything that converts into an [`Event`], as for [`push`](Self::push).
    /// Backpressure is the same as `push`'s: while the buffer is full, the next item is not
    /// taken from `stream`. While `stream` has nothing to give, the client leaving (or the
    /// stream being closed) still ends `forward` at once.
    ///
    /// Cancel-safe as `push` is: an item is taken from `stream` only once the buffer has room,
    /// so dropping the future while it waits loses no item (unless another handle of this
    /// connection filled the buffer in between: the item taken then waits, and is dropped with
    /// the future). Pass `&mut stream` to keep the rest of a stream after `forward` returns.
    ///
    /// Each client's `forward` reads its own stream in the handler's task. To send the same
    /// events to many clients, feed them into one [`Broadcast`](crate::Broadcast) instead,
    /// which encodes each event once for all of them and wakes no task per client besides
    /// the client's own connection (see [`Broadcast::forward`](crate::Broadcast::forward)).
    ///
    /// ```
    /// use http::Request;
    /// use tokio::sync::broadcast;
    /// use tokio_stream::{wrappers::BroadcastStream, StreamExt};
    /// use tower_eventsource::{Connection, EventSourceService};
    ///
    /// let (tx, _) = broadcast::channel::<String>(64);
    /// let events = EventSourceService::new({
    ///     let tx = tx.clone();
    ///     move |conn: Connection, _req: Request<()>| {
    ///         // A receiver that lagged behind skips what it missed (`filter_map(Result::ok)`).
    ///         let news = BroadcastStream::new(tx.subscribe()).filter_map(Result::ok);
    ///         async move { conn.forward(news).await }
    ///     }
    /// });
    /// // elsewhere: tx.send("news".to_string());
    /// # drop(events);
    /// ```
    ///
    /// # Errors
    ///
    /// [`PushError::Disconnected`] once the client has gone and [`PushError::Closed`] once
    /// this side has closed the stream, whether `forward` was waiting for room or for the next
    /// item; [`PushError::Invalid`] for an item that cannot be encoded: nothing of it is sent,
    /// and `forward` stops there, leaving the rest of `stream` unread. `Ok(())` when `stream`
    /// has ended and every item was queued.
    pub async fn forward<S>(&self, stream: S) -> Result<(), PushError>
    where
        S: Stream,
        S::Item: Into<Event>,
    {
        let mut stream = pin!(stream);
        let mut closed = pin!(self.closed());
        loop {
            if self.wait_for_room().await.is_err() {
                return Err(self.why_ended());
            }
            let next = poll_fn(|cx| match stream.as_mut().poll_next(cx) {
                Poll::Ready(item) => Poll::Ready(Some(item)),
                Poll::Pending => closed.as_mut().poll(cx).map(|_| None),
            })
            .await;
            match next {
                Some(Some(item)) => self.push(item).await?,
                Some(None) => return Ok(()),
                None => return Err(self.why_ended()),
            }
        }
    }

    /// Why pushes fail on a stream that has ended.
    fn why_ended(&self) -> PushError {
        match self.shared.lock().closed_here() {
            true => PushError::Closed,
            false => PushError::Disconnected,
        }
    }

    /// Pushes one event if the buffer has room, without waiting.
    ///
    /// # Errors
    ///
    /// [`TryPushError::Full`] when the buffer is full, [`TryPushError::Closed`] once this
    /// side has closed the stream and [`TryPushError::Disconnected`] once the client has gone,
    /// each handing the event back; [`TryPushError::Invalid`] when the event cannot be
    /// encoded.
    pub fn try_push(&self, event: impl Into<Event>) -> Result<(), TryPushError> {
        let event = event.into();
        event.validate().map_err(TryPushError::Invalid)?;
        self.offer(event, 1, Event::finish)
            .map_err(|(refused, event)| match refused {
                Refused::Full => TryPushError::Full(event),
                Refused::Ended if self.shared.lock().closed_here() => TryPushError::Closed(event),
                Refused::Ended => TryPushError::Disconnected(event),
            })
    }

    /// Ends the stream once what was already pushed has been sent. Later pushes fail with
    /// [`PushError::Closed`] and send nothing. Calling it again does nothing. It may be called
    /// from any thread.
    pub fn close(&self) {
        self.shared.close_here(None, CloseReason::Closed);
    }

    /// Closes the stream as [`close`](Self::close) does, for `reason`.
    pub(crate) fn close_for(&self, reason: CloseReason) {
        self.shared.close_here(None, reason);
    }

    /// Resolves when the stream has ended (the client went away, or the stream was closed),
    /// with the reason.
    ///
    /// ```
    /// # use tower_eventsource::{CloseReason, Connection};
    /// async fn handler(conn: Connection) {
    ///     match conn.closed().await {
    ///         CloseReason::ClientGone => { /* the browser left */ }
    ///         reason => println!("stream ended: {reason}"),
    ///     }
    /// }
    /// ```
    pub async fn closed(&self) -> CloseReason {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(reason) = self.close_reason() {
                return reason;
            }
            changed.await;
        }
    }

    /// Whether the stream has ended; pushes fail from then on.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().phase != Phase::Open
    }

    /// Why the stream ended, or `None` while it is open.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.lock().reason
    }

    /// The request's `Last-Event-ID`: the id of the last event the browser saw before it
    /// reconnected.
    ///
    /// `None` when the header is missing or empty, and when it is unusable: not UTF-8, longer
    /// than 1024 bytes, or sent twice (see
    /// [`has_unusable_last_event_id`](Self::has_unusable_last_event_id)). The value comes
    /// from the client: treat it as untrusted input.
    pub fn last_event_id(&self) -> Option<&str> {
        self.shared.last_event_id.as_id()
    }

    /// Whether the request carried a `Last-Event-ID` that cannot be an id (not UTF-8, longer
    /// than 1024 bytes, or sent twice).
    ///
    /// Such a client was resuming, so it is not a new one: it missed events that cannot be
    /// found. [`Broadcast::subscribe`](crate::Broadcast::subscribe) answers it with the reset
    /// event; a handler that resumes by itself should likewise tell the page to reload.
    pub fn has_unusable_last_event_id(&self) -> bool {
        self.shared.last_event_id.is_unusable()
    }

    /// Queues an encoded frame, waiting while the buffer is full.
    pub(crate) async fn send(&self, frame: Bytes) -> Result<(), Refused> {
        let mut frame = Some(frame);
        self.when_not_full(|| match frame.take() {
            Some(bytes) => match self.try_send(bytes, 1) {
                Err((Refused::Full, bytes)) => {
                    frame = Some(bytes);
                    Err(Refused::Full)
                }
                other => other.map_err(|(refused, _)| refused),
            },
            None => Err(Refused::Ended),
        })
        .await
    }

    /// Waits until the buffer has room for one more event, or the stream has ended.
    async fn wait_for_room(&self) -> Result<(), Refused> {
        self.when_not_full(|| self.room().map(drop)).await
    }

    /// Runs `attempt` until it does not find the buffer full, waiting for room in between.
    async fn when_not_full(
        &self,
        mut attempt: impl FnMut() -> Result<(), Refused>,
    ) -> Result<(), Refused> {
        loop {
            match attempt() {
                Err(Refused::Full) => {}
                other => return other,
            }
            let room = self.shared.changed.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match attempt() {
                Err(Refused::Full) => {}
                other => return other,
            }
            match (self.shared.stall_deadline(), &self.shared.limits.runtime) {
                // Wake up at the deadline to end the stalled stream. The timer comes from the
                // stream's runtime, so a push from any thread or executor can wait.
                (Some(deadline), Some(runtime)) => {
                    let _guard = runtime.enter();
                    let timeout = tokio::time::timeout_at(deadline, room);
                    drop(_guard);
                    let _ = timeout.await;
                }
                _ => room.await,
            }
        }
    }

    /// Queues an encoded frame of `events` events if the buffer has room, handing it back if
    /// not.
    pub(crate) fn try_send(&self, frame: Bytes, events: u32) -> Result<(), (Refused, Bytes)> {
        self.offer(frame, events, |frame| frame)
    }

    /// Queues `item`, `events` events encoded by `encode` once they are known to fit, or hands
    /// it back.
    fn offer<T>(
        &self,
        item: T,
        events: u32,
        encode: impl FnOnce(T) -> Bytes,
    ) -> Result<(), (Refused, T)> {
        let mut state = match self.room() {
            Ok(state) => state,
            Err(refused) => return Err((refused, item)),
        };
        state.queue.push_back(Queued {
            frame: encode(item),
            counted: true,
            events,
        });
        state.counted += 1;
        // The body waits only on an empty queue: later pushes need not wake it again.
        if state.queue.len() == 1 {
            if let Some(body) = &state.body {
                body.wake_by_ref();
            }
        }
        Ok(())
    }

    /// The locked state if the buffer has room for one more event. A full buffer that the
    /// body has not taken from for the send timeout ends the stream.
    fn room(&self) -> Result<MutexGuard<'_, State>, Refused> {
        let mut state = self.shared.lock();
        let phase = state.phase;
        match phase {
            Phase::Open if state.counted < self.shared.limits.buffer => Ok(state),
            Phase::Open if !self.shared.stalled(&mut state) => Err(Refused::Full),
            Phase::Open => {
                drop(state);
                self.shared.end(Phase::Gone, CloseReason::SendTimeout);
                Err(Refused::Ended)
            }
            Phase::Closing | Phase::Gone => Err(Refused::Ended),
        }
    }

    /// Queues `frames` of `events` events each past the buffer's bound, for a replay (or the
    /// stream's first `retry:`) whose size the caller bounds: a replay of any length leaves the
    /// buffer's room to live events. The frames are shared, not copied. Returns whether the
    /// stream was open.
    pub(crate) fn send_unbounded(
        &self,
        frames: impl IntoIterator<Item = Bytes>,
        events: u32,
    ) -> bool {
        let mut state = self.shared.lock();
        if state.phase != Phase::Open {
            return false;
        }
        let before = state.queue.len();
        state.queue.extend(frames.into_iter().map(|frame| Queued {
            frame,
            counted: false,
            events,
        }));
        let body = match before == 0 && !state.queue.is_empty() {
            true => state.body.take(),
            false => None,
        };
        drop(state);
        wake(body);
        true
    }

    /// Whether some hub has subscribed this connection.
    pub(crate) fn has_joined_a_hub(&self) -> bool {
        self.shared.lock().hubs_joined > 0
    }

    /// Records that a hub subscribed this connection, with its place in the hub's subscriber
    /// gauge, given up when the stream ends.
    pub(crate) fn note_joined_hub(&self, subscription: Option<Subscription>) {
        let mut state = self.shared.lock();
        state.hubs_joined = state.hubs_joined.saturating_add(1);
        #[cfg(feature = "metrics")]
        if let Some(subscription) = subscription {
            if !state.report.has_ended() {
                state.subscriptions.push(subscription);
            }
        }
        #[cfg(not(feature = "metrics"))]
        drop(subscription);
    }

    /// Records on the stream's span which hub it joined and how it resumed.
    #[cfg(feature = "tracing")]
    pub(crate) fn record_subscription(&self, hub: &str, resume: &str) {
        let span = self.shared.lock().report.span().clone();
        crate::observe::record_subscription(&span, hub, resume);
    }

    /// The stream's span.
    #[cfg(feature = "tracing")]
    pub(crate) fn span(&self) -> tracing::Span {
        self.shared.lock().report.span().clone()
    }

    /// Whether `other` is a handle of the same stream.
    pub(crate) fn is_same_stream(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        let mut state = self.shared.lock();
        state.handles = state.handles.saturating_add(1);
        drop(state);
        Connection {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.handles -= 1;
        if state.handles == 0 {
            // Nobody can push any more: the stream closes like after `close`, so the send
            // timeout still watches what is queued. The last handle dropped while unwinding
            // was a handler's that panicked.
            let reason = match std::thread::panicking() {
                true => CloseReason::HandlerPanic,
                false => CloseReason::HandlerDone,
            };
            self.shared.end_locked(state, Phase::Closing, reason);
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Connection")
            .field("phase", &state.phase)
            .field("queued", &state.queue.len())
            .field("buffer", &self.shared.limits.buffer)
            .field("last_event_id", &self.shared.last_event_id)
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across user code, so a poisoned lock still holds a
        // consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves from `Open` to `phase` (or from anything to `Gone`) and wakes everyone waiting.
    /// `reason` is why, unless the stream had begun to end already.
    fn end(self: &Arc<Self>, phase: Phase, reason: CloseReason) {
        let state = self.lock();
        self.end_locked(state, phase, reason);
    }

    fn end_locked(
        self: &Arc<Self>,
        mut state: MutexGuard<'_, State>,
        phase: Phase,
        reason: CloseReason,
    ) {
        if state.phase == Phase::Gone || (state.phase == Phase::Closing && phase == Phase::Closing)
        {
            return;
        }
        state.reason.get_or_insert(reason);
        state.phase = phase;
        match phase {
            Phase::Gone => {
                state.queue = VecDeque::new();
                state.counted = 0;
                // Nothing more will be sent: the stream has ended, even if the server polls
                // its body no more (a client that stopped reading).
                state.report_end();
            }
            _ => self.watch_closing(&mut state),
        }
        let body = state.body.take();
        drop(state);
        wake(body);
        self.changed.notify_waiters();
    }

    /// Closes the stream from this side for `reason`, after `farewell` (an event) if one is
    /// given, in one step so that nothing is queued after the farewell. Does nothing once the
    /// stream has ended.
    pub(crate) fn close_here(self: &Arc<Self>, farewell: Option<&Bytes>, reason: CloseReason) {
        let mut state = self.lock();
        if state.phase != Phase::Open {
            return;
        }
        state.queue.extend(farewell.map(|frame| Queued {
            frame: frame.clone(),
            counted: false,
            events: 1,
        }));
        self.end_locked(state, Phase::Closing, reason);
    }

    /// With a send timeout, ends a closing stream whose queued frames the body has not taken
    /// from for that long: no push will come to notice it. The timer runs on the stream's
    /// runtime, whichever thread closed it, and ends as soon as the queue is empty.
    fn watch_closing(self: &Arc<Self>, state: &mut State) {
        let Some(timeout) = self.limits.send_timeout else {
            return;
        };
        let Some(runtime) = &self.limits.runtime else {
            return;
        };
        if state.queue.is_empty() {
            return;
        }
        state.full_since.get_or_insert_with(Instant::now);
        let shared = Arc::clone(self);
        runtime.spawn(async move {
            loop {
                let drained = shared.changed.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                let deadline = {
                    let mut state = shared.lock();
                    if state.phase != Phase::Closing || state.queue.is_empty() {
                        return;
                    }
                    let since = *state.full_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= timeout {
                        shared.end_locked(state, Phase::Gone, CloseReason::SendTimeout);
                        return;
                    }
                    since.checked_add(timeout)
                };
                match deadline {
                    Some(deadline) => {
                        let _ = tokio::time::timeout_at(deadline, drained).await;
                    }
                    None => return,
                }
            }
        });
    }

    /// Whether the full buffer has not been taken from for the send timeout. The first call
    /// that finds it full starts the clock.
    fn stalled(&self, state: &mut State) -> bool {
        let Some(timeout) = self.limits.send_timeout else {
            return false;
        };
        match state.full_since {
            Some(since) => since.elapsed() >= timeout,
            None => {
                state.full_since = Some(Instant::now());
                false
            }
        }
    }

    /// When a full buffer counts as stalled, if it is full now.
    fn stall_deadline(&self) -> Option<Instant> {
        let timeout = self.limits.send_timeout?;
        let state = self.lock();
        state
            .full_since
            .and_then(|since| since.checked_add(timeout))
    }

    /// The next frame for the body: every queued event joined (up to [`MAX_FRAME`] bytes),
    /// `None` once the stream has ended and the queue is empty, when the stream reports its
    /// end.
    pub(crate) fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut state = self.lock();
        let was_full = state.counted >= self.limits.buffer;
        let Some(first) = state.pop() else {
            if state.phase != Phase::Open {
                state.report_end();
                return Poll::Ready(None);
            }
            if !state.body.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                state.body = Some(cx.waker().clone());
            }
            return Poll::Pending;
        };
        let frame = match state.queue.front() {
            Some(next) if first.len() + next.frame.len() <= MAX_FRAME => {
                let queued = state.queue.iter().map(|q| q.frame.len()).sum::<usize>();
                let mut joined = BytesMut::with_capacity(MAX_FRAME.min(first.len() + queued));
                joined.extend_from_slice(&first);
                while let Some(next) = state.queue.front() {
                    if joined.len() + next.frame.len() > MAX_FRAME {
                        break;
                    }
                    if let Some(next) = state.pop() {
                        joined.extend_from_slice(&next);
                    }
                }
                joined.freeze()
            }
            _ => first,
        };
        state.full_since = None;
        let events = std::mem::take(&mut state.popped_events);
        state.report.sent(events, frame.len());
        // A closing stream's timer waits for the queue to empty.
        let drained = state.phase != Phase::Open && state.queue.is_empty();
        drop(state);
        if was_full || drained {
            self.changed.notify_waiters();
        }
        Poll::Ready(Some(frame))
    }

    /// How long the body waits without any frame before it sends a keep-alive comment.
    pub(crate) fn keep_alive(&self) -> Option<Duration> {
        self.limits.keep_alive
    }

    /// Whether the stream will produce no more frames.
    pub(crate) fn is_finished(&self) -> bool {
        let state = self.lock();
        state.queue.is_empty() && state.phase != Phase::Open
    }

    /// The body sent a keep-alive comment of `bytes` bytes.
    pub(crate) fn sent_keep_alive(&self, bytes: usize) {
        self.lock().report.sent(0, bytes);
    }

    /// The body was dropped: the client is gone, unless the stream had ended already.
    pub(crate) fn body_dropped(self: &Arc<Self>) {
        self.end(Phase::Gone, CloseReason::ClientGone);
    }
}

impl State {
    fn pop(&mut self) -> Option<Bytes> {
        let queued = self.queue.pop_front()?;
        self.counted -= usize::from(queued.counted);
        self.popped_events += u64::from(queued.events);
        Some(queued.frame)
    }

    /// Whether this side ended the stream, rather than the client.
    fn closed_here(&self) -> bool {
        self.reason.is_some_and(|reason| !reason.by_client())
    }

    /// Reports the end of the stream (once), and gives up its places in the hubs' gauges.
    fn report_end(&mut self) {
        let reason = self.reason.unwrap_or(CloseReason::ClientGone);
        self.report.end(reason);
        #[cfg(feature = "metrics")]
        self.subscriptions.clear();
    }
}

/// The runtime a new stream runs on: the current one, if it has the time driver that
/// keep-alive and the send timeout need. `None` outside a tokio runtime and on a runtime built
/// without `enable_time`; the caller answers `500` then.
pub(crate) fn stream_runtime() -> Option<Handle> {
    let runtime = Handle::try_current().ok()?;
    has_timers(&runtime).then_some(runtime)
}

/// Whether `runtime` has a time driver.
///
/// tokio has no query for it: the only way to learn it is to make a timer, which panics
/// without the driver. A runtime with the driver never panics here. A runtime without one
/// costs one caught panic, the first time a stream starts on it: the panic hook runs (the
/// default one prints tokio's message, which names `enable_time`), and in a build with
/// `panic = "abort"` the process aborts there instead of answering `500`. The answer is kept
/// per runtime, so a runtime is asked once.
// A panic-free query, `Handle::has_time_driver`, is proposed upstream (tokio-rs/tokio#8361);
// it would replace the probe.
fn has_timers(runtime: &Handle) -> bool {
    use std::sync::OnceLock;
    type Seen = Mutex<VecDeque<(tokio::runtime::Id, bool)>>;
    static SEEN: OnceLock<Seen> = OnceLock::new();
    let seen = SEEN.get_or_init(Mutex::default);
    let id = runtime.id();
    let known = seen
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .find(|(seen, _)| *seen == id)
        .map(|(_, timers)| *timers);
    if let Some(timers) = known {
        return timers;
    }
    let timers = std::panic::catch_unwind(|| {
        let _guard = runtime.enter();
        drop(tokio::time::sleep(Duration::ZERO));
    })
    .is_ok();
    let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if seen.len() >= 64 {
        seen.pop_front();
    }
    seen.push_back((id, timers));
    timers
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}
