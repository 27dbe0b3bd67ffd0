//! Errors from pushing events: [`PushError`] and [`TryPushError`].

use crate::{EncodeError, Event};
use std::fmt;

/// Why [`Connection::push`](crate::Connection::push) sent nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushError {
    /// The client has gone: it closed the connection, or stopped reading for the send
    /// timeout ([`EventSourceService::send_timeout`](crate::EventSourceService::send_timeout)).
    Disconnected,
    /// This side ended the stream: [`Connection::close`](crate::Connection::close), a
    /// [`Shutdown`](crate::Shutdown), a [`Broadcast`](crate::Broadcast) that found the client
    /// too slow, or a handler that panicked.
    Closed,
    /// The event cannot be encoded.
    Invalid(EncodeError),
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Disconnected => f.write_str("event stream has ended: the client has gone"),
            PushError::Closed => f.write_str("event stream has ended: it was closed"),
            PushError::Invalid(error) => write!(f, "invalid event: {error}"),
        }
    }
}

impl std::error::Error for PushError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PushError::Invalid(error) => Some(error),
            PushError::Disconnected | PushError::Closed => None,
        }
    }
}

impl From<EncodeError> for PushError {
    fn from(error: EncodeError) -> Self {
        PushError::Invalid(error)
    }
}

/// Why [`Connection::try_push`](crate::Connection::try_push) sent nothing, with the event
/// handed back where it was valid.
#[derive(Debug)]
#[non_exhaustive]
pub enum TryPushError {
    /// The connection's buffer is full: the client is reading more slowly than events are
    /// pushed. The event may be pushed again later.
    Full(Event),
    /// The client has gone; see [`PushError::Disconnected`].
    Disconnected(Event),
    /// This side ended the stream; see [`PushError::Closed`].
    Closed(Event),
    /// The event cannot be encoded.
    Invalid(EncodeError),
}

impl TryPushError {
    /// The event that was not sent, unless it was invalid.
    pub fn into_event(self) -> Option<Event> {
        match self {
            TryPushError::Full(event)
            | TryPushError::Disconnected(event)
            | TryPushError::Closed(event) => Some(event),
            TryPushError::Invalid(_) => None,
        }
    }
}

impl fmt::Display for TryPushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryPushError::Full(_) => f.write_str("connection buffer is full"),
            TryPushError::Disconnected(_) => {
                f.write_str("event stream has ended: the client has gone")
            }
            TryPushError::Closed(_) => f.write_str("event stream has ended: it was closed"),
            TryPushError::Invalid(error) => write!(f, "invalid event: {error}"),
        }
    }
}

impl std::error::Error for TryPushError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TryPushError::Invalid(error) => Some(error),
            _ => None,
        }
    }
}
