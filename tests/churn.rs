//! Churn: 10,000 connect/disconnect cycles against a real server, with handlers in each
//! documented pattern, leave no handler, task, subscriber or memory behind. It is alone in its
//! file so that the process's memory is its own. Run with `cargo test --test churn`.

mod common;

use bytes::Bytes;
use common::next_data_frame as next_frame;
use http::Request;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpStream},
    time::timeout,
};
use tower_eventsource::{Broadcast, Connection, EventSourceService, PushError};

fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connect_disconnect_cycles_leave_nothing_behind() {
    const CYCLES: usize = 10_000;
    const AT_ONCE: usize = 50;
    let hub = Broadcast::new();
    let live_handlers = Arc::new(AtomicUsize::new(0));
    struct Live(Arc<AtomicUsize>);
    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let events = EventSourceService::new({
        let hub = hub.clone();
        let live = live_handlers.clone();
        move |conn: Connection, req: Request<Incoming>| {
            live.fetch_add(1, Ordering::SeqCst);
            let live = Live(live.clone());
            let hub = hub.clone();
            async move {
                let _live = live;
                conn.push("hello").await?;
                match req.uri().path() {
                    // A push loop: ends when a push fails.
                    "/loop" => loop {
                        conn.push("tick").await?;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    },
                    // Subscribe to the hub and return: the hub keeps the stream.
                    "/hub" => {
                        hub.subscribe(&conn).await;
                        Ok(())
                    }
                    // Wait for the client to go.
                    _ => {
                        conn.closed().await;
                        Ok::<_, PushError>(())
                    }
                }
            }
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let conn = builder
                .serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(events.clone()),
                )
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    let metrics = tokio::runtime::Handle::current().metrics();

    let cycle = |i: usize| async move {
        let path = ["/loop", "/hub", "/select"][i % 3];
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let req = Request::get(path).body(Empty::<Bytes>::new()).unwrap();
        let mut response = sender.send_request(req).await.unwrap();
        let first = next_frame(response.body_mut()).await;
        assert!(first.starts_with(b"data: hello\n\n"), "{first:?}");
        drop(response);
        drop(sender);
        conn.abort();
    };
    let run = |from: usize, to: usize| async move {
        let mut i = from;
        while i < to {
            let batch: Vec<_> = (i..(i + AT_ONCE).min(to))
                .map(|i| tokio::spawn(cycle(i)))
                .collect();
            for task in batch {
                task.await.unwrap();
            }
            i += AT_ONCE;
        }
    };
    let settle = |baseline: usize| {
        let (hub, live_handlers, metrics) = (&hub, &live_handlers, &metrics);
        timeout(Duration::from_secs(20), async move {
            loop {
                hub.send("ping").await.unwrap();
                if live_handlers.load(Ordering::SeqCst) == 0
                    && metrics.num_alive_tasks() <= baseline
                    && hub.stats().subscribers == 0
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Warm up allocator pools and runtime structures first.
    run(0, 1_000).await;
    let baseline_tasks = metrics.num_alive_tasks();
    let _ = settle(baseline_tasks).await;
    let baseline_tasks = metrics.num_alive_tasks();
    let rss_before = rss_kib();

    let started = std::time::Instant::now();
    run(0, CYCLES).await;
    settle(baseline_tasks)
        .await
        .expect("every handler, task and subscriber is gone");
    let rss_after = rss_kib();
    eprintln!(
        "{CYCLES} cycles in {:?}; tasks {} -> {}; RSS {rss_before} KiB -> {rss_after} KiB",
        started.elapsed(),
        baseline_tasks,
        metrics.num_alive_tasks(),
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS grew by {} KiB",
        rss_after.saturating_sub(rss_before)
    );
}
