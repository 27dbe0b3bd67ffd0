//! Scale-out through Redis, next to the in-process hub in the same run. Both columns run the
//! same code on a `Broadcast`; only the builder line differs (`.redis(client, name)` or not):
//!
//! 1. latency: the time from a send on instance A to its delivery to a client of instance B
//!    (in-process there is one instance, so A and B are the same hub);
//! 2. fan-out: events/s delivered to 1,000 subscribers spread over two instances (in-process:
//!    one), the events sent on A;
//! 3. reconnect storm: 1,000 resumes on B from random cursors among the last 2,000 events, the
//!    hub keeping 1,000;
//! 4. concurrent senders: sends per second on one instance with 1, 16 and 256 tasks sending at
//!    once (no subscribers: the cost of the send itself); on Redis, concurrent sends share the
//!    hub's multiplexed connection, which pipelines them.
//!
//! Starts its own `redis-server` (Debian package `redis-server`) on a free loopback port. Run
//! with `cargo bench --bench redis --features redis -- [--quick]`; `--quick` runs smaller
//! counts. Without `--bench` (which `cargo bench` passes) it only says how to run it.

#[path = "../tests/common/mod.rs"]
#[allow(unreachable_pub)]
mod common;

use axum::{body::Body, Router};
use common::{read_events, Client, Events, Proto};
use futures_util::{future::join_all, StreamExt};
use http::Request;
use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use tokio::time::timeout;
use tower_eventsource::{redis, Broadcast, Connection, EventSourceService};

/// Events each hub keeps for resumes.
const HISTORY: usize = 1_000;
/// Events sent before the reconnect storm: twice the history, so that some cursors are too
/// old to resume.
const STORM_EVENTS: usize = 2 * HISTORY;
/// Concurrent senders in the senders scenario.
const SENDERS: [usize; 3] = [1, 16, 256];
/// The data of the events that tell that a client is subscribed; every reader skips them.
const WARM_UP: &str = "warm-up";
/// Upper bound of any wait: only reached when something is broken.
const WAIT: Duration = Duration::from_secs(60);

/// The counts of a run.
struct Plan {
    clients: usize,
    events: usize,
    latency_samples: usize,
    sends: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                clients: 200,
                events: 50,
                latency_samples: 200,
                sends: 2_048,
            }
        } else {
            Plan {
                clients: 1_000,
                events: 200,
                latency_samples: 1_000,
                sends: 20_480,
            }
        }
    }
}

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the hubs keep their events: the only thing that differs between the two columns.
#[derive(Clone)]
enum Backend {
    InProcess,
    Redis(redis::Client),
}

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::InProcess => "in-process",
            Backend::Redis(_) => "Redis",
        }
    }

    /// The instances of the hub `name` that `servers` servers would build: as many on Redis;
    /// in-process, one hub that every server (all in this process) shares.
    async fn instances(&self, name: &str, servers: usize) -> Vec<Broadcast> {
        let builder = Broadcast::builder().history(HISTORY);
        let hubs = match self {
            Backend::InProcess => vec![builder.build(); servers],
            Backend::Redis(client) => (0..servers)
                .map(|_| builder.clone().redis(client.clone(), name).build())
                .collect(),
        };
        for hub in &hubs {
            hub.ready().await.expect("the hub's backend can be reached");
        }
        hubs
    }
}

/// Serves `/events` on 127.0.0.1: each stream subscribes to `hub`.
async fn serve(hub: Broadcast) -> SocketAddr {
    let events = EventSourceService::new(move |conn: Connection, _req: Request<Body>| {
        let hub = hub.clone();
        async move {
            hub.subscribe(&conn).await;
        }
    })
    .buffer(4096);
    let app = Router::new().route_service("/events", events);
    // The system's largest backlog, so that the reconnect storm's connects are not dropped.
    let listener = tower_eventsource::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn open(addr: SocketAddr, last_event_id: Option<&str>) -> (Client, Events) {
    let mut client = Client::connect(addr, Proto::Http1).await;
    let mut request = client.request(http::Method::GET, "/events");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = client.send(request).await;
    (client, read_events(response.into_body()))
}

/// The next event, warm-ups included.
async fn next_any(events: &mut Events) -> eventsource_stream::Event {
    timeout(WAIT, events.next())
        .await
        .expect("an event in time")
        .expect("open")
        .expect("parses")
}

/// The next event that is not a warm-up.
async fn next(events: &mut Events) -> eventsource_stream::Event {
    loop {
        let event = next_any(events).await;
        if event.data != WARM_UP {
            return event;
        }
    }
}

async fn send(hub: &Broadcast, data: impl Into<String>) -> String {
    let sent = hub.send(data.into()).await.expect("sent");
    sent.id().expect("a hub with history gives ids").to_owned()
}

/// Sends warm-ups on `from` until `ready` reaches `clients`: every client is subscribed, and
/// every instance it is subscribed on delivers what `from` sends.
async fn until_live(from: &Broadcast, ready: &AtomicUsize, clients: usize) {
    let deadline = Instant::now() + WAIT;
    while ready.load(Ordering::SeqCst) < clients {
        assert!(Instant::now() < deadline, "the clients are not all live");
        send(from, WARM_UP).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `events` until a warm-up arrives, then counts it in `ready`.
async fn wait_live(events: &mut Events, ready: &AtomicUsize) {
    while next_any(events).await.data != WARM_UP {}
    ready.fetch_add(1, Ordering::SeqCst);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Send on `from`, receive on a client of `to`: p50 and p99 of the time between the two.
async fn latency(from: &Broadcast, to: SocketAddr, samples: usize) -> (Duration, Duration) {
    let (_client, mut events) = open(to, None).await;
    let ready = Arc::new(AtomicUsize::new(0));
    let live = tokio::spawn({
        let ready = Arc::clone(&ready);
        async move {
            wait_live(&mut events, &ready).await;
            events
        }
    });
    until_live(from, &ready, 1).await;
    let mut events = live.await.unwrap();
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let start = Instant::now();
        send(from, i.to_string()).await;
        let event = next(&mut events).await;
        times.push(start.elapsed());
        assert_eq!(event.data, i.to_string());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

/// `clients` subscribers spread over `servers`, `events` events sent on `from` at once:
/// deliveries/s until every client has every event.
async fn fan_out(from: &Broadcast, servers: &[SocketAddr], clients: usize, events: usize) -> f64 {
    let ready = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::with_capacity(clients);
    for i in 0..clients {
        let (client, mut stream) = open(servers[i % servers.len()], None).await;
        let ready = Arc::clone(&ready);
        readers.push(tokio::spawn(async move {
            let _client = client;
            wait_live(&mut stream, &ready).await;
            for _ in 0..events {
                next(&mut stream).await;
            }
        }));
    }
    until_live(from, &ready, clients).await;
    let start = Instant::now();
    // All at once, as a busy application sends: on Redis the sends share round trips.
    let texts: Vec<String> = (0..events)
        .map(|i| format!("event {i} with some text"))
        .collect();
    join_all(texts.iter().map(|text| send(from, text.as_str()))).await;
    for reader in readers {
        reader.await.unwrap();
    }
    (clients * events) as f64 / start.elapsed().as_secs_f64()
}

/// What a reconnect storm did, from B's counters.
struct Storm {
    /// Resumes that replayed what they missed.
    replays: u64,
    /// Of those, the ones that read it from the backend.
    from_backend: u64,
    /// Resumes answered with the reset event: their cursor was too old.
    resets: u64,
    /// Resumes closed because the backend could not be reached.
    unavailable: u64,
    first_event: (Duration, Duration),
    total: Duration,
}

/// `STORM_EVENTS` events sent on `from`, then `clients` resumes on `to` (served by `b`) from
/// random cursors among their ids, all at once: the time each takes to its first event.
async fn storm(from: &Broadcast, b: &Broadcast, to: SocketAddr, clients: usize) -> Storm {
    let (_watch, mut watch) = open(to, None).await;
    let ready = Arc::new(AtomicUsize::new(0));
    let live = tokio::spawn({
        let ready = Arc::clone(&ready);
        async move {
            wait_live(&mut watch, &ready).await;
            watch
        }
    });
    until_live(from, &ready, 1).await;
    let mut watch = live.await.unwrap();
    let mut ids = Vec::with_capacity(STORM_EVENTS);
    for i in 0..STORM_EVENTS {
        ids.push(send(from, i.to_string()).await);
    }
    // B has every event once its watcher has the last.
    let last = (STORM_EVENTS - 1).to_string();
    while next(&mut watch).await.data != last {}
    let before = b.stats();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut resumes = Vec::with_capacity(clients);
    let start = Instant::now();
    for _ in 0..clients {
        // xorshift: the same "random" cursors on every run.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Not the newest id: every resume has at least one event to replay.
        let cursor = ids[(seed % (ids.len() as u64 - 1)) as usize].clone();
        resumes.push(tokio::spawn(async move {
            let begin = Instant::now();
            let (_client, mut events) = open(to, Some(&cursor)).await;
            next(&mut events).await;
            begin.elapsed()
        }));
    }
    let mut first_events = Vec::with_capacity(clients);
    for resume in resumes {
        first_events.push(resume.await.unwrap());
    }
    let total = start.elapsed();
    first_events.sort();
    let after = b.stats();
    Storm {
        replays: after.replays - before.replays,
        from_backend: after.replays_from_backend - before.replays_from_backend,
        resets: after.resets - before.resets,
        unavailable: after.resumes_unavailable - before.resumes_unavailable,
        first_event: (
            percentile(&first_events, 0.5),
            percentile(&first_events, 0.99),
        ),
        total,
    }
}

/// `sends` sends on `hub` by `tasks` tasks at once: sends per second.
async fn concurrent_sends(hub: &Broadcast, tasks: usize, sends: usize) -> f64 {
    let each = sends / tasks;
    let start = Instant::now();
    let senders: Vec<_> = (0..tasks)
        .map(|task| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    send(&hub, format!("sender {task} event {i}")).await;
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    (each * tasks) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "redis benchmark: not run; run it with \
             `cargo bench --bench redis --features redis -- [--quick]`"
        );
        return;
    }
    let plan = Plan::new(args.iter().any(|a| a == "--quick"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(plan));
}

/// Starts `redis-server` on a free loopback port, without persistence, in `dir`.
async fn start_redis(dir: &std::path::Path) -> (RedisServer, redis::Client) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (Debian: apt-get install redis-server)");
    let server = RedisServer(server);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.get_multiplexed_async_connection().await.is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (server, client)
}

async fn run(plan: Plan) {
    let dir = std::env::temp_dir().join(format!("tower-eventsource-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_server, client) = start_redis(&dir).await;
    let version = Command::new("redis-server")
        .arg("--version")
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let backends = [Backend::InProcess, Backend::Redis(client)];
    let Plan {
        clients,
        events,
        latency_samples,
        sends,
    } = plan;

    for backend in &backends {
        let hubs = backend.instances("latency", 2).await;
        let (a, b) = (&hubs[0], &hubs[hubs.len() - 1]);
        let b_addr = serve(b.clone()).await;
        let (p50, p99) = latency(a, b_addr, latency_samples).await;
        println!(
            "latency, send on A to a client of B, {:<10}               p50 {p50:>9.1?}  p99 {p99:>9.1?}",
            backend.label()
        );
    }

    for backend in &backends {
        let hubs = backend.instances("fan-out", 2).await;
        let mut servers = Vec::with_capacity(hubs.len());
        for hub in &hubs {
            servers.push(serve(hub.clone()).await);
        }
        let rate = fan_out(&hubs[0], &servers, clients, events).await;
        println!(
            "fan-out, {clients} clients over {} instance(s), {events} events, {:<10} {rate:>12.0} deliveries/s",
            hubs.len(),
            backend.label()
        );
    }

    for backend in &backends {
        let hubs = backend.instances("storm", 2).await;
        let (a, b) = (&hubs[0], &hubs[hubs.len() - 1]);
        let b_addr = serve(b.clone()).await;
        let Storm {
            replays,
            from_backend,
            resets,
            unavailable,
            first_event: (p50, p99),
            total,
        } = storm(a, b, b_addr, clients).await;
        println!(
            "reconnect storm, {clients} resumes on B from random cursors among the last \
             {STORM_EVENTS} events (history {HISTORY}), {}: {replays} replayed \
             ({from_backend} read from the backend), {resets} resets, {unavailable} \
             unavailable; time to first event p50 {p50:.1?} p99 {p99:.1?}; all done in \
             {total:.1?}",
            backend.label(),
        );
    }

    for backend in &backends {
        for tasks in SENDERS {
            let hubs = backend.instances(&format!("senders-{tasks}"), 1).await;
            let rate = concurrent_sends(&hubs[0], tasks, sends).await;
            println!(
                "concurrent senders, {tasks:>3} tasks on one instance, {:<10}        {rate:>12.0} sends/s",
                backend.label()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
