//! The pipeline from decoded kernel records to events: follows each connection's two streams,
//! links every inbound request with the backend calls the gateway makes for it (`link`), and
//! reports INCOMING_REQUEST, REQUEST_COMPLETE and ERROR (`report`). Plain values in, events
//! out: no I/O here.
mod link;
mod report;
#[cfg(test)]
mod tests;

use std::{collections::VecDeque, net::SocketAddr, sync::Arc};

use access_log_common::syscall;
// Keys the kernel chose (pids, fds, our own ids) get a fast hash, which pays off on every
// record; id-header values come from clients and keep the DoS-resistant default.
use rustc_hash::FxHashMap as HashMap;

use crate::{
    catalog::{ApiMatch, Catalog},
    classify::AttemptOutcome,
    event::{Event, Text},
    http::{is_final, Head, RequestHead, RequestLine, ResponseHead, Side, Stream},
    record::Record,
};

pub use link::Confidence;

/// A followed socket: (process, fd). accept/connect on a reused fd replace the entry.
pub type ConnectionKey = (u32, i32);
/// A thread: (process, thread id).
type ThreadKey = (u32, u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A client connected to the gateway.
    Inbound,
    /// The gateway connected to a backend.
    Outbound,
}

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Wall-clock nanoseconds minus monotonic nanoseconds.
    pub offset_ns: i128,
}

impl Clock {
    pub fn wall(&self, monotonic_ns: u64) -> i128 {
        monotonic_ns as i128 + self.offset_ns
    }
}

/// Counts for the summary line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PipelineStats {
    pub incoming: u64,
    pub complete: u64,
    pub errors: u64,
    /// Outbound requests that could not be linked to an inbound request.
    pub unlinked_outbound: u64,
    /// Events whose pairing rests on weak evidence (marked PairingConfidence="low").
    pub low_confidence: u64,
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
}

struct Connection {
    direction: Direction,
    /// The remote address (`ip:port`) and its IP as event text, made once for all the
    /// connection's requests.
    remote_address: Option<Arc<str>>,
    remote_ip: Option<Arc<str>>,
    requests: Stream,
    responses: Stream,
    /// Requests on this connection still waiting for their response, oldest first: inbound
    /// request ids on an inbound connection (None for bytes that were no readable request);
    /// on an outbound one, the inbound request each outbound request serves (None when it
    /// could not be linked).
    awaiting: VecDeque<Option<u64>>,
    /// Inbound: what each unreadable request (a None in `awaiting`) said, oldest first.
    unreadable: VecDeque<Option<RequestLine>>,
    /// Outbound: the inbound request this connection was opened for (connect-time binding).
    bound: Option<(u64, Confidence)>,
    /// Outbound: the backend ended the connection (EOF or error) before the gateway closed it.
    hung_up: Option<AttemptOutcome>,
    /// Plaintext of this connection comes from the TLS library's probes.
    tls: bool,
    /// Ciphertext was seen on the syscall path and no TLS probe read it.
    encrypted_unread: bool,
    /// Inbound: the gateway shut down its sending side; what it reads now is drained.
    closing: bool,
    /// Inbound: the gateway's last answer ended the connection (`Connection: close`): the
    /// requests after it were not served.
    answer_closed: bool,
}

struct Attempt {
    connection: ConnectionKey,
    /// The backend's address as event text (`ip:port`).
    address: Option<Arc<str>>,
    method: Option<Text>,
    target: Option<Arc<str>>,
    outcome: AttemptOutcome,
    confidence: Confidence,
    tls: bool,
}

impl Attempt {
    fn in_progress(&self) -> bool {
        matches!(
            self.outcome,
            AttemptOutcome::Connecting | AttemptOutcome::Sent
        )
    }
}

struct InboundRequest {
    message_id: Arc<str>,
    connection: ConnectionKey,
    head: RequestHead,
    api: ApiMatch,
    /// The client's address as event text, shared by the connection's requests.
    remote_ip: Option<Arc<str>>,
    received_ns: u64,
    attempts: Vec<Attempt>,
    backend_answered: bool,
    /// A backend's answer the gateway may still retry (a 5xx or 429, as nginx's
    /// proxy_next_upstream http_5xx does): (attempt index, status, when). It ends the request
    /// when the gateway passes it on, and becomes a failed attempt when another one starts.
    retryable_answer: Option<(usize, u16, u64)>,
    /// The client's connection was TLS.
    tls: bool,
}

impl InboundRequest {
    /// Still needs a backend: nothing answered it for good and no attempt is under way.
    fn awaiting_backend(&self) -> bool {
        !self.backend_answered && !self.attempts.iter().any(Attempt::in_progress)
    }

    /// A new attempt starts: an answer held back as retryable was a failed attempt.
    fn start_attempt(&mut self, attempt: Attempt) {
        self.retryable_answer = None;
        self.attempts.push(attempt);
    }
}

/// Whether a gateway may try another backend after this answer (nginx: proxy_next_upstream
/// http_500 ... http_504, http_429; Apache: failonstatus).
fn retryable(status: u16) -> bool {
    status >= 500 || status == 429
}

/// What the pipeline needs besides records.
pub struct PipelineConfig {
    pub catalog: Catalog,
    pub clock: Clock,
    /// Lower-case names of headers whose value links an inbound request to its outbound one.
    pub id_headers: Vec<String>,
}

pub struct Pipeline {
    catalog: Catalog,
    clock: Clock,
    id_headers: Arc<[String]>,
    connections: HashMap<ConnectionKey, Connection>,
    requests: HashMap<u64, InboundRequest>,
    /// Inbound requests by their id-header value, for the exact link.
    by_correlation: std::collections::HashMap<String, u64>,
    threads: HashMap<ThreadKey, link::Thread>,
    next_request: u64,
    stats: PipelineStats,
}

impl Pipeline {
    pub fn new(config: PipelineConfig) -> Self {
        Pipeline {
            catalog: config.catalog,
            clock: config.clock,
            id_headers: config
                .id_headers
                .into_iter()
                .map(|n| n.to_ascii_lowercase())
                .collect(),
            connections: HashMap::default(),
            requests: HashMap::default(),
            by_correlation: std::collections::HashMap::new(),
            threads: HashMap::default(),
            next_request: 1,
            stats: PipelineStats::default(),
        }
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// (connections followed, requests waiting for an answer) right now.
    pub fn tracked(&self) -> (usize, usize) {
        (self.connections.len(), self.requests.len())
    }

    fn new_connection(&self, direction: Direction, remote: Option<SocketAddr>) -> Connection {
        Connection {
            direction,
            remote_address: remote.map(|r| Arc::from(r.to_string())),
            remote_ip: remote.map(|r| Arc::from(r.ip().to_string())),
            requests: Stream::with_id_headers(Side::Requests, self.id_headers.clone()),
            responses: Stream::with_id_headers(Side::Responses, self.id_headers.clone()),
            awaiting: VecDeque::new(),
            unreadable: VecDeque::new(),
            bound: None,
            hung_up: None,
            tls: false,
            encrypted_unread: false,
            closing: false,
            answer_closed: false,
        }
    }

    /// A connection that existed before attach (found in /proc).
    pub fn add_existing(
        &mut self,
        key: ConnectionKey,
        direction: Direction,
        remote: Option<SocketAddr>,
    ) {
        let mut connection = self.new_connection(direction, remote);
        // We join mid-stream: wait for a read that starts a head.
        connection.requests.resync();
        connection.responses.resync();
        self.connections.insert(key, connection);
    }

    /// Processes one record; appends the events it completes to `out`.
    pub fn process(&mut self, record: &Record<'_>, out: &mut Vec<Event>) {
        let header = *record.header();
        let key = (header.tgid, header.fd);
        let thread = (header.tgid, header.tid);
        match record {
            Record::Accept { remote, .. } => {
                self.close(key, thread, header.timestamp_ns, out);
                let connection = self.new_connection(Direction::Inbound, *remote);
                self.connections.insert(key, connection);
            }
            Record::Connect { remote, result, .. } => {
                self.close(key, thread, header.timestamp_ns, out);
                self.connect(key, thread, *remote, *result);
            }
            Record::Close { .. } => self.close(key, thread, header.timestamp_ns, out),
            Record::Shutdown { .. } => {
                if let Some(connection) = self.connections.get_mut(&key) {
                    connection.closing = true;
                }
            }
            Record::Exit { .. } => {
                let keys: Vec<_> = self
                    .connections
                    .keys()
                    .filter(|(tgid, _)| *tgid == header.tgid)
                    .copied()
                    .collect();
                for key in keys {
                    self.close(key, thread, header.timestamp_ns, out);
                }
                self.threads.retain(|(tgid, _), _| *tgid != header.tgid);
            }
            Record::Data {
                moved, captured, ..
            } => self.data(key, thread, header, *moved, captured, out),
        }
    }

    fn data(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        header: access_log_common::RecordHeader,
        moved: i64,
        captured: &[u8],
        out: &mut Vec<Event>,
    ) {
        let Some(connection) = self.connections.get_mut(&key) else {
            self.stats.unknown_connection_records += 1;
            return;
        };
        let ingress = syscall::is_ingress(header.syscall);
        let direction = connection.direction;
        if syscall::is_tls(header.syscall) {
            connection.tls = true;
        } else if moved > 0 && is_tls_record(captured) {
            // Ciphertext no probe decrypted: counted at close, never parsed.
            connection.encrypted_unread = true;
            return;
        }
        if moved <= 0 {
            if direction == Direction::Outbound && ingress {
                connection.hung_up = Some(link::hang_up_outcome(moved));
                self.backend_hung_up(key);
            }
            return;
        }
        if direction == Direction::Inbound && ingress {
            if connection.closing {
                // Drained by a gateway closing the connection: never served, not a request.
                self.stats.drained_reads += 1;
                return;
            }
            self.thread(thread).inbound_read(key);
        }
        let missing = (moved as u64).saturating_sub(captured.len() as u64);
        let connection = self.connections.get_mut(&key).expect("looked up above");
        let carries_requests = ingress == (direction == Direction::Inbound);
        let stream = if carries_requests {
            &mut connection.requests
        } else {
            &mut connection.responses
        };
        let at = header.timestamp_ns;
        let heads = stream.feed(captured, missing);
        let answered = heads
            .iter()
            .any(|h| matches!(h, Head::Response(r) if is_final(r.status)));
        self.heads(key, thread, direction, heads, at, out);
        if answered {
            self.upgrade_answered(key, thread, direction, at, out);
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
        out: &mut Vec<Event>,
    ) {
        let Some(connection) = self.connections.get_mut(&key) else {
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
        out: &mut Vec<Event>,
    ) {
        for head in heads {
            match (direction, head) {
                (Direction::Inbound, Head::Request(request)) => {
                    self.inbound_request(key, thread, request, at, out)
                }
                (Direction::Inbound, Head::Response(response)) => {
                    self.gateway_response(key, response, at, out)
                }
                (Direction::Outbound, Head::Request(request)) => {
                    self.outbound_request(key, thread, request)
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

    fn thread(&mut self, thread: ThreadKey) -> &mut link::Thread {
        self.threads.entry(thread).or_default()
    }

    fn connect(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        remote: Option<SocketAddr>,
        result: i64,
    ) {
        const EINPROGRESS: i64 = -115;
        let mut connection = self.new_connection(Direction::Outbound, remote);
        let failed = result < 0 && result != EINPROGRESS;
        if let Some((id, confidence)) = self.link_connect(thread) {
            if let Some(request) = self.requests.get_mut(&id) {
                request.start_attempt(Attempt {
                    connection: key,
                    address: connection.remote_address.clone(),
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
                });
                if failed {
                    self.thread(thread).retry_for = Some(id);
                } else {
                    connection.bound = Some((id, confidence));
                }
            }
        }
        self.connections.insert(key, connection);
    }

    fn inbound_request(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        head: RequestHead,
        at: u64,
        out: &mut Vec<Event>,
    ) {
        let id = self.next_request;
        self.next_request += 1;
        let Some(connection) = self.connections.get_mut(&key) else {
            return;
        };
        connection.responses.expect_response_to(&head.method);
        connection.awaiting.push_back(Some(id));
        if let Some(correlation) = &head.correlation {
            self.by_correlation.insert(correlation.clone(), id);
        }
        let request = InboundRequest {
            message_id: report::new_message_id(),
            connection: key,
            api: self.catalog.lookup(&head.target),
            head,
            remote_ip: connection.remote_ip.clone(),
            received_ns: at,
            attempts: Vec::new(),
            backend_answered: false,
            retryable_answer: None,
            tls: connection.tls,
        };
        out.push(report::incoming(&request, self.clock.wall(at)));
        self.stats.incoming += 1;
        self.requests.insert(id, request);
        self.thread(thread).last_request = Some(id);
    }

    /// A client sent what no parser can read: it waits for the gateway's answer like a
    /// request, so the refusal is reported and the answers after it stay in order.
    fn unreadable_request(&mut self, key: ConnectionKey, line: Option<RequestLine>) {
        self.stats.unreadable_requests += 1;
        if let Some(connection) = self.connections.get_mut(&key) {
            connection.responses.expect_response_to("GET");
            connection.awaiting.push_back(None);
            connection.unreadable.push_back(line);
        }
    }

    fn outbound_request(&mut self, key: ConnectionKey, thread: ThreadKey, head: RequestHead) {
        let Some(connection) = self.connections.get_mut(&key) else {
            return;
        };
        connection.responses.expect_response_to(&head.method);
        let address = connection.remote_address.clone();
        let tls = connection.tls;
        let bound = connection.bound.take();
        let link = self.link_request(key, thread, bound, &head);
        let connection = self.connections.get_mut(&key).expect("looked up above");
        connection.awaiting.push_back(link.map(|(id, _)| id));
        let Some((id, confidence)) = link else {
            self.stats.unlinked_outbound += 1;
            return;
        };
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        let connecting = request
            .attempts
            .iter_mut()
            .find(|a| a.connection == key && a.outcome == AttemptOutcome::Connecting);
        match connecting {
            Some(attempt) => {
                attempt.method = Some(head.method);
                attempt.target = Some(head.target);
                attempt.outcome = AttemptOutcome::Sent;
                attempt.confidence = confidence;
                attempt.tls = tls;
            }
            None => request.start_attempt(Attempt {
                connection: key,
                address,
                method: Some(head.method),
                target: Some(head.target),
                outcome: AttemptOutcome::Sent,
                confidence,
                tls,
            }),
        }
    }

    /// The request a final response on `key` answers (the oldest one waiting there).
    fn answered(&mut self, key: ConnectionKey, response: &ResponseHead) -> Option<u64> {
        if !is_final(response.status) {
            return None;
        }
        self.connections.get_mut(&key)?.awaiting.pop_front()?
    }

    fn backend_response(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        response: ResponseHead,
        at: u64,
        out: &mut Vec<Event>,
    ) {
        let Some(id) = self.answered(key, &response) else {
            return;
        };
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        let Some(index) = request
            .attempts
            .iter()
            .rposition(|a| a.connection == key && a.outcome == AttemptOutcome::Sent)
        else {
            return;
        };
        request.attempts[index].outcome = AttemptOutcome::Answered(response.status);
        if retryable(response.status) {
            // Wait: the gateway may try another backend; the thread that read this answer
            // is the one that would.
            request.retryable_answer = Some((index, response.status, at));
            self.thread(thread).retry_for = Some(id);
            return;
        }
        self.complete(id, index, response.status, at, out);
    }

    /// REQUEST_COMPLETE: the backend's answer on attempt `index` ends the request.
    fn complete(&mut self, id: u64, index: usize, status: u16, at: u64, out: &mut Vec<Event>) {
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        request.backend_answered = true;
        request.retryable_answer = None;
        push_complete(
            &mut self.stats,
            self.clock,
            request,
            (index, status, at),
            out,
        );
    }

    /// The request ends with the retryable answer it holds, if any (the gateway passed it on,
    /// or the client left): returns whether it did.
    fn complete_held(&mut self, request: &InboundRequest, out: &mut Vec<Event>) -> bool {
        let Some(answer) = request.retryable_answer else {
            return false;
        };
        push_complete(&mut self.stats, self.clock, request, answer, out);
        true
    }

    fn gateway_response(
        &mut self,
        key: ConnectionKey,
        response: ResponseHead,
        at: u64,
        out: &mut Vec<Event>,
    ) {
        if !is_final(response.status) {
            return;
        }
        let Some(connection) = self.connections.get_mut(&key) else {
            return;
        };
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
                _ => return,
            },
        };
        let Some(id) = waiting else {
            // The gateway's answer to bytes that were no request: a refusal is an error.
            let line = connection.unreadable.pop_front().flatten();
            if response.status >= 400 {
                out.push(report::unreadable(
                    line.as_ref(),
                    connection.remote_ip.as_ref(),
                    connection.tls,
                    response.status,
                    self.clock.wall(at),
                ));
                self.stats.errors += 1;
            }
            return;
        };
        let Some(request) = self.forget(id) else {
            return;
        };
        if request.backend_answered || self.complete_held(&request, out) {
            return;
        }
        if let Some(event) = report::error(&request, response.status, self.clock.wall(at)) {
            self.count_error(&request);
            out.push(event);
        }
    }

    fn count_error(&mut self, request: &InboundRequest) {
        self.stats.errors += 1;
        if request
            .attempts
            .last()
            .is_some_and(|a| a.confidence == Confidence::Low)
        {
            self.stats.low_confidence += 1;
        }
    }

    fn forget(&mut self, id: u64) -> Option<InboundRequest> {
        let request = self.requests.remove(&id)?;
        if let Some(correlation) = &request.head.correlation {
            if self.by_correlation.get(correlation) == Some(&id) {
                self.by_correlation.remove(correlation);
            }
        }
        Some(request)
    }

    /// The backend ended its side (EOF or error on a read): attempts under way on it failed.
    fn backend_hung_up(&mut self, key: ConnectionKey) {
        let Some(connection) = self.connections.get(&key) else {
            return;
        };
        let outcome = connection.hung_up.unwrap_or(AttemptOutcome::Closed);
        let ids: Vec<u64> = connection
            .awaiting
            .iter()
            .flatten()
            .copied()
            .chain(connection.bound.map(|(id, _)| id))
            .collect();
        for id in ids {
            if let Some(request) = self.requests.get_mut(&id) {
                for attempt in request.attempts.iter_mut().filter(|a| a.connection == key) {
                    attempt.outcome = match attempt.outcome {
                        AttemptOutcome::Connecting => AttemptOutcome::ConnectFailed,
                        AttemptOutcome::Sent => outcome,
                        other => other,
                    };
                }
            }
        }
    }

    fn close(&mut self, key: ConnectionKey, thread: ThreadKey, at: u64, out: &mut Vec<Event>) {
        let Some(connection) = self.connections.remove(&key) else {
            return;
        };
        if connection.encrypted_unread && !connection.tls {
            self.stats.tls_unreadable += 1;
        }
        if connection.requests.is_opaque() || connection.responses.is_opaque() {
            self.stats.opaque_connections += 1;
        }
        match connection.direction {
            Direction::Outbound => {
                // Attempts still under way end here. Unless the backend hung up first, the
                // gateway gave up on them (a timeout) or found the connect had failed.
                let ids: Vec<u64> = connection
                    .awaiting
                    .iter()
                    .flatten()
                    .copied()
                    .chain(connection.bound.map(|(id, _)| id))
                    .collect();
                for id in ids {
                    let Some(request) = self.requests.get_mut(&id) else {
                        continue;
                    };
                    let mut ended = false;
                    for attempt in request.attempts.iter_mut().filter(|a| a.connection == key) {
                        let outcome = match (attempt.outcome, connection.hung_up) {
                            (AttemptOutcome::Connecting, _) => AttemptOutcome::ConnectFailed,
                            (AttemptOutcome::Sent, Some(hung_up)) => hung_up,
                            (AttemptOutcome::Sent, None) => AttemptOutcome::Abandoned,
                            (other, _) => other,
                        };
                        ended |= outcome != attempt.outcome;
                        attempt.outcome = outcome;
                    }
                    if ended && !request.backend_answered {
                        // A connect that follows on this thread is the retry of this request.
                        self.threads.entry(thread).or_default().retry_for = Some(id);
                    }
                }
            }
            Direction::Inbound => {
                // Requests the gateway never answered: the client left first (nginx's 499),
                // or the gateway ended the connection with an earlier answer.
                for id in connection.awaiting.into_iter().flatten() {
                    let Some(request) = self.forget(id) else {
                        continue;
                    };
                    if request.backend_answered || self.complete_held(&request, out) {
                        continue;
                    }
                    let wall = self.clock.wall(at);
                    let event = if connection.answer_closed {
                        report::not_served(&request, wall)
                    } else {
                        report::client_gone(&request, wall)
                    };
                    self.count_error(&request);
                    out.push(event);
                }
            }
        }
    }
}

/// REQUEST_COMPLETE for the answer (attempt index, status, when) of `request`, counted.
fn push_complete(
    stats: &mut PipelineStats,
    clock: Clock,
    request: &InboundRequest,
    (index, status, at): (usize, u16, u64),
    out: &mut Vec<Event>,
) {
    out.push(report::complete(request, index, status, at, clock.wall(at)));
    if request.attempts[index].confidence == Confidence::Low {
        stats.low_confidence += 1;
    }
    stats.complete += 1;
}

/// Whether bytes start a TLS record (handshake, alert or application data, TLS 1.0 to 1.3).
fn is_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x14..=0x17, 0x03, 0x00..=0x04, ..])
}
