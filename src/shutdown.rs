//! Graceful shutdown: [`Shutdown`] ends every open stream cleanly.

use crate::{connection::Shared, EncodeError, Event};
use bytes::Bytes;
use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard, Weak},
};

/// A handle that ends the open streams of the services given it with
/// [`EventSourceService::graceful_shutdown`](crate::EventSourceService::graceful_shutdown).
///
/// Streams never end by themselves, so a server waiting for its connections to finish (such as
/// hyper-util's `GracefulShutdown`, or `axum::serve(..).with_graceful_shutdown(..)`) would wait
/// forever. [`trigger`](Shutdown::trigger) ends each stream after the events already queued,
/// never inside an event, optionally after a farewell event; handlers see
/// [`Connection::closed`](crate::Connection::closed) resolve and pushes fail. Requests that
/// arrive afterwards get the farewell and an ended stream, without running the handler.
///
/// A browser reconnects after an ended stream (a farewell with [`Event::retry`] sets when), so
/// during a rolling restart it comes back to another instance. A client that stopped reading
/// keeps its connection until the send timeout ends it
/// ([`EventSourceService::send_timeout`](crate::EventSourceService::send_timeout)); bound the
/// server's wait as well.
///
/// ```
/// use std::time::Duration;
/// use http::Request;
/// use tower_eventsource::{Connection, Event, EventSourceService, Shutdown};
///
/// let shutdown = Shutdown::new();
/// let events = EventSourceService::new(|conn: Connection, _req: Request<()>| async move {
///     conn.closed().await; // resolves on shutdown
/// })
/// .graceful_shutdown(&shutdown);
///
/// // On SIGTERM, before telling the server to stop accepting and drain:
/// shutdown
///     .trigger_with(Event::new().retry(Duration::from_secs(5)).comment("restarting"))
///     .unwrap();
/// # drop(events);
/// ```
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    /// `None` until triggered; then the farewell frame, if any.
    triggered: Option<Option<Bytes>>,
    streams: Vec<Weak<Shared>>,
    prune_at: usize,
}

impl Shutdown {
    /// A handle that has not been triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends every open stream once what is queued has been sent. Calling it again does nothing.
    pub fn trigger(&self) {
        self.end_all(None);
    }

    /// Like [`trigger`](Self::trigger), sending `farewell` to every stream as its last event.
    ///
    /// # Errors
    ///
    /// When `farewell` cannot be encoded; the streams are ended without it.
    pub fn trigger_with(&self, farewell: impl Into<Event>) -> Result<(), EncodeError> {
        let farewell = farewell.into();
        let result = farewell.validate();
        self.end_all(result.ok().map(|()| farewell.finish()));
        result
    }

    /// Whether the handle has been triggered.
    pub fn is_triggered(&self) -> bool {
        self.lock().triggered.is_some()
    }

    fn end_all(&self, farewell: Option<Bytes>) {
        let streams = {
            let mut registry = self.lock();
            if registry.triggered.is_some() {
                return;
            }
            registry.triggered = Some(farewell.clone());
            std::mem::take(&mut registry.streams)
        };
        for stream in streams.iter().filter_map(Weak::upgrade) {
            stream.close_here(farewell.as_ref());
        }
    }

    /// Registers a new stream and returns `true`; once triggered, ends it at once with the
    /// farewell and returns `false`.
    pub(crate) fn register(&self, stream: &Arc<Shared>) -> bool {
        let mut registry = self.lock();
        if let Some(farewell) = &registry.triggered {
            let farewell = farewell.clone();
            drop(registry);
            stream.close_here(farewell.as_ref());
            return false;
        }
        if registry.streams.len() >= registry.prune_at {
            registry.streams.retain(|stream| stream.strong_count() > 0);
            registry.prune_at = (registry.streams.len() * 2).max(64);
        }
        registry.streams.push(Arc::downgrade(stream));
        true
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The lock is never held across user code, so a poisoned lock still holds a
        // consistent state.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registry = self.lock();
        f.debug_struct("Shutdown")
            .field("triggered", &registry.triggered.is_some())
            .field("streams", &registry.streams.len())
            .finish()
    }
}
