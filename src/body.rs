//! The response body, [`EventStreamBody`], fed by a connection's queue or polling the user's
//! stream itself, and its keep-alive timer.

use crate::connection::Shared;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};
use sync_wrapper::SyncWrapper;
use tokio::time::{Instant, Sleep};

/// The keep-alive frame: a comment line and a blank line, which browsers ignore.
const KEEP_ALIVE: &[u8] = b":\n\n";

/// Events ready together are joined into one body frame up to this many bytes.
pub(crate) const MAX_FRAME: usize = 64 * 1024;

/// The body of an event-stream response.
///
/// Each event reaches the body already encoded, as one [`Bytes`]; when several are ready the
/// body hands them over together in one frame (up to 64 KiB), and never splits an event across
/// frames. Dropping the body (the server does so when the client goes away) ends the stream
/// for every [`Connection`](crate::Connection) at once, or drops the stream given to
/// [`EventSource::stream`](crate::EventSource::stream).
pub struct EventStreamBody {
    kind: Kind,
}

enum Kind {
    Stream(Pin<Box<Stream>>),
    /// Polls the user's stream. The wrapper makes the body `Sync` without asking the stream
    /// to be, as the body reaches the state through `&mut` only; unlike a mutex, it adds
    /// nothing to the body's size.
    Polled(SyncWrapper<Pin<Box<dyn PollFrame + Send>>>),
    Empty,
}

/// What a body that polls the user's stream polls: the next frame, keep-alive included, or
/// `None` once the stream has ended.
pub(crate) trait PollFrame {
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>>;
}

pin_project! {
    /// The state of a streaming body, in one allocation with its keep-alive timer.
    struct Stream {
        shared: Arc<Shared>,
        #[pin]
        keep_alive: KeepAlive,
        done: bool,
    }
}

pin_project! {
    /// The keep-alive timer of a stream.
    #[project = KeepAliveProj]
    pub(crate) enum KeepAlive {
        /// The timer runs out `interval` after the last frame.
        On {
            #[pin]
            sleep: Sleep,
        },
        Off,
    }
}

impl KeepAlive {
    /// A timer that runs out after `interval`, or none. Needs a runtime with the time driver
    /// when `interval` is set.
    pub(crate) fn new(interval: Option<Duration>) -> Self {
        match interval {
            Some(interval) => KeepAlive::On {
                sleep: tokio::time::sleep(interval),
            },
            None => KeepAlive::Off,
        }
    }

    /// The next frame: `data`'s, or the keep-alive comment when `data` has none and the timer
    /// has run out. Every frame moves the timer to `interval` from now.
    pub(crate) fn poll_frame(
        mut self: Pin<&mut Self>,
        interval: Option<Duration>,
        data: Poll<Option<Bytes>>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Bytes>> {
        let frame = match data {
            Poll::Ready(Some(frame)) => frame,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => match self.as_mut().project() {
                KeepAliveProj::On { sleep } => {
                    ready!(sleep.poll(cx));
                    Bytes::from_static(KEEP_ALIVE)
                }
                KeepAliveProj::Off => return Poll::Pending,
            },
        };
        if let (KeepAliveProj::On { sleep }, Some(interval)) = (self.project(), interval) {
            // Moving a deadline later is cheap: the timer is not re-registered.
            sleep.reset(Instant::now() + interval);
        }
        Poll::Ready(Some(frame))
    }
}

impl EventStreamBody {
    /// A body that streams what the connection queues.
    pub(crate) fn stream(shared: Arc<Shared>) -> Self {
        let keep_alive = KeepAlive::new(shared.keep_alive());
        EventStreamBody {
            kind: Kind::Stream(Box::pin(Stream {
                shared,
                keep_alive,
                done: false,
            })),
        }
    }

    /// A body that polls `state`.
    pub(crate) fn polled(state: Pin<Box<dyn PollFrame + Send>>) -> Self {
        EventStreamBody {
            kind: Kind::Polled(SyncWrapper::new(state)),
        }
    }

    /// A body with no data, for responses that do not stream.
    pub(crate) fn empty() -> Self {
        EventStreamBody { kind: Kind::Empty }
    }
}

impl Default for EventStreamBody {
    /// An empty body, as layers such as tower-http's `Cors` use for their own responses.
    fn default() -> Self {
        Self::empty()
    }
}

impl Body for EventStreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let kind = &mut self.get_mut().kind;
        let frame = match kind {
            Kind::Stream(stream) => {
                let this = stream.as_mut().project();
                if *this.done {
                    return Poll::Ready(None);
                }
                let data = this.shared.poll_frame(cx);
                let queued = data.is_ready();
                if let Poll::Ready(None) = data {
                    *this.done = true;
                }
                let frame = this
                    .keep_alive
                    .poll_frame(this.shared.keep_alive(), data, cx);
                if let (false, Poll::Ready(Some(comment))) = (queued, &frame) {
                    this.shared.sent_keep_alive(comment.len());
                }
                frame
            }
            Kind::Polled(state) => {
                let frame = state.get_mut().as_mut().poll_frame(cx);
                if let Poll::Ready(None) = frame {
                    // Frees the state, and the user's stream with it, at once.
                    *kind = Kind::Empty;
                }
                frame
            }
            Kind::Empty => return Poll::Ready(None),
        };
        frame.map(|frame| frame.map(|frame| Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stream(stream) => stream.done || stream.shared.is_finished(),
            Kind::Polled(_) => false,
            Kind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stream(_) | Kind::Polled(_) => SizeHint::default(),
            Kind::Empty => SizeHint::with_exact(0),
        }
    }
}

impl Drop for EventStreamBody {
    fn drop(&mut self) {
        if let Kind::Stream(stream) = &self.kind {
            stream.shared.body_dropped();
        }
    }
}

impl fmt::Debug for EventStreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Stream(_) => "stream",
            Kind::Polled(_) => "polled",
            Kind::Empty => "empty",
        };
        f.debug_struct("EventStreamBody")
            .field("kind", &kind)
            .finish()
    }
}
