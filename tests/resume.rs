//! Resuming a `Broadcast` over a real socket with ids at and past the limits: a
//! `Last-Event-ID` of the longest usable length reaches the hub, one too long or not UTF-8
//! gets the reset event instead of silently losing what was missed, an event's own id (however
//! odd or repeated) goes out before the hub's, which is the one a browser resumes from, and
//! `send` says which id it gave.
//! Run with `cargo test --test resume`.

mod common;

use common::{message, next_event, read_events, serve, split_id, Client, Proto, BOUND};
use http::{HeaderValue, Request};
use hyper::body::Incoming;
use tokio::{sync::mpsc, time::timeout};
use tower_eventsource::{Broadcast, Connection, Event, EventSourceService, Resume};

/// A server whose stream subscribes every request to `hub`.
async fn hub_server(hub: &Broadcast) -> std::net::SocketAddr {
    hub_server_reporting(hub).await.0
}

/// A server whose stream subscribes every request to `hub`, reporting each connection's
/// `Last-Event-ID` as the hub saw it and how it was subscribed.
async fn hub_server_reporting(
    hub: &Broadcast,
) -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<(Option<String>, Resume)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let hub = hub.clone();
    let addr = serve(EventSourceService::new(
        move |conn: Connection, _req: Request<Incoming>| {
            let (hub, tx) = (hub.clone(), tx.clone());
            async move {
                let last_event_id = conn.last_event_id().map(str::to_owned);
                let how = hub.subscribe(&conn).await;
                let _ = tx.send((last_event_id, how));
            }
        },
    ))
    .await;
    (addr, rx)
}

/// Opens the stream with `Last-Event-ID: last_event_id` and returns its events.
async fn resume(addr: std::net::SocketAddr, last_event_id: &[u8]) -> common::Events {
    let mut client = Client::connect(addr, Proto::Http1).await;
    let req = client.request(http::Method::GET, "/").header(
        "last-event-id",
        HeaderValue::from_bytes(last_event_id).unwrap(),
    );
    let response = client.send(req).await;
    assert_eq!(response.status(), 200);
    // The client's connection task lives on with the response body.
    std::mem::forget(client);
    read_events(response.into_body())
}

#[tokio::test]
async fn an_id_of_the_longest_usable_length_goes_out_and_reaches_the_hub() {
    let hub = Broadcast::builder().history(10).build();
    let (addr, mut subscribed) = hub_server_reporting(&hub).await;
    let long = "i".repeat(1024);
    // The event's own id goes out, and the hub's after it: the browser keeps the hub's.
    let first = hub
        .send(Event::new().id(&long).data("first"))
        .await
        .unwrap();
    let missed = hub.send("missed").await.unwrap();
    let mut events = resume(addr, first.id().unwrap().as_bytes()).await;
    assert_eq!(
        timeout(BOUND, subscribed.recv()).await.unwrap().unwrap(),
        (first.id().map(str::to_owned), Resume::Replayed(1))
    );
    assert_eq!(
        next_event(&mut events).await,
        message("missed", missed.id().unwrap())
    );
    assert_eq!(
        hub.recent(2).await.unwrap()[0].id(),
        first.id().unwrap(),
        "the history holds the hub's id, the one the browser keeps"
    );

    // A `Last-Event-ID` that long is usable: the hub sees it (and, not knowing it, resets).
    let mut events = resume(addr, long.as_bytes()).await;
    assert_eq!(
        timeout(BOUND, subscribed.recv()).await.unwrap().unwrap(),
        (Some(long), Resume::Reset)
    );
    let reset = next_event(&mut events).await;
    assert_eq!(
        (reset.event.as_str(), reset.id.as_str()),
        ("reset", missed.id().unwrap())
    );
}

#[tokio::test]
async fn a_last_event_id_too_long_or_not_utf8_gets_the_reset_event_not_live_events() {
    let hub = Broadcast::builder().history(10).build();
    let addr = hub_server(&hub).await;
    let mut newest = hub.send("missed").await.unwrap();
    for unusable in [&b"i".repeat(1025)[..], b"\xff\xfe"] {
        let mut events = resume(addr, unusable).await;
        let reset = next_event(&mut events).await;
        assert_eq!(reset.event, "reset");
        assert_eq!(
            reset.id,
            newest.id().unwrap(),
            "the reset carries the newest id"
        );
        newest = hub.send("live").await.unwrap();
        assert_eq!(
            next_event(&mut events).await,
            message("live", newest.id().unwrap())
        );
    }
    assert_eq!(hub.stats().resets, 2);
}

#[tokio::test]
async fn a_hub_with_history_sends_any_id_of_the_event_and_its_own_after_it() {
    let hub = Broadcast::builder().history(10).build();
    let addr = hub_server(&hub).await;
    let long = "i".repeat(1025);
    // Ids a browser could never send back intact: the hub's own id, after them, is what it
    // resumes from.
    let odd = [
        "",
        long.as_str(),
        " lead",
        "trail\t",
        "bell\u{7}",
        "del\u{7f}",
        "a b\tc",
        "ü-€-漢-🦀",
    ];
    let mut ids = Vec::new();
    for (n, id) in odd.iter().enumerate() {
        let sent = hub
            .send(Event::new().id(id).data(n.to_string()))
            .await
            .unwrap();
        ids.push(sent.id().unwrap().to_owned());
    }
    let (epoch, _) = split_id(&ids[0]);
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(split_id(id), (epoch.clone(), n as u64 + 1), "{:?}", odd[n]);
    }
    assert_eq!(hub.stats().events_sent, odd.len() as u64);
    let mut events = resume(addr, ids[0].as_bytes()).await;
    for (n, id) in ids.iter().enumerate().skip(1) {
        assert_eq!(next_event(&mut events).await, message(&n.to_string(), id));
    }
    // Without a history nothing is resumed: the event's own id goes out alone.
    let sent = Broadcast::new()
        .send(Event::new().id(&long).data("x"))
        .await
        .unwrap();
    assert_eq!(sent.id(), Some(long.as_str()));
}

#[tokio::test]
async fn a_repeated_own_id_does_not_confuse_a_resume() {
    let hub = Broadcast::builder().history(2).build();
    let addr = hub_server(&hub).await;
    let mut ids = Vec::new();
    for (id, data) in [("x", "1"), ("y", "2"), ("x", "3")] {
        let sent = hub.send(Event::new().id(id).data(data)).await.unwrap();
        ids.push(sent.id().unwrap().to_owned());
    }
    // The hub's id of the first "x" resumes after it, the second "x" included.
    let mut events = resume(addr, ids[0].as_bytes()).await;
    assert_eq!(next_event(&mut events).await, message("2", &ids[1]));
    assert_eq!(next_event(&mut events).await, message("3", &ids[2]));
    let live = hub.send(Event::new().id("z").data("4")).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        message("4", live.id().unwrap())
    );
    // The event's own id is no id of the hub's: it gets the reset event.
    let mut events = resume(addr, b"x").await;
    let reset = next_event(&mut events).await;
    assert_eq!(
        (reset.event.as_str(), reset.id.as_str()),
        ("reset", live.id().unwrap())
    );
}

#[tokio::test]
async fn send_returns_the_id_it_assigned() {
    let hub = Broadcast::builder().history(10).build();
    let addr = hub_server(&hub).await;
    // Before any event, the reset event carries the id before the first: `<epoch>-0`.
    let mut events = resume(addr, b"unknown").await;
    let reset = next_event(&mut events).await;
    assert_eq!(reset.event, "reset");
    let (epoch, before_first) = split_id(&reset.id);
    assert_eq!(before_first, 0);
    let sent = hub.send("a").await.unwrap();
    assert_eq!(sent.id(), Some(format!("{epoch}-1").as_str()));
    assert_eq!(sent.reached(), Some(1));
    assert_eq!(
        next_event(&mut events).await,
        message("a", &format!("{epoch}-1"))
    );
    // An event's own id goes out first; the hub's id comes last, and `send` returns it.
    let sent = hub.send(Event::new().id("mine").data("b")).await.unwrap();
    assert_eq!(sent.id(), Some(format!("{epoch}-2").as_str()));
    assert_eq!(
        next_event(&mut events).await,
        message("b", &format!("{epoch}-2"))
    );
    // The reset's id resumes exactly.
    let mut again = resume(addr, reset.id.as_bytes()).await;
    assert_eq!(
        next_event(&mut again).await,
        message("a", &format!("{epoch}-1"))
    );
    // Without a history, the event's own id, if any.
    let plain = Broadcast::new();
    assert_eq!(plain.send("c").await.unwrap().id(), None);
    assert_eq!(
        plain
            .send(Event::new().id("mine").data("d"))
            .await
            .unwrap()
            .id(),
        Some("mine")
    );
}
