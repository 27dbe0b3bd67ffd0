//! The send timeout's timer on every path that ends a stream with events still queued for a
//! client that reads nothing: the handler dropping its handles, `close` and `Shutdown::trigger`
//! from a thread outside the runtime, and `push` waiting on a full buffer from such a thread.
//! Also that closing streams leave no timer task behind once their queue is sent.
//! Run with `cargo test --test timers`.

use http::Request;
use http_body::Body as _;
use http_body_util::BodyExt;
use std::{
    future::Future,
    pin::pin,
    sync::Arc,
    task::{Context, Poll, Wake},
    thread,
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;
use tower_eventsource::{Connection, EventSourceService, PushError, Shutdown};

const TIMEOUT: Duration = Duration::from_secs(2);

/// A service whose handler fills the buffer (4 events), hands its connection to the test and
/// returns; the client never reads, so the events stay queued.
fn filler(
    tx: mpsc::UnboundedSender<Connection>,
) -> EventSourceService<impl Fn(Connection, Request<()>) -> std::future::Ready<()> + Clone> {
    EventSourceService::new(move |conn: Connection, _req: Request<()>| {
        while conn.try_push("x").is_ok() {}
        let _ = tx.send(conn);
        std::future::ready(())
    })
    .buffer(4)
    .send_timeout(TIMEOUT)
}

/// Asserts that the body, never read, is still open just before the send timeout and ended
/// (its queue dropped) just after.
async fn ends_at_the_send_timeout(body: &tower_eventsource::EventStreamBody) {
    assert!(!body.is_end_stream(), "queued events wait");
    tokio::time::sleep(TIMEOUT - Duration::from_millis(100)).await;
    assert!(!body.is_end_stream(), "not before the timeout");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(body.is_end_stream(), "the queue was dropped at the timeout");
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_drops_every_handle_with_events_queued_is_ended_by_the_send_timeout() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let response = filler(tx).oneshot(Request::new(())).await.unwrap();
    drop(rx.recv().await.unwrap()); // the last handle
    ends_at_the_send_timeout(response.body()).await;
}

#[tokio::test(start_paused = true)]
async fn close_from_a_thread_outside_the_runtime_starts_the_send_timeout() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let response = filler(tx).oneshot(Request::new(())).await.unwrap();
    let conn = rx.recv().await.unwrap();
    let keep = conn.clone();
    thread::spawn(move || conn.close()).join().unwrap();
    ends_at_the_send_timeout(response.body()).await;
    assert_eq!(keep.push("late").await, Err(PushError::Closed));
}

#[tokio::test(start_paused = true)]
async fn shutdown_from_a_thread_outside_the_runtime_starts_the_send_timeout() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let shutdown = Shutdown::new();
    let response = filler(tx)
        .graceful_shutdown(&shutdown)
        .oneshot(Request::new(()))
        .await
        .unwrap();
    let _conn = rx.recv().await.unwrap();
    thread::spawn(move || shutdown.trigger()).join().unwrap();
    ends_at_the_send_timeout(response.body()).await;
}

/// Runs a future to completion on the calling thread, with no tokio runtime around it.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}

#[tokio::test(start_paused = true)]
async fn push_from_a_thread_outside_the_runtime_waits_on_a_full_buffer_without_panicking() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let response = filler(tx).oneshot(Request::new(())).await.unwrap();
    let conn = rx.recv().await.unwrap();
    let (done_tx, done) = oneshot::channel();
    let pusher = thread::spawn(move || {
        // The buffer is full and the client reads nothing: the push waits for the send
        // timeout, on the stream's runtime's clock, then fails.
        let result = block_on(conn.push("from another thread"));
        let _ = done_tx.send(result);
    });
    let result = done.await.expect("the push returns instead of panicking");
    assert_eq!(result, Err(PushError::Disconnected));
    pusher.join().unwrap();
    assert!(response.body().is_end_stream());
}

#[tokio::test]
async fn push_from_a_thread_outside_the_runtime_gets_room_when_the_client_reads() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let response = filler(tx).oneshot(Request::new(())).await.unwrap();
    let conn = rx.recv().await.unwrap();
    let pusher = thread::spawn(move || block_on(conn.push("fifth")));
    let mut body = response.into_body();
    let mut received = String::new();
    while !received.contains("fifth") {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap();
        received.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
    }
    assert_eq!(received.matches("data: x\n\n").count(), 4);
    assert_eq!(pusher.join().unwrap(), Ok(()));
}

#[tokio::test]
async fn closing_streams_leave_no_timer_task_once_their_queue_is_sent() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let events = EventSourceService::new(|conn: Connection, _req: Request<()>| async move {
        for _ in 0..3 {
            let _ = conn.try_push("x");
        }
        conn.close();
    })
    .send_timeout(Duration::from_secs(30));
    for _ in 0..1000 {
        let response = events.clone().oneshot(Request::new(())).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "data: x\n\ndata: x\n\ndata: x\n\n");
    }
    let mut alive = metrics.num_alive_tasks();
    for _ in 0..1000 {
        if alive <= before {
            break;
        }
        tokio::task::yield_now().await;
        alive = metrics.num_alive_tasks();
    }
    assert_eq!(alive, before, "tasks still alive after every stream ended");
}
