//! `EventSource::stream`, a body that polls the user's stream itself: the wire through axum and
//! a real client (read with `eventsource-stream`), a client leaving while the source is idle,
//! items that end the stream, joined frames, `retry`, keep-alive and shutdown on tokio's
//! paused clock, `Last-Event-ID`, and the `500` without a usable runtime.
//! Run with `cargo test --test stream`.

mod common;

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    response::IntoResponse,
    routing::get,
    Router,
};
use bytes::Bytes;
use common::{
    assert_ends, assert_event_stream_headers, assert_first_frame_starts_with,
    current_thread_without_time, head_event_stream, message, multi_thread_without_time, next_event,
    open_stream, read_events, read_frames, serve_axum, Client, Proto, BOUND,
};
use futures_util::{stream, FutureExt, Stream, StreamExt};
use http::{header, HeaderValue, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use std::{
    cell::Cell,
    convert::Infallible,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::{timeout, Instant},
};
use tokio_stream::wrappers::ReceiverStream;
use tower_eventsource::{Event, EventSource, EventStreamBody, Shutdown, StreamItem};

/// A stream that counts its polls and says when it is dropped.
struct Watched<S> {
    inner: S,
    polls: Arc<AtomicUsize>,
    dropped: Option<oneshot::Sender<()>>,
}

/// What a test sees of a [`Watched`] stream.
struct Watch {
    polls: Arc<AtomicUsize>,
    dropped: oneshot::Receiver<()>,
}

impl Watch {
    fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }

    /// Whether the stream has been dropped by now.
    fn is_dropped(&mut self) -> bool {
        !matches!(
            self.dropped.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }
}

fn watched<S: Stream + Unpin>(inner: S) -> (Watched<S>, Watch) {
    let polls = Arc::new(AtomicUsize::new(0));
    let (tx, dropped) = oneshot::channel();
    let stream = Watched {
        inner,
        polls: Arc::clone(&polls),
        dropped: Some(tx),
    };
    (stream, Watch { polls, dropped })
}

impl<S: Stream + Unpin> Stream for Watched<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.inner.poll_next_unpin(cx)
    }
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        if let Some(tx) = self.dropped.take() {
            let _ = tx.send(());
        }
    }
}

/// A source that stays idle until the test sends into it.
fn idle_source() -> (mpsc::Sender<Event>, ReceiverStream<Event>) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ReceiverStream::new(rx))
}

/// Every byte of a body that ends by itself.
async fn body_string(body: EventStreamBody) -> String {
    let bytes = timeout(BOUND, body.collect())
        .await
        .expect("the body ends")
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The sizes of a body's frames, until it ends.
async fn frame_sizes(body: EventStreamBody) -> Vec<usize> {
    timeout(
        BOUND,
        body.into_data_stream()
            .map(|frame| frame.unwrap().len())
            .collect(),
    )
    .await
    .expect("the body ends")
}

/// Reads, in the background, the frames of `source`'s body over an idle source, stamped from
/// now; the sender feeds the source, which ends when it is dropped.
fn idle_frames(
    source: EventSource,
) -> (
    mpsc::Sender<Event>,
    mpsc::UnboundedReceiver<(Duration, Bytes)>,
) {
    let (tx, rx) = idle_source();
    let start = Instant::now();
    let body = source.stream(&HeaderMap::new(), rx).into_body();
    (tx, read_frames(body, start))
}

fn frame(at_ms: u64, data: &'static str) -> (Duration, Bytes) {
    (
        Duration::from_millis(at_ms),
        Bytes::from_static(data.as_bytes()),
    )
}

// ---------------------------------------------------------------------------------------------
// The wire
// ---------------------------------------------------------------------------------------------

/// The app a user ports from `Sse::new(stream)`: each path is one kind of stream.
fn app(source: EventSource) -> Router {
    async fn events(
        State(source): State<EventSource>,
        Path(kind): Path<String>,
        headers: HeaderMap,
    ) -> axum::response::Response {
        match kind.as_str() {
            "strings" => source
                .stream(&headers, stream::iter(["one", "two\nlines", ""]))
                .into_response(),
            "events" => {
                let events = stream::iter(1..=3).map(|n| {
                    Event::new()
                        .event("tick")
                        .id(n.to_string())
                        .data(n.to_string())
                });
                source.stream(&headers, events).into_response()
            }
            "results" => {
                let results = stream::iter([Ok::<_, std::io::Error>("fine".to_string())]);
                source.stream(&headers, results).into_response()
            }
            "resume" => {
                // Ids count events from 1: resume after the browser's last one.
                let first = EventSource::last_event_id(&headers)
                    .and_then(|id| id.parse::<u64>().ok()?.checked_add(1))
                    .unwrap_or(1);
                let events = stream::iter(first..first.saturating_add(2))
                    .map(|n| Event::new().id(n.to_string()).data(format!("event {n}")));
                source.stream(&headers, events).into_response()
            }
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }
    Router::new()
        .route("/{kind}", get(events))
        .with_state(source)
}

#[tokio::test]
async fn items_reach_a_real_client_exactly_and_the_end_of_the_stream_ends_the_body() {
    let addr = serve_axum(app(EventSource::new())).await;
    for proto in [Proto::Http1, Proto::Http2] {
        let mut client = Client::connect(addr, proto).await;

        let response = client.get("/strings").await;
        assert_event_stream_headers(&response);
        assert!(!response.headers().contains_key(header::CONNECTION));
        let mut events = read_events(response.into_body());
        assert_eq!(next_event(&mut events).await, message("one", ""));
        assert_eq!(next_event(&mut events).await, message("two\nlines", ""));
        assert_eq!(next_event(&mut events).await, message("", ""));
        assert_ends(&mut events).await;

        let mut events = read_events(client.get("/events").await.into_body());
        for n in 1..=3 {
            let event = next_event(&mut events).await;
            assert_eq!(
                (event.event.as_str(), event.id.as_str(), event.data.as_str()),
                ("tick", n.to_string().as_str(), n.to_string().as_str()),
                "{proto:?}"
            );
        }
        assert_ends(&mut events).await;

        let mut events = read_events(client.get("/results").await.into_body());
        assert_eq!(next_event(&mut events).await, message("fine", ""));
        assert_ends(&mut events).await;
    }
}

#[tokio::test]
async fn the_handler_builds_the_stream_from_last_event_id() {
    let addr = serve_axum(app(EventSource::new())).await;
    let (mut client, mut events) = open_stream(addr, "/resume", Some("41")).await;
    assert_eq!(next_event(&mut events).await, message("event 42", "42"));
    assert_eq!(next_event(&mut events).await, message("event 43", "43"));
    assert_ends(&mut events).await;

    let mut events = read_events(client.get("/resume").await.into_body());
    assert_eq!(next_event(&mut events).await, message("event 1", "1"));
}

#[test]
fn last_event_id_is_read_from_the_headers_as_the_connection_reads_it() {
    let with = |values: &[&[u8]]| {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("last-event-id", HeaderValue::from_bytes(value).unwrap());
        }
        headers
    };
    let utf8 = with(&["héllo-41".as_bytes()]);
    assert_eq!(EventSource::last_event_id(&utf8), Some("héllo-41"));
    let longest = "x".repeat(1024);
    let longest_headers = with(&[longest.as_bytes()]);
    assert_eq!(
        EventSource::last_event_id(&longest_headers),
        Some(longest.as_str())
    );
    assert_eq!(EventSource::last_event_id(&HeaderMap::new()), None);
    assert_eq!(EventSource::last_event_id(&with(&[b""])), None, "empty");
    let too_long = "x".repeat(1025);
    assert_eq!(
        EventSource::last_event_id(&with(&[too_long.as_bytes()])),
        None
    );
    assert_eq!(EventSource::last_event_id(&with(&[b"\xff"])), None);
    assert_eq!(EventSource::last_event_id(&with(&[b"1", b"2"])), None);
    // The same id as a connection started with these headers sees.
    for headers in [utf8, with(&[b"1", b"2"]), with(&[b""])] {
        let (conn, _response) = EventSource::new().connect(&headers);
        assert_eq!(
            EventSource::last_event_id(&headers),
            conn.last_event_id(),
            "{headers:?}"
        );
    }
}

/// A client that closes its connection while the source has nothing to give: the server drops
/// the body, and the user's stream with it, at once.
#[tokio::test]
async fn a_client_leaving_while_the_source_is_idle_drops_the_stream_within_100_ms() {
    type Watches = mpsc::UnboundedSender<(Watch, mpsc::Sender<Event>)>;
    let (watches, mut watching) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/",
            get(
                |State(watches): State<Watches>, headers: HeaderMap| async move {
                    let (source, events) = idle_source();
                    let (events, watch) = watched(events);
                    source.send(Event::from("first")).await.unwrap();
                    // The test keeps the sender, so the stream stays open and idle.
                    let _ = watches.send((watch, source));
                    EventSource::new().stream(&headers, events)
                },
            ),
        )
        .with_state(watches);
    let addr = serve_axum(app).await;
    for proto in [Proto::Http1, Proto::Http2] {
        let mut client = Client::connect(addr, proto).await;
        let mut events = read_events(client.get("/").await.into_body());
        let (mut watch, _source) = timeout(BOUND, watching.recv()).await.unwrap().unwrap();
        assert_eq!(next_event(&mut events).await, message("first", ""));
        // The source is idle: the body waits on it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !watch.is_dropped(),
            "the stream is open while the client is"
        );
        let polls = watch.polls();

        drop(events);
        client.disconnect().await;
        let left = std::time::Instant::now();
        timeout(Duration::from_millis(100), &mut watch.dropped)
            .await
            .unwrap_or_else(|_| panic!("{proto:?}: the stream was not dropped within 100 ms"))
            .unwrap();
        eprintln!(
            "{proto:?}: stream dropped {:?} after the client left",
            left.elapsed()
        );
        assert_eq!(watch.polls(), polls, "the idle stream was not polled again");
    }
}

#[tokio::test]
async fn a_head_request_routed_to_the_handler_drops_the_stream_unpolled() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Watch>();
    let app = Router::new().route(
        "/",
        get(move |headers: HeaderMap| {
            let (_source, events) = idle_source();
            let (events, watch) = watched(events);
            let _ = tx.send(watch);
            async move { EventSource::new().stream(&headers, events) }
        }),
    );
    let addr = serve_axum(app).await;
    let _client = head_event_stream(addr, "/").await;
    let watch = timeout(BOUND, rx.recv()).await.unwrap().unwrap();
    timeout(BOUND, watch.dropped)
        .await
        .expect("axum drops the body of a HEAD response")
        .unwrap();
    assert_eq!(watch.polls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn retry_comes_first_on_the_wire() {
    let source = EventSource::new().retry(Duration::from_millis(2500));
    let addr = serve_axum(app(source)).await;
    let mut client = Client::connect(addr, Proto::Http1).await;
    let body = client.get("/strings").await.into_body();
    assert_first_frame_starts_with(body, "retry: 2500\n\ndata: one\n\n").await;
}

// ---------------------------------------------------------------------------------------------
// Items and frames
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_kind_of_item_is_encoded_exactly() {
    let source = EventSource::new().without_keep_alive();
    let none = HeaderMap::new();
    let body = |response: http::Response<EventStreamBody>| body_string(response.into_body());

    assert_eq!(
        body(source.stream(&none, stream::iter(["a", " b", "c\r\nd"]))).await,
        "data: a\n\ndata:  b\n\ndata: c\ndata: d\n\n"
    );
    assert_eq!(
        body(source.stream(&none, stream::iter([String::from("s")]))).await,
        "data: s\n\n"
    );
    assert_eq!(
        body(source.stream(&none, stream::iter([["x", "y"]]))).await,
        "data: x\ndata: y\n\n"
    );
    let events = stream::iter([Event::new().event("e").id("1").data("d")]);
    assert_eq!(
        body(source.stream(&none, events)).await,
        "event: e\nid: 1\ndata: d\n\n"
    );
    let results = stream::iter([Ok::<_, String>(Event::from("ok")), Ok(Event::from("too"))]);
    assert_eq!(
        body(source.stream(&none, results)).await,
        "data: ok\n\ndata: too\n\n"
    );

    /// An item type of the user's own.
    struct Price(u32);
    impl StreamItem for Price {
        type Error = Infallible;
        fn into_event(self) -> Result<Event, Infallible> {
            Ok(Event::new().event("price").data(self.0.to_string()))
        }
    }
    assert_eq!(
        body(source.stream(&none, stream::iter([Price(7)]))).await,
        "event: price\ndata: 7\n\n"
    );
}

#[tokio::test]
async fn an_item_that_cannot_be_encoded_ends_the_stream_and_nothing_of_it_is_sent() {
    let source = EventSource::new().without_keep_alive();
    let items = stream::iter([
        Event::from("before"),
        Event::new().id("a\nb").data("x"),
        Event::from("after"),
    ]);
    let (items, mut watch) = watched(items);
    let mut body = source.stream(&HeaderMap::new(), items).into_body();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, "data: before\n\n");
    assert!(watch.is_dropped(), "the stream is dropped when it ends");
    assert!(body.frame().await.is_none(), "the stream has ended");
    assert!(body.is_end_stream());

    for invalid in [
        Event::new().event("two\nlines").data("x"),
        Event::new().id("nul\0").data("x"),
        Event::new().event("no data"),
    ] {
        let items = stream::iter([invalid, Event::from("after")]);
        let body = source.stream(&HeaderMap::new(), items).into_body();
        assert_eq!(body_string(body).await, "");
    }
}

#[tokio::test]
async fn an_error_item_ends_the_stream_after_what_came_before() {
    let source = EventSource::new().without_keep_alive();
    let items = stream::iter([Ok("a"), Err("boom"), Ok("b")]);
    let (items, mut watch) = watched(items);
    let body = source.stream(&HeaderMap::new(), items).into_body();
    assert_eq!(body_string(body).await, "data: a\n\n");
    assert!(watch.is_dropped());
    assert_eq!(watch.polls(), 2, "nothing is taken after the error");
}

#[tokio::test]
async fn a_panicking_stream_ends_its_own_stream_only() {
    let source = EventSource::new().without_keep_alive();
    let items = stream::iter([0, 1, 2]).map(|n| match n {
        1 => panic!("on purpose"),
        n => n.to_string(),
    });
    let body = source.stream(&HeaderMap::new(), items).into_body();
    assert_eq!(body_string(body).await, "data: 0\n\n");

    // Over HTTP/2, a stream beside it on the same connection goes on.
    let (tx, rx) = mpsc::channel::<Event>(4);
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let app = Router::new()
        .route(
            "/panics",
            get(|headers: HeaderMap| async move {
                let items = stream::iter([0, 1]).map(|n| match n {
                    1 => panic!("on purpose"),
                    n => n.to_string(),
                });
                EventSource::new().stream(&headers, items)
            }),
        )
        .route(
            "/lives",
            get(move |headers: HeaderMap| {
                let rx = rx.lock().unwrap().take().expect("one request");
                async move { EventSource::new().stream(&headers, ReceiverStream::new(rx)) }
            }),
        );
    let addr = serve_axum(app).await;
    let mut client = Client::connect(addr, Proto::Http2).await;
    let mut lives = read_events(client.get("/lives").await.into_body());
    let mut panics = read_events(client.get("/panics").await.into_body());
    assert_eq!(next_event(&mut panics).await, message("0", ""));
    assert_ends(&mut panics).await;
    tx.send(Event::from("still here")).await.unwrap();
    assert_eq!(next_event(&mut lives).await, message("still here", ""));
}

#[tokio::test]
async fn items_ready_together_are_joined_into_frames_of_at_most_64_kib_never_splitting_one() {
    let source = EventSource::new().without_keep_alive();
    // Each event is 100 bytes on the wire: "data: " + 92 bytes + "\n\n".
    let items = stream::iter(0..1000).map(|_| "x".repeat(92));
    let sizes = frame_sizes(source.stream(&HeaderMap::new(), items).into_body()).await;
    // 655 whole events fit in 64 KiB (65,536 bytes); the rest follow in the next frame.
    assert_eq!(sizes, [65_500, 34_500]);

    // An event larger than a frame goes alone, whole; the events around it are not joined
    // to it.
    let items = stream::iter(["a".to_string(), "b".repeat(70_000), "c".to_string()]);
    let sizes = frame_sizes(source.stream(&HeaderMap::new(), items).into_body()).await;
    assert_eq!(sizes, [9, 70_008, 9]);
}

#[tokio::test]
async fn only_what_is_ready_is_joined_and_the_body_then_waits_for_the_source() {
    let (tx, rx) = idle_source();
    let mut body = EventSource::new().stream(&HeaderMap::new(), rx).into_body();
    for data in ["a", "b", "c"] {
        tx.send(Event::from(data)).await.unwrap();
    }
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, "data: a\n\ndata: b\n\ndata: c\n\n");
    assert!(
        body.frame().now_or_never().is_none(),
        "the body waits for its source"
    );
    tx.send(Event::from("d")).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, "data: d\n\n");
    drop(tx);
    assert!(
        body.frame().await.is_none(),
        "the source's end ends the body"
    );
}

/// Counts the wakes of the waker made from it.
struct Wakes(AtomicUsize);

impl futures_util::task::ArcWake for Wakes {
    fn wake_by_ref(wakes: &Arc<Self>) {
        wakes.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `body` by hand, with a waker whose wakes `wakes` counts: the frame's data, or `None`
/// while it is pending.
fn poll_by_hand(body: &mut EventStreamBody, wakes: &Arc<Wakes>) -> Option<Bytes> {
    let waker = futures_util::task::waker(Arc::clone(wakes));
    match Pin::new(body).poll_frame(&mut Context::from_waker(&waker)) {
        Poll::Ready(Some(frame)) => Some(frame.unwrap().into_data().unwrap()),
        Poll::Ready(None) => panic!("the body ended"),
        Poll::Pending => None,
    }
}

fn wakes(wakes: &Arc<Wakes>) -> usize {
    wakes.0.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_busy_source_s_frame_waits_twice_for_what_comes_next_and_a_quiet_one_s_goes_at_once() {
    let (tx, rx) = idle_source();
    let mut body = EventSource::new().stream(&HeaderMap::new(), rx).into_body();
    let task = Arc::new(Wakes(AtomicUsize::new(0)));
    // A poll of the body, and how many times it woke the task itself.
    let waits = |body: &mut EventStreamBody| {
        let before = wakes(&task);
        let polled = poll_by_hand(body, &task);
        (polled, wakes(&task) - before)
    };
    let send = |data: &'static str| tx.try_send(Event::from(data)).unwrap();

    // A quiet source: its event goes at once.
    send("a");
    assert_eq!(waits(&mut body), (Some("data: a\n\n".into()), 0));

    // Two events ready together: the frame waits twice, waking the task each time, and takes
    // what came meanwhile.
    send("b");
    send("c");
    assert_eq!(waits(&mut body), (None, 1), "the frame waits");
    send("d");
    assert_eq!(waits(&mut body), (None, 1), "the frame waits again");
    send("e");
    let frame = "data: b\n\ndata: c\n\ndata: d\n\ndata: e\n\n";
    assert_eq!(waits(&mut body), (Some(frame.into()), 0));

    // The source is still busy: the next frame waits too, even with one event.
    send("f");
    assert_eq!(waits(&mut body), (None, 1));
    assert_eq!(waits(&mut body), (None, 1));
    assert_eq!(waits(&mut body), (Some("data: f\n\n".into()), 0));
    // Quiet again.
    send("g");
    assert_eq!(waits(&mut body), (Some("data: g\n\n".into()), 0));

    // An idle source: the body waits for it, and only the source wakes the task.
    assert_eq!(waits(&mut body), (None, 0));
    let before = wakes(&task);
    send("h");
    assert_eq!(wakes(&task), before + 1, "woken by the source");
    assert_eq!(waits(&mut body), (Some("data: h\n\n".into()), 0));

    // A full frame goes at once.
    for _ in 0..2 {
        tx.try_send(Event::from("x".repeat(40_000))).unwrap();
    }
    assert_eq!(poll_by_hand(&mut body, &task).unwrap().len(), 40_008);
}

#[tokio::test]
async fn retry_is_the_first_frame_joined_with_the_first_items() {
    let source = EventSource::new()
        .retry(Duration::from_millis(2500))
        .without_keep_alive();
    let body = source.stream(&HeaderMap::new(), stream::iter(["x", "y"]));
    assert_eq!(
        body_string(body.into_body()).await,
        "retry: 2500\n\ndata: x\n\ndata: y\n\n"
    );
    let body = source.stream(&HeaderMap::new(), stream::empty::<Event>());
    assert_eq!(body_string(body.into_body()).await, "retry: 2500\n\n");
}

#[tokio::test]
async fn the_stream_need_not_be_sync_and_the_body_still_is() {
    fn is_send_sync<T: Send + Sync>(_: &T) {}
    let seen = Cell::new(0);
    let items = stream::iter(["a"]).map(move |data| {
        seen.set(seen.get() + 1);
        data
    });
    let response = EventSource::new().stream(&HeaderMap::new(), items);
    is_send_sync(&response);
    assert_eq!(body_string(response.into_body()).await, "data: a\n\n");
}

// ---------------------------------------------------------------------------------------------
// Keep-alive and shutdown on the paused clock
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn keep_alive_comment_after_each_interval_while_the_source_is_idle() {
    let (_tx, mut frames) = idle_frames(EventSource::new().keep_alive(Duration::from_secs(15)));
    let before = timeout(Duration::from_millis(14_999), frames.recv()).await;
    assert!(before.is_err(), "a frame came early: {before:?}");
    assert_eq!(frames.recv().await.unwrap(), frame(15_000, ":\n\n"));
    assert_eq!(frames.recv().await.unwrap(), frame(30_000, ":\n\n"));
}

#[tokio::test(start_paused = true)]
async fn an_item_pushes_the_keep_alive_back_and_is_never_delayed() {
    let (tx, mut frames) = idle_frames(EventSource::new().keep_alive(Duration::from_secs(15)));

    tokio::time::sleep(Duration::from_secs(10)).await;
    tx.send(Event::from("tick")).await.unwrap();
    assert_eq!(
        frames.recv().await.unwrap(),
        frame(10_000, "data: tick\n\n")
    );
    let before = timeout(Duration::from_millis(14_999), frames.recv()).await;
    assert!(before.is_err(), "a frame came early: {before:?}");
    assert_eq!(frames.recv().await.unwrap(), frame(25_000, ":\n\n"));

    tokio::time::sleep(Duration::from_secs(1)).await;
    tx.send(Event::from(["a", "b"])).await.unwrap();
    assert_eq!(
        frames.recv().await.unwrap(),
        frame(26_000, "data: a\ndata: b\n\n")
    );
    assert_eq!(frames.recv().await.unwrap(), frame(41_000, ":\n\n"));
}

#[tokio::test(start_paused = true)]
async fn default_keep_alive_is_15_seconds_and_it_can_be_turned_off() {
    let (_tx, mut frames) = idle_frames(EventSource::new());
    assert_eq!(frames.recv().await.unwrap(), frame(15_000, ":\n\n"));

    let (tx, mut frames) = idle_frames(EventSource::new().without_keep_alive());
    let quiet = timeout(Duration::from_secs(24 * 3600), frames.recv()).await;
    assert!(quiet.is_err(), "a frame came: {quiet:?}");
    tx.send(Event::from("late")).await.unwrap();
    assert_eq!(
        frames.recv().await.unwrap(),
        frame(24 * 3600 * 1000, "data: late\n\n")
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_an_idle_stream_at_once_with_the_farewell_and_drops_the_source() {
    let shutdown = Shutdown::new();
    let source = EventSource::new()
        .keep_alive(Duration::from_secs(15))
        .graceful_shutdown(&shutdown);
    let (tx, rx) = idle_source();
    let (rx, mut watch) = watched(rx);
    let start = Instant::now();
    let mut frames = read_frames(source.stream(&HeaderMap::new(), rx).into_body(), start);
    tx.send(Event::from("hello")).await.unwrap();
    assert_eq!(frames.recv().await.unwrap(), frame(0, "data: hello\n\n"));

    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown
        .trigger_with(Event::new().event("bye").data("restarting"))
        .unwrap();
    assert_eq!(
        frames.recv().await.unwrap(),
        frame(1_000, "event: bye\ndata: restarting\n\n")
    );
    assert_eq!(
        frames.recv().await,
        None,
        "the body ends after the farewell"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1), "without waiting");
    assert!(watch.is_dropped(), "the source is dropped");
    // The source is not read any more: what is sent now goes nowhere.
    assert!(tx.send(Event::from("late")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_an_item_already_taken_before_the_farewell() {
    let shutdown = Shutdown::new();
    let source = EventSource::new().graceful_shutdown(&shutdown);
    // Events of 40,008 bytes: two do not fit in one frame, so the second waits in the body.
    let items = stream::iter(0..10).map(|n| n.to_string().repeat(40_000));
    let (items, watch) = watched(items);
    let mut body = source.stream(&HeaderMap::new(), items).into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first.len(), 40_008);
    assert!(first.starts_with(b"data: 0000"));
    assert_eq!(watch.polls(), 2, "the second event was taken");

    shutdown.trigger_with("bye").unwrap();
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second.len(), 40_008);
    assert!(second.starts_with(b"data: 1111"));
    let farewell = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(farewell, "data: bye\n\n");
    assert!(body.frame().await.is_none());
    assert_eq!(watch.polls(), 2, "nothing more was taken");
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_a_frame_that_waits_for_the_source_before_the_farewell() {
    let shutdown = Shutdown::new();
    let source = EventSource::new().graceful_shutdown(&shutdown);
    let (tx, rx) = idle_source();
    let mut body = source.stream(&HeaderMap::new(), rx).into_body();
    let task = Arc::new(Wakes(AtomicUsize::new(0)));
    tx.try_send(Event::from("a")).unwrap();
    tx.try_send(Event::from("b")).unwrap();
    assert_eq!(poll_by_hand(&mut body, &task), None, "the frame waits");

    shutdown.trigger_with("bye").unwrap();
    assert_eq!(
        poll_by_hand(&mut body, &task).unwrap(),
        "data: a\n\ndata: b\n\n"
    );
    assert_eq!(poll_by_hand(&mut body, &task).unwrap(), "data: bye\n\n");
    assert!(body.frame().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn no_keep_alive_comment_goes_before_a_frame_that_waits_for_the_source() {
    let source = EventSource::new().keep_alive(Duration::from_secs(1));
    let (tx, rx) = idle_source();
    let mut body = source.stream(&HeaderMap::new(), rx).into_body();
    let task = Arc::new(Wakes(AtomicUsize::new(0)));
    tx.try_send(Event::from("a")).unwrap();
    tx.try_send(Event::from("b")).unwrap();
    assert_eq!(poll_by_hand(&mut body, &task), None, "the frame waits");
    // The keep-alive interval runs out while it waits.
    tokio::time::advance(Duration::from_secs(2)).await;
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, "data: a\n\ndata: b\n\n");
}

#[tokio::test(start_paused = true)]
async fn a_request_after_the_trigger_gets_the_farewell_and_its_stream_is_never_polled() {
    let shutdown = Shutdown::new();
    let source = EventSource::new()
        .retry(Duration::from_secs(9))
        .graceful_shutdown(&shutdown);
    shutdown.trigger_with("bye").unwrap();
    let (items, mut watch) = watched(stream::iter(["never"]));
    let response = source.stream(&HeaderMap::new(), items);
    assert_eq!(response.status(), StatusCode::OK);
    assert!(watch.is_dropped(), "dropped at once");
    assert_eq!(
        body_string(response.into_body()).await,
        "retry: 9000\n\ndata: bye\n\n"
    );
    assert_eq!(watch.polls(), 0);

    // Without a farewell: only `retry`, then the end.
    let shutdown = Shutdown::new();
    shutdown.trigger();
    let source = EventSource::new()
        .retry(Duration::from_secs(9))
        .graceful_shutdown(&shutdown);
    let response = source.stream(&HeaderMap::new(), stream::iter(["never"]));
    assert_eq!(body_string(response.into_body()).await, "retry: 9000\n\n");
}

/// A server draining its connections (axum's graceful shutdown) finishes once the streams
/// have ended with the farewell.
#[tokio::test]
async fn axum_graceful_shutdown_finishes_once_the_streams_have_said_farewell() {
    let shutdown = Shutdown::new();
    let source = EventSource::new().graceful_shutdown(&shutdown);
    let app = Router::new()
        .route(
            "/",
            get(
                |State(source): State<EventSource>, headers: HeaderMap| async move {
                    // An endless source that never gives anything.
                    source.stream(&headers, stream::pending::<Event>())
                },
            ),
        )
        .with_state(source);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    let mut readers = Vec::new();
    let mut clients = Vec::new();
    for proto in [Proto::Http1, Proto::Http2] {
        let mut client = Client::connect(addr, proto).await;
        readers.push(read_events(client.get("/").await.into_body()));
        clients.push(client);
    }
    shutdown
        .trigger_with(Event::new().event("bye").data("restarting"))
        .unwrap();
    stop.send(()).unwrap();
    for events in &mut readers {
        let bye = next_event(events).await;
        assert_eq!(
            (bye.event.as_str(), bye.data.as_str()),
            ("bye", "restarting")
        );
        assert_ends(events).await;
    }
    timeout(BOUND, server)
        .await
        .expect("the server finished draining")
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Without a usable runtime
// ---------------------------------------------------------------------------------------------

/// What `stream` must give without a usable runtime: an empty `500`, and the stream dropped
/// unpolled.
fn assert_stream_answers_500() {
    let (items, mut watch) = watched(stream::iter(["x"]));
    let response = EventSource::new()
        .retry(Duration::from_secs(1))
        .stream(&HeaderMap::new(), items);
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers().get(header::CONTENT_TYPE).is_none());
    assert!(response.body().is_end_stream());
    assert!(watch.is_dropped());
    assert_eq!(watch.polls(), 0);
}

#[test]
fn without_a_runtime_stream_answers_500() {
    assert_stream_answers_500();
}

#[test]
fn on_a_runtime_without_the_time_driver_stream_answers_500() {
    current_thread_without_time().block_on(async { assert_stream_answers_500() });
    multi_thread_without_time().block_on(async { assert_stream_answers_500() });
}
