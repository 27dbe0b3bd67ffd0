//! The seam between a hub and a shared backend: what a hub asks of one. In-process hubs have
//! no backend; their topics number and deliver their own events.

use super::Settings;
use super::{topic::Topic, BackendError, BroadcastStats, HistoryEntry, Resume, SendError, Sent};
use crate::{observe::BackendKind, Connection, Event};
use std::{fmt, future::Future, pin::Pin, sync::Arc};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a builder keeps of a backend until the hub is built.
pub(crate) trait Connector: fmt::Debug + Send + Sync {
    /// The backend of one hub, keyed or not. Never waits: connecting happens in the
    /// background.
    fn start(&self, settings: Arc<Settings>, keyed: bool) -> Arc<dyn Backend>;

    /// What it is, for the `backend` label.
    fn kind(&self) -> BackendKind;

    /// The hub's name in the backend, the default name in metrics and spans.
    fn hub_name(&self) -> &str;
}

/// A backend shared by several servers: it stores each event, numbers it, and feeds it to the
/// topics every server attached. `key` is `None` for the hub's own topic: the whole hub, or
/// every key of a keyed hub.
pub(crate) trait Backend: Send + Sync {
    /// Its name in messages and metrics.
    fn name(&self) -> &'static str;

    /// Whether it can be reached and accepts the hub.
    fn ready(&self) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Whether the backend feeds this server's topics: from its first look at the stored
    /// events on, everything stored is fed. Waits for that look at most the response timeout.
    fn feeding(&self) -> BoxFuture<'_, bool>;

    /// From now on, feeds `topic` the events of `key`. The backend holds it weakly.
    fn attach(&self, key: Option<&str>, topic: &Arc<Topic>);

    /// Stores `event` (valid) for `key`, at most once for `idempotency`.
    fn send<'a>(
        &'a self,
        key: Option<&'a str>,
        idempotency: Option<&'a str>,
        event: Event,
    ) -> BoxFuture<'a, Result<Sent, SendError>>;

    /// Subscribes `conn` to `topic` (attached for `key`), which could not tell by itself
    /// where `cursor` resumes.
    fn subscribe<'a>(
        &'a self,
        key: Option<&'a str>,
        topic: &'a Arc<Topic>,
        conn: &'a Connection,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Resume>;

    /// The latest stored events of `key`, oldest first.
    fn recent<'a>(
        &'a self,
        key: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<HistoryEntry>, BackendError>>;

    /// Adds its own counters to a hub's.
    fn add_stats(&self, stats: &mut BroadcastStats);
}
