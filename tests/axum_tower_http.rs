//! The service mounted in an axum `Router`, served by `axum::serve` on 127.0.0.1, behind
//! tower-http's `CorsLayer` (preflight for `Last-Event-ID`, credentials) and `CompressionLayer`
//! (the stream is not compressed, so not buffered). Run with `cargo test --test axum_tower_http`.

mod common;

use axum::{body::Body, routing::get, Router};
use common::{
    handover, message, next_connection, next_event, read_events, serve_axum, Client, Proto, BOUND,
};
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::{sync::mpsc, time::timeout};
use tower_http::{compression::CompressionLayer, cors::CorsLayer};

const ORIGIN: &str = "https://app.example";

fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(HeaderValue::from_static(ORIGIN))
        .allow_credentials(true)
        .allow_methods([Method::GET])
        .allow_headers([
            header::HeaderName::from_static("last-event-id"),
            header::AUTHORIZATION,
        ])
}

#[tokio::test]
async fn cors_preflight_allows_last_event_id() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover(tx);
    let app = Router::new()
        .route_service("/events", service)
        .layer(cors());
    let addr = serve_axum(app).await;
    let mut client = Client::connect(addr, Proto::Http1).await;

    let preflight = client
        .request(Method::OPTIONS, "/events")
        .header(header::ORIGIN, ORIGIN)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "last-event-id");
    let response = client.send(preflight).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], ORIGIN);
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    let allowed = headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.split(',').any(|h| h.trim() == "last-event-id"),
        "allowed headers: {allowed}"
    );
    assert!(headers[header::ACCESS_CONTROL_ALLOW_METHODS]
        .to_str()
        .unwrap()
        .contains("GET"));
    // The preflight was answered by the layer: the handler did not run.
    let _ = timeout(BOUND, response.into_body().collect())
        .await
        .unwrap();
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn cors_get_with_origin_streams_with_the_cors_headers() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover(tx);
    let app = Router::new()
        .route_service("/events", service)
        .layer(cors());
    let addr = serve_axum(app).await;
    let mut client = Client::connect(addr, Proto::Http1).await;

    let get = client
        .request(Method::GET, "/events")
        .header(header::ORIGIN, ORIGIN)
        .header("last-event-id", "41");
    let response = client.send(get).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], ORIGIN);
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
    assert!(!headers.contains_key(header::CONTENT_LENGTH));

    let conn = next_connection(&mut rx).await;
    assert_eq!(conn.last_event_id(), Some("41"));
    let mut events = read_events(response.into_body());
    conn.push(tower_eventsource::Event::new().id("42").data("next"))
        .await
        .unwrap();
    assert_eq!(next_event(&mut events).await, message("next", "42"));
}

#[tokio::test]
async fn compression_leaves_the_stream_alone_and_unbuffered() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = handover(tx);
    let app = Router::new()
        .route_service("/events", service)
        // A control route: the same layer does compress an ordinary text response.
        .route("/text", get(|| async { "compress me ".repeat(200) }))
        .layer(CompressionLayer::new());
    let addr = serve_axum(app).await;
    let mut client = Client::connect(addr, Proto::Http1).await;

    let text = client
        .request(Method::GET, "/text")
        .header(header::ACCEPT_ENCODING, "gzip");
    let response = client.send(text).await;
    assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
    let _ = timeout(BOUND, response.into_body().collect())
        .await
        .unwrap();

    let sse = client
        .request(Method::GET, "/events")
        .header(header::ACCEPT_ENCODING, "gzip");
    let response = client.send(sse).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        !response.headers().contains_key(header::CONTENT_ENCODING),
        "{:?}",
        response.headers()
    );
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );

    let conn = next_connection(&mut rx).await;
    let mut events = read_events(response.into_body());
    for i in 0..3 {
        let data = format!("event {i}");
        conn.push(data.as_str()).await.unwrap();
        // Readable before the next push: nothing holds it back to fill a compression block.
        assert_eq!(next_event(&mut events).await, message(&data, ""));
    }
}

/// The layer wraps the service itself (not only a router), as the README's CORS HOWTO does:
/// tower-http answers the preflight with the body's `Default`.
#[tokio::test]
async fn cors_layer_wraps_the_service_directly() {
    use tower::{Layer, ServiceExt};
    let (tx, _rx) = mpsc::unbounded_channel();
    let service = cors().layer(handover(tx));
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/events")
        .header(header::ORIGIN, ORIGIN)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "last-event-id")
        .body(Body::empty())
        .unwrap();
    let response = service.oneshot(preflight).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        ORIGIN
    );
    assert!(response.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap()
        .contains("last-event-id"));
    assert!(response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
}
