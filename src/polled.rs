//! A body that polls the user's stream itself, for
//! [`EventSource::stream`](crate::EventSource::stream), and [`StreamItem`], what that stream
//! may yield.

use crate::{
    body::{KeepAlive, PollFrame, MAX_FRAME},
    connection::{CloseReason, Limits},
    observe::StreamReport,
    shutdown::Signal,
    EncodeError, Event, EventStreamBody,
};
use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use pin_project_lite::pin_project;
use std::{
    convert::Infallible,
    fmt,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

/// What a stream given to [`EventSource::stream`](crate::EventSource::stream) may yield: an
/// event to send, or an error that ends the stream.
///
/// - Anything that converts into an [`Event`] is sent: `&str` and `String` as data-only
///   events, an array or `Vec` of strings as one event with a data line each, an `Event`.
/// - `Result<T, E>`, where `T` converts into an `Event` and `E` displays: `Ok` is sent, `Err`
///   ends the stream cleanly (the browser reconnects) and is reported, as a handler's error is
///   (with the `tracing` feature, at debug level). axum's `Sse` takes streams of
///   `Result<Event, E>` too.
///
/// An item whose event cannot be encoded (see [`EncodeError`]) ends the stream in the same
/// way: nothing of it is sent. Implement the trait for a type of your own to turn it into an
/// event (or an error) without mapping the stream first.
///
/// ```
/// use std::convert::Infallible;
/// use tower_eventsource::{Event, StreamItem};
///
/// struct Price(u32);
///
/// impl StreamItem for Price {
///     type Error = Infallible;
///
///     fn into_event(self) -> Result<Event, Infallible> {
///         Ok(Event::new().event("price").data(self.0.to_string()))
///     }
/// }
/// ```
pub trait StreamItem {
    /// The error that ends the stream: [`Infallible`] for items that are always events.
    type Error: fmt::Display;

    /// The event to send.
    ///
    /// # Errors
    ///
    /// The error that ends the stream, reported as [`StreamItem`] describes.
    fn into_event(self) -> Result<Event, Self::Error>;
}

impl<T: Into<Event>> StreamItem for T {
    type Error = Infallible;

    fn into_event(self) -> Result<Event, Infallible> {
        Ok(self.into())
    }
}

impl<T: Into<Event>, E: fmt::Display> StreamItem for Result<T, E> {
    type Error = E;

    fn into_event(self) -> Result<Event, E> {
        self.map(Into::into)
    }
}

/// A body that polls `stream`, starting with `first` (the `retry` field); ended with the
/// farewell by `shutdown`, at once if it is already triggered (and `stream` is then dropped
/// unpolled). Needs a runtime with the time driver when `limits` has keep-alive.
pub(crate) fn body<S>(
    limits: Arc<Limits>,
    first: Option<Bytes>,
    shutdown: Option<Arc<Signal>>,
    stream: S,
) -> EventStreamBody
where
    S: Stream + Send + 'static,
    S::Item: StreamItem,
{
    let stream = match &shutdown {
        Some(signal) if signal.is_triggered() => None,
        _ => Some(stream),
    };
    EventStreamBody::polled(Box::pin(Polled {
        keep_alive: KeepAlive::new(limits.keep_alive),
        state: State {
            report: StreamReport::start(&limits.metrics),
            limits,
            frame: first.map_or(Frame::Empty, Frame::One),
            events: 0,
            holds: 0,
            busy: false,
            shutdown,
            reason: None,
        },
        stream,
    }))
}

pin_project! {
    /// The state of a body that polls the user's stream: one allocation with the stream and
    /// the keep-alive timer.
    struct Polled<S> {
        state: State,
        #[pin]
        keep_alive: KeepAlive,
        // `None` once the stream has ended: it is dropped at once.
        #[pin]
        stream: Option<S>,
    }
}

struct State {
    /// The keep-alive interval is `limits.keep_alive`.
    limits: Arc<Limits>,
    /// What has been taken from the stream and not yet handed over, with the number of events
    /// it holds: the `retry` field at the start, an event that did not fit in the last frame,
    /// or a frame held back (see [`HOLDS`]).
    frame: Frame,
    events: u64,
    /// How many times `frame` has been held back.
    holds: u8,
    /// Whether the last frame handed over held [`BUSY`] events or more.
    busy: bool,
    /// Set with [`EventSource::graceful_shutdown`](crate::EventSource::graceful_shutdown);
    /// `None` once the farewell has been handed over.
    shutdown: Option<Arc<Signal>>,
    /// Why the stream ended, once it has.
    reason: Option<CloseReason>,
    report: StreamReport,
}

impl Drop for State {
    fn drop(&mut self) {
        // Dropped before the end was handed over: the client is gone.
        self.report
            .end(self.reason.unwrap_or(CloseReason::ClientGone));
    }
}

/// The user's stream with its items encoded, so that the body's own logic is not generic.
trait EventStream {
    /// The next event's bytes; `None` at the end of the stream, and for an item that ends it
    /// (an error or an event that cannot be encoded, reported here).
    fn poll_event(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>>;
}

impl<S> EventStream for S
where
    S: Stream,
    S::Item: StreamItem,
{
    fn poll_event(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let Some(item) = ready!(self.poll_next(cx)) else {
            return Poll::Ready(None);
        };
        let event = match item.into_event() {
            Ok(event) => event,
            Err(error) => {
                report_error(&error);
                return Poll::Ready(None);
            }
        };
        match event.validate() {
            Ok(()) => Poll::Ready(Some(event.finish())),
            Err(error) => {
                report_invalid(error);
                Poll::Ready(None)
            }
        }
    }
}

impl<S> PollFrame for Polled<S>
where
    S: Stream,
    S::Item: StreamItem,
{
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut this = self.project();
        let stream = this
            .stream
            .as_mut()
            .as_pin_mut()
            .map(|stream| -> Pin<&mut dyn EventStream> { stream });
        let (data, ended) = this.state.poll_data(stream, cx);
        if ended {
            this.stream.set(None);
        }
        if data.is_pending() && this.state.holds > 0 {
            // A frame is held back: no keep-alive comment goes before it.
            return Poll::Pending;
        }
        let events = match &data {
            Poll::Ready(Some(frame)) => frame.events,
            _ => 0,
        };
        let data = data.map(|frame| frame.map(|frame| frame.bytes));
        let frame = this
            .keep_alive
            .poll_frame(this.state.limits.keep_alive, data, cx);
        let state = this.state;
        match &frame {
            Poll::Ready(Some(frame)) => state.report.sent(events, frame.len()),
            Poll::Ready(None) => state
                .report
                .end(state.reason.unwrap_or(CloseReason::HandlerDone)),
            Poll::Pending => {}
        }
        frame
    }
}

impl State {
    /// The next frame of events, or `None` at the end; whether the stream has ended, so that
    /// the caller drops it.
    fn poll_data(
        &mut self,
        stream: Option<Pin<&mut dyn EventStream>>,
        cx: &mut Context<'_>,
    ) -> (Poll<Option<Events>>, bool) {
        if self
            .shutdown
            .as_ref()
            .is_some_and(|signal| signal.is_triggered())
        {
            self.reason.get_or_insert(CloseReason::Shutdown);
            // Nothing more is taken from the stream: what it gave goes out, then the farewell,
            // then the end.
            if let Some(frame) = self.take(Frame::Empty, 0) {
                return (Poll::Ready(Some(frame)), true);
            }
            let farewell = self
                .shutdown
                .take()
                .and_then(|signal| signal.take_farewell());
            let farewell = farewell.map(|bytes| Events { bytes, events: 1 });
            return (Poll::Ready(farewell), true);
        }
        let Some(mut stream) = stream else {
            return (Poll::Ready(self.take(Frame::Empty, 0)), false);
        };
        loop {
            // A panicking stream ends its own stream only, as a panicking handler does, not
            // the connection that may carry others (HTTP/2).
            let polled = catch_unwind(AssertUnwindSafe(|| stream.as_mut().poll_event(cx)));
            match polled {
                Ok(Poll::Ready(Some(event))) => match self.frame.join(event) {
                    Ok(()) => self.events += 1,
                    // The frame is full: it goes, and the event starts the next one.
                    Err(event) => return (Poll::Ready(self.take(Frame::One(event), 1)), false),
                },
                Ok(Poll::Ready(None)) => {
                    self.reason.get_or_insert(CloseReason::HandlerDone);
                    return (Poll::Ready(self.take(Frame::Empty, 0)), true);
                }
                Err(_panic) => {
                    report_panic();
                    self.reason.get_or_insert(CloseReason::HandlerPanic);
                    return (Poll::Ready(self.take(Frame::Empty, 0)), true);
                }
                Ok(Poll::Pending) if matches!(self.frame, Frame::Empty) => {
                    if let Some(signal) = &self.shutdown {
                        if signal.wake_on_trigger(cx.waker()) {
                            // Triggered since the check above: poll again to end.
                            cx.waker().wake_by_ref();
                        }
                    }
                    return (Poll::Pending, false);
                }
                Ok(Poll::Pending) if self.holds < HOLDS && (self.events >= BUSY || self.busy) => {
                    // Waits for a busy source: see `HOLDS`.
                    self.holds += 1;
                    cx.waker().wake_by_ref();
                    return (Poll::Pending, false);
                }
                Ok(Poll::Pending) => return (Poll::Ready(self.take(Frame::Empty, 0)), false),
            }
        }
    }

    /// The frame taken so far, to hand over, with `next` (holding `events` events) in its
    /// place.
    fn take(&mut self, next: Frame, events: u64) -> Option<Events> {
        self.holds = 0;
        let frame = std::mem::replace(&mut self.frame, next);
        let events = std::mem::replace(&mut self.events, events);
        self.busy = events >= BUSY;
        frame.finish(events)
    }
}

/// How many times a frame waits for a busy source before it is handed over. A source is busy
/// when the frame already holds [`BUSY`] events or more, or the last frame did: its events
/// come faster than the body is polled. Each wait wakes the body's task and answers `Pending`,
/// so the task goes to the back of the scheduler's queue and the frame goes out on a later
/// poll, with what the source yielded meanwhile.
///
/// A source that feeds many streams (a broadcast channel) sends again only after many of their
/// tasks have run, so a stream that wrote what it had at once would write a few events at a
/// time; the writes (a system call each, and a wake-up of the client) are most of a server's
/// work. Waiting for one turn of the scheduler takes everything sent during that turn into one
/// write. It takes two waits: hyper's HTTP/1 server polls the body again at once, in the same
/// poll of its task, after a `Pending` with nothing to flush; the second wait lasts until the
/// task's next turn. (Where nothing polls the body again at once, as in hyper's HTTP/2 server,
/// a frame waits two turns.) An event from a quiet source goes at once, and a frame never
/// waits for a timer or for the source itself.
const HOLDS: u8 = 2;

/// From this many events in a frame, its source counts as busy (see [`HOLDS`]).
const BUSY: u64 = 2;

/// A frame of `events` events (none for a `retry`-only frame).
struct Events {
    bytes: Bytes,
    events: u64,
}

/// Events joined into one frame of at most [`MAX_FRAME`] bytes (unless a single event is
/// larger), never splitting one.
enum Frame {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Frame {
    /// Adds `event`, or hands it back when the frame has no room for it.
    fn join(&mut self, event: Bytes) -> Result<(), Bytes> {
        match self {
            Frame::Empty => *self = Frame::One(event),
            Frame::One(first) => {
                let len = first.len() + event.len();
                if len > MAX_FRAME {
                    return Err(event);
                }
                let mut joined = BytesMut::with_capacity(MAX_FRAME.min(2 * len));
                joined.extend_from_slice(first);
                joined.extend_from_slice(&event);
                *self = Frame::Many(joined);
            }
            Frame::Many(joined) => {
                if joined.len() + event.len() > MAX_FRAME {
                    return Err(event);
                }
                joined.extend_from_slice(&event);
            }
        }
        Ok(())
    }

    /// The frame, holding `events` events.
    fn finish(self, events: u64) -> Option<Events> {
        let bytes = match self {
            Frame::Empty => return None,
            Frame::One(frame) => frame,
            Frame::Many(joined) => joined.freeze(),
        };
        Some(Events { bytes, events })
    }
}

fn report_error(error: &dyn fmt::Display) {
    #[cfg(feature = "tracing")]
    tracing::debug!(%error, "event stream's source yielded an error; the stream was ended");
    #[cfg(not(feature = "tracing"))]
    let _ = error;
}

fn report_invalid(error: EncodeError) {
    #[cfg(feature = "tracing")]
    tracing::debug!(
        %error,
        "event stream's source yielded an event that cannot be encoded; the stream was ended"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = error;
}

fn report_panic() {
    #[cfg(feature = "tracing")]
    tracing::error!("event stream's source panicked; its stream was ended");
}
