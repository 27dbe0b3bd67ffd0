//! The send handle, [`Connection`], and the bounded queue it shares with the body.

use crate::{error::TryPushError, Event, PushError};
use bytes::{Bytes, BytesMut};
use std::{
    collections::VecDeque,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::Duration,
};
use tokio::{sync::Notify, time::Instant};

/// Queued events are joined into one body frame up to this many bytes.
const MAX_FRAME: usize = 64 * 1024;

/// A handle for pushing events to one client's stream.
///
/// This is a send handle, not a connection driver like `hyper::server::conn`: the HTTP
/// connection is driven by the server, and this handle only feeds the response body.
/// It is cheap to clone, and `Send + Sync`, so several tasks can push to the same client.
///
/// Events wait in a bounded buffer (see
/// [`EventSourceService::buffer`](crate::EventSourceService::buffer)) until the server writes
/// them to the socket.
///
/// The stream ends after what was already queued when [`close`](Connection::close) is called,
/// or when every clone of the handle is dropped. When the client goes away, every clone sees
/// it at once: [`closed`](Connection::closed) resolves and pushes fail.
pub struct Connection {
    shared: Arc<Shared>,
}

/// What the handle and the body share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Woken when the buffer gets room, and when the stream ends.
    changed: Notify,
    limits: Arc<Limits>,
    last_event_id: Option<Box<str>>,
}

/// Settings shared by every stream of a service.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Events a connection may queue; at least one.
    pub(crate) buffer: usize,
    pub(crate) send_timeout: Option<Duration>,
    pub(crate) keep_alive: Option<Duration>,
}

struct State {
    queue: VecDeque<Bytes>,
    phase: Phase,
    handles: u32,
    body: Option<Waker>,
    /// When a push first found the buffer full since the body last took from it.
    full_since: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Events are accepted.
    Open,
    /// No more events are accepted; the body sends what is queued, then ends.
    Closing,
    /// The body is gone: the client disconnected or the response was dropped.
    Gone,
}

/// Why an internal send did not queue a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Full,
    Ended,
}

impl Connection {
    /// A new handle and the shared queue for the body to read.
    pub(crate) fn new(limits: Arc<Limits>, last_event_id: Option<Box<str>>) -> (Self, Arc<Shared>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                phase: Phase::Open,
                handles: 1,
                body: None,
                full_since: None,
            }),
            changed: Notify::new(),
            limits,
            last_event_id,
        });
        (
            Connection {
                shared: Arc::clone(&shared),
            },
            shared,
        )
    }

    /// Pushes one event, waiting while the buffer is full.
    ///
    /// Anything that converts into an [`Event`] can be pushed: `"text"` and `String` are
    /// data-only events, `["a", "b"]` is one event with two data lines.
    ///
    /// Cancel-safe: a push whose future is dropped while it waits has queued nothing.
    ///
    /// # Errors
    ///
    /// [`PushError::Invalid`] when the event cannot be encoded (nothing is sent), and
    /// [`PushError::Disconnected`] once the stream has ended.
    pub async fn push(&self, event: impl Into<Event>) -> Result<(), PushError> {
        let event = event.into();
        event.validate()?;
        self.send(event.finish())
            .await
            .map_err(|_| PushError::Disconnected)
    }

    /// Pushes one event if the buffer has room, without waiting.
    ///
    /// # Errors
    ///
    /// [`TryPushError::Full`] when the buffer is full and [`TryPushError::Disconnected`] once
    /// the stream has ended, each handing the event back; [`TryPushError::Invalid`] when the
    /// event cannot be encoded.
    pub fn try_push(&self, event: impl Into<Event>) -> Result<(), TryPushError> {
        let event = event.into();
        event.validate().map_err(TryPushError::Invalid)?;
        self.offer(event, Event::finish)
            .map_err(|(refused, event)| match refused {
                Refused::Full => TryPushError::Full(event),
                Refused::Ended => TryPushError::Disconnected(event),
            })
    }

    /// Ends the stream once what was already pushed has been sent. Later pushes fail and send
    /// nothing. Calling it again does nothing.
    pub fn close(&self) {
        self.shared.end(Phase::Closing);
    }

    /// Resolves when the stream has ended: the client went away, or the stream was closed.
    pub async fn closed(&self) {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_closed() {
                return;
            }
            changed.await;
        }
    }

    /// Whether the stream has ended; pushes fail from then on.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().phase != Phase::Open
    }

    /// The request's `Last-Event-ID`: the id of the last event the browser saw before it
    /// reconnected.
    ///
    /// `None` when the header is missing, is not UTF-8, or is longer than 1024 bytes. The value
    /// comes from the client: treat it as untrusted input.
    pub fn last_event_id(&self) -> Option<&str> {
        self.shared.last_event_id.as_deref()
    }

    /// Queues an encoded frame, waiting while the buffer is full.
    pub(crate) async fn send(&self, mut frame: Bytes) -> Result<(), Refused> {
        loop {
            frame = match self.try_send(frame) {
                Err((Refused::Full, frame)) => frame,
                other => return other.map_err(|(refused, _)| refused),
            };
            let room = self.shared.changed.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            frame = match self.try_send(frame) {
                Err((Refused::Full, frame)) => frame,
                other => return other.map_err(|(refused, _)| refused),
            };
            match self.shared.stall_deadline() {
                // Wake up at the deadline to end the stalled stream.
                Some(deadline) => {
                    let _ = tokio::time::timeout_at(deadline, room).await;
                }
                None => room.await,
            }
        }
    }

    /// Queues an encoded frame if the buffer has room, handing it back if not.
    pub(crate) fn try_send(&self, frame: Bytes) -> Result<(), (Refused, Bytes)> {
        self.offer(frame, |frame| frame)
    }

    /// Queues `item`, encoded by `encode` once it is known to fit, or hands it back.
    ///
    /// A full buffer that the body has not taken from for the send timeout ends the stream.
    fn offer<T>(&self, item: T, encode: impl FnOnce(T) -> Bytes) -> Result<(), (Refused, T)> {
        let mut state = self.shared.lock();
        let phase = state.phase;
        match phase {
            Phase::Open if state.queue.len() < self.shared.limits.buffer => {
                state.queue.push_back(encode(item));
                // The body waits only on an empty queue: later pushes need not wake it again.
                if state.queue.len() == 1 {
                    if let Some(body) = &state.body {
                        body.wake_by_ref();
                    }
                }
                Ok(())
            }
            Phase::Open if !self.shared.stalled(&mut state) => Err((Refused::Full, item)),
            Phase::Open => {
                drop(state);
                self.shared.end(Phase::Gone);
                Err((Refused::Ended, item))
            }
            Phase::Closing | Phase::Gone => Err((Refused::Ended, item)),
        }
    }

    /// Queues frames joined into one, past the buffer's bound, for a replay whose size the
    /// caller bounds. Taking one slot, a replay of any length leaves the buffer's room to live
    /// events.
    pub(crate) fn send_unbounded(&self, frames: &[Bytes]) -> bool {
        let frame = match frames {
            [] => return !self.is_closed(),
            [frame] => frame.clone(),
            frames => {
                let mut joined = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
                for frame in frames {
                    joined.extend_from_slice(frame);
                }
                joined.freeze()
            }
        };
        let mut state = self.shared.lock();
        if state.phase != Phase::Open {
            return false;
        }
        state.queue.push_back(frame);
        let body = state.body.take();
        drop(state);
        wake(body);
        true
    }
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        let mut state = self.shared.lock();
        state.handles = state.handles.saturating_add(1);
        drop(state);
        Connection {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.handles -= 1;
        if state.handles == 0 {
            let body = state.body.take();
            drop(state);
            wake(body);
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Connection")
            .field("phase", &state.phase)
            .field("queued", &state.queue.len())
            .field("buffer", &self.shared.limits.buffer)
            .field("last_event_id", &self.shared.last_event_id)
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across user code, so a poisoned lock still holds a
        // consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves from `Open` to `phase` (or from anything to `Gone`) and wakes everyone waiting.
    fn end(self: &Arc<Self>, phase: Phase) {
        let state = self.lock();
        self.end_locked(state, phase);
    }

    fn end_locked(self: &Arc<Self>, mut state: MutexGuard<'_, State>, phase: Phase) {
        if state.phase == Phase::Gone || (state.phase == Phase::Closing && phase == Phase::Closing)
        {
            return;
        }
        state.phase = phase;
        match phase {
            Phase::Gone => state.queue = VecDeque::new(),
            _ => self.watch_closing(&mut state),
        }
        let body = state.body.take();
        drop(state);
        wake(body);
        self.changed.notify_waiters();
    }

    /// With a send timeout, ends a closing stream whose queued frames the body has not taken
    /// from for that long: no push will come to notice it.
    fn watch_closing(self: &Arc<Self>, state: &mut State) {
        let Some(timeout) = self.limits.send_timeout else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if state.queue.is_empty() {
            return;
        }
        state.full_since.get_or_insert_with(Instant::now);
        let shared = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let deadline = {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    let mut state = shared.lock();
                    if state.phase != Phase::Closing || state.queue.is_empty() {
                        return;
                    }
                    let since = *state.full_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= timeout {
                        shared.end_locked(state, Phase::Gone);
                        return;
                    }
                    since.checked_add(timeout)
                };
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => return,
                }
            }
        });
    }

    /// Whether the full buffer has not been taken from for the send timeout. The first call
    /// that finds it full starts the clock.
    fn stalled(&self, state: &mut State) -> bool {
        let Some(timeout) = self.limits.send_timeout else {
            return false;
        };
        match state.full_since {
            Some(since) => since.elapsed() >= timeout,
            None => {
                state.full_since = Some(Instant::now());
                false
            }
        }
    }

    /// When a full buffer counts as stalled, if it is full now.
    fn stall_deadline(&self) -> Option<Instant> {
        let timeout = self.limits.send_timeout?;
        let state = self.lock();
        state
            .full_since
            .and_then(|since| since.checked_add(timeout))
    }

    /// Graceful shutdown: queues `farewell` past the buffer's bound and closes the stream, in
    /// one step so that nothing is queued after the farewell.
    pub(crate) fn shut_down(self: &Arc<Self>, farewell: Option<&Bytes>) {
        let mut state = self.lock();
        if state.phase != Phase::Open {
            return;
        }
        state.queue.extend(farewell.cloned());
        self.end_locked(state, Phase::Closing);
    }

    /// The next frame for the body: every queued event joined (up to [`MAX_FRAME`] bytes),
    /// `None` once the stream has ended and the queue is empty.
    pub(crate) fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut state = self.lock();
        let was_full = state.queue.len() >= self.limits.buffer;
        let Some(first) = state.queue.pop_front() else {
            if state.phase != Phase::Open || state.handles == 0 {
                return Poll::Ready(None);
            }
            if !state.body.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                state.body = Some(cx.waker().clone());
            }
            return Poll::Pending;
        };
        let frame = match state.queue.front() {
            Some(next) if first.len() + next.len() <= MAX_FRAME => {
                let mut joined = BytesMut::with_capacity(
                    MAX_FRAME.min(first.len() + state.queue.iter().map(Bytes::len).sum::<usize>()),
                );
                joined.extend_from_slice(&first);
                while let Some(next) = state.queue.front() {
                    if joined.len() + next.len() > MAX_FRAME {
                        break;
                    }
                    joined.extend_from_slice(next);
                    state.queue.pop_front();
                }
                joined.freeze()
            }
            _ => first,
        };
        state.full_since = None;
        drop(state);
        if was_full {
            self.changed.notify_waiters();
        }
        Poll::Ready(Some(frame))
    }

    /// How long the body waits without any frame before it sends a keep-alive comment.
    pub(crate) fn keep_alive(&self) -> Option<Duration> {
        self.limits.keep_alive
    }

    /// Whether the stream will produce no more frames.
    pub(crate) fn is_finished(&self) -> bool {
        let state = self.lock();
        state.queue.is_empty() && (state.phase != Phase::Open || state.handles == 0)
    }

    /// The body was dropped: the client is gone.
    pub(crate) fn body_dropped(self: &Arc<Self>) {
        self.end(Phase::Gone);
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}
