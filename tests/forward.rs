//! `Connection::forward` and `Broadcast::forward` behind a real hyper server on 127.0.0.1, read
//! with `eventsource-stream`: order, the end of the source, a client leaving while the source
//! is idle, backpressure and invalid items. Run with `cargo test --test forward`.

mod common;

use common::{
    assert_ends, handover, message, next_connection, next_event, read_events, serve, split_id,
    Client, Proto, BOUND,
};
use futures_util::{stream, StreamExt};
use http::Request;
use hyper::body::Incoming;
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{sync::mpsc, time::timeout};
use tokio_stream::wrappers::ReceiverStream;
use tower_eventsource::{Broadcast, EncodeError, Event, PushError, SendError};

#[tokio::test]
async fn every_item_arrives_in_order_and_the_end_of_the_source_ends_forward_with_ok() {
    let (tx, mut conns) = mpsc::unbounded_channel();
    let addr = serve(handover(tx)).await;
    let mut client = Client::connect(addr, Proto::Http1).await;
    let mut events = read_events(client.get("/").await.into_body());
    let conn = next_connection(&mut conns).await;

    let items = stream::iter(0..500).map(|n| Event::new().id(n.to_string()).data("x"));
    // The task owns the only handle: when forward returns, the client's stream ends.
    let forwarded = tokio::spawn(async move { conn.forward(items).await });
    for n in 0..500 {
        assert_eq!(next_event(&mut events).await, message("x", &n.to_string()));
    }
    let result = timeout(BOUND, forwarded).await.unwrap().unwrap();
    assert_eq!(result, Ok(()));
    assert_ends(&mut events).await;
}

#[tokio::test]
async fn a_client_leaving_while_the_source_is_idle_ends_forward_with_disconnected() {
    for proto in [Proto::Http1, Proto::Http2] {
        let (tx, mut conns) = mpsc::unbounded_channel();
        let addr = serve(handover(tx)).await;
        let mut client = Client::connect(addr, proto).await;
        let mut events = read_events(client.get("/").await.into_body());
        let conn = next_connection(&mut conns).await;

        // The source stays open and, after one item, never yields again.
        let (source, rx) = mpsc::channel::<String>(8);
        let forwarded = tokio::spawn(async move { conn.forward(ReceiverStream::new(rx)).await });
        source.send("first".into()).await.unwrap();
        assert_eq!(next_event(&mut events).await, message("first", ""));

        drop(events);
        client.disconnect().await;
        let result = timeout(BOUND, forwarded)
            .await
            .expect("forward ends although its source is idle")
            .unwrap();
        assert_eq!(result, Err(PushError::Disconnected), "{proto:?}");
        drop(source);
    }
}

#[tokio::test]
async fn closing_the_stream_while_the_source_is_idle_ends_forward_with_closed() {
    let (tx, mut conns) = mpsc::unbounded_channel();
    let addr = serve(handover(tx)).await;
    let mut client = Client::connect(addr, Proto::Http1).await;
    let mut events = read_events(client.get("/").await.into_body());
    let conn = next_connection(&mut conns).await;

    let (source, rx) = mpsc::channel::<String>(8);
    let forwarding = conn.clone();
    let forwarded = tokio::spawn(async move { forwarding.forward(ReceiverStream::new(rx)).await });
    source.send("first".into()).await.unwrap();
    assert_eq!(next_event(&mut events).await, message("first", ""));

    conn.close();
    let result = timeout(BOUND, forwarded)
        .await
        .expect("forward ends although its source is idle")
        .unwrap();
    assert_eq!(result, Err(PushError::Closed));
    assert_ends(&mut events).await;
    drop(source);
}

/// A client that does not read fills the socket and then the buffer: `forward` stops taking
/// items from the source and waits; once the client reads, every item arrives, none dropped.
#[tokio::test(start_paused = true)]
async fn a_full_buffer_makes_forward_wait_without_dropping_items() {
    const ITEMS: usize = 1_000;
    // 16 MB in all: far more than the loopback socket buffers and hyper's hold while the
    // client does not read.
    let data = "y".repeat(16 * 1024);
    let (tx, mut conns) = mpsc::unbounded_channel();
    let service = handover(tx)
        .buffer(4)
        .without_send_timeout()
        .without_keep_alive();
    let addr = serve(service).await;
    let mut client = Client::connect(addr, Proto::Http1).await;
    let response = client.get("/").await;
    let conn = next_connection(&mut conns).await;

    let taken = Arc::new(AtomicUsize::new(0));
    let items = stream::iter(0..ITEMS).map({
        let taken = Arc::clone(&taken);
        let data = data.clone();
        move |n| {
            taken.fetch_add(1, Ordering::SeqCst);
            Event::new().id(n.to_string()).data(&data)
        }
    });
    let forwarded = tokio::spawn(async move { conn.forward(items).await });

    // On the paused clock this sleep ends once nothing else can make progress: the client
    // reads nothing, so the server's writes and then the buffer are full.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let stalled_at = taken.load(Ordering::SeqCst);
    assert!(
        stalled_at < ITEMS,
        "forward took all {ITEMS} items from its source although the client read nothing"
    );
    assert!(!forwarded.is_finished(), "forward is waiting for room");

    let mut events = read_events(response.into_body());
    for n in 0..ITEMS {
        assert_eq!(
            next_event(&mut events).await,
            message(&data, &n.to_string()),
            "item {n} (forward had stopped after {stalled_at})"
        );
    }
    let result = timeout(BOUND, forwarded).await.unwrap().unwrap();
    assert_eq!(result, Ok(()));
    assert_ends(&mut events).await;
}

#[tokio::test]
async fn an_invalid_item_stops_forward_with_invalid_and_leaves_the_rest_unread() {
    let (tx, mut conns) = mpsc::unbounded_channel();
    let addr = serve(handover(tx)).await;
    let mut client = Client::connect(addr, Proto::Http1).await;
    let mut events = read_events(client.get("/").await.into_body());
    let conn = next_connection(&mut conns).await;

    let mut items = stream::iter([
        Event::from("before"),
        Event::new().event("two\nlines").data("x"),
        Event::from("after"),
    ]);
    let result = conn.forward(&mut items).await;
    assert_eq!(
        result,
        Err(PushError::Invalid(EncodeError::LineBreakInEventName))
    );
    assert_eq!(
        items.next().await.map(Event::encode),
        Some(Event::from("after").encode()),
        "the item after the invalid one is left in the source"
    );
    assert!(!conn.is_closed(), "an invalid item does not end the stream");
    conn.push("later").await.unwrap();
    drop(conn);

    assert_eq!(next_event(&mut events).await, message("before", ""));
    assert_eq!(next_event(&mut events).await, message("later", ""));
    assert_ends(&mut events).await;
}

#[tokio::test]
async fn a_hub_fed_from_a_stream_reaches_every_subscriber_in_order() {
    let hub = Broadcast::builder().history(16).build();
    let service = tower_eventsource::EventSourceService::new({
        let hub = hub.clone();
        move |conn: tower_eventsource::Connection, _req: Request<Incoming>| {
            let hub = hub.clone();
            async move {
                hub.subscribe(&conn).await;
                conn.closed().await
            }
        }
    });
    let addr = serve(service).await;
    let mut clients = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(addr, Proto::Http1).await;
        readers.push(read_events(client.get("/").await.into_body()));
        clients.push(client);
    }
    // `subscribe` has run for all three once the hub counts them.
    timeout(BOUND, async {
        while hub.stats().subscribers < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every client subscribes");

    let (source, rx) = mpsc::channel::<String>(8);
    let feeding = tokio::spawn({
        let hub = hub.clone();
        async move { hub.forward(ReceiverStream::new(rx)).await }
    });
    for n in 0..10 {
        source.send(format!("news {n}")).await.unwrap();
    }
    drop(source);
    let forwarded = timeout(BOUND, feeding).await.unwrap().unwrap();
    assert!(forwarded.is_ok(), "{forwarded:?}");
    // The hub numbers its events from 1 in its epoch, which its newest event shows.
    let (epoch, newest) = split_id(hub.recent(1).await.unwrap()[0].id());
    assert_eq!(newest, 10);
    for events in &mut readers {
        for n in 0..10 {
            assert_eq!(
                next_event(events).await,
                message(&format!("news {n}"), &format!("{epoch}-{}", n + 1))
            );
        }
    }
    assert_eq!(hub.stats().events_sent, 10);
}

#[tokio::test]
async fn a_hub_fed_an_invalid_item_stops_there() {
    let hub = Broadcast::new();
    let mut items = stream::iter([
        Event::from("ok"),
        Event::new().id("a\nb").data("x"),
        Event::from("after"),
    ]);
    let result = hub.forward(&mut items).await;
    assert!(
        matches!(result, Err(SendError::Invalid(EncodeError::LineBreakInId))),
        "{result:?}"
    );
    assert_eq!(hub.stats().events_sent, 1);
    assert_eq!(
        items.next().await.map(Event::encode),
        Some(Event::from("after").encode()),
        "the rest is left unread"
    );
}
