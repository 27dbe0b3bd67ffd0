//! Resuming a `Broadcast` over a real socket with ids at and past the limits: a
//! `Last-Event-ID` too long or not UTF-8 gets the reset event instead of silently losing what
//! was missed, a hub with history refuses ids that could never come back, a repeated id
//! resumes from its latest use, and replays share the history's bytes.
//! Run with `cargo test --test resume`.

mod common;

use common::{message, next_event, read_events, serve, Client, Proto};
use http::{HeaderValue, Request};
use hyper::body::Incoming;
use tower_eventsource::{Broadcast, Connection, EncodeError, Event, EventSourceService};

/// A server whose stream subscribes every request to `hub`.
async fn hub_server(hub: &Broadcast) -> std::net::SocketAddr {
    let hub = hub.clone();
    serve(EventSourceService::new(
        move |conn: Connection, _req: Request<Incoming>| {
            hub.subscribe(&conn);
            async {}
        },
    ))
    .await
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
async fn an_id_of_the_longest_usable_length_resumes_exactly() {
    let hub = Broadcast::builder().history(10).build();
    let addr = hub_server(&hub).await;
    let long = "i".repeat(1024);
    hub.send(Event::new().id(&long).data("first")).unwrap();
    hub.send(Event::new().id("2").data("missed")).unwrap();
    let mut events = resume(addr, long.as_bytes()).await;
    assert_eq!(next_event(&mut events).await, message("missed", "2"));
}

#[tokio::test]
async fn a_last_event_id_too_long_or_not_utf8_gets_the_reset_event_not_live_events() {
    let hub = Broadcast::builder().history(10).build();
    let addr = hub_server(&hub).await;
    let mut newest = hub.send("missed").unwrap();
    for unusable in [&b"i".repeat(1025)[..], b"\xff\xfe"] {
        let mut events = resume(addr, unusable).await;
        let reset = next_event(&mut events).await;
        assert_eq!(reset.event, "reset");
        assert_eq!(
            reset.id,
            newest.id().unwrap(),
            "the reset carries the newest id"
        );
        newest = hub.send("live").unwrap();
        assert_eq!(
            next_event(&mut events).await,
            message("live", newest.id().unwrap())
        );
    }
    assert_eq!(hub.stats().resets, 2);
}

#[tokio::test]
async fn a_hub_with_history_refuses_ids_that_could_never_come_back() {
    let hub = Broadcast::builder().history(10).build();
    let long = "i".repeat(1025);
    for id in [
        "",
        long.as_str(),
        " lead",
        "trail\t",
        "bell\u{7}",
        "del\u{7f}",
    ] {
        assert_eq!(
            hub.send(Event::new().id(id).data("x")),
            Err(EncodeError::UnresumableId),
            "id {id:?}"
        );
    }
    assert_eq!(hub.stats().events_sent, 0);
    // Inner spaces and tabs, and any UTF-8, come back intact.
    for id in ["a b\tc", "ü-€-漢-🦀"] {
        assert_eq!(
            hub.send(Event::new().id(id).data("x")).unwrap().id(),
            Some(id)
        );
    }
    // Without a history nothing is resumed, so any id the encoder accepts goes out.
    assert!(Broadcast::new()
        .send(Event::new().id(&long).data("x"))
        .is_ok());
}

#[tokio::test]
async fn a_repeated_id_resumes_from_its_latest_use() {
    let hub = Broadcast::builder().history(2).build();
    let addr = hub_server(&hub).await;
    for (id, data) in [("x", "1"), ("y", "2"), ("x", "3")] {
        hub.send(Event::new().id(id).data(data)).unwrap();
    }
    let mut events = resume(addr, b"x").await;
    // Nothing was missed after the latest "x": the next event is live.
    hub.send(Event::new().id("z").data("4")).unwrap();
    assert_eq!(next_event(&mut events).await, message("4", "z"));
}

#[tokio::test]
async fn send_returns_the_id_it_assigned() {
    let hub = Broadcast::builder().history(10).first_id(7).build();
    let addr = hub_server(&hub).await;
    let mut events = resume(addr, b"6").await;
    let sent = hub.send("a").unwrap();
    assert_eq!(sent.id(), Some("7"));
    assert_eq!(sent.reached(), 1);
    assert_eq!(next_event(&mut events).await, message("a", "7"));
    assert_eq!(
        hub.send(Event::new().id("mine").data("b")).unwrap().id(),
        Some("mine")
    );
    assert_eq!(Broadcast::new().send("c").unwrap().id(), None);
}
