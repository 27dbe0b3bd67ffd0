//! Unit-test helpers: a connection with its body, and what the body has ready.

use crate::{
    connection::{LastEventId, Limits},
    Connection, EventStreamBody,
};
use http_body::Body;
use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, Waker},
};
use tokio::runtime::{Handle, Runtime};

/// A connection with a buffer of `capacity`, no timers, and its body; on the current runtime,
/// or on one kept for tests that run outside any.
pub(crate) fn client(
    capacity: usize,
    last_event_id: Option<&str>,
) -> (Connection, EventStreamBody) {
    let last_event_id = match last_event_id {
        Some(id) => LastEventId::id(id),
        None => LastEventId::ABSENT,
    };
    client_with(capacity, last_event_id)
}

/// Like [`client`], with any `Last-Event-ID`.
pub(crate) fn client_with(
    capacity: usize,
    last_event_id: LastEventId,
) -> (Connection, EventStreamBody) {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    let runtime = Handle::try_current().unwrap_or_else(|_| {
        RUNTIME
            .get_or_init(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("runtime")
            })
            .handle()
            .clone()
    });
    let limits = Limits {
        buffer: capacity,
        send_timeout: None,
        keep_alive: None,
        runtime: Some(runtime),
        metrics: Default::default(),
    };
    let (conn, shared) = Connection::new(Arc::new(limits), last_event_id);
    (conn, EventStreamBody::stream(shared))
}

/// Every frame the body has ready now, joined.
pub(crate) fn ready(body: &mut EventStreamBody) -> String {
    let mut out = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut *body).poll_frame(&mut cx) {
        out.extend_from_slice(frame.data_ref().expect("data frame"));
    }
    String::from_utf8(out).expect("utf-8")
}
