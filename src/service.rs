//! The service, [`EventSourceService`], that answers a request with an event stream.

use crate::{
    body::EventStreamBody,
    connection::{stream_runtime, LastEventId, Limits, Shared},
    Connection, Event, Shutdown,
};
use http::{
    header, request::Parts, HeaderMap, HeaderName, HeaderValue, Method, Request, Response,
    StatusCode,
};
use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tower_service::Service;

/// Longest keep-alive interval or send timeout; longer ones are taken as this.
const LONGEST: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

type Check = dyn Fn(&Parts) -> Result<(), StatusCode> + Send + Sync;

/// A [`Service`] that answers each request with a stream of Server-Sent Events.
///
/// For each accepted request it creates a [`Connection`], spawns the handler with it and the
/// request on the current tokio runtime (which must have its time driver enabled, as
/// `#[tokio::main]` and `Runtime::new` do, for keep-alive and the send timeout), and returns the streaming response at once, so the
/// browser's `open` event fires before the first event. The handler pushes events through the
/// connection; the stream ends when the handler closes the connection or drops every clone of
/// it, or when the client goes away.
///
/// The handler is an async closure `Fn(Connection, Request<B>) -> impl Future` whose future
/// returns `()` or `Result<(), E>` (see [`HandlerOutput`]).
///
/// Cloning the service is cheap: clones share the handler and the settings.
///
/// # Responses
///
/// | request | response |
/// |---|---|
/// | accepted method, check passes | `200`, the event stream (for `HEAD`, its headers only) |
/// | other method | `405` with an `Allow` header listing the accepted methods |
/// | the [`check`](Self::check) refuses | the status it returned, no body |
/// | no tokio runtime to spawn the handler on | `500` |
///
/// The stream's headers are `Content-Type: text/event-stream`, `Cache-Control: no-store` and
/// `X-Accel-Buffering: no` (so nginx does not buffer it), plus those set with
/// [`header`](Self::header). There is never a `Content-Length` or `Connection` header.
#[must_use]
pub struct EventSourceService<H> {
    handler: Arc<H>,
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    headers: HeaderMap,
    limits: Arc<Limits>,
    retry: Option<Duration>,
    methods: Vec<Method>,
    check: Option<Arc<Check>>,
    shutdown: Option<Shutdown>,
}

impl<H> EventSourceService<H> {
    /// A service that runs `handler` for each accepted request.
    ///
    /// Each setting's default is stated on its setter.
    pub fn new<B, F>(handler: H) -> Self
    where
        H: Fn(Connection, Request<B>) -> F,
        F: Future,
    {
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
        EventSourceService {
            handler: Arc::new(handler),
            config: Arc::new(Config {
                headers,
                limits: Arc::new(Limits {
                    buffer: 256,
                    send_timeout: Some(Duration::from_secs(30)),
                    keep_alive: Some(Duration::from_secs(15)),
                }),
                retry: None,
                methods: vec![Method::GET, Method::HEAD],
                check: None,
                shutdown: None,
            }),
        }
    }

    /// Sets a header on the stream's response, replacing any default or earlier value of the
    /// same name (for one name with several values, call [`append_header`](Self::append_header)).
    ///
    /// Use it to change `Cache-Control`, or for CORS on a single route: these headers go on the
    /// stream's response only, not on refusals (`405`, the check's status), so a cross-origin
    /// page cannot read those; tower-http's `CorsLayer` covers every response. Hop-by-hop headers
    /// (`Connection`, `Keep-Alive`, `Transfer-Encoding`, `Upgrade`, `Proxy-Connection`, `TE`,
    /// `Trailer`) and `Content-Length` are ignored: they are malformed on HTTP/2 or would
    /// break the stream.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        if allowed_header(&name) {
            Arc::make_mut(&mut self.config).headers.insert(name, value);
        }
        self
    }

    /// Adds a value to a header of the stream's response, keeping the values it already has.
    /// The same names are ignored as for [`header`](Self::header).
    pub fn append_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        if allowed_header(&name) {
            Arc::make_mut(&mut self.config).headers.append(name, value);
        }
        self
    }

    /// Sends a keep-alive comment (`:`) after `interval` without any frame, so that proxies do
    /// not drop quiet streams and a dead client is noticed through the failed write. It never
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
    /// dropped, [`Connection::closed`] resolves and pushes fail. This bounds what a stuck or
    /// vanished client holds to the buffer. It is checked when a push finds the buffer full
    /// ([`Connection::push`] waits at most that long), and by a timer once the stream is
    /// closing with events still queued. Default: 30 seconds; longer than 30 years is taken as
    /// 30 years. A stalled stream that nobody pushes to holds at most its buffer.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.limits().send_timeout = Some(timeout.min(LONGEST));
        self
    }

    /// Never ends a stream for being stalled; [`Connection::push`] may wait for ever.
    pub fn without_send_timeout(mut self) -> Self {
        self.limits().send_timeout = None;
        self
    }

    /// Ends this service's streams when `shutdown` is triggered; see [`Shutdown`].
    pub fn graceful_shutdown(mut self, shutdown: &Shutdown) -> Self {
        Arc::make_mut(&mut self.config).shutdown = Some(shutdown.clone());
        self
    }

    /// Starts every stream with `retry:`, setting how long the browser waits before it
    /// reconnects. Default: none, so the browser uses its own (about 3 seconds).
    pub fn retry(mut self, reconnect_after: Duration) -> Self {
        Arc::make_mut(&mut self.config).retry = Some(reconnect_after);
        self
    }

    /// The methods that get a stream, replacing the default `GET` and `HEAD`; others get
    /// `405 Method Not Allowed`. `HEAD` gets the stream's headers without running the handler.
    ///
    /// Browsers' `EventSource` only sends `GET`; add `POST` for clients that start a stream
    /// with a request body (the handler receives the request with its body).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.methods.clear();
        for method in methods {
            if !config.methods.contains(&method) {
                config.methods.push(method);
            }
        }
        self
    }

    /// Checks each request before the stream starts. Returning `Err(status)` answers with that
    /// status and no body, and the handler does not run. Default: none, every request with
    /// an accepted method gets a stream.
    ///
    /// `204 No Content` tells a browser to stop reconnecting for good; `401`, `403` and `404`
    /// refuse. (Any status but `200` stops a browser's `EventSource`.)
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_eventsource::{Connection, EventSourceService};
    ///
    /// let events = EventSourceService::new(|conn: Connection, _req: http::Request<()>| async move {
    ///     let _ = conn.push("hello").await;
    /// })
    /// .check(|req| match req.headers.contains_key("authorization") {
    ///     true => Ok(()),
    ///     false => Err(StatusCode::NO_CONTENT),
    /// });
    /// # drop(events);
    /// ```
    pub fn check<C>(mut self, check: C) -> Self
    where
        C: Fn(&Parts) -> Result<(), StatusCode> + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.config).check = Some(Arc::new(check));
        self
    }

    fn limits(&mut self) -> &mut Limits {
        Arc::make_mut(&mut Arc::make_mut(&mut self.config).limits)
    }

    /// The response for `req`, spawning the handler when it gets a stream.
    fn respond<B, F>(&self, req: Request<B>) -> Response<EventStreamBody>
    where
        H: Fn(Connection, Request<B>) -> F + Send + Sync + 'static,
        F: Future + Send + 'static,
        F::Output: HandlerOutput,
        B: Send + 'static,
    {
        let config = &*self.config;
        if !config.methods.contains(req.method()) {
            let allow = config
                .methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let mut response = empty(StatusCode::METHOD_NOT_ALLOWED);
            if let Ok(allow) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, allow);
            }
            return response;
        }
        let req = match &config.check {
            None => req,
            Some(check) => {
                let (parts, body) = req.into_parts();
                if let Err(status) = check(&parts) {
                    return empty(status);
                }
                Request::from_parts(parts, body)
            }
        };
        let body = if req.method() == Method::HEAD {
            EventStreamBody::empty()
        } else {
            let Some(runtime) = stream_runtime() else {
                return empty(StatusCode::INTERNAL_SERVER_ERROR);
            };
            let last_event_id = LastEventId::from_headers(req.headers());
            let (conn, shared) =
                Connection::new(Arc::clone(&config.limits), last_event_id, runtime.clone());
            if let Some(retry) = config.retry {
                conn.send_unbounded([Event::new().retry(retry).finish()]);
            }
            let open = config
                .shutdown
                .as_ref()
                .is_none_or(|shutdown| shutdown.register(&shared));
            if open {
                let handler = Arc::clone(&self.handler);
                let guard = PanicGuard(Arc::clone(&shared));
                runtime.spawn(async move {
                    handler(conn, req).await.report();
                    drop(guard);
                });
            }
            EventStreamBody::stream(shared)
        };
        let mut response = Response::new(body);
        *response.headers_mut() = config.headers.clone();
        response
    }
}

impl<H> Clone for EventSourceService<H> {
    fn clone(&self) -> Self {
        EventSourceService {
            handler: Arc::clone(&self.handler),
            config: Arc::clone(&self.config),
        }
    }
}

impl<H> fmt::Debug for EventSourceService<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &*self.config;
        f.debug_struct("EventSourceService")
            .field("headers", &config.headers)
            .field("limits", &config.limits)
            .field("retry", &config.retry)
            .field("methods", &config.methods)
            .field("check", &config.check.is_some())
            .field("shutdown", &config.shutdown)
            .finish_non_exhaustive()
    }
}

impl<H, F, B> Service<Request<B>> for EventSourceService<H>
where
    H: Fn(Connection, Request<B>) -> F + Send + Sync + 'static,
    F: Future + Send + 'static,
    F::Output: HandlerOutput,
    B: Send + 'static,
{
    type Response = Response<EventStreamBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        ResponseFuture {
            response: Some(self.respond(req)),
        }
    }
}

/// The future [`EventSourceService`] returns: ready at once with the response.
///
/// # Panics
///
/// Like most futures, it panics when polled again after it returned the response.
pub struct ResponseFuture {
    response: Option<Response<EventStreamBody>>,
}

impl Future for ResponseFuture {
    type Output = Result<Response<EventStreamBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(self
            .response
            .take()
            .expect("ResponseFuture polled after completion")))
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// What a handler's future may return: `()`, or `Result<(), E>` for any error type that
/// displays.
///
/// An error is treated like a return: the handler's connection is dropped, which ends the stream
/// unless clones of it live on (in a [`Broadcast`](crate::Broadcast), say). With the `tracing`
/// feature the error is logged at debug level; without it, it is dropped.
pub trait HandlerOutput: Send + 'static {
    /// Reports the outcome once the handler has finished.
    fn report(self);
}

impl HandlerOutput for () {
    fn report(self) {}
}

impl<E: fmt::Display + Send + 'static> HandlerOutput for Result<(), E> {
    fn report(self) {
        #[cfg(feature = "tracing")]
        if let Err(error) = self {
            tracing::debug!(%error, "event-stream handler returned an error");
        }
        #[cfg(not(feature = "tracing"))]
        let _ = self;
    }
}

/// Ends the stream of a handler that panics, so that clones of its connection held elsewhere
/// (by a [`Broadcast`](crate::Broadcast), say) do not keep it open.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            #[cfg(feature = "tracing")]
            tracing::error!("event-stream handler panicked; its stream was ended");
            self.0.close_here(None);
        }
    }
}

fn empty(status: StatusCode) -> Response<EventStreamBody> {
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
