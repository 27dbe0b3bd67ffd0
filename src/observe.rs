//! What the library reports about its streams and hubs: metrics on the `metrics` facade
//! (feature `metrics`) and `tracing` spans (feature `tracing`). Without either feature every
//! type here is empty and every method does nothing.
//!
//! Metric handles are registered when an [`EventSource`](crate::EventSource) or a hub is
//! built, with the recorder installed then, so that every metric shows (as 0) before anything
//! happens and a stream or a send pays no lookup. No label names a key, a user or a
//! connection.

use crate::connection::CloseReason;
#[cfg(feature = "metrics")]
use metrics::{Counter, Gauge, Histogram};
#[cfg(feature = "metrics")]
use std::sync::Arc;

/// The names of the metrics, as dashboards know them.
#[cfg(feature = "metrics")]
mod names {
    pub(super) const CONNECTIONS_ACTIVE: &str = "sse_connections_active";
    pub(super) const CONNECTIONS_TOTAL: &str = "sse_connections_total";
    pub(super) const CONNECTIONS_CLOSED: &str = "sse_connections_closed_total";
    pub(super) const CONNECTION_DURATION: &str = "sse_connection_duration_seconds";
    pub(super) const EVENTS_SENT: &str = "sse_events_sent_total";
    pub(super) const BYTES_SENT: &str = "sse_bytes_sent_total";
    pub(super) const HUB_EVENTS_SENT: &str = "sse_hub_events_sent_total";
    pub(super) const HUB_SUBSCRIBERS: &str = "sse_hub_subscribers";
    pub(super) const HUB_RESUMES: &str = "sse_hub_resumes_total";
    pub(super) const HUB_SLOW_CLIENTS: &str = "sse_hub_slow_clients_total";
    pub(super) const HUB_SEND_ERRORS: &str = "sse_hub_send_errors_total";
    pub(super) const HUB_SEND_DURATION: &str = "sse_hub_send_duration_seconds";
    pub(super) const HUB_KEYS: &str = "sse_hub_keys";
    pub(super) const REDIS_READER_RECONNECTS: &str = "sse_redis_reader_reconnects_total";
    pub(super) const REDIS_STREAM_RESETS: &str = "sse_redis_stream_resets_total";
    pub(super) const REDIS_READER_LAG: &str = "sse_redis_reader_lag_seconds";
}

/// The handles of the stream metrics, registered once per [`EventSource`](crate::EventSource).
#[derive(Debug, Default)]
pub(crate) struct StreamMetrics {
    #[cfg(feature = "metrics")]
    handles: Option<Arc<StreamHandles>>,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct StreamHandles {
    active: Gauge,
    total: Counter,
    closed: [Counter; CloseReason::ALL.len()],
    duration: [Histogram; CloseReason::ALL.len()],
    events: Counter,
    bytes: Counter,
}

impl StreamMetrics {
    /// Registers the stream metrics with the recorder installed now.
    pub(crate) fn register() -> Self {
        #[cfg(feature = "metrics")]
        {
            use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
            use names::*;
            describe_gauge!(CONNECTIONS_ACTIVE, Unit::Count, "Event streams open now.");
            describe_counter!(CONNECTIONS_TOTAL, Unit::Count, "Event streams opened.");
            describe_counter!(
                CONNECTIONS_CLOSED,
                Unit::Count,
                "Event streams ended, by the first cause that ended each (`reason`)."
            );
            describe_histogram!(
                CONNECTION_DURATION,
                Unit::Seconds,
                "How long each event stream lasted, by why it ended (`reason`)."
            );
            describe_counter!(
                EVENTS_SENT,
                Unit::Count,
                "Events written to event streams, replays and resets included; keep-alive \
                 comments and `retry`-only frames are not events."
            );
            describe_counter!(
                BYTES_SENT,
                Unit::Bytes,
                "Bytes of the event-stream bodies, keep-alive comments included."
            );
            let reason = |reason: CloseReason| ("reason", reason.as_str());
            StreamMetrics {
                handles: Some(Arc::new(StreamHandles {
                    active: metrics::gauge!(CONNECTIONS_ACTIVE),
                    total: metrics::counter!(CONNECTIONS_TOTAL),
                    closed: CloseReason::ALL
                        .map(|r| metrics::counter!(CONNECTIONS_CLOSED, &[reason(r)])),
                    duration: CloseReason::ALL
                        .map(|r| metrics::histogram!(CONNECTION_DURATION, &[reason(r)])),
                    events: metrics::counter!(EVENTS_SENT),
                    bytes: metrics::counter!(BYTES_SENT),
                })),
            }
        }
        #[cfg(not(feature = "metrics"))]
        StreamMetrics {}
    }
}

impl Clone for StreamMetrics {
    fn clone(&self) -> Self {
        StreamMetrics {
            #[cfg(feature = "metrics")]
            handles: self.handles.clone(),
        }
    }
}

/// What one stream reports: counted as opened when made, as closed (with its reason, events
/// and bytes) by [`end`](Self::end), once.
#[derive(Debug)]
pub(crate) struct StreamReport {
    #[cfg(feature = "metrics")]
    metrics: Option<Arc<StreamHandles>>,
    #[cfg(feature = "metrics")]
    started: tokio::time::Instant,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    #[cfg(feature = "tracing")]
    events: u64,
    #[cfg(feature = "tracing")]
    bytes: u64,
    ended: bool,
}

impl StreamReport {
    /// A stream opened now, with the metrics of its [`EventSource`](crate::EventSource). Its
    /// span, `sse.stream`, is a child of the current span (the request's).
    pub(crate) fn start(metrics: &StreamMetrics) -> Self {
        #[cfg(feature = "metrics")]
        if let Some(handles) = &metrics.handles {
            handles.total.increment(1);
            handles.active.increment(1.0);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = metrics;
        StreamReport {
            #[cfg(feature = "metrics")]
            metrics: metrics.handles.clone(),
            #[cfg(feature = "metrics")]
            started: tokio::time::Instant::now(),
            #[cfg(feature = "tracing")]
            span: tracing::info_span!(
                "sse.stream",
                hub = tracing::field::Empty,
                resume = tracing::field::Empty,
                events = tracing::field::Empty,
                bytes = tracing::field::Empty,
                reason = tracing::field::Empty,
            ),
            #[cfg(feature = "tracing")]
            events: 0,
            #[cfg(feature = "tracing")]
            bytes: 0,
            ended: false,
        }
    }

    /// The report of a stream that never started (a request that got no stream): it reports
    /// nothing.
    pub(crate) fn never() -> Self {
        StreamReport {
            #[cfg(feature = "metrics")]
            metrics: None,
            #[cfg(feature = "metrics")]
            started: tokio::time::Instant::now(),
            #[cfg(feature = "tracing")]
            span: tracing::Span::none(),
            #[cfg(feature = "tracing")]
            events: 0,
            #[cfg(feature = "tracing")]
            bytes: 0,
            ended: true,
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn has_ended(&self) -> bool {
        self.ended
    }

    /// The stream's span, for the handler's task to run in.
    #[cfg(feature = "tracing")]
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// A frame of `bytes` bytes holding `events` events was handed to the server.
    #[inline]
    pub(crate) fn sent(&mut self, events: u64, bytes: usize) {
        #[cfg(feature = "metrics")]
        if let Some(handles) = &self.metrics {
            if events > 0 {
                handles.events.increment(events);
            }
            handles.bytes.increment(bytes as u64);
        }
        #[cfg(feature = "tracing")]
        {
            self.events += events;
            self.bytes += bytes as u64;
        }
        let _ = (events, bytes);
    }

    /// The stream has ended, for `reason`. Only the first call counts.
    pub(crate) fn end(&mut self, reason: CloseReason) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        #[cfg(feature = "metrics")]
        if let Some(handles) = &self.metrics {
            let index = reason.index();
            handles.active.decrement(1.0);
            handles.closed[index].increment(1);
            handles.duration[index].record(self.started.elapsed().as_secs_f64());
        }
        #[cfg(feature = "tracing")]
        {
            self.span.record("events", self.events);
            self.span.record("bytes", self.bytes);
            self.span.record("reason", reason.as_str());
        }
        let _ = reason;
    }
}

/// Records on a stream's span which hub it joined and how it resumed.
#[cfg(feature = "tracing")]
pub(crate) fn record_subscription(span: &tracing::Span, hub: &str, resume: &str) {
    span.record("hub", hub);
    span.record("resume", resume);
}

/// The backend a hub runs on, as the `backend` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackendKind {
    Memory,
    #[allow(dead_code, reason = "used by the backends behind features")]
    Redis,
}

impl BackendKind {
    #[cfg_attr(not(any(feature = "metrics", feature = "tracing")), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Redis => "redis",
        }
    }
}

/// How a subscribe resumed a stream, as the `outcome` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResumeOutcome {
    Live,
    Replayed,
    Reset,
}

impl ResumeOutcome {
    #[cfg_attr(not(any(feature = "metrics", feature = "tracing")), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ResumeOutcome::Live => "live",
            ResumeOutcome::Replayed => "replayed",
            ResumeOutcome::Reset => "reset",
        }
    }
}

/// The handles of one hub's metrics, labelled with its name and backend.
#[derive(Debug, Default)]
pub(crate) struct HubMetrics {
    #[cfg(feature = "metrics")]
    handles: Option<HubHandles>,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct HubHandles {
    events_sent: Counter,
    subscribers: Gauge,
    resumes: [Counter; 3],
    slow_disconnect: Counter,
    slow_skip: Counter,
    send_errors: Counter,
    send_duration: Histogram,
    keys: Option<Gauge>,
    reader_reconnects: Option<Counter>,
    stream_resets: Option<Counter>,
    reader_lag: Option<Histogram>,
}

/// When a send started; nothing without the `metrics` feature.
#[derive(Debug)]
pub(crate) struct SendTimer {
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

/// A stream's place in a hub's subscriber gauge: dropped when the stream ends.
#[derive(Debug)]
pub(crate) struct Subscription {
    #[cfg(feature = "metrics")]
    gauge: Gauge,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        self.gauge.decrement(1.0);
    }
}

impl HubMetrics {
    /// Registers the metrics of hub `name` on `backend` with the recorder installed now;
    /// `keyed` adds the key gauge.
    pub(crate) fn register(name: &str, backend: BackendKind, keyed: bool) -> Self {
        #[cfg(feature = "metrics")]
        {
            use metrics::{
                counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
                Unit,
            };
            use names::*;
            describe_counter!(
                HUB_EVENTS_SENT,
                Unit::Count,
                "Events this server sent through the hub (successful sends, not repeats of an \
                 idempotency key)."
            );
            describe_gauge!(
                HUB_SUBSCRIBERS,
                Unit::Count,
                "Subscriptions of open streams to the hub on this server."
            );
            describe_counter!(
                HUB_RESUMES,
                Unit::Count,
                "Subscribes, by how the stream started (`outcome`: live, replayed, reset)."
            );
            describe_counter!(
                HUB_SLOW_CLIENTS,
                Unit::Count,
                "Full buffers met by a send (`action`: disconnect, or skip the event)."
            );
            describe_counter!(HUB_SEND_ERRORS, Unit::Count, "Sends that failed.");
            describe_histogram!(
                HUB_SEND_DURATION,
                Unit::Seconds,
                "How long each send took, until stored by the backend."
            );
            let labels = [
                ("hub", name.to_owned()),
                ("backend", backend.as_str().into()),
            ];
            let with = |key: &'static str, value: &'static str| {
                let [hub, backend] = labels.clone();
                [hub, backend, (key, value.into())]
            };
            let redis = backend == BackendKind::Redis;
            if keyed {
                describe_gauge!(
                    HUB_KEYS,
                    Unit::Count,
                    "Keys of the keyed hub on this server."
                );
            }
            if redis {
                describe_counter!(
                    REDIS_READER_RECONNECTS,
                    Unit::Count,
                    "Times this server's reader of the hub's Redis stream reconnected."
                );
                describe_counter!(
                    REDIS_STREAM_RESETS,
                    Unit::Count,
                    "Times the hub's Redis stream was found lost or trimmed past the reader."
                );
                describe_histogram!(
                    REDIS_READER_LAG,
                    Unit::Seconds,
                    "From an event's entry in Redis to its delivery on this server."
                );
            }
            let handles = HubHandles {
                events_sent: counter!(HUB_EVENTS_SENT, &labels),
                subscribers: gauge!(HUB_SUBSCRIBERS, &labels),
                resumes: [
                    ResumeOutcome::Live,
                    ResumeOutcome::Replayed,
                    ResumeOutcome::Reset,
                ]
                .map(|outcome| counter!(HUB_RESUMES, &with("outcome", outcome.as_str()))),
                slow_disconnect: counter!(HUB_SLOW_CLIENTS, &with("action", "disconnect")),
                slow_skip: counter!(HUB_SLOW_CLIENTS, &with("action", "skip")),
                send_errors: counter!(HUB_SEND_ERRORS, &labels),
                send_duration: histogram!(HUB_SEND_DURATION, &labels),
                keys: keyed.then(|| gauge!(HUB_KEYS, &labels)),
                reader_reconnects: redis.then(|| counter!(REDIS_READER_RECONNECTS, &labels)),
                stream_resets: redis.then(|| counter!(REDIS_STREAM_RESETS, &labels)),
                reader_lag: redis.then(|| histogram!(REDIS_READER_LAG, &labels)),
            };
            HubMetrics {
                handles: Some(handles),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, backend, keyed);
            HubMetrics {}
        }
    }

    /// A send starts now.
    pub(crate) fn start_send(&self) -> SendTimer {
        SendTimer {
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
        }
    }

    /// The send `timer` timed succeeded (`Ok(repeated)`: whether it repeated an idempotency
    /// key, so sent nothing) or failed.
    pub(crate) fn send(&self, outcome: Result<bool, ()>, timer: SendTimer) {
        #[cfg(feature = "metrics")]
        if let Some(handles) = &self.handles {
            match outcome {
                Ok(false) => handles.events_sent.increment(1),
                Ok(true) => {}
                Err(()) => handles.send_errors.increment(1),
            }
            let elapsed = timer.started.elapsed();
            handles.send_duration.record(elapsed.as_secs_f64());
        }
        let _ = (outcome, timer);
    }

    /// A stream joined the hub: counted until the returned subscription is dropped.
    pub(crate) fn subscribed(&self) -> Option<Subscription> {
        #[cfg(feature = "metrics")]
        if let Some(handles) = &self.handles {
            handles.subscribers.increment(1.0);
            return Some(Subscription {
                gauge: handles.subscribers.clone(),
            });
        }
        None
    }

    pub(crate) fn resumed(&self, outcome: ResumeOutcome) {
        #[cfg(feature = "metrics")]
        if let Some(handles) = &self.handles {
            handles.resumes[outcome as usize].increment(1);
        }
        let _ = outcome;
    }

    /// A send found a subscriber's buffer full: it was disconnected, or skipped.
    pub(crate) fn slow_client(&self, disconnected: bool) {
        #[cfg(feature = "metrics")]
        if let Some(handles) = &self.handles {
            match disconnected {
                true => handles.slow_disconnect.increment(1),
                false => handles.slow_skip.increment(1),
            }
        }
        let _ = disconnected;
    }

    /// The number of keys changed by `change`.
    pub(crate) fn keys(&self, change: f64) {
        #[cfg(feature = "metrics")]
        if let Some(keys) = self.handles.as_ref().and_then(|h| h.keys.as_ref()) {
            keys.increment(change);
        }
        let _ = change;
    }

    #[allow(dead_code, reason = "used by the backends behind features")]
    pub(crate) fn reader_reconnected(&self) {
        #[cfg(feature = "metrics")]
        if let Some(counter) = self
            .handles
            .as_ref()
            .and_then(|h| h.reader_reconnects.as_ref())
        {
            counter.increment(1);
        }
    }

    #[allow(dead_code, reason = "used by the backends behind features")]
    pub(crate) fn stream_reset(&self) {
        #[cfg(feature = "metrics")]
        if let Some(counter) = self.handles.as_ref().and_then(|h| h.stream_resets.as_ref()) {
            counter.increment(1);
        }
    }

    /// An event stored in Redis `lag` ago reached this server's topic.
    #[allow(dead_code, reason = "used by the backends behind features")]
    pub(crate) fn reader_lag(&self, lag: std::time::Duration) {
        #[cfg(feature = "metrics")]
        if let Some(histogram) = self.handles.as_ref().and_then(|h| h.reader_lag.as_ref()) {
            histogram.record(lag.as_secs_f64());
        }
        let _ = lag;
    }
}
