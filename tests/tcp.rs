//! The `tcp` module on real sockets on 127.0.0.1: `tcp::bind` listens with the system's
//! `somaxconn`, so a reconnect storm of 1,000 clients waits in the accept queue while the server
//! accepts none (tokio's own `bind` holds 129 and drops the rest's SYNs), seen in the kernel's
//! `/proc/net/tcp`; `TCP_USER_TIMEOUT` set on the listener is inherited by every socket it
//! accepts, read back with `getsockopt` through `socket2`. Linux only, like the option. Run with
//! `cargo test --test tcp`; what it does with the sockets is in `tests/stuck_sockets.rs`.

#![cfg(target_os = "linux")]

mod common;

use common::BOUND;
use futures_util::future::join_all;
use socket2::SockRef;
use std::{io, net::SocketAddr, time::Duration};
use tokio::{
    net::{TcpListener, TcpStream},
    time::timeout,
};
use tower_eventsource::tcp;

/// The clients of the storm: more than tokio's backlog of 128 and fewer than Linux's default
/// `somaxconn` since 5.4 (4096).
const STORM: usize = 1000;

/// The `TCP_USER_TIMEOUT` of `socket`, read with `getsockopt`.
fn user_timeout<'s>(socket: impl Into<SockRef<'s>>) -> Option<Duration> {
    socket.into().tcp_user_timeout().expect("getsockopt")
}

/// `somaxconn`, as the kernel has it.
fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("/proc/sys/net/core/somaxconn")
        .trim()
        .parse()
        .expect("a number")
}

/// How many connections wait in the accept queue of the listener on 127.0.0.1:`port`: the
/// `rx_queue` that `/proc/net/tcp` shows for a listening socket.
fn accept_queue(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    let row = table
        .lines()
        .map(|row| row.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(1) == Some(&&*local) && fields.get(3) == Some(&"0A"))
        .unwrap_or_else(|| panic!("no listener on {local} in /proc/net/tcp"));
    let (_, rx_queue) = row[4].split_once(':').expect("tx_queue:rx_queue");
    usize::from_str_radix(rx_queue, 16).expect("hex")
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

/// Connects `count` clients to `addr` at once, each given `wait` to connect; returns those
/// that did.
async fn storm(addr: SocketAddr, count: usize, wait: Duration) -> Vec<TcpStream> {
    let connects = (0..count).map(|_| timeout(wait, TcpStream::connect(addr)));
    join_all(connects)
        .await
        .into_iter()
        .filter_map(|connected| connected.ok()?.ok())
        .collect()
}

#[tokio::test]
async fn bind_listens_with_somaxconn_and_queues_a_storm_of_clients() {
    raise_fd_limit();
    assert_eq!(tcp::backlog(), somaxconn());
    let clients = STORM.min(somaxconn() as usize);

    let listener = tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Nothing accepts: every client completes its handshake into the accept queue.
    let connected = storm(addr, clients, BOUND).await;
    assert_eq!(connected.len(), clients, "every client connects in time");
    assert_eq!(accept_queue(addr.port()), clients);

    // Then the server takes them, as a server catching up with a reconnect storm does.
    for _ in 0..clients {
        timeout(BOUND, listener.accept()).await.unwrap().unwrap();
    }
    assert_eq!(accept_queue(addr.port()), 0);
}

/// What `tcp::bind` fixes: tokio's `bind` listens with 128, so the queue holds 129 connections
/// and the other clients' SYNs are dropped, each tried again only after a second.
#[tokio::test]
async fn tokio_bind_queues_129_clients_and_drops_the_others_syns() {
    raise_fd_limit();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Less than the second after which a client sends a dropped SYN again.
    let connected = storm(addr, 300, Duration::from_millis(500)).await;
    assert_eq!(accept_queue(addr.port()), 129);
    assert!(connected.len() < 300, "{} connected", connected.len());
}

#[tokio::test]
async fn bind_fails_with_the_systems_error() {
    let listener = tcp::bind("127.0.0.1:0").await.unwrap();
    let taken = listener.local_addr().unwrap();
    let error = tcp::bind(taken).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
    // Resolves to nothing: an empty list of addresses.
    let error = tcp::bind(&[][..] as &[SocketAddr]).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
    // A name, resolved first, as with tokio's `bind`.
    let listener = tcp::bind(("localhost", 0)).await.unwrap();
    assert!(listener.local_addr().unwrap().ip().is_loopback());
}

#[tokio::test]
async fn sockets_accepted_from_a_listener_inherit_its_user_timeout() {
    let listener = tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    assert_eq!(user_timeout(&listener), None, "off by default");

    // A connection the kernel completed before the call keeps the default.
    let early = TcpStream::connect(addr).await.unwrap();
    tcp::set_user_timeout(&listener, Duration::from_millis(7300)).unwrap();
    assert_eq!(user_timeout(&listener), Some(Duration::from_millis(7300)));
    let (early_accepted, _) = listener.accept().await.unwrap();
    assert_eq!(user_timeout(&early_accepted), None);

    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(TcpStream::connect(addr).await.unwrap());
        let (accepted, _) = listener.accept().await.unwrap();
        assert_eq!(user_timeout(&accepted), Some(Duration::from_millis(7300)));
    }
    // The client's end is not the listener's: it keeps the default.
    assert_eq!(user_timeout(&clients[0]), None);
    drop(early);
}

#[tokio::test]
async fn set_user_timeout_on_a_stream_rounds_to_milliseconds_and_zero_turns_it_off() {
    let listener = tcp::bind("127.0.0.1:0").await.unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (stream, _) = listener.accept().await.unwrap();

    for (set, read) in [
        (Duration::from_secs(30), Some(Duration::from_secs(30))),
        (Duration::from_micros(1500), Some(Duration::from_millis(1))),
        (Duration::from_nanos(1), Some(Duration::from_millis(1))),
        (Duration::MAX, Some(Duration::from_millis(i32::MAX as u64))),
        (Duration::ZERO, None),
    ] {
        tcp::set_user_timeout(&stream, set).unwrap();
        assert_eq!(user_timeout(&stream), read, "set {set:?}");
    }

    // The standard library's sockets too.
    let std_stream = stream.into_std().unwrap();
    tcp::set_user_timeout(&std_stream, Duration::from_secs(2)).unwrap();
    assert_eq!(user_timeout(&std_stream), Some(Duration::from_secs(2)));
    let std_listener = listener.into_std().unwrap();
    tcp::set_user_timeout(&std_listener, Duration::from_secs(3)).unwrap();
    assert_eq!(user_timeout(&std_listener), Some(Duration::from_secs(3)));
}
