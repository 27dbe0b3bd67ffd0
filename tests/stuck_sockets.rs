//! Clients that send their request and never read, against a real axum server on 127.0.0.1,
//! counted by the server's open sockets (its file descriptors), not by the library's state.
//! With `TCP_USER_TIMEOUT` set on the listener with `tcp::set_user_timeout`, as the README
//! shows, every socket axum accepts has it, and the kernel drops those connections soon after
//! their data stops being acknowledged, while a client that reads still gets every event;
//! without it they stay open past the send timeout. Linux only; each test waits a few seconds
//! of real time, since the kernel's timer cannot run on tokio's paused clock. Run with
//! `cargo test --test stuck_sockets`.

#![cfg(target_os = "linux")]

mod common;

use axum::{body::Body, serve::ListenerExt, Router};
use common::{read_events, Client, Proto};
use futures_util::StreamExt;
use http::Request;
use socket2::SockRef;
use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tower_eventsource::{tcp, Connection, Event, EventSourceService};

/// Clients that never read.
const STUCK: usize = 20;
/// Events every stream is given: 6.5 MB in all, more than a loopback connection's kernel
/// buffers take in from a client that never reads (about 3.8 MB measured).
const EVENTS: usize = 400;
const EVENT_BYTES: usize = 16 * 1024;
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
const USER_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound for what should happen within a few seconds; only reached when a test fails.
const LONG: Duration = Duration::from_secs(20);

struct Server {
    addr: SocketAddr,
    /// Handlers whose push failed: the client was gone, or the send timeout ended the stream.
    failed: Arc<AtomicUsize>,
    /// The socket inode of every accepted connection, by the client's port.
    accepted: Arc<Mutex<HashMap<u16, u64>>>,
    /// The `TCP_USER_TIMEOUT` of every accepted socket, read with `getsockopt`.
    user_timeouts: Arc<Mutex<Vec<Option<Duration>>>>,
}

/// Serves streams of [`EVENTS`] events on 127.0.0.1 with axum, on a listener with
/// `TCP_USER_TIMEOUT` when `user_timeout` is given.
async fn serve(user_timeout: Option<Duration>) -> Server {
    let failed = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(HashMap::new()));
    let user_timeouts = Arc::new(Mutex::new(Vec::new()));
    let events = EventSourceService::new({
        let failed = Arc::clone(&failed);
        move |conn: Connection, _req: Request<Body>| {
            let failed = Arc::clone(&failed);
            async move {
                let data = "x".repeat(EVENT_BYTES);
                for n in 0..EVENTS {
                    if conn
                        .push(Event::new().id(n.to_string()).data(&data))
                        .await
                        .is_err()
                    {
                        failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
                conn.close();
            }
        }
    })
    .buffer(4)
    .send_timeout(SEND_TIMEOUT);
    let app = Router::new().route_service("/events", events);

    let listener = tcp::bind("127.0.0.1:0").await.unwrap();
    if let Some(timeout) = user_timeout {
        tcp::set_user_timeout(&listener, timeout).expect("TCP_USER_TIMEOUT is set");
    }
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io({
        let (accepted, user_timeouts) = (Arc::clone(&accepted), Arc::clone(&user_timeouts));
        move |tcp| {
            let user_timeout = SockRef::from(&*tcp).tcp_user_timeout();
            user_timeouts
                .lock()
                .unwrap()
                .push(user_timeout.expect("getsockopt"));
            if let (Ok(peer), Some(inode)) = (tcp.peer_addr(), socket_inode(tcp.as_raw_fd())) {
                accepted.lock().unwrap().insert(peer.port(), inode);
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        addr,
        failed,
        accepted,
        user_timeouts,
    }
}

/// The inode of the socket open as file descriptor `fd` in this process.
fn socket_inode(fd: i32) -> Option<u64> {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let target = target.to_str()?;
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// How many of the sockets `inodes` this process still holds open.
fn open(inodes: &[u64]) -> usize {
    let held: Vec<u64> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| fd.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(socket_inode)
        .collect();
    inodes.iter().filter(|inode| held.contains(inode)).count()
}

/// Opens [`STUCK`] connections that send a request for the stream and never read, and waits
/// until the server has accepted them. Returns them and the inodes of the server's ends.
async fn stuck_clients(server: &Server) -> (Vec<TcpStream>, Vec<u64>) {
    let mut clients = Vec::new();
    for _ in 0..STUCK {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        clients.push(tcp);
    }
    let ports: Vec<u16> = clients
        .iter()
        .map(|tcp| tcp.local_addr().unwrap().port())
        .collect();
    let mut ends = Vec::new();
    wait_until("the server accepted every client", || {
        let accepted = server.accepted.lock().unwrap();
        ends = ports
            .iter()
            .filter_map(|port| accepted.get(port).copied())
            .collect();
        ends.len() == STUCK
    })
    .await;
    (clients, ends)
}

/// Checks that the server accepted `count` sockets, each with `expected` as its
/// `TCP_USER_TIMEOUT`.
fn assert_user_timeouts(server: &Server, expected: Option<Duration>, count: usize) {
    let user_timeouts = server.user_timeouts.lock().unwrap();
    assert_eq!(*user_timeouts, vec![expected; count]);
}

/// Polls every 50 ms until `done` holds; panics with `what` after [`LONG`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < LONG, "{what}: not after {LONG:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_user_timeout_closes_the_sockets_of_clients_that_never_read() {
    let server = serve(Some(USER_TIMEOUT)).await;
    let (stuck, ends) = stuck_clients(&server).await;

    // A client that reads, on the same server, gets every event in order.
    let mut reader = Client::connect(server.addr, Proto::Http1).await;
    let mut events = read_events(reader.get("/events").await.into_body());
    let mut ids = Vec::new();
    while let Some(event) = tokio::time::timeout(LONG, events.next())
        .await
        .expect("the reader's events keep coming")
    {
        let event = event.expect("the stream parses");
        assert_eq!(event.data.len(), EVENT_BYTES);
        ids.push(event.id);
    }
    let expected: Vec<String> = (0..EVENTS).map(|n| n.to_string()).collect();
    assert_eq!(ids, expected);

    // Every socket axum accepted, the reader's too, inherited the listener's setting.
    assert_user_timeouts(&server, Some(USER_TIMEOUT), STUCK + 1);
    wait_until(
        "the server closed every never-reading client's socket",
        || open(&ends) == 0,
    )
    .await;
    wait_until("every stuck stream's handler saw its push fail", || {
        server.failed.load(Ordering::SeqCst) == STUCK
    })
    .await;
    drop(stuck);
}

/// What the setting above fixes: the send timeout ends the library's stream, but the server
/// does not poll a body while the socket is full, so it keeps the socket and its send buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tcp_user_timeout_sockets_of_clients_that_never_read_stay_open() {
    let server = serve(None).await;
    let (stuck, ends) = stuck_clients(&server).await;
    assert_user_timeouts(&server, None, STUCK);

    wait_until("every stuck stream's push hit the send timeout", || {
        server.failed.load(Ordering::SeqCst) == STUCK
    })
    .await;
    // Longer than the user timeout that closes them above, and more than the send timeout.
    tokio::time::sleep(USER_TIMEOUT + Duration::from_secs(2)).await;
    assert_eq!(open(&ends), STUCK, "the server still holds every socket");
    drop(stuck);
}
