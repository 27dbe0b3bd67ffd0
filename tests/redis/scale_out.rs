//! The tests themselves; see `tests/redis.rs`.

use crate::common::{next_event, read_events, Client, Events, Proto, BOUND};
use axum::{body::Body, Router};
use http::{header, Request};
use redis::AsyncCommands;
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};
use tokio::{net::TcpListener, sync::watch, time::timeout};
use tower_eventsource::{
    Connection, EventSourceService, PublishError, RedisBroadcast, RedisBuilder,
    RedisKeyedBroadcast, Resume,
};

/// A `redis-server` on a free loopback port, killed when dropped.
struct RedisServer {
    port: u16,
    dir: PathBuf,
    durable: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Without persistence.
    async fn start() -> RedisServer {
        Self::start_with(false).await
    }

    /// With `appendonly yes` and `appendfsync always` when `durable`.
    async fn start_with(durable: bool) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("tower-eventsource-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let mut server = RedisServer {
            port,
            dir,
            durable,
            child: None,
        };
        server.run().await;
        server
    }

    async fn run(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.durable {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!("cannot start redis-server ({error}): install it (Debian: apt-get install redis-server)")
        });
        self.child = Some(child);
        // Bounded: ready within BOUND or the test fails.
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            if let Ok(mut conn) = self.client().get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid url")
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -9`, then start again on the same port with the same data directory.
    async fn crash_and_restart(&mut self) {
        self.kill();
        self.run().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn builder(redis: &RedisServer) -> RedisBuilder {
    RedisBroadcast::builder(redis.client(), "chat").block(Duration::from_millis(200))
}

/// Serves `GET /events` (and `/events/KEY` for a keyed hub) on 127.0.0.1.
async fn serve(hub: Hub) -> SocketAddr {
    let events = EventSourceService::new(move |conn: Connection, req: Request<Body>| {
        let hub = hub.clone();
        async move {
            let key = req
                .uri()
                .path()
                .trim_start_matches("/events")
                .trim_start_matches('/');
            let resume = match &hub {
                Hub::One(hub) => hub.subscribe(&conn).await,
                Hub::Keyed(hub) => hub.subscribe(key, &conn).await,
            };
            assert_ne!(resume, Resume::AlreadySubscribed);
        }
    });
    let app = Router::new()
        .route_service("/events", events.clone())
        .route_service("/events/{key}", events);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[derive(Clone)]
enum Hub {
    One(RedisBroadcast),
    Keyed(RedisKeyedBroadcast),
}

/// A client's stream of events from `path`, resuming from `last_event_id`.
async fn open(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> (Client, Events) {
    let mut client = Client::connect(addr, Proto::Http1).await;
    let mut request = client.request(http::Method::GET, path);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = client.send(request).await;
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    (client, read_events(response.into_body()))
}

/// Opens a stream and waits until the hub has subscribed it.
async fn open_subscribed(
    addr: SocketAddr,
    path: &str,
    last_event_id: Option<&str>,
    subscribers: impl Fn() -> usize,
) -> (Client, Events) {
    let before = subscribers();
    let opened = open(addr, path, last_event_id).await;
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

/// Publishes `text` on `hub`, retrying (bounded) with one idempotency key while Redis is
/// unreachable, as an application would.
async fn publish(hub: &RedisBroadcast, text: &str) -> String {
    let key = format!("{text}-{:?}", std::time::Instant::now());
    timeout(BOUND, async {
        loop {
            match hub.publish_idempotent(&key, text).await {
                Ok(id) => return id,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("published in time")
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

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_publish_on_either_instance_reaches_clients_of_both_with_the_same_ids() {
    let redis = RedisServer::start().await;
    let a = builder(&redis).build().await.unwrap();
    let b = builder(&redis).build().await.unwrap();
    let (addr_a, addr_b) = (
        serve(Hub::One(a.clone())).await,
        serve(Hub::One(b.clone())).await,
    );
    let (_ca, mut on_a) =
        open_subscribed(addr_a, "/events", None, || a.stats().local.subscribers).await;
    let (_cb, mut on_b) =
        open_subscribed(addr_b, "/events", None, || b.stats().local.subscribers).await;

    let mut published = Vec::new();
    for (hub, text) in [(&a, "1"), (&b, "2"), (&a, "3"), (&b, "4")] {
        published.push(publish(hub, text).await);
    }
    let ids_a = expect(&mut on_a, &["1", "2", "3", "4"]).await;
    let ids_b = expect(&mut on_b, &["1", "2", "3", "4"]).await;
    assert_eq!(ids_a, published);
    assert_eq!(ids_b, published);
    assert_eq!(a.stats().published + b.stats().published, 4);
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn resuming_on_the_other_instance_from_an_id_got_on_the_first_is_exact() {
    let redis = RedisServer::start().await;
    let a = builder(&redis).build().await.unwrap();
    let b = builder(&redis).build().await.unwrap();
    let (addr_a, addr_b) = (
        serve(Hub::One(a.clone())).await,
        serve(Hub::One(b.clone())).await,
    );

    let (client, mut on_a) =
        open_subscribed(addr_a, "/events", None, || a.stats().local.subscribers).await;
    for text in ["1", "2"] {
        publish(&a, text).await;
    }
    let seen = expect(&mut on_a, &["1", "2"]).await;
    client.disconnect().await;
    for text in ["3", "4"] {
        publish(&a, text).await;
    }
    // B's reader has delivered "4" once a live client of B sees "5". The watcher is live from
    // wherever B's reader was when it subscribed, which may be before "3" or "4".
    let (_watch, mut watcher) =
        open_subscribed(addr_b, "/events", None, || b.stats().local.subscribers).await;
    publish(&a, "5").await;
    expect_ending(&mut watcher, &["3", "4", "5"]).await;

    let (_client, mut on_b) = open(addr_b, "/events", Some(&seen[1])).await;
    expect(&mut on_b, &["3", "4", "5"]).await;
    publish(&b, "6").await;
    expect(&mut on_b, &["6"]).await;
    assert_eq!(b.stats().resumed_locally, 1);
    assert_eq!(
        b.stats().resume_calls,
        0,
        "a resume from local history costs Redis nothing"
    );
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_cursor_older_than_the_local_history_is_replayed_from_redis() {
    let redis = RedisServer::start().await;
    let a = builder(&redis).build().await.unwrap();
    let b = builder(&redis).history(2).build().await.unwrap();
    let addr_b = serve(Hub::One(b.clone())).await;
    let (_watch, mut watcher) =
        open_subscribed(addr_b, "/events", None, || b.stats().local.subscribers).await;
    let mut ids = Vec::new();
    for text in ["1", "2", "3", "4", "5", "6"] {
        ids.push(publish(&a, text).await);
    }
    expect(&mut watcher, &["1", "2", "3", "4", "5", "6"]).await;

    let (_client, mut resumed) = open(addr_b, "/events", Some(&ids[0])).await;
    let got = expect(&mut resumed, &["2", "3", "4", "5", "6"]).await;
    assert_eq!(got, ids[1..]);
    publish(&a, "7").await;
    expect(&mut resumed, &["7"]).await;
    let stats = b.stats();
    assert_eq!((stats.resumed_from_redis, stats.resumed_locally), (1, 0));
    assert_eq!(stats.local.resets, 0);
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_cursor_further_back_than_the_replay_limit_gets_the_reset() {
    let redis = RedisServer::start().await;
    let a = builder(&redis).build().await.unwrap();
    let b = builder(&redis)
        .history(1)
        .replay_limit(2)
        .build()
        .await
        .unwrap();
    let addr_b = serve(Hub::One(b.clone())).await;
    let (_watch, mut watcher) =
        open_subscribed(addr_b, "/events", None, || b.stats().local.subscribers).await;
    let mut ids = Vec::new();
    for text in ["1", "2", "3", "4", "5"] {
        ids.push(publish(&a, text).await);
    }
    expect(&mut watcher, &["1", "2", "3", "4", "5"]).await;
    let (_client, mut resumed) = open(addr_b, "/events", Some(&ids[0])).await;
    let reset = next_event(&mut resumed).await;
    assert_eq!(
        (reset.event.as_str(), reset.id.as_str()),
        ("reset", ids[4].as_str())
    );
    publish(&a, "6").await;
    expect(&mut resumed, &["6"]).await;
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
            next = timeout(BOUND, futures_util::StreamExt::next(&mut events)) => next,
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
                let (client, stream) = open(addr, "/events", last.as_deref()).await;
                _client = Some(client);
                events = stream;
            }
        }
    }
}

/// What a client must get after a reset with `reset_id`: exactly the events published after
/// it (all of `texts` when the reset's id is the new stream's start).
fn after_reset<'a>(reset_id: &str, ids: &[String], texts: &[&'a str]) -> Vec<&'a str> {
    let from = ids
        .iter()
        .position(|id| id == reset_id)
        .map_or(0, |at| at + 1);
    if from == 0 {
        assert!(
            reset_id.ends_with("-0-0"),
            "the reset's id {reset_id} is a start or an event's"
        );
    }
    texts[from..].to_vec()
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn trimming_past_a_cursor_gets_the_reset_and_delivery_goes_on() {
    let redis = RedisServer::start().await;
    let a = builder(&redis).build().await.unwrap();
    let b = builder(&redis).history(1).build().await.unwrap();
    let addr_b = serve(Hub::One(b.clone())).await;
    let (_watch, mut watcher) =
        open_subscribed(addr_b, "/events", None, || b.stats().local.subscribers).await;
    let mut ids = Vec::new();
    for text in ["1", "2", "3"] {
        ids.push(publish(&a, text).await);
    }
    expect(&mut watcher, &["1", "2", "3"]).await;
    let _: usize = redis
        .conn()
        .await
        .xtrim("{chat}", redis::streams::StreamMaxlen::Equals(1))
        .await
        .unwrap();

    let (_client, mut resumed) = open(addr_b, "/events", Some(&ids[0])).await;
    let reset = next_event(&mut resumed).await;
    assert_eq!(reset.event, "reset");
    publish(&a, "4").await;
    expect(&mut resumed, &["4"]).await;
    expect(&mut watcher, &["4"]).await;
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_stream_trimmed_past_the_reader_gets_one_reset_and_delivery_goes_on() {
    let redis = RedisServer::start().await;
    let a = builder(&redis).build().await.unwrap();
    let b = builder(&redis).build().await.unwrap();
    let addr_b = serve(Hub::One(b.clone())).await;
    let (_client, mut events) =
        open_subscribed(addr_b, "/events", None, || b.stats().local.subscribers).await;
    publish(&a, "1").await;
    let seen = expect(&mut events, &["1"]).await;
    // Three entries added and all but the last trimmed at once, before any reader can see
    // them: the stream no longer proves that nothing after "1" is missing.
    let added: Vec<String> = redis::Script::new(
        "local epoch = redis.call('HGET', KEYS[2], 'epoch')
         local ids = {}
         for _, data in ipairs(ARGV) do
           local id = redis.call('XADD', KEYS[1], '*', 'e', epoch, 'k', '', 'f', 'data: ' .. data .. '\\n')
           table.insert(ids, epoch .. '-' .. id)
         end
         redis.call('XTRIM', KEYS[1], 'MAXLEN', 1)
         return ids",
    )
    .key("{chat}")
    .key("{chat}:meta")
    .arg(&["2", "3", "4"][..])
    .invoke_async(&mut redis.conn().await)
    .await
    .unwrap();
    let (until_tx, until) = watch::channel(None);
    let follower = tokio::spawn(follow(addr_b, Some(seen[0].clone()), events, until));
    wait_for(|| b.stats().stream_resets == 1).await;
    let id = publish(&a, "5").await;
    until_tx.send_replace(Some(id.clone()));
    let (resets, reset_id, texts) = follower.await.unwrap();
    assert_eq!(resets, 1);
    // The reset's id is the newest B had delivered when the client came back: the position
    // just before the first kept entry ("4"), or "4"'s, or "5"'s. Never before the last lost
    // one ("3"), and the client gets exactly what follows it.
    let (epoch, reset_at) = position(&reset_id);
    assert_eq!(epoch, position(&added[2]).0);
    assert!(position(&added[1]).1 <= reset_at && reset_at <= position(&id).1);
    let after: Vec<&str> = [(&added[2], "4"), (&id, "5")]
        .into_iter()
        .filter(|(id, _)| position(id).1 > reset_at)
        .map(|(_, text)| text)
        .collect();
    assert_eq!(texts, after);
}

/// An id's epoch and its stream position, as numbers.
fn position(id: &str) -> (&str, (u64, u64)) {
    let mut parts = id.split('-');
    let mut next = || parts.next().unwrap_or_else(|| panic!("no id: {id}"));
    let epoch = next();
    let ms = next().parse().expect("ms");
    let seq = next().parse().expect("seq");
    (epoch, (ms, seq))
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn deleting_the_stream_gets_one_reset_and_delivery_goes_on() {
    let redis = RedisServer::start().await;
    let a = builder(&redis).build().await.unwrap();
    let b = builder(&redis).build().await.unwrap();
    let addr_b = serve(Hub::One(b.clone())).await;
    let (_client, mut events) =
        open_subscribed(addr_b, "/events", None, || b.stats().local.subscribers).await;
    publish(&a, "1").await;
    let seen = expect(&mut events, &["1"]).await;
    let _: usize = redis.conn().await.del("{chat}").await.unwrap();
    // The first event of the new stream: B cannot know what it missed in between, so its
    // subscribers get exactly one reset, then what follows the reset's id.
    let mut ids = vec![publish(&a, "2").await];
    let (until_tx, until) = watch::channel(None);
    let follower = tokio::spawn(follow(addr_b, Some(seen[0].clone()), events, until));
    wait_for(|| b.stats().stream_resets == 1).await;
    ids.push(publish(&a, "3").await);
    ids.push(publish(&b, "4").await);
    until_tx.send_replace(ids.last().cloned());
    let (resets, reset_id, texts) = follower.await.unwrap();
    assert_eq!(resets, 1);
    assert_eq!(texts, after_reset(&reset_id, &ids, &["2", "3", "4"]));
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn redis_killed_and_restarted_empty_gives_one_reset_and_delivery_goes_on() {
    let mut redis = RedisServer::start().await;
    let a = builder(&redis).build().await.unwrap();
    let b = builder(&redis).build().await.unwrap();
    let addr_b = serve(Hub::One(b.clone())).await;
    let (_client, mut events) =
        open_subscribed(addr_b, "/events", None, || b.stats().local.subscribers).await;
    publish(&a, "1").await;
    let ids = expect(&mut events, &["1"]).await;

    redis.kill();
    // While Redis is down, publishing fails, open streams stay open, and a resume from this
    // server's history still works.
    assert!(matches!(
        a.publish("lost").await,
        Err(PublishError::Redis(_))
    ));
    assert_eq!(b.stats().local.subscribers, 1);
    let (_other, resumed) = open(addr_b, "/events", Some(&ids[0])).await;
    wait_for(|| b.stats().resumed_locally == 1).await;

    redis.run().await;
    let mut new_ids = vec![publish(&a, "2").await];
    let (until_tx, until) = watch::channel(None);
    let first = tokio::spawn(follow(addr_b, Some(ids[0].clone()), events, until.clone()));
    let second = tokio::spawn(follow(addr_b, Some(ids[0].clone()), resumed, until));
    wait_for(|| b.stats().stream_resets == 1).await;
    new_ids.push(publish(&a, "3").await);
    until_tx.send_replace(new_ids.last().cloned());
    for follower in [first, second] {
        let (resets, reset_id, texts) = follower.await.unwrap();
        assert_eq!(resets, 1);
        assert_eq!(texts, after_reset(&reset_id, &new_ids, &["2", "3"]));
    }
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn with_appendfsync_always_a_crash_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start_with(true).await;
    let a = builder(&redis).build().await.unwrap();
    let b = builder(&redis).history(1).build().await.unwrap();
    let addr_b = serve(Hub::One(b.clone())).await;
    let (_client, mut events) =
        open_subscribed(addr_b, "/events", None, || b.stats().local.subscribers).await;
    let mut ids = Vec::new();
    for text in ["1", "2", "3"] {
        ids.push(publish(&a, text).await);
    }
    expect(&mut events, &["1", "2", "3"]).await;

    redis.crash_and_restart().await;
    ids.push(publish(&a, "4").await);
    // The same stream goes on, with no reset.
    assert_eq!(expect(&mut events, &["4"]).await, ids[3..]);
    // Every acknowledged event is still in Redis: a resume from the first replays them.
    let (_other, mut resumed) = open(addr_b, "/events", Some(&ids[0])).await;
    assert_eq!(expect(&mut resumed, &["2", "3", "4"]).await, ids[1..]);
    let recent: Vec<String> = a
        .recent(10)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(recent, ids);
    assert_eq!(b.stats().stream_resets, 0);
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_killed_reader_connection_is_survived_with_no_visible_break() {
    let redis = RedisServer::start().await;
    let a = builder(&redis).build().await.unwrap();
    let b = builder(&redis).build().await.unwrap();
    let addr_b = serve(Hub::One(b.clone())).await;
    let (_client, mut events) =
        open_subscribed(addr_b, "/events", None, || b.stats().local.subscribers).await;
    publish(&a, "1").await;
    expect(&mut events, &["1"]).await;

    let mut admin = redis.conn().await;
    let killed: usize = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        killed >= 2,
        "the readers' and publishers' connections were killed"
    );
    // Published while the reader may still be away: it goes on from the last entry it read.
    publish(&a, "2").await;
    publish(&a, "3").await;
    expect(&mut events, &["2", "3"]).await;
    wait_for(|| b.stats().reader_reconnects >= 1).await;
    assert_eq!(b.stats().local.resets, 0);
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_retried_publish_with_the_same_idempotency_key_stores_one_entry() {
    let redis = RedisServer::start().await;
    let a = builder(&redis).build().await.unwrap();
    let b = builder(&redis).build().await.unwrap();
    let addr_b = serve(Hub::One(b.clone())).await;
    let (_client, mut events) =
        open_subscribed(addr_b, "/events", None, || b.stats().local.subscribers).await;
    let first = a.publish_idempotent("order-17", "paid").await.unwrap();
    let again = b.publish_idempotent("order-17", "paid").await.unwrap();
    assert_eq!(first, again);
    let other = a.publish_idempotent("order-18", "paid").await.unwrap();
    assert_ne!(first, other);
    let len: usize = redis.conn().await.xlen("{chat}").await.unwrap();
    assert_eq!(len, 2);
    assert_eq!(expect(&mut events, &["paid", "paid"]).await, [first, other]);
}

/// A keyed hub on `redis`'s "rooms" streams, keeping `history` events of each key locally.
async fn keyed_hub(
    redis: &RedisServer,
    history: usize,
    shards: usize,
) -> Result<RedisKeyedBroadcast, redis::RedisError> {
    RedisBroadcast::builder(redis.client(), "rooms")
        .block(Duration::from_millis(200))
        .history(history)
        .shards(shards)
        .build_keyed()
        .await
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_keyed_hub_delivers_and_resumes_per_key_across_instances() {
    let redis = RedisServer::start().await;
    let keyed = |history| keyed_hub(&redis, history, 4);
    let a = keyed(100).await.unwrap();
    let b = keyed(1).await.unwrap();
    let (addr_b, _) = (serve(Hub::Keyed(b.clone())).await, ());
    let (_c1, mut alice) = open_subscribed(addr_b, "/events/alice", None, || {
        b.stats().local.subscribers
    })
    .await;
    let (_c2, mut bob) =
        open_subscribed(addr_b, "/events/bob", None, || b.stats().local.subscribers).await;

    let mut alice_ids = Vec::new();
    for (key, text) in [
        ("alice", "a1"),
        ("bob", "b1"),
        ("alice", "a2"),
        ("alice", "a3"),
        ("bob", "b2"),
    ] {
        let id = a.publish(key, text).await.unwrap();
        if key == "alice" {
            alice_ids.push(id);
        }
    }
    assert_eq!(expect(&mut alice, &["a1", "a2", "a3"]).await, alice_ids);
    expect(&mut bob, &["b1", "b2"]).await;

    // B keeps one event of alice's: a resume from her first goes through Redis, per key.
    let (_c3, mut resumed) = open(addr_b, "/events/alice", Some(&alice_ids[0])).await;
    assert_eq!(expect(&mut resumed, &["a2", "a3"]).await, alice_ids[1..]);
    a.publish("alice", "a4").await.unwrap();
    expect(&mut resumed, &["a4"]).await;
    expect(&mut alice, &["a4"]).await;
    assert_eq!(b.stats().resumed_from_redis, 1);
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn an_id_of_another_key_of_the_same_stream_gets_the_reset() {
    let redis = RedisServer::start().await;
    let keyed = |history| keyed_hub(&redis, history, 1);
    let a = keyed(100).await.unwrap();
    let b = keyed(100).await.unwrap();
    let addr_b = serve(Hub::Keyed(b.clone())).await;
    // Alice has a live client on B, so B keeps her history.
    let (_c1, mut alice) = open_subscribed(addr_b, "/events/alice", None, || {
        b.stats().local.subscribers
    })
    .await;
    let mut bob_ids = Vec::new();
    for (key, text) in [
        ("bob", "b1"),
        ("alice", "a1"),
        ("bob", "b2"),
        ("alice", "a2"),
    ] {
        let id = a.publish(key, text).await.unwrap();
        if key == "bob" {
            bob_ids.push(id);
        }
    }
    let alice_ids = expect(&mut alice, &["a1", "a2"]).await;

    // Bob's ids are positions in the same stream, but never cursors of alice's: whether the
    // cursor is inside her local history (b2) or older than it (b1), it gets the reset.
    for bob_id in &bob_ids {
        let (_c, mut stolen) = open(addr_b, "/events/alice", Some(bob_id)).await;
        let reset = next_event(&mut stolen).await;
        assert_eq!(
            (reset.event.as_str(), reset.id.as_str()),
            ("reset", alice_ids[1].as_str())
        );
    }
    // Her own ids still resume exactly, from the local history.
    let (_c2, mut resumed) = open(addr_b, "/events/alice", Some(&alice_ids[0])).await;
    assert_eq!(expect(&mut resumed, &["a2"]).await, alice_ids[1..]);
    let stats = b.stats();
    assert_eq!((stats.local.resets, stats.resumed_locally), (2, 1));
}
