//! A short line per event for a person at a terminal, colored there: the time, the event,
//! the method and URL, and what became of the request.
use std::io::{self, Write};

use super::{escape_quoted, timestamp, LineWriter, Sink};
use crate::event::{Event, EventKind};

pub struct PrettySink<W: Write> {
    out: LineWriter<W>,
    color: bool,
}

impl<W: Write> PrettySink<W> {
    pub fn new(writer: W, color: bool) -> Self {
        PrettySink {
            out: LineWriter::new(writer),
            color,
        }
    }
}

/// Appends the pretty line of `event` (without its newline) to `out`.
pub fn line(event: &Event, color: bool, out: &mut String) {
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
            let to = if event.get("AnsweredBy").is_some() {
                "(answered by the gateway)".to_owned()
            } else {
                field("RequestOutURL")
            };
            out.push_str(&format!(
                " {} {} -> {} {}  {} ms  api={}",
                field("RequestInMethod"),
                field("RequestInURL"),
                field("StatusCode"),
                to,
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
        EventKind::Lost => {
            out.push_str(&paint("33", "LOST "));
            out.push_str(&format!(
                " {}: {} requests ended unseen, {} records lost",
                field("Reason"),
                field("RequestsLost"),
                event
                    .get("RecordsLost")
                    .map_or("0".to_owned(), |v| v.to_string()),
            ));
        }
    }
}

impl<W: Write> Sink for PrettySink<W> {
    fn write_event(&mut self, event: &Event) -> io::Result<()> {
        let color = self.color;
        self.out.write(|out| line(event, color, out))
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
    fn escapes_too() {
        let mut out = String::new();
        line(&event("a\nb\"c\u{7f}\u{85}"), false, &mut out);
        assert!(!out.contains('\n'), "{out}");
        assert!(out.contains(r#"a\nb\"c\u{007f}\u{0085}"#), "{out}");
    }
}
