//! Events to the world, one [`Sink`] per output format: `kv` (the WSO2 API Manager access-log
//! format's Key="value" line), `json` (one object per line) and `pretty` (a short line for a
//! person at a terminal). Every value is escaped so no URL or User-Agent can add a field or a
//! line. `syslog` forwards the kv line to a syslog receiver, beside the chosen output;
//! `metrics` counts events for Prometheus; `dashboard` keeps what `top` shows. The shared
//! pieces (timestamps, escaping, numbers) live here.
pub mod dashboard;
pub mod json;
pub mod kv;
pub mod metrics;
pub mod pretty;
pub mod syslog;

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use chrono::{DateTime, Local};

use crate::event::{Event, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Readable by a person: one short line per event, colored on a terminal.
    Pretty,
    /// The WSO2 API Manager access-log line: a timestamp, then Key="value", ...
    Kv,
    /// One JSON object per line, with the same keys.
    Json,
}

/// Where events go.
pub trait Sink {
    fn write_event(&mut self, event: &Event) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// The sink of `format` over `writer`; `color` only matters to `pretty`.
pub fn open<W: Write + 'static>(format: Format, writer: W, color: bool) -> Box<dyn Sink> {
    match format {
        Format::Kv => Box::new(kv::KvSink::new(writer)),
        Format::Json => Box::new(json::JsonSink::new(writer)),
        Format::Pretty => Box::new(pretty::PrettySink::new(writer, color)),
    }
}

/// Writes whole lines: each format fills `line`, the writer gets it with its newline.
struct LineWriter<W: Write> {
    writer: W,
    line: String,
}

impl<W: Write> LineWriter<W> {
    fn new(writer: W) -> Self {
        LineWriter {
            writer,
            line: String::with_capacity(1024),
        }
    }

    fn write(&mut self, fill: impl FnOnce(&mut String)) -> io::Result<()> {
        self.line.clear();
        fill(&mut self.line);
        self.line.push('\n');
        self.writer.write_all(self.line.as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// The format's timestamp: local time with milliseconds and the UTC offset.
pub fn timestamp(unix_nanos: i128) -> String {
    let mut out = String::with_capacity(32);
    write_timestamp(unix_nanos, &mut out);
    out
}

/// Appends the format's timestamp to `out`. The parts but the milliseconds are formatted once
/// per second (events come thousands per second), the UTC offset with them, so a change of
/// the time zone's offset (daylight saving) shows within a second.
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
                .with_timezone(&Local);
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

/// Writes a value as text: numbers as they are, text escaped for double quotes.
fn push_value(value: &Value, out: &mut String) {
    match value {
        Value::Text(text) => escape_quoted(text, out),
        Value::Integer(number) => out.push_str(itoa::Buffer::new().format(*number)),
        Value::Millis(ms) => push_millis(*ms, out),
        Value::Null => out.push_str("null"),
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{EventKind, Fields};

    pub fn event(user_agent: &str) -> Event {
        Event {
            unix_nanos: 1_700_000_000_123_000_000,
            kind: EventKind::IncomingRequest,
            fields: Fields::new()
                .text("Event", "INCOMING_REQUEST")
                .text("RequestInURL", "/a?b=\"c\"")
                .text("UserAgent", user_agent.to_owned())
                .integer("StatusCode", 200)
                .millis("ResponseTimeMs", 1.5)
                .build(),
        }
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
    fn every_sink_writes_one_line_per_event() {
        for format in [Format::Kv, Format::Json, Format::Pretty] {
            let buffer = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);
            impl Write for Shared {
                fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                    self.0.borrow_mut().extend_from_slice(bytes);
                    Ok(bytes.len())
                }
                fn flush(&mut self) -> io::Result<()> {
                    Ok(())
                }
            }
            let mut sink = open(format, Shared(buffer.clone()), false);
            sink.write_event(&event("ua\nx")).unwrap();
            sink.write_event(&event("ua")).unwrap();
            sink.flush().unwrap();
            let text = String::from_utf8(buffer.borrow().clone()).unwrap();
            assert_eq!(text.lines().count(), 2, "{format:?}: {text}");
        }
    }
}
