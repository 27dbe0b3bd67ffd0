//! The reader: one task per hub and server that tails the hub's stream on a connection of its
//! own and feeds each event to this server's topics, in the stream's order.

use super::{entry_number, fields, number, Core, Progress, Topics};
use crate::hub::topic::{frame_with_id, Topic};
use ::redis::{
    aio::MultiplexedConnection,
    streams::{StreamId, StreamReadReply},
    AsyncConnectionConfig, RedisError, Value,
};
use bytes::Bytes;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::time::Instant;

/// Entries the reader asks for at once.
const READ_COUNT: usize = 512;
/// How long each read waits for new entries (`XREAD BLOCK`).
const BLOCK: Duration = Duration::from_secs(2);
/// The reader's first and longest pause between attempts to reach Redis.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// Tails the hub's stream for ever (the hub aborts it when it goes): reconnects with backoff
/// and goes on from the last event it fed.
pub(super) async fn read(core: Arc<Core>) {
    // Longer than the block, so that a read that waits is not cut off by the client.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(core.settings.response_timeout))
        .set_response_timeout(Some(BLOCK + core.settings.response_timeout));
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = BACKOFF.0;
    // Where the reader stands; `None` until its first look, which starts from the newest.
    let mut at: Option<Progress> = None;
    let mut refreshed = Instant::now();
    loop {
        let redis = match &mut conn {
            Some(redis) => redis,
            None => match core
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(redis) => conn.insert(redis),
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    continue;
                }
            },
        };
        let after = at.as_ref().map_or(0, |at| at.number);
        // One atomic look: where the numbering stands, and the entries after the reader's.
        let look: Result<(Vec<Option<String>>, Option<StreamReadReply>), RedisError> =
            ::redis::pipe()
                .atomic()
                .cmd("HMGET")
                .arg(&core.meta)
                .arg("e")
                .arg("n")
                .cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("STREAMS")
                .arg(&core.stream)
                .arg(format!("{after}-0"))
                .query_async(redis)
                .await;
        let (meta, read) = match look {
            Ok(look) => look,
            Err(_) => {
                core.count(&core.counters.reader_reconnects);
                core.settings.metrics.reader_reconnected();
                conn = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        backoff = BACKOFF.0;
        let epoch: Option<Arc<str>> = meta.first().cloned().flatten().map(Arc::from);
        let newest = number(meta.get(1));
        let Some(position) = &mut at else {
            // The first look: live from here.
            at = Some(Progress {
                looked: true,
                epoch,
                number: newest,
            });
            core.progress.send_replace(at.clone().unwrap_or_default());
            continue;
        };
        let entries: Vec<StreamId> = read
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .collect();
        match (&epoch, &position.epoch) {
            (None, None) => {}
            // The first event of a hub that had none: this look read it from the start.
            (Some(_), None) if position.number == 0 => position.epoch = epoch.clone(),
            (Some(new), Some(old)) if new == old && newest >= position.number => {}
            // Gone (flushed, or lost with Redis), recreated, or rolled back: whatever this
            // server had not read is lost. Start over from the new numbering's start.
            _ => {
                core.count(&core.counters.stream_resets);
                core.settings.metrics.stream_reset();
                restart_all(&core.topics());
                *position = Progress {
                    looked: true,
                    epoch: None,
                    number: 0,
                };
                core.progress.send_replace(position.clone());
                continue;
            }
        }
        let found = !entries.is_empty();
        if let Some(epoch) = position.epoch.clone() {
            feed(&core, &epoch, position, entries);
        }
        core.progress.send_replace(position.clone());
        if core.keyed && refreshed.elapsed() >= refresh_interval(&core) {
            refresh(&core, redis).await;
            refreshed = Instant::now();
        }
        if !found {
            // Nothing new: wait (bounded) until there is, then look again. What this read
            // returns is read again by the atomic look.
            let waited: Result<Value, RedisError> = ::redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&core.stream)
                .arg(format!("{}-0", position.number))
                .query_async(redis)
                .await;
            if waited.is_err() {
                core.count(&core.counters.reader_reconnects);
                core.settings.metrics.reader_reconnected();
                conn = None;
            }
        }
    }
}

fn restart_all(topics: &Topics) {
    let all = topics.all.iter().filter_map(|topic| topic.upgrade());
    let keys = topics.keys.values().filter_map(|topic| topic.upgrade());
    for topic in all.chain(keys) {
        topic.restart();
    }
}

/// Events for one topic, of one epoch, with their numbers.
type Batch = (Arc<Topic>, Arc<str>, Vec<(u64, Bytes)>);

/// Feeds `entries` (the hub's, of `epoch`) to the topics they belong to, each topic's in one
/// batch, and moves `at` past them.
fn feed(core: &Core, epoch: &Arc<str>, at: &mut Progress, entries: Vec<StreamId>) {
    let has_history = core.settings.history_events > 0;
    // One batch per topic and epoch, in the order of their first event.
    let mut batches: Vec<Batch> = Vec::new();
    let mut open: HashMap<*const Topic, usize> = HashMap::new();
    let topics = core.topics();
    let all = topics.all.as_ref().and_then(|topic| topic.upgrade());
    let mut add = |topic: Arc<Topic>, epoch: &str, number: u64, frame: Bytes| {
        let at = open.get(&Arc::as_ptr(&topic)).copied();
        match at {
            Some(at) if &*batches[at].1 == epoch => batches[at].2.push((number, frame)),
            _ => {
                open.insert(Arc::as_ptr(&topic), batches.len());
                batches.push((topic, epoch.into(), vec![(number, frame)]));
            }
        }
    };
    // A read returns entries one after the other: a gap can only come first.
    let first = entries.first().and_then(|entry| entry_number(&entry.id));
    if first.is_some_and(|first| first > at.number + 1) {
        // Trimmed past the reader: some events never reached this server.
        core.count(&core.counters.stream_resets);
        core.settings.metrics.stream_reset();
        restart_all(&topics);
    }
    let mut stored: Option<u64> = None;
    for entry in entries {
        let Some(number) = entry_number(&entry.id) else {
            continue;
        };
        if number <= at.number {
            continue;
        }
        at.number = number;
        // When Redis stored the newest entry, in milliseconds since the Unix epoch.
        if let Some(time) = text(&entry.map, "t").and_then(|t| t.parse().ok()) {
            stored = Some(time);
        }
        let Some(fields) = fields(&entry.map) else {
            continue;
        };
        let frame = |epoch: &str, number: u64| match has_history {
            true => frame_with_id(&fields, epoch, number),
            false => [&fields[..], b"\n"].concat().into(),
        };
        if let Some(all) = &all {
            add(Arc::clone(all), epoch, number, frame(epoch, number));
        }
        if !core.keyed {
            continue;
        }
        let key = text(&entry.map, "k").unwrap_or_default();
        let Some(topic) = topics.keys.get(key.as_str()).and_then(|t| t.upgrade()) else {
            continue;
        };
        // A key without history has no numbering of its own: the hub's stands in.
        let (key_epoch, key_number) = match has_history {
            true => (
                text(&entry.map, "x").unwrap_or_default(),
                text(&entry.map, "o")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
            ),
            false => (epoch.to_string(), number),
        };
        let frame = frame(&key_epoch, key_number);
        add(topic, &key_epoch, key_number, frame);
    }
    drop(topics);
    for (topic, epoch, frames) in batches {
        topic.feed(&epoch, &frames);
    }
    if let Some(stored) = stored {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        core.settings
            .metrics
            .reader_lag(now.saturating_sub(Duration::from_millis(stored)));
    }
}

fn text(map: &HashMap<String, Value>, field: &str) -> Option<String> {
    match map.get(field)? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// How often the keys with subscribers here have their linger time renewed in Redis.
fn refresh_interval(core: &Core) -> Duration {
    (core.settings.linger / 3).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Renews the linger time of the keys that have open subscribers on this server, so that
/// their history stays in Redis while anyone follows them.
async fn refresh(core: &Core, redis: &mut MultiplexedConnection) {
    if core.settings.history_events == 0 {
        return;
    }
    let names: Vec<Box<str>> = core
        .topics()
        .keys
        .iter()
        .filter(|(_, topic)| topic.upgrade().is_some_and(|t| t.has_open_subscribers()))
        .map(|(name, _)| name.clone())
        .collect();
    if names.is_empty() {
        return;
    }
    let linger = core.settings.linger_ms();
    let mut pipe = ::redis::pipe();
    for name in names {
        let (stream, meta) = core.keys_of(Some(&name));
        pipe.cmd("PEXPIRE").arg(stream).arg(linger).ignore();
        pipe.cmd("PEXPIRE").arg(meta).arg(linger).ignore();
    }
    let _: Result<(), RedisError> = pipe.query_async(redis).await;
}
