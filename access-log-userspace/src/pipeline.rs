//! The pipeline from decoded kernel records to events: follows each connection's two streams,
//! pairs every inbound request with the backend calls the gateway makes for it, and emits
//! INCOMING_REQUEST, REQUEST_COMPLETE and ERROR. Plain values in, events out: no I/O here.
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use access_log_common::syscall;

use crate::{
    catalog::{ApiMatch, Catalog},
    classify::{classify, AttemptOutcome},
    event::{Event, EventKind, Fields},
    http::{Head, RequestHead, ResponseHead, Side, Stream},
    record::Record,
};

/// A followed socket: (process, fd). fd reuse is handled by accept/connect replacing the entry.
pub type ConnectionKey = (u32, i32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A client connected to the gateway.
    Inbound,
    /// The gateway connected to a backend.
    Outbound,
}

struct Connection {
    direction: Direction,
    remote: Option<SocketAddr>,
    requests: Stream,
    responses: Stream,
    /// Requests on this connection still waiting for their response, oldest first: inbound
    /// request ids for an inbound connection; for an outbound one, the inbound request each
    /// outbound request serves (None when it could not be linked).
    awaiting: VecDeque<Option<u64>>,
    /// Outbound: the inbound request this connection was opened for (connect-time binding).
    bound: Option<u64>,
}

impl Connection {
    fn new(direction: Direction, remote: Option<SocketAddr>) -> Self {
        Connection {
            direction,
            remote,
            requests: Stream::new(Side::Requests),
            responses: Stream::new(Side::Responses),
            awaiting: VecDeque::new(),
            bound: None,
        }
    }
}

struct Attempt {
    connection: ConnectionKey,
    remote: Option<SocketAddr>,
    method: Option<String>,
    target: Option<String>,
    outcome: AttemptOutcome,
}

impl Attempt {
    fn in_progress(&self) -> bool {
        matches!(
            self.outcome,
            AttemptOutcome::Connecting | AttemptOutcome::Sent
        )
    }

    fn url(&self) -> Option<String> {
        let remote = self.remote?;
        Some(format!(
            "http://{remote}{}",
            self.target.as_deref().unwrap_or("")
        ))
    }
}

struct InboundRequest {
    message_id: String,
    tgid: u32,
    head: RequestHead,
    api: ApiMatch,
    remote: Option<SocketAddr>,
    received_ns: u64,
    attempts: Vec<Attempt>,
    backend_answered: bool,
}

impl InboundRequest {
    fn awaiting_backend(&self) -> bool {
        !self.backend_answered && !self.attempts.iter().any(Attempt::in_progress)
    }

    /// The fields every event repeats from the incoming request.
    fn incoming_fields(&self, fields: Fields) -> Fields {
        fields
            .text("RequestInURL", self.head.target.clone())
            .text("RequestInMethod", self.head.method.clone())
            .optional_text("UserAgent", self.head.user_agent.clone())
            .optional_text("RemoteIP", self.remote.map(|r| r.ip().to_string()))
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
    /// Data on a socket the pipeline did not know (opened before a gap).
    pub unknown_connection_records: u64,
}

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock nanoseconds minus monotonic nanoseconds.
    pub offset_ns: i128,
}

impl Clock {
    pub fn wall(&self, monotonic_ns: u64) -> i128 {
        monotonic_ns as i128 + self.offset_ns
    }
}

pub struct Pipeline {
    catalog: Catalog,
    clock: Clock,
    connections: HashMap<ConnectionKey, Connection>,
    requests: HashMap<u64, InboundRequest>,
    /// The last inbound request completed on each thread: the request a connect() made next on
    /// that thread is for.
    last_on_thread: HashMap<(u32, u32), u64>,
    next_request: u64,
    stats: PipelineStats,
}

impl Pipeline {
    pub fn new(catalog: Catalog, clock: Clock) -> Self {
        Pipeline {
            catalog,
            clock,
            connections: HashMap::new(),
            requests: HashMap::new(),
            last_on_thread: HashMap::new(),
            next_request: 1,
            stats: PipelineStats::default(),
        }
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// A connection that existed before attach (found in /proc).
    pub fn add_existing(
        &mut self,
        key: ConnectionKey,
        direction: Direction,
        remote: Option<SocketAddr>,
    ) {
        let mut connection = Connection::new(direction, remote);
        // We join mid-stream: wait for a read that starts a head.
        connection.requests.resync();
        connection.responses.resync();
        self.connections.insert(key, connection);
    }

    /// Processes one record; appends the events it completes to `out`.
    pub fn process(&mut self, record: &Record, out: &mut Vec<Event>) {
        let header = *record.header();
        let key = (header.tgid, header.fd);
        match record {
            Record::Accept { remote, .. } => {
                self.close(key);
                self.connections
                    .insert(key, Connection::new(Direction::Inbound, *remote));
            }
            Record::Connect { remote, result, .. } => {
                self.close(key);
                self.connect(key, header.tid, *remote, *result);
            }
            Record::Close { .. } => self.close(key),
            Record::Exit { .. } => {
                let keys: Vec<_> = self
                    .connections
                    .keys()
                    .filter(|(tgid, _)| *tgid == header.tgid)
                    .copied()
                    .collect();
                for key in keys {
                    self.close(key);
                }
                self.last_on_thread
                    .retain(|(tgid, _), _| *tgid != header.tgid);
            }
            Record::Data {
                moved, captured, ..
            } => {
                let Some(connection) = self.connections.get_mut(&key) else {
                    self.stats.unknown_connection_records += 1;
                    return;
                };
                let ingress = syscall::is_ingress(header.syscall);
                let direction = connection.direction;
                if *moved <= 0 {
                    if direction == Direction::Outbound && ingress {
                        self.backend_hung_up(key);
                    }
                    return;
                }
                let missing = (*moved as u64).saturating_sub(captured.len() as u64);
                let carries_requests = ingress == (direction == Direction::Inbound);
                let stream = if carries_requests {
                    &mut connection.requests
                } else {
                    &mut connection.responses
                };
                let heads = stream.feed(captured, missing);
                for head in heads {
                    let at = header.timestamp_ns;
                    match (direction, head) {
                        (Direction::Inbound, Head::Request(request)) => {
                            self.inbound_request(key, header.tid, request, at, out)
                        }
                        (Direction::Inbound, Head::Response(response)) => {
                            self.gateway_response(key, response, at, out)
                        }
                        (Direction::Outbound, Head::Request(request)) => {
                            self.outbound_request(key, header.tid, request)
                        }
                        (Direction::Outbound, Head::Response(response)) => {
                            self.backend_response(key, response, at, out)
                        }
                    }
                }
            }
        }
    }

    fn connect(&mut self, key: ConnectionKey, tid: u32, remote: Option<SocketAddr>, result: i64) {
        const EINPROGRESS: i64 = -115;
        let mut connection = Connection::new(Direction::Outbound, remote);
        let failed = result < 0 && result != EINPROGRESS;
        let candidate = self
            .last_on_thread
            .get(&(key.0, tid))
            .copied()
            .filter(|id| self.requests.get(id).is_some_and(|r| r.awaiting_backend()));
        if let Some(id) = candidate {
            if let Some(request) = self.requests.get_mut(&id) {
                request.attempts.push(Attempt {
                    connection: key,
                    remote,
                    method: None,
                    target: None,
                    outcome: if failed {
                        AttemptOutcome::ConnectFailed
                    } else {
                        AttemptOutcome::Connecting
                    },
                });
                connection.bound = (!failed).then_some(id);
            }
        }
        self.connections.insert(key, connection);
    }

    fn inbound_request(
        &mut self,
        key: ConnectionKey,
        tid: u32,
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
        let request = InboundRequest {
            message_id: new_message_id(),
            tgid: key.0,
            api: self.catalog.lookup(&head.target),
            head,
            remote: connection.remote,
            received_ns: at,
            attempts: Vec::new(),
            backend_answered: false,
        };
        let fields = Fields::new()
            .text("Event", EventKind::IncomingRequest.as_str())
            .text("MessageID", request.message_id.clone())
            .text("API", request.api.name());
        let mut fields = request.incoming_fields(fields);
        if request.head.truncated {
            fields = fields.text("RequestInURLTruncated", "true");
        }
        out.push(Event {
            unix_nanos: self.clock.wall(at),
            kind: EventKind::IncomingRequest,
            fields: fields.build(),
        });
        self.stats.incoming += 1;
        self.requests.insert(id, request);
        self.last_on_thread.insert((key.0, tid), id);
    }

    fn outbound_request(&mut self, key: ConnectionKey, tid: u32, head: RequestHead) {
        let Some(connection) = self.connections.get_mut(&key) else {
            return;
        };
        connection.responses.expect_response_to(&head.method);
        let remote = connection.remote;
        let bound = connection.bound.take().filter(|id| {
            self.requests.get(id).is_some_and(|r| {
                r.attempts
                    .iter()
                    .any(|a| a.connection == key && a.outcome == AttemptOutcome::Connecting)
            })
        });
        let id = bound.or_else(|| self.best_candidate(key.0, tid, &head));
        let connection = self.connections.get_mut(&key).expect("looked up above");
        connection.awaiting.push_back(id);
        let Some(request) = id.and_then(|id| self.requests.get_mut(&id)) else {
            self.stats.unlinked_outbound += 1;
            return;
        };
        let existing = request
            .attempts
            .iter_mut()
            .find(|a| a.connection == key && a.outcome == AttemptOutcome::Connecting);
        match existing {
            Some(attempt) => {
                attempt.method = Some(head.method);
                attempt.target = Some(head.target);
                attempt.outcome = AttemptOutcome::Sent;
            }
            None => request.attempts.push(Attempt {
                connection: key,
                remote,
                method: Some(head.method),
                target: Some(head.target),
                outcome: AttemptOutcome::Sent,
            }),
        }
    }

    /// The inbound request an outbound request on a reused connection serves: among the
    /// process's requests still waiting for a backend, the one whose content fits best, the
    /// thread's latest on a tie.
    fn best_candidate(&self, tgid: u32, tid: u32, head: &RequestHead) -> Option<u64> {
        let latest = self.last_on_thread.get(&(tgid, tid)).copied();
        self.requests
            .iter()
            .filter(|(_, r)| r.tgid == tgid && r.awaiting_backend())
            .map(|(id, r)| {
                let score = content_score(&r.head, head) * 2 + u32::from(Some(*id) == latest);
                (score, *id)
            })
            .max()
            .map(|(_, id)| id)
    }

    fn backend_response(
        &mut self,
        key: ConnectionKey,
        response: ResponseHead,
        at: u64,
        out: &mut Vec<Event>,
    ) {
        if response.status < 200 {
            return;
        }
        let Some(connection) = self.connections.get_mut(&key) else {
            return;
        };
        let Some(Some(id)) = connection.awaiting.pop_front() else {
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
        request.backend_answered = true;
        let attempt = &request.attempts[index];
        let elapsed_ms = at.saturating_sub(request.received_ns) as f64 / 1e6;
        let fields = Fields::new()
            .text("Event", EventKind::RequestComplete.as_str())
            .text("MessageID", new_message_id())
            .text("API", request.api.name())
            .text("ResponseTo", request.message_id.clone())
            .integer("StatusCode", response.status.into())
            .optional_text("RequestOutURL", attempt.url())
            .optional_text("RequestOutMethod", attempt.method.clone());
        let fields = request
            .incoming_fields(fields)
            .millis("ResponseTimeMs", elapsed_ms)
            .integer("Attempts", request.attempts.len() as u64);
        out.push(Event {
            unix_nanos: self.clock.wall(at),
            kind: EventKind::RequestComplete,
            fields: fields.build(),
        });
        self.stats.complete += 1;
    }

    fn gateway_response(
        &mut self,
        key: ConnectionKey,
        response: ResponseHead,
        at: u64,
        out: &mut Vec<Event>,
    ) {
        if response.status < 200 {
            return;
        }
        let Some(connection) = self.connections.get_mut(&key) else {
            return;
        };
        let Some(Some(id)) = connection.awaiting.pop_front() else {
            return;
        };
        let Some(request) = self.requests.remove(&id) else {
            return;
        };
        if request.backend_answered {
            return;
        }
        let outcomes: Vec<_> = request.attempts.iter().map(|a| a.outcome).collect();
        let api_known = matches!(request.api, ApiMatch::Known(_));
        let Some(class) = classify(
            response.status,
            &outcomes,
            request.head.has_credentials,
            api_known,
        ) else {
            return;
        };
        let mut fields = Fields::new()
            .text("ErrorSource", class.source)
            .text("Event", EventKind::Error.as_str())
            .text("MessageID", new_message_id());
        if !matches!(request.api, ApiMatch::Unknown) {
            fields = fields.text("API", request.api.name());
        }
        fields = fields
            .integer("StatusCode", response.status.into())
            .text("ERROR_CODE", class.code)
            .text("ERROR_MESSAGE", class.message)
            .text("ResponseTo", request.message_id.clone());
        fields = request.incoming_fields(fields);
        if let Some(last) = request.attempts.last() {
            fields = fields
                .optional_text("RequestOutURL", last.url())
                .integer("Attempts", request.attempts.len() as u64);
        }
        out.push(Event {
            unix_nanos: self.clock.wall(at),
            kind: EventKind::Error,
            fields: fields.build(),
        });
        self.stats.errors += 1;
    }

    /// The backend ended its side (EOF or error on a read): attempts still waiting failed.
    fn backend_hung_up(&mut self, key: ConnectionKey) {
        let Some(connection) = self.connections.get(&key) else {
            return;
        };
        let ids: Vec<u64> = connection
            .awaiting
            .iter()
            .flatten()
            .copied()
            .chain(connection.bound)
            .collect();
        for id in ids {
            if let Some(request) = self.requests.get_mut(&id) {
                for attempt in request.attempts.iter_mut().filter(|a| a.connection == key) {
                    attempt.outcome = match attempt.outcome {
                        AttemptOutcome::Connecting => AttemptOutcome::ConnectFailed,
                        AttemptOutcome::Sent => AttemptOutcome::Closed,
                        other => other,
                    };
                }
            }
        }
    }

    fn close(&mut self, key: ConnectionKey) {
        let Some(connection) = self.connections.get(&key) else {
            return;
        };
        match connection.direction {
            Direction::Outbound => {
                self.backend_hung_up(key);
                self.connections.remove(&key);
            }
            Direction::Inbound => {
                if let Some(connection) = self.connections.remove(&key) {
                    // Requests the gateway never answered: the client left first.
                    for id in connection.awaiting.into_iter().flatten() {
                        self.requests.remove(&id);
                    }
                }
            }
        }
    }
}

/// How well an outbound request's content fits an inbound one (method, query, last segment).
fn content_score(inbound: &RequestHead, outbound: &RequestHead) -> u32 {
    let (in_path, in_query) = split_target(&inbound.target);
    let (out_path, out_query) = split_target(&outbound.target);
    let last_segment = in_path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
    u32::from(inbound.method == outbound.method)
        + u32::from(in_query == out_query)
        + u32::from(!last_segment.is_empty() && out_path.ends_with(last_segment))
}

fn split_target(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

fn new_message_id() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

#[cfg(test)]
mod tests {
    use access_log_common::{kind, syscall, RecordHeader};
    use bytes::Bytes;

    use super::*;

    const WORKER: u32 = 100;
    const CLIENT: &str = "10.0.0.7:50000";
    const BACKEND: &str = "127.0.0.1:8081";

    struct Script {
        pipeline: Pipeline,
        now: u64,
        events: Vec<Event>,
    }

    impl Script {
        fn new(catalog: &str) -> Self {
            Script {
                pipeline: Pipeline::new(Catalog::parse(catalog).unwrap(), Clock { offset_ns: 0 }),
                now: 1_000_000,
                events: Vec::new(),
            }
        }

        fn header(&mut self, record_kind: u32, fd: i32, call: u32) -> RecordHeader {
            self.now += 1_000_000;
            RecordHeader {
                timestamp_ns: self.now,
                kind: record_kind,
                tgid: WORKER,
                tid: WORKER,
                fd,
                syscall: call,
                captured_len: 0,
                result: 0,
            }
        }

        fn feed(&mut self, record: Record) {
            self.pipeline.process(&record, &mut self.events);
        }

        fn accept(&mut self, fd: i32) {
            let header = self.header(kind::ACCEPT, fd, 0);
            self.feed(Record::Accept {
                header,
                remote: Some(CLIENT.parse().unwrap()),
            });
        }

        fn connect(&mut self, fd: i32, result: i64) {
            let header = self.header(kind::CONNECT, fd, 0);
            self.feed(Record::Connect {
                header,
                remote: Some(BACKEND.parse().unwrap()),
                result,
            });
        }

        fn data(&mut self, fd: i32, call: u32, bytes: &[u8]) {
            let header = self.header(kind::DATA, fd, call);
            self.feed(Record::Data {
                header,
                moved: bytes.len() as i64,
                captured: Bytes::copy_from_slice(bytes),
            });
        }

        fn close(&mut self, fd: i32) {
            let header = self.header(kind::CLOSE, fd, 0);
            self.feed(Record::Close { header });
        }

        fn of(&self, kind: EventKind) -> Vec<&Event> {
            self.events.iter().filter(|e| e.kind == kind).collect()
        }
    }

    const CATALOG: &str =
        "[[api]]\nname='Orders'\nversion='v1'\ncontext='/orders'\nprovider='demo'\n";

    #[test]
    fn proxied_request_is_paired_through_a_new_upstream_connection() {
        let mut s = Script::new(CATALOG);
        s.accept(5);
        s.data(
            5,
            syscall::RECVFROM,
            b"GET /orders/7?x=1 HTTP/1.1\r\nUser-Agent: t/1\r\n\r\n",
        );
        s.connect(9, -115);
        s.data(
            9,
            syscall::WRITEV,
            b"GET /v1/orders/7?x=1 HTTP/1.0\r\nHost: b\r\n\r\n",
        );
        s.data(
            9,
            syscall::RECVFROM,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        );
        s.close(9);
        s.data(
            5,
            syscall::WRITEV,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        );
        let incoming = s.of(EventKind::IncomingRequest);
        let complete = s.of(EventKind::RequestComplete);
        assert_eq!((incoming.len(), complete.len()), (1, 1));
        assert!(s.of(EventKind::Error).is_empty());
        let done = complete[0];
        assert_eq!(done.text("ResponseTo"), incoming[0].text("MessageID"));
        assert_eq!(
            done.get("StatusCode"),
            Some(&crate::event::Value::Integer(200))
        );
        assert_eq!(
            done.text("RequestOutURL"),
            Some("http://127.0.0.1:8081/v1/orders/7?x=1")
        );
        assert_eq!(done.text("API"), Some("demo--Orders:v1"));
        assert_eq!(done.text("RemoteIP"), Some("10.0.0.7"));
        assert_eq!(done.text("UserAgent"), Some("t/1"));
    }

    #[test]
    fn keep_alive_upstream_reuse_pairs_by_content() {
        let mut s = Script::new(CATALOG);
        s.pipeline.add_existing(
            (WORKER, 9),
            Direction::Outbound,
            Some(BACKEND.parse().unwrap()),
        );
        s.accept(5);
        s.accept(6);
        s.data(5, syscall::RECVFROM, b"GET /orders/a HTTP/1.1\r\n\r\n");
        s.data(6, syscall::RECVFROM, b"GET /orders/b HTTP/1.1\r\n\r\n");
        // The worker sends b's request first on the pooled connection, then a's.
        s.data(9, syscall::WRITEV, b"GET /v1/orders/b HTTP/1.1\r\n\r\n");
        s.data(
            9,
            syscall::RECVFROM,
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        s.data(9, syscall::WRITEV, b"GET /v1/orders/a HTTP/1.1\r\n\r\n");
        s.data(
            9,
            syscall::RECVFROM,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        let incoming = s.of(EventKind::IncomingRequest);
        let complete = s.of(EventKind::RequestComplete);
        assert_eq!(complete.len(), 2);
        for done in complete {
            let request = incoming
                .iter()
                .find(|i| i.text("MessageID") == done.text("ResponseTo"))
                .unwrap();
            let tail = request
                .text("RequestInURL")
                .unwrap()
                .trim_start_matches("/orders");
            assert!(done.text("RequestOutURL").unwrap().ends_with(tail));
        }
    }

    #[test]
    fn refused_backend_is_a_fault_with_the_connect_code() {
        let mut s = Script::new(CATALOG);
        s.accept(5);
        s.data(5, syscall::RECVFROM, b"GET /orders/x HTTP/1.1\r\n\r\n");
        s.connect(9, -115);
        s.close(9);
        s.data(
            5,
            syscall::WRITEV,
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
        );
        let errors = s.of(EventKind::Error);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].text("ErrorSource"), Some("fault"));
        assert_eq!(errors[0].text("ERROR_CODE"), Some("101503"));
        assert_eq!(
            errors[0].text("RequestOutURL"),
            Some("http://127.0.0.1:8081")
        );
    }

    #[test]
    fn backend_closing_after_the_request_is_a_closed_connection() {
        let mut s = Script::new(CATALOG);
        s.accept(5);
        s.data(5, syscall::RECVFROM, b"GET /orders/x HTTP/1.1\r\n\r\n");
        s.connect(9, 0);
        s.data(9, syscall::WRITEV, b"GET /v1/orders/x HTTP/1.1\r\n\r\n");
        s.data(9, syscall::RECVFROM, b"");
        s.close(9);
        s.data(
            5,
            syscall::WRITEV,
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(s.of(EventKind::Error)[0].text("ERROR_CODE"), Some("101505"));
    }

    #[test]
    fn gateway_answers_without_backend_call_are_errors_by_status() {
        let mut s = Script::new(CATALOG);
        s.accept(5);
        s.data(5, syscall::RECVFROM, b"GET /nothing HTTP/1.1\r\n\r\n");
        s.data(
            5,
            syscall::WRITEV,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        );
        s.data(
            5,
            syscall::RECVFROM,
            b"GET /orders/1 HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
        );
        s.data(
            5,
            syscall::WRITEV,
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
        );
        let errors = s.of(EventKind::Error);
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].text("ErrorSource"), Some("main"));
        assert_eq!(errors[0].text("API"), None, "no API matched");
        assert_eq!(errors[1].text("ERROR_CODE"), Some("900901"));
        assert_eq!(errors[1].text("API"), Some("demo--Orders:v1"));
        assert!(!format!("{:?}", s.events).contains("Bearer"));
    }

    #[test]
    fn a_client_that_leaves_first_leaves_no_state() {
        let mut s = Script::new(CATALOG);
        s.accept(5);
        s.data(5, syscall::RECVFROM, b"GET /orders/x HTTP/1.1\r\n\r\n");
        s.close(5);
        assert!(s.pipeline.requests.is_empty());
        assert!(s.pipeline.connections.is_empty());
    }
}
