//! HTTP/2 (RFC 9113) for one direction of one connection: the client preface, frames
//! reassembled across reads, header blocks (HEADERS and CONTINUATION) decoded with HPACK
//! ([`super::hpack`], its table kept for this direction), turned into stream events. DATA is
//! framed by its length and never kept; bytes the capture window left out are skipped by the
//! frames' lengths. Bytes lost where a frame header stood leave the frames unfindable: the
//! direction then says so and stays silent.
use std::sync::Arc;

use super::{
    credential,
    hpack::{self, Decoder, Field},
    http1::{HeaderInterest, RequestHead, Side},
};
use crate::text::Text;

/// What a client sends first, on a cleartext connection with prior knowledge and after TLS's
/// ALPN chose h2 (the kernel's programs look for it too).
pub use access_log_common::HTTP2_PREFACE as PREFACE;

const FRAME_HEADER: usize = 9;
/// The largest frame kept whole (header blocks); SETTINGS_MAX_FRAME_SIZE's largest is 16 MiB,
/// and no gateway accepts header blocks near it.
const MAX_BLOCK: usize = 256 * 1024;

mod frame {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// A gRPC outcome, from a response's trailers (or a trailers-only response).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcStatus {
    pub code: u32,
    pub message: Option<String>,
}

/// What one direction's bytes said about its streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request's header block (client to gateway). Fields that could not be decoded leave
    /// `head.truncated` set and their place empty.
    Request {
        stream: u32,
        head: RequestHead,
        end_stream: bool,
    },
    /// A response's final header block (gateway to client; 1xx are not final).
    Response {
        stream: u32,
        status: Option<u16>,
        end_stream: bool,
        /// A gRPC answer (`content-type: application/grpc...`): its outcome comes in
        /// trailers, or in this block (trailers-only).
        grpc_call: bool,
        /// gRPC's trailers-only form: the outcome in the response's own headers.
        grpc: Option<GrpcStatus>,
    },
    /// A header block after the response's: its trailers.
    Trailers {
        stream: u32,
        grpc: Option<GrpcStatus>,
    },
    /// DATA with END_STREAM: the stream's message ended.
    StreamEnd { stream: u32 },
    /// RST_STREAM: the stream ended with this error code (0x8 CANCEL: the client left).
    Reset { stream: u32, code: u32 },
    /// GOAWAY: streams above `last_stream` were not processed.
    GoAway { last_stream: u32, code: u32 },
    /// A header block whose bytes were not all seen: its stream's fields are unknown.
    Unreadable { stream: u32 },
}

/// A header block under way: HEADERS seen, CONTINUATIONs expected.
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
    /// Bytes of it were not seen.
    broken: bool,
}

pub struct Direction {
    side: Side,
    interest: Arc<HeaderInterest>,
    decoder: Decoder,
    /// The client preface, still to come (requests side, from the connection's start).
    preface_left: usize,
    /// Bytes of the frame being read (its header first).
    frame: Vec<u8>,
    /// Payload bytes of the current frame still to pass over without keeping (DATA).
    skip: usize,
    /// The type, flags and stream of the frame being skipped (a DATA frame's END_STREAM).
    skipping: Option<(u8, u8, u32)>,
    block: Option<Block>,
    /// Streams whose head (request or final response) was seen, the newest 1,024: a later
    /// block on one is its trailers.
    headed: Vec<u32>,
    /// Bytes of the frame being read were not seen (they stand as zeros in `frame`).
    frame_broken: bool,
    /// Frame boundaries were lost: nothing more can be read.
    lost: bool,
}

impl Direction {
    /// One direction of a connection seen from its start (`from_start`: the preface comes
    /// first on the requests side) or joined mid-stream.
    pub fn new(side: Side, interest: Arc<HeaderInterest>, from_start: bool) -> Direction {
        Direction {
            side,
            interest,
            decoder: Decoder::new(!from_start),
            preface_left: if from_start && side == Side::Requests {
                PREFACE.len()
            } else {
                0
            },
            frame: Vec::new(),
            skip: 0,
            skipping: None,
            block: None,
            headed: Vec::new(),
            frame_broken: false,
            lost: false,
        }
    }

    /// Frame boundaries were lost (bytes missing where a frame header stood).
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Bytes of this direction were lost where frames may have stood (records the kernel
    /// could not deliver): nothing more is read until the frames are found again.
    pub fn lose_frames(&mut self) {
        self.lost = true;
    }

    /// The next bytes of this direction: `captured`, then `missing` bytes not seen.
    pub fn feed(&mut self, captured: &[u8], missing: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let mut bytes = captured;
        while !bytes.is_empty() && !self.lost {
            bytes = self.step(bytes, &mut events);
        }
        if missing > 0 && !self.lost {
            self.miss(missing, &mut events);
        }
        events
    }

    /// Consumes what it can of `bytes`; returns the rest.
    fn step<'b>(&mut self, bytes: &'b [u8], events: &mut Vec<Event>) -> &'b [u8] {
        if self.preface_left > 0 {
            let start = PREFACE.len() - self.preface_left;
            let take = self.preface_left.min(bytes.len());
            if bytes[..take] != PREFACE[start..start + take] {
                self.lost = true;
                return &[];
            }
            self.preface_left -= take;
            return &bytes[take..];
        }
        if self.skip > 0 {
            let take = self.skip.min(bytes.len());
            self.skip -= take;
            if self.skip == 0 {
                self.end_skipped(events);
            }
            return &bytes[take..];
        }
        // A frame header, then (for kept frames) its payload.
        if self.frame.len() < FRAME_HEADER {
            let take = (FRAME_HEADER - self.frame.len()).min(bytes.len());
            self.frame.extend_from_slice(&bytes[..take]);
            if self.frame.len() == FRAME_HEADER {
                let (length, kind, flags, stream) = header(&self.frame);
                if kind == frame::DATA || length > MAX_BLOCK {
                    // Passed over by its length, never kept (a header block that large is
                    // lost, and the table with it).
                    if kind != frame::DATA {
                        self.decoder.lose_track();
                    }
                    self.frame.clear();
                    self.skipping = Some((kind, flags, stream));
                    self.skip = length;
                    if length == 0 {
                        self.end_skipped(events);
                    }
                } else if length == 0 {
                    let frame = std::mem::take(&mut self.frame);
                    self.handle(&frame, events);
                }
            }
            return &bytes[take..];
        }
        let (length, ..) = header(&self.frame);
        let want = FRAME_HEADER + length - self.frame.len();
        let take = want.min(bytes.len());
        self.frame.extend_from_slice(&bytes[..take]);
        if take == want {
            let frame = std::mem::take(&mut self.frame);
            self.handle(&frame, events);
        }
        &bytes[take..]
    }

    /// `count` bytes were not seen: inside the current frame they are passed over (a kept
    /// frame is marked broken, and a header block's loss puts the HPACK table out of step);
    /// past its end the next frame's header is unknown.
    fn miss(&mut self, count: u64, events: &mut Vec<Event>) {
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if self.preface_left > 0 {
            self.lost = true;
        } else if self.skip > 0 {
            if count <= self.skip {
                self.skip -= count;
                if self.skip == 0 {
                    self.end_skipped(events);
                }
            } else {
                self.lost = true;
            }
        } else if self.frame.len() >= FRAME_HEADER {
            let (length, ..) = header(&self.frame);
            let left = FRAME_HEADER + length - self.frame.len();
            if count > left {
                self.lost = true;
                return;
            }
            self.frame.resize(self.frame.len() + count, 0);
            self.frame_broken = true;
            if count == left {
                let frame = std::mem::take(&mut self.frame);
                self.handle(&frame, events);
            }
        } else {
            // Bytes lost where a frame header stood.
            self.lost = true;
        }
    }

    fn end_skipped(&mut self, events: &mut Vec<Event>) {
        if let Some((kind, flags, stream)) = self.skipping.take() {
            if kind == frame::DATA && flags & flag::END_STREAM != 0 {
                events.push(Event::StreamEnd { stream });
            }
            if matches!(kind, frame::HEADERS | frame::CONTINUATION) {
                self.block = None;
                events.push(Event::Unreadable { stream });
            }
        }
    }

    /// One whole frame (header and payload).
    fn handle(&mut self, frame: &[u8], events: &mut Vec<Event>) {
        let (_, kind, flags, stream) = header(frame);
        let payload = &frame[FRAME_HEADER..];
        let broken = std::mem::take(&mut self.frame_broken);
        if broken
            && matches!(
                kind,
                frame::HEADERS | frame::CONTINUATION | frame::PUSH_PROMISE
            )
        {
            // Its insertions into the table, if any, were not seen.
            self.decoder.lose_track();
        }
        match kind {
            frame::HEADERS => {
                let fragment = headers_fragment(payload, flags);
                self.block = Some(Block {
                    stream,
                    end_stream: flags & flag::END_STREAM != 0,
                    bytes: fragment.map(<[u8]>::to_vec).unwrap_or_default(),
                    broken: broken || fragment.is_none(),
                });
                if flags & flag::END_HEADERS != 0 {
                    self.finish_block(events);
                }
            }
            frame::CONTINUATION => {
                if let Some(block) = &mut self.block {
                    if broken || block.bytes.len() + payload.len() > MAX_BLOCK {
                        block.broken = true;
                    } else {
                        block.bytes.extend_from_slice(payload);
                    }
                }
                if flags & flag::END_HEADERS != 0 {
                    self.finish_block(events);
                }
            }
            frame::PUSH_PROMISE if !broken => {
                // Its header block changes the table like any other: decode and drop it.
                if let Some(fragment) = promise_fragment(payload, flags) {
                    if self.decoder.decode(fragment).is_err() {
                        self.decoder.lose_track();
                    }
                }
            }
            frame::RST_STREAM if !broken && payload.len() >= 4 => events.push(Event::Reset {
                stream,
                code: u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]),
            }),
            frame::GOAWAY if !broken && payload.len() >= 8 => events.push(Event::GoAway {
                last_stream: u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff,
                code: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
            }),
            _ => {}
        }
    }

    /// A whole header block: decoded, then a request, a response or trailers.
    fn finish_block(&mut self, events: &mut Vec<Event>) {
        let Some(block) = self.block.take() else {
            return;
        };
        let stream = block.stream;
        if block.broken {
            events.push(Event::Unreadable { stream });
            return;
        }
        let fields = match self.decoder.decode(&block.bytes) {
            Ok(fields) => fields,
            Err(_) => {
                self.decoder.lose_track();
                events.push(Event::Unreadable { stream });
                return;
            }
        };
        match self.side {
            Side::Requests => {
                if !self.first_head(stream) {
                    // A second block from the client: its trailers (gRPC clients send none).
                    return;
                }
                events.push(Event::Request {
                    stream,
                    head: self.request_head(&fields),
                    end_stream: block.end_stream,
                });
            }
            Side::Responses => {
                let status = pseudo(&fields, ":status").and_then(|s| s.parse::<u16>().ok());
                let grpc = grpc_status(&fields);
                let grpc_call = pseudo(&fields, "content-type")
                    .is_some_and(|t| t.starts_with("application/grpc"));
                if status.is_some_and(|s| (100..200).contains(&s)) {
                    // Informational: the response's head is still to come.
                    return;
                }
                if !self.first_head(stream) {
                    events.push(Event::Trailers { stream, grpc });
                    return;
                }
                events.push(Event::Response {
                    stream,
                    status,
                    end_stream: block.end_stream,
                    grpc_call,
                    grpc,
                });
            }
        }
    }

    /// Whether this block is `stream`'s first head (noted if so).
    fn first_head(&mut self, stream: u32) -> bool {
        if self.headed.contains(&stream) {
            return false;
        }
        self.headed.push(stream);
        if self.headed.len() > 1024 {
            self.headed.remove(0);
        }
        true
    }

    fn request_head(&self, fields: &[Field]) -> RequestHead {
        let unknown = fields.iter().any(|f| matches!(f, Field::Unknown));
        let method = pseudo(fields, ":method");
        let path = pseudo(fields, ":path");
        let value_of = |wanted: &str| {
            fields.iter().find_map(|field| match field {
                Field::Known { name, value } if name.as_slice() == wanted.as_bytes() => {
                    Some(String::from_utf8_lossy(value).into_owned())
                }
                _ => None,
            })
        };
        let id = self.interest.values.iter().find_map(|name| {
            let value = value_of(name)?;
            let value = value.trim();
            (!value.is_empty()).then(|| Arc::from(format!("{name}:{value}")))
        });
        let noted_header = self
            .interest
            .presence
            .iter()
            .any(|name| value_of(name).is_some());
        let truncated = method.is_none() || path.is_none();
        // Authorization first, then the first API-key header, as for HTTP/1.
        let credential = fields
            .iter()
            .filter_map(|field| match field {
                Field::Known { name, value } => {
                    let authorization = name.as_slice() == credential::AUTHORIZATION.as_bytes();
                    let keys: &[String] = if authorization {
                        &[]
                    } else {
                        &self.interest.keys
                    };
                    credential::from_header(name, value, keys).map(|c| (!authorization, c))
                }
                _ => None,
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, credential)| credential);
        RequestHead {
            method: method.map(Text::from).unwrap_or(Text::Static("")),
            target: Arc::from(path.unwrap_or_default()),
            user_agent: value_of("user-agent").map(Arc::from),
            noted_header,
            id,
            conflicting_framing: false,
            credential,
            truncated,
            headers_unknown: unknown,
        }
    }
}

/// Whether `bytes` are whole HTTP/2 frames, one or more, and nothing else: how a connection
/// joined mid-stream, or whose frames were lost, finds frame boundaries again, from a call
/// whose bytes were all captured. Each frame must be of a type RFC 9113 defines, on a stream
/// its type allows, within the largest frame size.
pub fn frames_fit(bytes: &[u8]) -> bool {
    const MAX_FRAME: usize = 1 << 24;
    let mut rest = bytes;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        if rest.len() < FRAME_HEADER || rest[5] & 0x80 != 0 {
            return false;
        }
        let (length, kind, _, stream) = header(rest);
        let on_stream = match kind {
            frame::DATA
            | frame::HEADERS
            | frame::PRIORITY
            | frame::RST_STREAM
            | frame::PUSH_PROMISE
            | frame::CONTINUATION => stream != 0,
            frame::SETTINGS | frame::PING | frame::GOAWAY => stream == 0,
            frame::WINDOW_UPDATE => true,
            _ => false,
        };
        if !on_stream || length >= MAX_FRAME || rest.len() < FRAME_HEADER + length {
            return false;
        }
        rest = &rest[FRAME_HEADER + length..];
    }
    true
}

/// Masks, in place and keeping every length, the values of the header fields that
/// `sensitive` names in the HTTP/2 frames `bytes` starts with (a captured call, or a run of
/// one: the client's preface first, or a frame header): Huffman-coded values become `X`s
/// (each byte 0xfc, the code of `X`), others `X`s. Walks frame headers while they are valid
/// and stops at the first that is not, or whose payload was not captured. Returns how many
/// values it masked.
pub fn mask_sensitive(bytes: &mut [u8], sensitive: &dyn Fn(&[u8]) -> bool) -> usize {
    let mut at = if bytes.starts_with(PREFACE) {
        PREFACE.len()
    } else {
        0
    };
    let mut masked = 0;
    while bytes.len() >= at + FRAME_HEADER {
        let (length, kind, flags, stream) = header(&bytes[at..]);
        if kind > frame::CONTINUATION || bytes[at + 5] & 0x80 != 0 || length > 1 << 24 {
            break;
        }
        let payload = at + FRAME_HEADER;
        let Some(end) = payload
            .checked_add(length)
            .filter(|end| *end <= bytes.len())
        else {
            break;
        };
        let (start, stop) = match kind {
            frame::HEADERS if stream != 0 => {
                let mut start = payload;
                let mut stop = end;
                if flags & flag::PADDED != 0 {
                    let pad = bytes.get(payload).copied().unwrap_or(0) as usize;
                    start += 1;
                    stop = stop.saturating_sub(pad).max(start);
                }
                if flags & flag::PRIORITY != 0 {
                    start = (start + 5).min(stop);
                }
                (start, stop)
            }
            frame::CONTINUATION if stream != 0 => (payload, end),
            _ => (end, end),
        };
        for (range, huffman) in hpack::sensitive_values(&bytes[start..stop], sensitive) {
            let value = &mut bytes[start + range.start..start + range.end];
            value.fill(if huffman { 0xfc } else { b'X' });
            masked += 1;
        }
        at = end;
    }
    masked
}

/// (payload length, type, flags, stream id) of a frame header.
fn header(bytes: &[u8]) -> (usize, u8, u8, u32) {
    let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
    let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
    (length, bytes[3], bytes[4], stream)
}

/// A HEADERS payload's header block fragment (without padding and priority).
fn headers_fragment(payload: &[u8], flags: u8) -> Option<&[u8]> {
    let (mut start, mut end) = (0, payload.len());
    if flags & flag::PADDED != 0 {
        let pad = *payload.first()? as usize;
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if flags & flag::PRIORITY != 0 {
        start += 5;
    }
    payload.get(start..end)
}

/// A PUSH_PROMISE payload's header block fragment.
fn promise_fragment(payload: &[u8], flags: u8) -> Option<&[u8]> {
    let (mut start, mut end) = (4, payload.len());
    if flags & flag::PADDED != 0 {
        let pad = *payload.first()? as usize;
        start += 1;
        end = end.checked_sub(pad)?;
    }
    payload.get(start..end)
}

/// A known field's value, as text.
fn pseudo(fields: &[Field], name: &str) -> Option<String> {
    fields.iter().find_map(|field| match field {
        Field::Known { name: n, value } if n.as_slice() == name.as_bytes() => {
            Some(String::from_utf8_lossy(value).into_owned())
        }
        _ => None,
    })
}

/// `grpc-status` and `grpc-message` (percent-encoded, RFC 3986) when present.
fn grpc_status(fields: &[Field]) -> Option<GrpcStatus> {
    let code = pseudo(fields, "grpc-status")?.trim().parse().ok()?;
    Some(GrpcStatus {
        code,
        message: pseudo(fields, "grpc-message").map(|m| percent_decode(&m)),
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |byte: u8| (byte as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[index + 1]), hex(bytes[index + 2])) {
                out.push((high * 16 + low) as u8);
                index += 3;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use loona_hpack::Encoder;

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = (payload.len() as u32).to_be_bytes();
        let mut bytes = vec![length[1], length[2], length[3], kind, flags];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn headers(encoder: &mut Encoder, stream: u32, flags: u8, list: &[(&str, &str)]) -> Vec<u8> {
        let block = encoder.encode(list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        frame(frame::HEADERS, flags | flag::END_HEADERS, stream, &block)
    }

    fn get(path: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "GET".into()),
            (":scheme", "https".into()),
            (":authority", "gateway".into()),
            (":path", path.into()),
            ("user-agent", "h2-test/1.0".into()),
            ("x-request-id", format!("id-{path}")),
        ]
    }

    fn request_frames(encoder: &mut Encoder, stream: u32, path: &str) -> Vec<u8> {
        let list = get(path);
        let borrowed: Vec<(&str, &str)> = list.iter().map(|(n, v)| (*n, v.as_str())).collect();
        headers(encoder, stream, flag::END_STREAM, &borrowed)
    }

    #[test]
    fn credential_values_are_masked_in_captured_frames_and_nothing_else() {
        let mut encoder = Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(frame::SETTINGS, 0, 0, &[]));
        bytes.extend(headers(
            &mut encoder,
            1,
            flag::END_STREAM,
            &[
                (":method", "GET"),
                (":path", "/a"),
                (
                    "authorization",
                    "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.c2ln",
                ),
                ("apikey", "key-123"),
                ("x-request-id", "id-1"),
            ],
        ));
        // A padded HEADERS frame carrying a never-indexed, raw literal with the static name.
        let mut block = vec![0x82, 0x84, 0x1f, 0x08, 0x09];
        block.extend_from_slice(b"Basic abc");
        let mut payload = vec![3u8];
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0, 0]);
        bytes.extend(frame(
            frame::HEADERS,
            flag::END_STREAM | flag::END_HEADERS | flag::PADDED,
            3,
            &payload,
        ));
        let length = bytes.len();
        let sensitive = |name: &[u8]| name == b"authorization" || name == b"apikey";
        assert_eq!(mask_sensitive(&mut bytes, &sensitive), 3);
        assert_eq!(bytes.len(), length);
        // The masked block still decodes, to X's where the credentials were.
        let mut decoder = Decoder::new(false);
        let start = PREFACE.len() + FRAME_HEADER;
        let (block_len, ..) = header(&bytes[start..]);
        let block = &bytes[start + FRAME_HEADER..start + FRAME_HEADER + block_len];
        let fields = decoder.decode(block).expect("a masked block decodes");
        let value = |wanted: &str| {
            fields.iter().find_map(|f| match f {
                Field::Known { name, value } if name == wanted.as_bytes() => {
                    Some(String::from_utf8_lossy(value).into_owned())
                }
                _ => None,
            })
        };
        let authorization = value("authorization").unwrap();
        assert!(!authorization.is_empty() && authorization.bytes().all(|b| b == b'X'));
        assert!(value("apikey").unwrap().bytes().all(|b| b == b'X'));
        assert_eq!(value("x-request-id").as_deref(), Some("id-1"));
        assert_eq!(value(":path").as_deref(), Some("/a"));
        // The raw literal of stream 3 is X'd in place.
        assert!(bytes.windows(9).any(|w| w == b"XXXXXXXXX"));
        assert!(!bytes.windows(9).any(|w| w == b"Basic abc"));
        // HTTP/1 bytes are no frames: left alone.
        let mut text = b"GET / HTTP/1.1\r\nAuthorization: Basic abc\r\n\r\n".to_vec();
        assert_eq!(mask_sensitive(&mut text, &sensitive), 0);
    }

    fn interest() -> Arc<HeaderInterest> {
        Arc::new(HeaderInterest {
            values: vec!["x-request-id".into()],
            presence: vec!["authorization".into()],
            keys: vec!["apikey".into()],
        })
    }

    /// (stream, target, headers unknown) of each request.
    fn requests(events: &[Event]) -> Vec<(u32, String, bool)> {
        events
            .iter()
            .filter_map(|event| match event {
                Event::Request { stream, head, .. } => {
                    Some((*stream, head.target.to_string(), head.headers_unknown))
                }
                _ => None,
            })
            .collect()
    }

    /// A client's connection: the preface, SETTINGS, then `count` GET streams.
    fn client_bytes(count: u32) -> Vec<u8> {
        let mut encoder = Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        for index in 0..count {
            bytes.extend(request_frames(
                &mut encoder,
                1 + 2 * index,
                &format!("/item/{index}"),
            ));
        }
        bytes
    }

    #[test]
    fn a_hundred_streams_in_one_read_and_byte_by_byte() {
        let bytes = client_bytes(100);
        let mut whole = Direction::new(Side::Requests, interest(), true);
        let events = whole.feed(&bytes, 0);
        let seen = requests(&events);
        assert_eq!(seen.len(), 100);
        for (index, (stream, path, truncated)) in seen.iter().enumerate() {
            assert_eq!(*stream, 1 + 2 * index as u32);
            assert_eq!(path, &format!("/item/{index}"));
            assert!(!truncated);
        }
        let mut drip = Direction::new(Side::Requests, interest(), true);
        let dripped: Vec<Event> = bytes.iter().flat_map(|b| drip.feed(&[*b], 0)).collect();
        assert_eq!(dripped, events);
        let Event::Request { head, .. } = &events[7] else {
            panic!("{:?}", events[7]);
        };
        assert_eq!(&*head.method, "GET");
        assert_eq!(head.user_agent.as_deref(), Some("h2-test/1.0"));
        assert_eq!(head.id.as_deref(), Some("x-request-id:id-/item/7"));
        assert!(!head.noted_header);
    }

    #[test]
    fn responses_data_and_grpc_trailers() {
        let mut encoder = Encoder::new();
        let mut bytes = frame(4, 0, 0, &[]);
        bytes.extend(headers(&mut encoder, 1, 0, &[(":status", "200")]));
        bytes.extend(frame(frame::DATA, 0, 1, b"hello"));
        bytes.extend(frame(frame::DATA, flag::END_STREAM, 1, b""));
        bytes.extend(headers(
            &mut encoder,
            3,
            0,
            &[(":status", "200"), ("content-type", "application/grpc")],
        ));
        bytes.extend(frame(frame::DATA, 0, 3, &[0, 0, 0, 0, 2, 8, 1]));
        bytes.extend(headers(
            &mut encoder,
            3,
            flag::END_STREAM,
            &[("grpc-status", "5"), ("grpc-message", "no%20such%20order")],
        ));
        // Trailers-only: the outcome in the only block.
        bytes.extend(headers(
            &mut encoder,
            5,
            flag::END_STREAM,
            &[(":status", "200"), ("grpc-status", "16")],
        ));
        bytes.extend(frame(frame::RST_STREAM, 0, 7, &8u32.to_be_bytes()));
        let mut goaway = 5u32.to_be_bytes().to_vec();
        goaway.extend(0u32.to_be_bytes());
        bytes.extend(frame(frame::GOAWAY, 0, 0, &goaway));
        let mut direction = Direction::new(Side::Responses, interest(), true);
        let events = direction.feed(&bytes, 0);
        assert_eq!(
            events,
            vec![
                Event::Response {
                    stream: 1,
                    status: Some(200),
                    end_stream: false,
                    grpc_call: false,
                    grpc: None
                },
                Event::StreamEnd { stream: 1 },
                Event::Response {
                    stream: 3,
                    status: Some(200),
                    end_stream: false,
                    grpc_call: true,
                    grpc: None
                },
                Event::Trailers {
                    stream: 3,
                    grpc: Some(GrpcStatus {
                        code: 5,
                        message: Some("no such order".into())
                    })
                },
                Event::Response {
                    stream: 5,
                    status: Some(200),
                    end_stream: true,
                    grpc_call: false,
                    grpc: Some(GrpcStatus {
                        code: 16,
                        message: None
                    })
                },
                Event::Reset { stream: 7, code: 8 },
                Event::GoAway {
                    last_stream: 5,
                    code: 0
                },
            ]
        );
    }

    #[test]
    fn data_beyond_the_capture_window_is_passed_over_by_its_length() {
        let mut encoder = Encoder::new();
        let mut direction = Direction::new(Side::Responses, interest(), true);
        let mut first = headers(&mut encoder, 1, 0, &[(":status", "200")]);
        let body = vec![b'x'; 10_000];
        let data = frame(frame::DATA, flag::END_STREAM, 1, &body);
        // The read holds the head and the DATA frame; 100 bytes of it were captured.
        first.extend_from_slice(&data[..100]);
        let events = direction.feed(&first, (data.len() - 100) as u64);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[1], Event::StreamEnd { stream: 1 });
        // The next read is read as it comes.
        let next = headers(&mut encoder, 3, flag::END_STREAM, &[(":status", "404")]);
        let events = direction.feed(&next, 0);
        assert!(matches!(
            events[0],
            Event::Response {
                stream: 3,
                status: Some(404),
                ..
            }
        ));
    }

    #[test]
    fn a_header_block_with_bytes_lost_is_unreadable_and_never_wrong_after() {
        let mut encoder = Encoder::new();
        let mut direction = Direction::new(Side::Requests, interest(), true);
        let bytes = client_bytes(0);
        direction.feed(&bytes, 0);
        let lossy = request_frames(&mut encoder, 1, "/first");
        // Its last 10 bytes were not captured (they added x-request-id to the table).
        let events = direction.feed(&lossy[..lossy.len() - 10], 10);
        assert_eq!(events, vec![Event::Unreadable { stream: 1 }]);
        // The next request refers to entries that block inserted: unknown, not wrong.
        let events = direction.feed(&request_frames(&mut encoder, 3, "/second"), 0);
        let seen = requests(&events);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].2, "marked: fields could not be decoded");
        let Event::Request { head, .. } = &events[0] else {
            unreachable!()
        };
        assert_ne!(head.id.as_deref(), Some("x-request-id:id-/first"));
    }

    #[test]
    fn whole_frames_fit_and_anything_else_does_not() {
        let mut encoder = Encoder::new();
        let frames = request_frames(&mut encoder, 1, "/x");
        assert!(frames_fit(&frames));
        let both = [frames.clone(), frame(4, 0, 0, &[])].concat();
        assert!(frames_fit(&both));
        // Cut short, one byte too many, a stream frame on stream 0, a SETTINGS frame on a
        // stream, a type RFC 9113 does not define, HTTP/1 text, nothing.
        assert!(!frames_fit(&frames[..frames.len() - 1]));
        assert!(!frames_fit(&[frames.as_slice(), &[0]].concat()));
        assert!(!frames_fit(&frame(frame::HEADERS, 0, 0, b"x")));
        assert!(!frames_fit(&frame(4, 0, 1, &[])));
        assert!(!frames_fit(&frame(10, 0, 1, &[])));
        assert!(!frames_fit(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!frames_fit(&[]));
    }

    #[test]
    fn a_connection_joined_mid_stream_decodes_what_it_can() {
        let mut encoder = Encoder::new();
        // The client's first stream went by before the observer came.
        let _ = request_frames(&mut encoder, 1, "/before");
        let mut direction = Direction::new(Side::Requests, interest(), false);
        let events = direction.feed(&request_frames(&mut encoder, 3, "/after"), 0);
        let seen = requests(&events);
        assert_eq!(seen[0].0, 3);
        // Fields named from the static table are known; x-request-id's name sits in the
        // dynamic table the observer never saw: unknown, and the head is marked.
        assert_eq!(seen[0].1, "/after");
        assert!(seen[0].2);
        let Event::Request { head, .. } = &events[0] else {
            unreachable!()
        };
        assert_eq!(head.user_agent.as_deref(), Some("h2-test/1.0"));
        assert_eq!(head.id, None);
    }

    #[test]
    fn bytes_lost_where_a_frame_header_stood_end_the_reading() {
        let mut direction = Direction::new(Side::Requests, interest(), true);
        let bytes = client_bytes(2);
        let cut = PREFACE.len() + 15 + 3;
        direction.feed(&bytes[..PREFACE.len() + 15], 0);
        assert!(!direction.is_lost());
        direction.feed(&[], 3);
        assert!(direction.is_lost());
        assert!(direction.feed(&bytes[cut..], 0).is_empty());
    }

    #[test]
    fn no_input_panics() {
        let bytes = client_bytes(3);
        for cut in 0..bytes.len() {
            let mut direction = Direction::new(Side::Requests, interest(), true);
            direction.feed(&bytes[..cut], (bytes.len() - cut) as u64);
            let mut direction = Direction::new(Side::Responses, interest(), false);
            direction.feed(&bytes[cut..], 7);
        }
    }
}
