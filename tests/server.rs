//! The service behind a real hyper server on 127.0.0.1 (HTTP/1.1 and HTTP/2 prior knowledge),
//! read by a real hyper client: streaming, disconnects and backpressure over a socket.
//! Run with `cargo test --test server -- --nocapture` to see the disconnect-detection times.

mod common;

use common::{
    assert_ends, handover, message, next_connection, next_event, read_events, serve, Client, Proto,
    BOUND,
};
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, Notify},
    time::timeout,
};
use tower_eventsource::{Connection, Event, EventSourceService, PushError, TryPushError};

// --- The response head comes before any event -------------------------------------------

async fn headers_arrive_before_the_first_event(proto: Proto) {
    let go = Arc::new(Notify::new());
    let service = EventSourceService::new({
        let go = Arc::clone(&go);
        move |conn: Connection, _req: Request<Incoming>| {
            let go = Arc::clone(&go);
            async move {
                go.notified().await;
                conn.push("first").await?;
                conn.close();
                Ok::<_, PushError>(())
            }
        }
    });
    let addr = serve(service).await;
    let mut client = Client::connect(addr, proto).await;

    // The handler has not pushed anything (it waits for `go`), yet the head arrives.
    let response = client.get("/events").await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(!headers.contains_key(header::CONTENT_LENGTH), "{headers:?}");
    assert!(!headers.contains_key(header::CONNECTION), "{headers:?}");
    match proto {
        Proto::Http1 => {
            assert_eq!(response.version(), http::Version::HTTP_11);
            assert_eq!(headers[header::TRANSFER_ENCODING], "chunked");
        }
        Proto::Http2 => {
            assert_eq!(response.version(), http::Version::HTTP_2);
            assert!(!headers.contains_key(header::TRANSFER_ENCODING));
        }
    }

    let mut events = read_events(response.into_body());
    go.notify_one();
    assert_eq!(next_event(&mut events).await, message("first", ""));
    assert_ends(&mut events).await;
}

#[tokio::test]
async fn http1_headers_arrive_before_the_first_event() {
    headers_arrive_before_the_first_event(Proto::Http1).await;
}

#[tokio::test]
async fn http2_headers_arrive_before_the_first_event() {
    headers_arrive_before_the_first_event(Proto::Http2).await;
}

// --- Events are not buffered until the stream ends ----------------------------------------

async fn events_arrive_one_by_one(proto: Proto) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover(tx);
    let addr = serve(service).await;
    let mut client = Client::connect(addr, proto).await;
    let response = client.get("/events").await;
    let conn = next_connection(&mut rx).await;
    let mut events = read_events(response.into_body());

    for i in 0..5 {
        let id = i.to_string();
        conn.push(Event::new().id(&id).data(format!("event {i}\nline two")))
            .await
            .unwrap();
        // Read before pushing the next one: the event must not wait in a buffer.
        assert_eq!(
            next_event(&mut events).await,
            message(&format!("event {i}\nline two"), &id)
        );
    }
    conn.push(Event::new().event("done").data(""))
        .await
        .unwrap();
    let done = next_event(&mut events).await;
    assert_eq!((done.event.as_str(), done.data.as_str()), ("done", ""));
    conn.close();
    assert_ends(&mut events).await;
}

#[tokio::test]
async fn http1_events_arrive_one_by_one() {
    events_arrive_one_by_one(Proto::Http1).await;
}

#[tokio::test]
async fn http2_events_arrive_one_by_one() {
    events_arrive_one_by_one(Proto::Http2).await;
}

// --- HEAD gets the stream's headers only ---------------------------------------------------

async fn head_gets_the_headers_without_content_length(proto: Proto) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = EventSourceService::new(move |conn: Connection, req: Request<Incoming>| {
        let _ = tx.send(req.method().clone());
        async move {
            let _ = conn.push("streamed").await;
        }
    });
    let addr = serve(service).await;
    let mut client = Client::connect(addr, proto).await;

    let head = client.request(Method::HEAD, "/events");
    let response = client.send(head).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(headers["x-accel-buffering"], "no");
    // A HEAD response may only carry the length a GET would have: the stream has none.
    assert!(!headers.contains_key(header::CONTENT_LENGTH), "{headers:?}");
    assert!(!headers.contains_key(header::CONNECTION), "{headers:?}");
    let body = timeout(BOUND, response.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    assert!(body.to_bytes().is_empty());

    // The same connection still serves a GET; its handler is the only one that ran.
    let response = client.get("/events").await;
    let mut events = read_events(response.into_body());
    assert_eq!(next_event(&mut events).await, message("streamed", ""));
    assert_ends(&mut events).await;
    assert_eq!(rx.recv().await, Some(Method::GET));
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn http1_head_gets_the_headers_without_content_length() {
    head_gets_the_headers_without_content_length(Proto::Http1).await;
}

#[tokio::test]
async fn http2_head_gets_the_headers_without_content_length() {
    head_gets_the_headers_without_content_length(Proto::Http2).await;
}

// --- A client that goes away is noticed ---------------------------------------------------

/// How the client goes away.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// Closes the TCP connection.
    CloseConnection,
    /// Drops the response body only; on HTTP/2 that resets the stream and the connection
    /// stays up.
    DropResponse,
}

/// The disconnect must be noticed within this bound. The keep-alive (15 s by default) is far
/// longer, so detection cannot rely on it.
const DETECTION_BOUND: Duration = Duration::from_secs(1);

async fn client_disconnect_ends_the_stream(proto: Proto, leave: Leave) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover(tx);
    let addr = serve(service).await;
    let mut client = Client::connect(addr, proto).await;
    let response = client.get("/events").await;
    let conn = next_connection(&mut rx).await;
    let clone = conn.clone();
    let mut events = read_events(response.into_body());
    conn.push("hello").await.unwrap();
    assert_eq!(next_event(&mut events).await, message("hello", ""));
    assert!(!conn.is_closed());

    let start = Instant::now();
    drop(events);
    let client = match leave {
        Leave::CloseConnection => {
            client.disconnect().await;
            None
        }
        Leave::DropResponse => Some(client),
    };
    timeout(DETECTION_BOUND, clone.closed())
        .await
        .unwrap_or_else(|_| panic!("{proto:?} {leave:?}: disconnect not noticed within 1 s"));
    eprintln!(
        "{proto:?} {leave:?}: disconnect noticed after {:?}",
        start.elapsed()
    );
    assert!(conn.is_closed());
    assert_eq!(conn.push("gone").await, Err(PushError::Disconnected));
    assert!(matches!(
        clone.try_push("gone"),
        Err(TryPushError::Disconnected(_))
    ));

    if let Some(mut client) = client {
        // Only the stream ended: the same HTTP/2 connection serves a new stream.
        let response = client.get("/events").await;
        assert_eq!(response.status(), StatusCode::OK);
        let conn = next_connection(&mut rx).await;
        let mut events = read_events(response.into_body());
        conn.push("again").await.unwrap();
        assert_eq!(next_event(&mut events).await, message("again", ""));
    }
}

#[tokio::test]
async fn http1_client_disconnect_ends_the_stream() {
    client_disconnect_ends_the_stream(Proto::Http1, Leave::CloseConnection).await;
}

#[tokio::test]
async fn http2_client_disconnect_ends_the_stream() {
    client_disconnect_ends_the_stream(Proto::Http2, Leave::CloseConnection).await;
}

#[tokio::test]
async fn http2_stream_reset_ends_the_stream() {
    client_disconnect_ends_the_stream(Proto::Http2, Leave::DropResponse).await;
}

// --- A client that stops reading makes push wait ------------------------------------------

/// Pushes of ~16 KiB events until one waits (the socket buffers, hyper's write buffer, flow
/// control and the connection's buffer are all full), then checks `try_push` reports it.
/// Returns how many events went through.
async fn push_until_it_waits(conn: &Connection) -> usize {
    const MAX_PUSHES: usize = 4096; // 64 MiB: far more than any socket buffers hold
    let event = Event::new().data("x".repeat(16 * 1024));
    for pushed in 0..MAX_PUSHES {
        match timeout(Duration::from_secs(1), conn.push(event.clone())).await {
            Ok(result) => result.expect("the stream is open"),
            Err(_elapsed) => {
                match conn.try_push(event.clone()) {
                    Err(TryPushError::Full(_)) => {}
                    other => panic!("expected try_push to report Full, got {other:?}"),
                }
                assert!(!conn.is_closed());
                return pushed;
            }
        }
    }
    panic!("{MAX_PUSHES} pushes of 16 KiB went through although the client reads nothing");
}

#[tokio::test]
async fn http1_client_that_stops_reading_makes_push_wait() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover(tx);
    let addr = serve(service.buffer(8)).await;
    // A client that sends its request and never reads the response.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let conn = next_connection(&mut rx).await;

    let pushed = push_until_it_waits(&conn).await;
    eprintln!("Http1: push waited after {pushed} events of 16 KiB");

    // Once the client reads again, pushes go through.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0; 64 * 1024];
        while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    timeout(BOUND, conn.push("after"))
        .await
        .expect("push goes through once the client reads")
        .unwrap();
    reader.abort();
}

#[tokio::test]
async fn http2_client_that_stops_reading_makes_push_wait() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover(tx);
    let addr = serve(service.buffer(8)).await;
    let mut client = Client::connect(addr, Proto::Http2).await;
    // The response head is read, the body never polled: flow control stops the server.
    let response = client.get("/events").await;
    let conn = next_connection(&mut rx).await;

    let pushed = push_until_it_waits(&conn).await;
    eprintln!("Http2: push waited after {pushed} events of 16 KiB");

    let reader = tokio::spawn(async move {
        let mut body = response.into_body();
        while let Some(Ok(_)) = body.frame().await {}
    });
    timeout(BOUND, conn.push("after"))
        .await
        .expect("push goes through once the client reads")
        .unwrap();
    reader.abort();
}

#[tokio::test]
async fn http2_streams_share_a_connection_independently() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover(tx);
    let addr = serve(service).await;
    let mut client = Client::connect(addr, Proto::Http2).await;
    let first = client.get("/events").await;
    let first_conn = next_connection(&mut rx).await;
    let second = client.get("/events").await;
    let second_conn = next_connection(&mut rx).await;
    let (mut first, mut second) = (
        read_events(first.into_body()),
        read_events(second.into_body()),
    );

    second_conn.push("to the second").await.unwrap();
    first_conn.push("to the first").await.unwrap();
    assert_eq!(next_event(&mut second).await, message("to the second", ""));
    assert_eq!(next_event(&mut first).await, message("to the first", ""));
    first_conn.close();
    assert_ends(&mut first).await;
    second_conn.push("still open").await.unwrap();
    assert_eq!(next_event(&mut second).await, message("still open", ""));
}
