//! The `tracing` feature's spans: each stream has a span `sse.stream`, a child of the span
//! the request was served in (as tower-http's `TraceLayer` makes one), in which the handler
//! runs, and which records the hub the stream joined, how it resumed, the events and bytes it
//! sent and why it ended. Run with `cargo test --features tracing --test tracing_spans`; a
//! build without the feature lists the test as ignored.

#[cfg(feature = "tracing")]
mod spans {
    use http::Request;
    use http_body_util::BodyExt;
    use std::{
        cell::RefCell,
        collections::BTreeMap,
        sync::{Arc, Mutex},
    };
    use tower::ServiceExt;
    use tower_eventsource::{Broadcast, Connection, EventSource};
    use tracing::{
        field::{Field, Visit},
        span, Event, Instrument, Metadata, Subscriber,
    };

    /// A span as the recorder saw it: its name, its parent's name and its fields.
    #[derive(Clone, Debug, Default)]
    struct Seen {
        name: &'static str,
        parent: Option<&'static str>,
        fields: BTreeMap<String, String>,
    }

    /// An event's message and the name of the span it was logged in.
    type Logged = (String, Option<&'static str>);

    /// Records every span, its parent (explicit, or the current span of the thread) and its
    /// fields, and the span each event was logged in.
    #[derive(Clone, Default)]
    struct Recorder {
        spans: Arc<Mutex<Vec<Seen>>>,
        events: Arc<Mutex<Vec<Logged>>>,
    }

    thread_local! {
        static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    }

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().into(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().into(), value.into());
        }
    }

    impl Recorder {
        fn current(&self) -> Option<u64> {
            ENTERED.with(|entered| entered.borrow().last().copied())
        }

        fn name_of(&self, id: u64) -> &'static str {
            self.spans.lock().unwrap()[id as usize - 1].name
        }

        fn span(&self, name: &str) -> Seen {
            let spans = self.spans.lock().unwrap();
            let mut named = spans.iter().filter(|span| span.name == name);
            let span = named
                .next()
                .unwrap_or_else(|| panic!("no {name} span: {spans:?}"));
            assert!(named.next().is_none(), "one {name} span");
            span.clone()
        }
    }

    impl Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, attrs: &span::Attributes<'_>) -> span::Id {
            let parent = match attrs.parent() {
                Some(parent) => Some(parent.into_u64()),
                None if attrs.is_contextual() => self.current(),
                None => None,
            };
            let mut seen = Seen {
                name: attrs.metadata().name(),
                parent: parent.map(|id| self.name_of(id)),
                fields: BTreeMap::new(),
            };
            attrs.record(&mut Fields(&mut seen.fields));
            let mut spans = self.spans.lock().unwrap();
            spans.push(seen);
            span::Id::from_u64(spans.len() as u64)
        }
        fn record(&self, id: &span::Id, values: &span::Record<'_>) {
            let mut spans = self.spans.lock().unwrap();
            values.record(&mut Fields(&mut spans[id.into_u64() as usize - 1].fields));
        }
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            let message = fields.remove("message").unwrap_or_default();
            let span = self.current().map(|id| self.name_of(id));
            self.events.lock().unwrap().push((message, span));
        }
        fn enter(&self, id: &span::Id) {
            ENTERED.with(|entered| entered.borrow_mut().push(id.into_u64()));
        }
        fn exit(&self, _: &span::Id) {
            ENTERED.with(|entered| entered.borrow_mut().pop());
        }
    }

    #[tokio::test]
    async fn a_stream_span_nests_under_the_request_span_and_records_how_the_stream_went() {
        let recorder = Recorder::default();
        let _default = tracing::subscriber::set_default(recorder.clone());
        let hub = Broadcast::builder().history(10).name("news").build();
        let first = hub.send("one").await.unwrap().id().unwrap().to_owned();
        hub.send("two").await.unwrap();
        let events = EventSource::new().without_keep_alive().service({
            let hub = hub.clone();
            move |conn: Connection, _req: Request<()>| {
                let hub = hub.clone();
                async move {
                    hub.subscribe(&conn).await;
                    tracing::info!("in the handler");
                    conn.close();
                }
            }
        });
        let request = Request::builder()
            .header("last-event-id", &first)
            .body(())
            .unwrap();
        let response = events
            .oneshot(request)
            .instrument(tracing::info_span!("request"))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let (_, second) = first.rsplit_once('-').unwrap();
        assert!(
            body.starts_with(b"data: two\nid: "),
            "{body:?} after {second}"
        );

        let stream = recorder.span("sse.stream");
        assert_eq!(stream.parent, Some("request"));
        let field = |name: &str| stream.fields.get(name).map(String::as_str);
        assert_eq!(field("hub"), Some("news"));
        assert_eq!(field("resume"), Some("replayed"));
        assert_eq!(field("events"), Some("1"));
        assert_eq!(field("bytes"), Some(body.len().to_string().as_str()));
        assert_eq!(field("reason"), Some("closed"));
        let events = recorder.events.lock().unwrap().clone();
        assert!(
            events.contains(&("in the handler".into(), Some("sse.stream"))),
            "the handler runs in the stream's span: {events:?}"
        );
    }

    #[tokio::test]
    async fn a_polled_stream_has_its_span_too() {
        let recorder = Recorder::default();
        let _default = tracing::subscriber::set_default(recorder.clone());
        let source = EventSource::new().without_keep_alive();
        let response = tracing::info_span!("request").in_scope(|| {
            source.stream(
                &http::HeaderMap::new(),
                futures_util::stream::iter(["a", "b"]),
            )
        });
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "data: a\n\ndata: b\n\n");
        let stream = recorder.span("sse.stream");
        assert_eq!(stream.parent, Some("request"));
        assert_eq!(stream.fields.get("events").map(String::as_str), Some("2"));
        assert_eq!(stream.fields.get("bytes").map(String::as_str), Some("18"));
        assert_eq!(
            stream.fields.get("reason").map(String::as_str),
            Some("handler_done")
        );
    }
}

/// Stands for the span tests in a build without the `tracing` feature, so that a plain
/// `cargo test` lists them as ignored rather than running nothing silently.
#[cfg(not(feature = "tracing"))]
#[test]
#[ignore = "needs the tracing feature: cargo test --features tracing --test tracing_spans"]
fn span_tests_need_the_tracing_feature() {
    panic!("build with --features tracing to run the span tests");
}
