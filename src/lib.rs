//! Server-Sent Events (SSE) as a [`tower::Service`](tower_service::Service).
//!
//! A handler gets a [`Connection`] and the request, and pushes [`Event`]s; the
//! [`EventSourceService`] answers at once with a streaming `http::Response` whose
//! [`EventStreamBody`] carries them to the browser's `EventSource`.
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
//!     conn.close();
//!     Ok::<_, PushError>(())
//! });
//!
//! let response = events.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(response.headers()["content-type"], "text/event-stream");
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
//! Each connection has a bounded buffer ([`EventSourceService::buffer`]).
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
//! The stream ends normally after [`Connection::close`] (once what was queued is sent), or when
//! every clone of the connection is dropped, for example when the handler returns.
//!
//! A client that stops reading, or vanishes without closing its connection (a pulled cable, a
//! suspended laptop), is not noticed by a read. When events wait for it, the send timeout
//! ends its stream ([`EventSourceService::send_timeout`]), but the server keeps the socket and
//! its kernel send buffer until the operating system gives up on the connection: never while a
//! client that does not read stays connected, and for a vanished one only once the unanswered
//! keep-alive comment has been retransmitted for many minutes (about 16 with Linux's
//! defaults). Setting `TCP_USER_TIMEOUT` on every accepted socket bounds both (the README and
//! the `chat` example show how, with the `socket2` crate): with 30 seconds, measured on Linux,
//! a client that stopped reading is dropped about 30 seconds after its window shut, and an idle
//! one that vanished about 30 seconds after the next keep-alive comment, so within the
//! keep-alive interval plus 31 seconds. The server then drops the body and the handler sees
//! the disconnect.
//!
//! # Keep-alive
//!
//! After an interval without any frame ([`EventSourceService::keep_alive`]) the body sends a
//! comment line, which browsers ignore: proxies keep the quiet stream open, and a vanished
//! client leaves the comment unacknowledged, so TCP gives up on it and the stream ends (see
//! [Disconnects](#disconnects) for how long that takes). A client that stops reading while
//! events are queued has its stream ended by the send timeout
//! ([`EventSourceService::send_timeout`]), which frees its queued events; its socket and kernel
//! send buffer are freed when TCP drops the connection.
//!
//! # Last-Event-ID
//!
//! A browser that reconnects sends the id of the last event it saw as `Last-Event-ID`;
//! [`Connection::last_event_id`] has it, decoded as UTF-8. It is client input: parse it, do not
//! trust it.
//!
//! # Fan-out and replay
//!
//! [`Broadcast`] sends one event to many connections: it encodes it once, hands the same bytes
//! to every subscriber, never waits for a slow one ([`SlowClient`]), and with a history replays
//! exactly what a reconnecting browser missed, or sends a reset event when it cannot.
//!
//! # Shutdown
//!
//! Streams do not end by themselves, so a server draining its connections would wait for ever.
//! A [`Shutdown`] handle given to the service with
//! [`EventSourceService::graceful_shutdown`] ends every stream cleanly, after an optional
//! farewell event. A handler that panics ends its own stream only.
//!
//! # Feature flags
//!
//! - `json`: [`Event::json_data`], serialising data with serde_json.
//! - `tracing`: handler panics (error level) and handler errors (debug level) are reported
//!   with `tracing`.

mod body;
mod broadcast;
mod connection;
mod error;
mod event;
mod service;
mod shutdown;

pub use body::EventStreamBody;
pub use broadcast::{Broadcast, BroadcastBuilder, BroadcastStats, Resume, SlowClient};
pub use connection::Connection;
pub use error::{PushError, TryPushError};
pub use event::{EncodeError, Event};
pub use service::{EventSourceService, HandlerOutput, ResponseFuture};
pub use shutdown::Shutdown;

/// The examples in README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
