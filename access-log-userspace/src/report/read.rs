//! Event files back into events: kv lines (the WSO2 API Manager access-log format, as the kv
//! sink writes them) and JSON lines, plain or gzip-compressed (rotated logs), told apart line
//! by line so a file may hold both.
use std::{
    collections::HashMap,
    fs::File,
    io::{self, BufRead, BufReader, Read as _},
    path::Path,
};

use chrono::DateTime;

/// One event as a log file holds it: its time and its fields as text (`None` for `null`).
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedEvent {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: i64,
    pub fields: HashMap<String, Option<String>>,
}

impl LoggedEvent {
    /// A field's text; `None` when absent or `null`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key)?.as_deref()
    }

    pub fn kind(&self) -> &str {
        self.get("Event").unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// What reading the files gave besides the events: how many, and the lines that were no
/// event.
#[derive(Debug, Default)]
pub struct EventFiles {
    pub events: u64,
    /// Non-empty lines that were neither a kv nor a JSON event (first one kept, for a
    /// message).
    pub skipped: u64,
    pub first_skipped: Option<(String, u64)>,
}

/// Reads every file (gzip-compressed ones by their magic bytes) in order, handing each event
/// to `each` as it is read: memory does not grow with the files.
pub fn read_files(
    paths: &[impl AsRef<Path>],
    each: &mut dyn FnMut(LoggedEvent),
) -> Result<EventFiles, ReadError> {
    let mut read = EventFiles::default();
    for path in paths {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let error = |source| ReadError::Io {
            path: shown.clone(),
            source,
        };
        let mut file = BufReader::new(File::open(path).map_err(error)?);
        let gzip = file.fill_buf().map_err(error)?.starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn BufRead> = if gzip {
            Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
        } else {
            Box::new(file)
        };
        read_lines(reader, &shown, &mut read, each).map_err(error)?;
    }
    Ok(read)
}

fn read_lines(
    mut reader: impl BufRead,
    shown: &str,
    read: &mut EventFiles,
    each: &mut dyn FnMut(LoggedEvent),
) -> io::Result<()> {
    let mut bytes = Vec::new();
    let mut number = 0;
    loop {
        bytes.clear();
        if reader
            .by_ref()
            .take(1 << 20)
            .read_until(b'\n', &mut bytes)?
            == 0
        {
            return Ok(());
        }
        number += 1;
        let line = String::from_utf8_lossy(&bytes);
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Some(event) => {
                read.events += 1;
                each(event);
            }
            None => {
                read.skipped += 1;
                if read.first_skipped.is_none() {
                    read.first_skipped = Some((shown.to_owned(), number));
                }
            }
        }
    }
}

/// One line as an event: a JSON object with `Timestamp` and `Event`, or a kv line.
pub fn parse_line(line: &str) -> Option<LoggedEvent> {
    if line.starts_with('{') {
        parse_json(line)
    } else {
        parse_kv(line)
    }
}

/// The sinks' timestamp, `2026-11-24T12:47:55.833+0000`, or RFC 3339.
pub fn parse_time(text: &str) -> Option<i64> {
    DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(text))
        .ok()
        .map(|time| time.timestamp_millis())
}

fn parse_json(line: &str) -> Option<LoggedEvent> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).ok()?;
    let unix_ms = parse_time(object.get("Timestamp")?.as_str()?)?;
    let fields: HashMap<String, Option<String>> = object
        .into_iter()
        .filter(|(key, _)| key != "Timestamp")
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::Null => None,
                serde_json::Value::String(text) => Some(text),
                other => Some(other.to_string()),
            };
            (key, text)
        })
        .collect();
    fields
        .contains_key("Event")
        .then_some(LoggedEvent { unix_ms, fields })
}

/// `TIMESTAMP Key="value", Key="value"`, values escaped as the kv sink escapes them; `null`
/// is the kv sink's unknown value.
fn parse_kv(line: &str) -> Option<LoggedEvent> {
    let (time, mut rest) = line.split_once(' ')?;
    let unix_ms = parse_time(time)?;
    let mut fields = HashMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        let (value, after) = unescape_until_quote(after)?;
        let value = (value != "null").then_some(value);
        fields.insert(key.to_owned(), value);
        rest = after.strip_prefix(", ").unwrap_or(after);
        if !after.is_empty() && !after.starts_with(", ") {
            return None;
        }
    }
    fields
        .contains_key("Event")
        .then_some(LoggedEvent { unix_ms, fields })
}

/// A value up to its closing quote: `\"`, `\\`, `\n`, `\r`, `\t`, `\u{XXXX}` undone.
fn unescape_until_quote(text: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Some((out, &text[index + 1..])),
            '\\' => match chars.next()?.1 {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    let (start, open) = chars.next()?;
                    if open != '{' {
                        return None;
                    }
                    let end = text[start..].find('}')? + start;
                    let code = u32::from_str_radix(&text[start + 1..end], 16).ok()?;
                    out.push(char::from_u32(code)?);
                    while chars.next()?.0 < end {}
                }
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Event, EventKind, Fields},
        sink,
    };

    fn written(event: &Event, json: bool) -> String {
        let mut out = String::new();
        if json {
            sink::json::line(event, &mut out);
        } else {
            sink::kv::line(event, &mut out);
        }
        out
    }

    #[test]
    fn what_the_sinks_write_reads_back() {
        let event = Event {
            unix_nanos: 1_764_000_000_123_000_000,
            kind: EventKind::RequestComplete,
            fields: Fields::new()
                .text("Event", "REQUEST_COMPLETE")
                .text("API", "Orders:v1")
                .text_or_null("APPLICATION_NAME", None::<&str>)
                .integer("StatusCode", 200)
                .text("UserAgent", "a \"quoted\", Key=\"x\" \\ line\nbreak\u{1}")
                .millis("ResponseTimeMs", 1.5)
                .build(),
        };
        for json in [false, true] {
            let line = written(&event, json);
            let read = parse_line(&line).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(read.unix_ms, 1_764_000_000_123, "{line}");
            assert_eq!(read.kind(), "REQUEST_COMPLETE");
            assert_eq!(read.get("API"), Some("Orders:v1"));
            assert_eq!(read.get("APPLICATION_NAME"), None);
            assert!(read.fields.contains_key("APPLICATION_NAME"));
            assert_eq!(read.get("StatusCode"), Some("200"));
            let ms = read
                .get("ResponseTimeMs")
                .and_then(|v| v.parse::<f64>().ok());
            assert_eq!(ms, Some(1.5), "{line}");
            assert_eq!(
                read.get("UserAgent"),
                Some("a \"quoted\", Key=\"x\" \\ line\nbreak\u{1}")
            );
        }
    }

    #[test]
    fn the_original_log_lines_and_noise() {
        let original = "2017-05-26T13:23:25.127-0700 Event=\"REQUEST_COMPLETE\", API=\"lzelus--Echo:v1.0.0\", APPLICATION_NAME=\"null\", StatusCode=\"200\"";
        let event = parse_line(original).unwrap();
        assert_eq!(event.get("API"), Some("lzelus--Echo:v1.0.0"));
        assert_eq!(event.unix_ms, 1_495_830_205_127);
        for noise in [
            "summary: 3 INCOMING_REQUEST",
            "2017-05-26T13:23:25.127-0700 Event=\"X\", broken",
            "{\"Event\":\"ERROR\"}",
            "{not json",
            "2017-05-26T13:23:25.127-0700 API=\"x\"",
        ] {
            assert_eq!(parse_line(noise), None, "{noise}");
        }
    }

    #[test]
    fn gzip_files_and_plain_ones_are_read_alike() {
        use std::io::Write as _;
        let dir = std::env::temp_dir().join(format!("access-log-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = "2026-12-03T10:00:00.000+0000 Event=\"INCOMING_REQUEST\", API=\"a\"\n";
        let plain = dir.join("access.log");
        std::fs::write(&plain, format!("{line}garbage\n")).unwrap();
        let zipped = dir.join("access.log.1.gz");
        let mut encoder =
            flate2::write::GzEncoder::new(File::create(&zipped).unwrap(), Default::default());
        encoder.write_all(line.repeat(3).as_bytes()).unwrap();
        encoder.finish().unwrap();
        let mut events = Vec::new();
        let read = read_files(&[&plain, &zipped], &mut |e| events.push(e)).unwrap();
        assert_eq!(read.events, 4);
        assert_eq!(events.len(), 4);
        assert_eq!(read.skipped, 1);
        assert_eq!(read.first_skipped.as_ref().map(|(_, n)| *n), Some(2));
        assert!(read_files(&[dir.join("missing")], &mut |_| {}).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
