//! Per-user notifications in an ordinary axum app: app state, an auth extractor that refuses
//! with `401` and `WWW-Authenticate`, one stream per user on a [`KeyedBroadcast`] with history
//! and resume, a route that publishes, CORS with credentials for one named origin, and a
//! graceful shutdown on Ctrl-C that sends every stream a farewell.
//!
//! Run it with `cargo run --example notifications` (`--port N` or `PORT` picks the port, `0`
//! a free one; `--origin URL` the page origin allowed to read the stream with credentials,
//! default `http://localhost:5173`). The first line printed is
//! `listening on http://127.0.0.1:PORT`. Then, in two terminals:
//!
//! ```sh
//! curl -N -H 'Authorization: Bearer alice-token' 127.0.0.1:3000/events
//! curl -X POST -H 'Authorization: Bearer bob-token' -d 'lunch?' 127.0.0.1:3000/notify/alice
//! ```
//!
//! A browser's `EventSource` cannot send an `Authorization` header: a page authenticates its
//! stream with a cookie (`session=alice-token`, sent with `withCredentials: true` across
//! origins) or a short-lived token in the query (`/events?token=alice-token`); the extractor
//! takes all three. The tokens are fixed here (`alice-token`, `bob-token`); a real app checks
//! its sessions.
//!
//! For the infrastructure: `GET /healthz` answers `200` with `ok`, or `503` with the reason
//! while the hub's backend cannot be reached; `GET /metrics` has the metrics in Prometheus's
//! text format with `--features metrics` (`404` without). A real app serves them on a port of
//! their own, or keeps them from the public.

use axum::{
    extract::{FromRequestParts, Path, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, MethodRouter},
    Json, Router,
};
use serde_json::json;
use std::{collections::HashMap, io::Write, sync::Arc, time::Duration};
use tower_eventsource::{tcp, Broadcast, Event, EventSource, KeyedBroadcast, Shutdown};
use tower_http::cors::CorsLayer;

struct App {
    /// The stream settings, shared by every `/events` request.
    events: EventSource,
    /// One hub per user, each keeping that user's last 100 notifications for resume.
    hub: KeyedBroadcast<String>,
    /// Session token -> user name.
    sessions: HashMap<&'static str, &'static str>,
}

/// The user a request is authenticated as, from `Authorization: Bearer TOKEN`, a `session`
/// cookie, or `?token=TOKEN`.
struct User(String);

impl FromRequestParts<Arc<App>> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Response> {
        let token = bearer(&parts.headers)
            .or_else(|| cookie(&parts.headers, "session"))
            .or_else(|| query(parts.uri.query(), "token"));
        match token.and_then(|token| app.sessions.get(token)) {
            Some(user) => Ok(User(user.to_string())),
            // Any status but 200 stops a browser's EventSource for good, which is right for a
            // client without credentials.
            None => Err((
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="notifications""#),
                )],
            )
                .into_response()),
        }
    }
}

/// `GET /events`: the authenticated user's stream. A reconnecting browser sends
/// `Last-Event-ID`; the user's hub replays what it missed, or sends `event: reset`.
async fn events(State(app): State<Arc<App>>, User(user): User, headers: HeaderMap) -> Response {
    let (conn, response) = app.events.connect(&headers);
    // The hub keeps the connection and pushes every later notification to it; the
    // subscription has happened by the time the response goes out.
    app.hub.subscribe(&user, &conn).await;
    response.into_response()
}

/// `POST /notify/{user}`: the body is the notification's text. Answers the event's id and how
/// many of the user's open streams it reached.
async fn notify(
    State(app): State<Arc<App>>,
    User(from): User,
    Path(to): Path<String>,
    text: String,
) -> Result<Json<serde_json::Value>, StatusCode> {
    if !app.sessions.values().any(|user| *user == to) {
        return Err(StatusCode::NOT_FOUND);
    }
    let event = Event::new()
        .event("notification")
        .data(format!("{from}: {text}"));
    // In-process a send fails only for an event that cannot be encoded, never for this one.
    let sent = app
        .hub
        .send(&to, event)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(json!({ "id": sent.id(), "reached": sent.reached() })))
}

/// `GET /healthz`: `200` with `ok` while the hub's backend can be reached (always, in-process),
/// else `503` with the reason.
async fn healthz(State(app): State<Arc<App>>) -> Response {
    match app.hub.ready().await {
        Ok(()) => "ok".into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
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

#[tokio::main]
async fn main() {
    let (port, origin) = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\nusage: notifications [--port N] [--origin URL]");
            std::process::exit(2);
        }
    };

    // Before the stream settings and the hub are built: they register their metrics as they are.
    let metrics = metrics();
    let shutdown = Shutdown::new();
    let app = Arc::new(App {
        events: EventSource::new()
            .retry(Duration::from_secs(1))
            .graceful_shutdown(&shutdown),
        hub: KeyedBroadcast::new(Broadcast::builder().history(100).name("notifications")),
        sessions: HashMap::from([("alice-token", "alice"), ("bob-token", "bob")]),
    });

    // Credentials need a named origin: browsers refuse `*` with them. A reconnecting browser
    // may send `Last-Event-ID` in a preflighted request, so it is allowed too.
    let cors = CorsLayer::new()
        .allow_origin(origin)
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("last-event-id"),
        ]);

    let router = Router::new()
        .route("/events", get(events))
        .route("/notify/{user}", post(notify))
        .layer(cors)
        // Outside CORS: they are for the infrastructure, not for pages.
        .route("/healthz", get(healthz))
        .route("/metrics", metrics)
        .with_state(app);

    // The system's largest backlog, for the storm of reconnects after a restart.
    let listener = match tcp::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {error}");
            std::process::exit(1);
        }
    };

    // A client that stopped reading, or vanished without closing, is dropped once TCP has had
    // no acknowledgement from it for 30 s; without this its socket and kernel send buffer stay
    // held for as long as it stays connected (see the README's HOWTO). Every socket accepted
    // from the listener inherits it.
    if let Err(error) = tcp::set_user_timeout(&listener, Duration::from_secs(30)) {
        eprintln!("stuck clients are not dropped: {error}"); // not Linux
    }
    let addr = listener.local_addr().expect("bound socket has an address");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{addr}").expect("stdout");
    stdout.flush().expect("stdout");

    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            // Every stream gets this last event and ends; browsers come back in 5 s, to this
            // server once it is restarted or to another one.
            let farewell = Event::new()
                .event("bye")
                .retry(Duration::from_secs(5))
                .data("server restarting");
            let _ = shutdown.trigger_with(farewell);
        })
        .await
        .expect("server");
    println!("stopped");
}

/// The port (`--port N`, else `PORT`, else 3000) and the allowed origin (`--origin URL`).
fn options() -> Result<(u16, HeaderValue), String> {
    let mut port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let mut origin = String::from("http://localhost:5173");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => port = value,
            "--origin" => origin = value,
            _ => return Err(format!("unexpected argument {flag:?}")),
        }
    }
    let port = port.parse().map_err(|_| format!("invalid port {port:?}"))?;
    let origin = HeaderValue::try_from(origin).map_err(|_| "invalid origin".to_string())?;
    Ok((port, origin))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

fn query<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}
