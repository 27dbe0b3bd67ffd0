//! The service, [`EventSourceService`], that answers a request with an event stream.

use crate::{
    body::EventStreamBody,
    connection::{CloseReason, Shared},
    event_source::{empty, EventSource},
    Connection, Shutdown,
};
use http::{
    header, request::Parts, HeaderName, HeaderValue, Method, Request, Response, StatusCode,
};
use pin_project_lite::pin_project;
use std::{
    convert::Infallible,
    fmt,
    future::Future,
    panic::{catch_unwind, resume_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tower_service::Service;

type Check = dyn Fn(&Parts) -> Result<(), StatusCode> + Send + Sync;

/// A [`Service`] that answers each request with a stream of Server-Sent Events.
///
/// For each accepted request it starts a stream as [`EventSource::connect`] does, spawns the
/// handler with the [`Connection`] and the request on the current tokio runtime (which must
/// have its time driver enabled, as `#[tokio::main]` and `Runtime::new` do, for keep-alive and
/// the send timeout), and returns the streaming response at once, so the browser's `open`
/// event fires before the first event. The handler pushes events through the connection; the
/// stream ends when the handler closes the connection or drops every clone of it, or when the
/// client goes away.
///
/// The handler is an async closure `Fn(Connection, Request<B>) -> impl Future` whose future
/// returns `()` or `Result<(), E>` (see [`HandlerOutput`]). For a handler with extractors
/// (axum's `State`, `Path`, a user), or refusals with headers or after an `await`, write an
/// ordinary handler that calls [`EventSource::connect`] instead.
///
/// The stream settings come from an [`EventSource`] (`EventSource::new().service(handler)`);
/// `methods` and `check` belong to the service. Cloning the service is cheap: clones share the
/// handler and the settings.
///
/// # Responses
///
/// | request | response |
/// |---|---|
/// | accepted method, check passes | `200`, the event stream (for `HEAD`, its headers only) |
/// | other method | `405` with an `Allow` header listing the accepted methods |
/// | the [`check`](Self::check) refuses | the status it returned, no body |
/// | no usable tokio runtime to spawn the handler on | `500` |
///
/// A runtime without the time driver gets that `500` through a caught panic, as
/// [`EventSource::connect`] describes (with `panic = "abort"`, the process aborts).
///
/// The stream's headers are those of [`EventSource::header`]. There is never a
/// `Content-Length` or `Connection` header.
#[must_use]
pub struct EventSourceService<H> {
    handler: Arc<H>,
    source: EventSource,
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    methods: Vec<Method>,
    check: Option<Arc<Check>>,
}

impl<H> EventSourceService<H> {
    /// A service that runs `handler` for each accepted request, with the default settings:
    /// the same as `EventSource::new().service(handler)`.
    ///
    /// Each setting's default is stated on its setter ([`EventSource`]'s for the stream's).
    pub fn new<B, F>(handler: H) -> Self
    where
        H: Fn(Connection, Request<B>) -> F,
        F: Future,
    {
        Self::from_source(EventSource::new(), handler)
    }

    pub(crate) fn from_source(source: EventSource, handler: H) -> Self {
        EventSourceService {
            handler: Arc::new(handler),
            source,
            config: Arc::new(Config {
                methods: vec![Method::GET, Method::HEAD],
                check: None,
            }),
        }
    }

    /// Same as [`EventSource::header`].
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.source = self.source.header(name, value);
        self
    }

    /// Same as [`EventSource::append_header`].
    pub fn append_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.source = self.source.append_header(name, value);
        self
    }

    /// Same as [`EventSource::keep_alive`].
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.source = self.source.keep_alive(interval);
        self
    }

    /// Same as [`EventSource::without_keep_alive`].
    pub fn without_keep_alive(mut self) -> Self {
        self.source = self.source.without_keep_alive();
        self
    }

    /// Same as [`EventSource::buffer`].
    pub fn buffer(mut self, events: usize) -> Self {
        self.source = self.source.buffer(events);
        self
    }

    /// Same as [`EventSource::send_timeout`].
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.source = self.source.send_timeout(timeout);
        self
    }

    /// Same as [`EventSource::without_send_timeout`].
    pub fn without_send_timeout(mut self) -> Self {
        self.source = self.source.without_send_timeout();
        self
    }

    /// Same as [`EventSource::graceful_shutdown`].
    pub fn graceful_shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.source = self.source.graceful_shutdown(shutdown);
        self
    }

    /// Same as [`EventSource::retry`].
    pub fn retry(mut self, reconnect_after: Duration) -> Self {
        self.source = self.source.retry(reconnect_after);
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
    /// The check answers with a status only, at once, and passes nothing on to the handler.
    /// A refusal with headers (`401` with `WWW-Authenticate`), a check that has to `await`
    /// (a session store, a database), or handing the authenticated user to the stream belong
    /// in a handler of your own that calls [`EventSource::connect`] once the request is
    /// accepted (the crate docs show one), or in a tower layer in front of the service.
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
        if req.method() == Method::HEAD {
            return self.source.response(EventStreamBody::empty());
        }
        let opened = self.source.open(req.headers());
        if let Some((runtime, shared)) = opened.live {
            let conn = opened.conn;
            #[cfg(feature = "tracing")]
            let span = conn.span();
            let task = Handler {
                future: (self.handler)(conn, req),
                shared,
            };
            // The handler runs in the stream's span, so that what it logs nests there.
            #[cfg(feature = "tracing")]
            let task = tracing::Instrument::instrument(task, span);
            runtime.spawn(task);
        }
        opened.response
    }
}

impl<H> Clone for EventSourceService<H> {
    fn clone(&self) -> Self {
        EventSourceService {
            handler: Arc::clone(&self.handler),
            source: self.source.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<H> fmt::Debug for EventSourceService<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSourceService")
            .field("source", &self.source)
            .field("methods", &self.config.methods)
            .field("check", &self.config.check.is_some())
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

/// What a handler's future may return: `()`, the [`CloseReason`] of
/// [`Connection::closed`](crate::Connection::closed), or `Result<(), E>` for any error type
/// that displays.
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

/// For a handler that ends with `conn.closed().await`: the stream has ended, nothing to report.
impl HandlerOutput for CloseReason {
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

pin_project! {
    /// A handler's future, run in its own task. When it panics, its stream is ended first,
    /// for that reason, so that clones of its connection held elsewhere (by a
    /// [`Broadcast`](crate::Broadcast), say) do not keep it open; then the panic goes on.
    struct Handler<F> {
        #[pin]
        future: F,
        shared: Arc<Shared>,
    }
}

impl<F> Future for Handler<F>
where
    F: Future,
    F::Output: HandlerOutput,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        match catch_unwind(AssertUnwindSafe(|| this.future.as_mut().poll(cx))) {
            Ok(Poll::Ready(output)) => {
                output.report();
                Poll::Ready(())
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => {
                #[cfg(feature = "tracing")]
                tracing::error!("event-stream handler panicked; its stream was ended");
                this.shared.close_here(None, CloseReason::HandlerPanic);
                resume_unwind(panic)
            }
        }
    }
}
