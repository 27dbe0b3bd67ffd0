//! With the `tracing` feature, a handler that panics is reported as an error event and one that
//! returns an error as a debug event. Run with `cargo test --features tracing --test
//! tracing_report`.
#![cfg(feature = "tracing")]

use http::Request;
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;
use tower_eventsource::{Connection, EventSourceService, PushError};
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
