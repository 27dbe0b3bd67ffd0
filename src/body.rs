//! The response body, [`EventStreamBody`], fed by a connection's queue.

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
};
use tokio::time::{Instant, Sleep};

/// The keep-alive frame: a comment line and a blank line, which browsers ignore.
const KEEP_ALIVE: &[u8] = b":\n\n";

/// The body of an event-stream response.
///
/// Each event reaches the body already encoded, as one [`Bytes`]; when several are queued the
/// body hands them over together in one frame, and never splits an event across frames.
/// Dropping the body (the server does so when the client goes away) ends the stream for every
/// [`Connection`](crate::Connection) at once.
pub struct EventStreamBody {
    kind: Kind,
}

enum Kind {
    Stream(Pin<Box<Stream>>),
    Empty,
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
    #[project = KeepAliveProj]
    enum KeepAlive {
        /// The timer runs out `interval` after the last frame.
        On {
            #[pin]
            sleep: Sleep,
        },
        Off,
    }
}

impl EventStreamBody {
    /// A body that streams what the connection queues.
    pub(crate) fn stream(shared: Arc<Shared>) -> Self {
        let keep_alive = match shared.keep_alive() {
            Some(interval) => KeepAlive::On {
                sleep: tokio::time::sleep(interval),
            },
            None => KeepAlive::Off,
        };
        EventStreamBody {
            kind: Kind::Stream(Box::pin(Stream {
                shared,
                keep_alive,
                done: false,
            })),
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
        let Kind::Stream(stream) = &mut self.get_mut().kind else {
            return Poll::Ready(None);
        };
        let mut this = stream.as_mut().project();
        if *this.done {
            return Poll::Ready(None);
        }
        let frame = match this.shared.poll_frame(cx) {
            Poll::Ready(Some(frame)) => frame,
            Poll::Ready(None) => {
                *this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => match this.keep_alive.as_mut().project() {
                KeepAliveProj::On { sleep } => {
                    ready!(sleep.poll(cx));
                    Bytes::from_static(KEEP_ALIVE)
                }
                KeepAliveProj::Off => return Poll::Pending,
            },
        };
        if let (KeepAliveProj::On { sleep }, Some(interval)) =
            (this.keep_alive.project(), this.shared.keep_alive())
        {
            // Moving a deadline later is cheap: the timer is not re-registered.
            sleep.reset(Instant::now() + interval);
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stream(stream) => stream.done || stream.shared.is_finished(),
            Kind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stream(_) => SizeHint::default(),
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
            Kind::Empty => "empty",
        };
        f.debug_struct("EventStreamBody")
            .field("kind", &kind)
            .finish()
    }
}
