//! The Redis hub's metrics through the `metrics` crate's debugging recorder (one per instance),
//! and its per-send spans: sends, their durations and errors, subscribers and resumes, the
//! reader's lag, reconnects after `CLIENT KILL` and stream resets after `FLUSHALL`.

use crate::common::{metrics::Metrics, open_stream, serve_axum, Events, BOUND};
use crate::server::RedisServer;
use axum::{body::Body, Router};
use futures_util::StreamExt;
use http::Request;
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::timeout;
use tower_eventsource::{Broadcast, Connection, EventSource};

/// The hub "chat" on Redis's metric `name`.
fn chat(name: &str) -> String {
    Metrics::hub(name, "chat", "redis", None)
}

/// An instance of the hub "chat", its metrics registered with a recorder of its own.
fn instance(redis: &RedisServer) -> (Broadcast, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let hub = metrics::with_local_recorder(&recorder, || {
        Broadcast::builder()
            .history(100)
            .response_timeout(Duration::from_secs(1))
            .redis(redis.client(), "chat")
            .build()
    });
    (hub, snapshotter)
}

async fn next_data(events: &mut Events) -> String {
    timeout(BOUND, events.next())
        .await
        .expect("an event in time")
        .expect("an event")
        .expect("a valid event")
        .data
}

/// Waits (bounded) until `done` holds.
async fn wait_for(mut done: impl FnMut() -> bool) {
    timeout(BOUND * 2, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("in time");
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_redis_hub_counts_sends_lag_reconnects_resets_and_errors() {
    let mut redis = RedisServer::start().await;
    let (a, a_metrics) = instance(&redis);
    let (b, b_metrics) = instance(&redis);
    a.ready().await.unwrap();
    b.ready().await.unwrap();
    let events = EventSource::new().service({
        let b = b.clone();
        move |conn: Connection, _req: Request<Body>| {
            let b = b.clone();
            async move {
                b.subscribe(&conn).await;
            }
        }
    });
    let addr = serve_axum(Router::new().route_service("/events", events)).await;
    let (_client, mut stream) = open_stream(addr, "/events", None).await;
    wait_for(|| b.stats().subscribers == 1).await;
    let spans = Spans::default();
    {
        let _default = tracing::subscriber::set_default(spans.clone());
        for text in ["1", "2", "3"] {
            a.send(text).await.unwrap();
        }
    }
    for text in ["1", "2", "3"] {
        assert_eq!(next_data(&mut stream).await, text);
    }
    let sends = spans.0.lock().unwrap().clone();
    assert_eq!(sends.len(), 3, "one span per send: {sends:?}");
    assert!(
        sends.iter().all(|s| s == "hub=chat backend=redis "),
        "{sends:?}"
    );

    let mut seen_a = Metrics::default();
    let mut seen_b = Metrics::default();
    let at_a = seen_a.update(&a_metrics);
    assert_eq!(at_a.counter(&chat("sse_hub_events_sent_total")), 3);
    assert_eq!(
        at_a.histogram(&chat("sse_hub_send_duration_seconds")).len(),
        3
    );
    assert_eq!(at_a.counter(&chat("sse_hub_send_errors_total")), 0);
    let at_b = seen_b.update(&b_metrics);
    assert_eq!(
        at_b.counter(&chat("sse_hub_events_sent_total")),
        0,
        "B sent nothing"
    );
    assert_eq!(at_b.gauge(&chat("sse_hub_subscribers")), 1.0);
    let lag = at_b.histogram(&chat("sse_redis_reader_lag_seconds"));
    assert!(!lag.is_empty() && lag.len() <= 3, "{lag:?}");
    assert!(lag.iter().all(|&s| (0.0..5.0).contains(&s)), "{lag:?}");

    // The reader's connection is killed: it reconnects, and says so.
    let mut admin = redis.conn().await;
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .unwrap();
    a.send("4").await.unwrap();
    assert_eq!(next_data(&mut stream).await, "4");
    wait_for(|| b.stats().reader_reconnects >= 1).await;
    let at_b = seen_b.update(&b_metrics);
    assert_eq!(
        at_b.counter(&chat("sse_redis_reader_reconnects_total")),
        b.stats().reader_reconnects
    );

    // The stream is lost: the reader starts over, and says so.
    let _: redis::Value = redis::cmd("FLUSHALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    a.send("5").await.unwrap();
    wait_for(|| b.stats().stream_resets == 1).await;
    let at_b = seen_b.update(&b_metrics);
    assert_eq!(at_b.counter(&chat("sse_redis_stream_resets_total")), 1);

    // A repeated idempotency key stores nothing, and is not counted as sent.
    let first = a.send_idempotent("post-1", "6").await.unwrap();
    let again = a.send_idempotent("post-1", "6").await.unwrap();
    assert_eq!(first.id(), again.id());

    // Redis is gone: a send fails, and is counted as an error.
    redis.kill();
    assert!(a.send("lost").await.is_err());
    let at_a = seen_a.update(&a_metrics);
    assert_eq!(at_a.counter(&chat("sse_hub_send_errors_total")), 1);
    assert_eq!(at_a.counter(&chat("sse_hub_events_sent_total")), 6);
    assert_eq!(
        at_a.histogram(&chat("sse_hub_send_duration_seconds")).len(),
        8
    );
}

/// Records the fields of each `sse.send` span.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!("{}={value} ", field.name()));
    }
}

impl tracing::Subscriber for Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        if attrs.metadata().name() == "sse.send" {
            let mut fields = Fields(String::new());
            attrs.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
