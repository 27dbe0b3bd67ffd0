use super::*;
use crate::{
    connection::LastEventId,
    testing::{client, client_with, ready},
};
use http_body::Body;
use std::{
    collections::HashSet,
    pin::Pin,
    task::{Context, Poll, Waker},
};
use tokio::time::advance;

fn hub(history: usize) -> Broadcast {
    Broadcast::builder().history(history).build()
}

/// The hub's epoch: ids are `<epoch>-<number>`.
fn epoch(hub: &Broadcast) -> String {
    hub.topic()
        .position()
        .expect("an in-process hub knows its epoch")
        .0
        .to_string()
}

/// A hub keeping `history` events that has sent `texts`, and its epoch.
async fn hub_that_sent(history: usize, texts: &[&str]) -> (Broadcast, String) {
    let hub = hub(history);
    let e = epoch(&hub);
    for text in texts {
        hub.send(*text).await.unwrap();
    }
    (hub, e)
}

/// How many subscribers a send handed the event to.
async fn reached(hub: &Broadcast, event: impl Into<Event>) -> Option<usize> {
    hub.send(event).await.expect("a valid event").reached()
}

#[tokio::test]
async fn events_get_numbered_ids_and_replay_exactly() {
    let (hub, e) = hub_that_sent(10, &["1", "2", "3"]).await;
    let (conn, mut body) = client(8, Some(&format!("{e}-1")));
    assert_eq!(hub.subscribe(&conn).await, Resume::Replayed(2));
    hub.send("4").await.unwrap();
    assert_eq!(
        ready(&mut body),
        format!("data: 2\nid: {e}-2\n\ndata: 3\nid: {e}-3\n\ndata: 4\nid: {e}-4\n\n")
    );
}

#[tokio::test]
async fn a_reset_before_the_first_event_carries_an_id_that_resumes() {
    a_reset_on_an_empty_history_resumes(10, "forged").await;
}

/// A hub keeping `history` events, with none yet, answers `last_event_id` with the reset event
/// whose id is the one before the first, which resumes.
async fn a_reset_on_an_empty_history_resumes(history: usize, last_event_id: &str) {
    let hub = hub(history);
    let e = epoch(&hub);
    let (conn, mut body) = client(8, Some(last_event_id));
    assert_eq!(hub.subscribe(&conn).await, Resume::Reset);
    assert_eq!(
        ready(&mut body),
        format!("event: reset\ndata: \nid: {e}-0\n\n")
    );
    // Reconnecting with the id from the reset event resumes without a gap.
    hub.send("a").await.unwrap();
    let (again, mut body) = client(8, Some(&format!("{e}-0")));
    assert_eq!(hub.subscribe(&again).await, Resume::Replayed(1));
    assert_eq!(ready(&mut body), format!("data: a\nid: {e}-1\n\n"));
}

#[tokio::test]
async fn a_cursor_of_another_hub_gets_the_reset_event() {
    let hubs: Vec<_> = (0..100).map(|_| hub(10)).collect();
    for hub in &hubs {
        hub.send("x").await.unwrap();
    }
    let ids: Vec<String> = hubs.iter().map(|hub| format!("{}-1", epoch(hub))).collect();
    for (i, hub) in hubs.iter().enumerate() {
        let other = &ids[(i + 1) % ids.len()];
        let (conn, _body) = client(8, Some(other));
        assert_eq!(hub.subscribe(&conn).await, Resume::Reset);
    }
}

#[tokio::test]
async fn hubs_built_together_have_distinct_epochs_of_sixteen_hex_digits() {
    let hubs: Vec<_> = (0..100).map(|_| hub(10)).collect();
    let epochs: HashSet<String> = hubs.iter().map(epoch).collect();
    assert_eq!(epochs.len(), 100);
    for e in &epochs {
        assert_eq!(e.len(), 16, "{e}");
        assert!(e.bytes().all(|b| b.is_ascii_hexdigit()), "{e}");
    }
    // A hub's own id resumes; its id on the next hub, with the number it would have there,
    // does not.
    for (i, hub) in hubs.iter().enumerate() {
        let sent = hub.send("x").await.unwrap();
        let own = sent.id().unwrap().to_owned();
        assert_eq!(own, format!("{}-1", epoch(hub)));
        let (conn, mut body) = client(8, Some(&own));
        assert_eq!(hub.subscribe(&conn).await, Resume::Replayed(0));
        assert_eq!(ready(&mut body), "");
        let next = &hubs[(i + 1) % hubs.len()];
        let (conn, mut body) = client(8, Some(&own));
        assert_eq!(next.subscribe(&conn).await, Resume::Reset);
        let newest = next.topic().position().unwrap().1;
        assert_eq!(
            ready(&mut body),
            format!("event: reset\ndata: \nid: {}-{newest}\n\n", epoch(next))
        );
    }
}

#[tokio::test]
async fn events_get_increasing_ids_and_an_own_id_goes_before_the_hubs() {
    let hub = hub(10);
    let e = epoch(&hub);
    let (conn, mut body) = client(8, None);
    assert_eq!(hub.subscribe(&conn).await, Resume::Live);
    let a = hub.send("a").await.unwrap();
    let b = hub.send(Event::new().id("mine").data("b")).await.unwrap();
    let c = hub.send("c").await.unwrap();
    let ids = [a.id(), b.id(), c.id()];
    let expected = [format!("{e}-1"), format!("{e}-2"), format!("{e}-3")];
    assert_eq!(ids, expected.each_ref().map(|id| Some(id.as_str())));
    assert_eq!(
        ready(&mut body),
        format!("data: a\nid: {e}-1\n\nid: mine\ndata: b\nid: {e}-2\n\ndata: c\nid: {e}-3\n\n")
    );
}

#[tokio::test]
async fn without_history_events_are_sent_as_they_are() {
    let hub = Broadcast::new();
    let (conn, mut body) = client(8, Some("3"));
    assert_eq!(hub.subscribe(&conn).await, Resume::Live);
    let sent = hub.send("a").await.unwrap();
    assert_eq!((sent.id(), sent.reached()), (None, Some(1)));
    let sent = hub.send(Event::new().id("7").data("b")).await.unwrap();
    assert_eq!((sent.id(), sent.reached()), (Some("7"), Some(1)));
    assert_eq!(ready(&mut body), "data: a\n\nid: 7\ndata: b\n\n");
}

#[tokio::test]
async fn replay_after_a_known_id_is_exact_and_comes_before_live_events() {
    let (hub, e) = hub_that_sent(10, &["1", "2", "3", "4", "5"]).await;
    let (conn, mut body) = client(8, Some(&format!("{e}-2")));
    assert_eq!(hub.subscribe(&conn).await, Resume::Replayed(3));
    hub.send("6").await.unwrap();
    assert_eq!(
        ready(&mut body),
        format!(
            "data: 3\nid: {e}-3\n\ndata: 4\nid: {e}-4\n\ndata: 5\nid: {e}-5\n\n\
             data: 6\nid: {e}-6\n\n"
        )
    );
}

#[tokio::test]
async fn replay_from_the_newest_id_sends_nothing_old() {
    let (hub, e) = hub_that_sent(10, &["1"]).await;
    let (conn, mut body) = client(8, Some(&format!("{e}-1")));
    assert_eq!(hub.subscribe(&conn).await, Resume::Replayed(0));
    assert_eq!(ready(&mut body), "");
}

#[tokio::test]
async fn subscribe_from_resumes_after_the_given_cursor() {
    let (hub, e) = hub_that_sent(10, &["1", "2", "3"]).await;
    let (conn, mut body) = client(8, None);
    let cursor = format!("{e}-2");
    assert_eq!(
        hub.subscribe_from(&conn, Some(&cursor)).await,
        Resume::Replayed(1)
    );
    assert_eq!(ready(&mut body), format!("data: 3\nid: {e}-3\n\n"));
}

#[tokio::test]
async fn subscribe_from_uses_the_given_cursor_not_the_connections_id() {
    let (hub, e) = hub_that_sent(10, &["1", "2", "3"]).await;
    let (conn, mut body) = client(8, Some(&format!("{e}-1")));
    let cursor = format!("{e}-2");
    assert_eq!(
        hub.subscribe_from(&conn, Some(&cursor)).await,
        Resume::Replayed(1)
    );
    assert_eq!(ready(&mut body), format!("data: 3\nid: {e}-3\n\n"));
    let (conn, mut body) = client(8, Some(&format!("{e}-1")));
    assert_eq!(hub.subscribe_from(&conn, None).await, Resume::Live);
    assert_eq!(ready(&mut body), "");
}

#[tokio::test]
async fn an_own_id_is_not_a_resume_point_but_the_hubs_id_after_it_is() {
    let hub = hub(10);
    let e = epoch(&hub);
    hub.send(Event::new().id("x").data("1")).await.unwrap();
    hub.send(Event::new().id("y").data("2")).await.unwrap();
    let (conn, mut body) = client(8, Some(&format!("{e}-1")));
    assert_eq!(hub.subscribe(&conn).await, Resume::Replayed(1));
    assert_eq!(ready(&mut body), format!("id: y\ndata: 2\nid: {e}-2\n\n"));
    let (conn, mut body) = client(8, Some("x"));
    assert_eq!(hub.subscribe(&conn).await, Resume::Reset);
    assert_eq!(
        ready(&mut body),
        format!("event: reset\ndata: \nid: {e}-2\n\n")
    );
}

#[tokio::test]
async fn the_id_just_before_the_history_replays_all_of_it() {
    let (hub, e) = hub_that_sent(3, &["1", "2", "3", "4", "5"]).await;
    let (conn, mut body) = client(8, Some(&format!("{e}-2")));
    assert_eq!(hub.subscribe(&conn).await, Resume::Replayed(3));
    assert_eq!(
        ready(&mut body),
        format!("data: 3\nid: {e}-3\n\ndata: 4\nid: {e}-4\n\ndata: 5\nid: {e}-5\n\n")
    );
}

#[tokio::test]
async fn a_cursor_older_than_the_history_gets_the_reset_event_with_the_newest_id() {
    let (hub, e) = hub_that_sent(3, &["1", "2", "3", "4", "5"]).await;
    let (conn, mut body) = client(8, Some(&format!("{e}-1")));
    assert_eq!(hub.subscribe(&conn).await, Resume::Reset);
    hub.send("6").await.unwrap();
    assert_eq!(
        ready(&mut body),
        format!("event: reset\ndata: \nid: {e}-5\n\ndata: 6\nid: {e}-6\n\n")
    );
    assert_eq!(hub.stats().resets, 1);
}

#[tokio::test]
async fn a_cursor_past_the_newest_id_gets_the_reset_event() {
    let (hub, e) = hub_that_sent(10, &["1", "2", "3"]).await;
    let (conn, mut body) = client(8, Some(&format!("{e}-4")));
    assert_eq!(hub.subscribe(&conn).await, Resume::Reset);
    assert_eq!(
        ready(&mut body),
        format!("event: reset\ndata: \nid: {e}-3\n\n")
    );
    let stats = hub.stats();
    assert_eq!((stats.resets, stats.replays), (1, 0));
}

#[tokio::test]
async fn an_unknown_cursor_on_an_empty_history_resets_to_before_the_first_id() {
    a_reset_on_an_empty_history_resumes(3, "forged\u{e9}").await;
}

#[tokio::test]
async fn the_reset_event_can_be_chosen() {
    let hub = Broadcast::builder()
        .history(3)
        .reset_event(Event::new().event("reload").data("state is gone"))
        .unwrap()
        .build();
    let e = epoch(&hub);
    let (conn, mut body) = client(8, Some("7"));
    assert_eq!(hub.subscribe(&conn).await, Resume::Reset);
    assert_eq!(
        ready(&mut body),
        format!("event: reload\ndata: state is gone\nid: {e}-0\n\n")
    );
}

#[test]
fn an_invalid_reset_event_is_refused() {
    let builder = Broadcast::builder().reset_event(Event::new().event("reload"));
    assert_eq!(builder.unwrap_err(), EncodeError::EventNameWithoutData);
}

#[tokio::test]
async fn a_replay_longer_than_the_buffer_leaves_room_for_live_events() {
    let hub = hub(100);
    let e = epoch(&hub);
    for i in 1..=20 {
        hub.send(i.to_string()).await.unwrap();
    }
    let (conn, mut body) = client(4, Some(&format!("{e}-1")));
    assert_eq!(hub.subscribe(&conn).await, Resume::Replayed(19));
    assert_eq!(reached(&hub, "live").await, Some(1));
    assert!(!conn.is_closed());
    let received = ready(&mut body);
    assert_eq!(received.matches("data: ").count(), 20);
    assert!(received.ends_with(&format!("data: live\nid: {e}-21\n\n")));
    assert_eq!(hub.stats().slow_disconnects, 0);
}

#[tokio::test]
async fn the_history_byte_budget_evicts_old_events() {
    // Each event "data: N\nid: <16 hex digits>-N\n\n" is 32 bytes.
    let hub = Broadcast::builder().history(100).history_bytes(64).build();
    let e = epoch(&hub);
    for text in ["1", "2", "3", "4"] {
        let sent = hub.send(text).await.unwrap();
        assert_eq!(
            format!("data: {text}\nid: {}\n\n", sent.id().unwrap()).len(),
            32
        );
    }
    let (old, _body) = client(8, Some(&format!("{e}-1")));
    assert_eq!(hub.subscribe(&old).await, Resume::Reset);
    let (recent, mut body) = client(8, Some(&format!("{e}-2")));
    assert_eq!(hub.subscribe(&recent).await, Resume::Replayed(2));
    assert_eq!(
        ready(&mut body),
        format!("data: 3\nid: {e}-3\n\ndata: 4\nid: {e}-4\n\n")
    );
}

#[tokio::test]
async fn a_stalled_subscriber_is_disconnected_while_a_thousand_others_get_every_event() {
    let hub = hub(100);
    let e = epoch(&hub);
    let (stalled, mut stalled_body) = client(4, None);
    assert_eq!(hub.subscribe(&stalled).await, Resume::Live);
    let mut others: Vec<_> = (0..1000).map(|_| client(16, None)).collect();
    for (conn, _) in &others {
        assert_eq!(hub.subscribe(conn).await, Resume::Live);
    }
    let mut expected = String::new();
    for i in 1..=10 {
        let reached = reached(&hub, i.to_string()).await;
        assert_eq!(reached, Some(if i <= 4 { 1001 } else { 1000 }));
        expected.push_str(&format!("data: {i}\nid: {e}-{i}\n\n"));
    }
    for (_, body) in &mut others {
        assert_eq!(ready(body), expected);
    }
    assert!(stalled.is_closed());
    // What was queued before the disconnect still goes out, then the stream ends.
    let queued: String = (1..=4)
        .map(|i| format!("data: {i}\nid: {e}-{i}\n\n"))
        .collect();
    assert_eq!(ready(&mut stalled_body), queued);
    assert!(stalled_body.is_end_stream());
    let stats = hub.stats();
    assert_eq!(stats.slow_disconnects, 1);
    assert_eq!(stats.subscribers, 1000);
    assert_eq!(stats.events_sent, 10);
    assert_eq!(stats.deliveries, 10_004);
}

#[tokio::test]
async fn with_skip_a_stalled_subscriber_misses_counted_events_and_stays() {
    let hub = Broadcast::builder()
        .history(100)
        .slow_client(SlowClient::Skip)
        .build();
    let e = epoch(&hub);
    let (stalled, mut stalled_body) = client(4, None);
    hub.subscribe(&stalled).await;
    let (other, mut other_body) = client(16, None);
    hub.subscribe(&other).await;
    for i in 1..=10 {
        hub.send(i.to_string()).await.unwrap();
    }
    assert!(!stalled.is_closed());
    assert_eq!(hub.stats().events_skipped, 6);
    assert_eq!(ready(&mut other_body).matches("data:").count(), 10);
    assert_eq!(ready(&mut stalled_body).matches("data:").count(), 4);
    hub.send("11").await.unwrap();
    assert_eq!(
        ready(&mut stalled_body),
        format!("data: 11\nid: {e}-11\n\n")
    );
}

#[tokio::test]
async fn send_encodes_once_for_ten_thousand_subscribers() {
    let hub = hub(10);
    let e = epoch(&hub);
    let mut clients: Vec<_> = (0..10_000).map(|_| client(4, None)).collect();
    for (conn, _) in &clients {
        hub.subscribe(conn).await;
    }
    assert_eq!(reached(&hub, "shared").await, Some(10_000));
    let expected = format!("data: shared\nid: {e}-1\n\n");
    let mut cx = Context::from_waker(Waker::noop());
    let mut pointers = HashSet::new();
    for (_, body) in &mut clients {
        let Poll::Ready(Some(Ok(frame))) = Pin::new(body).poll_frame(&mut cx) else {
            panic!("no frame queued");
        };
        let data = frame.into_data().expect("data frame");
        assert_eq!(&data[..], expected.as_bytes());
        pointers.insert(data.as_ptr());
    }
    assert_eq!(pointers.len(), 1, "every subscriber got the same bytes");
}

#[tokio::test]
async fn gone_subscribers_are_forgotten() {
    let hub = Broadcast::new();
    let (a, body_a) = client(4, None);
    let (b, _body_b) = client(4, None);
    hub.subscribe(&a).await;
    hub.subscribe(&b).await;
    drop(body_a);
    assert_eq!(reached(&hub, "x").await, Some(1));
    assert_eq!(hub.stats().subscribers, 1);
}

#[tokio::test]
async fn invalid_events_are_not_sent_and_take_no_id() {
    let hub = hub(10);
    let e = epoch(&hub);
    let (conn, mut body) = client(4, None);
    hub.subscribe(&conn).await;
    let error = hub.send(Event::new().event("x")).await.unwrap_err();
    assert!(
        matches!(error, SendError::Invalid(EncodeError::EventNameWithoutData)),
        "{error:?}"
    );
    assert!(!error.may_have_been_stored());
    let sent = hub.send("ok").await.unwrap();
    assert_eq!(sent.id(), Some(format!("{e}-1").as_str()));
    assert_eq!(ready(&mut body), format!("data: ok\nid: {e}-1\n\n"));
    let stats = hub.stats();
    assert_eq!((stats.events_sent, stats.send_errors), (1, 0));
    assert!(hub.recent(10).await.unwrap().len() == 1);
}

#[tokio::test]
async fn an_invalid_idempotent_send_is_not_remembered() {
    let hub = hub(10);
    let e = epoch(&hub);
    let (conn, mut body) = client(4, None);
    hub.subscribe(&conn).await;
    let error = hub
        .send_idempotent("k", Event::new().id("a\nb").data("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, SendError::Invalid(EncodeError::LineBreakInId)),
        "{error:?}"
    );
    let sent = hub.send_idempotent("k", "ok").await.unwrap();
    assert_eq!(sent.id(), Some(format!("{e}-1").as_str()));
    assert_eq!(sent.reached(), Some(1));
    assert_eq!(ready(&mut body), format!("data: ok\nid: {e}-1\n\n"));
}

#[test]
fn send_errors_say_whether_the_event_may_have_been_stored() {
    let invalid = SendError::from(EncodeError::NulInId);
    assert!(!invalid.may_have_been_stored());
    assert_eq!(
        invalid.to_string(),
        "invalid event: event id contains NUL, which browsers ignore"
    );
    let not_stored = SendError::NotStored(BackendError::new("down", None));
    assert!(!not_stored.may_have_been_stored());
    assert_eq!(not_stored.to_string(), "event not stored: down");
    let maybe = SendError::MaybeStored(BackendError::new("timed out", None));
    assert!(maybe.may_have_been_stored());
    assert_eq!(
        maybe.to_string(),
        "event may or may not have been stored: timed out"
    );
}

#[tokio::test]
async fn close_all_ends_every_stream_after_its_queue() {
    let hub = Broadcast::new();
    let (conn, mut body) = client(4, None);
    hub.subscribe(&conn).await;
    hub.send("bye").await.unwrap();
    hub.close_all();
    assert_eq!(ready(&mut body), "data: bye\n\n");
    assert!(body.is_end_stream());
    assert_eq!(hub.stats().subscribers, 0);
}

#[tokio::test]
async fn subscribing_a_connection_twice_is_a_no_op_that_says_so() {
    let hub = hub(10);
    let e = epoch(&hub);
    let (conn, mut body) = client(8, None);
    assert_eq!(hub.subscribe(&conn).await, Resume::Live);
    assert_eq!(
        hub.subscribe(&conn.clone()).await,
        Resume::AlreadySubscribed
    );
    assert_eq!(reached(&hub, "once").await, Some(1));
    assert_eq!(ready(&mut body), format!("data: once\nid: {e}-1\n\n"));
    // Another hub is another subscription.
    let other = self::hub(10);
    assert_eq!(other.subscribe(&conn).await, Resume::Live);
    assert_eq!(reached(&other, "two").await, Some(1));
}

#[tokio::test]
async fn an_ended_stream_is_not_subscribed() {
    let hub = hub(10);
    let (conn, body) = client(8, None);
    drop(body);
    assert_eq!(hub.subscribe(&conn).await, Resume::Ended);
    assert_eq!(hub.stats().subscribers, 0);
    assert_eq!(reached(&hub, "x").await, Some(0));
}

#[tokio::test]
async fn an_unusable_last_event_id_gets_the_reset_event_whatever_the_cursor() {
    let hub = hub(10);
    let e = epoch(&hub);
    hub.send("missed").await.unwrap();
    let (conn, mut body) = client_with(8, LastEventId::unusable());
    let cursor = format!("{e}-0");
    assert_eq!(
        hub.subscribe_from(&conn, Some(&cursor)).await,
        Resume::Reset
    );
    assert_eq!(
        ready(&mut body),
        format!("event: reset\ndata: \nid: {e}-1\n\n")
    );
    // Without a cursor too.
    let (conn, mut body) = client_with(8, LastEventId::unusable());
    assert_eq!(hub.subscribe(&conn).await, Resume::Reset);
    assert_eq!(
        ready(&mut body),
        format!("event: reset\ndata: \nid: {e}-1\n\n")
    );
    // Without a history there is nothing to resume: live events.
    let (conn, _body) = client_with(8, LastEventId::unusable());
    assert_eq!(Broadcast::new().subscribe(&conn).await, Resume::Live);
}

#[tokio::test]
async fn replays_share_the_history_bytes_instead_of_copying_them() {
    // Events larger than a body frame are handed over one by one, so the body's frames are
    // the queued bytes themselves.
    let hub = hub(10);
    let e = epoch(&hub);
    let big = "x".repeat(70 * 1024);
    for _ in 0..3 {
        hub.send(big.as_str()).await.unwrap();
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut seen: Vec<Vec<*const u8>> = Vec::new();
    let cursor = format!("{e}-0");
    let clients: Vec<_> = (0..200).map(|_| client(1, Some(&cursor))).collect();
    for (conn, _) in &clients {
        assert_eq!(hub.subscribe(conn).await, Resume::Replayed(3));
    }
    for (_, mut body) in clients {
        let mut pointers = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            pointers.push(frame.into_data().expect("data frame").as_ptr());
        }
        seen.push(pointers);
    }
    assert_eq!(seen[0].len(), 3);
    assert!(seen.iter().all(|pointers| *pointers == seen[0]));
}

#[tokio::test]
async fn a_connection_on_several_hubs_is_found_again_on_each() {
    let hubs: Vec<_> = (0..3).map(|_| Broadcast::new()).collect();
    let others: Vec<_> = (0..100).map(|_| client(4, None)).collect();
    let (conn, mut body) = client(4, None);
    for hub in &hubs {
        assert_eq!(hub.subscribe(&conn).await, Resume::Live);
        for (other, _) in &others {
            assert_eq!(hub.subscribe(other).await, Resume::Live);
        }
    }
    for hub in &hubs {
        assert_eq!(hub.subscribe(&conn).await, Resume::AlreadySubscribed);
        assert_eq!(reached(hub, "x").await, Some(101));
    }
    assert_eq!(ready(&mut body), "data: x\n\n".repeat(3));
}

#[tokio::test]
async fn stats_count_replays_and_resets() {
    let (hub, e) = hub_that_sent(10, &["1", "2"]).await;
    let (a, _a) = client(8, Some(&format!("{e}-0")));
    let (b, _b) = client(8, Some(&format!("{e}-2")));
    let (c, _c) = client(8, Some("someone-else"));
    let (d, _d) = client(8, None);
    assert_eq!(hub.subscribe(&a).await, Resume::Replayed(2));
    assert_eq!(hub.subscribe(&b).await, Resume::Replayed(0));
    assert_eq!(hub.subscribe(&c).await, Resume::Reset);
    assert_eq!(hub.subscribe(&d).await, Resume::Live);
    let stats = hub.stats();
    assert_eq!(stats.subscribers, 4);
    assert_eq!((stats.replays, stats.resets), (2, 1));
    assert_eq!((stats.events_sent, stats.deliveries), (2, 2));
    assert_eq!(stats.replays_from_backend, 0);
}

#[tokio::test]
async fn ready_is_always_ok_in_process() {
    assert!(hub(10).ready().await.is_ok());
    assert!(Broadcast::new().ready().await.is_ok());
}

#[tokio::test]
async fn forward_sends_each_item_in_order_until_the_stream_ends() {
    let hub = hub(10);
    let e = epoch(&hub);
    let (conn, mut body) = client(8, None);
    hub.subscribe(&conn).await;
    let items = tokio_stream::iter(["a", "b", "c"]);
    hub.forward(items).await.unwrap();
    assert_eq!(
        ready(&mut body),
        format!("data: a\nid: {e}-1\n\ndata: b\nid: {e}-2\n\ndata: c\nid: {e}-3\n\n")
    );
}

#[tokio::test]
async fn forward_stops_at_the_first_invalid_item() {
    let hub = hub(10);
    let e = epoch(&hub);
    let (conn, mut body) = client(8, None);
    hub.subscribe(&conn).await;
    let items = tokio_stream::iter([
        Event::new().data("a"),
        Event::new().event("x"),
        Event::new().data("never"),
    ]);
    let error = hub.forward(items).await.unwrap_err();
    assert!(
        matches!(error, SendError::Invalid(EncodeError::EventNameWithoutData)),
        "{error:?}"
    );
    assert_eq!(ready(&mut body), format!("data: a\nid: {e}-1\n\n"));
}

// Idempotent sends.

const TTL: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);

fn idempotent_hub() -> Broadcast {
    Broadcast::builder()
        .history(10)
        .idempotency_ttl(TTL)
        .build()
}

#[tokio::test(start_paused = true)]
async fn a_repeat_within_the_lifetime_returns_the_first_id_and_sends_nothing() {
    let hub = idempotent_hub();
    let e = epoch(&hub);
    let (conn, mut body) = client(8, None);
    hub.subscribe(&conn).await;
    let first = hub.send_idempotent("order-1", "paid").await.unwrap();
    assert_eq!(first.id(), Some(format!("{e}-1").as_str()));
    assert_eq!(first.reached(), Some(1));
    advance(TTL / 2).await;
    let repeat = hub.send_idempotent("order-1", "paid").await.unwrap();
    assert_eq!(repeat.id(), first.id());
    assert_eq!(repeat.reached(), Some(0));
    // A repeat sends nothing, whatever its event.
    let other = hub.send_idempotent("order-1", "other").await.unwrap();
    assert_eq!((other.id(), other.reached()), (first.id(), Some(0)));
    assert_eq!(ready(&mut body), format!("data: paid\nid: {e}-1\n\n"));
    // It took no number.
    let next = hub.send("next").await.unwrap();
    assert_eq!(next.id(), Some(format!("{e}-2").as_str()));
    assert_eq!(hub.stats().events_sent, 2);
    assert_eq!(hub.recent(10).await.unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_idempotency_lifetime_ends_exactly_at_the_ttl() {
    let hub = idempotent_hub();
    let e = epoch(&hub);
    let (conn, mut body) = client(8, None);
    hub.subscribe(&conn).await;
    let first = hub.send_idempotent("k", "x").await.unwrap();
    assert_eq!(first.id(), Some(format!("{e}-1").as_str()));
    advance(TTL - MS).await;
    let repeat = hub.send_idempotent("k", "x").await.unwrap();
    assert_eq!((repeat.id(), repeat.reached()), (first.id(), Some(0)));
    advance(MS).await;
    let again = hub.send_idempotent("k", "x").await.unwrap();
    assert_eq!(again.id(), Some(format!("{e}-2").as_str()));
    assert_eq!(again.reached(), Some(1));
    // The new send starts a new lifetime, counted from it.
    advance(TTL - MS).await;
    let repeat = hub.send_idempotent("k", "x").await.unwrap();
    assert_eq!((repeat.id(), repeat.reached()), (again.id(), Some(0)));
    advance(MS).await;
    let third = hub.send_idempotent("k", "x").await.unwrap();
    assert_eq!(third.id(), Some(format!("{e}-3").as_str()));
    assert_eq!(
        ready(&mut body),
        format!("data: x\nid: {e}-1\n\ndata: x\nid: {e}-2\n\ndata: x\nid: {e}-3\n\n")
    );
}

#[tokio::test(start_paused = true)]
async fn a_repeat_just_after_the_lifetime_is_sent_again() {
    let hub = idempotent_hub();
    let e = epoch(&hub);
    hub.send_idempotent("k", "x").await.unwrap();
    advance(TTL + MS).await;
    let again = hub.send_idempotent("k", "x").await.unwrap();
    assert_eq!(again.id(), Some(format!("{e}-2").as_str()));
}

#[tokio::test(start_paused = true)]
async fn the_default_idempotency_lifetime_is_an_hour() {
    let hub = hub(10);
    let e = epoch(&hub);
    let hour = Duration::from_secs(3600);
    hub.send_idempotent("k", "x").await.unwrap();
    advance(hour - MS).await;
    let repeat = hub.send_idempotent("k", "x").await.unwrap();
    assert_eq!(repeat.id(), Some(format!("{e}-1").as_str()));
    advance(MS).await;
    let again = hub.send_idempotent("k", "x").await.unwrap();
    assert_eq!(again.id(), Some(format!("{e}-2").as_str()));
}

#[tokio::test(start_paused = true)]
async fn different_idempotency_keys_send_separately() {
    let hub = idempotent_hub();
    let e = epoch(&hub);
    let (conn, mut body) = client(8, None);
    hub.subscribe(&conn).await;
    let a = hub.send_idempotent("a", "x").await.unwrap();
    let b = hub.send_idempotent("b", "x").await.unwrap();
    let plain = hub.send("x").await.unwrap();
    assert_eq!(a.id(), Some(format!("{e}-1").as_str()));
    assert_eq!(b.id(), Some(format!("{e}-2").as_str()));
    assert_eq!(plain.id(), Some(format!("{e}-3").as_str()));
    // A plain send is never a repeat.
    let plain = hub.send("x").await.unwrap();
    assert_eq!(plain.id(), Some(format!("{e}-4").as_str()));
    assert_eq!(ready(&mut body).matches("data: x\n").count(), 4);
}

#[tokio::test(start_paused = true)]
async fn many_idempotency_keys_are_remembered_for_their_whole_lifetime() {
    // Enough keys for the table to be pruned several times: only expired keys are forgotten.
    let hub = idempotent_hub();
    let e = epoch(&hub);
    let mut ids = Vec::new();
    for i in 0..300 {
        let sent = hub.send_idempotent(&format!("k{i}"), "x").await.unwrap();
        ids.push(sent.id().unwrap().to_owned());
        advance(MS).await;
    }
    advance(TTL - Duration::from_millis(301)).await;
    // Every key is still within its lifetime: the first expires in 1 ms.
    for (i, id) in ids.iter().enumerate() {
        let repeat = hub.send_idempotent(&format!("k{i}"), "x").await.unwrap();
        assert_eq!(repeat.id(), Some(id.as_str()), "k{i}");
        assert_eq!(repeat.reached(), Some(0));
    }
    assert_eq!(hub.topic().position().unwrap().1, 300);
    advance(MS).await;
    let again = hub.send_idempotent("k0", "x").await.unwrap();
    assert_eq!(again.id(), Some(format!("{e}-301").as_str()));
    let repeat = hub.send_idempotent("k1", "x").await.unwrap();
    assert_eq!(repeat.id(), Some(ids[1].as_str()));
}

#[tokio::test]
async fn an_idempotent_repeat_without_history_returns_the_first_sends_id() {
    let hub = Broadcast::new();
    let (conn, mut body) = client(8, None);
    hub.subscribe(&conn).await;
    let first = hub.send_idempotent("k", "x").await.unwrap();
    assert_eq!((first.id(), first.reached()), (None, Some(1)));
    let repeat = hub.send_idempotent("k", "x").await.unwrap();
    assert_eq!((repeat.id(), repeat.reached()), (None, Some(0)));
    let own = hub
        .send_idempotent("o", Event::new().id("7").data("y"))
        .await
        .unwrap();
    assert_eq!((own.id(), own.reached()), (Some("7"), Some(1)));
    let repeat = hub
        .send_idempotent("o", Event::new().id("8").data("y"))
        .await
        .unwrap();
    assert_eq!((repeat.id(), repeat.reached()), (Some("7"), Some(0)));
    assert_eq!(ready(&mut body), "data: x\n\nid: 7\ndata: y\n\n");
}

// recent

#[tokio::test]
async fn recent_returns_the_latest_entries_oldest_first() {
    let hub = hub(3);
    let e = epoch(&hub);
    hub.send("dropped").await.unwrap();
    hub.send(Event::new().event("note").data("one\ntwo"))
        .await
        .unwrap();
    hub.send(Event::new().id("mine").data("").comment("c: d"))
        .await
        .unwrap();
    hub.send(Event::new().data("a: b").data("").data("c"))
        .await
        .unwrap();
    let all = hub.recent(10).await.unwrap();
    let seen: Vec<_> = all
        .iter()
        .map(|entry| (entry.id().to_owned(), entry.event(), entry.data()))
        .collect();
    assert_eq!(
        seen,
        [
            (format!("{e}-2"), Some("note"), "one\ntwo"),
            (format!("{e}-3"), None, ""),
            (format!("{e}-4"), None, "a: b\n\nc"),
        ]
    );
    let two = hub.recent(2).await.unwrap();
    assert_eq!(two, all[1..]);
    let one = hub.recent(1).await.unwrap();
    assert_eq!(one, all[2..]);
    assert!(hub.recent(0).await.unwrap().is_empty());
}

#[tokio::test]
async fn recent_ids_resume_exactly() {
    let (hub, e) = hub_that_sent(10, &["1", "2", "3"]).await;
    let recent = hub.recent(2).await.unwrap();
    let (conn, mut body) = client(8, None);
    assert_eq!(
        hub.subscribe_from(&conn, Some(recent[1].id())).await,
        Resume::Replayed(0)
    );
    hub.send("4").await.unwrap();
    let (conn, mut earlier) = client(8, None);
    assert_eq!(
        hub.subscribe_from(&conn, Some(recent[0].id())).await,
        Resume::Replayed(2)
    );
    assert_eq!(ready(&mut body), format!("data: 4\nid: {e}-4\n\n"));
    assert_eq!(
        ready(&mut earlier),
        format!("data: 3\nid: {e}-3\n\ndata: 4\nid: {e}-4\n\n")
    );
}

#[tokio::test]
async fn recent_is_empty_without_history() {
    let hub = Broadcast::new();
    hub.send("a").await.unwrap();
    hub.send(Event::new().id("1").data("b")).await.unwrap();
    assert!(hub.recent(10).await.unwrap().is_empty());
    assert!(self::hub(10).recent(10).await.unwrap().is_empty());
}

#[test]
fn a_history_entry_reads_back_an_encoded_event() {
    let frame = Event::new()
        .comment("note: ignored")
        .event("tick")
        .id("own")
        .retry(Duration::from_secs(1))
        .data("x\r\ny")
        .id("abc-9")
        .finish();
    let entry = HistoryEntry::parse(&frame);
    assert_eq!(entry.id(), "abc-9");
    assert_eq!(entry.event(), Some("tick"));
    assert_eq!(entry.data(), "x\ny");
}
