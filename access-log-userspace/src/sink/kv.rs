//! The WSO2 API Manager access-log line: a timestamp, then `Key="value"` pairs separated by
//! `, `, every value escaped for its quotes.
use std::io::{self, Write};

use super::{push_value, write_timestamp, LineWriter, Sink};
use crate::event::Event;

pub struct KvSink<W: Write> {
    out: LineWriter<W>,
}

impl<W: Write> KvSink<W> {
    pub fn new(writer: W) -> Self {
        KvSink {
            out: LineWriter::new(writer),
        }
    }
}

/// Appends the kv line of `event` (without its newline) to `out`.
pub fn line(event: &Event, out: &mut String) {
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

impl<W: Write> Sink for KvSink<W> {
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
    fn escapes_so_no_value_can_forge_a_field_or_line() {
        let mut out = String::new();
        line(&event("x\", Event=\"ERROR\nfake \\ line\u{1}"), &mut out);
        assert!(!out.contains('\n'));
        assert!(out.contains(r#"UserAgent="x\", Event=\"ERROR\nfake \\ line\u{0001}""#));
        assert!(out.contains(r#"RequestInURL="/a?b=\"c\"""#));
        assert!(out.contains(r#"ResponseTimeMs="1.500""#));
        assert_eq!(out.matches("Event=\"").count(), 1);
    }
}
