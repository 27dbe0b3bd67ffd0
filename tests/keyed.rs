//! Keyed fan-out behind a real hyper server on 127.0.0.1, read by a real client with an SSE
//! parser we did not write: per-key delivery, replay and reset per key, a repeated subscribe,
//! and a key dropped and created again. Run with `cargo test --test keyed`.

mod common;

use common::{message, next_event, open_stream, split_id, Client, Events, BOUND};
use http::Request;
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
        let (hub, tx) = (hub.clone(), tx.clone());
        async move {
            let first = hub.subscribe(&key, &conn).await;
            let second = hub.subscribe(&key, &conn).await;
            let _ = tx.send([first, second]);
        }
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
    let (client, events) = open_stream(addr, &format!("/events/{key}"), last_event_id).await;
    let [first, second] = timeout(BOUND, subscribed.recv()).await.unwrap().unwrap();
    assert_eq!(second, Resume::AlreadySubscribed);
    (client, events, first)
}

#[tokio::test]
async fn each_key_streams_its_own_events_once() {
    let hub = KeyedBroadcast::new(Broadcast::builder());
    let (addr, mut subscribed) = hub_server(hub.clone()).await;
    let (_alice, mut alice_events, how) = open(addr, &mut subscribed, "alice", None).await;
    assert_eq!(how, Resume::Live);
    let (_bob, mut bob_events, _) = open(addr, &mut subscribed, "bob", None).await;
    hub.send("bob", "for bob").await.unwrap();
    hub.send("alice", "for alice").await.unwrap();
    for key in ["alice", "bob"] {
        hub.send(key, "end").await.unwrap();
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
    let hub = KeyedBroadcast::builder(Broadcast::builder().history(10))
        .linger(Duration::ZERO)
        .build();
    let (addr, mut subscribed) = hub_server(hub.clone()).await;
    let room = String::from("room");
    // Subscribers that keep the keys while others reconnect.
    let (_keeper, _keeper_events, _) = open(addr, &mut subscribed, "elsewhere", None).await;
    let (holder, _holder_events, _) = open(addr, &mut subscribed, "room", None).await;
    let (client, mut events, _) = open(addr, &mut subscribed, "room", None).await;
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        let sent = hub.send(&room, text).await.unwrap();
        ids.push(sent.id().unwrap().to_owned());
    }
    // The key numbers its own events from 1, in its own epoch.
    let (epoch, _) = split_id(&ids[0]);
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(split_id(id), (epoch.clone(), n as u64 + 1));
    }
    let other = hub.send("elsewhere", "other key").await.unwrap();
    let (other_epoch, other_number) = split_id(other.id().unwrap());
    assert_eq!(other_number, 1, "another key numbers its events apart");
    assert_ne!(other_epoch, epoch);
    assert_eq!(next_event(&mut events).await, message("one", &ids[0]));
    assert_eq!(next_event(&mut events).await, message("two", &ids[1]));
    client.disconnect().await;

    // A reconnect while the key lives resumes exactly.
    let room_stats = hub.key_stats(&room).unwrap();
    let (client, mut events, how) = open(addr, &mut subscribed, "room", Some(&ids[1])).await;
    assert_eq!(how, Resume::Replayed(1));
    assert_eq!(next_event(&mut events).await, message("three", &ids[2]));
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
        hub.send(&room, text).await.unwrap();
    }
    let (_client, mut events, how) = open(addr, &mut subscribed, "room", Some(&ids[1])).await;
    assert_eq!(how, Resume::Reset);
    let reset = next_event(&mut events).await;
    assert_eq!(reset.event, "reset");
    // The new life numbers its events in a new epoch: the reset carries its newest id.
    let (new_epoch, newest) = split_id(&reset.id);
    assert_ne!(new_epoch, epoch);
    assert_eq!(newest, 3);
    let seven = hub.send(&room, "seven").await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        message("seven", seven.id().unwrap())
    );
    assert_eq!(split_id(seven.id().unwrap()), (new_epoch, newest + 1));

    // The other key kept its own ids and history all along: the id before its first event
    // resumes it.
    let before_first = format!("{other_epoch}-0");
    let (_client, mut events, how) =
        open(addr, &mut subscribed, "elsewhere", Some(&before_first)).await;
    assert_eq!(how, Resume::Replayed(1));
    assert_eq!(
        next_event(&mut events).await,
        message("other key", other.id().unwrap())
    );
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

/// A handler's future must be `Send` (the service runs it on any worker), so every hub
/// future is.
#[allow(dead_code)]
fn hub_futures_are_send(hub: KeyedBroadcast<String>, plain: Broadcast, conn: Connection) {
    fn is_send<T: Send>(_: T) {}
    is_send(async move {
        hub.subscribe("k", &conn).await;
        hub.subscribe_from("k", &conn, Some("x")).await;
        hub.subscribe_all(&conn).await;
        hub.subscribe_all_from(&conn, None).await;
        let _ = hub.send("k", "x").await;
        let _ = hub.send_idempotent("k", "i", "x").await;
        let _ = hub.recent("k", 1).await;
        let _ = hub.ready().await;
        plain.subscribe(&conn).await;
        plain.subscribe_from(&conn, None).await;
        let _ = plain.send("x").await;
        let _ = plain.send_idempotent("i", "x").await;
        let _ = plain.recent(1).await;
        let _ = plain.ready().await;
        let _ = plain.forward(futures_util::stream::iter(["x"])).await;
    });
}
