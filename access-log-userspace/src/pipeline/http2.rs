//! HTTP/2 connections: every stream is a request of its own. On a client's connection the
//! client's frames give the requests (and when their bodies are whole), the gateway's frames
//! their answers; many are in flight on one connection at once, so a stream's id, never the
//! order, says which request an answer ends. Backend calls pair with these requests as with
//! HTTP/1 ones (`link`: the reading thread's requests in the order it read them, connect
//! binding, ...): a gateway runs a connection's streams in the order their heads came. On a
//! connection to an HTTP/2 backend (nginx's `grpc_pass`) each stream the gateway opens is an
//! attempt of the request it was linked to, answered by the backend's frames on that stream.
//!
//! A gRPC call's outcome is in its trailers: the backend's answer is held until the gateway
//! passes the trailers on to the client, whose `grpc-status` ends the request.
//!
//! Frames lost (bytes beyond what the kernel copies of one call, records it could not
//! deliver) hide the frames after them, and the direction waits for a call made of whole
//! frames to read on. While the gateway's frames are unseen, a request it may have answered
//! itself (no backend attempt under way) ends in a loss record, when the frames go unseen and
//! again when they are found; a request waiting for its backend is ended by that answer.
use std::{collections::VecDeque, sync::Arc};

use rustc_hash::FxHashMap as HashMap;

use super::{AttemptOutcome, Chunk, Ending, LossReason, Outcome, Pipeline};
use crate::{
    kernel::{ConnectionKey, Direction, ThreadKey},
    protocol::{
        http1::{HeaderInterest, RequestHead, Side},
        http2::{self, frames_fit, Event, GrpcStatus, PREFACE},
    },
};

/// One direction's frames.
struct Frames {
    side: Side,
    direction: http2::Direction,
    /// When (records' time) the newest call whose frames went unseen was made.
    unseen_at: u64,
}

impl Frames {
    fn new(side: Side, direction: http2::Direction) -> Frames {
        Frames {
            side,
            direction,
            unseen_at: 0,
        }
    }

    /// Reads one record's bytes (of a call made at `at`); a direction whose frames were lost
    /// reads on from the first call made of whole frames, its HPACK table then unknown.
    fn feed(&mut self, interest: &Arc<HeaderInterest>, chunk: &Chunk, at: u64) -> Vec<Event> {
        if self.direction.is_lost() {
            if !(chunk.whole_call && frames_fit(chunk.captured)) {
                self.unseen_at = at;
                return Vec::new();
            }
            self.direction = http2::Direction::new(self.side, interest.clone(), false);
        }
        let mut events = Vec::new();
        if chunk.skipped > 0 {
            events = self.direction.feed(&[], chunk.skipped);
        }
        events.extend(self.direction.feed(chunk.captured, chunk.missing));
        if self.direction.is_lost() {
            self.unseen_at = at;
        }
        events
    }
}

/// RST_STREAM's error code for a stream refused before any processing.
const REFUSED_STREAM: u32 = 0x7;

/// How many streams whose request could not be read are remembered, for the gateway's
/// refusal of them.
const UNREADABLE_KEPT: usize = 64;

/// An open stream: the inbound request it carries (on a client's connection) or serves (on
/// a backend's).
#[derive(Clone, Copy)]
struct Stream {
    request: u64,
    /// A gRPC answer's status, its trailers still to come (a client's connection).
    answered: Option<u16>,
}

/// The HTTP/2 state of a connection.
pub(super) struct Http2Connection {
    requests: Frames,
    responses: Frames,
    streams: HashMap<u32, Stream>,
    /// Streams whose request head could not be read, newest last.
    unreadable: VecDeque<u32>,
}

impl Http2Connection {
    /// A connection read from its client's preface (`from_start`), or joined mid-stream: then
    /// the gateway's direction waits for a call of whole frames.
    pub fn new(interest: &Arc<HeaderInterest>, from_start: bool) -> Http2Connection {
        let mut responses = http2::Direction::new(Side::Responses, interest.clone(), from_start);
        if !from_start {
            responses.lose_frames();
        }
        Http2Connection {
            requests: Frames::new(
                Side::Requests,
                http2::Direction::new(Side::Requests, interest.clone(), from_start),
            ),
            responses: Frames::new(Side::Responses, responses),
            streams: HashMap::default(),
            unreadable: VecDeque::new(),
        }
    }

    /// `stream` carries (or serves) request `number` until it ends.
    fn open_stream(&mut self, stream: u32, number: u64) {
        self.streams.insert(
            stream,
            Stream {
                request: number,
                answered: None,
            },
        );
    }

    /// After a gap in the records: where frames start is unknown in both directions, and no
    /// stream's request is known any more (the gap ended them).
    pub fn forget_frames(&mut self) {
        self.requests.direction.lose_frames();
        self.responses.direction.lose_frames();
        self.streams.clear();
        self.unreadable.clear();
    }
}

impl Pipeline {
    /// Whether a connection reads as HTTP/2 from `chunk` on (request bytes: a client's, or the
    /// gateway's to a backend): it does already, the preface starts here (nothing else
    /// waits), or it was joined mid-stream, showed no HTTP/1 request, and `chunk` is a call
    /// of whole frames.
    /// A connection found that last way is noted for the kernel ([`Pipeline::take_http2_found`]).
    pub(super) fn reads_http2(&mut self, key: ConnectionKey, chunk: &Chunk) -> bool {
        let Some(connection) = self.tables.connections.get_mut(&key) else {
            return false;
        };
        if connection.http2.is_some() {
            return true;
        }
        let preface = chunk.starts_call
            && connection.awaiting.is_empty()
            && connection.requests.at_head_start()
            && chunk.captured.starts_with(PREFACE);
        let found =
            !preface && connection.joined_late && chunk.whole_call && frames_fit(chunk.captured);
        if !(preface || found) {
            return false;
        }
        connection.http2 = Some(Box::new(Http2Connection::new(&self.interest, preface)));
        self.stats.http2_connections += 1;
        if found {
            self.http2_found.push(key);
        }
        true
    }

    /// The gateway accepted a client's upgrade to HTTP/2 over cleartext (`Upgrade: h2c`, 101):
    /// the connection reads as HTTP/2 from here, the client's preface next, and the upgrade
    /// request is stream 1, answered there.
    pub(super) fn upgrade_to_http2(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        let Some(connection) = self.tables.connections.get_mut(&key) else {
            return;
        };
        let sent = connection.requests.switch();
        let mut h2 = Http2Connection::new(&self.interest, true);
        if let Some(Some(number)) = connection.awaiting.front() {
            h2.open_stream(1, *number);
        }
        connection.http2 = Some(Box::new(h2));
        self.stats.http2_connections += 1;
        if !sent.is_empty() {
            self.http2_data(key, thread, true, &Chunk::carried(&sent, 0), at, out);
        }
    }

    /// After a gateway's write that held a 101: on a connection now read as HTTP/2, the bytes
    /// that followed the 101 (and `missing`, those beyond the capture) are its first frames.
    pub(super) fn after_switch(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        missing: u64,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        let Some(connection) = self.tables.connections.get_mut(&key) else {
            return;
        };
        let Some(bytes) = connection.responses.take_switched() else {
            return;
        };
        if connection.http2.is_none() || (bytes.is_empty() && missing == 0) {
            return;
        }
        self.http2_data(
            key,
            thread,
            false,
            &Chunk::carried(&bytes, missing),
            at,
            out,
        );
    }

    /// One record's bytes on an HTTP/2 connection.
    pub(super) fn http2_data(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        carries_requests: bool,
        chunk: &Chunk,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        let interest = self.interest.clone();
        let Some(connection) = self.tables.connections.get_mut(&key) else {
            return;
        };
        let inbound = connection.direction == Direction::Inbound;
        let Some(h2) = connection.http2.as_mut() else {
            return;
        };
        let frames = if carries_requests {
            &mut h2.requests
        } else {
            &mut h2.responses
        };
        let was_lost = frames.direction.is_lost();
        let unseen_before = frames.unseen_at;
        let events = frames.feed(&interest, chunk, at);
        let lost_now = !was_lost && frames.direction.is_lost();
        let found_again = was_lost && !frames.direction.is_lost();
        if found_again && inbound && !carries_requests {
            // What the gateway answered while its frames were unseen is unknown.
            self.lose_maybe_answered(key, unseen_before, at, out);
        }
        for event in events {
            match (inbound, carries_requests) {
                (true, true) => self.client_frames(key, thread, event, at, out),
                (true, false) => self.gateway_frames(key, event, at, out),
                (false, true) => self.backend_stream(key, thread, event, at),
                (false, false) => self.backend_frames(key, thread, event, at, out),
            }
        }
        if lost_now {
            self.stats.http2_frames_lost += 1;
            // On a client's connection, answers may have been among the frames lost; on a
            // backend's, the gateway's answers to the client still end the requests.
            if inbound && !carries_requests {
                self.lose_maybe_answered(key, at, at, out);
            }
        }
    }

    /// The gateway's frames on client connection `key` went unseen, the newest at
    /// `unseen_at`: the requests it may have answered there itself (read before then, no
    /// backend attempt under way) end in a loss record; streams whose request already ended
    /// are forgotten.
    fn lose_maybe_answered(
        &mut self,
        key: ConnectionKey,
        unseen_at: u64,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        let Some(h2) = self
            .tables
            .connections
            .get(&key)
            .and_then(|c| c.http2.as_deref())
        else {
            return;
        };
        let requests = &self.tables.requests;
        let unsure: rustc_hash::FxHashSet<u32> = h2
            .streams
            .iter()
            .filter(|(_, open)| {
                requests.get(&open.request).is_none_or(|request| {
                    request.request.received_ns <= unseen_at
                        && !request
                            .attempts
                            .iter()
                            .any(|a| a.attempt.outcome.in_progress())
                })
            })
            .map(|(stream, _)| *stream)
            .collect();
        let numbers = self.take_streams(key, |stream| unsure.contains(&stream));
        self.lose(numbers, LossReason::FramesNotCaptured, 0, at, out);
    }

    fn client_frames(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        event: Event,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        match event {
            Event::Request {
                stream,
                head,
                end_stream,
            } => self.stream_request(key, thread, stream, head, end_stream, at, out),
            // The request's body is whole: a gateway that buffers bodies calls the backend now.
            Event::StreamEnd { stream } => {
                if let Some(open) = self.open_stream(key, stream) {
                    if let Some(request) = self.tables.requests.get_mut(&open.request) {
                        request.ready = true;
                    }
                }
            }
            // The client cancelled the stream.
            Event::Reset { stream, .. } => {
                for number in self.take_streams(key, |s| s == stream) {
                    self.end_unless_held(number, Ending::ClientGone, at, out);
                }
            }
            Event::Unreadable { stream } => {
                self.stats.http2_streams_unreadable += 1;
                if let Some(h2) = self.http2_of(key) {
                    if h2.unreadable.len() == UNREADABLE_KEPT {
                        h2.unreadable.pop_front();
                    }
                    h2.unreadable.push_back(stream);
                }
            }
            // A client's GOAWAY ends no stream it started; its trailers say nothing here.
            Event::GoAway { .. } | Event::Response { .. } | Event::Trailers { .. } => {}
        }
    }

    fn gateway_frames(
        &mut self,
        key: ConnectionKey,
        event: Event,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        match event {
            Event::Response {
                stream,
                status,
                end_stream,
                grpc_call,
                grpc,
            } => {
                if grpc_call && grpc.is_none() && !end_stream && status.is_some() {
                    // A gRPC answer: its trailers tell the outcome.
                    if let Some(open) = self.open_stream_mut(key, stream) {
                        open.answered = status;
                        return;
                    }
                }
                let Some(number) = self.take_streams(key, |s| s == stream).pop() else {
                    return self.unknown_stream_answered(key, stream, status, at, out);
                };
                match status {
                    Some(status) => self.answered_with(number, status, grpc, at, out),
                    // A status the HPACK table no longer tells (joined late).
                    None => self.lose(vec![number], LossReason::FramesNotCaptured, 0, at, out),
                }
            }
            Event::Trailers { stream, grpc } => {
                let answered = self.open_stream(key, stream).and_then(|open| open.answered);
                if let Some(status) = answered {
                    for number in self.take_streams(key, |s| s == stream) {
                        self.answered_with(number, status, grpc.clone(), at, out);
                    }
                }
            }
            // A gRPC answer that ended without trailers.
            Event::StreamEnd { stream } => {
                let answered = self.open_stream(key, stream).and_then(|open| open.answered);
                if let Some(status) = answered {
                    for number in self.take_streams(key, |s| s == stream) {
                        self.answered_with(number, status, None, at, out);
                    }
                }
            }
            // The gateway reset the stream: REFUSED_STREAM says it did no work on it (RFC
            // 9113 section 8.7), any other code that it ended without an answer.
            Event::Reset { stream, code } => {
                let ending = if code == REFUSED_STREAM {
                    Ending::NotServed
                } else {
                    Ending::Dropped
                };
                for number in self.take_streams(key, |s| s == stream) {
                    self.end_unless_held(number, ending, at, out);
                }
            }
            // Streams above the last one the gateway processed were never served.
            Event::GoAway { last_stream, .. } => {
                for number in self.take_streams(key, |s| s > last_stream) {
                    self.end_unless_held(number, Ending::NotServed, at, out);
                }
            }
            // An answer's head whose bytes were not all captured.
            Event::Unreadable { stream } => {
                let numbers = self.take_streams(key, |s| s == stream);
                self.lose(numbers, LossReason::FramesNotCaptured, 0, at, out);
            }
            Event::Request { .. } => {}
        }
    }

    /// The gateway answered request `number` with `status` (and, for a gRPC call, the
    /// outcome in its trailers).
    fn answered_with(
        &mut self,
        number: u64,
        status: u16,
        grpc: Option<GrpcStatus>,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        if let Some(request) = self.tables.requests.get_mut(&number) {
            request.grpc = grpc;
        }
        self.answered_by_gateway(number, status, at, out);
    }

    /// A stream the gateway opened to an HTTP/2 backend: an attempt of the request it serves.
    fn backend_stream(&mut self, key: ConnectionKey, thread: ThreadKey, event: Event, at: u64) {
        let Event::Request { stream, head, .. } = event else {
            return;
        };
        let Some(number) = self.backend_request(key, thread, head, at) else {
            return;
        };
        if let Some(h2) = self.http2_of(key) {
            h2.open_stream(stream, number);
        }
    }

    /// An HTTP/2 backend's frames: answers to the attempts made on its streams.
    fn backend_frames(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        event: Event,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        match event {
            Event::Response {
                stream,
                status: Some(status),
                grpc_call,
                grpc,
                ..
            } => {
                for number in self.take_streams(key, |s| s == stream) {
                    let trailers_to_come = grpc_call || grpc.is_some();
                    self.backend_answered(key, thread, number, status, trailers_to_come, at, out);
                }
            }
            Event::Reset { stream, .. } => {
                let numbers = self.take_streams(key, |s| s == stream);
                self.attempts_ended(key, &numbers, AttemptOutcome::Reset);
            }
            Event::GoAway { last_stream, .. } => {
                let numbers = self.take_streams(key, |s| s > last_stream);
                self.attempts_ended(key, &numbers, AttemptOutcome::Closed);
            }
            _ => {}
        }
    }

    /// The attempts of `numbers` under way on backend connection `key` ended unanswered.
    fn attempts_ended(&mut self, key: ConnectionKey, numbers: &[u64], outcome: AttemptOutcome) {
        for number in numbers {
            let Some(request) = self.tables.requests.get_mut(number) else {
                continue;
            };
            for tracked in request.attempts.iter_mut().filter(|a| a.connection == key) {
                if tracked.attempt.outcome.in_progress() {
                    tracked.attempt.outcome = outcome;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stream_request(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        stream: u32,
        head: RequestHead,
        end_stream: bool,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        if head.headers_unknown || head.truncated {
            self.stats.http2_streams_unknown_fields += 1;
        }
        let Some(number) = self.open_request(key, thread, head, end_stream, at, out) else {
            return;
        };
        if let Some(h2) = self.http2_of(key) {
            h2.open_stream(stream, number);
        }
    }

    /// The gateway answered a stream with no request known: one whose head could not be read
    /// (a refusal is reported), or one whose head was among frames lost.
    fn unknown_stream_answered(
        &mut self,
        key: ConnectionKey,
        stream: u32,
        status: Option<u16>,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        let Some(connection) = self.tables.connections.get_mut(&key) else {
            return;
        };
        let Some(h2) = connection.http2.as_mut() else {
            return;
        };
        let Some(place) = h2.unreadable.iter().position(|s| *s == stream) else {
            self.stats.unmatched_answers += 1;
            return;
        };
        h2.unreadable.remove(place);
        if let Some(status) = status.filter(|s| *s >= 400) {
            out.push(Outcome::Unreadable {
                line: None,
                remote_ip: connection.remote_ip.clone(),
                tls: connection.tls,
                status,
                at,
            });
        }
    }

    fn http2_of(&mut self, key: ConnectionKey) -> Option<&mut Http2Connection> {
        self.tables.connections.get_mut(&key)?.http2.as_deref_mut()
    }

    fn open_stream(&mut self, key: ConnectionKey, stream: u32) -> Option<Stream> {
        self.http2_of(key)?.streams.get(&stream).copied()
    }

    fn open_stream_mut(&mut self, key: ConnectionKey, stream: u32) -> Option<&mut Stream> {
        self.http2_of(key)?.streams.get_mut(&stream)
    }

    /// Removes the streams `which` selects from the connection's open streams: their requests
    /// no longer wait there.
    fn take_streams(&mut self, key: ConnectionKey, which: impl Fn(u32) -> bool) -> Vec<u64> {
        let Some(connection) = self.tables.connections.get_mut(&key) else {
            return Vec::new();
        };
        let Some(h2) = connection.http2.as_mut() else {
            return Vec::new();
        };
        let mut numbers: Vec<u64> = Vec::new();
        h2.streams.retain(|stream, open| {
            let taken = which(*stream);
            if taken {
                numbers.push(open.request);
            }
            !taken
        });
        numbers.sort_unstable();
        connection
            .awaiting
            .retain(|waiting| waiting.is_none_or(|n| numbers.binary_search(&n).is_err()));
        numbers
    }
}
