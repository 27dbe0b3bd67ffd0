//! Property tests: every encoded `Event` reads back exactly through `eventsource-stream`, a parser
//! we did not write, and invalid ids and event names are errors, never panics.
//! Run with `cargo test --test encoder_props`.

use eventsource_stream::Eventsource;
use futures_util::{stream, FutureExt, StreamExt};
use proptest::prelude::*;
use std::{convert::Infallible, time::Duration};
use tower_eventsource::{EncodeError, Event};

/// One piece of generated text, weighted towards the characters the wire format cares about.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => any::<char>().prop_map(String::from),
        2 => "[a-z ]{1,8}",
        1 => Just("\r".to_owned()),
        1 => Just("\n".to_owned()),
        1 => Just("\r\n".to_owned()),
        1 => Just("\n\r".to_owned()),
        1 => Just("\0".to_owned()),
        1 => Just(" ".to_owned()),
        1 => Just(":".to_owned()),
        1 => Just(": ".to_owned()),
        1 => Just("é漢🦀".to_owned()),
        // Characters that other line-splitting APIs treat as breaks, but SSE does not.
        1 => Just("\u{2028}\u{85}\u{b}\u{c}".to_owned()),
        1 => Just("\u{feff}".to_owned()),
    ]
}

/// Arbitrary text, including CR, LF, CRLF, NUL and non-ASCII characters.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..24).prop_map(|pieces| pieces.concat())
}

/// Text without CR or LF: a valid event name.
fn single_line() -> impl Strategy<Value = String> {
    text().prop_map(|s| s.replace(['\r', '\n'], ""))
}

/// Text without CR, LF or NUL: a valid id.
fn valid_id() -> impl Strategy<Value = String> {
    text().prop_map(|s| s.replace(['\r', '\n', '\0'], ""))
}

/// A line break of any of the three kinds.
fn line_break() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\r"), Just("\n"), Just("\r\n")]
}

/// One builder call.
#[derive(Clone, Debug)]
enum Field {
    Data(String),
    Event(String),
    Id(String),
    Retry(u64),
}

impl Field {
    fn apply(self, event: Event) -> Event {
        match self {
            Field::Data(data) => event.data(data),
            Field::Event(name) => event.event(name),
            Field::Id(id) => event.id(id),
            Field::Retry(ms) => event.retry(Duration::from_millis(ms)),
        }
    }
}

/// The builder calls of one valid event, in any order: one to three data parts, and an
/// optional event name, id and retry.
fn valid_fields() -> impl Strategy<Value = Vec<Field>> {
    (
        prop::collection::vec(text(), 1..4),
        prop::option::of(single_line()),
        prop::option::of(valid_id()),
        prop::option::of(any::<u64>()),
    )
        .prop_flat_map(|(data, name, id, retry)| {
            let mut fields: Vec<Field> = data.into_iter().map(Field::Data).collect();
            fields.extend(name.map(Field::Event));
            fields.extend(id.map(Field::Id));
            fields.extend(retry.map(Field::Retry));
            Just(fields).prop_shuffle()
        })
}

fn build(fields: &[Field]) -> Event {
    fields
        .iter()
        .cloned()
        .fold(Event::new(), |event, field| field.apply(event))
}

/// What a spec-following client reads for the event, given the id it had before.
fn expected(fields: &[Field], last_id: &str) -> eventsource_stream::Event {
    let mut data = Vec::new();
    let mut event = String::new();
    let mut id = last_id.to_owned();
    let mut retry = None;
    for field in fields {
        match field {
            // CRLF and lone CR are read back as LF.
            Field::Data(d) => data.push(d.replace("\r\n", "\n").replace('\r', "\n")),
            Field::Event(name) => event.clone_from(name),
            Field::Id(i) => id.clone_from(i),
            Field::Retry(ms) => retry = Some(Duration::from_millis(*ms)),
        }
    }
    if event.is_empty() {
        event = "message".to_owned();
    }
    eventsource_stream::Event {
        event,
        data: data.join("\n"),
        id,
        retry,
    }
}

/// Parses a whole body with `eventsource-stream`.
fn parse(bytes: Vec<u8>) -> Vec<eventsource_stream::Event> {
    stream::iter([Ok::<_, Infallible>(bytes)])
        .eventsource()
        .map(|event| event.expect("eventsource-stream parses the output"))
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("an in-memory stream is ready at once")
}

proptest! {
    #[test]
    fn one_event_reads_back_exactly(fields in valid_fields()) {
        let bytes = build(&fields).encode().expect("valid fields encode");
        prop_assert!(bytes.ends_with(b"\n\n"));
        // LF is the only line terminator emitted: every CR in the input became a line break.
        prop_assert!(!bytes.contains(&b'\r'));
        let parsed = parse(bytes.to_vec());
        prop_assert_eq!(parsed, vec![expected(&fields, "")]);
    }

    #[test]
    fn several_events_read_back_in_order(events in prop::collection::vec(valid_fields(), 1..6)) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        let mut last_id = String::new();
        for fields in &events {
            wire.extend_from_slice(&build(fields).encode().expect("valid fields encode"));
            // The last event id persists across events, as in a browser.
            let event = expected(fields, &last_id);
            last_id.clone_from(&event.id);
            want.push(event);
        }
        prop_assert_eq!(parse(wire), want);
    }

    #[test]
    fn id_with_a_line_break_is_an_error(
        before in text(),
        line_break in line_break(),
        after in text(),
        fields in valid_fields(),
        more_data_after in any::<bool>(),
    ) {
        let id = format!("{before}{line_break}{after}");
        let mut event = build(&fields).id(id);
        if more_data_after {
            // A later valid call does not clear the error.
            event = event.data("more");
        }
        prop_assert_eq!(event.encode().unwrap_err(), EncodeError::LineBreakInId);
    }

    #[test]
    fn id_with_nul_is_an_error(before in valid_id(), after in valid_id(), fields in valid_fields()) {
        let event = build(&fields).id(format!("{before}\0{after}"));
        prop_assert_eq!(event.encode().unwrap_err(), EncodeError::NulInId);
    }

    #[test]
    fn event_name_with_a_line_break_is_an_error(
        before in text(),
        line_break in line_break(),
        after in text(),
        fields in valid_fields(),
    ) {
        let event = build(&fields).event(format!("{before}{line_break}{after}")).data("x");
        prop_assert_eq!(event.encode().unwrap_err(), EncodeError::LineBreakInEventName);
    }
}

#[test]
fn the_properties_cover_the_awkward_cases() {
    // Fixed cases the generators may not hit every run, read back the same way.
    let cases: &[(&str, &str)] = &[
        ("", ""),
        ("\n", "\n"),
        ("\r", "\n"),
        ("\r\n", "\n"),
        ("a\r\rb", "a\n\nb"),
        ("a\n\rb", "a\n\nb"),
        (" lead", " lead"),
        ("nul\0inside", "nul\0inside"),
        ("\u{2028}\u{85}", "\u{2028}\u{85}"),
    ];
    for (data, want) in cases {
        let parsed = parse(Event::from(*data).encode().unwrap().to_vec());
        assert_eq!(parsed.len(), 1, "{data:?}");
        assert_eq!(parsed[0].data, *want, "{data:?}");
        assert_eq!(parsed[0].event, "message");
    }
}
