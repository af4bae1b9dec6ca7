//! The access-log events (the seed's INCOMING_REQUEST, REQUEST_COMPLETE and ERROR) as ordered
//! key/value lists, so every output format writes the same keys in the same order.
use std::{fmt, ops::Deref, sync::Arc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    IncomingRequest,
    RequestComplete,
    Error,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::IncomingRequest => "INCOMING_REQUEST",
            EventKind::RequestComplete => "REQUEST_COMPLETE",
            EventKind::Error => "ERROR",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A field's text: a constant, or shared with the request it describes, so the events of one
/// request repeat its URL, method and User-Agent without copying them.
#[derive(Clone, Debug)]
pub enum Text {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Text::Static(text) => text,
            Text::Shared(text) => text,
        }
    }
}

/// Texts are equal when their characters are, however they are held.
impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Text {}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Self {
        Text::Static(text)
    }
}

impl From<Arc<str>> for Text {
    fn from(text: Arc<str>) -> Self {
        Text::Shared(text)
    }
}

impl From<&Arc<str>> for Text {
    fn from(text: &Arc<str>) -> Self {
        Text::Shared(text.clone())
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Text::Shared(text.into())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Text(Text),
    Integer(u64),
    /// Milliseconds, written with microsecond precision.
    Millis(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(text) => f.write_str(text),
            Value::Integer(number) => write!(f, "{number}"),
            Value::Millis(ms) => write!(f, "{ms:.3}"),
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
        Fields(Vec::with_capacity(16))
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
