//! A live chat in the browser: a [`Broadcast`] hub with history feeds every open page. A page
//! loads the recent messages and streams from the newest of them, and a page that loses its
//! stream resumes where it left off, with no message missing or repeated.
//!
//! Run it with `cargo run --example chat` and open <http://127.0.0.1:3000> in two windows.
//! With `--features redis -- --redis redis://127.0.0.1:6379/`, several chat servers (on other
//! `--port`s) share one hub through Redis: a message posted on any appears on all, and
//! `POST /messages` answers `503` while Redis is unreachable.
//! The port can be chosen with `--port N` or the `PORT` environment variable (`0` picks a free
//! one); the first line printed is `listening on http://127.0.0.1:PORT`.
//!
//! Things to try while the page is open:
//!
//! - `curl -X POST localhost:3000/admin/drop` ends every stream. Browsers reconnect after
//!   half a second and send the id of the last event they saw in `Last-Event-ID`; the hub
//!   replays exactly what they missed.
//! - Stop the server and start it again. Browsers reconnect with an id the new hub has never
//!   seen, so the hub sends the `reset` event, and the page reloads the messages.
//! - `curl -X POST localhost:3000/admin/stop` ends every stream and answers later attempts
//!   with `204 No Content`, which tells browsers to stop reconnecting for good.
//! - `curl localhost:3000/admin/stats` shows the hub's counters and how many requests reached
//!   `/events`.

use axum::{
    body::Body,
    extract::State,
    http::{Request, StatusCode},
    response::Html,
    routing::{get, post},
    Json, Router,
};
use serde::Serialize;
use std::{
    collections::VecDeque,
    io::Write,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
#[cfg(feature = "redis")]
use tower_eventsource::RedisBroadcast;
use tower_eventsource::{Broadcast, Connection, Event, EventSourceService};

/// How many messages `GET /messages` returns.
const RECENT: usize = 100;
/// The longest message accepted, in characters.
const MAX_MESSAGE: usize = 1000;

struct App {
    hub: Broadcast,
    /// With `--redis URL`: the hub shared with every chat server on that Redis, used instead
    /// of `hub`.
    #[cfg(feature = "redis")]
    redis: Option<RedisBroadcast>,
    chat: Mutex<Chat>,
    /// Set by `POST /admin/stop`: `/events` answers 204 from then on.
    stopped: AtomicBool,
    /// Requests that reached `/events`, refused ones included.
    stream_requests: AtomicU64,
}

/// The recent messages, for pages that have to reload.
struct Chat {
    recent: VecDeque<Message>,
}

#[derive(Clone, Serialize)]
struct Message {
    /// The id the hub gave the message's event. The hub's ids start at the clock, so a
    /// restarted server never reuses an id that a browser saw before the restart: the hub
    /// does not know that id and sends the `reset` event.
    id: String,
    text: String,
}

#[derive(Serialize)]
struct Stats {
    subscribers: usize,
    events_sent: u64,
    deliveries: u64,
    slow_disconnects: u64,
    resets: u64,
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
    #[cfg(feature = "redis")]
    let redis = match redis_url {
        None => None,
        Some(url) => {
            let built = match redis::Client::open(url.as_str()) {
                Ok(client) => RedisBroadcast::builder(client, "chat").build().await,
                Err(error) => Err(error),
            };
            match built {
                Ok(hub) => Some(hub),
                Err(error) => {
                    eprintln!("cannot use Redis at {url}: {error}");
                    std::process::exit(1);
                }
            }
        }
    };
    #[cfg(not(feature = "redis"))]
    if redis_url.is_some() {
        eprintln!("--redis needs the example built with --features redis");
        std::process::exit(2);
    }

    let app = Arc::new(App {
        hub: Broadcast::builder().history(1000).build(),
        #[cfg(feature = "redis")]
        redis,
        chat: Mutex::new(Chat {
            recent: VecDeque::new(),
        }),
        stopped: AtomicBool::new(false),
        stream_requests: AtomicU64::new(0),
    });

    let events = EventSourceService::new({
        let app = Arc::clone(&app);
        move |conn: Connection, req: Request<Body>| {
            // Replays what the browser missed since its `Last-Event-ID` (or, on the page's
            // first request, since the newest message it loaded: `?after=ID`), or sends
            // `reset`; the hub keeps a clone of the connection and pushes every later message
            // to it.
            let after = req
                .uri()
                .query()
                .and_then(|query| query.strip_prefix("after="))
                .map(str::to_owned);
            let app = Arc::clone(&app);
            async move {
                let cursor = conn.last_event_id().or(after.as_deref());
                #[cfg(feature = "redis")]
                if let Some(redis) = &app.redis {
                    redis.subscribe_from(&conn, cursor).await;
                } else {
                    app.hub.subscribe_from(&conn, cursor);
                }
                #[cfg(not(feature = "redis"))]
                app.hub.subscribe_from(&conn, cursor);
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
        .with_state(app);

    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {error}");
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().expect("bound socket has an address");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{addr}").expect("stdout");
    stdout.flush().expect("stdout");

    // TCP drops a connection whose data has gone unacknowledged, or whose client's window has
    // stayed shut, for 30 s: a client that stopped reading, or one that vanished without closing
    // (its keep-alive comment is never acknowledged). A client that reads, however slowly,
    // acknowledges well within that; 30 s is also the send timeout. Without this, such a socket
    // and its kernel send buffer stay held as long as the client stays connected, or about
    // 16 minutes for one that vanished.
    #[cfg(target_os = "linux")]
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = socket2::SockRef::from(&*tcp).set_tcp_user_timeout(Some(Duration::from_secs(30)));
    });
    axum::serve(listener, router).await.expect("server");
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

/// `POST /messages`: the body is the message text.
async fn post_message(State(app): State<Arc<App>>, text: String) -> StatusCode {
    if text.trim().is_empty() || text.chars().count() > MAX_MESSAGE {
        return StatusCode::BAD_REQUEST;
    }
    // On Redis, every server (this one too) delivers the message from the stream.
    #[cfg(feature = "redis")]
    if let Some(redis) = &app.redis {
        return match redis.publish(Event::new().data(&text)).await {
            Ok(_) => StatusCode::NO_CONTENT,
            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
    }
    // The lock keeps the recent list in the same order as the stream.
    let mut chat = app.chat.lock().unwrap();
    let Ok(sent) = app.hub.send(Event::new().data(&text)) else {
        // Unreachable for text data, which always encodes.
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    let id = sent.id().unwrap_or_default().to_owned();
    chat.recent.push_back(Message { id, text });
    if chat.recent.len() > RECENT {
        chat.recent.pop_front();
    }
    StatusCode::NO_CONTENT
}

/// `GET /messages`: the recent messages, oldest first, as `[{"id": "1", "text": "hi"}, ...]`.
async fn recent_messages(State(app): State<Arc<App>>) -> Result<Json<Vec<Message>>, StatusCode> {
    // On Redis, read from the stream, so that every server lists the same messages.
    #[cfg(feature = "redis")]
    if let Some(redis) = &app.redis {
        let recent = redis
            .recent(RECENT)
            .await
            .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
        return Ok(Json(
            recent
                .into_iter()
                .map(|(id, frame)| Message {
                    id,
                    text: String::from_utf8_lossy(&frame)
                        .lines()
                        .filter_map(|line| line.strip_prefix("data: "))
                        .collect::<Vec<_>>()
                        .join("\n"),
                })
                .collect(),
        ));
    }
    Ok(Json(
        app.chat.lock().unwrap().recent.iter().cloned().collect(),
    ))
}

/// `POST /admin/drop`: ends every stream; browsers reconnect and resume.
async fn drop_streams(State(app): State<Arc<App>>) -> StatusCode {
    app.hub.close_all();
    #[cfg(feature = "redis")]
    if let Some(redis) = &app.redis {
        redis.close_all();
    }
    StatusCode::NO_CONTENT
}

/// `POST /admin/stop`: ends every stream and refuses new ones with 204.
async fn stop(State(app): State<Arc<App>>) -> StatusCode {
    app.stopped.store(true, Ordering::SeqCst);
    app.hub.close_all();
    #[cfg(feature = "redis")]
    if let Some(redis) = &app.redis {
        redis.close_all();
    }
    StatusCode::NO_CONTENT
}

/// `GET /admin/stats`: the hub's counters and the number of requests to `/events`.
async fn stats(State(app): State<Arc<App>>) -> Json<Stats> {
    #[cfg(feature = "redis")]
    let hub = app
        .redis
        .as_ref()
        .map_or_else(|| app.hub.stats(), |redis| redis.stats().local);
    #[cfg(not(feature = "redis"))]
    let hub = app.hub.stats();
    Json(Stats {
        subscribers: hub.subscribers,
        events_sent: hub.events_sent,
        deliveries: hub.deliveries,
        slow_disconnects: hub.slow_disconnects,
        resets: hub.resets,
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
  #notice { background: #fff3c4; padding: .5rem; }
  #messages { border: 1px solid #ccc; min-height: 10rem; padding: .5rem 2rem; white-space: pre-wrap; }
  form { display: flex; gap: .5rem; }
  #text { flex: 1; }
</style>
<h1>Chat</h1>
<p id="status">Connection: <b id="state">connecting</b> &middot; last event id: <code id="last-id">none</code></p>
<p id="notice" hidden></p>
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

document.getElementById('send').onsubmit = async (event) => {
  event.preventDefault();
  const input = document.getElementById('text');
  const text = input.value;
  input.value = '';
  // The message shows up when the server broadcasts it, like everyone else's.
  const response = await fetch('/messages', { method: 'POST', body: text });
  if (!response.ok) tell('Could not send: HTTP ' + response.status);
};
</script>
</html>
"#;
