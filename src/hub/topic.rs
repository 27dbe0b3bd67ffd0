//! One stream of events and this server's subscribers to it: the history a reconnecting
//! browser resumes from, and the fan-out of each event to every subscriber's buffer.
//!
//! Every hub is made of topics: a [`Broadcast`](crate::Broadcast) has one, a
//! [`KeyedBroadcast`](crate::KeyedBroadcast) one per key and one for all keys. A topic's
//! events are numbered 1, 2, 3, … within its epoch (a random name it gets when its numbering
//! starts), and an event's id is `<epoch>-<number>`: an id of another topic, another hub or
//! an earlier life of this one never matches. In-process a topic numbers its own events; fed
//! by a backend it takes the numbers the backend gave them.

use super::{BroadcastStats, HistoryEntry, Resume, Sent, Settings, SlowClient};
use crate::connection::{CloseReason, Connection, Refused};
use bytes::{Bytes, BytesMut};
use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{SystemTime, UNIX_EPOCH},
};
use tokio::time::Instant;

pub(crate) struct Topic {
    settings: Arc<Settings>,
    /// Fed by a backend: it learns its epoch and numbers from the events it is given.
    fed: bool,
    state: Mutex<State>,
}

struct State {
    subscribers: Vec<Connection>,
    /// Prune gone subscribers when a subscribe finds the list this long.
    prune_at: usize,
    /// `None` for a fed topic that does not know where its backend's numbering stands.
    epoch: Option<Arc<str>>,
    /// The number of the newest event.
    newest: u64,
    /// The number just before the oldest kept event: the history holds every event after it.
    before: u64,
    history: VecDeque<Entry>,
    history_size: usize,
    /// The backend lost track while connections were subscribed: they get the reset event
    /// as soon as the topic knows where its numbering stands again.
    #[allow(dead_code, reason = "used by the backends behind features")]
    missed: bool,
    /// Idempotency keys seen by an in-process topic, with the id they got and when they
    /// expire.
    idempotent: Records,
    idempotent_prune_at: usize,
    stats: BroadcastStats,
}

struct Entry {
    number: u64,
    frame: Bytes,
}

/// Idempotency records: each idempotency key seen, with the id its send got and when the
/// record expires.
pub(crate) type Records = HashMap<Box<str>, (Option<Box<str>>, Instant)>;

/// An event id this crate's hubs hand out: `<epoch>-<number>`.
pub(crate) fn parse_id(id: &str) -> Option<(&str, u64)> {
    let (epoch, number) = id.split_once('-')?;
    let valid_epoch =
        !epoch.is_empty() && epoch.len() <= 32 && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
    let valid_number =
        !number.is_empty() && number.len() <= 20 && number.bytes().all(|b| b.is_ascii_digit());
    if !valid_epoch || !valid_number {
        return None;
    }
    Some((epoch, number.parse().ok()?))
}

/// A new epoch: 16 hex digits that no other topic is likely to have had.
pub(crate) fn new_epoch() -> Arc<str> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let seed = (nanos, COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", RandomState::new().hash_one(seed)).into()
}

/// An event's frame: its fields (each ending with LF), then its id, then the blank line.
#[allow(dead_code, reason = "used by the backends behind features")]
pub(crate) fn frame_with_id(fields: &[u8], epoch: &str, number: u64) -> Bytes {
    use std::fmt::Write as _;
    let mut frame = BytesMut::with_capacity(fields.len() + epoch.len() + 28);
    frame.extend_from_slice(fields);
    frame.extend_from_slice(b"id: ");
    frame.extend_from_slice(epoch.as_bytes());
    // Writing to a `BytesMut` cannot fail.
    let _ = write!(frame, "-{number}\n\n");
    frame.freeze()
}

impl Topic {
    /// A topic that numbers its own events, from 1 in a new epoch.
    pub(crate) fn local(settings: Arc<Settings>) -> Topic {
        Self::new(settings, false, Some(new_epoch()))
    }

    /// A topic fed by a backend, which does not know its numbering yet.
    pub(crate) fn fed(settings: Arc<Settings>) -> Topic {
        Self::new(settings, true, None)
    }

    fn new(settings: Arc<Settings>, fed: bool, epoch: Option<Arc<str>>) -> Topic {
        Topic {
            settings,
            fed,
            state: Mutex::new(State {
                subscribers: Vec::new(),
                prune_at: 64,
                epoch,
                newest: 0,
                before: 0,
                history: VecDeque::new(),
                history_size: 0,
                missed: false,
                idempotent: HashMap::new(),
                idempotent_prune_at: 64,
                stats: BroadcastStats::default(),
            }),
        }
    }

    fn has_history(&self) -> bool {
        self.settings.history_events > 0
    }

    /// The settings of the topic's hub.
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Numbers, keeps and delivers an event an in-process hub was given; the event is valid.
    pub(crate) fn send(&self, event: crate::Event) -> Sent {
        let mut state = self.lock();
        self.send_locked(&mut state, event)
    }

    fn send_locked(&self, state: &mut State, event: crate::Event) -> Sent {
        state.newest += 1;
        let number = state.newest;
        if !self.has_history() {
            let id = event.last_id().map(Box::from);
            state.before = number;
            let reached = self.deliver(state, &event.finish(), 1);
            return Sent {
                id,
                reached: Some(reached),
                repeated: false,
            };
        }
        // An in-process topic always knows its epoch.
        let id = format!("{}-{number}", state.epoch.as_deref().unwrap_or_default());
        let frame = event.id(&id).finish();
        self.remember(state, number, frame.clone());
        let reached = self.deliver(state, &frame, 1);
        Sent {
            id: Some(id.into()),
            reached: Some(reached),
            repeated: false,
        }
    }

    /// Like [`send`](Self::send), at most once for `key` within the idempotency lifetime:
    /// a repeat returns the first send's id and sends nothing (and `true`).
    pub(crate) fn send_idempotent(&self, key: &str, event: crate::Event) -> (Sent, bool) {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some((id, until)) = state.idempotent.get(key) {
            if now < *until {
                let sent = Sent {
                    id: id.clone(),
                    reached: Some(0),
                    repeated: true,
                };
                return (sent, true);
            }
        }
        if state.idempotent.len() >= state.idempotent_prune_at {
            state.idempotent.retain(|_, (_, until)| now < *until);
            state.idempotent_prune_at = (state.idempotent.len() * 2).max(64);
        }
        let sent = self.send_locked(&mut state, event);
        let until = now + self.settings.idempotency_ttl;
        state
            .idempotent
            .insert(key.into(), (sent.id.clone(), until));
        (sent, false)
    }

    /// Takes the records that have not expired by `now`, for a keyed hub that drops this topic
    /// and keeps them for the key.
    pub(crate) fn take_records(&self, now: Instant) -> Records {
        let mut records = std::mem::take(&mut self.lock().idempotent);
        records.retain(|_, (_, until)| now < *until);
        records
    }

    /// Takes over `records` of this topic's key from before it was dropped.
    pub(crate) fn give_records(&self, records: Records) {
        self.lock().idempotent.extend(records);
    }

    /// Keeps and delivers events a backend numbered, in order: `frames` are each event's
    /// number and wire bytes. Delivered as one piece, so that a batch takes one place in each
    /// subscriber's buffer. An event of another epoch, or after a gap, starts the numbering
    /// over: the subscribers missed something, so they first get the reset event.
    #[allow(dead_code, reason = "used by the backends behind features")]
    pub(crate) fn feed(&self, epoch: &str, frames: &[(u64, Bytes)]) {
        let Some((first, _)) = frames.first() else {
            return;
        };
        let mut state = self.lock();
        let state = &mut *state;
        // Without a history the numbers are the whole hub's, with gaps for other keys.
        let continues = state.epoch.as_deref() == Some(epoch)
            && (!self.has_history() || *first <= state.newest + 1);
        if !continues {
            state.missed |= state.epoch.is_some();
            state.epoch = None;
            self.learn(state, epoch, first - 1);
        }
        let mut joined = Vec::with_capacity(frames.len());
        for (number, frame) in frames {
            if *number <= state.newest {
                continue;
            }
            state.newest = *number;
            if self.has_history() {
                self.remember(state, *number, frame.clone());
            } else {
                state.before = *number;
            }
            joined.push(frame.clone());
        }
        let count = joined.len() as u64;
        let piece = match joined.len() {
            0 => return,
            1 => joined.pop().unwrap_or_default(),
            _ => joined.concat().into(),
        };
        self.deliver(state, &piece, count);
    }

    /// Forgets where the numbering stands: the backend lost track, so the subscribers may
    /// have missed events, and get the reset event once the topic knows where it stands.
    #[allow(dead_code, reason = "used by the backends behind features")]
    pub(crate) fn restart(&self) {
        let mut state = self.lock();
        state.missed |= !state.subscribers.is_empty();
        state.epoch = None;
        state.history.clear();
        state.history_size = 0;
    }

    /// Subscribes `conn` if this topic can tell where it resumes by itself: live without a
    /// cursor (or without history); a replay when the history holds everything after the
    /// cursor; the reset event when an in-process topic does not know the cursor. `None`
    /// when a fed topic must ask its backend.
    pub(crate) fn subscribe_here(
        &self,
        conn: &Connection,
        cursor: Option<&str>,
        unusable: bool,
    ) -> Option<Resume> {
        let mut state = self.lock();
        if Self::has_subscriber(&state, conn) {
            return Some(Resume::AlreadySubscribed);
        }
        if conn.is_closed() {
            return Some(Resume::Ended);
        }
        if !self.has_history() || (cursor.is_none() && !unusable) {
            self.add_subscriber(&mut state, conn);
            return Some(Resume::Live);
        }
        let cursor = cursor.filter(|_| !unusable).and_then(parse_id);
        let epoch = state.epoch.clone();
        match (cursor, epoch) {
            (Some((cursor_epoch, after)), Some(epoch))
                if cursor_epoch == &*epoch && state.before <= after && after <= state.newest =>
            {
                Some(self.replay(&mut state, conn, Vec::new(), after))
            }
            (_, Some(epoch)) if !self.fed || unusable => {
                let newest = state.newest;
                Some(self.reset(&mut state, conn, &epoch, newest))
            }
            _ => None,
        }
    }

    /// Subscribes `conn` after what its backend found for the cursor `after` of `epoch`:
    /// `page` holds every event after it up to `newest` (the backend's newest when it
    /// looked). Called once this topic has been fed at least that far, it replays the page
    /// and then what the history holds after it; when the history has moved on past the page
    /// (or to another epoch), the reset event.
    #[allow(dead_code, reason = "used by the backends behind features")]
    pub(crate) fn subscribe_after(
        &self,
        conn: &Connection,
        epoch: &str,
        after: u64,
        page: Vec<(u64, Bytes)>,
        newest: u64,
    ) -> Resume {
        let mut state = self.lock();
        if Self::has_subscriber(&state, conn) {
            return Resume::AlreadySubscribed;
        }
        if conn.is_closed() {
            return Resume::Ended;
        }
        self.learn(&mut state, epoch, newest);
        let matches = state.epoch.as_deref() == Some(epoch)
            && state.before <= newest
            && newest <= state.newest;
        if !matches {
            let epoch = state.epoch.clone().unwrap_or_else(|| epoch.into());
            let newest = state.newest;
            return self.reset(&mut state, conn, &epoch, newest);
        }
        let frames = page
            .into_iter()
            .filter(|(number, _)| after < *number && *number <= newest)
            .map(|(_, frame)| frame)
            .collect();
        self.replay(&mut state, conn, frames, newest)
    }

    /// Sends `conn` the reset event and subscribes it; the id is the newest of this topic, or
    /// when it does not know its numbering, `newest` of `epoch` as its backend said.
    #[allow(dead_code, reason = "used by the backends behind features")]
    pub(crate) fn subscribe_reset(&self, conn: &Connection, epoch: &str, newest: u64) -> Resume {
        let mut state = self.lock();
        if Self::has_subscriber(&state, conn) {
            return Resume::AlreadySubscribed;
        }
        if conn.is_closed() {
            return Resume::Ended;
        }
        self.learn(&mut state, epoch, newest);
        let epoch = state.epoch.clone().unwrap_or_else(|| epoch.into());
        let newest = state.newest;
        self.reset(&mut state, conn, &epoch, newest)
    }

    /// Takes the numbering a backend gave: `newest` of `epoch`, with everything after it to be
    /// fed. Subscribers of an earlier numbering get the reset event, since they may have
    /// missed events.
    #[allow(dead_code, reason = "used by the backends behind features")]
    fn learn(&self, state: &mut State, epoch: &str, newest: u64) {
        if state.epoch.as_deref() == Some(epoch) {
            return;
        }
        // Another numbering than the one this topic knows: it started anew in the backend.
        state.missed |= state.epoch.is_some() && !state.subscribers.is_empty();
        state.epoch = Some(epoch.into());
        state.history.clear();
        state.history_size = 0;
        state.before = newest;
        state.newest = newest;
        if std::mem::take(&mut state.missed) && self.has_history() {
            let frame = self.reset_frame(epoch, newest);
            let stats = &mut state.stats;
            state.subscribers.retain(|conn| {
                let open = conn.send_unbounded([frame.clone()], 1);
                stats.resets += u64::from(open);
                open
            });
        }
    }

    fn reset_frame(&self, epoch: &str, newest: u64) -> Bytes {
        self.settings
            .reset
            .clone()
            .id(format!("{epoch}-{newest}"))
            .finish()
    }

    /// Queues `first`, then the kept events after `after`, and subscribes `conn`.
    fn replay(
        &self,
        state: &mut State,
        conn: &Connection,
        mut frames: Vec<Bytes>,
        after: u64,
    ) -> Resume {
        let start = state.history.partition_point(|entry| entry.number <= after);
        frames.extend(
            state
                .history
                .range(start..)
                .map(|entry| entry.frame.clone()),
        );
        let count = frames.len();
        if !conn.send_unbounded(frames, 1) {
            return Resume::Ended;
        }
        state.stats.deliveries += count as u64;
        state.stats.replays += 1;
        self.add_subscriber(state, conn);
        Resume::Replayed(count)
    }

    fn reset(&self, state: &mut State, conn: &Connection, epoch: &str, newest: u64) -> Resume {
        if !conn.send_unbounded([self.reset_frame(epoch, newest)], 1) {
            return Resume::Ended;
        }
        state.stats.resets += 1;
        self.add_subscriber(state, conn);
        Resume::Reset
    }

    /// Whether `conn` is subscribed already. Only a connection that has joined some hub is
    /// looked for, newest first.
    fn has_subscriber(state: &State, conn: &Connection) -> bool {
        conn.has_joined_a_hub()
            && state
                .subscribers
                .iter()
                .rev()
                .any(|subscriber| subscriber.is_same_stream(conn))
    }

    /// Keeps a clone of `conn`, first forgetting gone subscribers when the list has doubled
    /// since they were last forgotten.
    fn add_subscriber(&self, state: &mut State, conn: &Connection) {
        if state.subscribers.len() >= state.prune_at {
            state.subscribers.retain(|s| !s.is_closed());
            state.prune_at = (state.subscribers.len() * 2).max(64);
        }
        conn.note_joined_hub(self.settings.metrics.subscribed());
        state.subscribers.push(conn.clone());
    }

    /// Hands `frame`, which holds `events` events, to every subscriber.
    fn deliver(&self, state: &mut State, frame: &Bytes, events: u64) -> usize {
        let mut reached = 0;
        let stats = &mut state.stats;
        let policy = self.settings.slow_client;
        let metrics = &self.settings.metrics;
        let count = u32::try_from(events).unwrap_or(u32::MAX);
        state.subscribers.retain(
            |subscriber| match subscriber.try_send(frame.clone(), count) {
                Ok(()) => {
                    reached += 1;
                    true
                }
                Err((Refused::Full, _)) if policy == SlowClient::Skip => {
                    stats.events_skipped += events;
                    metrics.slow_client(false);
                    true
                }
                Err((Refused::Full, _)) => {
                    subscriber.close_for(CloseReason::SlowClient);
                    stats.slow_disconnects += 1;
                    metrics.slow_client(true);
                    false
                }
                Err((Refused::Ended, _)) => false,
            },
        );
        stats.events_sent += events;
        stats.deliveries += reached as u64 * events;
        reached
    }

    fn remember(&self, state: &mut State, number: u64, frame: Bytes) {
        state.history_size += frame.len();
        state.history.push_back(Entry { number, frame });
        while state.history.len() > self.settings.history_events
            || state.history_size > self.settings.history_bytes
        {
            let Some(oldest) = state.history.pop_front() else {
                break;
            };
            state.history_size -= oldest.frame.len();
            state.before = oldest.number;
        }
    }

    /// The latest kept events, at most `count`, oldest first.
    pub(crate) fn recent(&self, count: usize) -> Vec<HistoryEntry> {
        let state = self.lock();
        let skip = state.history.len().saturating_sub(count);
        state
            .history
            .range(skip..)
            .map(|entry| HistoryEntry::parse(&entry.frame))
            .collect()
    }

    pub(crate) fn stats(&self) -> BroadcastStats {
        let mut state = self.lock();
        state.subscribers.retain(|s| !s.is_closed());
        BroadcastStats {
            subscribers: state.subscribers.len(),
            ..state.stats
        }
    }

    /// Closes every subscriber's stream once what is queued has been sent, and forgets them.
    pub(crate) fn close_all(&self) {
        let subscribers = std::mem::take(&mut self.lock().subscribers);
        for subscriber in subscribers {
            subscriber.close();
        }
    }

    /// Whether an open connection is subscribed; when none is, the closed ones are forgotten.
    /// Usually answered by the first subscriber.
    pub(crate) fn has_open_subscribers(&self) -> bool {
        let mut state = self.lock();
        let open = state.subscribers.iter().any(|s| !s.is_closed());
        if !open {
            state.subscribers.clear();
        }
        open
    }

    /// The epoch and newest number, when the topic knows them.
    #[cfg(test)]
    pub(crate) fn position(&self) -> Option<(Arc<str>, u64)> {
        let state = self.lock();
        Some((state.epoch.clone()?, state.newest))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across user code, so a poisoned lock still holds a
        // consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        testing::{client, ready},
        Broadcast, BroadcastBuilder, EventStreamBody,
    };
    use std::{ops::RangeInclusive, time::Duration};
    use tokio::time::advance;

    const E: &str = "00000000000000e1";
    const F: &str = "00000000000000f2";

    fn settings(builder: BroadcastBuilder) -> Arc<Settings> {
        builder.settings(Duration::ZERO, false)
    }

    fn fed(history: usize) -> Topic {
        Topic::fed(settings(Broadcast::builder().history(history)))
    }

    fn frame(epoch: &str, number: u64) -> Bytes {
        frame_with_id(format!("data: {number}\n").as_bytes(), epoch, number)
    }

    fn frames(epoch: &str, numbers: RangeInclusive<u64>) -> Vec<(u64, Bytes)> {
        numbers.map(|n| (n, frame(epoch, n))).collect()
    }

    /// What a browser receives for `numbers` of `epoch`.
    fn wire(epoch: &str, numbers: RangeInclusive<u64>) -> String {
        numbers
            .map(|n| format!("data: {n}\nid: {epoch}-{n}\n\n"))
            .collect()
    }

    fn reset(epoch: &str, newest: u64) -> String {
        format!("event: reset\ndata: \nid: {epoch}-{newest}\n\n")
    }

    fn live(topic: &Topic, capacity: usize) -> (Connection, EventStreamBody) {
        let (conn, body) = client(capacity, None);
        assert_eq!(topic.subscribe_here(&conn, None, false), Some(Resume::Live));
        (conn, body)
    }

    /// A new client (a buffer of 16) subscribed here from `cursor` (its `Last-Event-ID`
    /// `unusable` or not): its connection, its body, and how (`None`: the backend answers).
    fn from_cursor(
        topic: &Topic,
        cursor: &str,
        unusable: bool,
    ) -> (Connection, EventStreamBody, Option<Resume>) {
        let (conn, body) = client(16, None);
        let how = topic.subscribe_here(&conn, Some(cursor), unusable);
        (conn, body, how)
    }

    /// A fed topic keeping 100 events, with a live subscriber that has a buffer of 16.
    fn fed_with_a_subscriber() -> (Topic, Connection, EventStreamBody) {
        let topic = fed(100);
        let (conn, body) = live(&topic, 16);
        (topic, conn, body)
    }

    fn subscribers(topic: &Topic) -> usize {
        topic.lock().subscribers.len()
    }

    #[tokio::test]
    async fn subscribers_of_an_idle_hub_are_pruned_as_they_go() {
        let hub = Broadcast::new();
        for _ in 0..1000 {
            let (conn, body) = client(4, None);
            hub.subscribe(&conn).await;
            drop(body);
        }
        assert!(subscribers(hub.topic()) <= 128);
    }

    #[tokio::test]
    async fn pruning_runs_when_the_list_doubles_since_the_last_prune() {
        let hub = Broadcast::new();
        let live: Vec<_> = (0..100).map(|_| client(4, None)).collect();
        for (conn, _) in &live {
            hub.subscribe(conn).await;
        }
        let mut lengths = Vec::new();
        for _ in 0..1000 {
            let (conn, body) = client(4, None);
            hub.subscribe(&conn).await;
            drop(body);
            lengths.push(subscribers(hub.topic()));
        }
        // 100 live ones: the list grows to twice that, then is pruned back to the live ones,
        // first at 128 (the threshold the live ones left), then every 100 subscribes.
        assert_eq!(lengths.iter().max(), Some(&200));
        assert_eq!(lengths.iter().min(), Some(&101));
        assert_eq!(lengths.iter().filter(|&&len| len == 101).count(), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_idempotency_keys_are_forgotten() {
        let ttl = Duration::from_secs(1);
        let topic = Topic::local(settings(
            Broadcast::builder().history(10).idempotency_ttl(ttl),
        ));
        let mut most = 0;
        for i in 0..1000 {
            let (sent, repeated) = topic.send_idempotent(&format!("k{i}"), "x".into());
            assert!(!repeated);
            assert_eq!(sent.reached, Some(0));
            most = most.max(topic.lock().idempotent.len());
            advance(ttl).await;
        }
        // Each key has expired by the next send: the table is pruned whenever it reaches 64.
        assert_eq!(most, 64);
        assert_eq!(topic.position().unwrap().1, 1000);
    }

    #[tokio::test]
    async fn a_fed_batch_takes_one_place_in_each_buffer() {
        let topic = fed(1000);
        let (reader, mut reader_body) = live(&topic, 256);
        let (small, mut small_body) = live(&topic, 1);
        topic.feed(E, &frames(E, 1..=512));
        assert!(!reader.is_closed());
        assert!(!small.is_closed());
        let stats = topic.stats();
        assert_eq!(stats.slow_disconnects, 0);
        assert_eq!(stats.events_sent, 512);
        assert_eq!(stats.subscribers, 2);
        assert_eq!(ready(&mut reader_body), wire(E, 1..=512));
        assert_eq!(ready(&mut small_body), wire(E, 1..=512));
        // Both read it: the next batch fits as well.
        topic.feed(E, &frames(E, 513..=1024));
        assert!(!reader.is_closed() && !small.is_closed());
        assert_eq!(ready(&mut small_body), wire(E, 513..=1024));
        assert_eq!(topic.stats().slow_disconnects, 0);
    }

    #[tokio::test]
    async fn a_fed_batch_still_disconnects_a_subscriber_that_does_not_read() {
        let topic = fed(100);
        let (stalled, mut body) = live(&topic, 1);
        let (_reader, _reader_body) = live(&topic, 1);
        topic.feed(E, &frames(E, 1..=3));
        topic.feed(E, &frames(E, 4..=6));
        assert!(stalled.is_closed());
        assert_eq!(topic.stats().slow_disconnects, 2);
        assert_eq!(ready(&mut body), wire(E, 1..=3));
    }

    #[tokio::test]
    async fn a_fed_batch_counts_one_delivery_per_event_and_subscriber() {
        let topic = fed(1000);
        let (_a, _a_body) = live(&topic, 256);
        let (_b, _b_body) = live(&topic, 256);
        topic.feed(E, &frames(E, 1..=512));
        topic.feed(E, &frames(E, 513..=513));
        let stats = topic.stats();
        assert_eq!(stats.events_sent, 513);
        assert_eq!(stats.deliveries, 2 * 513);
    }

    #[tokio::test]
    async fn a_skipped_fed_batch_counts_every_event_skipped() {
        let topic = Topic::fed(settings(
            Broadcast::builder()
                .history(100)
                .slow_client(SlowClient::Skip),
        ));
        let (full, mut body) = live(&topic, 1);
        topic.feed(E, &frames(E, 1..=1));
        topic.feed(E, &frames(E, 2..=4));
        assert!(!full.is_closed());
        assert_eq!(ready(&mut body), wire(E, 1..=1));
        assert_eq!(topic.stats().events_skipped, 3);
    }

    #[tokio::test]
    async fn a_gap_in_the_numbers_sends_the_reset_event_and_delivery_goes_on() {
        let (topic, conn, mut body) = fed_with_a_subscriber();
        topic.feed(E, &frames(E, 1..=3));
        topic.feed(E, &frames(E, 6..=7));
        topic.feed(E, &frames(E, 8..=8));
        assert!(!conn.is_closed());
        assert_eq!(
            ready(&mut body),
            format!("{}{}{}", wire(E, 1..=3), reset(E, 5), wire(E, 6..=8))
        );
        let stats = topic.stats();
        assert_eq!((stats.resets, stats.events_sent), (1, 6));
        // The reset's id resumes; what was before the gap is not kept.
        let (_again, mut again_body, how) = from_cursor(&topic, &format!("{E}-5"), false);
        assert_eq!(how, Some(Resume::Replayed(3)));
        assert_eq!(ready(&mut again_body), wire(E, 6..=8));
        let (_old, _old_body, how) = from_cursor(&topic, &format!("{E}-3"), false);
        assert_eq!(how, None);
        assert_eq!(topic.position(), Some((E.into(), 8)));
    }

    #[tokio::test]
    async fn another_epoch_sends_the_reset_event_and_delivery_goes_on() {
        let (topic, conn, mut body) = fed_with_a_subscriber();
        topic.feed(E, &frames(E, 1..=2));
        topic.feed(F, &frames(F, 1..=2));
        assert!(!conn.is_closed());
        assert_eq!(
            ready(&mut body),
            format!("{}{}{}", wire(E, 1..=2), reset(F, 0), wire(F, 1..=2))
        );
        assert_eq!(topic.stats().resets, 1);
        let (_again, mut again_body, how) = from_cursor(&topic, &format!("{F}-0"), false);
        assert_eq!(how, Some(Resume::Replayed(2)));
        assert_eq!(ready(&mut again_body), wire(F, 1..=2));
        // An id of the earlier epoch is the backend's to answer.
        let (_old, _old_body, how) = from_cursor(&topic, &format!("{E}-2"), false);
        assert_eq!(how, None);
    }

    #[tokio::test]
    async fn the_first_feed_sends_no_reset() {
        let (topic, _conn, mut body) = fed_with_a_subscriber();
        topic.feed(E, &frames(E, 41..=42));
        assert_eq!(ready(&mut body), wire(E, 41..=42));
        assert_eq!(topic.stats().resets, 0);
        assert_eq!(topic.position(), Some((E.into(), 42)));
    }

    #[tokio::test]
    async fn restart_then_feed_sends_the_reset_event_once() {
        let (topic, conn, mut body) = fed_with_a_subscriber();
        topic.feed(E, &frames(E, 1..=2));
        topic.restart();
        assert_eq!(topic.position(), None);
        topic.feed(E, &frames(E, 3..=3));
        topic.feed(E, &frames(E, 4..=4));
        assert!(!conn.is_closed());
        assert_eq!(
            ready(&mut body),
            format!("{}{}{}", wire(E, 1..=2), reset(E, 2), wire(E, 3..=4))
        );
        assert_eq!(topic.stats().resets, 1);
        // The history starts after the restart.
        assert_eq!(topic.recent(10).len(), 2);
    }

    #[tokio::test]
    async fn restart_without_subscribers_sends_no_reset() {
        let topic = fed(100);
        topic.feed(E, &frames(E, 1..=2));
        topic.restart();
        let (_conn, mut body) = live(&topic, 16);
        topic.feed(E, &frames(E, 3..=3));
        assert_eq!(ready(&mut body), wire(E, 3..=3));
        assert_eq!(topic.stats().resets, 0);
    }

    #[tokio::test]
    async fn numbers_fed_again_are_delivered_once() {
        let (topic, _conn, mut body) = fed_with_a_subscriber();
        topic.feed(E, &frames(E, 1..=3));
        topic.feed(E, &frames(E, 2..=4));
        topic.feed(E, &frames(E, 1..=4));
        assert_eq!(ready(&mut body), wire(E, 1..=4));
        let stats = topic.stats();
        assert_eq!((stats.events_sent, stats.resets), (4, 0));
        assert_eq!(topic.recent(10).len(), 4);
    }

    #[tokio::test]
    async fn a_fed_topic_without_history_passes_gaps_through() {
        let topic = fed(0);
        let (_conn, mut body) = live(&topic, 16);
        let plain = |n: u64| (n, Bytes::from(format!("data: {n}\n\n")));
        topic.feed(E, &[plain(3), plain(5)]);
        topic.feed(E, &[plain(9)]);
        assert_eq!(ready(&mut body), "data: 3\n\ndata: 5\n\ndata: 9\n\n");
        let stats = topic.stats();
        assert_eq!((stats.events_sent, stats.resets), (3, 0));
        assert!(topic.recent(10).is_empty());
    }

    #[tokio::test]
    async fn a_fed_topic_asks_its_backend_about_cursors_it_cannot_place() {
        let topic = fed(100);
        let (conn, _body) = client(16, None);
        let cursor = format!("{E}-1");
        assert_eq!(topic.subscribe_here(&conn, Some(&cursor), false), None);
        assert_eq!(topic.subscribe_here(&conn, Some("forged"), false), None);
        topic.feed(E, &frames(E, 5..=7));
        let (_resumed, mut body, how) = from_cursor(&topic, &format!("{E}-4"), false);
        assert_eq!(how, Some(Resume::Replayed(3)));
        assert_eq!(ready(&mut body), wire(E, 5..=7));
        for cursor in [format!("{E}-3"), format!("{E}-8"), format!("{F}-5")] {
            let (_conn, _body, how) = from_cursor(&topic, &cursor, false);
            assert_eq!(how, None, "{cursor}");
        }
        // An unusable Last-Event-ID is answered here, with the reset event.
        let (_unusable, mut body, how) = from_cursor(&topic, &format!("{E}-4"), true);
        assert_eq!(how, Some(Resume::Reset));
        assert_eq!(ready(&mut body), reset(E, 7));
    }

    #[tokio::test]
    async fn subscribe_after_replays_the_page_then_the_history_after_it() {
        let topic = fed(100);
        topic.feed(E, &frames(E, 5..=7));
        let (conn, mut body) = client(16, None);
        let page = frames(E, 3..=6);
        assert_eq!(
            topic.subscribe_after(&conn, E, 2, page, 6),
            Resume::Replayed(5)
        );
        assert_eq!(ready(&mut body), wire(E, 3..=7));
        topic.feed(E, &frames(E, 8..=8));
        assert_eq!(ready(&mut body), wire(E, 8..=8));
        assert_eq!(topic.stats().replays, 1);
    }

    #[tokio::test]
    async fn subscribe_after_resets_when_the_history_moved_past_the_page() {
        let topic = fed(2);
        topic.feed(E, &frames(E, 1..=5));
        let (conn, mut body) = client(16, None);
        assert_eq!(
            topic.subscribe_after(&conn, E, 1, frames(E, 2..=2), 2),
            Resume::Reset
        );
        assert_eq!(ready(&mut body), reset(E, 5));
        assert_eq!(topic.stats().resets, 1);
    }

    #[tokio::test]
    async fn subscribe_reset_takes_the_backends_numbering() {
        let topic = fed(10);
        let (conn, mut body) = client(16, None);
        assert_eq!(topic.subscribe_reset(&conn, E, 9), Resume::Reset);
        assert_eq!(topic.position(), Some((E.into(), 9)));
        topic.feed(E, &frames(E, 10..=10));
        assert_eq!(
            ready(&mut body),
            format!("{}{}", reset(E, 9), wire(E, 10..=10))
        );
        assert_eq!(topic.stats().resets, 1);
    }

    #[test]
    fn ids_are_parsed_strictly() {
        assert_eq!(parse_id("00ab-12"), Some(("00ab", 12)));
        assert_eq!(parse_id(&format!("{E}-0")), Some((E, 0)));
        for bad in [
            "",
            "-1",
            "ab-",
            "ab",
            "ab-1x",
            "a b-1",
            "ab-+1",
            "ab--1",
            "ab-99999999999999999999",
            "ab-123456789012345678901",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
        let long = "a".repeat(33);
        assert_eq!(parse_id(&format!("{long}-1")), None);
        assert!(parse_id(&format!("{}-1", &long[1..])).is_some());
    }

    #[test]
    fn new_epochs_are_sixteen_hex_digits_and_differ() {
        let epochs: std::collections::HashSet<Arc<str>> =
            (0..10_000).map(|_| new_epoch()).collect();
        assert_eq!(epochs.len(), 10_000);
        assert!(epochs
            .iter()
            .all(|e| e.len() == 16 && e.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
