//! A live chat in the browser: one [`Broadcast`] hub with history feeds every open page. A page
//! loads the recent messages and streams from the newest of them, and a page that loses its
//! stream resumes where it left off, with no message missing or repeated.
//!
//! Run it with `cargo run --example chat` and open <http://127.0.0.1:3000> in two windows.
//! With `--features redis -- --redis redis://127.0.0.1:6379/`, several chat servers (on other
//! `--port`s) share the hub through Redis: a message posted on any appears on all, with the
//! same id, and a browser resumes on any of them. Only the line that builds the hub differs;
//! the rest of the code is the same for both. The server refuses to start when Redis cannot be
//! reached.
//! The port can be chosen with `--port N` or the `PORT` environment variable (`0` picks a free
//! one); the first line printed is `listening on http://127.0.0.1:PORT`. With
//! `--features metrics` (and `--features metrics,redis` for Redis), `GET /metrics` has the
//! metrics in Prometheus's text format.
//!
//! The endpoints:
//!
//! - `GET /messages`: the recent messages, oldest first, read from the hub's history (on
//!   Redis, the same on every server): `[{"id": "...", "text": "hi"}, ...]`.
//! - `POST /messages`: the body is the message text; the answer is `{"id": "..."}`. With an
//!   `Idempotency-Key` header, a repeat of the same key within an hour stores nothing and
//!   answers the first post's id, so a client can safely retry a post whose answer it never
//!   got. The page sends a new random key with each message, and the same one when it retries.
//!   While the hub's backend is unreachable the answer is `503`, saying whether the message
//!   may have been stored all the same.
//! - `GET /healthz`: `200` with `ok`, or `503` with the reason while the hub's backend cannot be
//!   reached, for a load balancer or an orchestrator's probe.
//! - `GET /metrics`: the Prometheus metrics (`404` without `--features metrics`).
//!
//! Things to try while the page is open:
//!
//! - `curl -X POST localhost:3000/admin/drop` ends every stream. Browsers reconnect after
//!   half a second and send the id of the last event they saw in `Last-Event-ID`; the hub
//!   replays exactly what they missed.
//! - Stop the server and start it again. In-process, browsers reconnect with an id the new hub
//!   has never seen (each hub numbers its events under its own random epoch), so the hub sends
//!   the `reset` event, and the page reloads the messages. On Redis the history outlives the
//!   server, and browsers resume.
//! - `curl -X POST localhost:3000/admin/stop` ends every stream and answers later attempts
//!   with `204 No Content`, which tells browsers to stop reconnecting for good.
//! - `curl localhost:3000/admin/stats` shows the hub's counters on this server and how many
//!   requests reached `/events`.

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, Request, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::{get, post, MethodRouter},
    Json, Router,
};
use serde::Serialize;
use std::{
    io::Write,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tower_eventsource::{tcp, Broadcast, Connection, Event, EventSourceService, SendError};

/// How many events the hub keeps for browsers that reconnect.
const HISTORY: usize = 1000;
/// How many messages `GET /messages` returns.
const RECENT: usize = 100;
/// The longest message accepted, in characters.
const MAX_MESSAGE: usize = 1000;
/// The longest `Idempotency-Key` accepted, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 100;

struct App {
    /// In this process, or shared with every chat server on the same Redis.
    hub: Broadcast,
    /// Set by `POST /admin/stop`: `/events` answers 204 from then on.
    stopped: AtomicBool,
    /// Requests that reached `/events`, refused ones included.
    stream_requests: AtomicU64,
}

#[derive(Serialize)]
struct Message {
    /// The id the hub gave the message's event, `<epoch>-<number>`: the same on every server,
    /// and the one a browser sends back in `Last-Event-ID`.
    id: String,
    text: String,
}

/// The answer to `POST /messages`.
#[derive(Serialize)]
struct Posted {
    id: String,
}

/// The hub's counters on this server, and this example's own.
#[derive(Serialize)]
struct Stats {
    subscribers: usize,
    events_sent: u64,
    deliveries: u64,
    slow_disconnects: u64,
    events_skipped: u64,
    resets: u64,
    replays: u64,
    replays_from_backend: u64,
    resumes_unavailable: u64,
    send_errors: u64,
    reader_reconnects: u64,
    stream_resets: u64,
    stream_requests: u64,
    stopped: bool,
}

#[tokio::main]
async fn main() {
    let (port, redis_url) = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!(
                "{message}\nusage: chat [--port N] [--redis URL]   (or set PORT; the default is 3000; --redis needs --features redis)"
            );
            std::process::exit(2);
        }
    };
    // Before the hub and the service are built: they register their metrics as they are.
    let metrics = metrics();
    let hub = hub(redis_url.as_deref());
    // Always fine in-process; on Redis, whether it can be reached and accepts the hub. The
    // error names the server's address, never the URL's password.
    if let Err(error) = hub.ready().await {
        eprintln!("cannot start the chat: {error}");
        std::process::exit(1);
    }

    let app = Arc::new(App {
        hub,
        stopped: AtomicBool::new(false),
        stream_requests: AtomicU64::new(0),
    });

    let events = EventSourceService::new({
        let app = Arc::clone(&app);
        move |conn: Connection, req: Request<Body>| {
            // Replays what the browser missed since its `Last-Event-ID` (or, on the page's
            // first request, since the newest message it loaded: `?after=ID`), or sends
            // `reset`; the hub keeps a clone of the connection and pushes every later message
            // to it. When resuming needs a backend that cannot be reached, the hub closes the
            // stream and the browser tries again with the same id.
            let after = req
                .uri()
                .query()
                .and_then(|query| query.strip_prefix("after="))
                .map(str::to_owned);
            let app = Arc::clone(&app);
            async move {
                let cursor = conn.last_event_id().or(after.as_deref());
                app.hub.subscribe_from(&conn, cursor).await;
                // A stream that subscribed just after `POST /admin/stop` closed the others.
                if app.stopped.load(Ordering::SeqCst) {
                    conn.close();
                }
            }
        }
    })
    .retry(Duration::from_millis(500))
    .check({
        let app = Arc::clone(&app);
        move |_req| {
            app.stream_requests.fetch_add(1, Ordering::SeqCst);
            if app.stopped.load(Ordering::SeqCst) {
                // The one status that tells a browser to stop reconnecting.
                Err(StatusCode::NO_CONTENT)
            } else {
                Ok(())
            }
        }
    });

    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route_service("/events", events)
        .route("/messages", get(recent_messages).post(post_message))
        .route("/admin/drop", post(drop_streams))
        .route("/admin/stop", post(stop))
        .route("/admin/stats", get(stats))
        .route("/healthz", get(healthz))
        .route("/metrics", metrics)
        .with_state(app);

    // The backlog is the system's largest (`somaxconn`), not tokio's 128: when every browser
    // reconnects at once, after a restart or a network blip, none waits a second for a
    // dropped SYN to be sent again.
    let listener = match tcp::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {error}");
            std::process::exit(1);
        }
    };

    // TCP drops a connection whose data has gone unacknowledged, or whose client's window has
    // stayed shut, for 30 s: a client that stopped reading, or one that vanished without closing
    // (its keep-alive comment is never acknowledged). A client that reads, however slowly,
    // acknowledges well within that; 30 s is also the send timeout. Without this, such a socket
    // and its kernel send buffer stay held as long as the client stays connected, or about
    // 16 minutes for one that vanished. Every socket accepted from the listener inherits it.
    if let Err(error) = tcp::set_user_timeout(&listener, Duration::from_secs(30)) {
        eprintln!("stuck clients are not dropped: {error}"); // not Linux
    }
    let addr = listener.local_addr().expect("bound socket has an address");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{addr}").expect("stdout");
    stdout.flush().expect("stdout");

    axum::serve(listener, router).await.expect("server");
}

/// The chat's hub: in this process, or, with `--redis URL`, shared through Redis by every chat
/// server that uses the same Redis. The only place where the two differ.
fn hub(redis_url: Option<&str>) -> Broadcast {
    let builder = Broadcast::builder().history(HISTORY).name("chat");
    let Some(url) = redis_url else {
        return builder.build();
    };
    // The URL may hold a password: it is never printed.
    #[cfg(feature = "redis")]
    match tower_eventsource::redis::Client::open(url) {
        Ok(client) => return builder.redis(client, "chat").build(),
        Err(error) => eprintln!("the --redis URL is not valid: {error}"),
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (builder, url);
        eprintln!("--redis needs the example built with --features redis");
    }
    std::process::exit(2);
}

/// `GET /metrics`: with `--features metrics`, the Prometheus exporter, installed as the metrics
/// recorder of the process; without it, `404`. The only place where the two differ.
fn metrics<S: Clone + Send + Sync + 'static>() -> MethodRouter<S> {
    #[cfg(feature = "metrics")]
    {
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the only metrics recorder");
        get(move || {
            let text = prometheus.render();
            async { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
        })
    }
    #[cfg(not(feature = "metrics"))]
    get(|| async {
        let reason = "no metrics: run the example with --features metrics\n";
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            reason,
        )
    })
}

/// The port from `--port N`, else from `PORT`, else 3000; and the URL of `--redis URL`.
fn options() -> Result<(u16, Option<String>), String> {
    let parse = |value: &str| {
        value
            .parse::<u16>()
            .map_err(|_| format!("invalid port {value:?}"))
    };
    let (mut port, mut redis) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => port = Some(parse(&value)?),
            "--redis" => redis = Some(value),
            _ => return Err(format!("unexpected argument {flag:?}")),
        }
    }
    let port = match port {
        Some(port) => port,
        None => std::env::var("PORT").map_or(Ok(3000), |value| parse(&value))?,
    };
    Ok((port, redis))
}

/// `POST /messages`: the body is the message text, stored once per `Idempotency-Key`. Every
/// subscriber gets it from the hub, on Redis through every server (this one too).
async fn post_message(State(app): State<Arc<App>>, headers: HeaderMap, text: String) -> Response {
    if text.trim().is_empty() || text.chars().count() > MAX_MESSAGE {
        let reason = format!("a message has 1 to {MAX_MESSAGE} characters, not all blank\n");
        return (StatusCode::BAD_REQUEST, reason).into_response();
    }
    let idempotency_key = match headers.get("idempotency-key").map(|key| key.to_str()) {
        None => None,
        Some(Ok(key)) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => Some(key),
        Some(_) => {
            let reason = format!(
                "an Idempotency-Key has 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters\n"
            );
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
    };
    let event = Event::new().data(&text);
    let sent = match idempotency_key {
        Some(key) => app.hub.send_idempotent(key, event).await,
        None => app.hub.send(event).await,
    };
    match sent {
        Ok(sent) => Json(Posted {
            id: sent.id().unwrap_or_default().to_owned(),
        })
        .into_response(),
        Err(SendError::Invalid(error)) => {
            let reason = format!("the message cannot be sent as an event: {error}\n");
            (StatusCode::BAD_REQUEST, reason).into_response()
        }
        Err(error) => {
            eprintln!("POST /messages: {error}");
            let reason = if error.may_have_been_stored() {
                "the chat's backend did not confirm the message: it may have been stored; \
                 post it again with the same Idempotency-Key to store it once\n"
            } else {
                "the chat's backend cannot be reached: the message was not stored; try again\n"
            };
            (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
        }
    }
}

/// `GET /messages`: the recent messages, oldest first, as `[{"id": "...", "text": "hi"}, ...]`,
/// from the hub's history: on Redis, the same on every server.
async fn recent_messages(State(app): State<Arc<App>>) -> Response {
    match app.hub.recent(RECENT).await {
        Ok(entries) => Json(
            entries
                .iter()
                .map(|entry| Message {
                    id: entry.id().to_owned(),
                    text: entry.data().to_owned(),
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(error) => {
            eprintln!("GET /messages: {error}");
            let reason = "the chat's backend cannot be reached: the messages cannot be read now\n";
            (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
        }
    }
}

/// `GET /healthz`: `200` with `ok` while the hub's backend can be reached (always, in-process),
/// else `503` with the reason, naming Redis by its address only.
async fn healthz(State(app): State<Arc<App>>) -> Response {
    match app.hub.ready().await {
        Ok(()) => "ok".into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

/// `POST /admin/drop`: ends every stream on this server; browsers reconnect and resume.
async fn drop_streams(State(app): State<Arc<App>>) -> StatusCode {
    app.hub.close_all();
    StatusCode::NO_CONTENT
}

/// `POST /admin/stop`: ends every stream on this server and refuses new ones with 204.
async fn stop(State(app): State<Arc<App>>) -> StatusCode {
    app.stopped.store(true, Ordering::SeqCst);
    app.hub.close_all();
    StatusCode::NO_CONTENT
}

/// `GET /admin/stats`: the hub's counters on this server and the number of requests to
/// `/events`.
async fn stats(State(app): State<Arc<App>>) -> Json<Stats> {
    let hub = app.hub.stats();
    Json(Stats {
        subscribers: hub.subscribers,
        events_sent: hub.events_sent,
        deliveries: hub.deliveries,
        slow_disconnects: hub.slow_disconnects,
        events_skipped: hub.events_skipped,
        resets: hub.resets,
        replays: hub.replays,
        replays_from_backend: hub.replays_from_backend,
        resumes_unavailable: hub.resumes_unavailable,
        send_errors: hub.send_errors,
        reader_reconnects: hub.reader_reconnects,
        stream_resets: hub.stream_resets,
        stream_requests: app.stream_requests.load(Ordering::SeqCst),
        stopped: app.stopped.load(Ordering::SeqCst),
    })
}
/// The page: plain HTML and JavaScript, nothing loaded from elsewhere.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tower-eventsource chat</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
  #status { color: #555; }
  #notice, #sending { background: #fff3c4; padding: .5rem; }
  #messages { border: 1px solid #ccc; min-height: 10rem; padding: .5rem 2rem; white-space: pre-wrap; }
  form { display: flex; gap: .5rem; }
  #text { flex: 1; }
</style>
<h1>Chat</h1>
<p id="status">Connection: <b id="state">connecting</b> &middot; last event id: <code id="last-id">none</code></p>
<p id="notice" hidden></p>
<p id="sending" hidden></p>
<ol id="messages"></ol>
<form id="send">
  <input id="text" autocomplete="off" placeholder="Say something" required maxlength="1000">
  <button>Send</button>
</form>
<script>
const list = document.getElementById('messages');
const stateView = document.getElementById('state');
const lastIdView = document.getElementById('last-id');
const notice = document.getElementById('notice');
const sending = document.getElementById('sending');

function show(id, text) {
  const item = document.createElement('li');
  item.dataset.id = id;
  item.textContent = text;
  list.append(item);
}

function tell(text) {
  notice.textContent = text;
  notice.hidden = false;
}

// Messages that arrive while the page reloads, shown once the reload is done.
let arrivedDuringReload = null;
const STATES = ['connecting', 'open', 'closed'];
let source;

// Load the recent messages, then stream from the newest of them: the server replays anything
// sent in between. After that the browser reconnects by itself when the stream ends, sending
// the id of the last event it saw; the server replays exactly what was missed, so the page
// only ever appends.
start();

async function start() {
  let messages = [];
  try {
    const response = await fetch('/messages');
    if (response.ok) messages = await response.json();
  } catch (error) {
    tell('Could not load the messages: ' + error.message);
  }
  for (const message of messages) show(message.id, message.text);
  const newest = messages.length ? messages[messages.length - 1].id : null;
  if (newest !== null) lastIdView.textContent = newest;
  source = new EventSource(newest === null ? '/events' : '/events?after=' + newest);
  source.onopen = showState;
  // `error` fires when a stream drops (the browser is reconnecting) and when the server said
  // 204 (the browser has stopped for good).
  source.onerror = showState;
  source.onmessage = onMessage;
  source.addEventListener('reset', onReset);
}

function showState() { stateView.textContent = STATES[source.readyState]; }

function onMessage(event) {
  lastIdView.textContent = event.lastEventId;
  if (arrivedDuringReload) {
    arrivedDuringReload.push({ id: event.lastEventId, text: event.data });
  } else {
    show(event.lastEventId, event.data);
  }
}

// The server does not know the id this page last saw (it restarted, or the page was away too
// long): what it replays cannot be trusted to fit, so start over from its recent messages.
function onReset(event) {
  lastIdView.textContent = event.lastEventId;
  tell('The server lost track of this page (it may have restarted): messages reloaded.');
  reload();
}

async function reload() {
  arrivedDuringReload = [];
  let messages = [];
  try {
    const response = await fetch('/messages');
    if (!response.ok) throw new Error(response.status);
    messages = await response.json();
  } catch (error) {
    tell('Could not reload the messages: ' + error.message);
  }
  list.replaceChildren();
  for (const message of messages) show(message.id, message.text);
  // What arrived live while the list loaded is newer than the list, unless the list has it.
  const listed = new Set(messages.map((message) => message.id));
  for (const message of arrivedDuringReload) {
    if (!listed.has(message.id)) show(message.id, message.text);
  }
  arrivedDuringReload = null;
}

document.getElementById('send').onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById('text');
  const text = input.value;
  input.value = '';
  post(text);
};

// How long to wait before each new attempt at a post that failed.
const RETRY_AFTER = [500, 1000, 2000, 4000];

// Posts a message. The message shows up when the server broadcasts it, like everyone else's.
// A post whose answer is lost, or that the server could not store, is sent again with the
// same Idempotency-Key, so the server stores it once however many attempts got through.
async function post(text) {
  const key = idempotencyKey();
  for (let attempt = 0; ; attempt++) {
    let problem;
    try {
      const response = await fetch('/messages', {
        method: 'POST',
        headers: { 'Idempotency-Key': key },
        body: text,
      });
      if (response.ok) {
        sending.hidden = true;
        return;
      }
      problem = 'HTTP ' + response.status + ': ' + (await response.text());
      // Only a server that could not store the message now is worth asking again.
      if (response.status !== 503) {
        sending.hidden = true;
        tell('Could not send: ' + problem);
        return;
      }
    } catch (error) {
      problem = error.message;
    }
    if (attempt >= RETRY_AFTER.length) {
      sending.hidden = true;
      tell('Could not send: ' + problem);
      return;
    }
    sending.textContent = 'Sending again (' + problem + ')';
    sending.hidden = false;
    await new Promise((resolve) => setTimeout(resolve, RETRY_AFTER[attempt]));
  }
}

// A random id for one message; crypto.randomUUID would need a secure context.
function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}
</script>
</html>
"#;
