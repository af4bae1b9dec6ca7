//! HTTP/1.x stream reassembly for one direction of one connection: finds message heads across
//! reads, skips bodies by their framing, and survives bytes it never saw (beyond the capture
//! window) by resynchronising at the start of the next read.
use std::{collections::VecDeque, sync::Arc};

use super::credential::{self, Credential};
use crate::text::Text;

/// A head larger than this is not HTTP we can follow; the stream goes opaque until resync.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// The request headers a reader of the stream wants to hear of, besides those that frame the
/// message: lower-case names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderInterest {
    /// Headers whose value is kept (the first present, in this order of preference): id
    /// headers that link a gateway's inbound and outbound requests.
    pub values: Vec<String>,
    /// Headers whose presence, never value, is noted (credentials).
    pub presence: Vec<String>,
    /// Headers that carry API keys, read (besides Authorization) for who calls: kept only as
    /// a fingerprint ([`credential`]).
    pub keys: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Text,
    /// Path and query exactly as sent (lossy only for invalid UTF-8); shared with the events.
    pub target: Arc<str>,
    pub user_agent: Option<Arc<str>>,
    /// A header of [`HeaderInterest::presence`] was present.
    pub noted_header: bool,
    /// `name:value` of the first header of [`HeaderInterest::values`] present (its whole value,
    /// trimmed).
    pub id: Option<Arc<str>>,
    /// Both Content-Length and Transfer-Encoding: a request-smuggling signal (chunked wins).
    pub conflicting_framing: bool,
    /// Who the request says calls, secrets removed (Authorization first, then API keys).
    pub credential: Option<Credential>,
    /// The target may be cut: the head went past the capture window, or (HTTP/2) its
    /// `:path` could not be decoded.
    pub truncated: bool,
    /// Headers it carried could not all be read: past the capture window, or (HTTP/2) named
    /// by an HPACK table entry the observer never saw (a connection joined mid-stream).
    pub headers_unknown: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub truncated: bool,
    /// The answer ends the connection (`Connection: close`, or HTTP/1.0 without keep-alive):
    /// requests pipelined after it are not served.
    pub closes_connection: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    Request(RequestHead),
    Response(ResponseHead),
    /// Bytes in a request's place that are no HTTP/1 request head (malformed, or larger than
    /// any gateway takes): the gateway's answer to them, if any, is a refusal worth reporting.
    Unreadable(Option<RequestLine>),
}

/// The method and target of a malformed head whose first line is a well-formed request line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLine {
    pub method: Text,
    pub target: Arc<str>,
}

/// Which kind of heads a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Requests,
    Responses,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data: bytes left, then CRLF.
    Data(u64),
    /// Inside the trailer section, after the last chunk.
    Trailers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    Chunked(Chunked),
    UntilClose,
    /// Lost track of framing: waiting for a read that starts with a head.
    Unsynced,
    /// A request asked to switch protocols (`http2`: to HTTP/2 over cleartext, `h2c`): what
    /// follows waits in `pending` for the answer (a 101 makes the stream opaque; any other
    /// answer resumes HTTP/1 with those bytes).
    Upgrading {
        http2: bool,
    },
    /// Not HTTP/1 any more (upgrade, HTTP/2 preface): left alone.
    Opaque,
}

/// Reassembles one direction of a connection.
#[derive(Debug)]
pub struct Stream {
    side: Side,
    state: State,
    pending: Vec<u8>,
    /// For responses: whether each request still unanswered was a HEAD (no body in reply).
    head_requests: VecDeque<bool>,
    /// Bytes of partial lines in chunked framing.
    line: Vec<u8>,
    /// The request headers the reader wants to hear of.
    interest: Arc<HeaderInterest>,
    /// Responses: the bytes that followed a 101's head in the read or write that switched
    /// the connection (the new protocol's first), until taken.
    switched: Option<Vec<u8>>,
}

impl Stream {
    pub fn new(side: Side) -> Self {
        Self::with_interest(side, Arc::default())
    }

    pub fn with_interest(side: Side, interest: Arc<HeaderInterest>) -> Self {
        Stream {
            side,
            state: State::Head,
            pending: Vec::new(),
            head_requests: VecDeque::new(),
            line: Vec::new(),
            interest,
            switched: None,
        }
    }

    /// Tells a response stream that a request was sent, so it can frame the reply.
    pub fn expect_response_to(&mut self, method: &str) {
        self.head_requests
            .push_back(method.eq_ignore_ascii_case("HEAD"));
    }

    /// Joins a stream in the middle: wait for a read that starts a head. What it knew of the
    /// requests its responses answer goes too.
    pub fn resync(&mut self) {
        self.pending.clear();
        self.line.clear();
        self.head_requests.clear();
        self.state = State::Unsynced;
    }

    /// Whether the stream is inside a message body (the head before it is complete).
    pub fn in_body(&self) -> bool {
        matches!(
            self.state,
            State::Body(_) | State::Chunked(_) | State::UntilClose
        )
    }

    /// Whether the next byte fed would start a head (or is looked at for one): not inside a
    /// body, a head or a chunk line.
    pub fn at_head_start(&self) -> bool {
        match self.state {
            State::Head => self.pending.is_empty(),
            State::Unsynced => true,
            _ => false,
        }
    }

    /// Bytes held for a head or a chunk line not yet complete.
    pub fn buffered(&self) -> usize {
        self.pending.len() + self.line.len()
    }

    pub fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    pub fn is_upgrading(&self) -> bool {
        matches!(self.state, State::Upgrading { .. })
    }

    /// A request asked to switch to HTTP/2 over cleartext (`Upgrade: h2c`), no answer yet.
    pub fn is_upgrading_to_http2(&self) -> bool {
        self.state == State::Upgrading { http2: true }
    }

    /// The switch to a protocol read elsewhere (HTTP/2) was accepted: the stream is left
    /// alone; returns the bytes it held since the upgrade request (the new protocol's first).
    pub fn switch(&mut self) -> Vec<u8> {
        self.state = State::Opaque;
        std::mem::take(&mut self.pending)
    }

    /// Responses: after a feed whose 101 switched protocols, the bytes that followed its head
    /// there (perhaps none); None when no switch happened since the last call.
    pub fn take_switched(&mut self) -> Option<Vec<u8>> {
        self.switched.take()
    }

    /// The answer to the upgrade request came: a switch leaves the stream alone; a refusal
    /// resumes HTTP/1 with the bytes held meanwhile, and returns the heads they complete.
    pub fn upgrade_answered(&mut self, switched: bool) -> Vec<Head> {
        if !self.is_upgrading() {
            return Vec::new();
        }
        let held = std::mem::take(&mut self.pending);
        if switched {
            self.state = State::Opaque;
            return Vec::new();
        }
        self.state = State::Head;
        self.feed(&held, 0)
    }

    /// The gateway answered while a head was still incomplete (it gave up on it, at end of
    /// input or over a framing error): that head, as unreadable. None without one.
    pub fn take_incomplete(&mut self) -> Option<Head> {
        if self.side != Side::Requests || self.state != State::Head || self.pending.is_empty() {
            return None;
        }
        let line = request_line(&self.pending);
        self.pending.clear();
        self.state = State::Unsynced;
        Some(Head::Unreadable(line))
    }

    /// Feeds one read or write: `captured` is the head of it, `missing` the bytes moved beyond
    /// the capture window. Returns the heads completed.
    pub fn feed(&mut self, captured: &[u8], missing: u64) -> Vec<Head> {
        let mut heads = Vec::new();
        if self.state == State::Unsynced {
            if looks_like_head(captured, self.side) {
                self.state = State::Head;
                self.pending.clear();
            } else {
                return heads;
            }
        }
        let mut input = captured;
        let mut missing = missing;
        loop {
            match self.state {
                State::Opaque | State::Unsynced | State::UntilClose => return heads,
                State::Upgrading { .. } => {
                    // Held only up to a head's worth: a refused upgrade is followed by heads.
                    let room = MAX_HEAD.saturating_sub(self.pending.len());
                    self.pending
                        .extend_from_slice(&input[..input.len().min(room)]);
                    return heads;
                }
                State::Head => {
                    if input.is_empty() {
                        if missing > 0 && !self.pending.is_empty() {
                            self.lose_sync(&mut heads);
                        } else if missing > 0 {
                            self.state = State::Unsynced;
                        }
                        return heads;
                    }
                    let before = self.pending.len();
                    // A head that starts this read is parsed where it lies; only a head split
                    // across reads is gathered in `pending`.
                    let parsed = if before == 0 {
                        let parsed = self.parse_head(input);
                        if !matches!(parsed, Parsed::Complete(..)) {
                            self.pending.extend_from_slice(input);
                        }
                        parsed
                    } else {
                        self.pending.extend_from_slice(input);
                        let pending = std::mem::take(&mut self.pending);
                        let parsed = self.parse_head(&pending);
                        self.pending = pending;
                        parsed
                    };
                    match parsed {
                        Parsed::Complete(head, length, next) => {
                            let used = length - before;
                            input = &input[used..];
                            self.pending.clear();
                            self.state = next;
                            if next == State::Opaque && self.side == Side::Responses {
                                self.switched = Some(input.to_vec());
                            }
                            heads.push(head);
                        }
                        Parsed::Partial => {
                            if missing > 0 {
                                self.lose_sync(&mut heads);
                            } else if self.pending.len() > MAX_HEAD {
                                self.pending.clear();
                                self.state = State::Unsynced;
                                if self.side == Side::Requests {
                                    heads.push(Head::Unreadable(None));
                                }
                            }
                            return heads;
                        }
                        Parsed::Invalid => {
                            let preface = is_http2_preface(&self.pending);
                            if !preface && self.side == Side::Requests {
                                heads.push(Head::Unreadable(request_line(&self.pending)));
                            }
                            self.pending.clear();
                            self.state = if preface {
                                State::Opaque
                            } else {
                                State::Unsynced
                            };
                            return heads;
                        }
                    }
                }
                State::Body(left) => {
                    let available = input.len() as u64 + missing;
                    if available == 0 {
                        return heads;
                    }
                    let skip = left.min(available);
                    let from_input = skip.min(input.len() as u64) as usize;
                    input = &input[from_input..];
                    missing -= skip - from_input as u64;
                    self.state = if skip == left {
                        State::Head
                    } else {
                        State::Body(left - skip)
                    };
                }
                State::Chunked(chunked) => {
                    if input.is_empty() && missing == 0 {
                        return heads;
                    }
                    match self.step_chunked(chunked, &mut input, &mut missing) {
                        Some(next) => self.state = next,
                        None => {
                            self.state = State::Unsynced;
                            return heads;
                        }
                    }
                }
            }
        }
    }

    /// The head was cut by the capture window: report what the first line says, flagged, and
    /// wait for a read that starts a new head.
    fn lose_sync(&mut self, heads: &mut Vec<Head>) {
        if let Some(head) = first_line_head(&self.pending, self.side, &self.interest) {
            if matches!(head, Head::Response(_)) {
                self.head_requests.pop_front();
            }
            heads.push(head);
        }
        self.pending.clear();
        self.state = State::Unsynced;
    }

    fn parse_head(&mut self, bytes: &[u8]) -> Parsed {
        match self.side {
            Side::Requests => parse_request(bytes, &self.interest),
            Side::Responses => {
                let parsed = parse_response(bytes, self.head_requests.front().copied());
                if let Parsed::Complete(Head::Response(ref response), _, _) = parsed {
                    if is_final(response.status) {
                        self.head_requests.pop_front();
                    }
                }
                parsed
            }
        }
    }

    /// One step of chunked framing; None when framing is lost (a size line beyond capture).
    fn step_chunked(
        &mut self,
        chunked: Chunked,
        input: &mut &[u8],
        missing: &mut u64,
    ) -> Option<State> {
        match chunked {
            Chunked::Data(left) => {
                let available = input.len() as u64 + *missing;
                let skip = left.min(available);
                let from_input = skip.min(input.len() as u64) as usize;
                *input = &input[from_input..];
                *missing -= skip - from_input as u64;
                Some(State::Chunked(if skip == left {
                    Chunked::Size
                } else {
                    Chunked::Data(left - skip)
                }))
            }
            Chunked::Size | Chunked::Trailers => {
                if input.is_empty() {
                    // The line we need is beyond the capture window.
                    return None;
                }
                let end = input.iter().position(|&b| b == b'\n');
                let take = end.map_or(input.len(), |i| i + 1);
                self.line.extend_from_slice(&input[..take]);
                *input = &input[take..];
                if end.is_none() {
                    return (self.line.len() < 4096).then_some(State::Chunked(chunked));
                }
                let line = std::mem::take(&mut self.line);
                let text = trim_line(&line);
                if chunked == Chunked::Trailers {
                    return Some(if text.is_empty() {
                        State::Head
                    } else {
                        State::Chunked(Chunked::Trailers)
                    });
                }
                if text.is_empty() {
                    // The CRLF that ends a chunk's data.
                    return Some(State::Chunked(Chunked::Size));
                }
                let hex = text.split(|&b| b == b';').next().unwrap_or_default();
                let size = u64::from_str_radix(std::str::from_utf8(hex).ok()?.trim(), 16).ok()?;
                Some(State::Chunked(if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                }))
            }
        }
    }
}

/// Whether a status ends its request's exchange: every status but the interim 1xx; 101
/// Switching Protocols is final (what follows is not HTTP).
pub fn is_final(status: u16) -> bool {
    status >= 200 || status == 101
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && (line[end - 1] == b'\n' || line[end - 1] == b'\r') {
        end -= 1;
    }
    &line[..end]
}

enum Parsed {
    Complete(Head, usize, State),
    Partial,
    Invalid,
}

/// The headers the observer reads, found in one pass (the first of each name counts, but for
/// Transfer-Encoding).
#[derive(Default)]
struct Known<'h> {
    user_agent: Option<&'h [u8]>,
    content_length: Option<&'h [u8]>,
    transfer_encoding: Option<&'h [u8]>,
    upgrade: Option<&'h [u8]>,
    connection: Option<&'h [u8]>,
    noted: bool,
    /// The first id header present, by its place in the interest's list.
    id: Option<(usize, &'h [u8])>,
    authorization: Option<&'h [u8]>,
    /// The first API-key header present: name and value.
    api_key: Option<(&'h str, &'h [u8])>,
}

impl<'h> Known<'h> {
    fn scan(headers: &'h [httparse::Header<'_>], interest: &HeaderInterest) -> Self {
        let mut known = Known::default();
        for header in headers {
            let name = header.name;
            let first = |slot: &mut Option<&'h [u8]>| {
                if slot.is_none() {
                    *slot = Some(header.value);
                }
            };
            // Lengths first: most names are ruled out without comparing bytes.
            match name.len() {
                10 if name.eq_ignore_ascii_case("user-agent") => first(&mut known.user_agent),
                10 if name.eq_ignore_ascii_case("connection") => first(&mut known.connection),
                14 if name.eq_ignore_ascii_case("content-length") => {
                    first(&mut known.content_length)
                }
                // Several Transfer-Encoding headers make one list: its last coding counts.
                17 if name.eq_ignore_ascii_case("transfer-encoding") => {
                    known.transfer_encoding = Some(header.value)
                }
                7 if name.eq_ignore_ascii_case("upgrade") => first(&mut known.upgrade),
                13 if name.eq_ignore_ascii_case(credential::AUTHORIZATION) => {
                    first(&mut known.authorization)
                }
                _ => {}
            }
            if known.api_key.is_none()
                && interest
                    .keys
                    .iter()
                    .any(|k| k.len() == name.len() && k.eq_ignore_ascii_case(name))
            {
                known.api_key = Some((header.name, header.value));
            }
            if interest
                .presence
                .iter()
                .any(|c| c.len() == name.len() && c.eq_ignore_ascii_case(name))
            {
                known.noted = true;
            }
            if let Some(index) = interest
                .values
                .iter()
                .position(|id| id.len() == name.len() && id.eq_ignore_ascii_case(name))
            {
                if known.id.is_none_or(|(best, _)| index < best) {
                    known.id = Some((index, header.value));
                }
            }
        }
        known
    }

    /// Body framing from Content-Length and Transfer-Encoding (chunked wins, as RFC 9112 says).
    fn body_framing(&self) -> Option<State> {
        if let Some(te) = self.transfer_encoding {
            if te
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| text(last).trim().eq_ignore_ascii_case("chunked"))
            {
                return Some(State::Chunked(Chunked::Size));
            }
            return None;
        }
        let length: u64 = std::str::from_utf8(self.content_length?)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(if length == 0 {
            State::Head
        } else {
            State::Body(length)
        })
    }

    /// The request's credential: Authorization when it identifies, else an API key.
    fn credential(&self, interest: &HeaderInterest) -> Option<Credential> {
        self.authorization
            .and_then(|value| {
                credential::from_header(credential::AUTHORIZATION.as_bytes(), value, &[])
            })
            .or_else(|| {
                let (name, value) = self.api_key?;
                credential::from_header(name.as_bytes(), value, &interest.keys)
            })
    }

    /// `name:value` of the first id header present, its whole value: a traceparent's trace id
    /// alone is shared by every request of a trace, so it links nothing exactly.
    fn id(&self, interest: &HeaderInterest) -> Option<Arc<str>> {
        let (index, value) = self.id?;
        let name = &interest.values[index];
        let value = text(value);
        let value = value.trim();
        (!value.is_empty()).then(|| Arc::from(format!("{name}:{value}")))
    }
}

/// The credential of a head cut by the capture window, from its whole header lines; a
/// credential header on the line the window cut is [`Credential::Cut`].
fn cut_head_credential(rest: &[u8], interest: &HeaderInterest) -> Option<Credential> {
    let mut found: Option<Credential> = None;
    let mut lines = rest.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let whole = lines.peek().is_some();
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let is_authorization = name.eq_ignore_ascii_case(credential::AUTHORIZATION.as_bytes());
        let is_key = interest
            .keys
            .iter()
            .any(|k| k.as_bytes().eq_ignore_ascii_case(name));
        if !is_authorization && !is_key {
            continue;
        }
        if !whole {
            return found.or(Some(Credential::Cut));
        }
        let credential = credential::from_header(name, &line[colon + 1..], &interest.keys);
        // Authorization wins over an API key, as in a whole head.
        match (&found, is_authorization) {
            (None, _) => found = credential,
            (Some(_), true) if credential.is_some() => found = credential,
            _ => {}
        }
    }
    found
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn shared_text(bytes: &[u8]) -> Arc<str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Arc::from(text),
        Err(_) => Arc::from(String::from_utf8_lossy(bytes).as_ref()),
    }
}

/// The method as event text: the common ones are constants, so no request allocates them.
fn method_text(method: &str) -> Text {
    const COMMON: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"];
    match COMMON.iter().find(|m| **m == method) {
        Some(common) => Text::Static(common),
        None => Text::from(method.to_owned()),
    }
}

/// Room for a head's headers, left uninitialized: httparse writes the ones it finds, and
/// initializing 64 of them for every head cost more than parsing most heads.
fn header_room<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

fn parse_request(bytes: &[u8], interest: &HeaderInterest) -> Parsed {
    let mut headers = header_room();
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete(length)) => {
            let method = method_text(request.method.unwrap_or_default());
            let target: Arc<str> = Arc::from(request.path.unwrap_or_default());
            let known = Known::scan(request.headers, interest);
            let upgrade = known.upgrade.is_some()
                && method.eq_ignore_ascii_case("GET")
                && known
                    .connection
                    .is_some_and(|c| text(c).to_ascii_lowercase().contains("upgrade"));
            let next = if upgrade {
                State::Upgrading {
                    http2: known.upgrade.is_some_and(|protocols| {
                        text(protocols)
                            .split(',')
                            .any(|p| p.trim().eq_ignore_ascii_case("h2c"))
                    }),
                }
            } else {
                known.body_framing().unwrap_or(State::Head)
            };
            let head = RequestHead {
                method,
                noted_header: known.noted,
                target,
                user_agent: known.user_agent.map(shared_text),
                id: known.id(interest),
                conflicting_framing: known.content_length.is_some()
                    && known.transfer_encoding.is_some(),
                credential: known.credential(interest),
                truncated: false,
                headers_unknown: false,
            };
            Parsed::Complete(Head::Request(head), length, next)
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::Invalid,
        Err(_) => Parsed::Invalid,
    }
}

fn parse_response(bytes: &[u8], to_head_request: Option<bool>) -> Parsed {
    let mut headers = header_room();
    let mut response = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        bytes,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(length)) => {
            let status = response.code.unwrap_or_default();
            let known = Known::scan(response.headers, &HeaderInterest::default());
            let connection = known
                .connection
                .map(|c| text(c).to_ascii_lowercase())
                .unwrap_or_default();
            let closes_connection = if response.version == Some(0) {
                !connection.contains("keep-alive")
            } else {
                connection.contains("close")
            };
            let next = if status == 101 {
                State::Opaque
            } else if status < 200
                || status == 204
                || status == 304
                || to_head_request == Some(true)
            {
                State::Head
            } else {
                known.body_framing().unwrap_or(State::UntilClose)
            };
            let head = ResponseHead {
                status,
                truncated: false,
                closes_connection,
            };
            Parsed::Complete(Head::Response(head), length, next)
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

fn is_http2_preface(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PRI * HTTP/2.0")
}

/// Whether a read starts like a head of this side: a status line or a request line.
fn looks_like_head(bytes: &[u8], side: Side) -> bool {
    match side {
        Side::Responses => bytes.starts_with(b"HTTP/1."),
        Side::Requests => {
            let Some(space) = bytes.iter().take(16).position(|&b| b == b' ') else {
                return false;
            };
            // A read may end right after the method (`GET `, a client writing its head in
            // pieces): the target comes with the next read.
            space > 0
                && bytes[..space]
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || *b == b'-')
                && bytes
                    .get(space + 1)
                    .is_none_or(|b| *b == b'/' || *b == b'*' || b.is_ascii_alphabetic())
        }
    }
}

/// The first line of a malformed head, when it is a request line of tokens: method, a target
/// of visible characters, `HTTP/` and a version.
fn request_line(bytes: &[u8]) -> Option<RequestLine> {
    let line_end = bytes.iter().position(|&b| b == b'\n')?;
    let line = trim_line(&bytes[..=line_end]);
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    let readable = parts.next().is_none()
        && !method.is_empty()
        && method.iter().all(token)
        && !target.is_empty()
        && target.iter().all(|b| b.is_ascii_graphic())
        && matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit());
    readable.then(|| RequestLine {
        method: method_text(&text(method)),
        target: shared_text(target),
    })
}

/// What the first line of a head cut by the capture window says. A request line cut before
/// its end (a URL longer than the window) gives its method and the target as far as it came.
fn first_line_head(bytes: &[u8], side: Side, interest: &HeaderInterest) -> Option<Head> {
    let line_end = bytes.iter().position(|&b| b == b'\n');
    let line = trim_line(&bytes[..line_end.map_or(bytes.len(), |end| end + 1)]);
    let mut parts = line.split(|&b| b == b' ');
    match side {
        Side::Requests => {
            let method = parts.next()?;
            let target = parts.next()?;
            let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
            if method.is_empty()
                || !method.iter().all(token)
                || target.is_empty()
                || !target.iter().all(|b| b.is_ascii_graphic() || *b >= 0x80)
            {
                return None;
            }
            match (parts.next(), line_end) {
                // A whole line: it must end with the version.
                (Some(version), Some(_)) if version.starts_with(b"HTTP/1.") => {}
                // A line cut inside the target, or right after it.
                (None, None) => {}
                (Some(version), None)
                    if b"HTTP/1.".starts_with(version) || version.starts_with(b"HTTP/1.") => {}
                _ => return None,
            }
            let rest = line_end.map_or(&[][..], |end| &bytes[end + 1..]);
            let noted_header = rest.split(|&b| b == b'\n').any(|line| {
                let name = line.split(|&b| b == b':').next().unwrap_or_default();
                interest
                    .presence
                    .iter()
                    .any(|c| c.as_bytes().eq_ignore_ascii_case(name))
            });
            let credential = cut_head_credential(rest, interest);
            Some(Head::Request(RequestHead {
                method: method_text(&text(method)),
                noted_header,
                target: shared_text(target),
                user_agent: None,
                id: None,
                conflicting_framing: false,
                credential,
                truncated: true,
                headers_unknown: true,
            }))
        }
        Side::Responses => {
            line_end?;
            let version = parts.next()?;
            if !version.starts_with(b"HTTP/1.") {
                return None;
            }
            let status = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
            Some(Head::Response(ResponseHead {
                status,
                truncated: true,
                closes_connection: false,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str) -> Head {
        Head::Request(RequestHead {
            method: method.to_owned().into(),
            target: target.into(),
            user_agent: None,
            noted_header: false,
            id: None,
            conflicting_framing: false,
            credential: None,
            truncated: false,
            headers_unknown: false,
        })
    }

    fn response(status: u16) -> Head {
        Head::Response(ResponseHead {
            status,
            truncated: false,
            closes_connection: false,
        })
    }

    #[test]
    fn a_head_split_down_to_one_byte_per_read() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: ua/1\r\n\r\n";
        let mut stream = Stream::new(Side::Requests);
        let mut heads = Vec::new();
        for byte in raw.iter() {
            heads.extend(stream.feed(std::slice::from_ref(byte), 0));
        }
        assert_eq!(heads.len(), 1);
        let Head::Request(head) = &heads[0] else {
            panic!()
        };
        assert_eq!(&*head.target, "/a?b=1");
        assert_eq!(head.user_agent.as_deref(), Some("ua/1"));
    }

    #[test]
    fn a_resynced_stream_takes_a_head_whose_first_read_ends_after_the_method() {
        let mut stream = Stream::new(Side::Requests);
        stream.resync();
        assert!(stream.feed(b"GET ", 0).is_empty());
        assert!(stream.feed(b"/after?k=1", 0).is_empty());
        assert_eq!(
            stream.feed(b" HTTP/1.1\r\nHost: t\r\n\r\n", 0),
            vec![request("GET", "/after?k=1")]
        );
    }

    #[test]
    fn invalid_utf8_in_a_header_value_becomes_the_replacement_character() {
        let mut stream = Stream::new(Side::Requests);
        let heads = stream.feed(b"GET /u HTTP/1.1\r\nUser-Agent: a\xffb\r\n\r\n", 0);
        let [Head::Request(head)] = heads.as_slice() else {
            panic!("{heads:?}")
        };
        assert_eq!(head.user_agent.as_deref(), Some("a\u{fffd}b"));
    }

    #[test]
    fn pipelined_requests_with_bodies() {
        let raw = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /y HTTP/1.1\r\n\r\n";
        let mut stream = Stream::new(Side::Requests);
        assert_eq!(
            stream.feed(raw, 0),
            vec![request("POST", "/x"), request("GET", "/y")]
        );
    }

    #[test]
    fn body_beyond_the_capture_window_is_skipped() {
        let mut stream = Stream::new(Side::Requests);
        let head = b"POST /up HTTP/1.1\r\nContent-Length: 10000\r\n\r\n";
        let mut first = head.to_vec();
        first.extend_from_slice(&[b'x'; 100]);
        // The read moved the head and 5000 body bytes; we saw the head and 100 of them.
        assert_eq!(stream.feed(&first, 4900), vec![request("POST", "/up")]);
        assert!(stream.feed(&[b'x'; 1024], 5000 - 1024).is_empty());
        assert_eq!(
            stream.feed(b"GET /next HTTP/1.1\r\n\r\n", 0),
            vec![request("GET", "/next")]
        );
    }

    #[test]
    fn chunked_response_with_trailers_then_next_response() {
        let mut stream = Stream::new(Side::Responses);
        stream.expect_response_to("GET");
        stream.expect_response_to("GET");
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(stream.feed(raw, 0), vec![response(200), response(404)]);
    }

    #[test]
    fn continue_is_not_the_answer_and_head_has_no_body() {
        let mut stream = Stream::new(Side::Responses);
        stream.expect_response_to("HEAD");
        stream.expect_response_to("GET");
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            stream.feed(raw, 0),
            vec![response(100), response(200), response(204)]
        );
    }

    #[test]
    fn head_cut_by_capture_window_is_flagged_then_resyncs() {
        let mut stream = Stream::new(Side::Requests);
        let heads = stream.feed(b"GET /long?q=1 HTTP/1.1\r\nCookie: aaaa", 5000);
        let Head::Request(head) = &heads[0] else {
            panic!()
        };
        assert!(head.truncated);
        assert_eq!(&*head.target, "/long?q=1");
        assert!(stream.feed(b"aaaaaaaaa\r\n\r\n", 0).is_empty());
        assert_eq!(
            stream.feed(b"GET /b HTTP/1.1\r\n\r\n", 0),
            vec![request("GET", "/b")]
        );
    }

    fn interest() -> Arc<HeaderInterest> {
        Arc::new(HeaderInterest {
            values: vec!["x-request-id".to_owned(), "traceparent".to_owned()],
            presence: vec!["apikey".to_owned()],
            keys: vec!["apikey".to_owned()],
        })
    }

    fn credential_of(heads: &[Head]) -> Option<Credential> {
        match heads {
            [Head::Request(head)] => head.credential.clone(),
            _ => panic!("{heads:?}"),
        }
    }

    #[test]
    fn authorization_wins_over_an_api_key_and_keeps_no_secret() {
        let mut stream = Stream::with_interest(Side::Requests, interest());
        // alice:pw
        let heads = stream.feed(
            b"GET /a HTTP/1.1\r\napikey: k1\r\nAuthorization: Basic YWxpY2U6cHc=\r\n\r\n",
            0,
        );
        assert_eq!(
            credential_of(&heads),
            Some(Credential::BasicUser(Arc::from("alice")))
        );
        let heads = stream.feed(b"GET /a HTTP/1.1\r\nAPIKEY: k1\r\n\r\n", 0);
        assert_eq!(
            credential_of(&heads),
            Some(Credential::Fingerprint(credential::fingerprint(b"k1")))
        );
        // A scheme that names nobody leaves the API key to say who calls.
        let heads = stream.feed(
            b"GET /a HTTP/1.1\r\nAuthorization: Negotiate abc\r\napikey: k1\r\n\r\n",
            0,
        );
        assert_eq!(
            credential_of(&heads),
            Some(Credential::Fingerprint(credential::fingerprint(b"k1")))
        );
    }

    #[test]
    fn a_head_cut_inside_its_credential_says_so() {
        let mut stream = Stream::with_interest(Side::Requests, interest());
        // 1,024 bytes of a head whose token the window cuts: the read moved more than came.
        let mut head = b"GET /cut HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer eyJ".to_vec();
        head.resize(1024, b'a');
        let heads = stream.feed(&head, 4000);
        assert_eq!(credential_of(&heads), Some(Credential::Cut));
        // A whole credential line before the cut is read.
        let mut stream = Stream::with_interest(Side::Requests, interest());
        let mut head = b"GET /cut HTTP/1.1\r\napikey: k1\r\nCookie: ".to_vec();
        head.resize(1024, b'c');
        let heads = stream.feed(&head, 4000);
        assert_eq!(
            credential_of(&heads),
            Some(Credential::Fingerprint(credential::fingerprint(b"k1")))
        );
    }

    #[test]
    fn noted_headers_are_noticed_never_kept() {
        let mut stream = Stream::with_interest(Side::Requests, interest());
        let heads = stream.feed(b"GET /a HTTP/1.1\r\napikey: secret\r\n\r\n", 0);
        assert!(matches!(&heads[0], Head::Request(r) if r.noted_header));
        assert!(!format!("{heads:?}").contains("secret"));
        let heads = stream.feed(b"GET /a HTTP/1.1\r\nother: x\r\n\r\n", 0);
        assert!(matches!(&heads[0], Head::Request(r) if !r.noted_header));
    }

    #[test]
    fn id_headers_keep_their_whole_value() {
        let mut stream = Stream::with_interest(Side::Requests, interest());
        let heads = stream.feed(
            b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 \r\n\r\n",
            0,
        );
        assert!(matches!(&heads[0], Head::Request(r) if r.id.as_deref()
            == Some("traceparent:00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")));
        let heads = stream.feed(
            b"GET / HTTP/1.1\r\ntraceparent: 00-1-2-01\r\nX-Request-ID: abc\r\n\r\n",
            0,
        );
        assert!(matches!(&heads[0], Head::Request(r)
            if r.id.as_deref() == Some("x-request-id:abc")));
    }

    #[test]
    fn a_request_line_longer_than_the_window_gives_a_truncated_head() {
        let mut stream = Stream::new(Side::Requests);
        // nginx reads 1024 bytes of a 6,000-byte request line, then the rest in a larger
        // buffer, of which the window holds 1024.
        let mut first = b"GET /api/x?q=".to_vec();
        first.resize(1024, b'a');
        assert!(stream.feed(&first, 0).is_empty());
        let heads = stream.feed(&[b'a'; 1024], 4000);
        let [Head::Request(head)] = heads.as_slice() else {
            panic!("{heads:?}")
        };
        assert!(head.truncated);
        assert_eq!(&*head.method, "GET");
        assert_eq!(head.target.len(), 2048 - 4);
        assert!(head.target.starts_with("/api/x?q=aaaa"));
        assert_eq!(
            stream.feed(b"GET /b HTTP/1.1\r\n\r\n", 0),
            vec![request("GET", "/b")]
        );
        // Bytes that are no request line give no request.
        let mut other = Stream::new(Side::Requests);
        assert_eq!(
            other.feed(b"\x16\x03\x01zzzz", 3000),
            vec![Head::Unreadable(None)]
        );
    }

    #[test]
    fn both_lengths_are_flagged_and_chunked_wins() {
        let mut stream = Stream::new(Side::Requests);
        let heads = stream.feed(
            b"POST /s HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
            0,
        );
        assert_eq!(heads.len(), 2);
        assert!(matches!(&heads[0], Head::Request(r) if r.conflicting_framing));
        assert!(matches!(&heads[1], Head::Request(r) if &*r.target == "/next"));
    }

    #[test]
    fn a_websocket_upgrade_is_answered_then_left_alone() {
        let mut requests = Stream::new(Side::Requests);
        let mut responses = Stream::new(Side::Responses);
        let heads = requests.feed(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
            0,
        );
        assert_eq!(heads.len(), 1);
        assert!(requests.is_upgrading());
        responses.expect_response_to("GET");
        let heads = responses.feed(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x82\x01x",
            0,
        );
        assert_eq!(heads, vec![response(101)]);
        assert!(responses.is_opaque());
        assert!(requests.upgrade_answered(true).is_empty());
        assert!(requests.is_opaque());
        assert!(requests.feed(b"GET /x HTTP/1.1\r\n\r\n", 0).is_empty());
        assert!(responses.feed(b"HTTP/1.1 200 OK\r\n\r\n", 0).is_empty());
    }

    #[test]
    fn a_refused_upgrade_goes_on_with_the_bytes_held_meanwhile() {
        let mut requests = Stream::new(Side::Requests);
        let heads = requests.feed(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /a",
            0,
        );
        assert_eq!(heads.len(), 1);
        assert!(requests.feed(b" HTTP/1.1\r\n\r\n", 0).is_empty());
        assert_eq!(requests.upgrade_answered(false), vec![request("GET", "/a")]);
        assert_eq!(
            requests.feed(b"GET /b HTTP/1.1\r\n\r\n", 0),
            vec![request("GET", "/b")]
        );
    }

    #[test]
    fn an_answer_that_closes_says_so() {
        let mut responses = Stream::new(Side::Responses);
        for _ in 0..3 {
            responses.expect_response_to("GET");
        }
        let heads = responses.feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\
              HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n\
              HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            0,
        );
        let closes: Vec<bool> = heads
            .iter()
            .map(|h| matches!(h, Head::Response(r) if r.closes_connection))
            .collect();
        assert_eq!(closes, [false, true, true]);
    }

    #[test]
    fn an_incomplete_head_the_gateway_answers_is_taken_as_unreadable() {
        let mut stream = Stream::new(Side::Requests);
        assert!(stream.take_incomplete().is_none());
        assert!(stream.feed(b"PUT /u HTTP/1.1\r\nContent-Le", 0).is_empty());
        assert_eq!(
            stream.take_incomplete(),
            Some(Head::Unreadable(Some(RequestLine {
                method: Text::Static("PUT"),
                target: "/u".into()
            })))
        );
        assert_eq!(stream.buffered(), 0);
        assert!(stream.take_incomplete().is_none());
    }

    #[test]
    fn non_http_is_unreadable_once_and_http2_is_left_alone() {
        let mut stream = Stream::new(Side::Requests);
        assert_eq!(
            stream.feed(b"\x16\x03\x01\x02\x00garbage", 0),
            vec![Head::Unreadable(None)]
        );
        assert!(stream.feed(b"more garbage", 0).is_empty());
        let mut h2 = Stream::new(Side::Requests);
        assert!(h2.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0).is_empty());
        assert!(h2.is_opaque());
    }

    #[test]
    fn a_malformed_head_is_unreadable_and_the_next_one_is_read() {
        let mut stream = Stream::new(Side::Requests);
        assert_eq!(
            stream.feed(b"GET /a?b HTTP/1.1\r\nBad Header\r\n\r\n", 0),
            vec![Head::Unreadable(Some(RequestLine {
                method: Text::Static("GET"),
                target: "/a?b".into()
            }))]
        );
        assert_eq!(
            stream.feed(b"GET /x\x01 HTTP/1.1\r\nBad Header\r\n\r\n", 0),
            vec![Head::Unreadable(None)],
            "a control byte in the target: no request line"
        );
        assert_eq!(
            stream.feed(b"GET /next HTTP/1.1\r\n\r\n", 0),
            vec![request("GET", "/next")]
        );
    }

    #[test]
    fn a_head_larger_than_any_gateway_takes_is_unreadable() {
        let mut stream = Stream::new(Side::Requests);
        assert!(stream.feed(b"GET / HTTP/1.1\r\n", 0).is_empty());
        let cookie = [b'c'; 1000];
        let mut heads = Vec::new();
        for _ in 0..70 {
            heads.extend(stream.feed(&cookie, 0));
        }
        assert_eq!(heads, vec![Head::Unreadable(None)]);
        assert_eq!(stream.buffered(), 0);
    }
}
