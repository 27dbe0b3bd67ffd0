//! The metrics read through real recorders: the `metrics` crate's debugging recorder after a
//! scripted scenario over a real server and real clients, a send timeout on tokio's paused
//! clock, and the Prometheus exporter's output before anything happens.

use crate::common::{metrics::Metrics, serve_axum, Client, Proto, BOUND};
use axum::{body::Body, http::HeaderMap, response::IntoResponse, routing::get, Router};
use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::{stream, Stream, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use metrics_util::debugging::DebuggingRecorder;
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{sync::mpsc, time::timeout};
use tower::ServiceExt;
use tower_eventsource::{
    Broadcast, CloseReason, Connection, EventSource, KeyedBroadcast, PushError, Shutdown,
    SlowClient,
};

/// Every metric the library registers for one in-process hub, keyed and not, and its streams.
const STREAM_METRICS: [&str; 6] = [
    "sse_connections_active",
    "sse_connections_total",
    "sse_connections_closed_total",
    "sse_connection_duration_seconds",
    "sse_events_sent_total",
    "sse_bytes_sent_total",
];
const HUB_METRICS: [&str; 7] = [
    "sse_hub_events_sent_total",
    "sse_hub_subscribers",
    "sse_hub_resumes_total",
    "sse_hub_slow_clients_total",
    "sse_hub_send_errors_total",
    "sse_hub_send_duration_seconds",
    "sse_hub_keys",
];
const REASONS: [&str; 7] = [
    "client_gone",
    "closed",
    "send_timeout",
    "slow_client",
    "shutdown",
    "handler_done",
    "handler_panic",
];

/// A response body read as events by `eventsource-stream`, counting the body's bytes.
type Counted = Pin<Box<dyn Stream<Item = eventsource_stream::Event> + Send>>;

fn counted(body: hyper::body::Incoming, bytes: Arc<AtomicU64>) -> Counted {
    Box::pin(
        body.into_data_stream()
            .map(move |frame| {
                let frame: Bytes = frame.expect("the body reads");
                bytes.fetch_add(frame.len() as u64, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(frame)
            })
            .eventsource()
            .map(|event| event.expect("a valid event stream")),
    )
}

/// One client's stream: its events as read so far, and the bytes of its body.
struct Reader {
    client: Client,
    events: Counted,
    datas: Vec<String>,
}

impl Reader {
    async fn open(
        addr: std::net::SocketAddr,
        path: &str,
        last_event_id: Option<&str>,
        bytes: &Arc<AtomicU64>,
    ) -> Reader {
        let mut client = Client::connect(addr, Proto::Http1).await;
        let mut request = client.request(http::Method::GET, path);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = client.send(request).await;
        assert_eq!(response.status(), 200, "{path}");
        Reader {
            client,
            events: counted(response.into_body(), Arc::clone(bytes)),
            datas: Vec::new(),
        }
    }

    /// Reads `count` more events.
    async fn read(&mut self, count: usize) {
        for _ in 0..count {
            let event = timeout(BOUND, self.events.next())
                .await
                .expect("an event in time")
                .expect("an event, not the end");
            self.datas.push(match event.event.as_str() {
                "message" => event.data,
                name => format!("{name}:{}", event.data),
            });
        }
    }

    /// Reads to the end of the stream, expecting no more events.
    async fn read_to_end(&mut self) {
        let next = timeout(BOUND, self.events.next())
            .await
            .expect("the end in time");
        assert!(next.is_none(), "no more events: {next:?}");
    }
}

#[tokio::test]
async fn a_scripted_scenario_counts_every_stream_event_and_reason_exactly() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let shutdown = Shutdown::new();
    let (source, slow_source, news, slow, keyed) = metrics::with_local_recorder(&recorder, || {
        let source = EventSource::new()
            .without_keep_alive()
            .retry(Duration::from_secs(1))
            .graceful_shutdown(&shutdown);
        let slow_source = EventSource::new().without_keep_alive().buffer(1);
        let news = Broadcast::builder().history(10).name("news").build();
        let slow = Broadcast::builder()
            .slow_client(SlowClient::Disconnect)
            .name("slow")
            .build();
        let keyed = KeyedBroadcast::<String>::new(Broadcast::builder().history(1).name("rooms"));
        (source, slow_source, news, slow, keyed)
    });

    // Before anything happens, every metric shows, as 0.
    let mut metrics = Metrics::default();
    let before = metrics.update(&snapshotter);
    for name in STREAM_METRICS {
        assert!(
            before.0.keys().any(|k| k.starts_with(&format!("{name}{{"))),
            "{name}"
        );
    }
    for name in HUB_METRICS {
        assert!(
            before.0.keys().any(|k| k.starts_with(&format!("{name}{{"))),
            "{name}"
        );
    }
    for reason in REASONS {
        assert_eq!(
            before.counter(&format!("sse_connections_closed_total{{reason={reason}}}")),
            0
        );
    }
    assert_eq!(before.gauge("sse_connections_active{}"), 0.0);

    // What each stream's handler saw as the reason, as `closed()` returns it.
    let (reasons_tx, mut reasons) = mpsc::unbounded_channel::<(String, CloseReason)>();
    let events = source.service({
        let news = news.clone();
        move |conn: Connection, req: Request<Body>| {
            let news = news.clone();
            let reasons = reasons_tx.clone();
            let mode = req.uri().query().unwrap_or_default().to_owned();
            async move {
                match mode.as_str() {
                    "done" => {
                        let _ = conn.push("bye").await;
                    }
                    "close" => {
                        let _ = conn.push("x").await;
                        conn.close();
                        assert_eq!(conn.push("late").await, Err(PushError::Closed));
                        let _ = reasons.send((mode, conn.closed().await));
                    }
                    "panic" => panic!("a handler that panics (expected by the test)"),
                    _ => {
                        news.subscribe(&conn).await;
                        let _ = reasons.send((mode, conn.closed().await));
                    }
                }
            }
        }
    });
    let slow_events = slow_source.service({
        let slow = slow.clone();
        move |conn: Connection, _req: Request<Body>| {
            let slow = slow.clone();
            async move {
                slow.subscribe(&conn).await;
                conn.closed().await;
            }
        }
    });
    async fn polled(
        axum::extract::State(source): axum::extract::State<EventSource>,
        headers: HeaderMap,
    ) -> impl IntoResponse {
        source.stream(&headers, stream::iter(["p1", "p2"]))
    }
    let app = Router::new()
        .route_service("/events", events)
        .route_service("/slow", slow_events)
        .route("/polled", get(polled))
        .with_state(source.clone());
    let addr = serve_axum(app).await;
    let bytes = Arc::new(AtomicU64::new(0));

    // A: live, three events, then the client leaves.
    let mut a = Reader::open(addr, "/events?a", None, &bytes).await;
    while news.stats().subscribers < 1 {
        tokio::task::yield_now().await;
    }
    let mut ids = Vec::new();
    for data in ["a1", "a2", "a3"] {
        ids.push(news.send(data).await.unwrap().id().unwrap().to_owned());
    }
    a.read(3).await;
    assert_eq!(a.datas, ["a1", "a2", "a3"]);
    a.client.disconnect().await;
    drop(a.events);
    let (mode, reason) = timeout(BOUND, reasons.recv()).await.unwrap().unwrap();
    assert_eq!((mode.as_str(), reason), ("a", CloseReason::ClientGone));

    // B resumes after a1 (two replayed), C sends an unknown id (the reset event); then a4.
    let mut b = Reader::open(addr, "/events?b", Some(&ids[0]), &bytes).await;
    b.read(2).await;
    let mut c = Reader::open(addr, "/events?c", Some("0000000000000000-1"), &bytes).await;
    c.read(1).await;
    news.send("a4").await.unwrap();
    b.read(1).await;
    c.read(1).await;
    assert_eq!(b.datas, ["a2", "a3", "a4"]);
    assert_eq!(c.datas, ["reset:", "a4"]);

    // A handler that returns, one that closes, one that panics; a stream given to `stream`.
    let mut e = Reader::open(addr, "/events?done", None, &bytes).await;
    e.read(1).await;
    e.read_to_end().await;
    let mut f = Reader::open(addr, "/events?close", None, &bytes).await;
    f.read(1).await;
    f.read_to_end().await;
    let (mode, reason) = timeout(BOUND, reasons.recv()).await.unwrap().unwrap();
    assert_eq!((mode.as_str(), reason), ("close", CloseReason::Closed));
    let mut g = Reader::open(addr, "/events?panic", None, &bytes).await;
    g.read_to_end().await;
    let mut p = Reader::open(addr, "/polled", None, &bytes).await;
    p.read(2).await;
    p.read_to_end().await;
    assert_eq!(p.datas, ["p1", "p2"]);

    // D's buffer holds one event: two sent at once make it a slow client.
    let mut d = Reader::open(addr, "/slow", None, &bytes).await;
    while slow.stats().subscribers < 1 {
        tokio::task::yield_now().await;
    }
    slow.send("s1").await.unwrap();
    slow.send("s2").await.unwrap();
    d.read(1).await;
    d.read_to_end().await;
    assert_eq!(d.datas, ["s1"]);

    // Keys come and go in the gauge.
    keyed.send("one", "x").await.unwrap();
    keyed.send("two", "y").await.unwrap();
    // A repeated idempotency key sends nothing, and is not counted as sent.
    keyed.send_idempotent("two", "post-1", "z").await.unwrap();
    keyed.send_idempotent("two", "post-1", "z").await.unwrap();
    let during = metrics.update(&snapshotter);
    assert_eq!(
        during.gauge(&Metrics::hub("sse_hub_keys", "rooms", "memory", None)),
        2.0
    );
    assert_eq!(during.gauge("sse_connections_active{}"), 2.0, "B and C");
    assert_eq!(
        during.gauge(&Metrics::hub("sse_hub_subscribers", "news", "memory", None)),
        2.0
    );

    // A shutdown ends B and C after the farewell.
    shutdown.trigger_with("farewell").unwrap();
    b.read(1).await;
    b.read_to_end().await;
    c.read(1).await;
    c.read_to_end().await;
    let mut ended: Vec<_> = [reasons.recv().await, reasons.recv().await]
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    ended.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        ended,
        [
            ("b".into(), CloseReason::Shutdown),
            ("c".into(), CloseReason::Shutdown)
        ]
    );

    let after = metrics.update(&snapshotter);
    let closed =
        |reason: &str| after.counter(&format!("sse_connections_closed_total{{reason={reason}}}"));
    let durations = |reason: &str| {
        after
            .histogram(&format!(
                "sse_connection_duration_seconds{{reason={reason}}}"
            ))
            .len()
    };
    let expected = [
        ("client_gone", 1), // A
        ("closed", 1),      // F
        ("send_timeout", 0),
        ("slow_client", 1),   // D
        ("shutdown", 2),      // B, C
        ("handler_done", 2),  // E, the polled stream
        ("handler_panic", 1), // G
    ];
    for (reason, count) in expected {
        assert_eq!(closed(reason), count, "{reason}");
        assert_eq!(durations(reason), count as usize, "{reason}");
    }
    assert_eq!(after.counter("sse_connections_total{}"), 8);
    assert_eq!(after.gauge("sse_connections_active{}"), 0.0);
    // A 3, B 2 + 1 + the farewell, C the reset + 1 + the farewell, E 1, F 1, G 0, the polled
    // stream 2, D 1; the `retry:` frames are not events.
    assert_eq!(
        after.counter("sse_events_sent_total{}"),
        3 + 4 + 3 + 1 + 1 + 2 + 1
    );
    assert_eq!(
        after.counter("sse_bytes_sent_total{}"),
        bytes.load(Ordering::SeqCst)
    );
    assert!(bytes.load(Ordering::SeqCst) > 0);

    let hub = |name: &str, hub: &str, extra: Option<&str>| Metrics::hub(name, hub, "memory", extra);
    assert_eq!(
        after.counter(&hub("sse_hub_events_sent_total", "news", None)),
        4
    );
    assert_eq!(
        after.counter(&hub("sse_hub_events_sent_total", "slow", None)),
        2
    );
    assert_eq!(
        after.counter(&hub("sse_hub_events_sent_total", "rooms", None)),
        3
    );
    assert_eq!(after.gauge(&hub("sse_hub_subscribers", "news", None)), 0.0);
    assert_eq!(after.gauge(&hub("sse_hub_subscribers", "slow", None)), 0.0);
    for (outcome, count) in [("live", 1), ("replayed", 1), ("reset", 1)] {
        let name = hub(
            "sse_hub_resumes_total",
            "news",
            Some(&format!("outcome={outcome}")),
        );
        assert_eq!(after.counter(&name), count, "{outcome}");
    }
    let slow_clients = |action: &str| {
        after.counter(&hub(
            "sse_hub_slow_clients_total",
            "slow",
            Some(&format!("action={action}")),
        ))
    };
    assert_eq!((slow_clients("disconnect"), slow_clients("skip")), (1, 0));
    assert_eq!(
        after.counter(&hub("sse_hub_send_errors_total", "news", None)),
        0
    );
    assert_eq!(
        after
            .histogram(&hub("sse_hub_send_duration_seconds", "news", None))
            .len(),
        4
    );
    assert_eq!(after.gauge(&hub("sse_hub_keys", "rooms", None)), 2.0);
}

#[tokio::test(start_paused = true)]
async fn a_send_timeout_on_the_paused_clock_is_counted_with_its_duration() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let source = metrics::with_local_recorder(&recorder, || {
        EventSource::new()
            .without_keep_alive()
            .buffer(1)
            .send_timeout(Duration::from_secs(2))
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = source.service(move |conn: Connection, _req: Request<()>| {
        let tx = tx.clone();
        async move {
            conn.push("queued").await.unwrap();
            // The client reads nothing: this push waits, then fails at the send timeout.
            let _ = tx.send((conn.push("waits").await, conn.closed().await));
        }
    });
    let response = service.oneshot(Request::new(())).await.unwrap();
    let (push, reason) = rx.recv().await.unwrap();
    assert_eq!(push, Err(PushError::Disconnected));
    assert_eq!(reason, CloseReason::SendTimeout);
    let mut tally = Metrics::default();
    let metrics = tally.update(&snapshotter);
    assert_eq!(
        metrics.counter("sse_connections_closed_total{reason=send_timeout}"),
        1
    );
    assert_eq!(
        metrics.gauge("sse_connections_active{}"),
        0.0,
        "ended though never read"
    );
    assert_eq!(
        metrics.histogram("sse_connection_duration_seconds{reason=send_timeout}"),
        [2.0]
    );
    assert_eq!(
        metrics.counter("sse_events_sent_total{}"),
        0,
        "nothing was written"
    );
    drop(response);
    let metrics = tally.update(&snapshotter);
    assert_eq!(
        metrics.counter("sse_connections_closed_total{reason=send_timeout}"),
        1
    );
    assert_eq!(
        metrics.counter("sse_connections_closed_total{reason=client_gone}"),
        0
    );
}

#[tokio::test]
async fn the_prometheus_exporter_renders_every_metric_before_anything_happens() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _hubs = metrics::with_local_recorder(&recorder, || {
        let _source = EventSource::new();
        (
            Broadcast::builder().name("chat").build(),
            KeyedBroadcast::<String>::new(Broadcast::builder().name("orders")),
        )
    });
    let text = handle.render();
    for name in STREAM_METRICS.iter().chain(&HUB_METRICS) {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} in:\n{text}"
        );
    }
    assert!(text.contains("sse_connections_active 0\n"), "{text}");
    assert!(
        text.contains("sse_connections_closed_total{reason=\"slow_client\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("sse_hub_subscribers{hub=\"chat\",backend=\"memory\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("sse_hub_keys{hub=\"orders\",backend=\"memory\"} 0\n"),
        "{text}"
    );
    assert!(
        !text.contains("sse_hub_keys{hub=\"chat\""),
        "a plain hub has no keys"
    );
    assert!(text.contains("# HELP sse_bytes_sent_total"), "{text}");
}
