//! Keyed fan-out behind a real hyper server on 127.0.0.1, read by a real client with an SSE
//! parser we did not write: per-key delivery, replay and reset per key, a repeated subscribe,
//! and a key dropped and created again. Run with `cargo test --test keyed`.

mod common;

use common::{message, next_event, read_events, Client, Events, Proto, BOUND};
use http::{header, Request};
use hyper::body::Incoming;
use std::{net::SocketAddr, time::Duration};
use tokio::{sync::mpsc, time::timeout};
use tower_eventsource::{Broadcast, Connection, EventSourceService, KeyedBroadcast, Resume};

/// Serves `/events/{key}` on 127.0.0.1: each connection subscribes (twice, to show the second
/// is a no-op) to its key, and the two outcomes go to the returned receiver.
async fn hub_server(
    hub: KeyedBroadcast<String>,
) -> (SocketAddr, mpsc::UnboundedReceiver<[Resume; 2]>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let events = EventSourceService::new(move |conn: Connection, req: Request<Incoming>| {
        let key = req.uri().path().trim_start_matches("/events/").to_owned();
        let first = hub.subscribe(&key, &conn);
        let second = hub.subscribe(&key, &conn);
        let _ = tx.send([first, second]);
        async {}
    });
    let addr = common::serve(events).await;
    (addr, rx)
}

/// Opens `/events/{key}` (with a `Last-Event-ID` if given) and waits until the handler has
/// subscribed it, returning how.
async fn open(
    addr: SocketAddr,
    subscribed: &mut mpsc::UnboundedReceiver<[Resume; 2]>,
    key: &str,
    last_event_id: Option<&str>,
) -> (Client, Events, Resume) {
    let mut client = Client::connect(addr, Proto::Http1).await;
    let mut req = client.request(http::Method::GET, &format!("/events/{key}"));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let response = client.send(req).await;
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let [first, second] = timeout(BOUND, subscribed.recv()).await.unwrap().unwrap();
    assert_eq!(second, Resume::AlreadySubscribed);
    (client, read_events(response.into_body()), first)
}

#[tokio::test]
async fn each_key_streams_its_own_events_once() {
    let hub = KeyedBroadcast::new(Broadcast::builder());
    let (addr, mut subscribed) = hub_server(hub.clone()).await;
    let (_alice, mut alice_events, how) = open(addr, &mut subscribed, "alice", None).await;
    assert_eq!(how, Resume::Live);
    let (_bob, mut bob_events, _) = open(addr, &mut subscribed, "bob", None).await;
    hub.send(&"bob".into(), "for bob").unwrap();
    hub.send(&"alice".into(), "for alice").unwrap();
    for key in ["alice", "bob"] {
        hub.send(&key.into(), "end").unwrap();
    }
    // Each reads its own event, once, then the marker: nothing of the other key in between.
    assert_eq!(
        next_event(&mut alice_events).await,
        message("for alice", "")
    );
    assert_eq!(next_event(&mut alice_events).await, message("end", ""));
    assert_eq!(next_event(&mut bob_events).await, message("for bob", ""));
    assert_eq!(next_event(&mut bob_events).await, message("end", ""));
    let stats = hub.stats();
    assert_eq!((stats.keys, stats.totals.subscribers), (2, 2));
}

#[tokio::test]
async fn a_reconnect_resumes_in_its_key_and_an_id_of_a_dropped_key_gets_the_reset() {
    // No linger: a key goes as soon as its last subscriber has.
    let hub = KeyedBroadcast::builder(Broadcast::builder().history(10).first_id(1))
        .linger(Duration::ZERO)
        .build();
    let (addr, mut subscribed) = hub_server(hub.clone()).await;
    let room = String::from("room");
    // Subscribers that keep the keys while others reconnect.
    let (_keeper, _keeper_events, _) = open(addr, &mut subscribed, "elsewhere", None).await;
    let (holder, _holder_events, _) = open(addr, &mut subscribed, "room", None).await;
    let (client, mut events, _) = open(addr, &mut subscribed, "room", None).await;
    for text in ["one", "two", "three"] {
        hub.send(&room, text).unwrap();
    }
    hub.send(&"elsewhere".into(), "other key").unwrap();
    assert_eq!(next_event(&mut events).await, message("one", "1"));
    assert_eq!(next_event(&mut events).await, message("two", "2"));
    client.disconnect().await;

    // A reconnect while the key lives resumes exactly.
    let room_stats = hub.key_stats(&room).unwrap();
    let (client, mut events, how) = open(addr, &mut subscribed, "room", Some("2")).await;
    assert_eq!(how, Resume::Replayed(1));
    assert_eq!(next_event(&mut events).await, message("three", "3"));
    assert_eq!(hub.key_stats(&room).unwrap().resets, room_stats.resets);
    client.disconnect().await;
    holder.disconnect().await;

    // Wait (bounded) until the server has seen the client go and dropped the key.
    timeout(BOUND, async {
        while hub.key_stats(&room).is_some() {
            hub.stats();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the key is dropped once its last subscriber has gone");

    // The key comes back with a new subscriber and new events; the old ids are not in its
    // history.
    let (_holder, _holder_events, how) = open(addr, &mut subscribed, "room", None).await;
    assert_eq!(how, Resume::Live);
    for text in ["four", "five", "six"] {
        hub.send(&room, text).unwrap();
    }
    let (_client, mut events, how) = open(addr, &mut subscribed, "room", Some("2")).await;
    assert_eq!(how, Resume::Reset);
    let reset = next_event(&mut events).await;
    assert_eq!(reset.event, "reset");
    hub.send(&room, "seven").unwrap();
    let seven = next_event(&mut events).await;
    assert_eq!(seven.data, "seven");
    assert!(seven.id.parse::<u64>().unwrap() > reset.id.parse::<u64>().unwrap());

    // The other key kept its own ids and history all along.
    let (_client, mut events, how) = open(addr, &mut subscribed, "elsewhere", Some("0")).await;
    assert_eq!(how, Resume::Replayed(1));
    assert_eq!(next_event(&mut events).await, message("other key", "1"));
    let stats = hub.stats();
    assert_eq!((stats.keys_created, stats.keys_dropped), (3, 1));
}

#[test]
fn public_keyed_types_keep_their_auto_traits() {
    fn is_send_sync_clone<T: Send + Sync + Clone>() {}
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync_clone::<KeyedBroadcast<String>>();
    is_send_sync_clone::<KeyedBroadcast<u64>>();
    is_send_sync_clone::<tower_eventsource::BroadcastBuilder>();
    is_send_sync_clone::<tower_eventsource::KeyedBroadcastStats>();
    is_send_sync::<tower_eventsource::KeyedBroadcastBuilder<String>>();
}
