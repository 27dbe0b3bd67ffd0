//! The guarantees table of the hubs (`src/hub/mod.rs`), row by row. Each test runs one body on
//! both backends, in-process and Redis, which differ only in how the hubs are built: on Redis,
//! two instances are two hubs built with the same name, as on two servers; in-process, where a
//! hub cannot be shared, both instances are the same hub.

use crate::common::{
    assert_ends, next_event, open_stream, read_events, recent_ids, split_id, Client, Events, BOUND,
};
use crate::server::RedisServer;
use axum::{body::Body, Router};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::BodyExt;
use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tokio::{sync::mpsc, time::timeout};
use tower_eventsource::{
    BackendError, Broadcast, BroadcastBuilder, Connection, Event, EventSource, EventSourceService,
    HistoryEntry, KeyedBroadcast, Resume, SendError, Sent,
};

/// The default linger of a keyed hub.
const LINGER: Duration = Duration::from_secs(300);

/// A cursor no hub gave: the right form, an epoch no hub has.
const FORGED: &str = "0123456789abcdef-4";

/// Where the hubs of a test live.
#[derive(Clone, Copy)]
enum Backend<'a> {
    InProcess,
    Redis(&'a RedisServer),
}

impl fmt::Display for Backend<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::InProcess => "in-process",
            Backend::Redis(_) => "Redis",
        })
    }
}

impl<'a> Backend<'a> {
    fn of(redis: Option<&'a RedisServer>) -> Self {
        redis.map_or(Backend::InProcess, Backend::Redis)
    }

    /// One instance's hub named `name`.
    fn hub(self, template: BroadcastBuilder, name: &str) -> Broadcast {
        match self {
            Backend::InProcess => template.build(),
            Backend::Redis(redis) => template.redis(redis.client(), name).build(),
        }
    }

    /// Two instances of the hub named `name`.
    fn hubs(self, template: BroadcastBuilder, name: &str) -> (Broadcast, Broadcast) {
        match self {
            Backend::InProcess => {
                let hub = self.hub(template, name);
                (hub.clone(), hub)
            }
            Backend::Redis(_) => (self.hub(template.clone(), name), self.hub(template, name)),
        }
    }

    /// Another instance of the hub `of`, named `name`, built now.
    fn instance(self, of: &Broadcast, template: BroadcastBuilder, name: &str) -> Broadcast {
        match self {
            Backend::InProcess => of.clone(),
            Backend::Redis(_) => self.hub(template, name),
        }
    }

    /// One instance's keyed hub named `name`.
    fn keyed(
        self,
        template: BroadcastBuilder,
        linger: Duration,
        name: &str,
    ) -> KeyedBroadcast<String> {
        let builder = KeyedBroadcast::builder(template).linger(linger);
        match self {
            Backend::InProcess => builder.build(),
            Backend::Redis(redis) => builder.redis(redis.client(), name).build(),
        }
    }

    /// Two instances of the keyed hub named `name`.
    fn keyed_pair(
        self,
        template: BroadcastBuilder,
        linger: Duration,
        name: &str,
    ) -> (KeyedBroadcast<String>, KeyedBroadcast<String>) {
        match self {
            Backend::InProcess => {
                let hub = self.keyed(template, linger, name);
                (hub.clone(), hub)
            }
            Backend::Redis(_) => (
                self.keyed(template.clone(), linger, name),
                self.keyed(template, linger, name),
            ),
        }
    }

    /// Whether the hubs share a backend that can go away.
    fn shared(self) -> bool {
        matches!(self, Backend::Redis(_))
    }

    /// Waits (bounded) until `readers` hub readers wait on Redis for new events: each has
    /// made its first look, and has fed its subscribers everything sent so far. In-process
    /// there is nothing to wait for.
    async fn settle(self, readers: usize) {
        let Backend::Redis(redis) = self else {
            return;
        };
        let mut conn = redis.conn().await;
        let waiting = async {
            loop {
                let info: String = redis::cmd("INFO")
                    .arg("clients")
                    .query_async(&mut conn)
                    .await
                    .expect("INFO clients");
                let blocked = info
                    .lines()
                    .find_map(|line| line.strip_prefix("blocked_clients:"))
                    .and_then(|count| count.trim().parse::<usize>().ok())
                    .expect("INFO clients has blocked_clients");
                if blocked >= readers {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        timeout(BOUND, waiting)
            .await
            .expect("the hubs' readers wait for events in time");
    }
}

/// Waits (bounded) for a hub's `ready()`, which must succeed.
async fn ready(ready: impl std::future::Future<Output = Result<(), BackendError>>) {
    timeout(BOUND, ready)
        .await
        .expect("ready answers in time")
        .expect("the hub is ready");
}

/// Waits (bounded) for a hub's `ready()`, which must fail (`why`); returns its error.
async fn not_ready(
    ready: impl std::future::Future<Output = Result<(), BackendError>>,
    why: &str,
) -> BackendError {
    timeout(BOUND, ready)
        .await
        .expect("ready answers in time")
        .expect_err(why)
}

/// The id a hub with a history gave an event.
fn sent_id(sent: &Sent) -> String {
    sent.id()
        .expect("with a history every event has an id")
        .to_owned()
}

/// A stream as `EventSource::connect` starts it, with this `Last-Event-ID`: its connection, for
/// a hub's `subscribe`, and its events as a client reads them.
fn connection(last_event_id: Option<&str>) -> (Connection, Events) {
    let mut headers = HeaderMap::new();
    if let Some(id) = last_event_id {
        headers.insert("last-event-id", HeaderValue::from_str(id).expect("an id"));
    }
    let (conn, response) = EventSource::new().buffer(10_000).connect(&headers);
    (conn, read_events(response.into_body()))
}

/// The next `count` events, which must be messages: their data and ids.
async fn messages(events: &mut Events, count: usize) -> Vec<(String, String)> {
    let mut got = Vec::with_capacity(count);
    for _ in 0..count {
        let event = next_event(events).await;
        assert_eq!(event.event, "message", "after {got:?}: {event:?}");
        got.push((event.data, event.id));
    }
    got
}

/// Reads the next events, which must be these messages, (data, id), in this order.
async fn expect(events: &mut Events, expected: &[(&str, &str)]) {
    let got = messages(events, expected.len()).await;
    let got: Vec<(&str, &str)> = got.iter().map(|(d, i)| (d.as_str(), i.as_str())).collect();
    assert_eq!(got, expected);
}

/// A plain hub, or a keyed one, behind one interface.
#[derive(Clone)]
enum Hub {
    Plain(Broadcast),
    Keyed(KeyedBroadcast<String>),
}

impl Hub {
    /// Subscribes `conn`: to a plain hub; to a key of a keyed one, or to all its keys (`None`).
    async fn subscribe(&self, key: Option<&str>, conn: &Connection) -> Resume {
        match (self, key) {
            (Hub::Plain(hub), _) => hub.subscribe(conn).await,
            (Hub::Keyed(hub), Some(key)) => hub.subscribe(key, conn).await,
            (Hub::Keyed(hub), None) => hub.subscribe_all(conn).await,
        }
    }

    /// Sends to a plain hub, or to a key of a keyed one.
    async fn send(&self, key: Option<&str>, event: impl Into<Event>) -> Result<Sent, SendError> {
        match (self, key) {
            (Hub::Plain(hub), _) => hub.send(event).await,
            (Hub::Keyed(hub), Some(key)) => hub.send(key, event).await,
            (Hub::Keyed(_), None) => panic!("a keyed hub sends to a key"),
        }
    }
}

/// One instance's HTTP server: `GET /events` subscribes to a plain hub, or to every key of a
/// keyed one; `GET /events/KEY` to one key. Each subscribe's outcome is reported.
struct Server {
    addr: SocketAddr,
    resumes: mpsc::UnboundedReceiver<Resume>,
}

/// A client's stream: its connection, its events, and how the hub subscribed it.
struct Opened {
    client: Client,
    events: Events,
    resume: Resume,
}

async fn serve(hub: Hub) -> Server {
    let (tx, resumes) = mpsc::unbounded_channel();
    let events = EventSourceService::new(move |conn: Connection, req: Request<Body>| {
        let key = req.uri().path().strip_prefix("/events/").map(str::to_owned);
        let (hub, tx) = (hub.clone(), tx.clone());
        async move {
            let resume = hub.subscribe(key.as_deref(), &conn).await;
            let _ = tx.send(resume);
        }
    });
    let app = Router::new()
        .route_service("/events", events.clone())
        .route_service("/events/{key}", events);
    Server {
        addr: crate::common::serve_axum(app).await,
        resumes,
    }
}

impl Server {
    /// Opens `path` as a browser does, with this `Last-Event-ID`, and waits (bounded) until
    /// the hub has subscribed it.
    async fn open(&mut self, path: &str, last_event_id: Option<&str>) -> Opened {
        let (client, events) = open_stream(self.addr, path, last_event_id).await;
        let resume = timeout(BOUND, self.resumes.recv())
            .await
            .expect("the handler subscribes in time")
            .expect("the handler reports");
        Opened {
            client,
            events,
            resume,
        }
    }
}

/// The remaining lifetime of a Redis key, in milliseconds (-2: none; -1: no expiry).
async fn pttl(redis: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut redis.conn().await)
        .await
        .expect("PTTL")
}

/// Checks that `key` expires in about `lifetime`: at most that, and not 3% less.
async fn assert_lifetime(redis: &RedisServer, key: &str, lifetime: Duration) {
    let left = pttl(redis, key).await;
    let full = lifetime.as_millis() as i64;
    assert!(
        full * 97 / 100 <= left && left <= full,
        "{key} expires in {left} ms, expected about {full} ms"
    );
}

// Ids and the resume window, per key.

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn ids_and_the_resume_window_are_per_key_however_busy_other_keys_are() {
    let redis = RedisServer::start().await;
    for backend in [Backend::InProcess, Backend::Redis(&redis)] {
        ids_and_the_resume_window_are_per_key_on(backend).await;
    }
}

async fn ids_and_the_resume_window_are_per_key_on(backend: Backend<'_>) {
    let (a, b) = backend.keyed_pair(Broadcast::builder().history(100), LINGER, "orders");
    ready(a.ready()).await;
    ready(b.ready()).await;
    let (mut on_a, mut on_b) = (
        serve(Hub::Keyed(a.clone())).await,
        serve(Hub::Keyed(b.clone())).await,
    );

    // An id set on the event goes too, but the hub's comes last: that is the one the browser
    // keeps.
    let created = a
        .send("order-1", Event::new().id("own-id").data("created"))
        .await
        .unwrap();
    let created = sent_id(&created);
    let (epoch, number) = split_id(&created);
    assert_eq!(number, 1, "{backend}: a key's events count from 1");

    let mut newest_of = HashMap::new();
    for i in 0..1500 {
        let key = format!("other-{}", i % 30);
        let sent = a.send(&key, format!("noise {i}")).await.unwrap();
        newest_of.insert(key, sent_id(&sent));
    }
    let mut epochs = HashSet::from([epoch.clone()]);
    for (key, id) in &newest_of {
        let (other_epoch, number) = split_id(id);
        assert_eq!(number, 50, "{backend}: {key} counts its own events");
        epochs.insert(other_epoch);
    }
    assert_eq!(epochs.len(), 31, "{backend}: each key has its own epoch");

    // Resumed on the other instance from before its one event: exactly that event, then live.
    let mut client = on_b
        .open("/events/order-1", Some(&format!("{epoch}-0")))
        .await;
    assert_eq!(client.resume, Resume::Replayed(1), "{backend}");
    expect(&mut client.events, &[("created", &created)]).await;
    let shipped = sent_id(&a.send("order-1", "shipped").await.unwrap());
    assert_eq!(shipped, format!("{epoch}-2"), "{backend}");
    expect(&mut client.events, &[("shipped", &shipped)]).await;

    // From the id the browser kept for the first event: the one after it, on either instance.
    for server in [&mut on_a, &mut on_b] {
        let mut again = server.open("/events/order-1", Some(&created)).await;
        assert_eq!(again.resume, Resume::Replayed(1), "{backend}");
        expect(&mut again.events, &[("shipped", &shipped)]).await;
    }

    // On the wire the event's own id is there too, before the hub's.
    let (conn, response) = EventSource::new().connect(&HeaderMap::new());
    let cursor = format!("{epoch}-0");
    let resume = b.subscribe_from("order-1", &conn, Some(&cursor)).await;
    assert_eq!(resume, Resume::Replayed(2), "{backend}");
    let mut body = response.into_body();
    let frame = timeout(BOUND, body.frame())
        .await
        .expect("the replay arrives in time")
        .expect("the stream has not ended")
        .expect("the body cannot fail");
    let wire = String::from_utf8(frame.into_data().expect("data").to_vec()).expect("UTF-8");
    let own = wire.find("id: own-id\n");
    let hub = wire.find(&format!("id: {created}\n"));
    assert!(
        own.is_some() && own < hub,
        "{backend}: the own id, then the hub's: {wire:?}"
    );
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn without_a_history_events_go_as_they_are() {
    let redis = RedisServer::start().await;
    for backend in [Backend::InProcess, Backend::Redis(&redis)] {
        without_a_history_events_go_as_they_are_on(backend).await;
    }
}

async fn without_a_history_events_go_as_they_are_on(backend: Backend<'_>) {
    let (a, b) = backend.hubs(Broadcast::builder(), "news");
    ready(a.ready()).await;
    ready(b.ready()).await;
    backend.settle(2).await;
    let (conn, mut events) = connection(None);
    assert_eq!(b.subscribe(&conn).await, Resume::Live, "{backend}");

    let own = a
        .send(Event::new().id("own-1").data("with its id"))
        .await
        .unwrap();
    assert_eq!(own.id(), Some("own-1"), "{backend}");
    let bare = a.send("without").await.unwrap();
    assert_eq!(bare.id(), None, "{backend}");
    let got = messages(&mut events, 2).await;
    assert_eq!(got[0], ("with its id".into(), "own-1".into()), "{backend}");
    assert_eq!(got[1].0, "without", "{backend}");

    // Nothing to resume from: a returning browser is live.
    let (conn, _events) = connection(Some("own-1"));
    assert_eq!(b.subscribe(&conn).await, Resume::Live, "{backend}");
}

// Reset.

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn an_id_that_cannot_resume_gets_one_reset_whose_id_resumes_on_any_instance() {
    let redis = RedisServer::start().await;
    for backend in [Backend::InProcess, Backend::Redis(&redis)] {
        an_id_that_cannot_resume_gets_one_reset_on(backend).await;
    }
}

async fn an_id_that_cannot_resume_gets_one_reset_on(backend: Backend<'_>) {
    let template = Broadcast::builder().history(3);
    let (a, b) = backend.keyed_pair(template.clone(), LINGER, "orders");
    let elsewhere = backend.keyed(template, LINGER, "elsewhere");
    for hub in [&a, &b, &elsewhere] {
        ready(hub.ready()).await;
    }
    let (mut on_a, mut on_b) = (
        serve(Hub::Keyed(a.clone())).await,
        serve(Hub::Keyed(b.clone())).await,
    );
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(sent_id(&a.send("order-1", format!("o{i}")).await.unwrap()));
    }
    let (epoch, _) = split_id(&ids[0]);
    let of_another_key = sent_id(&a.send("order-2", "o").await.unwrap());
    let of_another_hub = sent_id(&elsewhere.send("order-1", "o").await.unwrap());

    // The oldest id of the window (three events) still resumes exactly.
    let mut edge = on_b.open("/events/order-1", Some(&ids[1])).await;
    assert_eq!(edge.resume, Resume::Replayed(3), "{backend}");
    expect(
        &mut edge.events,
        &[("o3", &ids[2]), ("o4", &ids[3]), ("o5", &ids[4])],
    )
    .await;
    edge.client.disconnect().await;

    let cases = [
        ("too old", ids[0].clone()),
        ("of another key", of_another_key),
        ("of another hub", of_another_hub),
        ("forged", FORGED.to_owned()),
        ("ahead of the newest", format!("{epoch}-99")),
        ("not an id", "hello".to_owned()),
        ("unusable (over 1024 bytes)", "x".repeat(1025)),
    ];
    let mut newest = ids[4].clone();
    for (why, cursor) in &cases {
        // Each instance has been fed everything sent so far (three readers: A, B, elsewhere).
        backend.settle(3).await;
        let mut client = on_b.open("/events/order-1", Some(cursor)).await;
        assert_eq!(client.resume, Resume::Reset, "{backend}: an id {why}");
        let reset = next_event(&mut client.events).await;
        assert_eq!(
            (reset.event.as_str(), reset.data.as_str(), reset.id.as_str()),
            ("reset", "", newest.as_str()),
            "{backend}: an id {why}: the reset's id is the key's newest"
        );
        let text = format!("after an id {why}");
        let after = sent_id(&a.send("order-1", text.as_str()).await.unwrap());
        expect(&mut client.events, &[(&text, &after)]).await;
        client.client.disconnect().await;

        // The reset's id resumes on the other instance: what followed, and no second reset.
        backend.settle(3).await;
        let mut again = on_a.open("/events/order-1", Some(&reset.id)).await;
        assert_eq!(again.resume, Resume::Replayed(1), "{backend}: {why}");
        expect(&mut again.events, &[(&text, &after)]).await;
        newest = sent_id(&b.send("order-1", "marker").await.unwrap());
        expect(&mut again.events, &[("marker", &newest)]).await;
        again.client.disconnect().await;
    }
    assert_eq!(
        b.stats().totals.resets,
        cases.len() as u64,
        "{backend}: B sent each reset once"
    );
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_reset_before_any_event_has_an_id_that_resumes() {
    let redis = RedisServer::start().await;
    for backend in [Backend::InProcess, Backend::Redis(&redis)] {
        let template = Broadcast::builder().history(10);
        a_reset_before_any_event_has_an_id_that_resumes_on(backend, template).await;
    }
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_reset_before_any_event_is_answered_within_a_short_response_timeout() {
    let redis = RedisServer::start().await;
    for backend in [Backend::InProcess, Backend::Redis(&redis)] {
        let template = Broadcast::builder()
            .history(10)
            .response_timeout(Duration::from_millis(500));
        a_reset_before_any_event_has_an_id_that_resumes_on(backend, template).await;
    }
}

async fn a_reset_before_any_event_has_an_id_that_resumes_on(
    backend: Backend<'_>,
    template: BroadcastBuilder,
) {
    let (a, b) = backend.hubs(template.clone(), "news");
    let (ka, kb) = backend.keyed_pair(template, LINGER, "orders");
    ready(a.ready()).await;
    ready(b.ready()).await;
    ready(ka.ready()).await;
    ready(kb.ready()).await;
    let cases = [
        (
            "a key",
            Hub::Keyed(ka),
            Hub::Keyed(kb),
            "/events/fresh",
            Some("fresh"),
        ),
        ("a hub", Hub::Plain(a), Hub::Plain(b), "/events", None),
    ];
    for (what, a, b, path, key) in cases {
        let (mut on_a, mut on_b) = (serve(a.clone()).await, serve(b.clone()).await);
        let mut client = on_b.open(path, Some(FORGED)).await;
        assert_eq!(client.resume, Resume::Reset, "{backend}: {what}");
        let reset = next_event(&mut client.events).await;
        assert_eq!(reset.event, "reset", "{backend}: {what}");
        let (epoch, number) = split_id(&reset.id);
        assert_eq!(number, 0, "{backend}: {what} without events");

        let first = sent_id(&a.send(key, "first").await.unwrap());
        assert_eq!(
            first,
            format!("{epoch}-1"),
            "{backend}: {what}: the numbering the reset named goes on"
        );
        expect(&mut client.events, &[("first", &first)]).await;
        client.client.disconnect().await;

        let mut again = on_a.open(path, Some(&reset.id)).await;
        assert_eq!(again.resume, Resume::Replayed(1), "{backend}: {what}");
        expect(&mut again.events, &[("first", &first)]).await;
        let marker = sent_id(&b.send(key, "marker").await.unwrap());
        expect(&mut again.events, &[("marker", &marker)]).await;
    }
}

// Ordering.

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn events_sent_concurrently_from_both_instances_arrive_in_one_order() {
    let redis = RedisServer::start().await;
    // In-process the sends race only on this machine's threads: a few rounds give them more
    // chances to.
    for (backend, rounds) in [(Backend::Redis(&redis), 1), (Backend::InProcess, 4)] {
        for _ in 0..rounds {
            one_order_on(backend).await;
        }
    }
}

async fn one_order_on(backend: Backend<'_>) {
    const TASKS: usize = 8;
    const EACH: usize = 300;
    let (a, b) = backend.hubs(Broadcast::builder().history(1000), "news");
    let (ka, kb) = backend.keyed_pair(Broadcast::builder().history(1000), LINGER, "rooms");
    ready(a.ready()).await;
    ready(b.ready()).await;
    ready(ka.ready()).await;
    ready(kb.ready()).await;
    backend.settle(4).await;

    // The plain hub, then one key of the keyed hub (another key is busy too) and all its keys.
    let plain = [Hub::Plain(a), Hub::Plain(b)];
    let keyed = [Hub::Keyed(ka), Hub::Keyed(kb)];
    for (instances, keys, watched) in [
        (&plain, [None, None], [None, None]),
        (&keyed, [Some("room"), Some("hall")], [Some("room"), None]),
    ] {
        let mut subscribers = Vec::new();
        for hub in instances {
            for key in [watched[0], watched[0], watched[1]] {
                let (conn, events) = connection(None);
                assert_eq!(hub.subscribe(key, &conn).await, Resume::Live, "{backend}");
                subscribers.push((key, conn, events));
            }
        }
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let hub = instances[task % 2].clone();
            let key = keys[(task / 2) % 2];
            let start = std::sync::Arc::clone(&start);
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let mut sent = Vec::new();
                for i in 0..EACH {
                    let data = format!("{task}:{i}");
                    let id = sent_id(&hub.send(key, data.as_str()).await.unwrap());
                    sent.push((key, data, id));
                }
                sent
            }));
        }
        let mut sent = Vec::new();
        for task in tasks {
            sent.extend(task.await.expect("a sending task"));
        }

        let mut orders: HashMap<Option<&str>, Vec<(String, String)>> = HashMap::new();
        for (key, _conn, events) in &mut subscribers {
            let key = *key;
            let expected: Vec<&(Option<&str>, String, String)> = sent
                .iter()
                .filter(|(to, _, _)| key.is_none() || *to == key)
                .collect();
            let got = messages(events, expected.len()).await;
            // One order for every subscriber of the same thing, on every instance.
            let first = orders.entry(key).or_insert_with(|| got.clone());
            assert_eq!(&got, first, "{backend}: subscribers of {key:?}");
            // Numbered 1, 2, 3, … in that order, in one epoch.
            let (epoch, _) = split_id(&got[0].1);
            for (at, (_, id)) in got.iter().enumerate() {
                assert_eq!(*id, format!("{epoch}-{}", at + 1), "{backend}: {key:?}");
            }
            // Each task's events in the order it sent them, with the ids its sends returned.
            for task in 0..TASKS {
                let prefix = format!("{task}:");
                let mine: Vec<&str> = got
                    .iter()
                    .filter(|(data, _)| data.starts_with(&prefix))
                    .map(|(data, _)| data.as_str())
                    .collect();
                let theirs: Vec<&str> = expected
                    .iter()
                    .filter(|(_, data, _)| data.starts_with(&prefix))
                    .map(|(_, data, _)| data.as_str())
                    .collect();
                assert_eq!(mine, theirs, "{backend}: task {task} for {key:?}");
            }
            if key.is_some() || matches!(instances[0], Hub::Plain(_)) {
                let by_data: HashMap<&str, &str> = expected
                    .iter()
                    .map(|(_, data, id)| (data.as_str(), id.as_str()))
                    .collect();
                for (data, id) in &got {
                    assert_eq!(
                        by_data[data.as_str()],
                        id.as_str(),
                        "{backend}: the id send returned"
                    );
                }
            }
        }
        // A key's events come in the same order to those who follow every key.
        if let (Some(all), Some(room)) = (orders.get(&None), orders.get(&Some("room"))) {
            let in_all: Vec<&str> = all
                .iter()
                .map(|(data, _)| data.as_str())
                .filter(|data| room.iter().any(|(own, _)| own == data))
                .collect();
            let in_room: Vec<&str> = room.iter().map(|(data, _)| data.as_str()).collect();
            if let Some(at) = in_all.iter().zip(&in_room).position(|(x, y)| x != y) {
                let around =
                    |list: &[&str]| list[at.saturating_sub(2)..(at + 3).min(list.len())].join(" ");
                panic!(
                    "{backend}: room's events come in another order to those who follow every \
                     key: from event {at}, all: {}, room: {}",
                    around(&in_all),
                    around(&in_room)
                );
            }
            assert_eq!(in_all.len(), in_room.len(), "{backend}");
        }
    }
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_live_subscriber_of_a_just_built_instance_gets_what_is_sent_after_it_subscribed() {
    let redis = RedisServer::start().await;
    for backend in [Backend::InProcess, Backend::Redis(&redis)] {
        a_live_subscriber_of_a_just_built_instance_on(backend).await;
    }
}

async fn a_live_subscriber_of_a_just_built_instance_on(backend: Backend<'_>) {
    let template = Broadcast::builder().history(10);
    let a = backend.hub(template.clone(), "news");
    ready(a.ready()).await;
    a.send("before").await.unwrap();
    // A server that has just started: its first client subscribes, then an event is sent
    // elsewhere.
    let b = backend.instance(&a, template, "news");
    let (conn, mut events) = connection(None);
    assert_eq!(b.subscribe(&conn).await, Resume::Live, "{backend}");
    let after = sent_id(&a.send("after").await.unwrap());
    let event = timeout(BOUND, events.next())
        .await
        .unwrap_or_else(|_| panic!("{backend}: the event sent after the subscribe never came"))
        .expect("the stream has not ended")
        .expect("the stream parses");
    assert_eq!(
        (event.data, event.id),
        ("after".to_owned(), after),
        "{backend}"
    );
}

// Backend down.

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn with_the_backend_down_sends_fail_in_time_and_open_streams_stay_open() {
    backend_down_on(None).await;
    let mut redis = RedisServer::start_with(true).await;
    backend_down_on(Some(&mut redis)).await;
}

/// `redis`: the Redis server to stop and start again; `None` in-process, where nothing goes
/// down and the same steps just pass.
async fn backend_down_on(mut redis: Option<&mut RedisServer>) {
    let shared = Backend::of(redis.as_deref()).shared();
    let backend = Backend::of(redis.as_deref()).to_string();
    let template = Broadcast::builder()
        .history(100)
        .response_timeout(Duration::from_millis(500));
    let (a, b) = Backend::of(redis.as_deref()).hubs(template, "news");
    ready(a.ready()).await;
    ready(b.ready()).await;
    let mut on_b = serve(Hub::Plain(b.clone())).await;
    let before = sent_id(&a.send("before").await.unwrap());
    let mut subscribed = on_b.open("/events", Some(&before)).await;
    assert_eq!(subscribed.resume, Resume::Replayed(0), "{backend}");

    if let Some(redis) = redis.as_deref_mut() {
        redis.kill();
    }
    let started = Instant::now();
    let during = timeout(Duration::from_secs(2), a.send("during"))
        .await
        .unwrap_or_else(|_| panic!("{backend}: a send returns within 2 s"));
    let mut delivered = Vec::new();
    match during {
        Ok(sent) => {
            assert!(!shared, "{backend}: a send with Redis down succeeded");
            delivered.push(("during".to_owned(), sent_id(&sent)));
        }
        Err(error) => {
            assert!(shared, "{backend}: {error}");
            assert!(
                matches!(error, SendError::NotStored(_) | SendError::MaybeStored(_)),
                "{backend}: {error:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{backend}: failed after {:?}",
                started.elapsed()
            );
            assert!(a.stats().send_errors >= 1, "{backend}");
        }
    }

    // A resume that needs the backend closes its stream, so that the browser retries.
    let mut needs_backend = on_b.open("/events", Some(FORGED)).await;
    if shared {
        assert_eq!(needs_backend.resume, Resume::Unavailable, "{backend}");
        assert_ends(&mut needs_backend.events).await;
        assert_eq!(b.stats().resumes_unavailable, 1, "{backend}");
    } else {
        assert_eq!(needs_backend.resume, Resume::Reset, "{backend}");
    }
    // A new live stream needs nothing of the backend.
    let mut live = on_b.open("/events", None).await;
    assert_eq!(live.resume, Resume::Live, "{backend}");

    if let Some(redis) = redis {
        redis.run().await;
    }
    // Back: a send succeeds, and reaches the streams that stayed open, after what they had.
    let back = a.send("back").await;
    let back = sent_id(&back.unwrap_or_else(|error| panic!("{backend}: once back: {error}")));
    delivered.push(("back".to_owned(), back.clone()));
    let expected: Vec<(&str, &str)> = delivered
        .iter()
        .map(|(d, i)| (d.as_str(), i.as_str()))
        .collect();
    expect(&mut subscribed.events, &expected).await;
    expect(&mut live.events, &[("back", &back)]).await;
    // And a resume works again.
    let mut resumed = on_b.open("/events", Some(&before)).await;
    assert_eq!(
        resumed.resume,
        Resume::Replayed(delivered.len()),
        "{backend}"
    );
    expect(&mut resumed.events, &expected).await;
}

// Repeats.

const IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn an_idempotency_key_stores_an_event_once_per_key_for_its_lifetime() {
    let redis = RedisServer::start().await;
    for backend in [Backend::InProcess, Backend::Redis(&redis)] {
        idempotency_on(backend).await;
    }
}

async fn idempotency_on(backend: Backend<'_>) {
    let template = Broadcast::builder()
        .history(10)
        .idempotency_ttl(IDEMPOTENCY_TTL);
    let (a, b) = backend.hubs(template.clone(), "pay");
    let (ka, kb) = backend.keyed_pair(template, LINGER, "orders");
    ready(a.ready()).await;
    ready(b.ready()).await;
    ready(ka.ready()).await;
    ready(kb.ready()).await;
    backend.settle(4).await;

    // A plain hub.
    let (conn, mut events) = connection(None);
    assert_eq!(b.subscribe(&conn).await, Resume::Live, "{backend}");
    let first = a.send_idempotent("charge-1", "charged").await.unwrap();
    let repeat = b
        .send_idempotent("charge-1", "charged twice")
        .await
        .unwrap();
    assert_eq!(
        repeat.id(),
        first.id(),
        "{backend}: a repeat gets the first id"
    );
    let other = a.send_idempotent("charge-2", "refunded").await.unwrap();
    assert_ne!(other.id(), first.id(), "{backend}");
    let marker = b.send("marker").await.unwrap();
    let (first, other, marker) = (sent_id(&first), sent_id(&other), sent_id(&marker));
    expect(
        &mut events,
        &[
            ("charged", &first),
            ("refunded", &other),
            ("marker", &marker),
        ],
    )
    .await;
    // Remembered for the idempotency lifetime.
    match backend {
        Backend::Redis(redis) => {
            assert_lifetime(redis, "{pay}:i:0::charge-1", IDEMPOTENCY_TTL).await;
        }
        Backend::InProcess => {
            tokio::time::pause();
            tokio::time::advance(IDEMPOTENCY_TTL - Duration::from_secs(1)).await;
            let late = a.send_idempotent("charge-1", "late").await.unwrap();
            assert_eq!(late.id(), Some(first.as_str()), "{backend}");
            tokio::time::advance(Duration::from_secs(2)).await;
            let expired = a.send_idempotent("charge-1", "expired").await.unwrap();
            tokio::time::resume();
            let expired = sent_id(&expired);
            assert_ne!(expired, first, "{backend}: forgotten after its lifetime");
            expect(&mut events, &[("expired", &expired)]).await;
        }
    }

    // A keyed hub: one idempotency key on two keys sends to both, once each.
    let mut watchers = Vec::new();
    for key in [Some("order-1"), Some("order-2"), None] {
        let (conn, events) = connection(None);
        let hub = Hub::Keyed(kb.clone());
        assert_eq!(hub.subscribe(key, &conn).await, Resume::Live, "{backend}");
        watchers.push((conn, events));
    }
    let one = ka
        .send_idempotent("order-1", "op-7", "paid 1")
        .await
        .unwrap();
    let two = kb
        .send_idempotent("order-2", "op-7", "paid 2")
        .await
        .unwrap();
    let (one, two) = (sent_id(&one), sent_id(&two));
    assert_eq!(split_id(&two).1, 1, "{backend}: order-2's first event");
    for (hub, key, id) in [(&kb, "order-1", &one), (&ka, "order-2", &two)] {
        let repeat = hub.send_idempotent(key, "op-7", "again").await.unwrap();
        assert_eq!(
            repeat.id(),
            Some(id.as_str()),
            "{backend}: a repeat on {key}"
        );
    }
    // Keys and idempotency keys that hold the separator do not meet.
    ka.send_idempotent("a:1", "x", "colon 1").await.unwrap();
    ka.send_idempotent("a", "1:x", "colon 2").await.unwrap();
    let end_1 = sent_id(&ka.send("order-1", "end").await.unwrap());
    let end_2 = sent_id(&ka.send("order-2", "end").await.unwrap());
    expect(&mut watchers[0].1, &[("paid 1", &one), ("end", &end_1)]).await;
    expect(&mut watchers[1].1, &[("paid 2", &two), ("end", &end_2)]).await;
    let all: Vec<String> = messages(&mut watchers[2].1, 6)
        .await
        .into_iter()
        .map(|(data, _)| data)
        .collect();
    assert_eq!(
        all,
        ["paid 1", "paid 2", "colon 1", "colon 2", "end", "end"],
        "{backend}: every key's events, each once"
    );
    if let Backend::Redis(redis) = backend {
        for record in [
            "{orders}:i:7:order-1:op-7",
            "{orders}:i:7:order-2:op-7",
            "{orders}:i:3:a:1:x",
            "{orders}:i:1:a:1:x",
        ] {
            assert_lifetime(redis, record, IDEMPOTENCY_TTL).await;
        }
    }
}

// Every key at once.

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn subscribe_all_gets_every_key_in_one_numbering_and_resumes_with_it() {
    let redis = RedisServer::start().await;
    for backend in [Backend::InProcess, Backend::Redis(&redis)] {
        subscribe_all_on(backend).await;
    }
}

async fn subscribe_all_on(backend: Backend<'_>) {
    let (a, b) = backend.keyed_pair(Broadcast::builder().history(100), LINGER, "orders");
    ready(a.ready()).await;
    ready(b.ready()).await;
    backend.settle(2).await;
    let (mut on_a, mut on_b) = (
        serve(Hub::Keyed(a.clone())).await,
        serve(Hub::Keyed(b.clone())).await,
    );
    let mut watcher = on_b.open("/events", None).await;
    assert_eq!(watcher.resume, Resume::Live, "{backend}");

    let mut key_ids = Vec::new();
    for (at, key) in ["k1", "k2", "k3", "k4", "k5"].into_iter().enumerate() {
        let hub = if at % 2 == 0 { &a } else { &b };
        key_ids.push(sent_id(&hub.send(key, format!("to {key}")).await.unwrap()));
    }
    let got = messages(&mut watcher.events, 5).await;
    let (epoch, _) = split_id(&got[0].1);
    for (at, (data, id)) in got.iter().enumerate() {
        assert_eq!(data, &format!("to k{}", at + 1), "{backend}");
        assert_eq!(id, &format!("{epoch}-{}", at + 1), "{backend}: its own ids");
        assert!(!key_ids.contains(id), "{backend}: not a key's id");
    }
    watcher.client.disconnect().await;

    for (hub, key, data) in [
        (&b, "k1", "again 1"),
        (&a, "k6", "to k6"),
        (&b, "k2", "again 2"),
    ] {
        hub.send(key, data).await.unwrap();
    }
    let mut resumed = on_a.open("/events", Some(&got[4].1)).await;
    assert_eq!(resumed.resume, Resume::Replayed(3), "{backend}");
    let (six, seven, eight) = (
        format!("{epoch}-6"),
        format!("{epoch}-7"),
        format!("{epoch}-8"),
    );
    expect(
        &mut resumed.events,
        &[("again 1", &six), ("to k6", &seven), ("again 2", &eight)],
    )
    .await;
    b.send("k3", "live").await.unwrap();
    expect(&mut resumed.events, &[("live", &format!("{epoch}-9"))]).await;

    // A key's id is not a place in every key's numbering, nor the other way round.
    let mut wrong = on_a.open("/events", Some(&key_ids[0])).await;
    assert_eq!(wrong.resume, Resume::Reset, "{backend}");
    let reset = next_event(&mut wrong.events).await;
    assert_eq!(
        (reset.event.as_str(), reset.id.as_str()),
        ("reset", format!("{epoch}-9").as_str()),
        "{backend}"
    );
    let wrong = on_b.open("/events/k1", Some(&got[0].1)).await;
    assert_eq!(wrong.resume, Resume::Reset, "{backend}");
}

// recent.

/// An entry without its epoch, which differs from hub to hub: its number, event type and data.
type Kept = (u64, Option<String>, String);

fn kept(entries: &[HistoryEntry]) -> Vec<Kept> {
    entries
        .iter()
        .map(|entry| {
            (
                split_id(entry.id()).1,
                entry.event().map(str::to_owned),
                entry.data().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn recent_is_the_same_on_both_backends_and_on_every_instance() {
    let redis = RedisServer::start().await;
    let in_process = recent_on(Backend::InProcess).await;
    let on_redis = recent_on(Backend::Redis(&redis)).await;
    assert_eq!(in_process, on_redis);
}

/// What `recent` returned, without epochs.
async fn recent_on(backend: Backend<'_>) -> Vec<Vec<Kept>> {
    let (a, b) = backend.hubs(Broadcast::builder().history(5), "news");
    let (ka, kb) = backend.keyed_pair(Broadcast::builder().history(3), LINGER, "orders");
    let without = backend.hub(Broadcast::builder(), "bare");
    ready(a.ready()).await;
    ready(b.ready()).await;
    ready(ka.ready()).await;
    ready(kb.ready()).await;
    ready(without.ready()).await;
    assert!(a.recent(10).await.unwrap().is_empty(), "{backend}");
    assert!(
        ka.recent("order-1", 10).await.unwrap().is_empty(),
        "{backend}"
    );

    let events = || {
        [
            Event::new().data("one"),
            Event::new().event("update").data("line 1\nline 2"),
            Event::new().id("own").data("with its own id"),
            Event::new().event("note").data(""),
            Event::new().data("five"),
            Event::new().event("update").data("six"),
            Event::new().comment("a comment").data("seven"),
            Event::new().data("eight"),
        ]
    };
    let mut ids = Vec::new();
    for (at, event) in events().into_iter().enumerate() {
        let hub = if at % 2 == 0 { &a } else { &b };
        ids.push(sent_id(&hub.send(event).await.unwrap()));
    }
    let mut seen = Vec::new();
    let on_a = a.recent(10).await.unwrap();
    assert_eq!(
        on_a,
        b.recent(10).await.unwrap(),
        "{backend}: on every instance"
    );
    let listed: Vec<&str> = on_a.iter().map(HistoryEntry::id).collect();
    assert_eq!(listed, ids[3..], "{backend}: the last five, oldest first");
    seen.push(kept(&on_a));
    let two = a.recent(2).await.unwrap();
    assert_eq!(two, on_a[3..], "{backend}: the newest two");
    seen.push(kept(&two));
    assert!(a.recent(0).await.unwrap().is_empty(), "{backend}");

    let mut key_ids = Vec::new();
    for (at, event) in events().into_iter().take(4).enumerate() {
        let hub = if at % 2 == 0 { &ka } else { &kb };
        key_ids.push(sent_id(&hub.send("order-1", event).await.unwrap()));
        hub.send("order-2", "busy").await.unwrap();
    }
    let on_ka = ka.recent("order-1", 10).await.unwrap();
    assert_eq!(
        on_ka,
        kb.recent("order-1", 10).await.unwrap(),
        "{backend}: on every instance"
    );
    let listed: Vec<&str> = on_ka.iter().map(HistoryEntry::id).collect();
    assert_eq!(listed, key_ids[1..], "{backend}: the key's last three");
    seen.push(kept(&on_ka));
    assert!(
        ka.recent("nobody", 10).await.unwrap().is_empty(),
        "{backend}"
    );

    without.send("not kept").await.unwrap();
    assert!(without.recent(10).await.unwrap().is_empty(), "{backend}");
    seen
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn history_bytes_bounds_recent_and_resume_alike_on_both_backends() {
    let redis = RedisServer::start().await;
    for backend in [Backend::InProcess, Backend::Redis(&redis)] {
        history_bytes_on(backend).await;
    }
}

async fn history_bytes_on(backend: Backend<'_>) {
    // Each event below is `data: 0123456789\nid: <16 hex digits>-<n>\n\n`: 41 bytes. Two fit
    // in 100 bytes, three do not.
    let template = Broadcast::builder().history(10).history_bytes(100);
    let (a, b) = backend.hubs(template, "news");
    ready(a.ready()).await;
    ready(b.ready()).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(sent_id(&a.send("0123456789").await.unwrap()));
    }
    let recent = recent_ids(&b, 10).await;
    let mut resumes = Vec::new();
    for (missed, cursor) in [(2, &ids[3]), (3, &ids[2])] {
        let (conn, mut events) = connection(Some(cursor));
        let resume = b.subscribe(&conn).await;
        let first = next_event(&mut events).await;
        resumes.push((missed, resume, first.event, first.id));
    }
    let expected = vec![
        (2, Resume::Replayed(2), "message".to_owned(), ids[4].clone()),
        (3, Resume::Reset, "reset".to_owned(), ids[5].clone()),
    ];
    assert_eq!(
        (recent, resumes),
        (ids[4..].to_vec(), expected),
        "{backend}: recent lists the events that fit in 100 bytes, and a browser resumes \
         when what it missed fits"
    );
}

// Linger.

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_keys_history_lingers_for_the_linger_time() {
    let redis = RedisServer::start().await;
    for backend in [Backend::InProcess, Backend::Redis(&redis)] {
        linger_on(backend).await;
    }
}

async fn linger_on(backend: Backend<'_>) {
    let linger = Duration::from_secs(120);
    let (a, b) = backend.keyed_pair(Broadcast::builder().history(10), linger, "orders");
    ready(a.ready()).await;
    ready(b.ready()).await;
    let created = sent_id(&a.send("order-1", "created").await.unwrap());
    // A key that has no event yet, known from a reset.
    let (conn, mut events) = connection(Some(FORGED));
    assert_eq!(
        b.subscribe("fresh", &conn).await,
        Resume::Reset,
        "{backend}"
    );
    assert_eq!(next_event(&mut events).await.event, "reset", "{backend}");
    drop((conn, events));
    // A check notices at once that "fresh" has no subscriber left.
    a.stats();

    match backend {
        Backend::Redis(redis) => {
            for key in [
                "{orders}:k:order-1",
                "{orders}:m:order-1",
                "{orders}:m:fresh",
            ] {
                assert_lifetime(redis, key, linger).await;
            }
        }
        Backend::InProcess => {
            tokio::time::pause();
            tokio::time::advance(linger - Duration::from_secs(1)).await;
            a.stats();
            for key in ["order-1", "fresh"] {
                assert!(a.key_stats(key).is_some(), "{backend}: {key} lingers");
            }
            tokio::time::advance(Duration::from_secs(2)).await;
            a.stats();
            for key in ["order-1", "fresh"] {
                assert!(a.key_stats(key).is_none(), "{backend}: {key} is gone");
            }
            // Its ids then get the reset, of a new numbering.
            let (conn, mut events) = connection(Some(&created));
            assert_eq!(a.subscribe("order-1", &conn).await, Resume::Reset);
            tokio::time::resume();
            let reset = next_event(&mut events).await;
            let (epoch, number) = split_id(&reset.id);
            assert_eq!(number, 0, "{backend}");
            assert_ne!(epoch, split_id(&created).0, "{backend}");
        }
    }
}

// Names.

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_name_taken_by_the_other_kind_of_hub_or_holding_braces_is_refused() {
    let redis = RedisServer::start().await;
    let template = || Broadcast::builder().history(10);
    let plain = |name: &str| template().redis(redis.client(), name).build();
    let keyed = |name: &str| -> KeyedBroadcast<String> {
        KeyedBroadcast::builder(template())
            .redis(redis.client(), name)
            .build()
    };

    // A plain hub first, then a keyed one of the same name.
    let rooms = plain("rooms");
    ready(rooms.ready()).await;
    let clash = keyed("rooms");
    let error = not_ready(clash.ready(), "a keyed hub under a plain hub's name").await;
    assert_names_the_kinds(&error);
    let send = clash.send("lobby", "x").await;
    assert!(matches!(send, Err(SendError::NotStored(_))), "{send:?}");
    rooms.send("still works").await.unwrap();

    // The other way round.
    let halls = keyed("halls");
    halls.send("lobby", "first").await.unwrap();
    let clash = plain("halls");
    let error = not_ready(clash.ready(), "a plain hub under a keyed hub's name").await;
    assert_names_the_kinds(&error);
    let send = clash.send("x").await;
    assert!(matches!(send, Err(SendError::NotStored(_))), "{send:?}");
    halls.send("lobby", "still works").await.unwrap();

    // Braces would change the hash tag that keeps a hub's keys in one slot.
    for name in ["a{b", "a}b", "{rooms}"] {
        let hub = plain(name);
        let error = not_ready(hub.ready(), "a name with a brace").await;
        assert!(error.to_string().contains(name), "{error}");
        let send = hub.send("x").await;
        assert!(matches!(send, Err(SendError::NotStored(_))), "{send:?}");
        let hub = keyed(name);
        let error = not_ready(hub.ready(), "a name with a brace").await;
        assert!(error.to_string().contains(name), "{error}");
    }
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert!(
        keys.iter()
            .all(|key| !key.starts_with("{a") && !key.starts_with("{{")),
        "nothing stored for a refused name: {keys:?}"
    );
}

/// Checks that a name refused for a hub of the other kind says so, naming both kinds.
fn assert_names_the_kinds(error: &BackendError) {
    let message = error.to_string();
    assert!(
        message.contains("plain") && message.contains("keyed"),
        "names the kinds: {message}"
    );
}

// Passwords.

/// A `redis-server` that wants a password, on a free loopback port; killed when dropped.
struct Guarded {
    port: u16,
    child: Child,
}

impl Guarded {
    async fn start(password: &str) -> Guarded {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", password])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let guarded = Guarded { port, child };
        let client = guarded.client(password);
        let up = async {
            loop {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    let ping: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                    if ping.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        timeout(BOUND, up)
            .await
            .expect("redis-server starts in time");
        guarded
    }

    fn client(&self, password: &str) -> redis::Client {
        redis::Client::open(format!("redis://:{password}@127.0.0.1:{}/", self.port))
            .expect("a valid url")
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks that `secret` shows nowhere in the error, nor in the errors it comes from.
fn assert_hides(error: &(dyn std::error::Error + 'static), secret: &str) {
    let mut texts = vec![error.to_string(), format!("{error:?}")];
    let mut source = error.source();
    while let Some(cause) = source {
        texts.push(cause.to_string());
        source = cause.source();
    }
    for text in texts {
        assert!(!text.contains(secret), "the password shows in {text:?}");
    }
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn a_wrong_password_is_reported_without_the_password() {
    const WRONG: &str = "n0t-the-pa55word";
    let redis = Guarded::start("the-right-pa55word").await;
    let template = Broadcast::builder()
        .history(10)
        .response_timeout(Duration::from_secs(1));
    let hub = template.clone().redis(redis.client(WRONG), "news").build();
    let error = not_ready(hub.ready(), "a wrong password").await;
    assert_hides(&error, WRONG);
    let send = timeout(BOUND, hub.send("x"))
        .await
        .expect("a send answers in time");
    let error = send.expect_err("a wrong password");
    assert!(matches!(error, SendError::NotStored(_)), "{error:?}");
    assert_hides(&error, WRONG);
    assert!(!format!("{hub:?}").contains(WRONG));

    let keyed: KeyedBroadcast<String> = KeyedBroadcast::builder(template)
        .redis(redis.client(WRONG), "orders")
        .build();
    let error = not_ready(keyed.ready(), "a wrong password").await;
    assert_hides(&error, WRONG);
    let error = keyed
        .send("order-1", "x")
        .await
        .expect_err("a wrong password");
    assert_hides(&error, WRONG);
}
