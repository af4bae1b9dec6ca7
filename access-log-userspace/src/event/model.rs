//! The access-log events (the WSO2 API Manager access-log format's INCOMING_REQUEST,
//! REQUEST_COMPLETE and ERROR, and our LOST) as ordered key/value lists, so every output
//! format writes the same keys in the same order.
use std::fmt;

pub use crate::text::Text;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    IncomingRequest,
    RequestComplete,
    Error,
    /// Requests that ended without their end being seen, or records the kernel lost.
    Lost,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::IncomingRequest => "INCOMING_REQUEST",
            EventKind::RequestComplete => "REQUEST_COMPLETE",
            EventKind::Error => "ERROR",
            EventKind::Lost => "LOST",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Text(Text),
    Integer(u64),
    /// Milliseconds, written with microsecond precision.
    Millis(f64),
    /// Nothing known (`null`, as the WSO2 API Manager access-log format writes an unknown
    /// APPLICATION_NAME; JSON's null).
    Null,
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(text) => f.write_str(text),
            Value::Integer(number) => write!(f, "{number}"),
            Value::Millis(ms) => write!(f, "{ms:.3}"),
            Value::Null => f.write_str("null"),
        }
    }
}

/// One event: when, what, and its fields in output order (`Event` among them).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Wall-clock time of the kernel record that completed the event, in nanoseconds since the
    /// Unix epoch.
    pub unix_nanos: i128,
    pub kind: EventKind,
    pub fields: Vec<(&'static str, Value)>,
}

impl Event {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn text(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }
}

/// Builds an event's field list in order.
pub struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    pub fn new() -> Self {
        // Room for the fields of the longest events (ERROR, REQUEST_COMPLETE with every
        // optional field), so that no event grows its list.
        Fields(Vec::with_capacity(24))
    }

    pub fn text(mut self, key: &'static str, value: impl Into<Text>) -> Self {
        self.0.push((key, Value::Text(value.into())));
        self
    }

    pub fn optional_text(self, key: &'static str, value: Option<impl Into<Text>>) -> Self {
        match value {
            Some(value) => self.text(key, value),
            None => self,
        }
    }

    pub fn integer(mut self, key: &'static str, value: u64) -> Self {
        self.0.push((key, Value::Integer(value)));
        self
    }

    /// A text field that is `null` when nothing is known.
    pub fn text_or_null(mut self, key: &'static str, value: Option<impl Into<Text>>) -> Self {
        self.0.push((
            key,
            value.map_or(Value::Null, |value| Value::Text(value.into())),
        ));
        self
    }

    pub fn millis(mut self, key: &'static str, value: f64) -> Self {
        self.0.push((key, Value::Millis(value)));
        self
    }

    pub fn build(self) -> Vec<(&'static str, Value)> {
        self.0
    }
}

impl Default for Fields {
    fn default() -> Self {
        Self::new()
    }
}
