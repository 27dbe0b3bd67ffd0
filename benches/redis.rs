//! Scale-out through Redis, next to the in-process hub in the same run: publish-to-delivery
//! latency from instance A to a client of instance B, events/s delivered to 1,000 subscribers
//! spread over two instances, and a reconnect storm (1,000 resumes from random recent
//! cursors). Starts its own `redis-server` (Debian package `redis-server`) on a free loopback
//! port. Run with `cargo bench --bench redis --features redis`.

#[path = "../tests/common/mod.rs"]
#[allow(unreachable_pub)]
mod common;

use axum::{body::Body, Router};
use common::{read_events, Client, Events, Proto};
use futures_util::StreamExt;
use http::Request;
use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tokio::net::TcpListener;
use tower_eventsource::{Broadcast, Connection, EventSourceService, RedisBroadcast};

const CLIENTS: usize = 1_000;
const EVENTS: usize = 200;
const LATENCY_SAMPLES: usize = 1_000;

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone)]
enum Hub {
    Local(Broadcast),
    Redis(RedisBroadcast),
}

impl Hub {
    async fn publish(&self, text: &str) {
        match self {
            Hub::Local(hub) => {
                hub.send(text).expect("valid event");
            }
            Hub::Redis(hub) => {
                hub.publish(text).await.expect("published");
            }
        }
    }
}

async fn serve(hub: Hub) -> SocketAddr {
    let events = EventSourceService::new(move |conn: Connection, _req: Request<Body>| {
        let hub = hub.clone();
        async move {
            match &hub {
                Hub::Local(hub) => {
                    hub.subscribe(&conn);
                }
                Hub::Redis(hub) => {
                    hub.subscribe(&conn).await;
                }
            }
        }
    })
    .buffer(4096);
    let app = Router::new().route_service("/events", events);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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

async fn next(events: &mut Events) -> eventsource_stream::Event {
    events.next().await.expect("open").expect("parses")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Publish on `from`, receive on a client of `to`: p50 and p99 of the time between the two.
async fn latency(from: &Hub, to: SocketAddr) -> (Duration, Duration) {
    let (_client, mut events) = open(to, None).await;
    // Subscribed once a first event arrives.
    from.publish("warm-up").await;
    next(&mut events).await;
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES {
        let start = Instant::now();
        from.publish(&i.to_string()).await;
        let event = next(&mut events).await;
        samples.push(start.elapsed());
        assert_eq!(event.data, i.to_string());
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// `CLIENTS` subscribers over `servers`, `EVENTS` events published on `from`: deliveries/s
/// until every client has every event.
async fn throughput(from: &Hub, servers: &[SocketAddr]) -> f64 {
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(open(servers[i % servers.len()], None).await);
    }
    from.publish("warm-up").await;
    let mut readers = Vec::new();
    for (client, mut events) in clients {
        readers.push(tokio::spawn(async move {
            let _client = client;
            assert_eq!(next(&mut events).await.data, "warm-up");
            for _ in 0..EVENTS {
                next(&mut events).await;
            }
        }));
    }
    let start = Instant::now();
    for i in 0..EVENTS {
        from.publish(&format!("event {i} with some text")).await;
    }
    for reader in readers {
        reader.await.unwrap();
    }
    (CLIENTS * EVENTS) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("tower-eventsource-bench-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
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
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (Debian: apt-get install redis-server)");
    let _server = RedisServer(server);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.get_multiplexed_async_connection().await.is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let version = Command::new("redis-server")
        .arg("--version")
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&version.stdout).trim());

    let builder = |name: &str| RedisBroadcast::builder(client.clone(), name).history(1000);
    let local = Hub::Local(Broadcast::builder().history(1000).build());
    let local_addr = serve(local.clone()).await;

    // Latency.
    let a = Hub::Redis(builder("latency").build().await.unwrap());
    let b = Hub::Redis(builder("latency").build().await.unwrap());
    let b_addr = serve(b.clone()).await;
    let (p50, p99) = latency(&local, local_addr).await;
    println!("latency, in-process hub, send to client:           p50 {p50:>9.1?}  p99 {p99:>9.1?}");
    let (p50, p99) = latency(&a, b_addr).await;
    println!("latency, Redis, publish on A to a client of B:     p50 {p50:>9.1?}  p99 {p99:>9.1?}");

    // Throughput.
    let rate = throughput(&local, &[local_addr]).await;
    println!("throughput, in-process hub, {CLIENTS} clients:          {rate:>12.0} deliveries/s");
    let a = builder("throughput").build().await.unwrap();
    let b = builder("throughput").build().await.unwrap();
    let servers = [
        serve(Hub::Redis(a.clone())).await,
        serve(Hub::Redis(b.clone())).await,
    ];
    let rate = throughput(&Hub::Redis(a.clone()), &servers).await;
    println!("throughput, Redis, {CLIENTS} clients over 2 instances:  {rate:>12.0} deliveries/s");

    // Reconnect storm: ids of the last 2,000 events; B keeps 1,000 of them.
    let a = builder("storm").build().await.unwrap();
    let b = builder("storm").build().await.unwrap();
    let b_addr = serve(Hub::Redis(b.clone())).await;
    let (_watch, mut watch) = open(b_addr, None).await;
    let mut ids = Vec::new();
    for i in 0..2_000 {
        ids.push(a.publish(i.to_string()).await.unwrap());
    }
    loop {
        if next(&mut watch).await.data == "1999" {
            break;
        }
    }
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut storm = Vec::new();
    let start = Instant::now();
    for _ in 0..CLIENTS {
        // xorshift: the same "random" cursors on every run.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Not the newest id: every resume has at least one event to replay.
        let cursor = ids[(seed % (ids.len() as u64 - 1)) as usize].clone();
        storm.push(tokio::spawn(async move {
            let begin = Instant::now();
            let (_client, mut events) = open(b_addr, Some(&cursor)).await;
            next(&mut events).await;
            begin.elapsed()
        }));
    }
    let mut first_bytes = Vec::new();
    for task in storm {
        first_bytes.push(task.await.unwrap());
    }
    let total = start.elapsed();
    first_bytes.sort();
    let stats = b.stats();
    println!(
        "reconnect storm, {CLIENTS} resumes on B from random cursors among the last 2,000 events (B keeps 1,000): \
         {} from local history ({:.0}%), {} from Redis, {} resets, {} Redis calls; \
         time to first event p50 {:.1?} p99 {:.1?}; all done in {total:.1?}",
        stats.resumed_locally,
        100.0 * stats.resumed_locally as f64 / CLIENTS as f64,
        stats.resumed_from_redis,
        stats.local.resets,
        stats.resume_calls,
        percentile(&first_bytes, 0.5),
        percentile(&first_bytes, 0.99),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
