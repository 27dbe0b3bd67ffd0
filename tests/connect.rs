//! `EventSource::connect` inside ordinary axum 0.8 handlers (extractors, a `401` with
//! `WWW-Authenticate`, `Last-Event-ID`, `retry`, shutdown, `HEAD`), served by `axum::serve` on
//! 127.0.0.1 and read by a real client with `eventsource-stream`; and the `500` that both
//! `connect` and the service answer without a usable tokio runtime.
//! Run with `cargo test --test connect`.

mod common;

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use common::{
    assert_ends, assert_event_stream_headers, assert_first_frame_starts_with,
    current_thread_without_time, head_event_stream, multi_thread_without_time, next_event,
    read_events, serve_axum, split_id, Client, Proto, BOUND,
};
use futures_util::FutureExt;
use http::{header, Method, Request, StatusCode};
use std::time::Duration;
use tokio::{sync::mpsc, time::timeout};
use tower::ServiceExt;
use tower_eventsource::{
    Broadcast, CloseReason, Connection, Event, EventSource, EventSourceService, PushError,
    Shutdown, TryPushError,
};

#[derive(Clone)]
struct App {
    source: EventSource,
    hub: Broadcast,
}

/// The user a bearer token stands for; `None` refuses.
fn user(headers: &HeaderMap) -> Option<&'static str> {
    match headers.get(header::AUTHORIZATION)?.to_str().ok()? {
        "Bearer alice-token" => Some("alice"),
        _ => None,
    }
}

/// A handler as an app writes it: extractors, its own refusal, then `connect`.
async fn room_events(
    State(app): State<App>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(user) = user(&headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Bearer realm="events""#)],
        )
            .into_response();
    };
    let (conn, response) = app.source.connect(&headers);
    tokio::spawn(async move {
        let welcome = Event::new()
            .event("welcome")
            .id("1")
            .data(format!("{user} in {room}"));
        conn.push(welcome).await?;
        let resumed = conn.last_event_id().unwrap_or("none").to_owned();
        conn.push(Event::new().event("resumed").data(resumed))
            .await?;
        conn.close();
        Ok::<_, PushError>(())
    });
    response.into_response()
}

fn app(source: EventSource) -> Router {
    Router::new()
        .route("/rooms/{room}/events", get(room_events))
        .with_state(App {
            source,
            hub: Broadcast::new(),
        })
}

#[tokio::test]
async fn a_handler_with_extractors_streams_through_connect() {
    let addr = serve_axum(app(EventSource::new())).await;
    let mut client = Client::connect(addr, Proto::Http1).await;
    let req = client
        .request(Method::GET, "/rooms/lobby/events")
        .header(header::AUTHORIZATION, "Bearer alice-token");
    let response = client.send(req).await;
    assert_event_stream_headers(&response);
    let mut events = read_events(response.into_body());
    let welcome = next_event(&mut events).await;
    assert_eq!(welcome.event, "welcome");
    assert_eq!(welcome.data, "alice in lobby");
    assert_eq!(welcome.id, "1");
    let resumed = next_event(&mut events).await;
    assert_eq!(
        (resumed.event.as_str(), resumed.data.as_str()),
        ("resumed", "none")
    );
    assert_ends(&mut events).await;
}

#[tokio::test]
async fn a_handler_refuses_with_401_and_www_authenticate_before_connect() {
    let addr = serve_axum(app(EventSource::new())).await;
    for token in [None, Some("Bearer wrong")] {
        let mut client = Client::connect(addr, Proto::Http1).await;
        let mut req = client.request(Method::GET, "/rooms/lobby/events");
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, token);
        }
        let response = client.send(req).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="events""#
        );
        assert_ne!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"text/event-stream"[..])
        );
    }
}

#[tokio::test]
async fn the_handler_sees_last_event_id_as_the_service_does() {
    let addr = serve_axum(app(EventSource::new())).await;
    let mut client = Client::connect(addr, Proto::Http2).await;
    let req = client
        .request(Method::GET, "/rooms/lobby/events")
        .header(header::AUTHORIZATION, "Bearer alice-token")
        .header("last-event-id", "héllo-41");
    let mut events = read_events(client.send(req).await.into_body());
    next_event(&mut events).await;
    assert_eq!(next_event(&mut events).await.data, "héllo-41");

    // An unusable id (longer than 1024 bytes) reads as none, and is reported as unusable.
    let headers: HeaderMap = [(
        header::HeaderName::from_static("last-event-id"),
        "x".repeat(1025).parse().unwrap(),
    )]
    .into_iter()
    .collect();
    let (conn, _response) = EventSource::new().connect(&headers);
    assert_eq!(conn.last_event_id(), None);
    assert!(conn.has_unusable_last_event_id());
}

#[tokio::test]
async fn retry_is_queued_before_anything_the_handler_pushes() {
    let source = EventSource::new().retry(Duration::from_millis(2500));
    let addr = serve_axum(app(source)).await;
    let mut client = Client::connect(addr, Proto::Http1).await;
    let req = client
        .request(Method::GET, "/rooms/lobby/events")
        .header(header::AUTHORIZATION, "Bearer alice-token");
    let body = client.send(req).await.into_body();
    assert_first_frame_starts_with(body, "retry: 2500\n\n").await;
}

#[tokio::test]
async fn a_subscription_made_in_the_handler_has_happened_when_the_response_arrives() {
    let hub = Broadcast::builder().history(10).build();
    let app = Router::new()
        .route(
            "/events",
            get(|State(app): State<App>, headers: HeaderMap| async move {
                let (conn, response) = app.source.connect(&headers);
                app.hub.subscribe(&conn).await;
                response
            }),
        )
        .with_state(App {
            source: EventSource::new(),
            hub: hub.clone(),
        });
    let addr = serve_axum(app).await;
    let mut client = Client::connect(addr, Proto::Http1).await;
    let response = client.get("/events").await;
    // No waiting: the handler subscribed before it returned the response.
    assert_eq!(hub.stats().subscribers, 1);
    let sent = hub.send("live").await.unwrap();
    assert_eq!(sent.reached(), Some(1));
    let mut events = read_events(response.into_body());
    let event = next_event(&mut events).await;
    assert_eq!(
        (event.data.as_str(), event.id.as_str()),
        ("live", sent.id().unwrap())
    );
    assert_eq!(split_id(&event.id).1, 1, "the hub's first event");
}

#[tokio::test]
async fn shutdown_sends_the_farewell_and_ends_streams_started_with_connect() {
    type Pushes = mpsc::UnboundedSender<Result<(), PushError>>;
    let shutdown = Shutdown::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/events",
            get(
                |State((source, tx)): State<(EventSource, Pushes)>, headers: HeaderMap| async move {
                    let (conn, response) = source.connect(&headers);
                    let _ = tx.send(conn.push("hello").await);
                    tokio::spawn(async move { conn.closed().await });
                    response
                },
            ),
        )
        .with_state((EventSource::new().graceful_shutdown(&shutdown), tx));
    let addr = serve_axum(app).await;

    let mut client = Client::connect(addr, Proto::Http1).await;
    let mut events = read_events(client.get("/events").await.into_body());
    assert_eq!(recv(&mut rx).await, Ok(()));
    assert_eq!(next_event(&mut events).await.data, "hello");

    shutdown
        .trigger_with(Event::new().event("bye").data("restarting"))
        .unwrap();
    let bye = next_event(&mut events).await;
    assert_eq!(
        (bye.event.as_str(), bye.data.as_str()),
        ("bye", "restarting")
    );
    assert_ends(&mut events).await;

    // A stream started after the trigger holds only the farewell, and its connection is
    // closed from the start.
    let mut client = Client::connect(addr, Proto::Http1).await;
    let response = client.get("/events").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = read_events(response.into_body());
    assert_eq!(recv(&mut rx).await, Err(PushError::Closed));
    assert_eq!(next_event(&mut events).await.event, "bye");
    assert_ends(&mut events).await;
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    timeout(BOUND, rx.recv())
        .await
        .expect("the handler reports in time")
        .expect("the handler reports")
}

#[tokio::test]
async fn a_head_request_routed_to_the_handler_sees_its_client_leave_at_once() {
    let (tx, mut rx) = mpsc::unbounded_channel::<(bool, Result<(), PushError>)>();
    let app = Router::new().route(
        "/events",
        get(move |headers: HeaderMap| {
            let tx = tx.clone();
            async move {
                let (conn, response) = EventSource::new().connect(&headers);
                tokio::spawn(async move {
                    // axum drops the body of a HEAD response: `closed()` resolves and the
                    // push fails, so a handler written this way returns at once.
                    let closed = timeout(BOUND, conn.closed()).await.is_ok();
                    let push = conn.push("never read").await;
                    let _ = tx.send((closed, push));
                });
                response
            }
        }),
    );
    let addr = serve_axum(app).await;
    let _client = head_event_stream(addr, "/events").await;
    let (closed, push) = recv(&mut rx).await;
    assert!(closed, "closed() resolves for a HEAD request");
    assert_eq!(push, Err(PushError::Disconnected));
}

/// What `connect` must give without a usable runtime: an empty `500` and an ended connection.
fn assert_connect_answers_500() {
    let mut headers = HeaderMap::new();
    headers.insert("last-event-id", "7".parse().unwrap());
    let (conn, response) = EventSource::new()
        .retry(Duration::from_secs(1))
        .connect(&headers);
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers().get(header::CONTENT_TYPE).is_none());
    assert!(conn.is_closed());
    assert_eq!(conn.last_event_id(), Some("7"));
    assert!(matches!(
        conn.try_push("x"),
        Err(TryPushError::Disconnected(_))
    ));
    assert_eq!(
        conn.push("x").now_or_never(),
        Some(Err(PushError::Disconnected))
    );
    assert_eq!(conn.closed().now_or_never(), Some(CloseReason::ClientGone));
    conn.close();
    drop(conn);
}

fn refusing_service() -> EventSourceService<
    impl Fn(Connection, Request<()>) -> std::future::Ready<()> + Send + Sync + 'static,
> {
    EventSourceService::new(|_conn: Connection, _req: Request<()>| {
        panic!("the handler must not run without a usable runtime")
    })
}

#[test]
fn without_a_runtime_connect_and_the_service_answer_500() {
    assert_connect_answers_500();
    let response = refusing_service()
        .oneshot(Request::new(()))
        .now_or_never()
        .expect("the response is ready at once")
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[test]
fn on_a_runtime_without_the_time_driver_connect_and_the_service_answer_500() {
    let runtime = current_thread_without_time();
    runtime.block_on(async {
        assert_connect_answers_500();
        let response = refusing_service().oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    });
    multi_thread_without_time().block_on(async { assert_connect_answers_500() });
}

/// Runs `f` and returns how many panics happened on this thread meanwhile, leaving the panic
/// hook as it was.
fn panics_on_this_thread(f: impl FnOnce()) -> usize {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    let previous = Arc::new(std::panic::take_hook());
    let count = Arc::new(AtomicUsize::new(0));
    let (hook_previous, hook_count) = (Arc::clone(&previous), Arc::clone(&count));
    let thread = std::thread::current().id();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == thread {
            hook_count.fetch_add(1, Ordering::SeqCst);
        }
        hook_previous(info);
    }));
    f();
    drop(std::panic::take_hook());
    std::panic::set_hook(Arc::into_inner(previous).expect("the counting hook is gone"));
    count.load(Ordering::SeqCst)
}

/// tokio has no query for the time driver, so a runtime without it is recognised by a timer
/// panicking in tokio: once for that runtime, not once per request.
#[test]
fn a_runtime_without_the_time_driver_costs_one_caught_panic_not_one_per_request() {
    let runtime = current_thread_without_time();
    let panics = panics_on_this_thread(|| {
        runtime.block_on(async {
            for _ in 0..3 {
                assert_connect_answers_500();
                let response = refusing_service().oneshot(Request::new(())).await.unwrap();
                assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            }
        });
    });
    assert_eq!(panics, 1);
}

#[test]
fn event_source_is_send_sync_clone_and_debug() {
    fn is<T: Send + Sync + Clone + std::fmt::Debug + Default>() {}
    is::<EventSource>();
}
