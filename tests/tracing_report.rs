//! With the `tracing` feature, a handler that panics is reported as an error event and one that
//! returns an error as a debug event; so are a stream given to `EventSource::stream` that
//! panics, and one that yields an error or an event that cannot be encoded. Run with
//! `cargo test --features tracing --test tracing_report`.
#![cfg(feature = "tracing")]

use http::Request;
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;
use tower_eventsource::{Connection, EventSource, EventSourceService, PushError};
use tracing::{field::Visit, span, Event, Level, Metadata, Subscriber};

/// Records the level and message of every event.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(Level, String)>>>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let level = *event.metadata().level();
        self.0.lock().unwrap().push((level, message.0));
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

#[tokio::test]
async fn panics_and_errors_are_reported() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());

    let panics = EventSourceService::new(|conn: Connection, _req: Request<()>| async move {
        conn.push("before").await.unwrap();
        if conn.last_event_id().is_none() {
            panic!("on purpose");
        }
    });
    let body = panics.oneshot(Request::new(())).await.unwrap().into_body();
    let bytes = body.collect().await.unwrap().to_bytes();
    assert_eq!(
        bytes, "data: before\n\n",
        "the stream ends cleanly after the panic"
    );

    let errors = EventSourceService::new(|conn: Connection, _req: Request<()>| async move {
        conn.close();
        conn.push("too late").await?;
        Ok::<_, PushError>(())
    });
    let body = errors.oneshot(Request::new(())).await.unwrap().into_body();
    assert!(body.collect().await.unwrap().to_bytes().is_empty());

    let events = recorder.0.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|(level, text)| *level == Level::ERROR && text.contains("panicked")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(level, text)| *level == Level::DEBUG && text.contains("event stream has ended")),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_stream_that_ends_on_an_error_an_invalid_event_or_a_panic_is_reported() {
    use futures_util::{stream, StreamExt};
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let source = EventSource::new().without_keep_alive();
    let headers = http::HeaderMap::new();
    let body = |response: http::Response<tower_eventsource::EventStreamBody>| async move {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    };

    let errors = stream::iter([Ok("a"), Err("the feed broke"), Ok("b")]);
    assert_eq!(body(source.stream(&headers, errors)).await, "data: a\n\n");
    let invalid = stream::iter([
        tower_eventsource::Event::from("a"),
        tower_eventsource::Event::new().id("x\ny").data("b"),
    ]);
    assert_eq!(body(source.stream(&headers, invalid)).await, "data: a\n\n");
    let panics = stream::iter([0, 1]).map(|n| match n {
        0 => "a",
        _ => panic!("on purpose"),
    });
    assert_eq!(body(source.stream(&headers, panics)).await, "data: a\n\n");

    let events = recorder.0.lock().unwrap().clone();
    let has = |level: Level, text: &str| {
        events
            .iter()
            .any(|(l, message)| *l == level && message.contains(text))
    };
    assert!(has(Level::DEBUG, "the feed broke"), "{events:?}");
    assert!(has(Level::DEBUG, "line break"), "{events:?}");
    assert!(has(Level::ERROR, "panicked"), "{events:?}");
}
