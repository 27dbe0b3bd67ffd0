//! The response body, [`EventStreamBody`], fed by a connection's queue.

use crate::connection::Shared;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
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
    Stream(Box<Stream>),
    Empty,
}

struct Stream {
    shared: Arc<Shared>,
    /// Sent before anything else (the initial `retry:`).
    first: Option<Bytes>,
    keep_alive: Option<KeepAlive>,
    done: bool,
}

struct KeepAlive {
    interval: Duration,
    sleep: Pin<Box<Sleep>>,
    last_frame: Instant,
}

impl EventStreamBody {
    /// A body that streams what the connection queues.
    pub(crate) fn stream(
        shared: Arc<Shared>,
        first: Option<Bytes>,
        keep_alive: Option<Duration>,
    ) -> Self {
        let keep_alive = keep_alive.map(|interval| {
            let now = Instant::now();
            KeepAlive {
                interval,
                sleep: Box::pin(tokio::time::sleep_until(now + interval)),
                last_frame: now,
            }
        });
        EventStreamBody {
            kind: Kind::Stream(Box::new(Stream {
                shared,
                first,
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
        if stream.done {
            return Poll::Ready(None);
        }
        let frame = match stream.first.take() {
            Some(first) => first,
            None => match stream.shared.poll_frame(cx) {
                Poll::Ready(Some(frame)) => frame,
                Poll::Ready(None) => {
                    stream.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => match &mut stream.keep_alive {
                    Some(keep_alive) => ready!(keep_alive.poll_due(cx)),
                    None => return Poll::Pending,
                },
            },
        };
        if let Some(keep_alive) = &mut stream.keep_alive {
            keep_alive.last_frame = Instant::now();
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stream(stream) => {
                stream.done || (stream.first.is_none() && stream.shared.is_finished())
            }
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

impl KeepAlive {
    /// Ready with a keep-alive frame once `interval` has passed without any frame.
    fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let due = self.last_frame + self.interval;
            if due <= Instant::now() {
                return Poll::Ready(Bytes::from_static(KEEP_ALIVE));
            }
            // A frame went out since the timer was set: wait the rest of the interval.
            self.sleep.as_mut().reset(due);
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
