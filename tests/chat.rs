//! The chat example, run as processes as a user would, with the same checks on both backends:
//! in this process (one server), and on Redis (two servers sharing one `redis-server`, posts
//! going to one and read from the other). A message posted gets an id `<epoch>-<number>` and
//! reaches the open streams with it; `GET /messages` lists it with the same id; a post repeated
//! with the same `Idempotency-Key` is stored once; a stream resumes from `Last-Event-ID` or
//! `?after=ID`; `POST /admin/drop` ends the streams; `GET /healthz` is `200` and `GET /metrics`
//! is Prometheus's text format, and on Redis, once `redis-server` is stopped, `/healthz` is
//! `503` naming the Redis that cannot be reached.
//!
//! The in-process checks run with a plain `cargo test --test chat`. The Redis ones need the
//! `redis-server` program and the `redis` feature, so they are ignored by default; run them with
//! `cargo test --features redis --test chat -- --include-ignored`. The examples are built with
//! every feature.

mod common;

use bytes::Bytes;
use common::{
    assert_ends,
    example::{assert_healthy_with_metrics, build, get, metric, Running, BUILD},
    next_event, open_stream, split_id, Client, Events, BOUND,
};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client as HttpClient},
    rt::TokioExecutor,
};
use serde_json::Value;
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};
use tokio::time::{sleep, timeout};

/// Builds the chat example.
async fn chat_executable() -> PathBuf {
    timeout(BUILD, build("chat"))
        .await
        .expect("the chat example builds in time")
        .expect("the chat example builds")
}

/// A plain HTTP client for one chat server's endpoints.
struct Chat {
    addr: SocketAddr,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl Chat {
    fn new(port: u16) -> Chat {
        Chat {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A request and its whole answer.
    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap();
        let response = timeout(BOUND, self.http.request(request))
            .await
            .unwrap_or_else(|_| panic!("no answer to {path} in time"))
            .unwrap_or_else(|error| panic!("{path}: {error}"));
        let status = response.status();
        let body = timeout(BOUND, response.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("no body from {path} in time"))
            .unwrap()
            .to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// `POST /messages`, with an `Idempotency-Key` when given.
    async fn post(&self, text: &str, idempotency_key: Option<&str>) -> (StatusCode, String) {
        let headers: Vec<(&str, &str)> = idempotency_key
            .map(|key| ("idempotency-key", key))
            .into_iter()
            .collect();
        self.request(Method::POST, "/messages", &headers, text)
            .await
    }

    /// Posts a message that must be accepted, and returns its id.
    async fn posted(&self, text: &str, idempotency_key: Option<&str>) -> String {
        let (status, body) = self.post(text, idempotency_key).await;
        assert_eq!(status, StatusCode::OK, "POST /messages {text:?}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        answer["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {answer}"))
            .to_owned()
    }

    /// `GET /messages`, as `(id, text)` pairs.
    async fn messages(&self) -> Vec<(String, String)> {
        let (status, body) = self.request(Method::GET, "/messages", &[], "").await;
        assert_eq!(status, StatusCode::OK, "GET /messages: {body}");
        let messages: Vec<Value> = serde_json::from_str(&body).unwrap();
        messages
            .iter()
            .map(|message| {
                (
                    message["id"].as_str().unwrap().to_owned(),
                    message["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    async fn stats(&self) -> Value {
        let (status, body) = self.request(Method::GET, "/admin/stats", &[], "").await;
        assert_eq!(status, StatusCode::OK, "GET /admin/stats: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until this server has `count` subscribers.
    async fn wait_subscribers(&self, count: u64) {
        let deadline = Instant::now() + BOUND;
        loop {
            let stats = self.stats().await;
            if stats["subscribers"] == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected {count} subscribers: {stats}"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens `path` (`/events...`) as a browser would, with `Last-Event-ID` when given. The
    /// client must live as long as the events are read.
    async fn open(&self, path: &str, last_event_id: Option<&str>) -> (Client, Events) {
        open_stream(self.addr, path, last_event_id).await
    }
}

/// The next event, which must be a message with `text` and `id`.
async fn expect_message(events: &mut Events, text: &str, id: &str) {
    let event = next_event(events).await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str(), event.id.as_str()),
        ("message", text, id),
        "{event:?}"
    );
}

/// The checks, the same on both backends: messages are posted to `poster` and read from
/// `reader`, which share a hub (in-process, they are one server). The hub starts empty.
async fn converse(poster: u16, reader: u16) {
    for port in [poster, reader] {
        assert_healthy_with_metrics(port, "chat").await;
    }
    let (poster, reader) = (Chat::new(poster), Chat::new(reader));
    assert_eq!(reader.messages().await, []);

    // A page's stream on the reader gets a message posted on the poster, with the id the
    // post answered: the hub's first.
    let (_page, mut stream) = reader.open("/events", None).await;
    reader.wait_subscribers(1).await;
    let hello = poster.posted("hello", None).await;
    let (epoch, number) = split_id(&hello);
    assert_eq!(number, 1, "{hello}");
    expect_message(&mut stream, "hello", &hello).await;

    // Posted twice with one Idempotency-Key, once on each server: stored once, and both
    // answers give its id. The next message follows it on the stream, with no repeat between.
    let once = poster.posted("once", Some("the-same-key")).await;
    let again = reader.posted("once", Some("the-same-key")).await;
    assert_eq!(
        again, once,
        "a repeated Idempotency-Key answers the first id"
    );
    let again = poster.posted("once", Some("the-same-key")).await;
    assert_eq!(
        again, once,
        "a repeated Idempotency-Key answers the first id"
    );
    let lines = poster.posted("two\nlines", Some("another-key")).await;
    let plain = poster.posted("no key", None).await;
    let ids = [&hello, &once, &lines, &plain];
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(split_id(id), (epoch.clone(), n as u64 + 1), "{ids:?}");
    }
    expect_message(&mut stream, "once", &once).await;
    expect_message(&mut stream, "two\nlines", &lines).await;
    expect_message(&mut stream, "no key", &plain).await;
    // The page's stream is open on the reader, and its events were counted there.
    assert_eq!(
        metric(reader.port(), "sse_connections_active").await,
        Some(1.0)
    );
    let sent = metric(reader.port(), "sse_events_sent_total").await;
    assert!(sent.is_some_and(|sent| sent >= 4.0), "{sent:?}");

    // Both servers list the same messages with the same ids, each once.
    let expected: Vec<(String, String)> = [
        (&hello, "hello"),
        (&once, "once"),
        (&lines, "two\nlines"),
        (&plain, "no key"),
    ]
    .into_iter()
    .map(|(id, text)| (id.clone(), text.to_owned()))
    .collect();
    assert_eq!(reader.messages().await, expected);
    assert_eq!(poster.messages().await, expected);

    // A browser that saw `hello` resumes on either server with exactly what followed; a page
    // that loaded up to `once` streams from there with `?after=`.
    for server in [&poster, &reader] {
        let (_client, mut resumed) = server.open("/events", Some(&hello)).await;
        for (id, text) in &expected[1..] {
            expect_message(&mut resumed, text, id).await;
        }
        let (_client, mut after) = server.open(&format!("/events?after={once}"), None).await;
        for (id, text) in &expected[2..] {
            expect_message(&mut after, text, id).await;
        }
    }

    // Refused posts: blank, too long, an unusable Idempotency-Key. Nothing is stored.
    for (text, key) in [
        ("  \n ", None),
        (&*"x".repeat(1001), None),
        ("fine", Some("")),
        ("fine", Some(&*"k".repeat(101))),
    ] {
        let (status, body) = poster.post(text, key).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!body.trim().is_empty(), "a 400 says why");
    }
    assert_eq!(reader.messages().await, expected);

    // `POST /admin/drop` ends the reader's streams; a browser comes back with the id it saw
    // last and gets what it missed, then live messages.
    let (status, _) = reader.request(Method::POST, "/admin/drop", &[], "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_ends(&mut stream).await;
    let missed = poster.posted("while away", None).await;
    let (_page, mut stream) = reader.open("/events", Some(&plain)).await;
    expect_message(&mut stream, "while away", &missed).await;
    let live = poster.posted("live", None).await;
    expect_message(&mut stream, "live", &live).await;

    let stats = reader.stats().await;
    assert_eq!(stats["subscribers"], 1, "{stats}");
    assert_eq!(stats["resets"], 0, "{stats}");
    assert_eq!(stats["stopped"], false, "{stats}");
    assert!(stats["replays"].as_u64().unwrap() >= 3, "{stats}");
    assert!(stats["deliveries"].as_u64().unwrap() >= 6, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_example_in_process() {
    let chat = chat_executable().await;
    let server = Running::start(&chat, 0, &[])
        .await
        .expect("the chat starts");
    let port = server.port;
    converse(port, port).await;

    // In-process, the history ends with the server: a browser that comes back to a restarted
    // one gets the reset event, whose id is the new hub's newest (none yet: number 0).
    let (last, _) = Chat::new(port).messages().await.pop().unwrap();
    server.kill().await;
    let server = Running::start(&chat, port, &[])
        .await
        .expect("the chat starts again");
    let (_page, mut stream) = Chat::new(port).open("/events", Some(&last)).await;
    let reset = next_event(&mut stream).await;
    assert_eq!((reset.event.as_str(), reset.data.as_str()), ("reset", ""));
    let (epoch, number) = split_id(&reset.id);
    assert_eq!(number, 0, "{reset:?}");
    assert_ne!(
        epoch,
        split_id(&last).0,
        "a new hub numbers under a new epoch"
    );
    server.kill().await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and the redis feature: cargo test --features redis --test chat -- --include-ignored"]
async fn the_chat_example_on_redis() {
    let mut redis = redis_server::RedisServer::start().await;
    let chat = chat_executable().await;
    let url = redis.url();
    let first = Running::start(&chat, 0, &["--redis", &url])
        .await
        .expect("the first chat starts");
    let second = Running::start(&chat, 0, &["--redis", &url])
        .await
        .expect("the second chat starts");
    converse(first.port, second.port).await;

    // The history lives in Redis: a third server, started now, lists the messages and resumes
    // a browser that saw the first one.
    let third = Running::start(&chat, 0, &["--redis", &url])
        .await
        .expect("the third chat starts");
    let (second, third) = (Chat::new(second.port), Chat::new(third.port));
    let expected = second.messages().await;
    assert_eq!(third.messages().await, expected);
    let (_page, mut resumed) = third.open("/events", Some(&expected[0].0)).await;
    for (id, text) in &expected[1..] {
        expect_message(&mut resumed, text, id).await;
    }

    // Redis gone: posts answer 503 saying whether the message may have been stored, the list
    // answers 503, and open streams stay open.
    redis.kill();
    let (status, body) = second.post("lost?", Some("while-down")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("not stored") || body.contains("may have been stored"),
        "{body}"
    );
    let (status, body) = second.request(Method::GET, "/messages", &[], "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // The health check says so, naming Redis by its address.
    let (status, _, body) = get(second.addr.port(), "/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let redis_addr = format!("Redis at 127.0.0.1:{}", redis.port);
    assert!(body.contains(&redis_addr), "{body}");
    assert!(
        timeout(
            Duration::from_millis(500),
            futures_util::StreamExt::next(&mut resumed)
        )
        .await
        .is_err(),
        "an open stream stays open, quietly, while Redis is down"
    );
    drop(first);
}

/// A chat that cannot reach its Redis refuses to start, saying why without the URL's
/// password. Needs no `redis-server`.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_example_refuses_to_start_without_redis() {
    let chat = chat_executable().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let output = timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(&chat)
            .args(["--port", "0", "--redis"])
            .arg(format!("redis://:a-secret-password@127.0.0.1:{port}/"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the chat gives up in time")
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(!output.status.success(), "{}", output.status);
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(stderr.contains("cannot start the chat"), "{stderr}");
    assert!(
        !stderr.contains("a-secret-password") && !stdout.contains("a-secret-password"),
        "the password is never printed: {stderr}"
    );
}

/// Stands for the Redis test in a build without the `redis` feature, so that a plain
/// `cargo test` lists it as ignored rather than running nothing silently.
#[cfg(not(feature = "redis"))]
#[test]
#[ignore = "needs redis-server and the redis feature: cargo test --features redis --test chat -- --include-ignored"]
fn the_chat_example_on_redis_needs_the_redis_feature() {
    panic!("build with --features redis to run the chat example on Redis");
}

/// The Redis tests' `redis-server`, of which this test uses a part.
#[cfg(feature = "redis")]
#[allow(dead_code)]
#[path = "redis/server.rs"]
mod redis_server;
