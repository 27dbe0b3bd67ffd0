//! Shared by the socket tests: a real hyper client over HTTP/1.1 or HTTP/2 (prior knowledge) on
//! 127.0.0.1, an event reader built on `eventsource-stream`, a parser we did not write, hyper
//! and axum servers on 127.0.0.1:0, a handler that hands each connection to the test, and (in
//! `example.rs`) running an example as a process. Not a test on its own.

#![allow(dead_code)]

pub(crate) mod example;
pub(crate) mod metrics;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use std::{convert::Infallible, net::SocketAddr, pin::Pin, time::Duration};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
    time::timeout,
};
use tower_eventsource::EventStreamBody;

/// Upper bound for things that should happen at once on 127.0.0.1; only reached when a test
/// fails, so a slow machine does not make the tests flaky.
pub(crate) const BOUND: Duration = Duration::from_secs(5);

/// The HTTP version a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    Http1,
    Http2,
}

enum Sender {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

/// One client connection, driven by its own task.
pub(crate) struct Client {
    sender: Sender,
    driver: JoinHandle<()>,
    addr: SocketAddr,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr, proto: Proto) -> Client {
        let tcp = timeout(BOUND, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let io = TokioIo::new(tcp);
        let (sender, driver) = match proto {
            Proto::Http1 => {
                let (sender, conn) = http1::handshake(io).await.expect("HTTP/1 handshake");
                (
                    Sender::Http1(sender),
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
            Proto::Http2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("HTTP/2 handshake");
                (
                    Sender::Http2(sender),
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
        };
        Client {
            sender,
            driver,
            addr,
        }
    }

    /// A request for `path` on this server, in the form the protocol needs.
    pub(crate) fn request(&self, method: Method, path: &str) -> http::request::Builder {
        match self.sender {
            Sender::Http1(_) => Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, self.addr.to_string()),
            Sender::Http2(_) => Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.addr)),
        }
    }

    /// Sends a request and waits (bounded) for the response head.
    pub(crate) async fn send(&mut self, req: http::request::Builder) -> Response<Incoming> {
        let req = req.body(Empty::new()).expect("valid request");
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                timeout(BOUND, sender.ready()).await.unwrap().unwrap();
                timeout(BOUND, sender.send_request(req)).await
            }
            Sender::Http2(sender) => {
                timeout(BOUND, sender.ready()).await.unwrap().unwrap();
                timeout(BOUND, sender.send_request(req)).await
            }
        };
        response
            .expect("the response head arrives in time")
            .expect("the request succeeds")
    }

    /// A GET of `path`, waiting for the response head.
    pub(crate) async fn get(&mut self, path: &str) -> Response<Incoming> {
        let req = self.request(Method::GET, path);
        self.send(req).await
    }

    /// Closes the TCP connection: the driver task, which owns the socket, is stopped.
    pub(crate) async fn disconnect(self) {
        drop(self.sender);
        self.driver.abort();
        let _ = self.driver.await;
    }
}

/// A response body read as Server-Sent Events, by [`read_events`].
pub(crate) type Events =
    Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

/// Reads a response body as Server-Sent Events with `eventsource-stream`; an error is kept as
/// its text.
pub(crate) fn read_events<B>(body: B) -> Events
where
    B: http_body::Body + Send + 'static,
    B::Data: AsRef<[u8]> + Send,
    B::Error: std::fmt::Display + Send,
{
    Box::pin(
        body.into_data_stream()
            .eventsource()
            .map(|item| item.map_err(|error| error.to_string())),
    )
}

/// Opens `path` on `addr` over a new HTTP/1.1 connection as a browser does, with
/// `Last-Event-ID` when given, and checks that the answer is an event stream; the client must
/// live as long as the events are read.
pub(crate) async fn open_stream(
    addr: SocketAddr,
    path: &str,
    last_event_id: Option<&str>,
) -> (Client, Events) {
    let mut client = Client::connect(addr, Proto::Http1).await;
    let mut request = client.request(Method::GET, path);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = client.send(request).await;
    assert_is_event_stream(&response);
    (client, read_events(response.into_body()))
}

/// Checks that a response is a `200` with `Content-Type: text/event-stream`.
pub(crate) fn assert_is_event_stream<B>(response: &Response<B>) {
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
}

/// Checks an event stream's head: `200`, `text/event-stream`, `no-store`,
/// `X-Accel-Buffering: no`, and no `Content-Length`.
pub(crate) fn assert_event_stream_headers<B>(response: &Response<B>) {
    assert_is_event_stream(response);
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert!(!response.headers().contains_key(header::CONTENT_LENGTH));
}

/// Sends a `HEAD` for `path` over a new HTTP/1.1 connection and checks that the answer is an
/// event stream's head; the client is returned so that the connection stays open.
pub(crate) async fn head_event_stream(addr: SocketAddr, path: &str) -> Client {
    let mut client = Client::connect(addr, Proto::Http1).await;
    let response = client.send(client.request(Method::HEAD, path)).await;
    assert_is_event_stream(&response);
    client
}

/// The next event, which must arrive in time.
pub(crate) async fn next_event(events: &mut Events) -> eventsource_stream::Event {
    timeout(BOUND, events.next())
        .await
        .expect("an event arrives in time")
        .expect("the stream has not ended")
        .expect("the stream parses")
}

/// Waits (bounded) for the stream to end cleanly, with no further event.
pub(crate) async fn assert_ends(events: &mut Events) {
    match timeout(BOUND, events.next()).await {
        Ok(None) => {}
        Ok(Some(other)) => panic!("expected the end of the stream, got {other:?}"),
        Err(_) => panic!("the stream did not end in time"),
    }
}

/// What a browser would receive for a data-only `message` event.
pub(crate) fn message(data: &str, id: &str) -> eventsource_stream::Event {
    eventsource_stream::Event {
        event: "message".into(),
        data: data.into(),
        id: id.into(),
        retry: None,
    }
}

/// Splits an id a hub with a history gave, `<epoch>-<number>`, into its epoch and number,
/// checking its form: the epoch is 16 hex digits.
pub(crate) fn split_id(id: &str) -> (String, u64) {
    let (epoch, number) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("{id:?} is not <epoch>-<number>"));
    assert!(
        epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit()),
        "the epoch of {id:?} is 16 hex digits"
    );
    let number = number
        .parse()
        .unwrap_or_else(|_| panic!("the number of {id:?} is a number"));
    (epoch.to_owned(), number)
}

/// The ids of the newest `count` events a hub keeps, oldest first.
pub(crate) async fn recent_ids(hub: &tower_eventsource::Broadcast, count: usize) -> Vec<String> {
    hub.recent(count)
        .await
        .expect("recent answers")
        .iter()
        .map(|entry| entry.id().to_owned())
        .collect()
}

/// A service whose handler hands each connection to `tx` (so to the test) and returns.
pub(crate) fn handover<B: Send + 'static>(
    tx: tokio::sync::mpsc::UnboundedSender<tower_eventsource::Connection>,
) -> tower_eventsource::EventSourceService<
    impl Fn(tower_eventsource::Connection, Request<B>) -> std::future::Ready<()> + Send + Sync + 'static,
> {
    tower_eventsource::EventSourceService::new(
        move |conn: tower_eventsource::Connection, _req: Request<B>| {
            let _ = tx.send(conn);
            std::future::ready(())
        },
    )
}

/// The next connection a [`handover`] service hands over.
pub(crate) async fn next_connection(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<tower_eventsource::Connection>,
) -> tower_eventsource::Connection {
    timeout(BOUND, rx.recv())
        .await
        .expect("the handler runs")
        .expect("the handler sends its connection")
}

/// Reads the next data frame of a response body, skipping trailers.
pub(crate) async fn next_data_frame(body: &mut Incoming) -> Bytes {
    loop {
        let frame = body.frame().await.expect("body ended").expect("body error");
        if let Ok(data) = frame.into_data() {
            return data;
        }
    }
}

/// Reads the first data frame of a body and checks that it starts with `prefix` (which begins
/// with the `retry` field).
pub(crate) async fn assert_first_frame_starts_with(mut body: Incoming, prefix: &str) {
    let first = next_data_frame(&mut body).await;
    assert!(
        first.starts_with(prefix.as_bytes()),
        "the stream starts with retry: {first:?}"
    );
}

/// A current-thread tokio runtime with no driver enabled, so without the time driver.
pub(crate) fn current_thread_without_time() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// A one-worker multi-thread tokio runtime with the I/O driver but without the time driver.
pub(crate) fn multi_thread_without_time() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_io()
        .build()
        .unwrap()
}

/// Reads a body's frames in the background, as a server would, stamping each with the time
/// since `start` (on tokio's paused clock in the keep-alive tests).
pub(crate) fn read_frames(
    mut body: EventStreamBody,
    start: tokio::time::Instant,
) -> tokio::sync::mpsc::UnboundedReceiver<(Duration, Bytes)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            if tx.send((start.elapsed(), data)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Serves `service` on 127.0.0.1 with hyper-util's auto builder (HTTP/1.1, and HTTP/2 when the
/// client opens with the HTTP/2 preface). The server stops with the test's runtime.
pub(crate) async fn serve<S>(service: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<EventStreamBody>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// Serves an axum `app` with `axum::serve` on 127.0.0.1; the server stops with the test's
/// runtime.
pub(crate) async fn serve_axum(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}
