//! The stream settings, [`EventSource`], and [`EventSource::connect`] and
//! [`EventSource::stream`], which start a stream inside any handler.

use crate::{
    body::EventStreamBody,
    connection::{stream_runtime, LastEventId, Limits, Shared},
    observe::StreamMetrics,
    polled,
    service::EventSourceService,
    Connection, Event, Shutdown, StreamItem,
};
use futures_core::Stream;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use std::{
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::runtime::Handle;

/// Longest keep-alive interval or send timeout; longer ones are taken as this.
const LONGEST: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// The settings of event streams: response headers, keep-alive, buffer, send timeout, `retry`
/// and graceful shutdown.
///
/// One `EventSource` serves every way of starting a stream:
///
/// - [`service`](Self::service) builds an [`EventSourceService`], which spawns a handler for
///   each request;
/// - [`connect`](Self::connect) starts a stream inside a handler of your own (an axum handler
///   with extractors, say) and hands back the [`Connection`] and the response to return;
/// - [`stream`](Self::stream) answers with a response whose body polls a stream of yours,
///   as axum's `Sse::new(stream)` does.
///
/// Cloning is cheap (the settings are shared behind an `Arc`), so it can live in an app's
/// state. Each setting's default is stated on its setter.
///
/// ```
/// use std::time::Duration;
/// use tower_eventsource::{Connection, EventSource};
///
/// let source = EventSource::new()
///     .keep_alive(Duration::from_secs(20))
///     .retry(Duration::from_secs(2));
/// let events = source.service(|conn: Connection, _req: http::Request<()>| async move {
///     let _ = conn.push("hello").await;
/// });
/// # drop(events);
/// ```
#[derive(Clone)]
pub struct EventSource {
    settings: Arc<Settings>,
}

struct Settings {
    headers: HeaderMap,
    /// The limits as set, with no runtime.
    limits: Arc<Limits>,
    retry: Option<Duration>,
    shutdown: Option<Shutdown>,
    /// The limits with the runtime the last stream was created on, shared by the streams of
    /// that runtime (usually all of them).
    on_runtime: Mutex<Option<Arc<Limits>>>,
}

impl Clone for Settings {
    fn clone(&self) -> Self {
        Settings {
            headers: self.headers.clone(),
            limits: Arc::clone(&self.limits),
            retry: self.retry,
            shutdown: self.shutdown.clone(),
            on_runtime: Mutex::default(),
        }
    }
}

impl Settings {
    /// The limits of streams on `runtime`.
    fn limits_on(&self, runtime: Handle) -> Arc<Limits> {
        let mut on_runtime = self
            .on_runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(limits) = &*on_runtime {
            if limits
                .runtime
                .as_ref()
                .is_some_and(|r| r.id() == runtime.id())
            {
                return Arc::clone(limits);
            }
        }
        let limits = Arc::new(Limits {
            runtime: Some(runtime),
            ..(*self.limits).clone()
        });
        *on_runtime = Some(Arc::clone(&limits));
        limits
    }
}

/// A stream started by [`EventSource::open`].
pub(crate) struct Opened {
    pub(crate) conn: Connection,
    pub(crate) response: Response<EventStreamBody>,
    /// The runtime the stream runs on and its shared state, while a handler should run for
    /// it; `None` when there is no stream (no usable runtime) or shutdown has already ended it.
    pub(crate) live: Option<(Handle, Arc<Shared>)>,
}

impl EventSource {
    /// The default settings, each stated on its setter.
    ///
    /// With the `metrics` feature, its streams' metrics are registered here, with the recorder
    /// installed now: install the exporter's recorder first (see [Production
    /// visibility](crate#production-visibility)).
    pub fn new() -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
        EventSource {
            settings: Arc::new(Settings {
                headers,
                limits: Arc::new(Limits {
                    buffer: 256,
                    send_timeout: Some(Duration::from_secs(30)),
                    keep_alive: Some(Duration::from_secs(15)),
                    runtime: None,
                    metrics: StreamMetrics::register(),
                }),
                retry: None,
                shutdown: None,
                on_runtime: Mutex::default(),
            }),
        }
    }

    /// A service with these settings that runs `handler` for each accepted request; see
    /// [`EventSourceService`].
    pub fn service<H, B, F>(&self, handler: H) -> EventSourceService<H>
    where
        H: Fn(Connection, Request<B>) -> F,
        F: Future,
    {
        EventSourceService::from_source(self.clone(), handler)
    }

    /// Starts a stream for a request with `headers`, inside a handler of your own; returns the
    /// [`Connection`] to push to and the response to return at once.
    ///
    /// Call it after the handler's extractors and its own refusals: the handler can answer
    /// anything before it (any status, any header, after any `await`), and from here on the
    /// request gets a stream. Like the service, it reads `Last-Event-ID` from `headers` (see
    /// [`Connection::last_event_id`]), queues the `retry:` field first when one is set,
    /// registers the stream with the [`graceful_shutdown`](Self::graceful_shutdown) handle
    /// (once that is triggered, the stream holds only the farewell and ends, and the
    /// connection is closed), and sets the response headers. It spawns nothing: push from the
    /// handler, or hand the connection to a task or a [`Broadcast`](crate::Broadcast). The
    /// stream ends as described on [`Connection`].
    ///
    /// The response is an `http::Response<EventStreamBody>`, which axum accepts as a
    /// handler's return value as it is (and `Response::map` adapts to any body type).
    /// Everything a subscription does happens in this call or the handler's own code, so when
    /// the handler returns, a [`Broadcast::subscribe`](crate::Broadcast::subscribe) it awaited
    /// has happened.
    ///
    /// Without a usable tokio runtime (none on this thread, or one built without
    /// `enable_time`, which keep-alive and the send timeout need), the response is an empty
    /// `500 Internal Server Error` and the connection has already ended: pushes fail with
    /// [`PushError::Disconnected`](crate::PushError::Disconnected). tokio tells a runtime
    /// without `enable_time` only by panicking when a timer is made, so the first stream on
    /// such a runtime catches that panic: the panic hook runs once for the runtime (the
    /// default hook prints tokio's message), and a build with `panic = "abort"` aborts
    /// instead of answering `500`.
    ///
    /// # `HEAD` requests
    ///
    /// axum routes `HEAD` to `get` handlers and drops the body of the response. The stream
    /// then sees its client leave at once: [`Connection::closed`] resolves and pushes fail with
    /// [`PushError::Disconnected`](crate::PushError::Disconnected), so a handler that returns
    /// when a push fails or `closed()` resolves does no work for it. (The
    /// [`EventSourceService`] answers `HEAD` without running its handler.)
    ///
    /// ```
    /// use axum::{extract::State, http::HeaderMap, response::IntoResponse, routing::get, Router};
    /// use tower_eventsource::{EventSource, PushError};
    ///
    /// async fn events(State(source): State<EventSource>, headers: HeaderMap) -> impl IntoResponse {
    ///     let (conn, response) = source.connect(&headers);
    ///     tokio::spawn(async move {
    ///         conn.push("hello").await?;
    ///         Ok::<_, PushError>(())
    ///     });
    ///     response
    /// }
    ///
    /// let app: Router = Router::new()
    ///     .route("/events", get(events))
    ///     .with_state(EventSource::new());
    /// ```
    pub fn connect(&self, headers: &HeaderMap) -> (Connection, Response<EventStreamBody>) {
        let opened = self.open(headers);
        (opened.conn, opened.response)
    }

    /// The response, for a request with `headers`, whose body sends `stream`'s items: the body
    /// polls `stream` itself, in the task that writes the response, so no task runs per
    /// client. Call it in a handler of your own, as axum's `Sse::new(stream)`; the settings
    /// are these.
    ///
    /// The items are events, or results whose error ends the stream; see [`StreamItem`]. The
    /// body encodes each item as it takes it, joins the items that are ready together into
    /// one frame (up to 64 KiB, never splitting an event), starts with the
    /// [`retry`](Self::retry) field, sends keep-alive comments while `stream` is idle
    /// ([`keep_alive`](Self::keep_alive)), and the response has the stream's headers.
    ///
    /// An event from a quiet stream goes at once. While `stream` is busy (a frame took two
    /// events or more, or the last one did), a frame waits one turn of the scheduler for more
    /// before it goes: a channel that feeds many clients then reaches each of them in fewer,
    /// larger writes. The wait never depends on `stream` or a timer: the body wakes its own
    /// task.
    ///
    /// The stream ends:
    ///
    /// - when `stream` ends;
    /// - at an item that is an error or an event that cannot be encoded: nothing of it is
    ///   sent, and it is reported as a handler's error is (with the `tracing` feature);
    /// - when `stream` panics: the panic ends this stream only, and is reported as a handler's
    ///   panic is;
    /// - on [shutdown](Self::graceful_shutdown): the body takes no more items, sends what it
    ///   took and the farewell, and ends. A request after the trigger gets the farewell and an
    ///   ended stream, and `stream` is dropped without being polled.
    ///
    /// The body then drops `stream`. When the client goes away the server drops the body,
    /// and `stream` with it, at once, even while `stream` has nothing to give.
    ///
    /// The body takes an item only when the server asks for the next frame, so a client that
    /// reads slowly leaves the items in `stream`'s source (a tokio broadcast receiver lags
    /// behind and reports how many it skipped). Nothing is queued, so
    /// [`buffer`](Self::buffer) and [`send_timeout`](Self::send_timeout) do not apply; the
    /// socket of a client that stopped reading is held until TCP drops the connection (see
    /// the crate docs' [Disconnects](crate#disconnects)).
    ///
    /// `headers` are the request's, as for [`connect`](Self::connect); a stream that resumes
    /// reads the browser's `Last-Event-ID` from them with
    /// [`last_event_id`](Self::last_event_id). Without a usable tokio runtime the response is
    /// an empty `500 Internal Server Error`, as `connect` describes, and `stream` is dropped.
    ///
    /// The crate docs' [Streams](crate#streams-stream-forward-or-a-broadcast) section compares
    /// this with [`Connection::forward`] and a [`Broadcast`](crate::Broadcast).
    ///
    /// ```
    /// use axum::{extract::State, http::HeaderMap, response::IntoResponse, routing::get, Router};
    /// use tokio::sync::broadcast;
    /// use tokio_stream::{wrappers::BroadcastStream, StreamExt};
    /// use tower_eventsource::EventSource;
    ///
    /// #[derive(Clone)]
    /// struct App {
    ///     source: EventSource,
    ///     news: broadcast::Sender<String>,
    /// }
    ///
    /// async fn events(State(app): State<App>, headers: HeaderMap) -> impl IntoResponse {
    ///     // A receiver that lagged behind skips what it missed (`filter_map(Result::ok)`);
    ///     // left as a `Result`, the lag would end the stream and the browser would reconnect.
    ///     let news = BroadcastStream::new(app.news.subscribe()).filter_map(Result::ok);
    ///     app.source.stream(&headers, news)
    /// }
    ///
    /// let (news, _) = broadcast::channel(64);
    /// let app: Router = Router::new()
    ///     .route("/events", get(events))
    ///     .with_state(App { source: EventSource::new(), news });
    /// ```
    pub fn stream<S>(&self, headers: &HeaderMap, stream: S) -> Response<EventStreamBody>
    where
        S: Stream + Send + 'static,
        S::Item: StreamItem,
    {
        // The response does not depend on the request's headers; `headers` are taken so that
        // `stream` is called as `connect` is, next to `last_event_id(headers)`.
        let _ = headers;
        let settings = &*self.settings;
        if stream_runtime().is_none() {
            return empty(StatusCode::INTERNAL_SERVER_ERROR);
        }
        let first = settings
            .retry
            .map(|retry| Event::new().retry(retry).finish());
        let shutdown = settings.shutdown.as_ref().map(Shutdown::register_polled);
        let body = polled::body(Arc::clone(&settings.limits), first, shutdown, stream);
        self.response(body)
    }

    /// The request's `Last-Event-ID`, read from `headers` as [`Connection::last_event_id`]
    /// reads it: the id of the last event the browser saw before it reconnected, for a stream
    /// given to [`stream`](Self::stream) to start after it.
    ///
    /// `None` when the header is missing or empty, and when it is unusable: not UTF-8, longer
    /// than 1024 bytes, or sent twice. The value comes from the client: parse it, do not
    /// trust it.
    ///
    /// ```
    /// use axum::{extract::State, http::HeaderMap, response::IntoResponse};
    /// use futures_util::{stream, StreamExt};
    /// use tower_eventsource::{Event, EventSource};
    ///
    /// async fn events(State(source): State<EventSource>, headers: HeaderMap) -> impl IntoResponse {
    ///     // Resume after the browser's last id: here, ids count events from 1.
    ///     let first = EventSource::last_event_id(&headers)
    ///         .and_then(|id| id.parse::<u64>().ok()?.checked_add(1))
    ///         .unwrap_or(1);
    ///     let events = stream::iter(first..first.saturating_add(3))
    ///         .map(|n| Event::new().id(n.to_string()).data(format!("event {n}")));
    ///     source.stream(&headers, events)
    /// }
    /// # let _: axum::Router = axum::Router::new()
    /// #     .route("/events", axum::routing::get(events))
    /// #     .with_state(EventSource::new());
    /// ```
    pub fn last_event_id(headers: &HeaderMap) -> Option<&str> {
        LastEventId::parse(headers).ok().flatten()
    }

    /// Starts a stream, as [`connect`](Self::connect) describes; the service and `connect`
    /// share it.
    pub(crate) fn open(&self, headers: &HeaderMap) -> Opened {
        let settings = &*self.settings;
        let last_event_id = LastEventId::from_headers(headers);
        let Some(runtime) = stream_runtime() else {
            return Opened {
                conn: Connection::ended(Arc::clone(&settings.limits), last_event_id),
                response: empty(StatusCode::INTERNAL_SERVER_ERROR),
                live: None,
            };
        };
        let (conn, shared) = Connection::new(settings.limits_on(runtime.clone()), last_event_id);
        if let Some(retry) = settings.retry {
            conn.send_unbounded([Event::new().retry(retry).finish()], 0);
        }
        let open = settings
            .shutdown
            .as_ref()
            .is_none_or(|shutdown| shutdown.register(&shared));
        let response = self.response(EventStreamBody::stream(Arc::clone(&shared)));
        Opened {
            conn,
            response,
            live: open.then_some((runtime, shared)),
        }
    }

    /// A `200` response with the stream's headers and `body`.
    pub(crate) fn response(&self, body: EventStreamBody) -> Response<EventStreamBody> {
        let mut response = Response::new(body);
        *response.headers_mut() = self.settings.headers.clone();
        response
    }

    /// Sets a header on the stream's response, replacing any default or earlier value of the
    /// same name (for one name with several values, call [`append_header`](Self::append_header)).
    /// Default: `Content-Type: text/event-stream`, `Cache-Control: no-store` and
    /// `X-Accel-Buffering: no` (so nginx does not buffer the stream).
    ///
    /// Use it to change `Cache-Control`, or for CORS on a single route: these headers go on the
    /// stream's response only, not on refusals (`405`, a check's status, a handler's own), so a
    /// cross-origin page cannot read those; tower-http's `CorsLayer` covers every response.
    /// Hop-by-hop headers (`Connection`, `Keep-Alive`, `Transfer-Encoding`, `Upgrade`,
    /// `Proxy-Connection`, `TE`, `Trailer`) and `Content-Length` are ignored: they are
    /// malformed on HTTP/2 or would break the stream.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        if allowed_header(&name) {
            self.settings_mut().headers.insert(name, value);
        }
        self
    }

    /// Adds a value to a header of the stream's response, keeping the values it already has.
    /// The same names are ignored as for [`header`](Self::header).
    pub fn append_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        if allowed_header(&name) {
            self.settings_mut().headers.append(name, value);
        }
        self
    }

    /// Sends a keep-alive comment (`:`) after `interval` without any frame, so that proxies do
    /// not drop quiet streams and a vanished client is noticed once TCP gives up on the
    /// unacknowledged comment (`TCP_USER_TIMEOUT` on the accepted socket bounds that; see the
    /// crate docs' [Disconnects](crate#disconnects) section). It never
    /// delays an event. Default: 15 seconds. An interval below one millisecond is raised to one
    /// millisecond, and one above 30 years lowered to 30 years.
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.limits().keep_alive = Some(interval.clamp(Duration::from_millis(1), LONGEST));
        self
    }

    /// Sends no keep-alive comments.
    pub fn without_keep_alive(mut self) -> Self {
        self.limits().keep_alive = None;
        self
    }

    /// How many events each connection may queue before [`Connection::push`] waits and
    /// [`Connection::try_push`] reports the buffer full. Default: 256. Zero is raised to one.
    ///
    /// The buffer only fills while the client reads more slowly than events are pushed; a
    /// larger one lets the body join more events into each write.
    pub fn buffer(mut self, events: usize) -> Self {
        self.limits().buffer = events.max(1);
        self
    }

    /// Ends a stream whose client has stopped reading: when the buffer is full and the server
    /// has not taken anything from it for `timeout`, the stream ends, its queued events are
    /// dropped, [`Connection::closed`] resolves and pushes fail with
    /// [`PushError::Disconnected`](crate::PushError::Disconnected). This frees the stream's
    /// queued events; the socket and its kernel send buffer stay held until TCP drops the
    /// connection, which `TCP_USER_TIMEOUT` on the accepted socket bounds (see the crate docs'
    /// [Disconnects](crate#disconnects) section). It is checked when a push finds the buffer full
    /// ([`Connection::push`] waits at most that long), and by a timer once the stream is
    /// closing with events still queued. Default: 30 seconds; longer than 30 years is taken as
    /// 30 years. A stalled stream that nobody pushes to keeps at most its buffer of events
    /// queued.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.limits().send_timeout = Some(timeout.min(LONGEST));
        self
    }

    /// Never ends a stream for being stalled; [`Connection::push`] may wait for ever.
    pub fn without_send_timeout(mut self) -> Self {
        self.limits().send_timeout = None;
        self
    }

    /// Ends these streams when `shutdown` is triggered; see [`Shutdown`]. Default: none.
    pub fn graceful_shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.settings_mut().shutdown = Some(shutdown.clone());
        self
    }

    /// Starts every stream with `retry:`, setting how long the browser waits before it
    /// reconnects. Default: none, so the browser uses its own (about 3 seconds).
    pub fn retry(mut self, reconnect_after: Duration) -> Self {
        self.settings_mut().retry = Some(reconnect_after);
        self
    }

    fn settings_mut(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.settings)
    }

    fn limits(&mut self) -> &mut Limits {
        Arc::make_mut(&mut self.settings_mut().limits)
    }
}

impl Default for EventSource {
    /// The same as [`EventSource::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = &*self.settings;
        f.debug_struct("EventSource")
            .field("headers", &settings.headers)
            .field("limits", &settings.limits)
            .field("retry", &settings.retry)
            .field("shutdown", &settings.shutdown)
            .finish()
    }
}

/// A response with `status` and no body.
pub(crate) fn empty(status: StatusCode) -> Response<EventStreamBody> {
    let mut response = Response::new(EventStreamBody::empty());
    *response.status_mut() = status;
    response
}

fn allowed_header(name: &HeaderName) -> bool {
    ![
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::CONTENT_LENGTH,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ]
    .contains(name)
}
