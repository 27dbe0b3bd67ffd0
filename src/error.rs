//! Errors from pushing events: [`PushError`] and [`TryPushError`].

use crate::{EncodeError, Event};
use std::fmt;

/// Why [`Connection::push`](crate::Connection::push) sent nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushError {
    /// The stream has ended: the client went away, the stream was closed with
    /// [`Connection::close`](crate::Connection::close), or the server is shutting down.
    Disconnected,
    /// The event cannot be encoded.
    Invalid(EncodeError),
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Disconnected => f.write_str("event stream has ended"),
            PushError::Invalid(error) => write!(f, "invalid event: {error}"),
        }
    }
}

impl std::error::Error for PushError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PushError::Invalid(error) => Some(error),
            PushError::Disconnected => None,
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
    /// The stream has ended; see [`PushError::Disconnected`].
    Disconnected(Event),
    /// The event cannot be encoded.
    Invalid(EncodeError),
}

impl TryPushError {
    /// The event that was not sent, unless it was invalid.
    pub fn into_event(self) -> Option<Event> {
        match self {
            TryPushError::Full(event) | TryPushError::Disconnected(event) => Some(event),
            TryPushError::Invalid(_) => None,
        }
    }
}

impl fmt::Display for TryPushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryPushError::Full(_) => f.write_str("connection buffer is full"),
            TryPushError::Disconnected(_) => f.write_str("event stream has ended"),
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
