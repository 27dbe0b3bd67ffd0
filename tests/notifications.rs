//! The notifications example, run as a process as a user would: `401` with `WWW-Authenticate`
//! without credentials; per-user streams authenticated by bearer token, cookie or query token;
//! a notification reaching only its user, with the id `POST /notify` answered (each user's
//! numbered on their own, `<epoch>-<number>`); an exact resume from `Last-Event-ID`; CORS with
//! credentials for the named origin only; `GET /healthz` and `GET /metrics` (Prometheus's text
//! format); and Ctrl-C ending every stream with the farewell before the process exits.
//! Run with `cargo test --test notifications` (it builds the example first).

mod common;

use common::{
    example::{assert_healthy_with_metrics, build, Running, BUILD},
    next_event, read_events, split_id, Client, Events, Proto, BOUND,
};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client as HttpClient, rt::TokioExecutor};
use serde_json::Value;
use std::{net::SocketAddr, time::Duration};
use tokio::time::timeout;

const ORIGIN: &str = "https://app.example.com";

/// Opens `/events{query}` with `headers` and returns the response's status, headers and
/// events.
async fn open(
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Events) {
    let mut client = Client::connect(addr, Proto::Http1).await;
    let mut req = client.request(Method::GET, &format!("/events{query}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = client.send(req).await;
    // The client's connection task lives on with the response body.
    std::mem::forget(client);
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, read_events(body))
}

/// `POST /notify/{to}` as the user of `token`; returns the status and the JSON answer.
async fn notify(addr: SocketAddr, token: &str, to: &str, text: &str) -> (StatusCode, Value) {
    let client = HttpClient::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{addr}/notify/{to}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(bytes::Bytes::from(text.to_owned())))
        .unwrap();
    let response = timeout(BOUND, client.request(req)).await.unwrap().unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifications_example_streams_per_user_with_auth_resume_cors_and_shutdown() {
    let executable = timeout(BUILD, build("notifications"))
        .await
        .expect("the example builds in time")
        .expect("the example builds");
    let mut server = Running::start(&executable, 0, &["--origin", ORIGIN])
        .await
        .expect("the example starts");
    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    assert_healthy_with_metrics(server.port, "notifications").await;

    // No credentials, or a wrong token: 401 with a challenge, and no stream.
    for headers in [&[][..], &[("authorization", "Bearer nope")][..]] {
        let (status, head, _) = open(addr, "", headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            head[header::WWW_AUTHENTICATE],
            r#"Bearer realm="notifications""#
        );
    }

    // Alice by bearer token, again by cookie (as a browser would, with credentials), Bob by a
    // query token.
    let (status, head, mut alice) =
        open(addr, "", &[("authorization", "Bearer alice-token")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(head[header::CONTENT_TYPE], "text/event-stream");
    let (_, _, mut alice_cookie) =
        open(addr, "", &[("cookie", "theme=dark; session=alice-token")]).await;
    let (_, _, mut bob) = open(addr, "?token=bob-token", &[]).await;

    let (status, sent) = notify(addr, "bob-token", "alice", "lunch?").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        sent["reached"], 2,
        "both of Alice's streams, not Bob's: {sent}"
    );
    let first_id = sent["id"]
        .as_str()
        .expect("the id of the notification")
        .to_owned();
    for events in [&mut alice, &mut alice_cookie] {
        let event = next_event(events).await;
        assert_eq!(
            (event.event.as_str(), event.data.as_str(), event.id.as_str()),
            ("notification", "bob: lunch?", first_id.as_str())
        );
    }
    let (status, sent) = notify(addr, "alice-token", "bob", "yes").await;
    assert_eq!(
        (status, sent["reached"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    // Each user's notifications are numbered on their own, from 1, under their own epoch.
    let (alice_epoch, number) = split_id(&first_id);
    assert_eq!(number, 1, "{first_id}");
    let (bob_epoch, number) = split_id(sent["id"].as_str().unwrap());
    assert_eq!(number, 1, "{sent}");
    assert_ne!(alice_epoch, bob_epoch);
    assert_eq!(next_event(&mut bob).await.data, "alice: yes");
    assert_eq!(
        notify(addr, "alice-token", "carol", "?").await.0,
        StatusCode::NOT_FOUND
    );

    // Alice is away for two notifications, then resumes after the first one: exactly those.
    drop(alice_cookie);
    let mut missed = Vec::new();
    for text in ["one", "two"] {
        let (_, sent) = notify(addr, "bob-token", "alice", text).await;
        missed.push((
            format!("bob: {text}"),
            sent["id"].as_str().unwrap().to_owned(),
        ));
    }
    let numbers: Vec<_> = missed.iter().map(|(_, id)| split_id(id)).collect();
    assert_eq!(
        numbers,
        [(alice_epoch.clone(), 2), (alice_epoch, 3)],
        "{missed:?}"
    );
    assert_eq!(next_event(&mut alice).await.data, "bob: one");
    assert_eq!(next_event(&mut alice).await.data, "bob: two");
    let (_, _, mut resumed) = open(
        addr,
        "",
        &[
            ("authorization", "Bearer alice-token"),
            ("last-event-id", &first_id),
        ],
    )
    .await;
    for (data, id) in &missed {
        let event = next_event(&mut resumed).await;
        assert_eq!((&event.data, &event.id), (data, id));
    }

    // CORS: a preflight from the named origin may send credentials and `Last-Event-ID`;
    // another origin gets no grant (the allowed origin is always the named one, which a
    // browser compares with its own).
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    for (origin, granted) in [(ORIGIN, true), ("https://evil.example", false)] {
        let preflight = Request::builder()
            .method(Method::OPTIONS)
            .uri(format!("http://{addr}/events"))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "last-event-id")
            .body(Full::default())
            .unwrap();
        let response = timeout(BOUND, client.request(preflight))
            .await
            .unwrap()
            .unwrap();
        let head = response.headers();
        assert_eq!(
            head.get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_some_and(|allowed| allowed == origin),
            granted,
            "{origin}: {head:?}"
        );
        if granted {
            assert_eq!(head[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
            let allowed = head[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap();
            assert!(allowed.contains("last-event-id"), "{allowed}");
        }
    }

    // Ctrl-C: every stream gets the farewell, then ends, and the process exits cleanly.
    let pid = server.child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    for events in [&mut alice, &mut bob, &mut resumed] {
        let farewell = next_event(events).await;
        assert_eq!(
            (
                farewell.event.as_str(),
                farewell.data.as_str(),
                farewell.retry
            ),
            ("bye", "server restarting", Some(Duration::from_secs(5)))
        );
        assert!(timeout(BOUND, futures_util::StreamExt::next(events))
            .await
            .expect("the stream ends after the farewell")
            .is_none());
    }
    let exit = timeout(BOUND, server.child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
    let last = timeout(BOUND, server.stdout.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.as_deref(), Some("stopped"));
    server.kill().await;
}
