//! Encoder benchmark: typical events encoded with our `Event` and with axum 0.8's
//! `axum::response::sse::Event`. Run with `cargo bench --bench encode`.
//!
//! axum has no public way to encode an event: its bytes come out of the body of an
//! `axum::response::Sse` response. So each case is measured three ways:
//!
//! - `ours/encode`: `Event::new()...encode()`, the bytes alone;
//! - `ours/via-body` and `axum/via-body`: the event goes out through the same path, a one-item
//!   stream in a response with the same two headers, and the body is collected. axum's is
//!   `Sse::new(stream).into_response()`; ours puts the encoded bytes in
//!   `axum::body::Body::from_stream`, which is what `Sse` does minus the encoding;
//! - `path-only/via-body`: that path with bytes encoded beforehand, the fixed cost to subtract
//!   from both `via-body` figures to compare the encoders alone.
//!
//! Every path is checked to give the same bytes before it is measured.

use axum::{
    body::Body,
    response::{sse, IntoResponse, Response, Sse},
};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures_util::stream;
use http::header;
use http_body_util::BodyExt;
use std::{
    convert::Infallible,
    future::Future,
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
};
use tower_eventsource::Event;

/// 32 bytes of data, the size of a small JSON update.
const DATA_32: &str = "{\"id\":12345,\"price\":1012.500000}";

/// The fields of one benchmark case.
struct Case {
    name: &'static str,
    event: Option<&'static str>,
    id: Option<&'static str>,
    data: String,
}

fn cases() -> Vec<Case> {
    assert_eq!(DATA_32.len(), 32);
    vec![
        Case {
            name: "data-32B",
            event: None,
            id: None,
            data: DATA_32.to_owned(),
        },
        Case {
            name: "event-id-data",
            event: Some("update"),
            id: Some("1732550400000001"),
            data: DATA_32.to_owned(),
        },
        Case {
            name: "data-10-lines",
            event: None,
            id: None,
            data: [DATA_32; 10].join("\n"),
        },
    ]
}

fn ours(case: &Case) -> Event {
    let mut event = Event::new();
    if let Some(name) = case.event {
        event = event.event(name);
    }
    if let Some(id) = case.id {
        event = event.id(id);
    }
    event.data(&case.data)
}

fn axum_event(case: &Case) -> sse::Event {
    let mut event = sse::Event::default();
    if let Some(name) = case.event {
        event = event.event(name);
    }
    if let Some(id) = case.id {
        event = event.id(id);
    }
    event.data(&case.data)
}

/// axum's path: the event in a one-item stream, through `Sse`, and the body collected.
fn axum_via_body(event: sse::Event) -> Bytes {
    let item = stream::iter([Ok::<_, Infallible>(event)]);
    collect(Sse::new(item).into_response())
}

/// The same response path for bytes already encoded: `Sse` minus the encoding.
fn bytes_via_body(bytes: Bytes) -> Bytes {
    let item = stream::iter([Ok::<_, Infallible>(bytes)]);
    let response = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(item),
    )
        .into_response();
    collect(response)
}

/// The whole body of a response whose body is ready at once.
fn collect(response: Response) -> Bytes {
    let collect = pin!(response.into_body().collect());
    match collect.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(collected)) => collected.to_bytes(),
        Poll::Ready(Err(error)) => panic!("body failed: {error}"),
        Poll::Pending => panic!("body was not ready at once"),
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for case in cases() {
        let wire = ours(&case).encode().expect("valid event");
        assert_eq!(axum_via_body(axum_event(&case)), wire, "{}", case.name);
        assert_eq!(bytes_via_body(wire.clone()), wire, "{}", case.name);

        group.bench_function(BenchmarkId::new("ours/encode", case.name), |b| {
            b.iter(|| ours(black_box(&case)).encode().expect("valid event"))
        });
        group.bench_function(BenchmarkId::new("ours/via-body", case.name), |b| {
            b.iter(|| bytes_via_body(ours(black_box(&case)).encode().expect("valid event")))
        });
        group.bench_function(BenchmarkId::new("axum/via-body", case.name), |b| {
            b.iter(|| axum_via_body(axum_event(black_box(&case))))
        });
        group.bench_function(BenchmarkId::new("path-only/via-body", case.name), |b| {
            b.iter(|| bytes_via_body(black_box(wire.clone())))
        });
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
