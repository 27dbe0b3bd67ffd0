//! The tests themselves; see `tests/redis.rs`.

use crate::common::{
    assert_ends, next_event, open_stream, read_events, recent_ids, serve_axum, split_id, Client,
    Events, BOUND,
};
use crate::server::{Proxy, RedisServer};
use axum::{body::Body, Router};
use futures_util::{future::join_all, StreamExt};
use http::{HeaderMap, Request};
use redis::aio::MultiplexedConnection;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};
use tokio::{sync::watch, time::timeout};
use tower_eventsource::{
    Broadcast, BroadcastBuilder, Connection, EventSource, KeyedBroadcast, Resume, SendError,
    SlowClient,
};

/// Each client's buffer, in events.
const BUFFER: usize = 256;

/// The hub "chat" on the Redis `client` reaches, keeping `history` events; ready to use.
async fn chat(client: redis::Client, history: usize) -> Broadcast {
    ready(Broadcast::builder().history(history).redis(client, "chat")).await
}

async fn ready(builder: BroadcastBuilder) -> Broadcast {
    let hub = builder.build();
    hub.ready().await.expect("Redis accepts the hub");
    hub
}

/// The keyed hub "rooms" on the Redis `client` reaches, keeping `history` events of each key;
/// ready to use.
async fn rooms(client: redis::Client, history: usize) -> KeyedBroadcast<String> {
    let hub = KeyedBroadcast::builder(Broadcast::builder().history(history))
        .redis(client, "rooms")
        .build();
    hub.ready().await.expect("Redis accepts the hub");
    hub
}

/// Instances A (on `redis`) and B (through `b_via`) of the hub "chat", keeping `history`
/// events, with B served and a client of B subscribed to `/events`, once both hubs' readers
/// wait for new entries: A, B, B's address and the client's stream.
async fn two_instances(
    redis: &RedisServer,
    b_via: redis::Client,
    history: usize,
) -> (Broadcast, Broadcast, SocketAddr, (Client, Events)) {
    let a = chat(redis.client(), history).await;
    let b = chat(b_via, history).await;
    let addr_b = serve(Hub::One(b.clone())).await;
    let subscribed = open_subscribed(addr_b, "/events", None, || b.stats().subscribers).await;
    readers_ready(redis, 2).await;
    (a, b, addr_b, subscribed)
}

/// Instances A and B of the keyed hub "rooms", keeping `history` events of each key, with B
/// served and a client of B subscribed to each of `keys`, once both hubs' readers wait for new
/// entries: A, B, B's address and the clients' streams.
async fn two_rooms<const N: usize>(
    redis: &RedisServer,
    history: usize,
    keys: [&str; N],
) -> (
    KeyedBroadcast<String>,
    KeyedBroadcast<String>,
    SocketAddr,
    [(Client, Events); N],
) {
    let a = rooms(redis.client(), history).await;
    let b = rooms(redis.client(), history).await;
    let addr_b = serve(Hub::Keyed(b.clone())).await;
    let mut clients = Vec::new();
    for key in keys {
        let path = format!("/events/{key}");
        clients.push(open_subscribed(addr_b, &path, None, || b.stats().totals.subscribers).await);
    }
    readers_ready(redis, 2).await;
    let clients = clients
        .try_into()
        .unwrap_or_else(|_| panic!("a client for each key"));
    (a, b, addr_b, clients)
}

/// Instances A and B of the hub "chat", keeping 100 events, both served, once both hubs'
/// readers wait for new entries: A, B and their addresses.
async fn both_served(redis: &RedisServer) -> (Broadcast, Broadcast, SocketAddr, SocketAddr) {
    let a = chat(redis.client(), 100).await;
    let b = chat(redis.client(), 100).await;
    let (addr_a, addr_b) = (
        serve(Hub::One(a.clone())).await,
        serve(Hub::One(b.clone())).await,
    );
    readers_ready(redis, 2).await;
    (a, b, addr_a, addr_b)
}

/// Serves `GET /events` (and `/events/KEY` for a keyed hub) on 127.0.0.1.
async fn serve(hub: Hub) -> SocketAddr {
    let handler = move |conn: Connection, req: Request<Body>| {
        let hub = hub.clone();
        async move {
            let key = req
                .uri()
                .path()
                .trim_start_matches("/events")
                .trim_start_matches('/');
            let resume = match hub {
                Hub::One(hub) => hub.subscribe(&conn).await,
                Hub::Keyed(hub) => hub.subscribe(key, &conn).await,
            };
            assert_ne!(resume, Resume::AlreadySubscribed);
        }
    };
    let events = EventSource::new().buffer(BUFFER).service(handler);
    let app = Router::new()
        .route_service("/events", events.clone())
        .route_service("/events/{key}", events);
    serve_axum(app).await
}

#[derive(Clone)]
enum Hub {
    One(Broadcast),
    Keyed(KeyedBroadcast<String>),
}

/// Opens a stream and waits until the hub has subscribed it.
async fn open_subscribed(
    addr: SocketAddr,
    path: &str,
    last_event_id: Option<&str>,
    subscribers: impl Fn() -> usize,
) -> (Client, Events) {
    let before = subscribers();
    let opened = open_stream(addr, path, last_event_id).await;
    wait_for(|| subscribers() > before).await;
    opened
}

/// Waits (bounded) until `done` holds.
async fn wait_for(done: impl Fn() -> bool) {
    timeout(BOUND, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("in time");
}

/// A fresh idempotency key.
fn idempotency_key(text: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{text}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sends `text` on `hub` and returns its id, retrying (bounded) with one idempotency key
/// while Redis is unreachable, as an application would.
async fn publish(hub: &Broadcast, text: &str) -> String {
    let key = idempotency_key(text);
    timeout(BOUND, async {
        loop {
            match hub.send_idempotent(&key, text).await {
                Ok(sent) => return sent.id().expect("an id").to_owned(),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("sent in time")
}

/// Sends `text` to `key` of `hub` and returns its id.
async fn publish_to(hub: &KeyedBroadcast<String>, key: &str, text: &str) -> String {
    let sent = hub.send(key, text).await.expect("sent");
    sent.id().expect("an id").to_owned()
}

/// Reads events until the last of `texts`, and checks that what it read is a suffix of
/// `texts`: for a live client that subscribed while some of them were on their way.
async fn expect_ending(events: &mut Events, texts: &[&str]) {
    let mut got = Vec::new();
    while got.last().map(String::as_str) != texts.last().copied() {
        let event = next_event(events).await;
        assert_eq!(event.event, "message");
        got.push(event.data);
        assert!(
            got.len() <= texts.len(),
            "{got:?} is no suffix of {texts:?}"
        );
    }
    assert_eq!(
        got,
        texts[texts.len() - got.len()..],
        "a suffix of {texts:?}"
    );
}

/// Reads `texts.len()` events and checks their data; returns their ids.
async fn expect(events: &mut Events, texts: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for text in texts {
        let event = next_event(events).await;
        assert_eq!(
            (event.event.as_str(), event.data.as_str()),
            ("message", *text)
        );
        ids.push(event.id);
    }
    ids
}

/// Reads the next event, which must be the reset event; returns its id.
async fn expect_reset(events: &mut Events) -> String {
    let reset = next_event(events).await;
    assert_eq!(reset.event, "reset", "{reset:?}");
    reset.id
}

/// Checks that `ids` are the ids `first`, `first + 1`, … of one numbering; returns its epoch.
fn assert_numbered(ids: &[String], first: u64) -> String {
    let epoch = split_id(&ids[0]).0;
    for (at, id) in ids.iter().enumerate() {
        assert_eq!(
            split_id(id),
            (epoch.clone(), first + at as u64),
            "in {ids:?}"
        );
    }
    epoch
}

/// Runs `command` on `conn` (a test's own connection to Redis).
async fn query<T: redis::FromRedisValue>(conn: &mut MultiplexedConnection, command: &[&str]) -> T {
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    timeout(BOUND, cmd.query_async(conn))
        .await
        .expect("Redis answers in time")
        .unwrap_or_else(|error| panic!("{command:?}: {error}"))
}

/// Kills every normal connection to Redis but `admin`'s own; returns how many it killed.
async fn kill_connections(admin: &mut MultiplexedConnection) -> usize {
    query(
        admin,
        &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
    )
    .await
}

/// Redis's connections, each as its `CLIENT LIST` fields.
async fn client_list(admin: &mut MultiplexedConnection) -> Vec<HashMap<String, String>> {
    let list: String = query(admin, &["CLIENT", "LIST", "TYPE", "normal"]).await;
    list.lines()
        .map(|line| {
            line.split(' ')
                .filter_map(|field| field.split_once('='))
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect()
        })
        .collect()
}

/// How many connections wait in `XREAD ... BLOCK` (readers with nothing left to read), of
/// those that `through` selects by address.
async fn readers_waiting(
    admin: &mut MultiplexedConnection,
    through: impl Fn(&str) -> bool,
) -> usize {
    client_list(admin)
        .await
        .iter()
        .filter(|client| client.get("cmd").map(String::as_str) == Some("xread"))
        .filter(|client| client.get("flags").is_some_and(|flags| flags.contains('b')))
        .filter(|client| client.get("addr").is_some_and(|addr| through(addr)))
        .count()
}

/// Waits (bounded) until `count` readers wait for new entries: each has made its first look
/// at the stream, so it delivers every event stored from now on.
async fn readers_ready(redis: &RedisServer, count: usize) {
    let mut admin = redis.conn().await;
    timeout(BOUND, async {
        while readers_waiting(&mut admin, |_| true).await < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the readers wait for new entries in time");
}

/// Stalls the `count` readers that reach `redis` through `proxy`: once each waits in
/// `XREAD ... BLOCK` with the proxy held, none can read anything, nor ask for anything else,
/// until the proxy is released.
async fn stall_readers(redis: &RedisServer, proxy: &Proxy, count: usize) {
    let mut admin = redis.conn().await;
    timeout(BOUND, async {
        loop {
            while readers_waiting(&mut admin, |addr| proxy.relays(addr)).await < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            proxy.hold();
            // Still waiting after the hold: whatever ends their wait is held.
            if readers_waiting(&mut admin, |addr| proxy.relays(addr)).await >= count {
                return;
            }
            proxy.release();
        }
    })
    .await
    .expect("the readers stall in time");
}

/// How many times Redis ran `command` since it started.
async fn calls(redis: &RedisServer, command: &str) -> u64 {
    let info: String = query(&mut redis.conn().await, &["INFO", "commandstats"]).await;
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |rest| {
            rest.split(',').next().unwrap().parse().expect("a count")
        })
}

async fn stream_len(redis: &RedisServer, key: &str) -> usize {
    query(&mut redis.conn().await, &["XLEN", key]).await
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_publish_on_either_instance_reaches_clients_of_both_with_the_same_ids() {
    let redis = RedisServer::start().await;
    let (a, b, addr_a, addr_b) = both_served(&redis).await;
    let (_ca, mut on_a) = open_subscribed(addr_a, "/events", None, || a.stats().subscribers).await;
    let (_cb, mut on_b) = open_subscribed(addr_b, "/events", None, || b.stats().subscribers).await;

    let mut published = Vec::new();
    for (hub, text) in [(&a, "1"), (&b, "2"), (&a, "3"), (&b, "4")] {
        published.push(publish(hub, text).await);
    }
    assert_numbered(&published, 1);
    let ids_a = expect(&mut on_a, &["1", "2", "3", "4"]).await;
    let ids_b = expect(&mut on_b, &["1", "2", "3", "4"]).await;
    assert_eq!(ids_a, published);
    assert_eq!(ids_b, published);
    assert_eq!(stream_len(&redis, "{chat}").await, 4);
    assert_eq!((a.stats().events_sent, b.stats().events_sent), (4, 4));
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn resuming_on_the_other_instance_from_an_id_got_on_the_first_is_exact() {
    let redis = RedisServer::start().await;
    let (a, b, addr_a, addr_b) = both_served(&redis).await;

    let (client, mut on_a) =
        open_subscribed(addr_a, "/events", None, || a.stats().subscribers).await;
    let mut published = Vec::new();
    for text in ["1", "2"] {
        published.push(publish(&a, text).await);
    }
    let seen = expect(&mut on_a, &["1", "2"]).await;
    client.disconnect().await;
    for text in ["3", "4"] {
        published.push(publish(&a, text).await);
    }
    // B's reader has delivered "4" once a live client of B sees "5". The watcher is live from
    // wherever B's reader was when it subscribed, which may be before "3" or "4".
    let (_watch, mut watcher) =
        open_subscribed(addr_b, "/events", None, || b.stats().subscribers).await;
    published.push(publish(&a, "5").await);
    expect_ending(&mut watcher, &["3", "4", "5"]).await;

    let xrange = calls(&redis, "xrange").await;
    let (_client, mut on_b) = open_stream(addr_b, "/events", Some(&seen[1])).await;
    assert_eq!(expect(&mut on_b, &["3", "4", "5"]).await, published[2..]);
    publish(&b, "6").await;
    expect(&mut on_b, &["6"]).await;
    let stats = b.stats();
    assert_eq!((stats.replays, stats.replays_from_backend), (1, 0));
    assert_eq!(
        calls(&redis, "xrange").await,
        xrange,
        "a resume from local history costs Redis nothing"
    );
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_cursor_older_than_the_local_history_is_replayed_from_redis() {
    let redis = RedisServer::start().await;
    let a = chat(redis.client(), 100).await;
    readers_ready(&redis, 1).await;
    let mut ids = Vec::new();
    for text in ["1", "2", "3"] {
        ids.push(publish(&a, text).await);
    }
    // B starts after "3": its own history begins after it.
    let b = chat(redis.client(), 100).await;
    let addr_b = serve(Hub::One(b.clone())).await;
    let (_watch, mut watcher) =
        open_subscribed(addr_b, "/events", None, || b.stats().subscribers).await;
    readers_ready(&redis, 2).await;
    for text in ["4", "5", "6"] {
        ids.push(publish(&a, text).await);
    }
    expect(&mut watcher, &["4", "5", "6"]).await;

    let (_client, mut resumed) = open_stream(addr_b, "/events", Some(&ids[0])).await;
    let got = expect(&mut resumed, &["2", "3", "4", "5", "6"]).await;
    assert_eq!(got, ids[1..]);
    ids.push(publish(&a, "7").await);
    expect(&mut resumed, &["7"]).await;
    expect(&mut watcher, &["7"]).await;
    let stats = b.stats();
    assert_eq!((stats.replays, stats.replays_from_backend), (1, 1));
    assert_eq!(stats.resets, 0);
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_cursor_further_back_than_the_history_window_gets_the_reset() {
    let redis = RedisServer::start().await;
    let (a, b, addr_b, (_watch, mut watcher)) = two_instances(&redis, redis.client(), 2).await;
    let mut ids = Vec::new();
    for text in ["1", "2", "3", "4", "5"] {
        ids.push(publish(&a, text).await);
    }
    expect(&mut watcher, &["1", "2", "3", "4", "5"]).await;
    // Redis still holds every event, but the window is the last two.
    assert_eq!(stream_len(&redis, "{chat}").await, 5);

    let (_c1, mut too_old) = open_stream(addr_b, "/events", Some(&ids[0])).await;
    assert_eq!(expect_reset(&mut too_old).await, ids[4]);
    ids.push(publish(&a, "6").await);
    expect(&mut too_old, &["6"]).await;
    expect(&mut watcher, &["6"]).await;
    // "3" is third from the newest ("6"): out of the window.
    let (_c2, mut just_out) = open_stream(addr_b, "/events", Some(&ids[2])).await;
    assert_eq!(expect_reset(&mut just_out).await, ids[5]);
    // "4" is the oldest id the window resumes from: "5" and "6" follow it.
    let (_c3, mut edge) = open_stream(addr_b, "/events", Some(&ids[3])).await;
    assert_eq!(expect(&mut edge, &["5", "6"]).await, ids[4..]);
    let stats = b.stats();
    assert_eq!((stats.resets, stats.replays), (2, 1));

    // The same on an instance that holds none of them: the window is Redis's.
    let c = chat(redis.client(), 2).await;
    let addr_c = serve(Hub::One(c.clone())).await;
    let xrange = calls(&redis, "xrange").await;
    let (_c4, mut from_redis) = open_stream(addr_c, "/events", Some(&ids[3])).await;
    assert_eq!(expect(&mut from_redis, &["5", "6"]).await, ids[4..]);
    assert_eq!(
        calls(&redis, "xrange").await,
        xrange + 1,
        "one read of the events"
    );
    let (_c5, mut out) = open_stream(addr_c, "/events", Some(&ids[2])).await;
    assert_eq!(expect_reset(&mut out).await, ids[5]);
    // A cursor out of the window reads no events: a storm of old cursors costs Redis little.
    assert_eq!(calls(&redis, "xrange").await, xrange + 1);
    let stats = c.stats();
    assert_eq!((stats.replays_from_backend, stats.resets), (1, 1));
}

/// A client that reads until it has reached the id `until` gets once it is known (the id of
/// the last event published: as an event's id, or as a reset's id when the reset came after
/// that event reached the server), reconnecting with its last id whenever its stream ends, as
/// a browser does; returns how many resets it got, the id of the last one, and the data of
/// the other events, in order.
async fn follow(
    addr: SocketAddr,
    mut last: Option<String>,
    mut events: Events,
    mut until: watch::Receiver<Option<String>>,
) -> (usize, String, Vec<String>) {
    let mut resets = 0;
    let mut reset_id = String::new();
    let mut texts = Vec::new();
    let mut _client = None;
    loop {
        if last.is_some() && *until.borrow_and_update() == last {
            return (resets, reset_id, texts);
        }
        let next = tokio::select! {
            next = timeout(BOUND, events.next()) => next,
            Ok(()) = until.changed() => continue,
        };
        match next.expect("an event or the end of the stream in time") {
            Some(Ok(event)) => {
                last = Some(event.id.clone());
                if event.event == "reset" {
                    resets += 1;
                    reset_id = event.id;
                } else {
                    texts.push(event.data.clone());
                }
            }
            Some(Err(error)) => panic!("stream error {error}"),
            None => {
                let (client, stream) = open_stream(addr, "/events", last.as_deref()).await;
                _client = Some(client);
                events = stream;
            }
        }
    }
}

/// What a client must get after a reset with `reset_id`: exactly the events of the new
/// numbering (`ids`, sent with `texts`) after it, all of them when the reset's id is the
/// numbering's start.
fn after_reset<'a>(reset_id: &str, ids: &[String], texts: &[&'a str]) -> Vec<&'a str> {
    let (epoch, at) = split_id(reset_id);
    assert_eq!(
        epoch,
        split_id(&ids[0]).0,
        "the reset is of the new numbering"
    );
    assert!(
        at == 0 || ids.iter().any(|id| id == reset_id),
        "the reset's id {reset_id} is the start or an event's"
    );
    ids.iter()
        .zip(texts)
        .filter(|(id, _)| split_id(id).1 > at)
        .map(|(_, text)| *text)
        .collect()
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn trimming_past_a_cursor_gets_the_reset_and_delivery_goes_on() {
    let redis = RedisServer::start().await;
    let (a, _b, _, (_watch, mut watcher)) = two_instances(&redis, redis.client(), 100).await;
    let mut ids = Vec::new();
    for text in ["1", "2", "3"] {
        ids.push(publish(&a, text).await);
    }
    expect(&mut watcher, &["1", "2", "3"]).await;
    let trimmed: usize = query(&mut redis.conn().await, &["XTRIM", "{chat}", "MAXLEN", "1"]).await;
    assert_eq!(trimmed, 2);

    // An instance whose own history does not hold them resumes through Redis.
    let c = chat(redis.client(), 100).await;
    let addr_c = serve(Hub::One(c.clone())).await;
    let (_c1, mut past) = open_stream(addr_c, "/events", Some(&ids[0])).await;
    assert_eq!(expect_reset(&mut past).await, ids[2]);
    // A cursor the trim left whole still resumes.
    let (_c2, mut kept) = open_stream(addr_c, "/events", Some(&ids[1])).await;
    assert_eq!(expect(&mut kept, &["3"]).await, ids[2..]);
    ids.push(publish(&a, "4").await);
    for events in [&mut past, &mut kept, &mut watcher] {
        assert_eq!(expect(events, &["4"]).await, ids[3..]);
    }
    let stats = c.stats();
    assert_eq!((stats.resets, stats.replays_from_backend), (1, 1));
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_stream_trimmed_past_a_stalled_reader_gets_one_reset_and_delivery_goes_on() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(&redis).await;
    let (a, b, addr_b, (_client, mut events)) = two_instances(&redis, proxy.client(), 100).await;
    publish(&a, "1").await;
    let seen = expect(&mut events, &["1"]).await;

    // B's reader cannot read while three events are sent and all but the last trimmed: the
    // stream no longer proves that nothing after "1" is missing.
    stall_readers(&redis, &proxy, 1).await;
    let mut lost = Vec::new();
    for text in ["2", "3", "4"] {
        lost.push(publish(&a, text).await);
    }
    let trimmed: usize = query(&mut redis.conn().await, &["XTRIM", "{chat}", "MAXLEN", "1"]).await;
    assert_eq!(trimmed, 3);
    proxy.release();

    let (until_tx, until) = watch::channel(None);
    let follower = tokio::spawn(follow(addr_b, Some(seen[0].clone()), events, until));
    wait_for(|| b.stats().stream_resets == 1).await;
    let id = publish(&a, "5").await;
    until_tx.send_replace(Some(id.clone()));
    let (resets, reset_id, texts) = timeout(BOUND * 2, follower)
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(resets, 1);
    // The reset's id is never before the last lost event ("3"), and the client gets exactly
    // what follows it.
    let (epoch, reset_at) = split_id(&reset_id);
    assert_eq!(epoch, split_id(&lost[2]).0);
    assert!(split_id(&lost[1]).1 <= reset_at && reset_at <= split_id(&id).1);
    let after: Vec<&str> = [(&lost[2], "4"), (&id, "5")]
        .into_iter()
        .filter(|(id, _)| split_id(id).1 > reset_at)
        .map(|(_, text)| text)
        .collect();
    assert_eq!(texts, after);
    assert_eq!(b.stats().stream_resets, 1);
}

/// Loses the hub's history in Redis with `lose` while a client of B follows it: the client
/// gets exactly one reset, then every event of the new numbering after the reset's id.
async fn losing_the_history_gives_one_reset(lose: &[&str]) {
    let redis = RedisServer::start().await;
    let (a, b, addr_b, (_client, mut events)) = two_instances(&redis, redis.client(), 100).await;
    publish(&a, "1").await;
    let seen = expect(&mut events, &["1"]).await;
    let _: redis::Value = query(&mut redis.conn().await, lose).await;
    // The first event of the new numbering: B cannot know what it missed in between, so its
    // subscribers get exactly one reset, then what follows the reset's id. B's reader notices
    // within its wait for new entries (2 s).
    let mut ids = vec![publish(&a, "2").await];
    let (until_tx, until) = watch::channel(None);
    let follower = tokio::spawn(follow(addr_b, Some(seen[0].clone()), events, until));
    wait_for(|| b.stats().stream_resets == 1).await;
    ids.push(publish(&a, "3").await);
    ids.push(publish(&b, "4").await);
    assert_numbered(&ids, 1);
    assert_ne!(split_id(&ids[0]).0, split_id(&seen[0]).0, "a new epoch");
    until_tx.send_replace(ids.last().cloned());
    let (resets, reset_id, texts) = timeout(BOUND * 2, follower)
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(resets, 1);
    assert_eq!(texts, after_reset(&reset_id, &ids, &["2", "3", "4"]));
    assert_eq!(b.stats().stream_resets, 1);
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn deleting_the_stream_gets_one_reset_and_delivery_goes_on() {
    losing_the_history_gives_one_reset(&["DEL", "{chat}"]).await;
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn flushall_gets_one_reset_and_delivery_goes_on() {
    losing_the_history_gives_one_reset(&["FLUSHALL"]).await;
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn redis_killed_and_restarted_empty_gives_one_reset_and_delivery_goes_on() {
    let mut redis = RedisServer::start().await;
    let quick = |client: redis::Client| {
        Broadcast::builder()
            .history(100)
            .response_timeout(Duration::from_secs(1))
            .redis(client, "chat")
    };
    let a = ready(quick(redis.client())).await;
    let b = ready(quick(redis.client())).await;
    let addr_b = serve(Hub::One(b.clone())).await;
    let (_client, mut events) =
        open_subscribed(addr_b, "/events", None, || b.stats().subscribers).await;
    readers_ready(&redis, 2).await;
    publish(&a, "1").await;
    let ids = expect(&mut events, &["1"]).await;

    redis.kill();
    // While Redis is down, sending fails (within the response timeout), open streams stay
    // open, and a resume from this server's history still works.
    let lost = timeout(BOUND, a.send("lost")).await.expect("fails in time");
    assert!(lost.is_err(), "{lost:?}");
    assert!(a.ready().await.is_err());
    assert_eq!(b.stats().subscribers, 1);
    let (_other, resumed) = open_stream(addr_b, "/events", Some(&ids[0])).await;
    wait_for(|| b.stats().replays == 1).await;

    redis.run().await;
    let mut new_ids = vec![publish(&a, "2").await];
    let (until_tx, until) = watch::channel(None);
    let first = tokio::spawn(follow(addr_b, Some(ids[0].clone()), events, until.clone()));
    let second = tokio::spawn(follow(addr_b, Some(ids[0].clone()), resumed, until));
    wait_for(|| b.stats().stream_resets == 1).await;
    new_ids.push(publish(&a, "3").await);
    assert_numbered(&new_ids, 1);
    until_tx.send_replace(new_ids.last().cloned());
    for follower in [first, second] {
        let (resets, reset_id, texts) = timeout(BOUND * 2, follower)
            .await
            .expect("in time")
            .unwrap();
        assert_eq!(resets, 1);
        assert_eq!(texts, after_reset(&reset_id, &new_ids, &["2", "3"]));
    }
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn with_appendfsync_always_a_crash_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start_with(true).await;
    let (a, b, _, (_client, mut events)) = two_instances(&redis, redis.client(), 100).await;
    let mut ids = Vec::new();
    for text in ["1", "2", "3"] {
        ids.push(publish(&a, text).await);
    }
    expect(&mut events, &["1", "2", "3"]).await;

    redis.crash_and_restart().await;
    ids.push(publish(&a, "4").await);
    assert_numbered(&ids, 1);
    // The same stream goes on, with no reset.
    assert_eq!(expect(&mut events, &["4"]).await, ids[3..]);
    // Every acknowledged event is still in Redis: a resume from the first on an instance
    // that never saw them replays them from Redis.
    let c = chat(redis.client(), 100).await;
    let addr_c = serve(Hub::One(c.clone())).await;
    let (_other, mut resumed) = open_stream(addr_c, "/events", Some(&ids[0])).await;
    assert_eq!(expect(&mut resumed, &["2", "3", "4"]).await, ids[1..]);
    assert_eq!(c.stats().replays_from_backend, 1);
    assert_eq!(recent_ids(&a, 10).await, ids);
    assert_eq!(b.stats().stream_resets, 0);
    assert_eq!(b.stats().resets, 0);
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_killed_reader_connection_is_survived_with_no_visible_break() {
    let redis = RedisServer::start().await;
    let (a, b, _, (_client, mut events)) = two_instances(&redis, redis.client(), 100).await;
    publish(&a, "1").await;
    expect(&mut events, &["1"]).await;

    let mut admin = redis.conn().await;
    let killed = kill_connections(&mut admin).await;
    assert!(
        killed >= 4,
        "the readers' and publishers' connections were killed: {killed}"
    );
    // Sent while the reader may still be away: it goes on from the last entry it read.
    publish(&a, "2").await;
    publish(&a, "3").await;
    expect(&mut events, &["2", "3"]).await;
    wait_for(|| b.stats().reader_reconnects >= 1).await;
    let stats = b.stats();
    assert_eq!((stats.resets, stats.stream_resets), (0, 0));
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_retried_send_with_the_same_idempotency_key_stores_one_entry() {
    let redis = RedisServer::start().await;
    let (a, b, _, (_client, mut events)) = two_instances(&redis, redis.client(), 100).await;
    let first = a.send_idempotent("order-17", "paid").await.unwrap();
    let again = b.send_idempotent("order-17", "paid").await.unwrap();
    assert_eq!(first.id(), again.id());
    let other = a.send_idempotent("order-18", "paid").await.unwrap();
    assert_ne!(first.id(), other.id());
    assert_eq!(stream_len(&redis, "{chat}").await, 2);
    assert_eq!(
        expect(&mut events, &["paid", "paid"]).await,
        [first.id().unwrap(), other.id().unwrap()]
    );
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_keyed_hub_delivers_and_resumes_per_key_across_instances() {
    let redis = RedisServer::start().await;
    let (a, b, addr_b, [(_c1, mut alice), (_c2, mut bob)]) =
        two_rooms(&redis, 2, ["alice", "bob"]).await;

    let mut alice_ids = Vec::new();
    let mut bob_ids = Vec::new();
    for (key, text) in [
        ("alice", "a1"),
        ("bob", "b1"),
        ("alice", "a2"),
        ("alice", "a3"),
        ("bob", "b2"),
    ] {
        let id = publish_to(&a, key, text).await;
        match key {
            "alice" => alice_ids.push(id),
            _ => bob_ids.push(id),
        }
    }
    // Each key numbers its own events.
    let alice_epoch = assert_numbered(&alice_ids, 1);
    assert_ne!(alice_epoch, assert_numbered(&bob_ids, 1));
    assert_eq!(expect(&mut alice, &["a1", "a2", "a3"]).await, alice_ids);
    assert_eq!(expect(&mut bob, &["b1", "b2"]).await, bob_ids);

    // However busy bob is, alice's last two events resume, on any instance.
    for at in 0..20 {
        bob_ids.push(publish_to(&a, "bob", &format!("b{}", at + 3)).await);
    }
    let c = rooms(redis.client(), 2).await;
    let addr_c = serve(Hub::Keyed(c.clone())).await;
    let (_c3, mut on_c) = open_stream(addr_c, "/events/alice", Some(&alice_ids[1])).await;
    assert_eq!(expect(&mut on_c, &["a3"]).await, alice_ids[2..]);
    let (_c4, mut on_b) = open_stream(addr_b, "/events/alice", Some(&alice_ids[1])).await;
    assert_eq!(expect(&mut on_b, &["a3"]).await, alice_ids[2..]);
    alice_ids.push(publish_to(&a, "alice", "a4").await);
    for events in [&mut on_c, &mut on_b, &mut alice] {
        assert_eq!(expect(events, &["a4"]).await, alice_ids[3..]);
    }
    assert_eq!(c.stats().totals.replays_from_backend, 1);
    let on_b_stats = b.key_stats("alice").expect("alice is a key of B");
    assert_eq!((on_b_stats.replays, on_b_stats.resets), (1, 0));
    // Out of alice's window: the reset.
    let (_c5, mut old) = open_stream(addr_c, "/events/alice", Some(&alice_ids[0])).await;
    assert_eq!(expect_reset(&mut old).await, alice_ids[3]);
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn an_id_of_another_key_gets_the_reset() {
    let redis = RedisServer::start().await;
    // Alice has a live client on B, so B keeps her history.
    let (a, b, addr_b, [(_c1, mut alice)]) = two_rooms(&redis, 100, ["alice"]).await;
    let mut bob_ids = Vec::new();
    for (key, text) in [
        ("bob", "b1"),
        ("alice", "a1"),
        ("bob", "b2"),
        ("alice", "a2"),
    ] {
        let id = publish_to(&a, key, text).await;
        if key == "bob" {
            bob_ids.push(id);
        }
    }
    let alice_ids = expect(&mut alice, &["a1", "a2"]).await;
    let alice_epoch = split_id(&alice_ids[0]).0;

    // Bob's ids are numbers alice's events also have, but never cursors of alice's; nor is a
    // number alice never reached.
    let forged = format!("{alice_epoch}-99");
    for cursor in bob_ids.iter().chain([&forged]) {
        let (_c, mut stolen) = open_stream(addr_b, "/events/alice", Some(cursor)).await;
        assert_eq!(expect_reset(&mut stolen).await, alice_ids[1]);
    }
    // Her own ids still resume exactly, from the local history.
    let (_c2, mut resumed) = open_stream(addr_b, "/events/alice", Some(&alice_ids[0])).await;
    assert_eq!(expect(&mut resumed, &["a2"]).await, alice_ids[1..]);
    let stats = b.key_stats("alice").expect("alice is a key of B");
    assert_eq!((stats.resets, stats.replays), (3, 1));
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_keyed_idempotency_key_is_per_key() {
    let redis = RedisServer::start().await;
    let (a, b, _, [(_c1, mut alice), (_c2, mut bob)]) =
        two_rooms(&redis, 100, ["alice", "bob"]).await;

    let for_alice = a
        .send_idempotent("alice", "op-1", "for alice")
        .await
        .unwrap();
    let for_bob = a.send_idempotent("bob", "op-1", "for bob").await.unwrap();
    assert_ne!(for_alice.id(), for_bob.id());
    // A repeat for bob, on another instance, is bob's first send again.
    let again = b.send_idempotent("bob", "op-1", "for bob").await.unwrap();
    assert_eq!(again.id(), for_bob.id());
    assert_eq!(stream_len(&redis, "{rooms}").await, 2);
    assert_eq!(
        expect(&mut bob, &["for bob"]).await,
        [for_bob.id().unwrap()]
    );
    assert_eq!(
        expect(&mut alice, &["for alice"]).await,
        [for_alice.id().unwrap()]
    );
    // Nothing more came: the next event of each is the next sent.
    publish_to(&a, "bob", "next").await;
    publish_to(&a, "alice", "next").await;
    expect(&mut bob, &["next"]).await;
    expect(&mut alice, &["next"]).await;
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn clients_that_read_are_never_slow_after_an_outage_of_their_reader() {
    const EVENTS: usize = 600;
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(&redis).await;
    let a = chat(redis.client(), 1000).await;
    let dropping = chat(proxy.client(), 1000).await;
    let skipping = ready(
        Broadcast::builder()
            .history(1000)
            .slow_client(SlowClient::Skip)
            .redis(proxy.client(), "chat"),
    )
    .await;
    let mut clients = Vec::new();
    for hub in [&dropping, &skipping] {
        let addr = serve(Hub::One(hub.clone())).await;
        clients.push(open_subscribed(addr, "/events", None, || hub.stats().subscribers).await);
    }
    readers_ready(&redis, 3).await;
    publish(&a, "first").await;
    for (_, events) in &mut clients {
        expect(events, &["first"]).await;
    }

    // Both readers are cut off from Redis while many more events than a client's buffer
    // holds are sent; then they get them all at once.
    stall_readers(&redis, &proxy, 2).await;
    let texts: Vec<String> = (0..EVENTS).map(|at| format!("e{at}")).collect();
    let mut ids = Vec::new();
    for text in &texts {
        ids.push(publish(&a, text).await);
    }
    assert_eq!(stream_len(&redis, "{chat}").await, EVENTS + 1);
    proxy.release();

    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    for (_, events) in &mut clients {
        assert_eq!(expect(events, &texts).await, ids);
    }
    let (dropping, skipping) = (dropping.stats(), skipping.stats());
    assert_eq!(dropping.slow_disconnects, 0, "{dropping:?}");
    assert_eq!(skipping.events_skipped, 0, "{skipping:?}");
    for stats in [dropping, skipping] {
        assert_eq!(stats.subscribers, 1);
        assert_eq!(stats.events_sent, EVENTS as u64 + 1);
    }
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn deliveries_count_each_event_of_what_a_reader_gets_at_once() {
    const EVENTS: usize = 10;
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(&redis).await;
    let (a, b, _, (_client, mut events)) = two_instances(&redis, proxy.client(), 100).await;
    stall_readers(&redis, &proxy, 1).await;
    let texts: Vec<String> = (0..EVENTS).map(|at| format!("e{at}")).collect();
    for text in &texts {
        publish(&a, text).await;
    }
    proxy.release();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    expect(&mut events, &texts).await;
    let stats = b.stats();
    assert_eq!(stats.events_sent, EVENTS as u64, "{stats:?}");
    assert_eq!(
        stats.deliveries, EVENTS as u64,
        "each event handed to the one subscriber is a delivery: {stats:?}"
    );
}

/// Sends `count` events on `hub` all at once; returns their ids and texts.
async fn burst(hub: &Broadcast, prefix: &str, count: usize) -> HashMap<String, String> {
    let texts: Vec<String> = (0..count).map(|at| format!("{prefix}{at}")).collect();
    let sends = texts.iter().map(|text| hub.send(text.as_str()));
    let sent = timeout(BOUND, join_all(sends)).await.expect("sent in time");
    sent.into_iter()
        .zip(texts)
        .map(|(sent, text)| (sent.expect("sent").id().expect("an id").to_owned(), text))
        .collect()
}

/// Reads `sent.len()` events, which must be those sent, in the order of their numbers from 1.
async fn expect_all_from_the_first(events: &mut Events, sent: &HashMap<String, String>) {
    let mut epoch = None;
    for number in 1..=sent.len() as u64 {
        let event = next_event(events).await;
        let (its_epoch, its_number) = split_id(&event.id);
        assert_eq!(*epoch.get_or_insert(its_epoch.clone()), its_epoch);
        assert_eq!(its_number, number, "{event:?}");
        assert_eq!(event.data, sent[&event.id]);
    }
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_subscriber_of_a_new_hub_gets_every_event_from_the_first() {
    let redis = RedisServer::start().await;
    // Subscribed on B before the hub has any event; A sends many at once.
    let (a, b, _, (_client, mut events)) = two_instances(&redis, redis.client(), 1000).await;
    let sent = burst(&a, "x", 600).await;
    expect_all_from_the_first(&mut events, &sent).await;
    let stats = b.stats();
    assert_eq!((stats.slow_disconnects, stats.events_sent), (0, 600));
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_subscriber_of_a_hub_just_built_gets_every_event_sent_after_it_subscribed() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(&redis).await;
    let a = chat(redis.client(), 1000).await;
    readers_ready(&redis, 1).await;
    // B is built while its way to Redis is held up: until its reader has looked at the hub's
    // stream, it cannot promise a subscriber what is stored meanwhile, so it closes the
    // stream (the browser comes back) rather than start it with a silent gap.
    proxy.hold();
    let b = Broadcast::builder()
        .history(1000)
        .response_timeout(Duration::from_millis(300))
        .redis(proxy.client(), "chat")
        .build();
    let (early, response) = EventSource::new().buffer(BUFFER).connect(&HeaderMap::new());
    let waited = std::time::Instant::now();
    assert_eq!(b.subscribe(&early).await, Resume::Unavailable);
    assert!(
        waited.elapsed() < BOUND,
        "answered within the response timeout"
    );
    assert!(early.is_closed());
    // The early stream ends with no event.
    assert_ends(&mut read_events(response.into_body())).await;
    // Once it has looked, a subscriber gets every event stored after it subscribed, even a
    // burst sent at once.
    proxy.release();
    let (conn, response) = EventSource::new().buffer(BUFFER).connect(&HeaderMap::new());
    assert_eq!(b.subscribe(&conn).await, Resume::Live);
    let mut sent = burst(&a, "x", 600).await;
    let last = publish(&a, "last").await;
    sent.insert(last, "last".to_owned());
    let mut events = read_events(response.into_body());
    expect_all_from_the_first(&mut events, &sent).await;
}

/// Waits (bounded) until Redis has `expected` connections.
async fn connections_come_to(admin: &mut MultiplexedConnection, expected: usize) {
    let mut now = 0;
    let waited = timeout(BOUND, async {
        loop {
            now = client_list(admin).await.len();
            if now == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{now} connections, not {expected}");
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn dropping_the_last_clone_of_a_hub_stops_its_reader() {
    let redis = RedisServer::start().await;
    let mut admin = redis.conn().await;
    let before = client_list(&mut admin).await.len();
    let mut plain = Vec::new();
    let mut keyed = Vec::new();
    for at in 0..3 {
        plain.push(
            ready(
                Broadcast::builder()
                    .history(10)
                    .redis(redis.client(), format!("p{at}")),
            )
            .await,
        );
    }
    for at in 0..2 {
        let hub: KeyedBroadcast<String> = KeyedBroadcast::builder(Broadcast::builder())
            .redis(redis.client(), format!("k{at}"))
            .build();
        hub.ready().await.expect("Redis accepts the hub");
        keyed.push(hub);
    }
    // Each hub has a reader and a connection for its sends.
    connections_come_to(&mut admin, before + 10).await;
    readers_ready(&redis, 5).await;

    // Clones keep them going.
    let plain_clones = plain.clone();
    let keyed_clones = keyed.clone();
    drop((plain, keyed));
    let (conn, response) = EventSource::new().connect(&HeaderMap::new());
    assert_eq!(plain_clones[0].subscribe(&conn).await, Resume::Live);
    let id = publish(&plain_clones[0], "still here").await;
    let event = next_event(&mut read_events(response.into_body())).await;
    assert_eq!(
        (event.data.as_str(), event.id.as_str()),
        ("still here", id.as_str())
    );
    connections_come_to(&mut admin, before + 10).await;

    drop((plain_clones, keyed_clones));
    connections_come_to(&mut admin, before).await;
    assert_eq!(readers_waiting(&mut admin, |_| true).await, 0);
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn the_largest_history_works() {
    let redis = RedisServer::start().await;
    let a = chat(redis.client(), usize::MAX).await;
    readers_ready(&redis, 1).await;
    let mut ids = Vec::new();
    for text in ["1", "2", "3"] {
        ids.push(publish(&a, text).await);
    }
    assert_numbered(&ids, 1);
    let b = chat(redis.client(), usize::MAX).await;
    let addr_b = serve(Hub::One(b.clone())).await;
    let (_c1, mut resumed) = open_stream(addr_b, "/events", Some(&ids[0])).await;
    assert_eq!(expect(&mut resumed, &["2", "3"]).await, ids[1..]);
    assert_eq!(recent_ids(&b, usize::MAX).await, ids);

    let keyed = rooms(redis.client(), usize::MAX).await;
    let other = rooms(redis.client(), usize::MAX).await;
    let addr = serve(Hub::Keyed(other.clone())).await;
    let mut ids = Vec::new();
    for text in ["k1", "k2", "k3"] {
        ids.push(publish_to(&keyed, "alice", text).await);
    }
    assert_numbered(&ids, 1);
    let (_c2, mut resumed) = open_stream(addr, "/events/alice", Some(&ids[0])).await;
    assert_eq!(expect(&mut resumed, &["k2", "k3"]).await, ids[1..]);
    let recent = other.recent("alice", usize::MAX).await.unwrap();
    assert_eq!(recent.len(), 3);
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn keys_without_history_go_with_their_subscribers_while_redis_is_down() {
    const KEYS: usize = 20;
    let mut redis = RedisServer::start().await;
    let hub: KeyedBroadcast<String> = KeyedBroadcast::builder(Broadcast::builder())
        .redis(redis.client(), "rooms")
        .build();
    hub.ready().await.expect("Redis accepts the hub");
    let addr = serve(Hub::Keyed(hub.clone())).await;
    let mut clients = Vec::new();
    for key in 0..KEYS {
        let path = format!("/events/k{key}");
        clients.push(open_subscribed(addr, &path, None, || hub.stats().totals.subscribers).await);
    }
    assert_eq!(hub.stats().keys, KEYS);

    redis.kill();
    for (client, _) in clients {
        client.disconnect().await;
    }
    wait_for(|| hub.stats().keys == 0).await;
    let stats = hub.stats();
    assert_eq!(
        (stats.keys_created, stats.keys_dropped),
        (KEYS as u64, KEYS as u64)
    );
    // Without Redis a new key still comes, and goes with its subscriber.
    let (client, _events) = open_subscribed(addr, "/events/late", None, || {
        hub.stats().totals.subscribers
    })
    .await;
    assert_eq!(hub.stats().keys, 1);
    client.disconnect().await;
    wait_for(|| hub.stats().keys == 0).await;
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_hub_and_a_keyed_hub_cannot_share_a_name() {
    let redis = RedisServer::start().await;
    let plain = chat(redis.client(), 10).await;
    let keyed: KeyedBroadcast<String> = KeyedBroadcast::builder(Broadcast::builder().history(10))
        .redis(redis.client(), "chat")
        .build();
    let refused = keyed.ready().await.expect_err("the name is a plain hub's");
    assert!(refused.to_string().contains("plain"), "{refused}");
    match keyed.send("alice", "x").await {
        Err(error @ SendError::NotStored(_)) => assert!(!error.may_have_been_stored()),
        other => panic!("expected NotStored, got {other:?}"),
    }
    plain.send("still mine").await.expect("sent");
    assert_eq!(stream_len(&redis, "{chat}").await, 1);

    let first = rooms(redis.client(), 10).await;
    let second = Broadcast::builder()
        .history(10)
        .redis(redis.client(), "rooms")
        .build();
    assert!(second.ready().await.is_err());
    assert!(second.send("x").await.is_err());
    first.send("alice", "still mine").await.expect("sent");
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn the_send_after_its_connection_was_killed_succeeds() {
    const KILLS: usize = 20;
    let redis = RedisServer::start().await;
    let (a, _b, _, (_client, mut events)) = two_instances(&redis, redis.client(), 100).await;
    let mut admin = redis.conn().await;
    let mut ids = Vec::new();
    let texts: Vec<String> = (0..KILLS).map(|at| format!("after kill {at}")).collect();
    for text in &texts {
        let killed = kill_connections(&mut admin).await;
        assert!(
            killed >= 1,
            "at least the publisher's connection was killed"
        );
        let sent = a.send(text.as_str()).await;
        let sent = sent.unwrap_or_else(|error| panic!("{text}: {error}"));
        ids.push(sent.id().expect("an id").to_owned());
    }
    assert_numbered(&ids, 1);
    assert_eq!(stream_len(&redis, "{chat}").await, KILLS);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert_eq!(expect(&mut events, &texts).await, ids);
    assert_eq!(a.stats().send_errors, 0);
}
