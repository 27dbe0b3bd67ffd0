//! The service through `tower::ServiceExt::oneshot`: headers, exact body bytes, methods, checks,
//! Last-Event-ID, pushing and closing, disconnects and keep-alive on tokio's paused clock.
//! Run with `cargo test --test service`.

mod common;

use bytes::Bytes;
use common::{assert_event_stream_headers, handover, next_connection, read_frames};
use futures_util::StreamExt;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use std::{future::Ready, time::Duration};
use tokio::{
    sync::mpsc,
    time::{timeout, Instant},
};
use tower::ServiceExt;
use tower_eventsource::{
    Connection, EncodeError, Event, EventSourceService, EventStreamBody, PushError, ResponseFuture,
    TryPushError,
};

/// Upper bound for things that should happen at once; only reached when a test fails.
const BOUND: Duration = Duration::from_secs(5);

/// What the `reporting` handler saw of a request.
type Seen = (Method, Option<HeaderValue>);

/// A service whose handler reports each request's method and `authorization` header to `tx`
/// and returns at once, ending the stream.
fn reporting(
    tx: mpsc::UnboundedSender<Seen>,
) -> EventSourceService<impl Fn(Connection, Request<()>) -> Ready<()> + Send + Sync + 'static> {
    EventSourceService::new(move |_conn: Connection, req: Request<()>| {
        let auth = req.headers().get(header::AUTHORIZATION).cloned();
        let _ = tx.send((req.method().clone(), auth));
        std::future::ready(())
    })
}

fn request(method: Method) -> Request<()> {
    Request::builder()
        .method(method)
        .uri("/events")
        .body(())
        .unwrap()
}

async fn body_string(response: Response<EventStreamBody>) -> String {
    let bytes = timeout(BOUND, response.into_body().collect())
        .await
        .expect("the body ends")
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn next_frame(body: &mut EventStreamBody) -> Bytes {
    timeout(BOUND, body.frame())
        .await
        .expect("a frame arrives")
        .expect("the body has not ended")
        .unwrap()
        .into_data()
        .expect("a data frame")
}

#[tokio::test]
async fn default_headers_are_exactly_the_event_stream_headers() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    let response = service.oneshot(request(Method::GET)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers.len(), 3, "{headers:?}");
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(!headers.contains_key(header::CONTENT_LENGTH));
    assert!(!headers.contains_key(header::CONNECTION));
    assert_eq!(response.body().size_hint().exact(), None);
}

#[tokio::test]
async fn header_replaces_a_default_and_adds_new_ones() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    let service = service
        .header(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))
        .header(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://app.example"),
        )
        .header(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        )
        // Hop-by-hop headers and Content-Length are ignored.
        .header(header::CONNECTION, HeaderValue::from_static("keep-alive"))
        .header(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    let response = service.oneshot(request(Method::GET)).await.unwrap();
    let headers = response.headers();
    let cache_control: Vec<_> = headers.get_all(header::CACHE_CONTROL).iter().collect();
    assert_eq!(cache_control, ["no-cache"]);
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example"
    );
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(!headers.contains_key(header::CONNECTION));
    assert!(!headers.contains_key(header::CONTENT_LENGTH));
    assert_eq!(headers.len(), 5, "{headers:?}");
}

#[tokio::test]
async fn body_is_exactly_the_pushed_events() {
    let service = EventSourceService::new(|conn: Connection, _req: Request<()>| async move {
        conn.push("foo").await?;
        conn.push(["a", "b"]).await?;
        conn.push(Event::new().event("tick").id("7").data("x\r\ny\rz"))
            .await?;
        conn.push(Event::new().comment("note").data("")).await?;
        conn.push(String::from(" lead")).await?;
        conn.close();
        Ok::<_, PushError>(())
    });
    let response = service.oneshot(request(Method::GET)).await.unwrap();
    assert_eq!(
        body_string(response).await,
        "data: foo\n\n\
         data: a\ndata: b\n\n\
         event: tick\nid: 7\ndata: x\ndata: y\ndata: z\n\n\
         : note\ndata: \n\n\
         data:  lead\n\n"
    );
}

#[tokio::test]
async fn try_push_hands_the_event_back_when_full_or_disconnected() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    let response = service
        .buffer(1)
        .oneshot(request(Method::GET))
        .await
        .unwrap();
    let conn = next_connection(&mut rx).await;

    conn.try_push("first").unwrap();
    match conn.try_push(Event::new().id("2").data("second")) {
        Err(TryPushError::Full(event)) => {
            assert_eq!(event.encode().unwrap(), "id: 2\ndata: second\n\n")
        }
        other => panic!("expected Full, got {other:?}"),
    }
    // Once the body takes the queued event there is room again.
    let mut body = response.into_body();
    assert_eq!(next_frame(&mut body).await, "data: first\n\n");
    conn.try_push("third").unwrap();
    assert_eq!(next_frame(&mut body).await, "data: third\n\n");

    drop(body);
    match conn.try_push("fourth") {
        Err(TryPushError::Disconnected(event)) => {
            assert_eq!(event.encode().unwrap(), "data: fourth\n\n")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    match conn.try_push(Event::new().id("a\nb").data("x")) {
        Err(TryPushError::Invalid(EncodeError::LineBreakInId)) => {}
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn close_is_idempotent_sends_what_was_queued_and_later_pushes_fail() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    let response = service.oneshot(request(Method::GET)).await.unwrap();
    let conn = next_connection(&mut rx).await;
    let clone = conn.clone();

    conn.push("before").await.unwrap();
    assert!(!conn.is_closed());
    conn.close();
    conn.close();
    clone.close();
    assert!(conn.is_closed());
    assert!(clone.is_closed());
    timeout(BOUND, clone.closed())
        .await
        .expect("closed() resolves");
    assert_eq!(conn.push("after").await, Err(PushError::Closed));
    assert!(matches!(
        clone.try_push("after"),
        Err(TryPushError::Closed(_))
    ));
    // The handles are still alive: the body ends because of close(), not because they dropped.
    assert_eq!(body_string(response).await, "data: before\n\n");
    drop((conn, clone));
}

#[tokio::test]
async fn stream_ends_when_every_connection_clone_is_dropped() {
    let service = EventSourceService::new(|conn: Connection, _req: Request<()>| async move {
        let clone = conn.clone();
        conn.push("from the handler").await.unwrap();
        drop(conn);
        // Still open: a clone is alive.
        clone.push("from a clone").await.unwrap();
        // The handler returns `()`, dropping the last clone.
    });
    let response = service.oneshot(request(Method::GET)).await.unwrap();
    assert_eq!(
        body_string(response).await,
        "data: from the handler\n\ndata: from a clone\n\n"
    );
}

#[tokio::test]
async fn handler_returning_an_error_ends_the_stream() {
    let service = EventSourceService::new(|conn: Connection, _req: Request<()>| async move {
        conn.push("last words").await.unwrap();
        Err::<(), _>("the handler failed")
    });
    let response = service.oneshot(request(Method::GET)).await.unwrap();
    assert_eq!(body_string(response).await, "data: last words\n\n");
}

#[tokio::test]
async fn invalid_event_is_refused_and_nothing_is_sent() {
    let service = EventSourceService::new(|conn: Connection, _req: Request<()>| async move {
        let refused = [
            (
                Event::new().id("1\n2").data("x"),
                EncodeError::LineBreakInId,
            ),
            (Event::new().id("1\r").data("x"), EncodeError::LineBreakInId),
            (Event::new().id("\0").data("x"), EncodeError::NulInId),
            (
                Event::new().event("a\r\nb").data("x"),
                EncodeError::LineBreakInEventName,
            ),
            (
                Event::new().event("tick"),
                EncodeError::EventNameWithoutData,
            ),
        ];
        for (event, error) in refused {
            assert_eq!(conn.push(event).await, Err(PushError::Invalid(error)));
        }
        assert!(
            !conn.is_closed(),
            "an invalid event does not end the stream"
        );
        conn.push("valid").await.unwrap();
    });
    let response = service.oneshot(request(Method::GET)).await.unwrap();
    assert_eq!(body_string(response).await, "data: valid\n\n");
}

#[tokio::test]
async fn other_methods_get_405_with_allow_and_the_handler_does_not_run() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = reporting(tx);
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let response = service.clone().oneshot(request(method)).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
        assert!(!response.headers().contains_key(header::CONTENT_TYPE));
        assert_eq!(body_string(response).await, "");
    }
    // A GET afterwards runs the handler; it is the only run.
    let response = service.clone().oneshot(request(Method::GET)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        timeout(BOUND, rx.recv()).await.unwrap().unwrap().0,
        Method::GET
    );
    drop(service);
    // Every sender is gone once the spawned handlers finished: nothing else was sent.
    assert!(timeout(BOUND, rx.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn methods_can_accept_post_and_the_handler_gets_the_body() {
    let service = EventSourceService::new(|conn: Connection, req: Request<String>| async move {
        let (parts, body) = req.into_parts();
        let _ = conn.push(format!("{} {body}", parts.method)).await;
    })
    .methods([Method::POST]);

    let response = service
        .clone()
        .oneshot(
            Request::post("/events")
                .body(String::from("subscribe: a, b"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    assert_eq!(
        body_string(response).await,
        "data: POST subscribe: a, b\n\n"
    );

    let response = service
        .oneshot(Request::get("/events").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[header::ALLOW], "POST");
}

#[tokio::test]
async fn head_gets_the_headers_and_an_empty_body_without_running_the_handler() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = reporting(tx);
    let response = service
        .clone()
        .oneshot(request(Method::HEAD))
        .await
        .unwrap();
    assert_event_stream_headers(&response);
    assert!(response.body().is_end_stream());
    assert_eq!(body_string(response).await, "");

    let _get = service.clone().oneshot(request(Method::GET)).await.unwrap();
    assert_eq!(
        timeout(BOUND, rx.recv()).await.unwrap().unwrap().0,
        Method::GET
    );
    drop(service);
    assert!(timeout(BOUND, rx.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn check_refuses_with_its_status_and_the_handler_does_not_run() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = reporting(tx);
    let service = service.check(|parts| match parts.headers.get(header::AUTHORIZATION) {
        None => Err(StatusCode::NO_CONTENT),
        Some(value) if value == "Bearer good" => Ok(()),
        Some(_) => Err(StatusCode::UNAUTHORIZED),
    });
    let with_auth = |value: &'static str| {
        Request::get("/events")
            .header(header::AUTHORIZATION, value)
            .body(())
            .unwrap()
    };

    let response = service.clone().oneshot(request(Method::GET)).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(body_string(response).await, "");

    let response = service
        .clone()
        .oneshot(with_auth("Bearer bad"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body_string(response).await, "");

    let response = service
        .clone()
        .oneshot(with_auth("Bearer good"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let (method, auth) = timeout(BOUND, rx.recv()).await.unwrap().unwrap();
    assert_eq!(method, Method::GET);
    assert_eq!(auth.unwrap(), "Bearer good");
    drop(service);
    assert!(timeout(BOUND, rx.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn last_event_id_is_read_as_utf8_up_to_1024_bytes() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    // (headers, the id the handler sees, whether the header was present but unusable)
    let id = |value: &[u8]| vec![HeaderValue::from_bytes(value).unwrap()];
    let cases: Vec<(Vec<HeaderValue>, Option<String>, bool)> = vec![
        (vec![], None, false),
        (id(b"42"), Some("42".into()), false),
        // An empty header is what a browser whose last id was reset would send: absent.
        (id(b""), None, false),
        (id("ü-€-漢-🦀".as_bytes()), Some("ü-€-漢-🦀".into()), false),
        (id(b"\xff\xfe"), None, true),
        (id(b"abc\xc3"), None, true), // truncated UTF-8
        (
            id("a".repeat(1024).as_bytes()),
            Some("a".repeat(1024)),
            false,
        ),
        (id("a".repeat(1025).as_bytes()), None, true),
        ([id(b"1"), id(b"2")].concat(), None, true), // which one?
    ];
    for (values, want, unusable) in cases {
        let mut req = request(Method::GET);
        for value in &values {
            req.headers_mut()
                .append(HeaderName::from_static("last-event-id"), value.clone());
        }
        let _response = service.clone().oneshot(req).await.unwrap();
        let conn = next_connection(&mut rx).await;
        assert_eq!(conn.last_event_id(), want.as_deref(), "headers {values:?}");
        assert_eq!(
            conn.has_unusable_last_event_id(),
            unusable,
            "headers {values:?}"
        );
    }
}

#[tokio::test]
async fn retry_starts_the_stream() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    let response = service
        .retry(Duration::from_millis(2500))
        .oneshot(request(Method::GET))
        .await
        .unwrap();
    let conn = next_connection(&mut rx).await;
    conn.push("first").await.unwrap();
    conn.close();
    assert_eq!(
        body_string(response).await,
        "retry: 2500\n\ndata: first\n\n"
    );
}

#[tokio::test]
async fn dropping_the_body_ends_the_stream_for_every_clone() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    let response = service.oneshot(request(Method::GET)).await.unwrap();
    let conn = next_connection(&mut rx).await;
    let clone = conn.clone();
    let waiter = tokio::spawn({
        let clone = conn.clone();
        async move { clone.closed().await }
    });
    conn.push("queued").await.unwrap();
    assert!(!conn.is_closed() && !clone.is_closed());
    // Give the waiter a chance to start waiting before the body goes.
    tokio::task::yield_now().await;

    drop(response);
    timeout(BOUND, waiter)
        .await
        .expect("closed() resolves in a waiting task")
        .unwrap();
    timeout(BOUND, conn.closed()).await.unwrap();
    timeout(BOUND, clone.closed()).await.unwrap();
    assert!(conn.is_closed() && clone.is_closed());
    assert_eq!(conn.push("late").await, Err(PushError::Disconnected));
    assert_eq!(clone.push("late").await, Err(PushError::Disconnected));
}

#[tokio::test]
async fn a_push_waiting_for_room_fails_when_the_body_is_dropped() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    let response = service
        .buffer(1)
        .oneshot(request(Method::GET))
        .await
        .unwrap();
    let conn = next_connection(&mut rx).await;
    conn.push("fills the buffer").await.unwrap();
    let waiting = tokio::spawn({
        let conn = conn.clone();
        async move { conn.push("waits").await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    drop(response);
    let result = timeout(BOUND, waiting).await.unwrap().unwrap();
    assert_eq!(result, Err(PushError::Disconnected));
}

#[tokio::test(start_paused = true)]
async fn keep_alive_comment_after_each_interval_of_silence() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    let start = Instant::now();
    let response = service
        .keep_alive(Duration::from_secs(15))
        .oneshot(request(Method::GET))
        .await
        .unwrap();
    let _conn = next_connection(&mut rx).await;
    let mut frames = read_frames(response.into_body(), start);

    // Nothing during the first 15 seconds of silence.
    let before = timeout(Duration::from_millis(14_999), frames.recv()).await;
    assert!(before.is_err(), "a frame came early: {before:?}");
    assert_eq!(
        frames.recv().await.unwrap(),
        (Duration::from_secs(15), Bytes::from_static(b":\n\n"))
    );
    assert_eq!(
        frames.recv().await.unwrap(),
        (Duration::from_secs(30), Bytes::from_static(b":\n\n"))
    );
}

#[tokio::test(start_paused = true)]
async fn an_event_pushes_the_keep_alive_back_and_is_never_delayed() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    let start = Instant::now();
    let response = service
        .keep_alive(Duration::from_secs(15))
        .oneshot(request(Method::GET))
        .await
        .unwrap();
    let conn = next_connection(&mut rx).await;
    let mut frames = read_frames(response.into_body(), start);

    tokio::time::sleep(Duration::from_secs(10)).await;
    conn.push("tick").await.unwrap();
    assert_eq!(
        frames.recv().await.unwrap(),
        (
            Duration::from_secs(10),
            Bytes::from_static(b"data: tick\n\n")
        )
    );
    // Nothing at 15 s: the event reset the interval.
    let before = timeout(Duration::from_millis(14_999), frames.recv()).await;
    assert!(before.is_err(), "a frame came early: {before:?}");
    assert_eq!(
        frames.recv().await.unwrap(),
        (Duration::from_secs(25), Bytes::from_static(b":\n\n"))
    );

    // An event pushed just after a keep-alive goes out at once, whole, on its own.
    tokio::time::sleep(Duration::from_secs(1)).await;
    conn.push(["a", "b"]).await.unwrap();
    assert_eq!(
        frames.recv().await.unwrap(),
        (
            Duration::from_secs(26),
            Bytes::from_static(b"data: a\ndata: b\n\n")
        )
    );
    assert_eq!(
        frames.recv().await.unwrap(),
        (Duration::from_secs(41), Bytes::from_static(b":\n\n"))
    );
}

#[tokio::test(start_paused = true)]
async fn default_keep_alive_is_15_seconds() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    let start = Instant::now();
    let response = service.oneshot(request(Method::GET)).await.unwrap();
    let _conn = next_connection(&mut rx).await;
    let mut frames = read_frames(response.into_body(), start);
    assert_eq!(
        frames.recv().await.unwrap(),
        (Duration::from_secs(15), Bytes::from_static(b":\n\n"))
    );
}

#[tokio::test(start_paused = true)]
async fn without_keep_alive_a_quiet_stream_sends_nothing() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    let start = Instant::now();
    let response = service
        .without_keep_alive()
        .oneshot(request(Method::GET))
        .await
        .unwrap();
    let conn = next_connection(&mut rx).await;
    let mut frames = read_frames(response.into_body(), start);

    let quiet = timeout(Duration::from_secs(24 * 3600), frames.recv()).await;
    assert!(quiet.is_err(), "a frame came: {quiet:?}");
    // The reader is alive: an event still gets through.
    conn.push("late").await.unwrap();
    assert_eq!(
        frames.recv().await.unwrap(),
        (
            Duration::from_secs(24 * 3600),
            Bytes::from_static(b"data: late\n\n")
        )
    );
}

fn is_send_sync_clone<T: Send + Sync + Clone>() {}
fn is_send_sync<T: Send + Sync>() {}
fn is_error<T: std::error::Error + Send + Sync + 'static>() {}

#[test]
fn public_types_keep_their_auto_traits() {
    type Handler = fn(Connection, Request<()>) -> Ready<()>;
    is_send_sync_clone::<Connection>();
    is_send_sync_clone::<Event>();
    is_send_sync_clone::<EventSourceService<Handler>>();
    is_send_sync::<EventStreamBody>();
    is_send_sync::<ResponseFuture>();
    is_error::<PushError>();
    is_error::<TryPushError>();
    is_error::<EncodeError>();

    // A service built from a capturing closure is Clone + Send + Sync as well.
    fn of<T: Send + Sync + Clone>(_: &T) {}
    let (tx, _rx) = mpsc::unbounded_channel();
    let service = handover::<()>(tx);
    of(&service);
}

#[test]
fn errors_are_displayed_and_chained() {
    use std::error::Error as _;
    let error = PushError::Invalid(EncodeError::NulInId);
    assert!(error.to_string().contains("NUL"), "{error}");
    assert_eq!(
        error.source().unwrap().to_string(),
        EncodeError::NulInId.to_string()
    );
    assert!(!PushError::Disconnected.to_string().is_empty());
    let full = TryPushError::Full(Event::from("x"));
    assert!(!full.to_string().is_empty());
    assert_eq!(full.into_event().unwrap().encode().unwrap(), "data: x\n\n");
}

#[tokio::test]
async fn queued_events_are_joined_into_frames_of_at_most_64_kib_never_splitting_one() {
    let events = EventSourceService::new(|conn: Connection, _req: Request<()>| async move {
        // Each event is 100 bytes on the wire: "data: " + 92 bytes + "\n\n".
        for _ in 0..1000 {
            conn.try_push("x".repeat(92)).unwrap();
        }
    })
    .buffer(1000);
    let response = events.oneshot(Request::new(())).await.unwrap();
    let sizes: Vec<usize> = response
        .into_body()
        .into_data_stream()
        .map(|frame| frame.unwrap().len())
        .collect()
        .await;
    // 655 whole events fit in 64 KiB (65,536 bytes); the rest follow in the next frame.
    assert_eq!(sizes, [65_500, 34_500]);
}
