//! The wire encoder: [`Event`] and [`EncodeError`].
//!
//! This file knows nothing of HTTP: it turns fields into the exact bytes of one event.

use bytes::{BufMut, Bytes, BytesMut};
use std::{fmt, time::Duration};

/// One Server-Sent Event, built field by field and encoded once into its exact wire bytes.
///
/// Fields are written in the order the builder methods are called. Every value is written
/// after `name: ` (a colon and one space), so a value that starts with a space keeps it.
/// Calling [`event`](Event::event), [`id`](Event::id) or [`retry`](Event::retry) twice writes
/// the field twice; a client keeps the last one.
///
/// The builder never panics. A value the wire cannot carry (an id or event name with a line
/// break, an id with NUL, an event name without any data) is remembered and reported by
/// [`encode`](Event::encode), or by [`Connection::push`](crate::Connection::push), which then
/// sends nothing.
///
/// ```
/// use std::time::Duration;
/// use tower_eventsource::Event;
///
/// let bytes = Event::new()
///     .event("tick")
///     .id("2")
///     .retry(Duration::from_secs(3))
///     .data("line one\nline two")
///     .encode()
///     .unwrap();
/// assert_eq!(
///     &bytes[..],
///     b"event: tick\nid: 2\nretry: 3000\ndata: line one\ndata: line two\n\n"
/// );
///
/// // A string, or an array of strings (one data line each), is a data-only event.
/// let bytes = Event::from(["foo", "bar", "baz"]).encode().unwrap();
/// assert_eq!(&bytes[..], b"data: foo\ndata: bar\ndata: baz\n\n");
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct Event {
    buf: BytesMut,
    has_data: bool,
    has_event: bool,
    /// Where the value of the last `id:` field lies in `buf`.
    id_at: Option<(usize, usize)>,
    error: Option<EncodeError>,
}

impl Event {
    /// An empty event. Encoded as it is, it is a lone blank line, which fires nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `data` as one or more `data:` lines.
    ///
    /// The text is split at every CRLF, lone CR and lone LF, keeping empty segments, so the
    /// browser's `event.data` is the text with its line breaks read back as LF. Each call adds
    /// lines to the same event: `.data("a").data("b")` arrives as `"a\nb"`. An empty string is
    /// one empty `data:` line, which fires an event whose data is `""`.
    pub fn data(mut self, data: impl AsRef<str>) -> Self {
        self.has_data = true;
        put_lines(&mut self.buf, b"data: ", data.as_ref());
        self
    }

    /// Sets the event type (`event:`), the name a page listens to with `addEventListener`.
    ///
    /// Without it the browser fires a `message` event. A name with CR or LF is an error, and so
    /// is a name on an event without any data line: browsers would never fire it.
    pub fn event(mut self, name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        if has_line_break(name.as_bytes()) {
            self.fail(EncodeError::LineBreakInEventName);
        } else {
            self.has_event = true;
            put_field(&mut self.buf, b"event: ", name);
        }
        self
    }

    /// Sets the event id (`id:`), which the browser sends back as `Last-Event-ID` when it
    /// reconnects. An empty id resets the browser's last event id.
    ///
    /// An id with CR, LF or NUL is an error (a browser would split the field, or ignore it).
    /// Leading and trailing spaces are kept, but HTTP strips them from the `Last-Event-ID`
    /// header that carries the id back, so avoid them in ids you resume from.
    pub fn id(mut self, id: impl AsRef<str>) -> Self {
        let id = id.as_ref();
        if has_line_break(id.as_bytes()) {
            self.fail(EncodeError::LineBreakInId);
        } else if id.as_bytes().contains(&0) {
            self.fail(EncodeError::NulInId);
        } else {
            let start = self.buf.len() + 4;
            self.id_at = Some((start, start + id.len()));
            put_field(&mut self.buf, b"id: ", id);
        }
        self
    }

    /// Sets the browser's reconnection time (`retry:`), written in whole milliseconds.
    pub fn retry(mut self, duration: Duration) -> Self {
        use std::fmt::Write as _;
        self.buf.extend_from_slice(b"retry: ");
        // Writing to a `BytesMut` cannot fail.
        let _ = write!(self.buf, "{}", duration.as_millis());
        self.buf.put_u8(b'\n');
        self
    }

    /// Adds a comment, which the browser ignores. Text with line breaks becomes several comment
    /// lines.
    pub fn comment(mut self, text: impl AsRef<str>) -> Self {
        put_lines(&mut self.buf, b": ", text.as_ref());
        self
    }

    /// Adds `value` serialised as JSON as data: one `data:` line, or several if the JSON holds
    /// raw line breaks (as a `serde_json::value::RawValue` may), which JSON parsers read back the
    /// same.
    ///
    /// # Errors
    ///
    /// Fails when `value` cannot be serialised (for example a map with non-string keys).
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    pub fn json_data<T>(self, value: &T) -> Result<Self, serde_json::Error>
    where
        T: serde::Serialize + ?Sized,
    {
        // Compact output escapes line breaks in strings, but a `RawValue` passes through as it
        // is: split it like any data, which JSON parsers read back the same.
        let json = serde_json::to_string(value)?;
        Ok(self.data(json))
    }

    /// The value of the last id set with [`Event::id`].
    pub(crate) fn last_id(&self) -> Option<&str> {
        let (start, end) = self.id_at?;
        std::str::from_utf8(&self.buf[start..end]).ok()
    }

    /// Encodes the event: its exact wire bytes, ending with the blank line that dispatches it.
    ///
    /// # Errors
    ///
    /// Returns the first invalid value given to the builder; see [`EncodeError`].
    pub fn encode(self) -> Result<Bytes, EncodeError> {
        self.validate()?;
        Ok(self.finish())
    }

    /// Checks the event without encoding it.
    pub(crate) fn validate(&self) -> Result<(), EncodeError> {
        match self.error {
            Some(error) => Err(error),
            None if self.has_event && !self.has_data => Err(EncodeError::EventNameWithoutData),
            None => Ok(()),
        }
    }

    /// Encodes an event that [`validate`](Self::validate) accepted.
    pub(crate) fn finish(mut self) -> Bytes {
        self.buf.put_u8(b'\n');
        self.buf.freeze()
    }

    fn fail(&mut self, error: EncodeError) {
        self.error.get_or_insert(error);
    }
}

impl From<&str> for Event {
    /// A data-only event.
    fn from(data: &str) -> Self {
        Event::new().data(data)
    }
}

impl From<&String> for Event {
    /// A data-only event.
    fn from(data: &String) -> Self {
        Event::new().data(data)
    }
}

impl From<String> for Event {
    /// A data-only event.
    fn from(data: String) -> Self {
        Event::new().data(data)
    }
}

impl<S: AsRef<str>, const N: usize> From<[S; N]> for Event {
    /// One data-only event with one data line per string.
    fn from(lines: [S; N]) -> Self {
        lines.iter().fold(Event::new(), Event::data)
    }
}

impl<S: AsRef<str>> From<&[S]> for Event {
    /// One data-only event with one data line per string.
    fn from(lines: &[S]) -> Self {
        lines.iter().fold(Event::new(), Event::data)
    }
}

impl<S: AsRef<str>> From<Vec<S>> for Event {
    /// One data-only event with one data line per string.
    fn from(lines: Vec<S>) -> Self {
        lines.iter().fold(Event::new(), Event::data)
    }
}

/// Why an [`Event`] cannot be encoded. Nothing is sent for such an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The id contains CR or LF, which would end the field early.
    LineBreakInId,
    /// The id contains NUL; browsers ignore such an id.
    NulInId,
    /// The event name contains CR or LF, which would end the field early.
    LineBreakInEventName,
    /// The event has a name but no data line; browsers never fire such an event.
    EventNameWithoutData,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodeError::LineBreakInId => "event id contains a line break (CR or LF)",
            EncodeError::NulInId => "event id contains NUL, which browsers ignore",
            EncodeError::LineBreakInEventName => "event name contains a line break (CR or LF)",
            EncodeError::EventNameWithoutData => {
                "event has a name but no data line, so browsers would never fire it"
            }
        })
    }
}

impl std::error::Error for EncodeError {}

/// The longest `Last-Event-ID` value, in bytes, that a stream accepts.
pub(crate) const MAX_ID_LEN: usize = 1024;

/// Writes `prefix value LF`, for a value already known to hold no line break.
fn put_field(buf: &mut BytesMut, prefix: &[u8], value: &str) {
    buf.reserve(prefix.len() + value.len() + 2);
    buf.extend_from_slice(prefix);
    buf.extend_from_slice(value.as_bytes());
    buf.put_u8(b'\n');
}

/// Writes one `prefix segment LF` line per segment of `text`, split at CRLF, CR and LF.
fn put_lines(buf: &mut BytesMut, prefix: &[u8], text: &str) {
    let mut rest = text.as_bytes();
    // One byte more for the blank line that ends the event: a data-only event without line
    // breaks is then exactly one allocation, which `freeze` keeps as it is.
    buf.reserve(prefix.len() + rest.len() + 2);
    loop {
        match find_line_break(rest) {
            None => {
                buf.extend_from_slice(prefix);
                buf.extend_from_slice(rest);
                buf.put_u8(b'\n');
                return;
            }
            Some(at) => {
                buf.extend_from_slice(prefix);
                buf.extend_from_slice(&rest[..at]);
                buf.put_u8(b'\n');
                let crlf = rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n');
                rest = &rest[at + 1 + usize::from(crlf)..];
            }
        }
    }
}

fn has_line_break(bytes: &[u8]) -> bool {
    find_line_break(bytes).is_some()
}

/// The index of the first CR or LF.
///
/// Scans 16-byte blocks without an early exit inside a block, which the compiler turns into
/// vector instructions, so text without line breaks (the common case) is checked quickly.
fn find_line_break(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 16;
    let is_break = |b: &u8| *b == b'\n' || *b == b'\r';
    let mut chunks = bytes.chunks_exact(BLOCK);
    let mut offset = 0;
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |found, b| found | is_break(b)) {
            return chunk.iter().position(is_break).map(|i| offset + i);
        }
        offset += BLOCK;
    }
    chunks
        .remainder()
        .iter()
        .position(is_break)
        .map(|i| offset + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(event: Event) -> String {
        String::from_utf8(event.encode().expect("valid event").to_vec()).expect("utf-8")
    }

    #[test]
    fn data_only_event() {
        assert_eq!(wire(Event::from("foo")), "data: foo\n\n");
        assert_eq!(wire(Event::from(String::from("foo"))), "data: foo\n\n");
    }

    #[test]
    fn several_strings_are_one_event_with_several_data_lines() {
        let want = "data: foo\ndata: bar\ndata: baz\n\n";
        assert_eq!(wire(Event::from(["foo", "bar", "baz"])), want);
        assert_eq!(wire(Event::from(vec!["foo", "bar", "baz"])), want);
        assert_eq!(wire(Event::from(&["foo", "bar", "baz"][..])), want);
        assert_eq!(wire(Event::new().data("foo").data("bar").data("baz")), want);
    }

    #[test]
    fn values_are_written_after_a_colon_and_one_space() {
        assert_eq!(wire(Event::from(" lead")), "data:  lead\n\n");
        assert_eq!(wire(Event::new().id(" 7").data("x")), "id:  7\ndata: x\n\n");
        assert_eq!(
            wire(Event::new().event(" x").data("y")),
            "event:  x\ndata: y\n\n"
        );
    }

    #[test]
    fn data_splits_at_crlf_lone_cr_and_lone_lf_keeping_empty_segments() {
        assert_eq!(wire(Event::from("a\nb")), "data: a\ndata: b\n\n");
        assert_eq!(wire(Event::from("a\rb")), "data: a\ndata: b\n\n");
        assert_eq!(wire(Event::from("a\r\nb")), "data: a\ndata: b\n\n");
        assert_eq!(wire(Event::from("a\n\nb")), "data: a\ndata: \ndata: b\n\n");
        assert_eq!(wire(Event::from("a\r\rb")), "data: a\ndata: \ndata: b\n\n");
        assert_eq!(wire(Event::from("a\n\rb")), "data: a\ndata: \ndata: b\n\n");
        assert_eq!(wire(Event::from("a\n")), "data: a\ndata: \n\n");
        assert_eq!(wire(Event::from("\n")), "data: \ndata: \n\n");
        assert_eq!(wire(Event::from("")), "data: \n\n");
    }

    #[test]
    fn only_cr_and_lf_end_a_line() {
        let text = "a\u{2028}b\u{85}c\u{b}d\u{c}e";
        assert_eq!(wire(Event::from(text)), format!("data: {text}\n\n"));
    }

    #[test]
    fn long_data_finds_line_breaks_past_the_first_block() {
        let long = format!("{}\r\n{}", "x".repeat(40), "y".repeat(3));
        assert_eq!(
            wire(Event::from(long)),
            format!("data: {}\ndata: yyy\n\n", "x".repeat(40))
        );
    }

    #[test]
    fn all_fields_in_call_order() {
        let event = Event::new()
            .comment("hi")
            .event("tick")
            .id("2")
            .retry(Duration::from_secs(3))
            .data("x");
        assert_eq!(
            wire(event),
            ": hi\nevent: tick\nid: 2\nretry: 3000\ndata: x\n\n"
        );
    }

    #[test]
    fn retry_is_whole_milliseconds_in_ascii_digits() {
        assert_eq!(
            wire(Event::new().retry(Duration::from_micros(1500))),
            "retry: 1\n\n"
        );
        assert_eq!(wire(Event::new().retry(Duration::ZERO)), "retry: 0\n\n");
    }

    #[test]
    fn comments_with_line_breaks_are_several_comment_lines() {
        assert_eq!(wire(Event::new().comment("a\r\nb\rc")), ": a\n: b\n: c\n\n");
    }

    #[test]
    fn empty_id_is_allowed_and_resets_the_last_event_id() {
        assert_eq!(wire(Event::new().id("")), "id: \n\n");
    }

    #[test]
    fn id_without_data_is_allowed() {
        assert_eq!(wire(Event::new().id("5")), "id: 5\n\n");
    }

    #[test]
    fn invalid_values_are_errors_not_panics() {
        let cases = [
            (
                Event::new().id("a\nb").data("x"),
                EncodeError::LineBreakInId,
            ),
            (
                Event::new().id("a\rb").data("x"),
                EncodeError::LineBreakInId,
            ),
            (Event::new().id("a\0b").data("x"), EncodeError::NulInId),
            (
                Event::new().event("a\nb").data("x"),
                EncodeError::LineBreakInEventName,
            ),
            (
                Event::new().event("tick"),
                EncodeError::EventNameWithoutData,
            ),
            (
                Event::new().event("tick").id("1"),
                EncodeError::EventNameWithoutData,
            ),
        ];
        for (event, error) in cases {
            assert_eq!(event.encode().unwrap_err(), error);
        }
    }

    #[test]
    fn first_error_is_reported() {
        let event = Event::new().id("\0").event("\n").data("x");
        assert_eq!(event.encode().unwrap_err(), EncodeError::NulInId);
    }

    #[test]
    fn errors_say_what_went_wrong() {
        assert_eq!(
            EncodeError::EventNameWithoutData.to_string(),
            "event has a name but no data line, so browsers would never fire it"
        );
    }

    #[test]
    fn empty_event_is_a_blank_line() {
        assert_eq!(wire(Event::new()), "\n");
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_data_is_one_line() {
        let event = Event::new()
            .json_data(&serde_json::json!({"text": "a\nb"}))
            .expect("serialisable");
        assert_eq!(wire(event), "data: {\"text\":\"a\\nb\"}\n\n");
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_errors_are_returned() {
        let mut map = std::collections::HashMap::new();
        map.insert(vec![1u8], 1);
        assert!(Event::new().json_data(&map).is_err());
    }
}
