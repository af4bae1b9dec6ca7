//! Output formats behind one seam, [`Sink`]: the seed's key="value" lines, JSON lines, and a
//! readable view for a terminal. Every value is escaped so no URL or User-Agent can add a field
//! or a line.
use std::io::{self, Write};

use std::{fmt::Write as _, sync::OnceLock};

use chrono::{DateTime, FixedOffset, Local};

use crate::event::{Event, EventKind, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Readable by a person: one short line per event, colored on a terminal.
    Pretty,
    /// The seed's log line: a timestamp, then Key="value", ...
    Kv,
    /// One JSON object per line, with the same keys.
    Json,
}

/// Where events go. Every output format is one implementation.
pub trait Sink {
    fn write_event(&mut self, event: &Event) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

pub struct WriterSink<W: Write> {
    writer: W,
    format: Format,
    color: bool,
    line: String,
}

impl<W: Write> WriterSink<W> {
    pub fn new(writer: W, format: Format, color: bool) -> Self {
        WriterSink {
            writer,
            format,
            color,
            line: String::with_capacity(1024),
        }
    }
}

impl<W: Write> Sink for WriterSink<W> {
    fn write_event(&mut self, event: &Event) -> io::Result<()> {
        self.line.clear();
        match self.format {
            Format::Kv => kv_line(event, &mut self.line),
            Format::Json => json_line(event, &mut self.line),
            Format::Pretty => pretty_line(event, self.color, &mut self.line),
        }
        self.line.push('\n');
        self.writer.write_all(self.line.as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// The local UTC offset, read once: asking the time zone for every event costs more than the
/// rest of the line (a long-running observer restarts to follow a changed zone).
fn local_offset() -> FixedOffset {
    static OFFSET: OnceLock<FixedOffset> = OnceLock::new();
    *OFFSET.get_or_init(|| *Local::now().offset())
}

/// The seed's timestamp: local time with milliseconds and the UTC offset.
pub fn timestamp(unix_nanos: i128) -> String {
    let mut out = String::with_capacity(32);
    write_timestamp(unix_nanos, &mut out);
    out
}

/// Appends the seed's timestamp to `out`. The parts but the milliseconds are formatted once per
/// second (events come thousands per second).
pub fn write_timestamp(unix_nanos: i128, out: &mut String) {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new(), String::new())) };
    }
    let seconds = unix_nanos.div_euclid(1_000_000_000) as i64;
    let millis = (unix_nanos.rem_euclid(1_000_000_000) / 1_000_000) as u16;
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != seconds {
            let time = DateTime::from_timestamp(seconds, 0)
                .unwrap_or_default()
                .with_timezone(&local_offset());
            last.1 = time.format("%Y-%m-%dT%H:%M:%S").to_string();
            last.2 = time.format("%z").to_string();
            last.0 = seconds;
        }
        out.push_str(&last.1);
        out.push('.');
        push_padded(millis, out);
        out.push_str(&last.2);
    })
}

/// Three digits, zero-padded (milliseconds).
fn push_padded(value: u16, out: &mut String) {
    let value = value % 1000;
    for digit in [value / 100, value / 10 % 10, value % 10] {
        out.push(char::from(b'0' + digit as u8));
    }
}

/// Escapes a value for the inside of double quotes: quotes, backslashes and every control
/// character (C0, DEL and C1), so a value can never end its field or its line. Runs of
/// ordinary characters are copied whole; the scan is over bytes, since every byte to escape
/// but the C1 controls is ASCII.
pub fn escape_quoted(value: &str, out: &mut String) {
    let bytes = value.as_bytes();
    // Nearly every value is printable ASCII: one branch-free pass (it vectorizes) says so.
    let plain = bytes.iter().fold(true, |plain, &b| {
        plain & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.push_str(value);
        return;
    }
    let mut start = 0;
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let (escaped, width) = match byte {
            b'"' => ("\\\"", 1),
            b'\\' => ("\\\\", 1),
            b'\n' => ("\\n", 1),
            b'\r' => ("\\r", 1),
            b'\t' => ("\\t", 1),
            0..=0x1f | 0x7f => ("", 1),
            // U+0080..U+009F, the C1 controls, are 0xC2 0x80..0x9F in UTF-8.
            0xc2 if matches!(bytes.get(index + 1), Some(0x80..=0x9f)) => ("", 2),
            _ => {
                index += 1;
                continue;
            }
        };
        out.push_str(&value[start..index]);
        if escaped.is_empty() {
            let c = value[index..].chars().next().unwrap_or_default();
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        } else {
            out.push_str(escaped);
        }
        index += width;
        start = index;
    }
    out.push_str(&value[start..]);
}

/// Writes a value as kv text: numbers as they are, text escaped.
fn push_value(value: &Value, out: &mut String) {
    match value {
        Value::Text(text) => escape_quoted(text, out),
        Value::Integer(number) => out.push_str(itoa::Buffer::new().format(*number)),
        Value::Millis(ms) => push_millis(*ms, out),
    }
}

/// Milliseconds with three decimals (microseconds), without float formatting.
fn push_millis(ms: f64, out: &mut String) {
    if !ms.is_finite() || ms < 0.0 {
        let _ = write!(out, "{ms:.3}");
        return;
    }
    let micros = (ms * 1000.0).round() as u64;
    out.push_str(itoa::Buffer::new().format(micros / 1000));
    out.push('.');
    push_padded((micros % 1000) as u16, out);
}

pub fn kv_line(event: &Event, out: &mut String) {
    write_timestamp(event.unix_nanos, out);
    out.push(' ');
    for (index, (key, value)) in event.fields.iter().enumerate() {
        if index > 0 {
            out.push_str(", ");
        }
        out.push_str(key);
        out.push_str("=\"");
        push_value(value, out);
        out.push('"');
    }
}

pub fn json_line(event: &Event, out: &mut String) {
    let mut object = serde_json::Map::new();
    object.insert(
        "Timestamp".into(),
        serde_json::Value::String(timestamp(event.unix_nanos)),
    );
    for (key, value) in &event.fields {
        let value = match value {
            Value::Text(text) => serde_json::Value::String(text.to_string()),
            Value::Integer(number) => serde_json::Value::from(*number),
            Value::Millis(ms) => serde_json::Value::from((ms * 1000.0).round() / 1000.0),
        };
        object.insert((*key).into(), value);
    }
    out.push_str(&serde_json::Value::Object(object).to_string());
}

fn pretty_line(event: &Event, color: bool, out: &mut String) {
    let paint = |code: &str, text: &str| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    };
    let field = |key: &str| {
        let mut escaped = String::new();
        match event.get(key) {
            Some(value) => escape_quoted(&value.to_string(), &mut escaped),
            None => escaped.push('-'),
        }
        escaped
    };
    let time = timestamp(event.unix_nanos);
    let clock = time.get(11..23).unwrap_or(&time);
    out.push_str(&paint("2", clock));
    out.push(' ');
    match event.kind {
        EventKind::IncomingRequest => {
            out.push_str(&paint("36", "IN   "));
            out.push_str(&format!(
                " {} {}  api={} from={} ua=\"{}\"",
                field("RequestInMethod"),
                field("RequestInURL"),
                field("API"),
                field("RemoteIP"),
                field("UserAgent"),
            ));
        }
        EventKind::RequestComplete => {
            out.push_str(&paint("32", "DONE "));
            out.push_str(&format!(
                " {} {} -> {} {}  {} ms  api={}",
                field("RequestInMethod"),
                field("RequestInURL"),
                field("StatusCode"),
                field("RequestOutURL"),
                field("ResponseTimeMs"),
                field("API"),
            ));
        }
        EventKind::Error => {
            out.push_str(&paint("31", "ERROR"));
            out.push_str(&format!(
                " {} {} -> {} {} {} ({})  api={}",
                field("RequestInMethod"),
                field("RequestInURL"),
                field("StatusCode"),
                field("ERROR_CODE"),
                field("ERROR_MESSAGE"),
                field("ErrorSource"),
                field("API"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fields;

    fn event(user_agent: &str) -> Event {
        Event {
            unix_nanos: 1_700_000_000_123_000_000,
            kind: EventKind::IncomingRequest,
            fields: Fields::new()
                .text("Event", "INCOMING_REQUEST")
                .text("RequestInURL", "/a?b=\"c\"")
                .text("UserAgent", user_agent.to_owned())
                .integer("StatusCode", 200)
                .build(),
        }
    }

    #[test]
    fn kv_escapes_so_no_value_can_forge_a_field_or_line() {
        let mut line = String::new();
        kv_line(&event("x\", Event=\"ERROR\nfake \\ line\u{1}"), &mut line);
        assert!(!line.contains('\n'));
        assert!(line.contains(r#"UserAgent="x\", Event=\"ERROR\nfake \\ line\u{0001}""#));
        assert!(line.contains(r#"RequestInURL="/a?b=\"c\"""#));
        assert_eq!(line.matches("Event=\"").count(), 1);
    }

    #[test]
    fn pretty_escapes_too() {
        let mut line = String::new();
        pretty_line(&event("a\nb\"c\u{7f}\u{85}"), false, &mut line);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(r#"a\nb\"c\u{007f}\u{0085}"#), "{line}");
    }

    #[test]
    fn ordinary_text_is_copied_whole_and_c1_controls_escaped() {
        let mut out = String::new();
        escape_quoted("/caf\u{e9}?q=\u{2603}", &mut out);
        assert_eq!(out, "/caf\u{e9}?q=\u{2603}");
        out.clear();
        escape_quoted("x\u{9f}y\u{a0}", &mut out);
        assert_eq!(out, "x\\u{009f}y\u{a0}");
    }

    #[test]
    fn json_has_the_same_keys_and_parses_back() {
        let mut line = String::new();
        json_line(&event("ua\n\"x"), &mut line);
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["UserAgent"], "ua\n\"x");
        assert_eq!(parsed["StatusCode"], 200);
        assert!(parsed["Timestamp"].as_str().unwrap().contains('T'));
    }
}
