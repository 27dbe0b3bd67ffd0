use super::*;
use crate::testing::{client, ready};

fn hub(history: usize) -> Broadcast {
    Broadcast::builder().history(history).build()
}

/// The hub's epoch: ids are `<epoch>-<number>`.
fn epoch(hub: &Broadcast) -> String {
    hub.topic().position().expect("an in-process hub knows its epoch").0.to_string()
}

#[tokio::test]
async fn events_get_numbered_ids_and_replay_exactly() {
    let hub = hub(10);
    let e = epoch(&hub);
    for text in ["1", "2", "3"] {
        hub.send(text).await.unwrap();
    }
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
    let hub = hub(10);
    let e = epoch(&hub);
    let (conn, mut body) = client(8, Some("forged"));
    assert_eq!(hub.subscribe(&conn).await, Resume::Reset);
    assert_eq!(ready(&mut body), format!("event: reset\ndata: \nid: {e}-0\n\n"));
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
