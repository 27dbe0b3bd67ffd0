//! Server-Sent Events (SSE) as a [`tower::Service`](tower_service::Service).
//!
//! A handler gets a [`Connection`] and the request, and pushes [`Event`]s; the
//! [`EventSourceService`] answers at once with a streaming `http::Response` whose
//! [`EventStreamBody`] carries them to the browser's `EventSource`. Inside a handler of your
//! own (an axum handler with extractors, say), [`EventSource::connect`] starts the same stream
//! and hands back the connection and the response; see [In an axum
//! handler](#in-an-axum-handler-connect). For a stream of your own, as axum's
//! `Sse::new(stream)` takes, [`EventSource::stream`] answers with a body that polls it; see
//! [Streams](#streams-stream-forward-or-a-broadcast). One [`EventSource`] holds the stream
//! settings for all three.
//!
//! ```
//! use std::time::Duration;
//! use http::Request;
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//! use tower_eventsource::{Connection, Event, EventSourceService, PushError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let events = EventSourceService::new(|conn: Connection, _req: Request<()>| async move {
//!     conn.push("foo").await?;                                 // a data-only event
//!     conn.push(["foo", "bar", "baz"]).await?;                 // one event, three data lines
//!     conn.push(Event::new().id("1").data("foo")).await?;      // fields
//!     conn.push(Event::new().event("tick").retry(Duration::from_secs(3)).data("x")).await?;
//!     conn.close();                                           // the stream ends here
//!     Ok::<_, PushError>(())
//! });
//!
//! let response = events.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(response.headers()["content-type"], "text/event-stream");
//! // `collect` returns because the handler closes the stream; a stream that goes on is read
//! // event by event, as "Testing" below shows.
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(
//!     body,
//!     "data: foo\n\n\
//!      data: foo\ndata: bar\ndata: baz\n\n\
//!      id: 1\ndata: foo\n\n\
//!      event: tick\nretry: 3000\ndata: x\n\n"
//! );
//! # }
//! ```
//!
//! Mount it like any service: `axum::Router::new().route_service("/events", events)`, or
//! serve it with hyper through `hyper_util::service::TowerToHyperService`.
//!
//! # In an axum handler: `connect`
//!
//! The service's handler gets only the connection and the request, and its
//! [`check`](EventSourceService::check) answers with a status only. When the stream needs
//! extractors (`State`, `Path`, the authenticated user), a refusal with headers (`401` with
//! `WWW-Authenticate`) or a check that awaits, write an ordinary handler and call
//! [`EventSource::connect`] once the request is accepted: it returns the [`Connection`] and an
//! `http::Response<EventStreamBody>`, which axum takes as the handler's return value. It spawns
//! nothing; the handler pushes from a task of its own or hands the connection to a
//! [`Broadcast`].
//!
//! ```
//! use axum::{
//!     extract::State,
//!     http::{header, HeaderMap, StatusCode},
//!     response::{IntoResponse, Response},
//!     routing::get,
//!     Router,
//! };
//! use tower_eventsource::{Event, EventSource, PushError};
//!
//! #[derive(Clone)]
//! struct AppState {
//!     events: EventSource,
//! }
//!
//! async fn events(State(state): State<AppState>, headers: HeaderMap) -> Response {
//!     // Refuse as any handler does: any status, any header, after any `await`.
//!     let Some(user) = authenticate(&headers).await else {
//!         let challenge = [(header::WWW_AUTHENTICATE, r#"Bearer realm="events""#)];
//!         return (StatusCode::UNAUTHORIZED, challenge).into_response();
//!     };
//!     let (conn, response) = state.events.connect(&headers);
//!     tokio::spawn(async move {
//!         conn.push(Event::new().event("hello").data(user)).await?;
//!         // ... push this user's events until a push fails or `conn.closed()` resolves.
//!         Ok::<_, PushError>(())
//!     });
//!     response.into_response()
//! }
//!
//! async fn authenticate(headers: &HeaderMap) -> Option<String> {
//!     let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
//!     (token == "Bearer secret").then(|| "alice".to_owned())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let app: Router = Router::new()
//!     .route("/events", get(events))
//!     .with_state(AppState { events: EventSource::new() });
//! # use tower::ServiceExt;
//! # let refused = app.clone().oneshot(http::Request::get("/events").body(axum::body::Body::empty()).unwrap()).await.unwrap();
//! # assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
//! # assert_eq!(refused.headers()[header::WWW_AUTHENTICATE], r#"Bearer realm="events""#);
//! # let accepted = http::Request::get("/events").header("authorization", "Bearer secret");
//! # let accepted = app.oneshot(accepted.body(axum::body::Body::empty()).unwrap()).await.unwrap();
//! # assert_eq!(accepted.status(), StatusCode::OK);
//! # assert_eq!(accepted.headers()[header::CONTENT_TYPE], "text/event-stream");
//! # }
//! ```
//!
//! `connect` reads `Last-Event-ID`, queues the [`retry`](EventSource::retry) field and
//! registers with the [shutdown](#shutdown) handle as the service does. When axum routes a
//! `HEAD` request to the handler, it drops the response's body, so the stream sees its client
//! leave at once: pushes fail with [`PushError::Disconnected`] and [`Connection::closed`]
//! resolves. A handler that returns when a push fails or `closed()` resolves does no work for
//! it.
//!
//! Authentication fits either shape: a handler with `connect`, as above, or a tower layer in
//! front of the service, which can refuse with any response and put the user in the request's
//! extensions for the service's handler to read. The service's `check` answers with a status
//! only and passes nothing on.
//!
//! An axum handler that forwards to the service instead (`events.oneshot(req).await` inside
//! `async move { .. }`, to run extractors first) may fail to compile with "implementation of
//! `Send` is not general enough" once it does real work before the call; calling
//! `Service::call(&mut events, req).await` compiles, and `connect` needs no forwarding at all.
//!
//! # Streams: `stream`, `forward` or a `Broadcast`
//!
//! Users coming from axum's `Sse::new(stream)` already have a stream for each client: a tokio
//! `broadcast` or `watch` receiver, a database's change feed. [`EventSource::stream`] takes
//! it as it is and answers with a response whose body polls it in the task that writes the
//! response, as axum's `Sse` does:
//!
//! ```
//! use axum::{extract::State, http::HeaderMap, response::IntoResponse, routing::get, Router};
//! use tokio::sync::broadcast;
//! use tokio_stream::{wrappers::BroadcastStream, StreamExt};
//! use tower_eventsource::{Event, EventSource};
//!
//! #[derive(Clone)]
//! struct App {
//!     source: EventSource,
//!     prices: broadcast::Sender<u32>,
//! }
//!
//! async fn prices(State(app): State<App>, headers: HeaderMap) -> impl IntoResponse {
//!     let prices = BroadcastStream::new(app.prices.subscribe())
//!         .filter_map(Result::ok) // a receiver that lagged behind skips what it missed
//!         .map(|price| Event::new().event("price").data(price.to_string()));
//!     app.source.stream(&headers, prices) // was: Sse::new(prices)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (tx, _) = broadcast::channel(64);
//! let app: Router = Router::new()
//!     .route("/prices", get(prices))
//!     .with_state(App { source: EventSource::new(), prices: tx.clone() });
//! # use http_body_util::BodyExt;
//! # use tower::ServiceExt;
//! # let req = http::Request::get("/prices").body(axum::body::Body::empty()).unwrap();
//! # let response = app.oneshot(req).await.unwrap();
//! # tx.send(42).unwrap();
//! # let frame = response.into_body().frame().await.unwrap().unwrap().into_data().unwrap();
//! # assert_eq!(frame, "event: price\ndata: 42\n\n");
//! # }
//! ```
//!
//! The items are events (anything that converts into an [`Event`]) or `Result`s whose error
//! ends the stream; see [`StreamItem`]. The settings of the [`EventSource`] apply as for
//! [`connect`](EventSource::connect): headers, keep-alive while the stream is idle, `retry`
//! first, shutdown with the farewell; ready items are joined into one frame, and while the
//! stream is busy a frame waits one turn of the scheduler for more. Dropping the body (the
//! client left) drops the stream.
//!
//! The same stream can reach the client two other ways: [`Connection::forward`] reads it in
//! the handler's task and pushes into the connection's queue (where pushes from elsewhere can
//! join it), and [`Broadcast::forward`] feeds one stream into a hub that every client
//! subscribes to. How they compare:
//!
//! | | [`EventSource::stream`] | [`Connection::forward`] | [`Broadcast`] fed by [`Broadcast::forward`] |
//! |---|---|---|---|
//! | tasks per client | none: the connection's task polls the stream, woken once per batch of ready events (and, while the source is busy, once more by the body per frame, for fewer and larger writes) | the handler's, besides the connection's: up to two wake-ups per event | none: one task feeds the hub, which wakes each connection at most once per event |
//! | encoding | per client, as the body takes each item | per client, as each item is pushed | once per event, for every subscriber |
//! | backpressure | an item is taken only when the server asks for the next frame: a slow client leaves items in the source (a broadcast receiver lags); nothing is queued | the connection's [buffer](EventSource::buffer): `forward` takes no item while it is full, and the [send timeout](EventSource::send_timeout) ends a stalled stream | the hub never waits: a client whose buffer is full is disconnected or skipped ([`SlowClient`]) |
//! | resume (`Last-Event-ID`) | the handler's: build the stream from [`EventSource::last_event_id`] | the handler's: [`Connection::last_event_id`] | built in with a history: exactly what was missed, else a reset event |
//!
//! A stream of the client's own (its user's events, its query) goes through
//! [`EventSource::stream`], or [`Connection::forward`] when other tasks push to the same
//! client; events that every client gets go through one [`Broadcast`], which also replays
//! what a reconnecting browser missed.
//!
//! # Encoding
//!
//! Each event is encoded once, when it is pushed, into the exact bytes the WHATWG
//! specification describes: data split at every CRLF, CR and LF into `data:` lines, every
//! value written after a colon and one space, LF line endings. Values the wire cannot carry
//! (an id or event name with a line break, an id with NUL, a named event without data) are
//! errors, never panics, and nothing is sent; see [`EncodeError`].
//!
//! # Backpressure
//!
//! Each connection has a bounded buffer ([`EventSource::buffer`]).
//! [`Connection::push`] waits while it is full, which happens when the client reads more slowly
//! than the handler pushes; [`Connection::try_push`] never waits and hands the event back with
//! [`TryPushError::Full`]. Queued events go out together in one body frame.
//!
//! # Disconnects
//!
//! When the client goes away the server drops the body, and every clone of the connection sees
//! it at once: [`Connection::closed`] resolves and pushes fail with
//! [`PushError::Disconnected`]. A handler that only waits for something to push can race that
//! against `closed()`:
//!
//! ```
//! # use tower_eventsource::Connection;
//! async fn forward(conn: Connection, mut rx: tokio::sync::mpsc::Receiver<String>) {
//!     loop {
//!         tokio::select! {
//!             _ = conn.closed() => break,
//!             Some(msg) = rx.recv() => if conn.push(msg).await.is_err() { break },
//!             else => break,
//!         }
//!     }
//! }
//! ```
//!
//! [`Connection::forward`] does this for any `Stream` (a channel's receiver, a database's
//! change feed). [`EventSource::stream`] needs no handler task at all: the body polls the
//! stream, and dropping the body drops the stream, even while it has nothing to give. To
//! serve one stream to many clients, feed it into a [`Broadcast`] with [`Broadcast::forward`]
//! instead: each event is then encoded once for every subscriber.
//!
//! The stream ends normally after [`Connection::close`] (once what was queued is sent), or when
//! every clone of the connection is dropped, for example when the handler returns.
//!
//! A client that stops reading, or vanishes without closing its connection (a pulled cable, a
//! suspended laptop), is not noticed by a read. When events wait for it, the send timeout
//! ends its stream ([`EventSource::send_timeout`]), but the server keeps the socket and
//! its kernel send buffer until the operating system gives up on the connection: never while a
//! client that does not read stays connected, and for a vanished one only once the unanswered
//! keep-alive comment has been retransmitted for many minutes (about 16 with Linux's
//! defaults). `TCP_USER_TIMEOUT` bounds both, and with the `tcp` feature it takes one line on
//! the listener, which every accepted socket inherits on Linux:
//! [`tcp::set_user_timeout`][set_user_timeout]`(&listener, Duration::from_secs(30))` (see
//! [`tcp`][tcp], and the `chat` example). With 30 seconds, measured on Linux, a client that
//! stopped reading is dropped about 30 seconds after its window shut, and an idle one that
//! vanished about 30 seconds after the next keep-alive comment, so within the keep-alive
//! interval plus 31 seconds. The server then drops the body and the handler sees the
//! disconnect.
//!
//! # Keep-alive
//!
//! After an interval without any frame ([`EventSource::keep_alive`]) the body sends a
//! comment line, which browsers ignore: proxies keep the quiet stream open, and a vanished
//! client leaves the comment unacknowledged, so TCP gives up on it and the stream ends (see
//! [Disconnects](#disconnects) for how long that takes). A client that stops reading while
//! events are queued has its stream ended by the send timeout
//! ([`EventSource::send_timeout`]), which frees its queued events; its socket and kernel
//! send buffer are freed when TCP drops the connection.
//!
//! # Last-Event-ID
//!
//! A browser that reconnects sends the id of the last event it saw as `Last-Event-ID`;
//! [`Connection::last_event_id`] has it, decoded as UTF-8, and [`EventSource::last_event_id`]
//! reads it the same way from the request's headers, for a handler that builds the stream
//! given to [`EventSource::stream`]. It is client input: parse it, do not trust it.
//!
//! # Fan-out and replay
//!
//! [`Broadcast`] sends one event to many connections: it encodes it once, hands the same bytes
//! to every subscriber, never waits for a slow one ([`SlowClient`]), and with a history replays
//! exactly what a reconnecting browser missed, or sends a reset event when it cannot.
//! [`KeyedBroadcast`] keeps one such hub per key (a user, a room, an order), creating each on
//! first use and dropping it when it is no longer wanted, and follows all keys at once with
//! [`KeyedBroadcast::subscribe_all`]. Both run in-process or, with one more line on the
//! builder, shared by several servers; see [Scale-out](#scale-out-with-redis) and the
//! [guarantees](Broadcast#guarantees), which are the same on every backend.
//!
//! # Shutdown
//!
//! Streams do not end by themselves, so a server draining its connections would wait for ever.
//! A [`Shutdown`] handle given to the streams with
//! [`EventSource::graceful_shutdown`] ends every stream cleanly, after an optional
//! farewell event, those of [`EventSource::stream`] included. A handler that panics ends its
//! own stream only, and so does a stream given to [`EventSource::stream`].
//!
//! # Testing
//!
//! A stream does not end by itself, so a test reads it event by event, with a timeout on each
//! read (never `collect()`, which waits for an end that may not come). The
//! [`eventsource-stream`](https://docs.rs/eventsource-stream) crate parses the body into
//! events with their name, data and id:
//!
//! ```
//! use std::time::Duration;
//! use eventsource_stream::Eventsource;
//! use futures_util::StreamExt;
//! use http_body_util::BodyExt;
//! use tokio::time::timeout;
//! use tower::ServiceExt;
//! use tower_eventsource::{Broadcast, Connection, Event, EventSourceService};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let hub = Broadcast::new();
//! let events = EventSourceService::new({
//!     let hub = hub.clone();
//!     move |conn: Connection, _req: http::Request<()>| {
//!         let hub = hub.clone();
//!         async move {
//!             hub.subscribe(&conn).await;
//!         }
//!     }
//! });
//!
//! let response = events.oneshot(http::Request::new(())).await.unwrap();
//! // The service runs the handler on a task of its own: wait until it has subscribed.
//! timeout(Duration::from_secs(5), async {
//!     while hub.stats().subscribers == 0 {
//!         tokio::task::yield_now().await;
//!     }
//! })
//! .await
//! .expect("the handler subscribes");
//! hub.send(Event::new().event("tick").id("7").data("hello")).await.unwrap();
//!
//! let mut stream = response.into_body().into_data_stream().eventsource();
//! let event = timeout(Duration::from_secs(5), stream.next())
//!     .await
//!     .expect("an event arrives in time")
//!     .expect("the stream goes on")
//!     .expect("the stream parses");
//! assert_eq!((event.event.as_str(), event.data.as_str(), event.id.as_str()), ("tick", "hello", "7"));
//! # }
//! ```
//!
//! A handler that calls [`EventSource::connect`] and subscribes before it returns needs no
//! wait: the subscription has happened when its response arrives, and the test can send at
//! once. In the service's handler, [`Broadcast::subscribe`] returns a [`Resume`] the handler
//! can hand to the test, and [`Broadcast::stats`] counts the `subscribers`.

//! # Scale-out with Redis
//!
//! With the `redis` feature, [`BroadcastBuilder::redis`][redis] (and the same on
//! [`KeyedBroadcastBuilder`]) shares a hub among several servers behind a load balancer
//! through Redis Streams (Redis 7.0 or later; the keys of one hub share one Redis Cluster hash
//! slot). It is the only line that changes: every method, type and guarantee stays the same.
//!
//! A send runs one Lua script that numbers the event, appends it to the hub's stream (and,
//! for a keyed hub, to the key's own stream, which holds the key's last `history(n)` events),
//! and records its idempotency key; it never delivers by itself. Each server runs one reader
//! task per hub, on a Redis connection of its own, which tails the hub's stream and delivers
//! every event to this server's subscribers, encoding it once per server: every server, the
//! sending one included, delivers the same events in the same order with the same ids. A
//! reconnecting browser's `Last-Event-ID` is served from this server's history when it holds
//! everything after it (no Redis call), else from the key's stream in Redis, spliced with what
//! the reader delivers; anything else gets the reset event.
//!
//! The guarantee: each client gets every event once, in order, with no gap and no duplicate,
//! or exactly one reset event, after which it gets every event after the reset's id. When a
//! server's reader finds that it may have missed events (the history lost or recreated, or the
//! stream trimmed past it), its subscribers get the reset event.
//!
//! While Redis is unreachable, open streams stay open (keep-alive goes on), sends fail within
//! the [response timeout](BroadcastBuilder::response_timeout) with a [`SendError`] that says
//! whether the event may have been stored, resumes are served from local history where they
//! can be (else the stream is closed, [`Resume::Unavailable`], and the browser retries), and
//! the reader reconnects with backoff and goes on from the last event it delivered. Every send
//! carries an idempotency key (its own, or the one given to
//! [`send_idempotent`](Broadcast::send_idempotent)), so a send whose connection broke is
//! retried once without being stored twice. Whether Redis keeps what it acknowledged across a
//! crash is Redis's setting: `appendonly yes` with `appendfsync always` loses nothing
//! acknowledged; with less, a crash may lose the latest acknowledged events.
//!
//! # Production visibility
//!
//! **Why a stream ended**: [`Connection::closed`] returns a [`CloseReason`], the first cause
//! that decided to end the stream: the client left, this side closed it, the send timeout, a
//! hub's slow-client policy, a shutdown, the handler finished, or it panicked.
//!
//! **Metrics** (feature `metrics`), on the [`metrics`](https://docs.rs/metrics) facade: the
//! application installs the exporter it likes (`metrics-exporter-prometheus`, say) *before* it
//! builds its [`EventSource`]s and hubs, which register their metrics when built, so that each
//! shows as 0 before anything happens. Without a recorder a metric costs a branch. No label
//! names a key, a user or a connection.
//!
//! | Metric | Kind | Labels | What |
//! |---|---|---|---|
//! | `sse_connections_active` | gauge | | Streams open now; a stream leaves it when it ends, even if its client never reads again. |
//! | `sse_connections_total` | counter | | Streams opened. |
//! | `sse_connections_closed_total` | counter | `reason` | Streams ended, by [`CloseReason::as_str`]: `client_gone`, `closed`, `send_timeout`, `slow_client`, `shutdown`, `handler_done`, `handler_panic`. |
//! | `sse_connection_duration_seconds` | histogram | `reason` | How long each stream lasted. |
//! | `sse_events_sent_total` | counter | | Events written to streams, replays and reset events included; keep-alive comments and a frame with only `retry:` are not events. |
//! | `sse_bytes_sent_total` | counter | | Bytes of the event-stream bodies, keep-alive comments included. |
//! | `sse_hub_events_sent_total` | counter | `hub`, `backend` | Sends through the hub on this server that succeeded, not counting repeats of an idempotency key. |
//! | `sse_hub_subscribers` | gauge | `hub`, `backend` | Subscriptions of open streams on this server. |
//! | `sse_hub_resumes_total` | counter | `hub`, `backend`, `outcome` | Subscribes by how they started: `live`, `replayed`, `reset`. |
//! | `sse_hub_slow_clients_total` | counter | `hub`, `backend`, `action` | Full buffers a send met: `disconnect`, or `skip` (per event skipped for a client). |
//! | `sse_hub_send_errors_total` | counter | `hub`, `backend` | Sends that failed (not those of events that cannot be encoded). |
//! | `sse_hub_send_duration_seconds` | histogram | `hub`, `backend` | How long each send took. |
//! | `sse_hub_keys` | gauge | `hub`, `backend` | Keys of a [`KeyedBroadcast`] on this server. |
//! | `sse_redis_reader_reconnects_total` | counter | `hub`, `backend` | Times this server's reader reconnected to Redis. |
//! | `sse_redis_stream_resets_total` | counter | `hub`, `backend` | Times the reader found the hub's stream lost, recreated or trimmed past it. |
//! | `sse_redis_reader_lag_seconds` | histogram | `hub`, `backend` | From an event's entry in Redis to its delivery here (per batch read). |
//!
//! `hub` is the name set with [`BroadcastBuilder::name`] (by default the Redis name, or
//! `default`), `backend` is `memory` or `redis`.
//!
//! **Spans** (feature `tracing`): each stream has an `info` span `sse.stream`, a child of the
//! span its request was served in (so it nests under tower-http's `TraceLayer`), in which the
//! service's handler runs. It records the `hub` the stream joined and how it resumed
//! (`resume`), and when it ends the `events` and `bytes` it sent and the `reason`. On a shared
//! backend each send has a span `sse.send` (`hub`, `backend`). Any `tracing` subscriber shows
//! them (`tracing-subscriber`'s `fmt` layer, or `tracing-opentelemetry` to export them).
//!
//! # Feature flags
//!
//! - `json`: [`Event::json_data`][json_data], serialising data with serde_json.
//! - `tracing`: a span per stream and per send on a shared backend (see [Production
//!   visibility](#production-visibility)); handler panics (error level) and handler errors
//!   (debug level) are reported, and so are those of a stream given to
//!   [`EventSource::stream`] (a panic, an error item, an event that cannot be encoded).
//! - `metrics`: the metrics of streams and hubs (see [Production
//!   visibility](#production-visibility)), on the `metrics` facade.
//!
#![cfg_attr(feature = "json", doc = "[json_data]: Event::json_data")]
#![cfg_attr(
    not(feature = "json"),
    doc = "[json_data]: https://docs.rs/tower-eventsource/latest/tower_eventsource/struct.Event.html#method.json_data"
)]

//! - `redis`: [`BroadcastBuilder::redis`][redis] and `KeyedBroadcastBuilder::redis`, hubs
//!   shared by several servers through Redis Streams, with the `redis` crate (re-exported as
//!   `tower_eventsource::redis`; see [Scale-out with Redis](#scale-out-with-redis)).
//! - `tcp`: the [`tcp`][tcp] module: a listener with the system's largest backlog, for the
//!   storm of reconnects after a restart, and `TCP_USER_TIMEOUT` in one line, to drop clients
//!   that stopped reading or vanished (see [Disconnects](#disconnects)).
//!
// Links to the Redis items: without the `redis` feature, to their published docs.
#![cfg_attr(feature = "redis", doc = "[redis]: BroadcastBuilder::redis")]
#![cfg_attr(
    not(feature = "redis"),
    doc = "[redis]: https://docs.rs/tower-eventsource/latest/tower_eventsource/struct.BroadcastBuilder.html#method.redis"
)]
// Links to the `tcp` module: without the `tcp` feature, to its published docs.
#![cfg_attr(feature = "tcp", doc = "[tcp]: crate::tcp")]
#![cfg_attr(
    feature = "tcp",
    doc = "[set_user_timeout]: crate::tcp::set_user_timeout"
)]
#![cfg_attr(
    not(feature = "tcp"),
    doc = "[tcp]: https://docs.rs/tower-eventsource/latest/tower_eventsource/tcp/index.html"
)]
#![cfg_attr(
    not(feature = "tcp"),
    doc = "[set_user_timeout]: https://docs.rs/tower-eventsource/latest/tower_eventsource/tcp/fn.set_user_timeout.html"
)]

mod body;
mod connection;
mod error;
mod event;
mod event_source;
mod hub;
mod observe;
mod polled;
mod service;
mod shutdown;
#[cfg(feature = "tcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "tcp")))]
pub mod tcp;
#[cfg(test)]
mod testing;

pub use body::EventStreamBody;
pub use connection::{CloseReason, Connection};
pub use error::{PushError, TryPushError};
pub use event::{EncodeError, Event};
pub use event_source::EventSource;
pub use hub::{
    BackendError, Broadcast, BroadcastBuilder, BroadcastStats, HistoryEntry, KeyedBroadcast,
    KeyedBroadcastBuilder, KeyedBroadcastStats, Resume, SendError, Sent, SlowClient,
};
pub use polled::StreamItem;
/// The `redis` crate this one is built with, for the `redis::Client` a hub's
/// [`BroadcastBuilder::redis`] takes.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis;
pub use service::{EventSourceService, HandlerOutput, ResponseFuture};
pub use shutdown::Shutdown;

/// The examples in README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
