//! One JSON object per line: `Timestamp`, then the event's keys in order. Written straight into
//! the line (no intermediate value): strings escaped as RFC 8259 says, control characters and
//! the C1 range as `\uXXXX`.
use std::io::{self, Write};

use super::{push_millis, timestamp, LineWriter, Sink};
use crate::event::{Event, Value};

pub struct JsonSink<W: Write> {
    out: LineWriter<W>,
}

impl<W: Write> JsonSink<W> {
    pub fn new(writer: W) -> Self {
        JsonSink {
            out: LineWriter::new(writer),
        }
    }
}

/// Appends `value` as a JSON string.
fn push_string(value: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (index, c) in value.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => "",
            _ => continue,
        };
        out.push_str(&value[start..index]);
        if escaped.is_empty() {
            use std::fmt::Write as _;
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(escaped);
        }
        start = index + c.len_utf8();
    }
    out.push_str(&value[start..]);
    out.push('"');
}

/// Appends the JSON object of `event` (without its newline) to `out`.
pub fn line(event: &Event, out: &mut String) {
    out.push_str("{\"Timestamp\":");
    push_string(&timestamp(event.unix_nanos), out);
    for (key, value) in &event.fields {
        out.push(',');
        push_string(key, out);
        out.push(':');
        match value {
            Value::Text(text) => push_string(text, out),
            Value::Integer(number) => out.push_str(itoa::Buffer::new().format(*number)),
            Value::Millis(ms) if ms.is_finite() && *ms >= 0.0 => push_millis(*ms, out),
            Value::Millis(_) | Value::Null => out.push_str("null"),
        }
    }
    out.push('}');
}

impl<W: Write> Sink for JsonSink<W> {
    fn write_event(&mut self, event: &Event) -> io::Result<()> {
        self.out.write(|line_out| line(event, line_out))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::tests::event;

    #[test]
    fn has_the_same_keys_and_parses_back() {
        let mut out = String::new();
        line(&event("ua\n\"x\u{1}\u{85}\u{2028}é"), &mut out);
        assert!(!out.contains('\n'));
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["UserAgent"], "ua\n\"x\u{1}\u{85}\u{2028}é");
        assert_eq!(parsed["StatusCode"], 200);
        assert_eq!(parsed["ResponseTimeMs"], 1.5);
        assert_eq!(parsed["RequestInURL"], "/a?b=\"c\"");
        assert!(parsed["Timestamp"].as_str().unwrap().contains('T'));
        let keys: Vec<&String> = parsed.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "Timestamp",
                "Event",
                "RequestInURL",
                "UserAgent",
                "StatusCode",
                "ResponseTimeMs"
            ]
        );
    }
}
