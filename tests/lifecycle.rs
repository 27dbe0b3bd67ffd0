//! Lifecycle over real sockets: graceful shutdown of 1,000 streams, clients that stop reading
//! or vanish behind a proxy, panicking handlers, and limits on what a stuck client holds.
//! Run with `cargo test --test lifecycle`.

mod common;

use bytes::Bytes;
use common::next_data_frame as next_frame;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    time::{timeout, Instant},
};
use tower::ServiceExt;
use tower_eventsource::{
    Broadcast, CloseReason, Connection, Event, EventSourceService, HandlerOutput, PushError,
    Shutdown, TryPushError,
};

/// A hyper server on 127.0.0.1:0 that drains its connections gracefully when `stop` fires.
/// The returned handle resolves once every connection has finished.
async fn serve<H, F>(
    service: EventSourceService<H>,
    stop: oneshot::Receiver<()>,
) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    H: Fn(Connection, Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future + Send + 'static,
    F::Output: HandlerOutput,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        tokio::pin!(stop);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let conn = builder.serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service.clone()),
                    );
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                _ = &mut stop => break,
            }
        }
        graceful.shutdown().await;
    });
    (addr, server)
}

/// Sends `GET /` over a new HTTP/1.1 connection and returns the response's body stream.
async fn open(addr: SocketAddr, last_event_id: Option<&str>) -> http::Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get("/");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap()
}

/// Reads the body until it ends, returning everything it carried.
async fn read_to_end(response: http::Response<Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A oneshot sender that an `Fn` handler can use once.
type Slot<T> = Arc<std::sync::Mutex<Option<oneshot::Sender<T>>>>;

fn slot<T>() -> (Slot<T>, oneshot::Receiver<T>) {
    let (tx, rx) = oneshot::channel();
    (Arc::new(std::sync::Mutex::new(Some(tx))), rx)
}

fn put<T>(slot: &Slot<T>, value: T) {
    if let Some(tx) = slot.lock().unwrap().take() {
        let _ = tx.send(value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_of_a_thousand_streams_sends_the_farewell_and_finishes() {
    const STREAMS: usize = 1000;
    let shutdown = Shutdown::new();
    let handlers_done = Arc::new(AtomicUsize::new(0));
    let done = handlers_done.clone();
    let events = EventSourceService::new(move |conn: Connection, _req: Request<Incoming>| {
        let done = done.clone();
        async move {
            conn.push("hello").await?;
            conn.closed().await;
            done.fetch_add(1, Ordering::SeqCst);
            Ok::<_, PushError>(())
        }
    })
    .graceful_shutdown(&shutdown);
    let (stop, stopped) = oneshot::channel();
    let (addr, server) = serve(events, stopped).await;

    let mut clients = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let mut response = open(addr, None).await;
        assert_eq!(next_frame(response.body_mut()).await, "data: hello\n\n");
        clients.push(tokio::spawn(read_to_end(response)));
    }

    let started = std::time::Instant::now();
    shutdown
        .trigger_with(
            Event::new()
                .retry(Duration::from_secs(5))
                .comment("restarting"),
        )
        .unwrap();
    stop.send(()).unwrap();
    timeout(Duration::from_secs(10), server)
        .await
        .expect("graceful shutdown finished")
        .unwrap();
    let took = started.elapsed();
    eprintln!("graceful shutdown of {STREAMS} streams took {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    for client in clients {
        let rest = timeout(Duration::from_secs(5), client)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, "retry: 5000\n: restarting\n\n");
    }
    timeout(Duration::from_secs(5), async {
        while handlers_done.load(Ordering::SeqCst) < STREAMS {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every handler saw closed()");
}

#[tokio::test]
async fn requests_after_shutdown_get_the_farewell_without_running_the_handler() {
    let shutdown = Shutdown::new();
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    let events = EventSourceService::new(move |conn: Connection, _req: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { conn.closed().await }
    })
    .graceful_shutdown(&shutdown);
    shutdown
        .trigger_with(Event::new().retry(Duration::from_secs(9)))
        .unwrap();
    assert!(shutdown.is_triggered());
    let response = events.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "retry: 9000\n\n");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_invalid_farewell_is_an_error_and_streams_still_end() {
    let shutdown = Shutdown::new();
    let events = EventSourceService::new(|conn: Connection, _req: Request<()>| async move {
        let _ = conn.push("a").await;
        conn.closed().await;
    })
    .graceful_shutdown(&shutdown);
    let response = events.oneshot(Request::new(())).await.unwrap();
    tokio::task::yield_now().await;
    assert!(shutdown.trigger_with(Event::new().event("bye")).is_err());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "data: a\n\n");
}

/// A server whose handler pushes 16 KiB events as fast as the client takes them, reporting
/// when its stream ended (by tokio's clock, which the test pauses).
async fn flooding_server(
    send_timeout: Duration,
) -> (SocketAddr, oneshot::Receiver<(Instant, PushError)>) {
    let (ended_tx, ended) = slot();
    let events = EventSourceService::new(move |conn: Connection, _req: Request<Incoming>| {
        let ended_tx = ended_tx.clone();
        async move {
            let chunk = "x".repeat(16 * 1024);
            let error = loop {
                if let Err(error) = conn.push(chunk.as_str()).await {
                    break error;
                }
            };
            assert!(conn.is_closed());
            conn.closed().await;
            put(&ended_tx, (Instant::now(), error));
        }
    })
    .buffer(16)
    .send_timeout(send_timeout);
    let (_stop, stopped) = oneshot::channel();
    let (addr, _server) = serve(events, stopped).await;
    std::mem::forget(_stop);
    (addr, ended)
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_ended_by_the_send_timeout() {
    let (addr, ended) = flooding_server(Duration::from_secs(5)).await;
    // Read the head and one frame, then never read again while keeping the socket open.
    let mut response = open(addr, None).await;
    next_frame(response.body_mut()).await;
    let stuck_since = Instant::now();
    let (at, error) = timeout(Duration::from_secs(60), ended)
        .await
        .expect("stream ended")
        .unwrap();
    assert_eq!(error, PushError::Disconnected);
    let detected = at - stuck_since;
    eprintln!("stalled client detected after {detected:?} (send timeout 5 s, tokio clock)");
    assert!(detected >= Duration::from_secs(5), "{detected:?}");
    assert!(detected < Duration::from_secs(7), "{detected:?}");
    drop(response);
}

/// A TCP proxy on loopback that forwards both ways until `cut` turns true, then stops
/// moving bytes without closing either socket: a peer that vanished without a FIN.
async fn blackhole_proxy(upstream: SocketAddr, cut: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(upstream).await.unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let mut cut_up = cut.clone();
        let mut cut_down = cut;
        let up = async move {
            let mut buf = vec![0; 8192];
            loop {
                tokio::select! {
                    n = client_read.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => server_write.write_all(&buf[..n]).await.unwrap(),
                    },
                    () = async { let _ = cut_up.wait_for(|cut| *cut).await; } => break,
                }
            }
            (client_read, server_write)
        };
        let down = async move {
            let mut buf = vec![0; 8192];
            loop {
                tokio::select! {
                    n = server_read.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if client_write.write_all(&buf[..n]).await.is_err() { break }
                        }
                    },
                    () = async { let _ = cut_down.wait_for(|cut| *cut).await; } => break,
                }
            }
            (server_read, client_write)
        };
        // Hold every socket open, moving nothing, until the test ends.
        let _sockets = tokio::join!(up, down);
        std::future::pending::<()>().await;
    });
    addr
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_vanishes_behind_a_proxy_is_ended_by_the_send_timeout() {
    let (addr, ended) = flooding_server(Duration::from_secs(3)).await;
    let (cut_tx, cut_rx) = watch::channel(false);
    let proxy = blackhole_proxy(addr, cut_rx).await;
    let mut response = open(proxy, None).await;
    next_frame(response.body_mut()).await;
    cut_tx.send(true).unwrap();
    let cut_at = Instant::now();
    let (at, error) = timeout(Duration::from_secs(60), ended)
        .await
        .expect("stream ended")
        .unwrap();
    assert_eq!(error, PushError::Disconnected);
    let detected = at - cut_at;
    eprintln!("vanished peer detected after {detected:?} (send timeout 3 s, tokio clock)");
    assert!(detected >= Duration::from_secs(3), "{detected:?}");
    assert!(detected < Duration::from_secs(5), "{detected:?}");
}

#[tokio::test]
async fn a_stuck_client_holds_no_more_than_its_buffer() {
    let (result_tx, result) = slot();
    let events = EventSourceService::new(move |conn: Connection, _req: Request<()>| {
        let result_tx = result_tx.clone();
        async move {
            let (mut accepted, mut full) = (0, 0);
            for _ in 0..10_000 {
                match conn.try_push("x".repeat(1024)) {
                    Ok(()) => accepted += 1,
                    Err(TryPushError::Full(_)) => full += 1,
                    Err(other) => panic!("unexpected {other}"),
                }
            }
            put(&result_tx, (accepted, full, conn));
        }
    })
    .buffer(8);
    // The body is never polled: the client reads nothing.
    let response = events.oneshot(Request::new(())).await.unwrap();
    let (accepted, full, conn) = result.await.unwrap();
    // The queue never held more than the buffer's 8 events of 1 KiB.
    assert_eq!((accepted, full), (8, 9_992));
    drop(response);
    assert!(conn.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_stalled_buffer_ends_the_stream_for_try_push_too() {
    let (tx, rx) = slot();
    let events = EventSourceService::new(move |conn: Connection, _req: Request<()>| {
        let tx = tx.clone();
        async move {
            for _ in 0..4 {
                conn.try_push("x").unwrap();
            }
            assert!(matches!(conn.try_push("x"), Err(TryPushError::Full(_))));
            tokio::time::sleep(Duration::from_secs(2)).await;
            put(&tx, (conn.try_push("x"), conn.is_closed()));
        }
    })
    .buffer(4)
    .send_timeout(Duration::from_secs(2));
    let _response = events.oneshot(Request::new(())).await.unwrap();
    let (result, closed) = rx.await.unwrap();
    assert!(matches!(result, Err(TryPushError::Disconnected(_))));
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_ends_only_its_own_stream() {
    let hub = Broadcast::new();
    // A clone of the panicking handler's connection, held here as the hub holds one.
    let (watch_tx, watch_rx) = std::sync::mpsc::channel::<Connection>();
    let events = EventSourceService::new({
        let hub = hub.clone();
        let watch_tx = std::sync::Mutex::new(watch_tx);
        move |conn: Connection, req: Request<Incoming>| {
            let hub = hub.clone();
            let watch_tx = watch_tx.lock().unwrap().clone();
            async move {
                hub.subscribe(&conn).await;
                conn.push("before").await.unwrap();
                if req.uri().path() == "/panic" {
                    watch_tx.send(conn.clone()).unwrap();
                    panic!("handler panicked on purpose");
                }
                conn.closed().await;
            }
        }
    });
    let (_stop, stopped) = oneshot::channel();
    let (addr, _server) = serve(events, stopped).await;

    let mut healthy = open(addr, None).await;
    assert_eq!(next_frame(healthy.body_mut()).await, "data: before\n\n");

    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/panic").body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(req).await.unwrap();
    // The body ends cleanly (a complete chunked body), after what was pushed.
    let body = timeout(Duration::from_secs(5), read_to_end(response))
        .await
        .expect("stream ended");
    assert_eq!(body, "data: before\n\n");
    let watched = watch_rx.recv().unwrap();
    assert_eq!(watched.close_reason(), Some(CloseReason::HandlerPanic));

    // The server keeps serving: the healthy stream still gets events, and new requests work.
    timeout(Duration::from_secs(5), async {
        while hub.stats().subscribers != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let sent = hub.send("after").await.unwrap();
    assert_eq!(sent.reached(), Some(1));
    assert_eq!(next_frame(healthy.body_mut()).await, "data: after\n\n");
    let mut again = open(addr, None).await;
    assert_eq!(next_frame(again.body_mut()).await, "data: before\n\n");
}

#[tokio::test(start_paused = true)]
async fn zero_settings_are_raised_to_their_minimum() {
    let (tx, rx) = slot();
    let events = EventSourceService::new(move |conn: Connection, _req: Request<()>| {
        let tx = tx.clone();
        async move {
            let first = conn.try_push("a");
            let second = conn.try_push("b");
            put(
                &tx,
                (first.is_ok(), matches!(second, Err(TryPushError::Full(_)))),
            );
            conn.closed().await;
        }
    })
    .buffer(0)
    .keep_alive(Duration::ZERO);
    let response = events.oneshot(Request::new(())).await.unwrap();
    assert_eq!(rx.await.unwrap(), (true, true));
    let mut body = response.into_body();
    let started = Instant::now();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "data: a\n\n"
    );
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        ":\n\n"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(1));
}

#[tokio::test]
async fn an_unknown_method_gets_405() {
    let events = EventSourceService::new(|_conn: Connection, _req: Request<()>| async {});
    let method = http::Method::from_bytes(b"SUBSCRIBE").unwrap();
    let req = Request::builder().method(method).body(()).unwrap();
    let response = events.oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
}

#[tokio::test(start_paused = true)]
async fn the_send_timeout_also_ends_a_closed_stream_whose_client_stopped_reading() {
    let (tx, rx) = slot();
    let events = EventSourceService::new(move |conn: Connection, _req: Request<()>| {
        let tx = tx.clone();
        async move {
            while conn.try_push("x").is_ok() {}
            conn.close();
            put(&tx, ());
        }
    })
    .buffer(4)
    .send_timeout(Duration::from_secs(2));
    // The body is never polled: the client reads nothing.
    let response = events.oneshot(Request::new(())).await.unwrap();
    rx.await.unwrap();
    use http_body::Body as _;
    assert!(!response.body().is_end_stream(), "queued events wait");
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert!(!response.body().is_end_stream(), "not before the timeout");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        response.body().is_end_stream(),
        "the queue was dropped and the stream ended"
    );
}

#[tokio::test(start_paused = true)]
async fn the_longest_durations_do_not_overflow() {
    let events = EventSourceService::new(|conn: Connection, _req: Request<()>| async move {
        for _ in 0..3 {
            let _ = conn.try_push("x");
        }
        conn.push("y").await
    })
    .buffer(2)
    .keep_alive(Duration::MAX)
    .send_timeout(Duration::MAX);
    let response = events.oneshot(Request::new(())).await.unwrap();
    let mut body = response.into_body();
    for want in ["data: x\n\ndata: x\n\n", "data: y\n\n"] {
        let frame = timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a frame")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), want);
    }
}
