//! Graceful shutdown: [`Shutdown`] ends every open stream cleanly.

use crate::{
    connection::{CloseReason, Shared},
    EncodeError, Event,
};
use bytes::Bytes;
use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    task::Waker,
};

/// A handle that ends the open streams given it with
/// [`EventSource::graceful_shutdown`](crate::EventSource::graceful_shutdown) (or the service's
/// setter of the same name), whether the service, [`EventSource::connect`](crate::EventSource::connect)
/// or [`EventSource::stream`](crate::EventSource::stream) started them.
///
/// Streams never end by themselves, so a server waiting for its connections to finish (such as
/// hyper-util's `GracefulShutdown`, or `axum::serve(..).with_graceful_shutdown(..)`) would wait
/// forever. [`trigger`](Shutdown::trigger) ends each stream after the events already queued,
/// never inside an event, optionally after a farewell event; handlers see
/// [`Connection::closed`](crate::Connection::closed) resolve and pushes fail. A stream started
/// with [`EventSource::stream`](crate::EventSource::stream) stops taking items from its source,
/// sends the farewell, ends, and drops its source. Requests that arrive afterwards get the
/// farewell and an ended stream, without running the handler (or polling the source).
///
/// A browser reconnects after an ended stream (a farewell with [`Event::retry`] sets when), so
/// during a rolling restart it comes back to another instance. A client that stopped reading
/// keeps its connection until the send timeout ends it
/// ([`EventSource::send_timeout`](crate::EventSource::send_timeout)); bound the
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
    streams: Vec<Registered>,
    prune_at: usize,
}

/// An open stream that a trigger ends.
enum Registered {
    /// Fed by a connection's queue.
    Queue(Weak<Shared>),
    /// A body that polls the user's stream itself.
    Polled(Weak<Signal>),
}

impl Registered {
    fn is_open(&self) -> bool {
        match self {
            Registered::Queue(stream) => stream.strong_count() > 0,
            Registered::Polled(signal) => signal.strong_count() > 0,
        }
    }
}

/// How a trigger reaches a body that polls the user's stream: a flag the body reads on every
/// poll, the farewell, and the waker of a body waiting for its source.
pub(crate) struct Signal {
    triggered: AtomicBool,
    state: Mutex<SignalState>,
}

struct SignalState {
    /// The farewell to send, set by the trigger and taken by the body.
    farewell: Option<Bytes>,
    waker: Option<Waker>,
}

impl Signal {
    fn new(triggered: bool, farewell: Option<Bytes>) -> Self {
        Signal {
            triggered: AtomicBool::new(triggered),
            state: Mutex::new(SignalState {
                farewell,
                waker: None,
            }),
        }
    }

    /// Whether the shutdown has been triggered.
    pub(crate) fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::Acquire)
    }

    /// The farewell, once the shutdown has been triggered; the first call takes it.
    pub(crate) fn take_farewell(&self) -> Option<Bytes> {
        self.lock().farewell.take()
    }

    /// Wakes `waker` when the shutdown is triggered; returns whether it already was.
    pub(crate) fn wake_on_trigger(&self, waker: &Waker) -> bool {
        let mut state = self.lock();
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            state.waker = Some(waker.clone());
        }
        drop(state);
        self.is_triggered()
    }

    fn trigger(&self, farewell: Option<Bytes>) {
        let mut state = self.lock();
        state.farewell = farewell;
        self.triggered.store(true, Ordering::Release);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, SignalState> {
        // The lock is never held across user code.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
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
        for stream in streams {
            match stream {
                Registered::Queue(stream) => {
                    if let Some(stream) = stream.upgrade() {
                        stream.close_here(farewell.as_ref(), CloseReason::Shutdown);
                    }
                }
                Registered::Polled(signal) => {
                    if let Some(signal) = signal.upgrade() {
                        signal.trigger(farewell.clone());
                    }
                }
            }
        }
    }

    /// Registers a new stream and returns `true`; once triggered, ends it at once with the
    /// farewell and returns `false`.
    pub(crate) fn register(&self, stream: &Arc<Shared>) -> bool {
        let mut registry = self.lock();
        if let Some(farewell) = &registry.triggered {
            let farewell = farewell.clone();
            drop(registry);
            stream.close_here(farewell.as_ref(), CloseReason::Shutdown);
            return false;
        }
        registry.push(Registered::Queue(Arc::downgrade(stream)));
        true
    }

    /// The signal of a new body that polls the user's stream: registered, or already
    /// triggered (with the farewell) once the handle has been.
    pub(crate) fn register_polled(&self) -> Arc<Signal> {
        let mut registry = self.lock();
        if let Some(farewell) = &registry.triggered {
            return Arc::new(Signal::new(true, farewell.clone()));
        }
        let signal = Arc::new(Signal::new(false, None));
        registry.push(Registered::Polled(Arc::downgrade(&signal)));
        signal
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The lock is never held across user code, so a poisoned lock still holds a
        // consistent state.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Registry {
    /// Adds an open stream, first dropping those that have ended once the list has doubled.
    fn push(&mut self, stream: Registered) {
        if self.streams.len() >= self.prune_at {
            self.streams.retain(Registered::is_open);
            self.prune_at = (self.streams.len() * 2).max(64);
        }
        self.streams.push(stream);
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
