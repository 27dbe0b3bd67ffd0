//! Load benchmark of tower-eventsource against axum's `Sse` and a raw hyper body, over real
//! sockets on 127.0.0.1. Run with `cargo bench --bench load -- [--quick]`; BENCHMARKS.md
//! describes the scenarios and holds the results. `cargo bench` passes `--bench`; without it
//! (as under `cargo test`) the binary only says how to run it and exits.
//!
//! Each run starts the server variant as a child process of this binary (`--serve VARIANT`),
//! pinned to the second CPU, with a current-thread tokio runtime and hyper's HTTP/1 server with
//! default settings (and `TCP_NODELAY`); this process is the load client, a current-thread
//! runtime pinned to the first CPU. Server and client read the same monotonic clock, so event
//! timestamps cross the process boundary. Every count is bounded, every wait has a timeout,
//! the whole run has a deadline, and a child exits when its standard input closes.
//!
//! Variants: `tower-eventsource` (`EventSourceService` with its defaults, plus `Broadcast` for
//! fan-out), `axum-sse` (`axum::response::Sse` with its defaults, over a tokio mpsc receiver,
//! or a tokio broadcast receiver for fan-out), `raw-hyper` (a hand-written body over a tokio
//! mpsc of encoded events, one frame per event), and for idle memory `hyper-baseline` (a body
//! that never sends, so what hyper itself holds per stream).
//!
//! Scenarios, each repeated (5 times, 3 with `--quick`) and reported as medians:
//!
//! 1. throughput: one connection, 1,000,000 data-only events of 32 bytes of data (40 bytes on
//!    the wire), pushed as fast as the connection takes them; events per second from the first
//!    body byte to the last event, read once through hyper's client and once straight from the
//!    socket (a reader cheaper than any server, so that figure is the server's);
//! 2. fan-out: K clients (1,000 and 10,000), 100 events broadcast to all of them back to back,
//!    yielding to the scheduler between events; deliveries per second from the first broadcast
//!    to the last receipt, and the clients' completion times;
//! 3. idle: 10,000 open streams with nothing to send; the server's resident memory per stream;
//!    then the same over the user's tokio `broadcast` channel of scenario 5, axum's `Sse` and our
//!    `EventSource::stream` each over every client's `BroadcastStream`;
//! 4. latency: 1,000 clients, 100 events per second for 3 seconds; push-to-receive time;
//!    then the same over the user's tokio `broadcast` channel of scenario 5, axum's `Sse` and
//!    our `EventSource::stream` each over every client's `BroadcastStream`;
//! 5. the user's own stream: as fan-out, but the events go into a tokio `broadcast` channel of
//!    the user's, and reach the clients through axum's `Sse` over each client's
//!    `BroadcastStream`, our `EventSource::stream` of the same (the body polls it), our
//!    per-client `Connection::forward` of the same, or one `Broadcast::forward` of one
//!    receiver into a hub that the clients subscribe to.
//!
//! Other options: `--smoke` (small counts, once: checks that everything works), `--only
//! throughput|fan-out|idle|latency|stream`, `--variant NAME`, `--feed polled|per-client|hub`
//! (scenario 5), `--repeats N`, `--events N` (throughput), `--prometheus` (built with
//! `--features metrics`: the server installs `metrics-exporter-prometheus`'s recorder before
//! it builds anything, so the library's metrics are recorded).

use axum::{
    response::{sse, Sse},
    routing::get,
    Router,
};
use bytes::Bytes;
use futures_util::stream::{self, Stream};
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use std::{
    collections::BTreeMap,
    convert::Infallible,
    error::Error,
    fmt::Write as _,
    pin::Pin,
    process::Stdio,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines},
    net::{TcpListener, TcpStream},
    process::{Child, ChildStdin, ChildStdout, Command},
    sync::{broadcast, mpsc, watch, Semaphore},
    time::timeout,
};
use tokio_stream::{wrappers::BroadcastStream, StreamExt as _};
use tower_eventsource::{Broadcast, Connection, Event, EventSource, EventSourceService};

type BoxError = Box<dyn Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// The data of every throughput event: 32 bytes.
const DATA_32: &str = "0123456789abcdef0123456789abcdef";
/// The same event encoded: `data: ` + 32 bytes + a blank line, 40 bytes.
const WIRE_32: &[u8] = b"data: 0123456789abcdef0123456789abcdef\n\n";
/// Events a throughput connection may queue: tower-eventsource's default buffer, for every
/// variant.
const STREAM_BUFFER: usize = 256;
/// Events a fan-out subscriber may queue: more than a fan-out run sends, so none is lost.
const HUB_BUFFER: usize = 128;
/// The longest a server child lives.
const CHILD_LIFETIME: Duration = Duration::from_secs(300);

/// The servers compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    /// tower-eventsource: `EventSourceService`, with `Broadcast` for fan-out.
    Ours,
    /// axum 0.8: `Sse` over a tokio mpsc receiver, or a tokio broadcast receiver for fan-out.
    Axum,
    /// A hand-written body over a tokio mpsc of encoded events, one frame per event.
    Raw,
    /// A body that never yields anything: what hyper itself holds per open stream.
    Baseline,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Ours => "tower-eventsource",
            Variant::Axum => "axum-sse",
            Variant::Raw => "raw-hyper",
            Variant::Baseline => "hyper-baseline",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [
            Variant::Ours,
            Variant::Axum,
            Variant::Raw,
            Variant::Baseline,
        ]
        .into_iter()
        .find(|v| v.name() == name)
    }
}

const COMPARED: [Variant; 3] = [Variant::Ours, Variant::Axum, Variant::Raw];

/// How the user's own channel reaches the clients, in scenario 5 (and the second half of
/// scenarios 3 and 4, polled only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    /// Each client's response body polls its own receiver: `EventSource::stream` for ours,
    /// `Sse::new` over a `BroadcastStream` for axum.
    Polled,
    /// Each client's handler reads its own receiver into the connection's queue:
    /// `Connection::forward`; ours only.
    PerClient,
    /// One task reads one receiver into a `Broadcast` (`Broadcast::forward`) that every client
    /// subscribes to; ours only.
    Hub,
}

impl Feed {
    fn name(self) -> &'static str {
        match self {
            Feed::Polled => "polled",
            Feed::PerClient => "per-client",
            Feed::Hub => "hub",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Feed::Polled, Feed::PerClient, Feed::Hub]
            .into_iter()
            .find(|f| f.name() == name)
    }
}

fn main() -> Result<()> {
    raise_fd_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|at| args.get(at + 1))
            .map(String::as_str)
    };
    if let Some(variant) = arg("--serve") {
        let variant = Variant::parse(variant).ok_or("unknown variant")?;
        let events = arg("--events").map(str::parse).transpose()?;
        let feed = arg("--feed")
            .map(|feed| Feed::parse(feed).ok_or("unknown feed"))
            .transpose()?;
        std::thread::spawn(|| {
            std::thread::sleep(CHILD_LIFETIME);
            eprintln!("server child: lifetime over, exiting");
            std::process::exit(3);
        });
        if let Some(cpu) = arg("--cpu") {
            pin_to_cpu(cpu.parse()?);
        }
        if args.iter().any(|a| a == "--prometheus") {
            install_prometheus()?;
        }
        return runtime()?.block_on(serve(variant, events, feed));
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("load benchmark: not run; run it with `cargo bench --bench load -- [OPTIONS]`");
        return Ok(());
    }
    let mut plan = if args.iter().any(|a| a == "--smoke") {
        Plan::smoke()
    } else {
        Plan::new(args.iter().any(|a| a == "--quick"))
    };
    plan.only = arg("--only").map(str::to_owned);
    if let Some(variant) = arg("--variant") {
        plan.variant = Some(Variant::parse(variant).ok_or("unknown variant")?);
    }
    if let Some(feed) = arg("--feed") {
        plan.feed = Some(Feed::parse(feed).ok_or("unknown feed")?);
    }
    if let Some(repeats) = arg("--repeats") {
        plan.repeats = repeats.parse()?;
    }
    if let Some(events) = arg("--events") {
        plan.throughput_events = events.parse()?;
    }
    if args.iter().any(|a| a == "--prometheus") {
        // Checked here too, so that a build without the feature fails before it starts.
        if cfg!(not(feature = "metrics")) {
            return Err("--prometheus needs --features metrics".into());
        }
        PROMETHEUS.store(true, Ordering::Relaxed);
    }
    let cpus = allowed_cpus();
    plan.cpus = cpus.len();
    // The client runs on the first CPU and the server on the second, when there are two.
    if let [client, server, ..] = cpus[..] {
        pin_to_cpu(client);
        plan.server_cpu = Some(server);
    }
    let deadline = plan.deadline;
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("benchmark: over its time limit, exiting");
        std::process::exit(2);
    });
    runtime()?.block_on(run(plan))
}

/// Whether the server children record the library's metrics with the Prometheus exporter.
static PROMETHEUS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the Prometheus exporter's recorder (nothing renders it: the cost measured is the
/// recording's).
fn install_prometheus() -> Result<()> {
    #[cfg(feature = "metrics")]
    {
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
        Ok(())
    }
    #[cfg(not(feature = "metrics"))]
    Err("--prometheus needs --features metrics".into())
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// What one invocation runs.
#[derive(Clone)]
struct Plan {
    /// Only this scenario (`throughput`, `fan-out`, `idle`, `latency` or `stream`), from `--only`.
    only: Option<String>,
    /// Only this variant, from `--variant`.
    variant: Option<Variant>,
    /// Only this way of feeding the user's stream (scenario 5), from `--feed`.
    feed: Option<Feed>,
    cpus: usize,
    /// The CPU the server runs on; the client runs on another.
    server_cpu: Option<usize>,
    repeats: usize,
    throughput_events: u64,
    fan_out_clients: [usize; 2],
    fan_out_events: usize,
    idle_streams: usize,
    latency_clients: usize,
    latency_events: usize,
    latency_period: Duration,
    deadline: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        Plan {
            only: None,
            variant: None,
            feed: None,
            cpus: 0,
            server_cpu: None,
            repeats: if quick { 3 } else { 5 },
            throughput_events: 1_000_000,
            fan_out_clients: [1_000, 10_000],
            fan_out_events: 100,
            idle_streams: 10_000,
            latency_clients: 1_000,
            latency_events: 300,
            latency_period: Duration::from_millis(10),
            deadline: Duration::from_secs(if quick { 240 } else { 900 }),
        }
    }

    /// Small counts, once: checks that every part works end to end.
    fn smoke() -> Self {
        Plan {
            only: None,
            variant: None,
            feed: None,
            cpus: 0,
            server_cpu: None,
            repeats: 1,
            throughput_events: 10_000,
            fan_out_clients: [10, 200],
            fan_out_events: 100,
            idle_streams: 200,
            latency_clients: 50,
            latency_events: 30,
            latency_period: Duration::from_millis(10),
            deadline: Duration::from_secs(60),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server side (the child process)
// ---------------------------------------------------------------------------------------------

/// Serves one variant until standard input closes. With `events`, every request gets a stream
/// of that many events pushed as fast as it takes them; with `feed`, the events the parent
/// asks for go into a tokio broadcast channel that reaches the clients that way; otherwise
/// every request subscribes to a hub that the parent drives through standard input.
async fn serve(variant: Variant, events: Option<u64>, feed: Option<Feed>) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    if let Some(feed) = feed {
        let hub = serve_stream(variant, feed, listener)?;
        return control(hub).await;
    }
    let hub = Hub::new(variant);
    match (variant, events) {
        (Variant::Ours, Some(n)) => {
            let service = EventSourceService::new(move |conn: Connection, _: Request<Incoming>| {
                push_loop(conn, n)
            });
            tokio::spawn(accept(
                listener.local_addr()?,
                listener,
                TowerToHyperService::new(service),
            ));
        }
        (Variant::Axum, Some(n)) => {
            let router = Router::new().route(
                "/",
                get(move || async move {
                    let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
                    tokio::spawn(async move {
                        for _ in 0..n {
                            if tx.send(sse::Event::default().data(DATA_32)).await.is_err() {
                                return;
                            }
                        }
                    });
                    Sse::new(stream::poll_fn(move |cx| {
                        rx.poll_recv(cx).map(|event| event.map(Ok::<_, Infallible>))
                    }))
                }),
            );
            tokio::spawn(accept(
                listener.local_addr()?,
                listener,
                TowerToHyperService::new(router),
            ));
        }
        (Variant::Raw, Some(n)) => {
            let service = hyper::service::service_fn(move |_: Request<Incoming>| async move {
                let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                tokio::spawn(async move {
                    for _ in 0..n {
                        if tx.send(Bytes::from_static(WIRE_32)).await.is_err() {
                            return;
                        }
                    }
                });
                Ok::<_, Infallible>(event_stream(RawBody { rx }))
            });
            tokio::spawn(accept(listener.local_addr()?, listener, service));
        }
        (Variant::Baseline, Some(_)) => return Err("the baseline only holds idle streams".into()),
        (_, None) => hub.serve(listener)?,
    }
    control(hub).await
}

/// Scenario 5: serves the user's own channel with `feed`; the returned hub sends into it.
fn serve_stream(variant: Variant, feed: Feed, listener: TcpListener) -> Result<Hub> {
    let addr = listener.local_addr()?;
    let (source, _) = broadcast::channel::<Arc<str>>(HUB_BUFFER);
    let mut fed = None;
    match (variant, feed) {
        (Variant::Axum, Feed::Polled) => {
            let source = source.clone();
            let router = Router::new().route(
                "/",
                get(move || {
                    let events = BroadcastStream::new(source.subscribe()).filter_map(|data| {
                        let data: Arc<str> = data.ok()?;
                        Some(Ok::<_, Infallible>(sse::Event::default().data(&*data)))
                    });
                    async move { Sse::new(events) }
                }),
            );
            tokio::spawn(accept(addr, listener, TowerToHyperService::new(router)));
        }
        (Variant::Ours, Feed::Polled) => {
            // The same handler as axum's above, with `EventSource::stream` (default settings)
            // in place of `Sse::new`.
            let source = source.clone();
            let events = EventSource::new();
            let router = Router::new().route(
                "/",
                get(move |headers: HeaderMap| {
                    let items = BroadcastStream::new(source.subscribe())
                        .filter_map(|data| data.ok().map(|data: Arc<str>| Event::from(&*data)));
                    let response = events.stream(&headers, items);
                    async move { response }
                }),
            );
            tokio::spawn(accept(addr, listener, TowerToHyperService::new(router)));
        }
        (Variant::Ours, Feed::PerClient) => {
            let source = source.clone();
            let service = EventSourceService::new(move |conn: Connection, _: Request<Incoming>| {
                let events = BroadcastStream::new(source.subscribe())
                    .filter_map(|data| data.ok().map(|data: Arc<str>| Event::from(&*data)));
                async move {
                    let _ = conn.forward(events).await;
                }
            })
            .buffer(HUB_BUFFER);
            tokio::spawn(accept(addr, listener, TowerToHyperService::new(service)));
        }
        (Variant::Ours, Feed::Hub) => {
            let hub = Broadcast::new();
            let events = BroadcastStream::new(source.subscribe())
                .filter_map(|data| data.ok().map(|data: Arc<str>| Event::from(&*data)));
            tokio::spawn({
                let hub = hub.clone();
                async move { hub.forward(events).await }
            });
            let service = EventSourceService::new({
                let hub = hub.clone();
                move |conn: Connection, _: Request<Incoming>| {
                    let hub = hub.clone();
                    async move {
                        hub.subscribe(&conn).await;
                    }
                }
            })
            .buffer(HUB_BUFFER);
            tokio::spawn(accept(addr, listener, TowerToHyperService::new(service)));
            fed = Some(hub);
        }
        _ => return Err(format!("no {} feed for {}", feed.name(), variant.name()).into()),
    }
    Ok(Hub::Stream { source, fed })
}

async fn push_loop(conn: Connection, events: u64) {
    for _ in 0..events {
        if conn.push(DATA_32).await.is_err() {
            return;
        }
    }
}

/// Announces the port on standard output, then serves every connection with hyper's HTTP/1
/// server and default settings.
async fn accept<S, B>(addr: std::net::SocketAddr, listener: TcpListener, service: S)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    println!("port {}", addr.port());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                eprintln!("server child: accept: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let _ = connection.await;
        });
    }
}

/// The fan-out side of each variant: subscribers, and a way to send them one event.
#[derive(Clone)]
enum Hub {
    Ours(Broadcast),
    Axum(broadcast::Sender<Arc<str>>),
    Raw(Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>),
    Baseline(Arc<AtomicUsize>),
    /// The user's own channel (scenario 5), and the hub it feeds, if any.
    Stream {
        source: broadcast::Sender<Arc<str>>,
        fed: Option<Broadcast>,
    },
}

impl Hub {
    fn new(variant: Variant) -> Self {
        match variant {
            Variant::Ours => Hub::Ours(Broadcast::new()),
            Variant::Axum => Hub::Axum(broadcast::channel(HUB_BUFFER).0),
            Variant::Raw => Hub::Raw(Arc::default()),
            Variant::Baseline => Hub::Baseline(Arc::default()),
        }
    }

    /// Serves streams that subscribe to this hub.
    fn serve(&self, listener: TcpListener) -> Result<()> {
        let addr = listener.local_addr()?;
        match self.clone() {
            Hub::Ours(hub) => {
                let service =
                    EventSourceService::new(move |conn: Connection, _: Request<Incoming>| {
                        let hub = hub.clone();
                        async move {
                            hub.subscribe(&conn).await;
                        }
                    })
                    .buffer(HUB_BUFFER);
                tokio::spawn(accept(addr, listener, TowerToHyperService::new(service)));
            }
            Hub::Axum(tx) => {
                let router = Router::new().route(
                    "/",
                    get(move || {
                        let rx = tx.subscribe();
                        async move { Sse::new(receiver_stream(rx)) }
                    }),
                );
                tokio::spawn(accept(addr, listener, TowerToHyperService::new(router)));
            }
            Hub::Raw(senders) => {
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let (tx, rx) = mpsc::channel(HUB_BUFFER);
                    senders.lock().expect("not poisoned").push(tx);
                    async move { Ok::<_, Infallible>(event_stream(RawBody { rx })) }
                });
                tokio::spawn(accept(addr, listener, service));
            }
            Hub::Stream { .. } => return Err("serve_stream serves the user's stream".into()),
            Hub::Baseline(count) => {
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    count.fetch_add(1, Ordering::Relaxed);
                    async move { Ok::<_, Infallible>(event_stream(Silent)) }
                });
                tokio::spawn(accept(addr, listener, service));
            }
        }
        Ok(())
    }

    fn subscribers(&self) -> usize {
        match self {
            Hub::Ours(hub) => hub.stats().subscribers,
            Hub::Axum(tx) => tx.receiver_count(),
            Hub::Raw(senders) => senders.lock().expect("not poisoned").len(),
            Hub::Baseline(count) => count.load(Ordering::Relaxed),
            Hub::Stream { fed: Some(hub), .. } => hub.stats().subscribers,
            Hub::Stream { source, fed: None } => source.receiver_count(),
        }
    }

    async fn send(&self, data: &str) {
        match self {
            Hub::Ours(hub) => {
                let _ = hub.send(data).await;
            }
            Hub::Axum(tx) => {
                let _ = tx.send(Arc::from(data));
            }
            Hub::Raw(senders) => {
                let frame = Bytes::from(format!("data: {data}\n\n"));
                senders.lock().expect("not poisoned").retain(|tx| {
                    !matches!(
                        tx.try_send(frame.clone()),
                        Err(mpsc::error::TrySendError::Closed(_))
                    )
                });
            }
            Hub::Baseline(_) => {}
            Hub::Stream { source, .. } => {
                let _ = source.send(Arc::from(data));
            }
        }
    }
}

/// axum's usual fan-out stream: every subscriber builds its own `Event` from the message.
fn receiver_stream(
    rx: broadcast::Receiver<Arc<str>>,
) -> impl Stream<Item = Result<sse::Event, Infallible>> + Send {
    stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(data) => return Some((Ok(sse::Event::default().data(&*data)), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

fn event_stream<B>(body: B) -> Response<B> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// The raw ceiling: each encoded event is one body frame.
struct RawBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|frame| frame.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// A stream that stays open and never sends anything.
struct Silent;

impl Body for Silent {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

/// Answers the parent's commands, one a line, until standard input closes:
///
/// - `broadcast K M PERIOD_US`: once K clients have subscribed, sends M events (each carrying
///   its send time), one per scheduler turn or one per period; answers `done FIRST_NS`;
/// - `rss`: answers `rss KIB`, this process's resident memory.
async fn control(hub: Hub) -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["rss"] => format!("rss {}", rss_kib()?),
            ["broadcast", clients, events, period_us] => {
                let clients: usize = clients.parse()?;
                let events: usize = events.parse()?;
                let period = Duration::from_micros(period_us.parse()?);
                let since = Instant::now();
                while hub.subscribers() < clients {
                    if since.elapsed() > Duration::from_secs(60) {
                        return Err(format!("only {} subscribers", hub.subscribers()).into());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                format!("done {}", broadcast_events(&hub, events, period).await)
            }
            _ => return Err(format!("unknown command {line:?}").into()),
        };
        stdout.write_all(format!("{reply}\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    Ok(())
}

/// Sends `events` events, each with its send time and number as 32 bytes of data, and returns
/// the time of the first.
async fn broadcast_events(hub: &Hub, events: usize, period: Duration) -> u64 {
    let mut ticks = tokio::time::interval(period.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first = now_ns();
    let mut data = String::with_capacity(32);
    for seq in 0..events {
        if period.is_zero() {
            tokio::task::yield_now().await;
        } else {
            ticks.tick().await;
        }
        data.clear();
        let _ = write!(data, "{:020} {seq:011}", now_ns());
        hub.send(&data).await;
    }
    first
}

// ---------------------------------------------------------------------------------------------
// Client side (this process)
// ---------------------------------------------------------------------------------------------

/// A server child and its command pipe.
struct Server {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    port: u16,
}

impl Server {
    async fn start(
        variant: Variant,
        events: Option<u64>,
        feed: Option<Feed>,
        cpu: Option<usize>,
    ) -> Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["--serve", variant.name()]);
        if let Some(feed) = feed {
            command.args(["--feed", feed.name()]);
        }
        if let Some(cpu) = cpu {
            command.args(["--cpu", &cpu.to_string()]);
        }
        if let Some(events) = events {
            command.args(["--events", &events.to_string()]);
        }
        if PROMETHEUS.load(Ordering::Relaxed) {
            command.arg("--prometheus");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let first = timeout(Duration::from_secs(10), lines.next_line())
            .await??
            .ok_or("server child exited")?;
        let port = first
            .strip_prefix("port ")
            .ok_or("server child did not announce its port")?
            .parse()?;
        Ok(Server {
            child,
            stdin,
            lines,
            port,
        })
    }

    async fn command(&mut self, command: &str, limit: Duration) -> Result<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        Ok(timeout(limit, self.lines.next_line())
            .await??
            .ok_or("server child exited")?)
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// One open event stream, and the handle that keeps its connection.
struct Client {
    body: Incoming,
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

async fn open(port: u16) -> Result<Client> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let request = Request::get("/")
        .header(header::HOST, "127.0.0.1")
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()).into());
    }
    Ok(Client {
        body: response.into_body(),
        sender,
    })
}

/// Counts events in a byte stream split anywhere: a blank line ends an event when the lines
/// before it include a `data` line (so keep-alive comments do not count).
#[derive(Default)]
struct EventCounter {
    events: u64,
    at_line_start: bool,
    has_data: bool,
    started: bool,
}

impl EventCounter {
    fn feed(&mut self, bytes: &[u8]) {
        if !self.started {
            self.started = true;
            self.at_line_start = true;
        }
        let mut at = 0;
        loop {
            if self.at_line_start {
                let Some(&first) = bytes.get(at) else { return };
                if first == b'\n' {
                    self.events += u64::from(self.has_data);
                    self.has_data = false;
                    at += 1;
                    continue;
                }
                self.has_data |= first == b'd';
                self.at_line_start = false;
            }
            match memchr::memchr(b'\n', &bytes[at..]) {
                Some(end) => {
                    at += end + 1;
                    self.at_line_start = true;
                }
                None => return,
            }
        }
    }
}

/// Reads every send time (the first 20 digits of each `data: ` line) from a byte stream split
/// anywhere.
#[derive(Default)]
struct SendTimes {
    pending: Vec<u8>,
}

impl SendTimes {
    fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(u64)) {
        self.pending.extend_from_slice(bytes);
        let mut done = 0;
        while let Some(end) = memchr::memmem::find(&self.pending[done..], b"\n\n") {
            let event = &self.pending[done..done + end];
            for line in event.split(|b| *b == b'\n') {
                if let Some(digits) = line.strip_prefix(b"data: ").and_then(|d| d.get(..20)) {
                    if let Some(sent) = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|d| d.parse().ok())
                    {
                        each(sent);
                    }
                }
            }
            done += end + 2;
        }
        self.pending.drain(..done);
    }
}

async fn run(plan: Plan) -> Result<()> {
    let started = Instant::now();
    println!(
        "tower-eventsource load benchmark: {} repeats, {} CPUs, {}",
        plan.repeats,
        plan.cpus,
        cpu_model()
    );
    let runs = |scenario: &str| plan.only.as_deref().is_none_or(|only| only == scenario);
    let compared: Vec<Variant> = COMPARED
        .into_iter()
        .filter(|v| plan.variant.is_none_or(|only| only == *v))
        .collect();
    let mut results = Results::default();
    for repeat in 1..=plan.repeats {
        eprintln!("repeat {repeat}/{}", plan.repeats);
        let readers = [
            (Reader::Hyper, "hyper client"),
            (Reader::Socket, "socket reader"),
        ];
        for (reader, client) in readers.into_iter().filter(|_| runs("throughput")) {
            for &variant in &compared {
                let run = throughput(variant, reader, &plan).await?;
                eprintln!(
                    "  throughput, {client:13} {:18} {:>10.0} events/s {:>7.1} MB/s  \
                     CPU server {:>3.0}% client {:>3.0}%",
                    variant.name(),
                    run.events_per_s,
                    run.mb_per_s,
                    run.cpu.0,
                    run.cpu.1
                );
                let scenario = format!(
                    "1. throughput, 1 connection, {} events, {client}",
                    plan.throughput_events
                );
                results.add(&scenario, "events/s", variant, run.events_per_s);
                results.add(&scenario, "MB/s", variant, run.mb_per_s);
                results.add(&scenario, "server CPU %", variant, run.cpu.0);
                results.add(&scenario, "client CPU %", variant, run.cpu.1);
            }
        }
        for clients in plan.fan_out_clients.into_iter().filter(|_| runs("fan-out")) {
            for &variant in &compared {
                let fan = fan_out(variant, clients, None, &plan).await?;
                eprintln!(
                    "  fan-out {clients:>6} {:18} {:>10.0} deliveries/s  p50 {:>7.1} ms  p99 {:>7.1} ms  \
                     CPU server {:>3.0}% client {:>3.0}%",
                    variant.name(),
                    fan.deliveries_per_s,
                    fan.p50_ms,
                    fan.p99_ms,
                    fan.cpu.0,
                    fan.cpu.1
                );
                let scenario = format!(
                    "2. fan-out, {clients} clients x {} events",
                    plan.fan_out_events
                );
                results.add(&scenario, "deliveries/s", variant, fan.deliveries_per_s);
                results.add(&scenario, "completion p50 ms", variant, fan.p50_ms);
                results.add(&scenario, "completion p99 ms", variant, fan.p99_ms);
                results.add(&scenario, "server CPU %", variant, fan.cpu.0);
                results.add(&scenario, "client CPU %", variant, fan.cpu.1);
            }
        }
        let idle_variants = compared.iter().copied().chain([Variant::Baseline]);
        for variant in
            idle_variants.filter(|v| runs("idle") && plan.variant.is_none_or(|o| o == *v))
        {
            let per_stream = idle(variant, None, &plan).await?;
            eprintln!(
                "  idle {:18} {per_stream:>8.0} bytes/stream",
                variant.name()
            );
            let scenario = format!("3. idle, {} open streams", plan.idle_streams);
            results.add(&scenario, "server RSS bytes/stream", variant, per_stream);
        }
        // The same over the user's channel of scenario 5: each body holds a `BroadcastStream`.
        for variant in [Variant::Axum, Variant::Ours]
            .into_iter()
            .filter(|v| runs("idle") && plan.variant.is_none_or(|o| o == *v))
        {
            let per_stream = idle(variant, Some(Feed::Polled), &plan).await?;
            eprintln!(
                "  idle {:18} polled     {per_stream:>8.0} bytes/stream",
                variant.name()
            );
            let scenario = format!(
                "3. idle, {} open streams, each polling a BroadcastStream \
                 (ours: EventSource::stream)",
                plan.idle_streams
            );
            results.add(&scenario, "server RSS bytes/stream", variant, per_stream);
        }
        // Then over the user's channel of scenario 5: axum's `Sse` and `EventSource::stream`.
        let latency_runs = compared.iter().map(|&v| (v, None)).chain(
            [Variant::Axum, Variant::Ours]
                .into_iter()
                .filter(|v| plan.variant.is_none_or(|only| only == *v))
                .map(|v| (v, Some(Feed::Polled))),
        );
        for (variant, feed) in latency_runs.filter(|(_, feed)| {
            runs("latency") && (feed.is_none() || plan.feed.is_none_or(|only| Some(only) == *feed))
        }) {
            let run = latency(variant, feed, &plan).await?;
            eprintln!(
                "  latency {:18} {:10} p50 {:>8.0} us  p99 {:>8.0} us  CPU server {:>3.0}% client {:>3.0}%",
                variant.name(),
                feed.map_or("", Feed::name),
                run.p50_us,
                run.p99_us,
                run.cpu.0,
                run.cpu.1
            );
            let scenario = format!(
                "4. latency, {} clients, {}/s for {} s{}",
                plan.latency_clients,
                Duration::from_secs(1).as_nanos() / plan.latency_period.as_nanos(),
                plan.latency_events as u128 * plan.latency_period.as_millis() / 1000,
                match feed {
                    Some(_) => ", user's tokio broadcast (ours: EventSource::stream)",
                    None => "",
                }
            );
            results.add(&scenario, "push-to-receive p50 us", variant, run.p50_us);
            results.add(&scenario, "push-to-receive p99 us", variant, run.p99_us);
            results.add(&scenario, "server CPU %", variant, run.cpu.0);
            results.add(&scenario, "client CPU %", variant, run.cpu.1);
        }
        let stream_runs = [
            (Variant::Axum, Feed::Polled),
            (Variant::Ours, Feed::Polled),
            (Variant::Ours, Feed::PerClient),
            (Variant::Ours, Feed::Hub),
        ];
        for clients in plan.fan_out_clients.into_iter().filter(|_| runs("stream")) {
            let mut axum = None;
            for (variant, feed) in stream_runs.into_iter().filter(|(v, f)| {
                plan.variant.is_none_or(|only| only == *v)
                    && plan.feed.is_none_or(|only| only == *f)
            }) {
                let fan = fan_out(variant, clients, Some(feed), &plan).await?;
                eprintln!(
                    "  stream {clients:>6} {:18} {:10} {:>10.0} deliveries/s  p50 {:>7.1} ms  \
                     p99 {:>7.1} ms  CPU server {:>3.0}% client {:>3.0}%",
                    variant.name(),
                    feed.name(),
                    fan.deliveries_per_s,
                    fan.p50_ms,
                    fan.p99_ms,
                    fan.cpu.0,
                    fan.cpu.1
                );
                if variant == Variant::Axum {
                    axum = Some(fan);
                    continue;
                }
                let how = match feed {
                    Feed::Polled => "ours: EventSource::stream",
                    Feed::PerClient => "ours: Connection::forward per client",
                    Feed::Hub => "ours: Broadcast::forward into a hub",
                };
                let scenario = format!(
                    "5. user's tokio broadcast, {clients} clients x {} events, {how}",
                    plan.fan_out_events
                );
                // axum's figures from this repeat stand beside each of ours.
                for (variant, fan) in [(Variant::Ours, Some(&fan)), (Variant::Axum, axum.as_ref())]
                {
                    let Some(fan) = fan else { continue };
                    results.add(&scenario, "deliveries/s", variant, fan.deliveries_per_s);
                    results.add(&scenario, "completion p50 ms", variant, fan.p50_ms);
                    results.add(&scenario, "completion p99 ms", variant, fan.p99_ms);
                    results.add(&scenario, "server CPU %", variant, fan.cpu.0);
                    results.add(&scenario, "client CPU %", variant, fan.cpu.1);
                }
            }
        }
    }
    println!("{}", results.table());
    println!("{}", results.spread());
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

struct Throughput {
    events_per_s: f64,
    mb_per_s: f64,
    /// Busy time of the server and of the client over the run, in percent of one CPU.
    cpu: (f64, f64),
}

/// How the throughput client reads the stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// hyper's HTTP/1 client, frame by frame.
    Hyper,
    /// The socket's bytes as they come, chunked framing and all: cheaper than any server, so
    /// the figure is the server's.
    Socket,
}

/// Scenario 1: events per second and megabytes per second on one connection.
async fn throughput(variant: Variant, reader: Reader, plan: &Plan) -> Result<Throughput> {
    let events = plan.throughput_events;
    let server = Server::start(variant, Some(events), None, plan.server_cpu).await?;
    let outcome = timeout(Duration::from_secs(120), async {
        let meter = CpuMeter::start(&server);
        let seconds = match reader {
            Reader::Hyper => read_with_hyper(server.port, events).await?,
            Reader::Socket => read_socket(server.port, events).await?,
        };
        Ok::<_, BoxError>(Throughput {
            events_per_s: events as f64 / seconds,
            mb_per_s: (events * WIRE_32.len() as u64) as f64 / seconds / 1e6,
            cpu: meter.finish(),
        })
    })
    .await;
    server.stop().await;
    outcome?
}

/// Reads `events` events through hyper's client; the seconds from the first body byte to the
/// last event.
async fn read_with_hyper(port: u16, events: u64) -> Result<f64> {
    let mut client = open(port).await?;
    let mut counter = EventCounter::default();
    let mut first = None;
    while counter.events < events {
        let frame = client.body.frame().await.ok_or("stream ended early")??;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        first.get_or_insert_with(Instant::now);
        counter.feed(&data);
    }
    if counter.events != events {
        return Err(format!("{} events instead of {events}", counter.events).into());
    }
    Ok(first.map_or(0.0, |first| first.elapsed().as_secs_f64()))
}

/// Reads `events` events straight from the socket, counting them in the chunked body as it
/// comes (chunk-size lines hold no blank line, and no event is split across chunks); the
/// seconds from the first body byte to the last event.
async fn read_socket(port: u16, events: u64) -> Result<f64> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n")
        .await?;
    let mut buf = vec![0; 256 * 1024];
    let mut head = Vec::new();
    let mut counter = EventCounter::default();
    let mut first = None;
    while counter.events < events {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Err("stream ended early".into());
        }
        if first.is_some() {
            counter.feed(&buf[..n]);
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 200") {
                return Err("not a 200 response".into());
            }
            first = Some(Instant::now());
            counter.feed(&head[end + 4..]);
        }
    }
    if counter.events != events {
        return Err(format!("{} events instead of {events}", counter.events).into());
    }
    Ok(first.map_or(0.0, |first| first.elapsed().as_secs_f64()))
}

struct FanOut {
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Busy time of the server and of the client in the delivery phase, in percent of one CPU.
    cpu: (f64, f64),
}

/// Opens `clients` streams to a hub server. Each stream's task reads it with `read`, reports
/// what `read` returns, then holds the stream open until `release`.
async fn open_all<T, F, Fut>(
    port: u16,
    clients: usize,
    release: &watch::Sender<bool>,
    read: F,
) -> Result<mpsc::UnboundedReceiver<Result<T>>>
where
    T: Send + 'static,
    F: Fn(Incoming) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (Result<T>, Incoming)> + Send + 'static,
{
    let (report, reports) = mpsc::unbounded_channel();
    let connecting = Arc::new(Semaphore::new(256));
    // Streams opened, and streams that failed to open.
    let (counts, mut counted) = watch::channel((0usize, 0usize));
    let counts = Arc::new(counts);
    for _ in 0..clients {
        let connecting = Arc::clone(&connecting);
        let counts = Arc::clone(&counts);
        let report = report.clone();
        let mut release = release.subscribe();
        let read = read.clone();
        tokio::spawn(async move {
            let permit = connecting.acquire_owned().await;
            let client = match open(port).await {
                Ok(client) => client,
                Err(error) => {
                    eprintln!("  could not open a stream: {error}");
                    counts.send_modify(|(_, failed)| *failed += 1);
                    return;
                }
            };
            drop(permit);
            counts.send_modify(|(opened, _)| *opened += 1);
            let Client { body, sender } = client;
            let (outcome, body) = read(body).await;
            let _ = report.send(outcome);
            let _ = release.wait_for(|released| *released).await;
            drop((body, sender));
        });
    }
    let (_, failed) = *timeout(
        Duration::from_secs(120),
        counted.wait_for(|(opened, failed)| opened + failed >= clients),
    )
    .await??;
    if failed > 0 {
        return Err(format!("{failed} of {clients} streams failed to open").into());
    }
    Ok(reports)
}

/// Scenario 2: deliveries per second and the spread of completion times.
/// With `feed`, through the user's own channel (scenario 5).
async fn fan_out(
    variant: Variant,
    clients: usize,
    feed: Option<Feed>,
    plan: &Plan,
) -> Result<FanOut> {
    let events = plan.fan_out_events;
    let mut server = Server::start(variant, None, feed, plan.server_cpu).await?;
    let (release, _) = watch::channel(false);
    let outcome = async {
        let mut reports = open_all(
            server.port,
            clients,
            &release,
            move |mut body: Incoming| async move {
                let outcome = async {
                    let mut counter = EventCounter::default();
                    while counter.events < events as u64 {
                        let frame = body.frame().await.ok_or("stream ended early")??;
                        if let Ok(data) = frame.into_data() {
                            counter.feed(&data);
                        }
                    }
                    Ok(now_ns())
                }
                .await;
                (outcome, body)
            },
        )
        .await?;
        let meter = CpuMeter::start(&server);
        let reply = server
            .command(
                &format!("broadcast {clients} {events} 0"),
                Duration::from_secs(120),
            )
            .await?;
        let first: u64 = reply.strip_prefix("done ").ok_or("bad reply")?.parse()?;
        let mut done = Vec::with_capacity(clients);
        while done.len() < clients {
            let report = timeout(Duration::from_secs(60), reports.recv())
                .await?
                .ok_or("a client task vanished")??;
            done.push(report.saturating_sub(first) as f64 / 1e6);
        }
        let cpu = meter.finish();
        done.sort_by(f64::total_cmp);
        let last = done[done.len() - 1];
        Ok::<_, BoxError>(FanOut {
            cpu,
            deliveries_per_s: (clients * events) as f64 / (last / 1e3),
            p50_ms: percentile(&done, 0.50),
            p99_ms: percentile(&done, 0.99),
        })
    }
    .await;
    server.stop().await;
    let _ = release.send(true);
    outcome
}

/// Scenario 3: the server's resident memory per open, idle stream; with `feed`, over the user's
/// channel (scenario 5).
async fn idle(variant: Variant, feed: Option<Feed>, plan: &Plan) -> Result<f64> {
    let streams = plan.idle_streams;
    let mut server = Server::start(variant, None, feed, plan.server_cpu).await?;
    let (release, _) = watch::channel(false);
    let outcome = async {
        let before = rss(&mut server).await?;
        let _reports = open_all(
            server.port,
            streams,
            &release,
            |body: Incoming| async move { (Ok(()), body) },
        )
        .await?;
        // Every stream is open and has its response; let the server settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss(&mut server).await?;
        Ok::<_, BoxError>((after - before) as f64 * 1024.0 / streams as f64)
    }
    .await;
    server.stop().await;
    let _ = release.send(true);
    outcome
}

async fn rss(server: &mut Server) -> Result<u64> {
    let reply = server.command("rss", Duration::from_secs(10)).await?;
    Ok(reply.strip_prefix("rss ").ok_or("bad reply")?.parse()?)
}

/// Scenario 4: push-to-receive latency percentiles in microseconds.
struct Latency {
    p50_us: f64,
    p99_us: f64,
    /// Busy time of the server and of the client while events are sent, in percent of one CPU.
    cpu: (f64, f64),
}

async fn latency(variant: Variant, feed: Option<Feed>, plan: &Plan) -> Result<Latency> {
    let mut server = Server::start(variant, None, feed, plan.server_cpu).await?;
    let (release, _) = watch::channel(false);
    let clients = plan.latency_clients;
    let events = plan.latency_events;
    let outcome = async {
        let mut reports = open_all(
            server.port,
            clients,
            &release,
            move |mut body: Incoming| async move {
                let outcome = async {
                    let mut times = SendTimes::default();
                    let mut latencies = Vec::with_capacity(events);
                    while latencies.len() < events {
                        let frame = body.frame().await.ok_or("stream ended early")??;
                        let received = now_ns();
                        if let Ok(data) = frame.into_data() {
                            times.feed(&data, |sent| latencies.push(received.saturating_sub(sent)));
                        }
                    }
                    Ok(latencies)
                }
                .await;
                (outcome, body)
            },
        )
        .await?;
        let command = format!(
            "broadcast {clients} {events} {}",
            plan.latency_period.as_micros()
        );
        let limit = plan.latency_period * events as u32 + Duration::from_secs(60);
        let meter = CpuMeter::start(&server);
        server.command(&command, limit).await?;
        let cpu = meter.finish();
        let mut all = Vec::with_capacity(clients * events);
        for _ in 0..clients {
            let latencies = timeout(Duration::from_secs(60), reports.recv())
                .await?
                .ok_or("a client task vanished")??;
            all.extend(latencies.into_iter().map(|ns| ns as f64 / 1e3));
        }
        all.sort_by(f64::total_cmp);
        Ok::<_, BoxError>(Latency {
            p50_us: percentile(&all, 0.50),
            p99_us: percentile(&all, 0.99),
            cpu,
        })
    }
    .await;
    server.stop().await;
    let _ = release.send(true);
    outcome
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// Every measured value, by scenario, metric and variant, in the order first added.
#[derive(Default)]
struct Results {
    order: Vec<(String, &'static str)>,
    values: BTreeMap<(String, &'static str), BTreeMap<Variant, Vec<f64>>>,
}

impl Results {
    fn add(&mut self, scenario: &str, metric: &'static str, variant: Variant, value: f64) {
        let key = (scenario.to_owned(), metric);
        if !self.values.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.values
            .entry(key)
            .or_default()
            .entry(variant)
            .or_default()
            .push(value);
    }

    /// A Markdown table of medians, with each variant's ratio to axum.
    fn table(&self) -> String {
        let mut out = String::from(
            "| scenario | metric | tower-eventsource | axum-sse | raw-hyper | hyper-baseline \
             | ours / axum | raw / axum |\n|---|---|--:|--:|--:|--:|--:|--:|\n",
        );
        for key in &self.order {
            let by_variant = &self.values[key];
            let median = |variant| by_variant.get(&variant).map(|v: &Vec<f64>| median(v));
            let cell = |variant| median(variant).map_or(String::from("–"), format_value);
            let ratio = |variant| match (median(variant), median(Variant::Axum)) {
                (Some(value), Some(axum)) if axum != 0.0 => format!("{:.2}", value / axum),
                _ => String::from("–"),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                key.0,
                key.1,
                cell(Variant::Ours),
                cell(Variant::Axum),
                cell(Variant::Raw),
                cell(Variant::Baseline),
                ratio(Variant::Ours),
                ratio(Variant::Raw),
            );
        }
        if let Some(idle) = self
            .values
            .iter()
            .find(|(key, _)| key.1 == "server RSS bytes/stream")
        {
            let of = |variant| idle.1.get(&variant).map(|v| median(v));
            if let (Some(ours), Some(baseline)) = (of(Variant::Ours), of(Variant::Baseline)) {
                let _ = writeln!(
                    out,
                    "\nlibrary-added bytes per idle stream (tower-eventsource minus hyper-baseline): {:.0}",
                    ours - baseline
                );
            }
        }
        out
    }
}

impl Results {
    /// Every repeat's value of each rate, lowest to highest, by variant.
    fn spread(&self) -> String {
        let mut out = String::from("spread across repeats (lowest to highest):\n");
        for key in self.order.iter().filter(|key| key.1.ends_with("/s")) {
            for (variant, values) in &self.values[key] {
                let mut sorted = values.clone();
                sorted.sort_by(f64::total_cmp);
                let all: Vec<String> = sorted.into_iter().map(format_value).collect();
                let _ = writeln!(
                    out,
                    "  {} | {} | {}: {}",
                    key.0,
                    key.1,
                    variant.name(),
                    all.join(", ")
                );
            }
        }
        out
    }
}

fn format_value(value: f64) -> String {
    if value >= 100.0 {
        let digits = format!("{value:.0}");
        let mut grouped = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        grouped
    } else {
        format!("{value:.2}")
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// The value at or below which `p` of the sorted values lie.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------------------

/// Measures how busy the server child and this process are over an interval.
struct CpuMeter {
    server: Option<u32>,
    since: Instant,
    server_busy: f64,
    client_busy: f64,
}

impl CpuMeter {
    fn start(server: &Server) -> Self {
        let server = server.child.id();
        CpuMeter {
            server,
            since: Instant::now(),
            server_busy: server.map_or(0.0, cpu_seconds),
            client_busy: cpu_seconds(std::process::id()),
        }
    }

    /// The server's and this process's busy time since `start`, in percent of one CPU.
    fn finish(self) -> (f64, f64) {
        let wall = self.since.elapsed().as_secs_f64();
        let server = self.server.map_or(0.0, cpu_seconds) - self.server_busy;
        let client = cpu_seconds(std::process::id()) - self.client_busy;
        (server / wall * 100.0, client / wall * 100.0)
    }
}

/// User and system CPU time of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses: state is the first, then
    // utime and stime are the 12th and 13th.
    let Some((_, fields)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let ticks: u64 = fields
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// Nanoseconds of the system-wide monotonic clock, the same in every process.
fn now_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    rustix::thread::sched_getaffinity(None).map_or_else(
        |_| Vec::new(),
        |allowed| {
            (0..rustix::thread::CpuSet::MAX_CPU)
                .filter(|cpu| allowed.is_set(*cpu))
                .collect()
        },
    )
}

/// Runs this thread, and the threads it starts from now on, on `cpu` only.
fn pin_to_cpu(cpu: usize) {
    let mut only = rustix::thread::CpuSet::new();
    only.set(cpu);
    if let Err(error) = rustix::thread::sched_setaffinity(None, &only) {
        eprintln!("could not pin to CPU {cpu}: {error}");
    }
}

/// Lets this process open as many sockets as its hard limit allows.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| String::from("unknown CPU"))
}
