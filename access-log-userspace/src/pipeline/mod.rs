//! Heads to requests and their outcomes: follows each connection's two streams, links every
//! inbound request with the backend calls the gateway makes for it (`link`), and hands out
//! what became of each request as [`Outcome`] values. Plain values in and out: no I/O here.
//!
//! Every request handed out as [`Outcome::Incoming`] ends exactly once, in an
//! [`Outcome::Ended`] or named in an [`Outcome::Lost`]: every place that removes a request
//! from the table goes through [`Pipeline::end`] or [`Pipeline::lose`].
mod connection;
mod http2;
mod link;
pub mod outcome;

use std::sync::Arc;

use access_log_common::{call, flags, tcp_state};
// Keys the kernel chose (pids, fds, our own numbers) get a fast hash, which pays off on every
// record.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::{
    kernel::{errno, record::Record, ConnectionKey, Direction, Endpoint, ThreadKey},
    protocol::{
        http1::{is_final, Head, HeaderInterest, RequestHead, RequestLine, ResponseHead},
        http2::GrpcStatus,
    },
};
use connection::Connection;
pub use outcome::{
    Attempt, AttemptOutcome, Confidence, Ended, Ending, Loss, LossReason, Outcome, Request,
};

/// Counts of what the pipeline set aside, for the summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PipelineStats {
    /// Outbound requests that could not be linked to an inbound request.
    pub unlinked_outbound: u64,
    /// Data on a socket the pipeline did not know (opened before a gap).
    pub unknown_connection_records: u64,
    /// Connections that carried TLS no probe could read (a TLS stack we do not read).
    pub tls_unreadable: u64,
    /// Reads a gateway made while closing a connection (lingering close): not requests.
    pub drained_reads: u64,
    /// Connections left alone after they stopped being HTTP/1 (HTTP/2, upgrades, other
    /// protocols).
    pub opaque_connections: u64,
    /// Bytes from clients in a request's place that were no readable request head.
    pub unreadable_requests: u64,
    /// Gaps in the kernel's records seen (the ring buffer was full), and records lost in them.
    pub gaps: u64,
    pub records_lost: u64,
    /// Answers on inbound connections with no request waiting: requests read beyond the
    /// capture of one read, or lost.
    pub unmatched_answers: u64,
    /// Connections forgotten because they were idle longer than the idle timeout, or over
    /// the cap; requests forgotten because they waited longer, or were over the cap.
    pub evicted_idle_connections: u64,
    pub evicted_connections_over_cap: u64,
    pub evicted_requests: u64,
    /// Inbound connections read as HTTP/2.
    pub http2_connections: u64,
    /// Times an HTTP/2 direction lost its frames (bytes beyond a call's capture, a gap) and
    /// read on only from a call of whole frames.
    pub http2_frames_lost: u64,
    /// HTTP/2 streams whose request head could not be read at all, or only in part (fields an
    /// HPACK table joined mid-connection cannot tell).
    pub http2_streams_unreadable: u64,
    pub http2_streams_unknown_fields: u64,
}

/// One record's bytes of a data call.
pub(crate) struct Chunk<'a> {
    pub captured: &'a [u8],
    /// Where they start in the call.
    pub offset: u64,
    /// Bytes of the call before them that no record carries (DATA payloads the kernel
    /// skipped on an HTTP/2 connection); set by the connection that reads them.
    pub skipped: u64,
    /// Bytes of the call after these that no record carries (none while a record of the
    /// call follows).
    pub missing: u64,
    /// The record carries the call's first bytes.
    pub starts_call: bool,
    /// The record carries every byte of the call.
    pub whole_call: bool,
}

impl<'a> Chunk<'a> {
    /// Bytes carried over from elsewhere (held by the HTTP/1 parser across a switch to
    /// HTTP/2), not a call of their own; `missing` bytes not captured follow them.
    pub fn carried(captured: &'a [u8], missing: u64) -> Chunk<'a> {
        Chunk {
            captured,
            offset: 0,
            skipped: 0,
            missing,
            starts_call: false,
            whole_call: false,
        }
    }
}

/// How much state the pipeline keeps at most: a connection or a request past these is
/// forgotten (its requests end in a LOST event, "state evicted") and counted. Checked once a
/// second of the records' time, so a table may pass its cap for up to a second; over the cap,
/// the least recently active go, down to seven eighths of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// A connection with no record this long, or a request waiting this long.
    pub idle_ns: u64,
    pub max_connections: usize,
    pub max_requests: usize,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            idle_ns: 900 * 1_000_000_000,
            max_connections: 65536,
            max_requests: 65536,
        }
    }
}

/// How often, in the records' time, the bounds are checked.
const UPKEEP_NS: u64 = 1_000_000_000;

/// What the pipeline needs besides records.
#[derive(Clone, Debug, Default)]
pub struct PipelineConfig {
    /// Lower-case names of headers whose value links an inbound request to its outbound one.
    pub id_headers: Vec<String>,
    /// Lower-case names of request headers whose presence the events report on (credentials).
    pub noted_headers: Vec<String>,
    /// Lower-case names of request headers that carry API keys (read for who calls).
    pub key_headers: Vec<String>,
    pub bounds: Bounds,
}

/// An attempt with the connection it went out on.
struct TrackedAttempt {
    connection: ConnectionKey,
    attempt: Attempt,
}

/// A request not yet ended.
struct InboundRequest {
    request: Request,
    connection: ConnectionKey,
    /// The thread that read its head.
    reader: ThreadKey,
    /// Its body (if any) has been read whole: a gateway that buffers bodies may call the
    /// backend now.
    ready: bool,
    attempts: Vec<TrackedAttempt>,
    /// A backend's answer held instead of ending the request at once ([`Hold`]). It ends the
    /// request when the gateway passes it on, and becomes a failed attempt when another one
    /// starts.
    held_answer: Option<HeldAnswer>,
    /// Linked right after a gap in the records, when the call may have been a request's
    /// whose head was lost: it ends in the loss record, not in a pairing that may be wrong.
    tainted: bool,
    /// A gRPC call's outcome, known when the gateway's trailers came.
    grpc: Option<GrpcStatus>,
}

impl InboundRequest {
    /// May still need a backend: no attempt is under way (an answer held as retryable may
    /// be followed by a retry).
    fn awaiting_backend(&self) -> bool {
        !self
            .attempts
            .iter()
            .any(|a| a.attempt.outcome.in_progress())
    }

    /// A new attempt starts: an answer held back was a failed attempt.
    fn start_attempt(&mut self, connection: ConnectionKey, attempt: Attempt) {
        self.held_answer = None;
        self.attempts.push(TrackedAttempt {
            connection,
            attempt,
        });
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.iter().map(|a| a.attempt.clone()).collect()
    }
}

/// A backend's answer to one of a request's attempts, held back.
#[derive(Clone, Copy, Debug)]
struct HeldAnswer {
    attempt: usize,
    status: u16,
    /// When it was read.
    at: u64,
    hold: Hold,
}

/// Why an answer is held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// A 5xx or 429 the gateway may still retry (as nginx's proxy_next_upstream http_5xx
    /// does); the thread that read it is the one that would.
    Retryable,
    /// Its attempt was paired with low confidence, in a process whose wake-ups are followed:
    /// the thread that read it wakes the request's own thread next (Varnish's fetch thread
    /// wakes the client thread waiting for the answer), which confirms or corrects the pairing.
    Unconfirmed,
    /// A gRPC answer: its outcome comes in trailers, which end the request when the gateway
    /// passes them on.
    Trailers,
}

/// How long after a gap a link that is not exact is not trusted: the gateway's calls for
/// requests whose heads were lost come within it.
const QUARANTINE_NS: u64 = 250_000_000;

/// Whether a gateway may try another backend after this answer (nginx: proxy_next_upstream
/// http_500 ... http_504, http_429; Apache: failonstatus).
fn retryable(status: u16) -> bool {
    status >= 500 || status == 429
}

/// The connections and the requests not yet ended.
#[derive(Default)]
struct Tables {
    connections: HashMap<ConnectionKey, Connection>,
    requests: HashMap<u64, InboundRequest>,
}

impl Tables {
    fn waiting(&self, id: u64) -> bool {
        self.requests
            .get(&id)
            .is_some_and(InboundRequest::awaiting_backend)
    }

    /// After a read on inbound connection `key`: every request waiting there has its body
    /// whole, but the newest, while its body is still coming.
    fn update_ready(&mut self, key: ConnectionKey) {
        let Some(connection) = self.connections.get(&key) else {
            return;
        };
        let in_body = connection.requests.in_body();
        let count = connection.awaiting.len();
        for (index, number) in connection.awaiting.iter().enumerate() {
            if let Some(request) = number.and_then(|n| self.requests.get_mut(&n)) {
                request.ready = index + 1 < count || !in_body;
            }
        }
    }
}

pub struct Pipeline {
    interest: Arc<HeaderInterest>,
    tables: Tables,
    linker: link::Linker,
    /// Peers of accepted connections whose accept record carries none, by connection.
    peers: HashMap<ConnectionKey, Endpoint>,
    next_request: u64,
    /// The kernel's count of lost records as of the newest record seen.
    lost_seen: u64,
    /// The newest record's time, for outcomes that no record brings (finish).
    last_seen_ns: u64,
    /// Until when a link that is not exact is not trusted (a gap was seen shortly before).
    quarantine_until: u64,
    /// The goroutine of the record being processed (Go programs; 0 elsewhere).
    goroutine: u64,
    stats: PipelineStats,
    bounds: Bounds,
    /// When (records' time) the bounds are checked next.
    next_upkeep_ns: u64,
    /// Connections found to speak HTTP/2 by their frames, not their preface, for the kernel.
    http2_found: Vec<ConnectionKey>,
}

impl Pipeline {
    pub fn new(config: PipelineConfig) -> Self {
        let lower = |names: Vec<String>| names.into_iter().map(|n| n.to_ascii_lowercase());
        Pipeline {
            interest: Arc::new(HeaderInterest {
                values: lower(config.id_headers).collect(),
                presence: lower(config.noted_headers).collect(),
                keys: lower(config.key_headers).collect(),
            }),
            tables: Tables::default(),
            linker: link::Linker::default(),
            peers: HashMap::default(),
            next_request: 1,
            lost_seen: 0,
            last_seen_ns: 0,
            quarantine_until: 0,
            goroutine: 0,
            stats: PipelineStats::default(),
            bounds: config.bounds,
            next_upkeep_ns: 0,
            http2_found: Vec::new(),
        }
    }

    /// Connections found to speak HTTP/2 since the last call, by their frames (joined
    /// mid-stream): the kernel is to capture their calls whole, as it does for connections
    /// whose preface it saw.
    pub fn take_http2_found(&mut self) -> Vec<ConnectionKey> {
        std::mem::take(&mut self.http2_found)
    }

    /// The newest record's time (monotonic nanoseconds).
    pub fn last_seen(&self) -> u64 {
        self.last_seen_ns
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// (connections followed, requests not yet ended) right now.
    pub fn tracked(&self) -> (usize, usize) {
        (self.tables.connections.len(), self.tables.requests.len())
    }

    /// A connection that existed before attach (found in /proc).
    pub fn add_existing(
        &mut self,
        key: ConnectionKey,
        direction: Direction,
        remote: Option<&Endpoint>,
    ) {
        let mut connection = Connection::new(direction, remote, &self.interest);
        // We join mid-stream: wait for a read that starts a head.
        connection.requests.resync();
        connection.responses.resync();
        connection.joined_late = true;
        self.tables.connections.insert(key, connection);
    }

    /// The peer of the accepted connection `key`, for an accept record that carries none.
    pub fn add_peer(&mut self, key: ConnectionKey, remote: Endpoint) {
        self.peers.insert(key, remote);
    }

    /// The observer stops: every request not ended is named in a loss record.
    pub fn finish(&mut self, out: &mut Vec<Outcome>) {
        let numbers: Vec<u64> = self.tables.requests.keys().copied().collect();
        self.lose(
            numbers,
            LossReason::ObserverStopped,
            0,
            self.last_seen_ns,
            out,
        );
    }

    /// Processes one record; appends what it teaches to `out`.
    pub fn process(&mut self, record: &Record<'_>, out: &mut Vec<Outcome>) {
        let header = *record.header();
        let key = (header.tgid, header.fd);
        let thread = (header.tgid, header.tid);
        let at = header.timestamp_ns;
        self.last_seen_ns = self.last_seen_ns.max(at);
        self.goroutine = header.goroutine;
        if header.lost_before > self.lost_seen {
            let lost = header.lost_before - self.lost_seen;
            self.lost_seen = header.lost_before;
            self.gap(lost, at, out);
        }
        // A thread that read an answer held for confirmation wakes the request's thread as
        // its very next act: anything else it does first (a new call) voids that.
        let first_of_call = header.flags & flags::FIRST != 0;
        if !matches!(
            record,
            Record::Wake { .. } | Record::Data { offset: 1.., .. }
        ) || first_of_call
        {
            self.linker.thread_acted(thread);
        }
        match record {
            Record::Accept { remote, .. } => {
                self.replace(key, at, out);
                let peer = self.peers.remove(&key);
                let remote = remote.as_ref().or(peer.as_ref());
                let connection = Connection::new(Direction::Inbound, remote, &self.interest);
                self.tables.connections.insert(key, connection);
            }
            Record::Connect {
                result,
                repeated: true,
                ..
            } => self.connect_failed_late(key, thread, *result),
            Record::Connect { remote, result, .. } => {
                self.replace(key, at, out);
                self.connect(key, thread, remote.as_ref(), *result, at);
            }
            Record::Close { tcp_state, .. } => {
                self.peer_state(key, *tcp_state);
                self.close(key, thread, at, out)
            }
            Record::Shutdown { .. } => {
                if let Some(connection) = self.tables.connections.get_mut(&key) {
                    connection.closing = true;
                }
            }
            Record::Exit { .. } => self.exit(header.tgid, at, out),
            Record::Wake { woken, .. } => {
                if let Some(answered) = self.linker.take_answered(thread, at) {
                    self.answer_woke(answered, (header.tgid, *woken), out);
                }
                self.linker.woke(thread, *woken, &self.tables)
            }
            Record::GoCall { connection, .. } => {
                self.linker
                    .go_call(header.tgid, header.call, header.goroutine, *connection)
            }
            Record::Data {
                moved,
                offset,
                more,
                captured,
                ..
            } => {
                // Bytes of the call beyond what this record and the ones before it carried;
                // none while a continuation record follows.
                let seen = *offset as u64 + captured.len() as u64;
                let missing = if *more {
                    0
                } else {
                    ((*moved).max(0) as u64).saturating_sub(seen)
                };
                let starts_call = *offset == 0 || first_of_call;
                let chunk = Chunk {
                    captured,
                    offset: *offset as u64,
                    skipped: 0,
                    missing,
                    starts_call,
                    whole_call: *offset == 0 && !*more && missing == 0,
                };
                self.data(key, thread, header.call, *moved, &chunk, at, out)
            }
        }
        if let Some(connection) = self.tables.connections.get_mut(&key) {
            connection.last_active = at;
        }
        if at >= self.next_upkeep_ns {
            self.next_upkeep_ns = at + UPKEEP_NS;
            self.upkeep(at, out);
        }
    }

    /// Keeps the tables within their [`Bounds`]: idle connections and requests waiting too
    /// long are forgotten, then the least recently active over a cap.
    fn upkeep(&mut self, at: u64, out: &mut Vec<Outcome>) {
        let idle = self.bounds.idle_ns;
        let mut stale: HashSet<ConnectionKey> = HashSet::default();
        for (key, connection) in self.tables.connections.iter_mut() {
            if connection.last_active == 0 {
                // Found at attach: idle from now.
                connection.last_active = at;
            } else if at.saturating_sub(connection.last_active) > idle {
                stale.insert(*key);
            }
        }
        self.stats.evicted_idle_connections += stale.len() as u64;
        let left = self.tables.connections.len() - stale.len();
        if left > self.bounds.max_connections {
            let mut by_age: Vec<(u64, ConnectionKey)> = self
                .tables
                .connections
                .iter()
                .filter(|(key, _)| !stale.contains(*key))
                .map(|(key, connection)| (connection.last_active, *key))
                .collect();
            by_age.sort_unstable();
            let excess = left - self.bounds.max_connections * 7 / 8;
            self.stats.evicted_connections_over_cap += excess as u64;
            stale.extend(by_age.into_iter().take(excess).map(|(_, key)| key));
        }
        for key in stale {
            self.forget_connection(key, LossReason::Evicted, at, out);
        }
        let mut old: HashSet<u64> = self
            .tables
            .requests
            .iter()
            .filter(|(_, waiting)| at.saturating_sub(waiting.request.received_ns) > idle)
            .map(|(number, _)| *number)
            .collect();
        let left = self.tables.requests.len() - old.len();
        if left > self.bounds.max_requests {
            let mut numbers: Vec<u64> = self
                .tables
                .requests
                .keys()
                .filter(|number| !old.contains(*number))
                .copied()
                .collect();
            numbers.sort_unstable();
            let excess = left - self.bounds.max_requests * 7 / 8;
            old.extend(numbers.into_iter().take(excess));
        }
        self.stats.evicted_requests += old.len() as u64;
        self.lose(old.into_iter().collect(), LossReason::Evicted, 0, at, out);
    }

    /// Records were lost before this one: what was in flight may have lost its answer or its
    /// link, and every connection's order of requests and answers is unknown. Those requests
    /// end in a loss record rather than in a pairing that may be wrong.
    fn gap(&mut self, lost: u64, at: u64, out: &mut Vec<Outcome>) {
        self.quarantine_until = at + QUARANTINE_NS;
        self.stats.gaps += 1;
        self.stats.records_lost += lost;
        let numbers: Vec<u64> = self.tables.requests.keys().copied().collect();
        self.lose(numbers, LossReason::RingFull, lost, at, out);
        for connection in self.tables.connections.values_mut() {
            connection.forget_order();
        }
        self.linker.forget_threads();
    }

    /// Ends `number` with `ending`: removes it and hands out its outcome (a tainted request
    /// ends in a loss record).
    fn end(&mut self, number: u64, ending: Ending, at: u64, out: &mut Vec<Outcome>) {
        if self.tables.requests.get(&number).is_some_and(|r| r.tainted) {
            return self.lose(vec![number], LossReason::RingFull, 0, at, out);
        }
        let Some(request) = self.tables.requests.remove(&number) else {
            return;
        };
        self.linker.forget(
            request.connection.0,
            number,
            request.request.head.id.as_ref(),
        );
        let attempts = request.attempts();
        out.push(Outcome::Ended(Box::new(Ended {
            request: request.request,
            attempts,
            ending,
            grpc: request.grpc,
            at,
        })));
    }

    /// Ends `number` with the backend's answer it held.
    fn end_held(&mut self, number: u64, held: HeldAnswer, out: &mut Vec<Outcome>) {
        let ending = Ending::Backend {
            attempt: held.attempt,
            status: held.status,
        };
        self.end(number, ending, held.at, out);
    }

    /// The thread that read an answer held as [`Hold::Unconfirmed`] (for request `answered`)
    /// woke `woken` right after. The request's own thread: the pairing holds, and the request
    /// ends. Another thread with a request that may own the answer (its own attempt paired
    /// with low confidence, or none yet): the two requests trade those attempts, and that one
    /// ends. Otherwise the answer stays held until the gateway passes it on.
    fn answer_woke(&mut self, answered: u64, woken: ThreadKey, out: &mut Vec<Outcome>) {
        let Some(request) = self.tables.requests.get_mut(&answered) else {
            return;
        };
        let Some(held) = request.held_answer.filter(|h| h.hold == Hold::Unconfirmed) else {
            return;
        };
        let multiplexed = self
            .tables
            .connections
            .get(&request.connection)
            .is_some_and(|c| c.http2.is_some());
        if multiplexed {
            // One thread reads every stream of an HTTP/2 connection (Apache's mod_http2 hands
            // each to a worker): waking it tells no stream from another. The answer stays
            // held, at low confidence, until the gateway passes it on.
            return;
        }
        if request.reader == woken {
            request.attempts[held.attempt].attempt.confidence = Confidence::Kernel;
            return self.end_held(answered, held, out);
        }
        let Some(owner) = self.linker.answer_owner(&self.tables, woken, answered) else {
            return;
        };
        let request = self
            .tables
            .requests
            .get_mut(&answered)
            .expect("looked up above");
        request.held_answer = None;
        let mut moved = request.attempts.remove(held.attempt);
        moved.attempt.confidence = Confidence::Kernel;
        let owner_request = self
            .tables
            .requests
            .get_mut(&owner)
            .expect("answer_owner names a request of the table");
        let owner_held = owner_request.held_answer.take();
        let traded = owner_held
            .map(|h| h.attempt)
            .or_else(|| {
                owner_request
                    .attempts
                    .iter()
                    .rposition(|a| a.attempt.outcome.in_progress())
            })
            .map(|index| owner_request.attempts.remove(index));
        owner_request.attempts.push(moved);
        let ending = HeldAnswer {
            attempt: owner_request.attempts.len() - 1,
            ..held
        };
        if let Some(traded) = traded {
            self.relink(&traded, owner, answered);
            let request = self
                .tables
                .requests
                .get_mut(&answered)
                .expect("looked up above");
            request.attempts.push(traded);
            request.held_answer = owner_held.map(|h| HeldAnswer {
                attempt: request.attempts.len() - 1,
                ..h
            });
        }
        self.end_held(owner, ending, out);
    }

    /// An attempt under way moves from request `from` to request `to`: its connection now
    /// waits for `to`'s answer.
    fn relink(&mut self, attempt: &TrackedAttempt, from: u64, to: u64) {
        let Some(connection) = self.tables.connections.get_mut(&attempt.connection) else {
            return;
        };
        match attempt.attempt.outcome {
            AttemptOutcome::Sent => {
                if let Some(waiting) = connection.awaiting.iter_mut().find(|w| **w == Some(from)) {
                    *waiting = Some(to);
                }
            }
            AttemptOutcome::Connecting => {
                if let Some((bound, _)) = connection.bound.as_mut().filter(|(b, _)| *b == from) {
                    *bound = to;
                }
            }
            _ => {}
        }
    }

    /// Ends the requests in `numbers` that are not ended yet, in one loss record.
    fn lose(
        &mut self,
        numbers: Vec<u64>,
        reason: LossReason,
        records: u64,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        let mut requests = Vec::new();
        let mut connections = Vec::new();
        for number in numbers {
            if let Some(request) = self.tables.requests.remove(&number) {
                self.linker.forget(
                    request.connection.0,
                    number,
                    request.request.head.id.as_ref(),
                );
                requests.push(number);
                connections.push(request.connection);
            }
        }
        if requests.is_empty() && records == 0 {
            return;
        }
        requests.sort_unstable();
        connections.sort_unstable();
        connections.dedup();
        out.push(Outcome::Lost(Loss {
            reason,
            at,
            requests,
            records,
            connections,
        }));
    }

    #[allow(clippy::too_many_arguments)]
    fn data(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        data_call: u32,
        moved: i64,
        chunk: &Chunk,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        let Some(connection) = self.tables.connections.get_mut(&key) else {
            self.stats.unknown_connection_records += 1;
            return;
        };
        let ingress = call::is_ingress(data_call);
        // Where the records of the call stand: bytes between them were skipped.
        let cursor = &mut connection.call_cursor[usize::from(ingress)];
        if chunk.starts_call {
            *cursor = 0;
        }
        let chunk = &Chunk {
            skipped: chunk.offset.saturating_sub(*cursor),
            ..*chunk
        };
        *cursor = chunk.offset + chunk.captured.len() as u64;
        let captured = chunk.captured;
        let direction = connection.direction;
        let carries_requests = ingress == (direction == Direction::Inbound);
        if call::is_tls(data_call) {
            connection.tls = true;
        } else if moved > 0
            && connection.http2.is_none()
            && tls_record_expected(connection, carries_requests, captured)
        {
            // Ciphertext no probe decrypted: counted at close, never parsed.
            connection.encrypted_unread = true;
            return;
        }
        if moved <= 0 {
            match direction {
                Direction::Outbound if ingress => {
                    connection.hung_up = Some(link::hang_up_outcome(moved));
                    self.backend_hung_up(key);
                }
                // The client ended its side: a read's end of stream or reset, a write's
                // broken pipe.
                Direction::Inbound => connection.client_ended = true,
                Direction::Outbound => {}
            }
            return;
        }
        if direction == Direction::Inbound && ingress {
            if connection.closing {
                // Drained by a gateway closing the connection: never served, not a request.
                self.stats.drained_reads += 1;
                return;
            }
            self.linker.inbound_read(thread);
        }
        if self.tables.connections[&key].http2.is_some()
            || (carries_requests && self.reads_http2(key, chunk))
        {
            return self.http2_data(key, thread, carries_requests, chunk, at, out);
        }
        let connection = self
            .tables
            .connections
            .get_mut(&key)
            .expect("looked up above");
        let stream = if carries_requests {
            &mut connection.requests
        } else {
            &mut connection.responses
        };
        let mut heads = Vec::new();
        if chunk.skipped > 0 {
            heads = stream.feed(&[], chunk.skipped);
        }
        heads.extend(stream.feed(captured, chunk.missing));
        let answered = heads
            .iter()
            .any(|h| matches!(h, Head::Response(r) if is_final(r.status)));
        self.heads(key, thread, direction, heads, at, out);
        if answered {
            self.upgrade_answered(key, thread, direction, at, out);
        }
        if answered && direction == Direction::Inbound && !carries_requests {
            self.after_switch(key, thread, chunk.missing, at, out);
        }
        if carries_requests && direction == Direction::Inbound {
            self.tables.update_ready(key);
        }
    }

    /// The answer to a request that asked to switch protocols came (nothing else waits): the
    /// request stream goes opaque on a switch, or reads on with what it held.
    fn upgrade_answered(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        direction: Direction,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        let Some(connection) = self.tables.connections.get_mut(&key) else {
            return;
        };
        if !connection.requests.is_upgrading() || !connection.awaiting.is_empty() {
            return;
        }
        let switched = connection.responses.is_opaque();
        let resumed = connection.requests.upgrade_answered(switched);
        self.heads(key, thread, direction, resumed, at, out);
    }

    fn heads(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        direction: Direction,
        heads: Vec<Head>,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        for head in heads {
            match (direction, head) {
                (Direction::Inbound, Head::Request(request)) => {
                    self.inbound_request(key, thread, request, at, out)
                }
                (Direction::Inbound, Head::Response(response)) => {
                    self.gateway_response(key, thread, response, at, out)
                }
                (Direction::Outbound, Head::Request(request)) => {
                    self.outbound_request(key, thread, request, at)
                }
                (Direction::Outbound, Head::Response(response)) => {
                    self.backend_response(key, thread, response, at, out)
                }
                (Direction::Inbound, Head::Unreadable(line)) => self.unreadable_request(key, line),
                // The gateway itself wrote it: nothing a client did.
                (Direction::Outbound, Head::Unreadable(_)) => {}
            }
        }
    }

    /// An accept or connect on `key` while a connection is still known there: its close was
    /// not seen (fds closed by close_range or dup2, or a record lost). What waited on it can
    /// no longer end as observed.
    fn replace(&mut self, key: ConnectionKey, at: u64, out: &mut Vec<Outcome>) {
        self.forget_connection(key, LossReason::ConnectionReplaced, at, out);
    }

    /// Forgets a connection whose end was not seen: its requests end in a loss record.
    fn forget_connection(
        &mut self,
        key: ConnectionKey,
        reason: LossReason,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        let Some(connection) = self.tables.connections.remove(&key) else {
            return;
        };
        self.count_closed(&connection);
        if connection.direction == Direction::Inbound {
            let numbers: Vec<u64> = connection.awaiting.iter().flatten().copied().collect();
            self.lose(numbers, reason, 0, at, out);
        } else {
            self.outbound_closed(key, &connection, None);
        }
    }

    fn connect(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        remote: Option<&Endpoint>,
        result: i64,
        at: u64,
    ) {
        let mut connection = Connection::new(Direction::Outbound, remote, &self.interest);
        let failed = result < 0 && result != errno::EINPROGRESS;
        if let Some((id, confidence)) = self.linker.link_connect(thread, &self.tables) {
            if let Some(request) = self.tables.requests.get_mut(&id) {
                request.tainted |= at < self.quarantine_until;
                request.start_attempt(
                    key,
                    Attempt {
                        backend: connection.remote_text.clone(),
                        unix: connection.unix,
                        method: None,
                        target: None,
                        outcome: if failed {
                            AttemptOutcome::ConnectFailed
                        } else {
                            AttemptOutcome::Connecting
                        },
                        confidence,
                        // Known once the request's plaintext passes the TLS probes.
                        tls: false,
                    },
                );
                if failed {
                    self.linker.retry(thread, id);
                } else {
                    connection.bound = Some((id, confidence));
                }
            }
        }
        self.tables.connections.insert(key, connection);
    }

    /// A repeated connect reported that a connect under way failed (HAProxy learns it so).
    fn connect_failed_late(&mut self, key: ConnectionKey, thread: ThreadKey, result: i64) {
        let Some(connection) = self.tables.connections.get_mut(&key) else {
            return;
        };
        connection.hung_up = Some(if result == errno::ECONNREFUSED {
            AttemptOutcome::ConnectFailed
        } else {
            link::hang_up_outcome(result)
        });
        let Some((id, _)) = connection.bound else {
            return;
        };
        if let Some(request) = self.tables.requests.get_mut(&id) {
            for tracked in request.attempts.iter_mut().filter(|a| a.connection == key) {
                if tracked.attempt.outcome == AttemptOutcome::Connecting {
                    tracked.attempt.outcome = AttemptOutcome::ConnectFailed;
                }
            }
            if request.awaiting_backend() {
                self.linker.retry(thread, id);
            }
        }
    }

    fn inbound_request(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        head: RequestHead,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        let Some(connection) = self.tables.connections.get_mut(&key) else {
            return;
        };
        connection.joined_late = false;
        connection.responses.expect_response_to(&head.method);
        self.open_request(key, thread, head, false, at, out);
    }

    /// A request whose head came on inbound connection `key` (`ready`: its body is whole
    /// already) waits there for its answer; returns its number.
    fn open_request(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        head: RequestHead,
        ready: bool,
        at: u64,
        out: &mut Vec<Outcome>,
    ) -> Option<u64> {
        let connection = self.tables.connections.get_mut(&key)?;
        let number = self.next_request;
        self.next_request += 1;
        connection.awaiting.push_back(Some(number));
        let request = Request {
            number,
            head,
            remote_ip: connection.remote_ip.clone(),
            tls: connection.tls,
            received_ns: at,
            process: key.0,
        };
        self.linker
            .request(thread, self.goroutine, number, request.head.id.as_ref());
        out.push(Outcome::Incoming(request.clone()));
        self.tables.requests.insert(
            number,
            InboundRequest {
                request,
                connection: key,
                reader: thread,
                ready,
                attempts: Vec::new(),
                held_answer: None,
                tainted: false,
                grpc: None,
            },
        );
        Some(number)
    }

    /// A client sent what no parser can read: it waits for the gateway's answer like a
    /// request, so the refusal is reported and the answers after it stay in order.
    fn unreadable_request(&mut self, key: ConnectionKey, line: Option<RequestLine>) {
        self.stats.unreadable_requests += 1;
        if let Some(connection) = self.tables.connections.get_mut(&key) {
            connection.responses.expect_response_to("GET");
            connection.awaiting.push_back(None);
            connection.unreadable.push_back(line);
        }
    }

    fn outbound_request(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        head: RequestHead,
        at: u64,
    ) {
        if let Some(connection) = self.tables.connections.get_mut(&key) {
            connection.responses.expect_response_to(&head.method);
        }
        self.backend_request(key, thread, head, at);
    }

    /// A request the gateway wrote to a backend on `key`: the inbound request it serves
    /// (returned) makes an attempt there, and waits there for the answer.
    fn backend_request(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        head: RequestHead,
        at: u64,
    ) -> Option<u64> {
        let connection = self.tables.connections.get_mut(&key)?;
        let backend = connection.remote_text.clone();
        let unix = connection.unix;
        let tls = connection.tls;
        let bound = connection.bound.take();
        let link =
            self.linker
                .link_request(key, thread, self.goroutine, bound, &head, &self.tables);
        let connection = self
            .tables
            .connections
            .get_mut(&key)
            .expect("looked up above");
        connection.awaiting.push_back(link.map(|(id, _)| id));
        // A connect bound to another request than the one this request serves: that
        // request's attempt on this connection was never made.
        if let Some((bound_id, _)) = bound.filter(|(b, _)| link.is_none_or(|(id, _)| id != *b)) {
            if let Some(request) = self.tables.requests.get_mut(&bound_id) {
                request.attempts.retain(|a| {
                    !(a.connection == key && a.attempt.outcome == AttemptOutcome::Connecting)
                });
            }
        }
        let Some((id, confidence)) = link else {
            self.stats.unlinked_outbound += 1;
            return None;
        };
        let quarantined = at < self.quarantine_until && confidence != Confidence::Exact;
        let request = self.tables.requests.get_mut(&id)?;
        request.tainted |= quarantined;
        // Sent here, it was not sent on a connection it was also connecting: a pool gives a
        // waiting request whichever connection comes first (Go's transport), and the one
        // dialed for it goes to another request.
        request
            .attempts
            .retain(|a| a.connection == key || a.attempt.outcome != AttemptOutcome::Connecting);
        let connecting = request
            .attempts
            .iter_mut()
            .find(|a| a.connection == key && a.attempt.outcome == AttemptOutcome::Connecting);
        match connecting {
            Some(tracked) => {
                let attempt = &mut tracked.attempt;
                attempt.method = Some(head.method);
                attempt.target = Some(head.target);
                attempt.outcome = AttemptOutcome::Sent;
                attempt.confidence = confidence;
                attempt.tls = tls;
            }
            None => request.start_attempt(
                key,
                Attempt {
                    backend,
                    unix,
                    method: Some(head.method),
                    target: Some(head.target),
                    outcome: AttemptOutcome::Sent,
                    confidence,
                    tls,
                },
            ),
        }
        Some(id)
    }

    fn backend_response(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        response: ResponseHead,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        if !is_final(response.status) {
            return;
        }
        let Some(Some(id)) = self
            .tables
            .connections
            .get_mut(&key)
            .and_then(|c| c.awaiting.pop_front())
        else {
            return;
        };
        self.backend_answered(key, thread, id, response.status, false, at, out);
    }

    /// The backend answered request `id`'s attempt on `key` with `status`, read by `thread`:
    /// the request ends, unless the answer is held back ([`Hold`]; `trailers_to_come`: a gRPC
    /// answer, whose outcome comes in trailers).
    #[allow(clippy::too_many_arguments)]
    fn backend_answered(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        id: u64,
        status: u16,
        trailers_to_come: bool,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        let Some(request) = self.tables.requests.get_mut(&id) else {
            return;
        };
        let Some(index) = request
            .attempts
            .iter()
            .rposition(|a| a.connection == key && a.attempt.outcome == AttemptOutcome::Sent)
        else {
            return;
        };
        let attempt = &mut request.attempts[index].attempt;
        attempt.outcome = AttemptOutcome::Answered(status);
        let hold = if trailers_to_come {
            Some(Hold::Trailers)
        } else if retryable(status) {
            Some(Hold::Retryable)
        } else if attempt.confidence == Confidence::Low && self.linker.wakes_followed(key.0) {
            Some(Hold::Unconfirmed)
        } else {
            None
        };
        if let Some(hold) = hold {
            request.held_answer = Some(HeldAnswer {
                attempt: index,
                status,
                at,
                hold,
            });
            match hold {
                Hold::Retryable => self.linker.retry(thread, id),
                Hold::Unconfirmed => self.linker.answer_held(thread, id, at),
                Hold::Trailers => {}
            }
            return;
        }
        self.end(
            id,
            Ending::Backend {
                attempt: index,
                status,
            },
            at,
            out,
        );
    }

    fn gateway_response(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        response: ResponseHead,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        if !is_final(response.status) {
            return;
        }
        let Some(connection) = self.tables.connections.get_mut(&key) else {
            return;
        };
        if response.status == 101 && connection.requests.is_upgrading_to_http2() {
            // Not the answer: the request is answered on HTTP/2's stream 1.
            return self.upgrade_to_http2(key, thread, at, out);
        }
        if response.closes_connection {
            connection.answer_closed = true;
        }
        let waiting = match connection.awaiting.pop_front() {
            Some(waiting) => waiting,
            // Nothing complete waits: an answer to a head the gateway gave up on.
            None => match connection.requests.take_incomplete() {
                Some(Head::Unreadable(line)) => {
                    self.stats.unreadable_requests += 1;
                    connection.unreadable.push_back(line);
                    None
                }
                _ => {
                    self.stats.unmatched_answers += 1;
                    return;
                }
            },
        };
        let Some(id) = waiting else {
            // The gateway's answer to bytes that were no request: a refusal is an error.
            let line = connection.unreadable.pop_front().flatten();
            if response.status >= 400 {
                out.push(Outcome::Unreadable {
                    line,
                    remote_ip: connection.remote_ip.clone(),
                    tls: connection.tls,
                    status: response.status,
                    at,
                });
            }
            return;
        };
        self.answered_by_gateway(id, response.status, at, out);
    }

    /// The gateway answered request `id` (if not ended already by the backend's answer): with
    /// the backend's answer it held back, or with one of its own.
    fn answered_by_gateway(&mut self, id: u64, status: u16, at: u64, out: &mut Vec<Outcome>) {
        self.end_unless_held(id, Ending::Gateway { status }, at, out);
    }

    /// Ends `id` with the backend's answer it held back, if any, else with `ending`.
    fn end_unless_held(&mut self, id: u64, ending: Ending, at: u64, out: &mut Vec<Outcome>) {
        let Some(request) = self.tables.requests.get(&id) else {
            return;
        };
        match request.held_answer {
            Some(held) => self.end_held(id, held, out),
            None => self.end(id, ending, at, out),
        }
    }

    /// The backend ended its side (EOF or error on a read): attempts under way on it failed.
    fn backend_hung_up(&mut self, key: ConnectionKey) {
        let Some(connection) = self.tables.connections.get(&key) else {
            return;
        };
        let outcome = connection.hung_up.unwrap_or(AttemptOutcome::Closed);
        let ids = connection.attempting();
        for id in ids {
            if let Some(request) = self.tables.requests.get_mut(&id) {
                for tracked in request.attempts.iter_mut().filter(|a| a.connection == key) {
                    let attempt = &mut tracked.attempt;
                    attempt.outcome = match attempt.outcome {
                        AttemptOutcome::Connecting => AttemptOutcome::ConnectFailed,
                        AttemptOutcome::Sent => outcome,
                        other => other,
                    };
                }
            }
        }
    }

    fn count_closed(&mut self, connection: &Connection) {
        if connection.encrypted_unread && !connection.tls {
            self.stats.tls_unreadable += 1;
        }
        // Read as HTTP/2 after an upgrade: its HTTP/1 streams went opaque, the connection did
        // not.
        if connection.http2.is_none()
            && (connection.requests.is_opaque() || connection.responses.is_opaque())
        {
            self.stats.opaque_connections += 1;
        }
    }

    /// Attempts still under way on a closed outbound connection end here. Unless the backend
    /// hung up first, the gateway gave up on them (a timeout) or found the connect had
    /// failed; the thread that closed it (when known) makes the retry.
    fn outbound_closed(
        &mut self,
        key: ConnectionKey,
        connection: &Connection,
        thread: Option<ThreadKey>,
    ) {
        let ids = connection.attempting();
        for id in ids {
            let Some(request) = self.tables.requests.get_mut(&id) else {
                continue;
            };
            let mut ended = false;
            for tracked in request.attempts.iter_mut().filter(|a| a.connection == key) {
                let attempt = &mut tracked.attempt;
                let outcome = match (attempt.outcome, connection.hung_up) {
                    (AttemptOutcome::Connecting, _) => AttemptOutcome::ConnectFailed,
                    (AttemptOutcome::Sent, Some(hung_up)) => hung_up,
                    (AttemptOutcome::Sent, None) => AttemptOutcome::Abandoned,
                    (other, _) => other,
                };
                ended |= outcome != attempt.outcome;
                attempt.outcome = outcome;
            }
            if let (true, Some(thread)) = (ended, thread) {
                // A connect that follows on this thread is the retry of this request.
                self.linker.retry(thread, id);
            }
        }
    }

    /// What a socket's TCP state at close says: whether the peer (client or backend) had
    /// ended the connection first, which no read may have shown (nginx learns a client left
    /// from epoll and getsockopt).
    fn peer_state(&mut self, key: ConnectionKey, tcp_state: u8) {
        if !tcp_state::peer_ended(tcp_state) {
            return;
        }
        let Some(connection) = self.tables.connections.get_mut(&key) else {
            return;
        };
        match connection.direction {
            Direction::Inbound => connection.client_ended = true,
            Direction::Outbound => {
                if connection.hung_up.is_none() {
                    connection.hung_up = Some(if tcp_state == tcp_state::CLOSE {
                        AttemptOutcome::Reset
                    } else {
                        AttemptOutcome::Closed
                    });
                }
            }
        }
    }

    fn close(&mut self, key: ConnectionKey, thread: ThreadKey, at: u64, out: &mut Vec<Outcome>) {
        let Some(connection) = self.tables.connections.remove(&key) else {
            return;
        };
        self.count_closed(&connection);
        match connection.direction {
            Direction::Outbound => self.outbound_closed(key, &connection, Some(thread)),
            Direction::Inbound => {
                // Requests the gateway never answered: the client left first (nginx's 499),
                // the gateway ended the connection with an earlier answer, or it closed the
                // connection without answering.
                let ending = if connection.answer_closed {
                    Ending::NotServed
                } else if connection.client_ended {
                    Ending::ClientGone
                } else {
                    Ending::Dropped
                };
                self.end_unanswered(&connection, ending, at, out);
            }
        }
    }

    /// Ends the requests an inbound connection still had waiting with `ending`; one whose
    /// backend answer was held ends with that answer (the client left, or the connection went,
    /// after the backend answered).
    fn end_unanswered(
        &mut self,
        connection: &Connection,
        ending: Ending,
        at: u64,
        out: &mut Vec<Outcome>,
    ) {
        for id in connection.awaiting.iter().flatten().copied() {
            self.end_unless_held(id, ending, at, out);
        }
    }

    /// A watched process exited: its connections are gone, and what it had not answered
    /// will never be.
    fn exit(&mut self, tgid: u32, at: u64, out: &mut Vec<Outcome>) {
        let keys: Vec<ConnectionKey> = self
            .tables
            .connections
            .keys()
            .filter(|(owner, _)| *owner == tgid)
            .copied()
            .collect();
        for key in keys {
            let Some(connection) = self.tables.connections.remove(&key) else {
                continue;
            };
            self.count_closed(&connection);
            match connection.direction {
                Direction::Outbound => self.outbound_closed(key, &connection, None),
                Direction::Inbound => {
                    self.end_unanswered(&connection, Ending::GatewayExited, at, out);
                }
            }
        }
        self.linker.process_exited(tgid);
        self.peers.retain(|(owner, _), _| *owner != tgid);
    }
}

/// Whether bytes on a connection read as HTTP are TLS records no probe decrypted: only where a
/// head is expected (a body may hold any bytes).
fn tls_record_expected(connection: &Connection, carries_requests: bool, bytes: &[u8]) -> bool {
    let stream = if carries_requests {
        &connection.requests
    } else {
        &connection.responses
    };
    stream.at_head_start() && is_tls_record(bytes)
}

/// Whether bytes start a TLS record (handshake, alert or application data, TLS 1.0 to 1.3).
fn is_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x14..=0x17, 0x03, 0x00..=0x04, ..])
}
