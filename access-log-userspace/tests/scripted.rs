//! Pairing and classification over scripted kernel records, as nginx produces them: records
//! through the pipeline and the event builder, with the pipeline's invariant checked after
//! every script (each request ends exactly once, in an ending or a loss).
use std::collections::HashMap;

use access_log::{
    event::{
        catalog::Catalog, classify::CREDENTIAL_HEADERS, redact::Redactor, Event, EventBuilder,
        EventKind, Value,
    },
    kernel::{record::Record, Clock, Direction},
    pipeline::{Bounds, Outcome, Pipeline, PipelineConfig},
};
use access_log_common::{call, flags, kind, RecordHeader};

const WORKER: u32 = 100;
const CLIENT: &str = "10.0.0.7:50000";
const BACKEND: &str = "127.0.0.1:8081";

struct Script {
    pipeline: Pipeline,
    builder: EventBuilder,
    now: u64,
    outcomes: Vec<Outcome>,
    events: Vec<Event>,
    lost_before: u64,
    /// The thread the next records come from.
    thread: u32,
}

impl Script {
    fn new(catalog: &str) -> Self {
        Script {
            pipeline: Pipeline::new(PipelineConfig {
                id_headers: vec!["x-request-id".into()],
                noted_headers: CREDENTIAL_HEADERS.iter().map(|h| (*h).to_owned()).collect(),
                ..PipelineConfig::default()
            }),
            builder: EventBuilder::new(
                Catalog::parse(catalog).unwrap(),
                Clock { offset_ns: 0 },
                Redactor::new(true, &[]),
            ),
            now: 1_000_000,
            outcomes: Vec::new(),
            events: Vec::new(),
            lost_before: 0,
            thread: WORKER,
        }
    }

    fn header(&mut self, record_kind: u32, fd: i32, data_call: u32) -> RecordHeader {
        self.now += 1_000_000;
        RecordHeader {
            timestamp_ns: self.now,
            kind: record_kind,
            tgid: WORKER,
            tid: self.thread,
            fd,
            call: data_call,
            lost_before: self.lost_before,
            ..Default::default()
        }
    }

    fn feed(&mut self, record: Record<'_>) {
        let mut outcomes = Vec::new();
        self.pipeline.process(&record, &mut outcomes);
        self.take(outcomes);
    }

    fn take(&mut self, outcomes: Vec<Outcome>) {
        for outcome in outcomes {
            self.events.push(self.builder.event(&outcome));
            self.outcomes.push(outcome);
        }
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
            repeated: false,
        });
    }

    fn data(&mut self, fd: i32, data_call: u32, bytes: &[u8]) {
        self.data_beyond_capture(fd, data_call, bytes, bytes.len() as i64);
    }

    /// A call that moved `moved` bytes of which the kernel captured the first, `captured`.
    fn data_beyond_capture(&mut self, fd: i32, data_call: u32, captured: &[u8], moved: i64) {
        let header = self.header(kind::DATA, fd, data_call);
        self.feed(Record::Data {
            header,
            moved,
            offset: 0,
            more: false,
            captured,
        });
    }

    /// A bodiless answer (`status` is e.g. `200 OK`) moved on `fd` by `data_call`.
    fn answer(&mut self, fd: i32, data_call: u32, status: &str) {
        let head = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        self.data(fd, data_call, head.as_bytes());
    }

    fn hang_up(&mut self, fd: i32, errno: i64) {
        let header = self.header(kind::DATA, fd, call::RECVFROM);
        self.feed(Record::Data {
            header,
            moved: errno,
            offset: 0,
            more: false,
            captured: &[],
        });
    }

    /// The current thread wakes thread `woken` (sched_waking).
    fn wake(&mut self, woken: u32) {
        let header = self.header(kind::WAKE, -1, 0);
        self.feed(Record::Wake { header, woken });
    }

    /// Varnish's client threads: each `(thread, fd)` accepts a connection and reads the same
    /// request, `GET /orders/same`.
    fn client_threads(&mut self, threads: &[(u32, i32)]) {
        for &(thread, fd) in threads {
            self.thread = thread;
            self.accept(fd);
            self.data(fd, call::READ, b"GET /orders/same HTTP/1.1\r\n\r\n");
        }
    }

    /// The current thread connects on `fd` and sends the backend request for `/orders/same`.
    fn fetch(&mut self, fd: i32) {
        self.connect(fd, -115);
        self.data(fd, call::WRITEV, b"GET /v1/orders/same HTTP/1.1\r\n\r\n");
    }

    fn close(&mut self, fd: i32) {
        self.close_in_state(fd, 0);
    }

    /// A close of a socket in `tcp_state` (access_log_common::tcp_state).
    fn close_in_state(&mut self, fd: i32, tcp_state: u8) {
        let header = self.header(kind::CLOSE, fd, 0);
        self.feed(Record::Close { header, tcp_state });
    }

    fn exit(&mut self) {
        let header = self.header(kind::EXIT, -1, 0);
        self.feed(Record::Exit { header });
    }

    /// The observer stops: what is left ends in a loss record.
    fn finish(&mut self) {
        let mut outcomes = Vec::new();
        self.pipeline.finish(&mut outcomes);
        self.take(outcomes);
    }

    fn of(&self, kind: EventKind) -> Vec<&Event> {
        self.events.iter().filter(|e| e.kind == kind).collect()
    }
}

impl Drop for Script {
    /// Every script ends with the invariant: each request handed out ends exactly once.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        self.finish();
        let mut ends: HashMap<u64, u32> = HashMap::new();
        let mut incoming = Vec::new();
        for outcome in &self.outcomes {
            match outcome {
                Outcome::Incoming(request) => incoming.push(request.number),
                Outcome::Ended(ended) => *ends.entry(ended.request.number).or_default() += 1,
                Outcome::Lost(loss) => {
                    for number in &loss.requests {
                        *ends.entry(*number).or_default() += 1;
                    }
                }
                Outcome::Unreadable { .. } => {}
            }
        }
        for number in &incoming {
            assert_eq!(
                ends.get(number),
                Some(&1),
                "request {number}: {:#?}",
                self.outcomes
            );
        }
        assert_eq!(ends.len(), incoming.len(), "{:#?}", self.outcomes);
        assert_eq!(self.pipeline.tracked().1, 0);
    }
}

const CATALOG: &str = "[[api]]\nname='Orders'\nversion='v1'\ncontext='/orders'\nprovider='demo'\n";

#[test]
fn proxied_request_is_paired_through_a_new_upstream_connection() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(
        5,
        call::RECVFROM,
        b"GET /orders/7?x=1 HTTP/1.1\r\nUser-Agent: t/1\r\n\r\n",
    );
    s.connect(9, -115);
    s.data(
        9,
        call::WRITEV,
        b"GET /v1/orders/7?x=1 HTTP/1.0\r\nHost: b\r\n\r\n",
    );
    s.data(
        9,
        call::RECVFROM,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    );
    s.close(9);
    s.data(
        5,
        call::WRITEV,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    );
    let incoming = s.of(EventKind::IncomingRequest);
    let complete = s.of(EventKind::RequestComplete);
    assert_eq!((incoming.len(), complete.len()), (1, 1));
    assert!(s.of(EventKind::Error).is_empty());
    let done = complete[0];
    assert_eq!(done.text("ResponseTo"), incoming[0].text("MessageID"));
    assert_eq!(done.get("StatusCode"), Some(&Value::Integer(200)));
    assert_eq!(
        done.text("RequestOutURL"),
        Some("http://127.0.0.1:8081/v1/orders/7?x=1")
    );
    assert_eq!(done.text("API"), Some("demo--Orders:v1"));
    assert_eq!(done.text("RemoteIP"), Some("10.0.0.7"));
    assert_eq!(done.text("UserAgent"), Some("t/1"));
}

#[test]
fn a_thread_serves_the_requests_it_read_in_the_order_it_read_them() {
    // HAProxy: a thread reads a batch of requests, then runs their streams in order, each
    // sending on a kept-alive backend connection. The requests are identical: only the order
    // of the kernel's records can pair them.
    let mut s = Script::new(CATALOG);
    s.pipeline.add_existing(
        (WORKER, 9),
        Direction::Outbound,
        Some(&BACKEND.parse().unwrap()),
    );
    s.pipeline.add_existing(
        (WORKER, 10),
        Direction::Outbound,
        Some(&BACKEND.parse().unwrap()),
    );
    s.accept(5);
    s.accept(6);
    s.data(5, call::RECVFROM, b"GET /orders/same HTTP/1.1\r\n\r\n");
    s.data(6, call::RECVFROM, b"GET /orders/same HTTP/1.1\r\n\r\n");
    s.data(9, call::SENDTO, b"GET /v1/orders/same HTTP/1.1\r\n\r\n");
    s.data(10, call::SENDTO, b"GET /v1/orders/same HTTP/1.1\r\n\r\n");
    s.answer(10, call::RECVFROM, "202 Accepted");
    s.answer(9, call::RECVFROM, "201 Created");
    s.answer(6, call::SENDTO, "202 Accepted");
    s.answer(5, call::SENDTO, "201 Created");
    let incoming = s.of(EventKind::IncomingRequest);
    let done = s.of(EventKind::RequestComplete);
    assert_eq!(done.len(), 2);
    for (request, status) in incoming.iter().zip([201, 202]) {
        let ending = done
            .iter()
            .find(|d| d.text("ResponseTo") == request.text("MessageID"))
            .unwrap();
        assert_eq!(ending.get("StatusCode"), Some(&Value::Integer(status)));
        assert_eq!(ending.text("PairingConfidence"), None);
    }
}

#[test]
fn a_backend_call_made_by_the_thread_another_woke_serves_the_waker_request() {
    // Varnish: the client thread reads the request and wakes a fetch thread, which connects
    // and sends; another client thread read another request meanwhile.
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::READ, b"GET /orders/same HTTP/1.1\r\n\r\n");
    let mut other = s.header(kind::ACCEPT, 6, 0);
    other.tid = WORKER + 1;
    s.feed(Record::Accept {
        header: other,
        remote: Some(CLIENT.parse().unwrap()),
    });
    let mut read = s.header(kind::DATA, 6, call::READ);
    read.tid = WORKER + 1;
    let bytes = b"GET /orders/same HTTP/1.1\r\n\r\n";
    s.feed(Record::Data {
        header: read,
        moved: bytes.len() as i64,
        offset: 0,
        more: false,
        captured: bytes,
    });
    // The first client thread wakes thread 300, which makes the backend call.
    let wake = s.header(kind::WAKE, -1, 0);
    s.feed(Record::Wake {
        header: wake,
        woken: 300,
    });
    let mut connect = s.header(kind::CONNECT, 20, 0);
    connect.tid = 300;
    s.feed(Record::Connect {
        header: connect,
        remote: Some(BACKEND.parse().unwrap()),
        result: -115,
        repeated: false,
    });
    let mut send = s.header(kind::DATA, 20, call::WRITEV);
    send.tid = 300;
    let out = b"GET /v1/orders/same HTTP/1.1\r\n\r\n";
    s.feed(Record::Data {
        header: send,
        moved: out.len() as i64,
        offset: 0,
        more: false,
        captured: out,
    });
    s.answer(20, call::READ, "203 Non-Authoritative Information");
    s.answer(5, call::WRITEV, "203 Non-Authoritative Information");
    let incoming = s.of(EventKind::IncomingRequest);
    let done = s.of(EventKind::RequestComplete);
    assert_eq!(done.len(), 1, "{:#?}", s.events);
    assert_eq!(done[0].text("ResponseTo"), incoming[0].text("MessageID"));
    assert_eq!(done[0].text("PairingConfidence"), None);
}

/// Varnish, with no wake-up to hand the fetches over: two client threads (101, 102) read
/// identical requests, and two fetch threads (300, 301) call the backend with nothing to say
/// for whom, so order pairs them (low confidence), the wrong way round here.
fn fetches_with_no_hand_over() -> Script {
    let mut s = Script::new(CATALOG);
    // Wake-ups of this process are followed.
    s.thread = 500;
    s.wake(501);
    s.client_threads(&[(101, 5), (102, 6)]);
    for (thread, fd) in [(300, 20), (301, 21)] {
        s.thread = thread;
        s.fetch(fd);
    }
    s
}

/// The status each request's REQUEST_COMPLETE reports, and whether any was low confidence.
fn statuses(s: &Script) -> (Vec<u64>, bool) {
    let incoming = s.of(EventKind::IncomingRequest);
    let done = s.of(EventKind::RequestComplete);
    let status = |request: &&Event| {
        let ending = done
            .iter()
            .find(|d| d.text("ResponseTo") == request.text("MessageID"))
            .expect("each request completes");
        match ending.get("StatusCode") {
            Some(Value::Integer(status)) => *status,
            other => panic!("no status: {other:?}"),
        }
    };
    let low = done
        .iter()
        .any(|d| d.text("PairingConfidence") == Some("low"));
    (incoming.iter().map(status).collect(), low)
}

#[test]
fn a_worker_woken_by_two_client_threads_serves_the_later_ones_request() {
    // Varnish: client thread 101 releases the pool's lock and wakes worker 300 waiting for
    // it, then hands its fetch to another worker; client thread 102 hands its fetch to 300.
    let mut s = Script::new(CATALOG);
    s.client_threads(&[(101, 5), (102, 6)]);
    s.thread = 101;
    s.wake(300);
    s.thread = 102;
    s.wake(300);
    s.thread = 300;
    s.fetch(20);
    s.answer(20, call::READ, "202 Accepted");
    s.thread = 101;
    s.wake(301);
    s.thread = 301;
    s.fetch(21);
    s.answer(21, call::READ, "201 Created");
    s.thread = 101;
    s.answer(5, call::WRITEV, "201 Created");
    s.thread = 102;
    s.answer(6, call::WRITEV, "202 Accepted");
    assert_eq!(statuses(&s), (vec![201, 202], false), "{:#?}", s.events);
}

#[test]
fn a_client_threads_last_wake_up_is_its_hand_over() {
    // Varnish: client thread 101 hands its fetch to worker 300; 102 releases a lock 300
    // waits for, then hands its own fetch to 301; 300 calls the backend first.
    let mut s = Script::new(CATALOG);
    s.client_threads(&[(101, 5), (102, 6)]);
    s.thread = 101;
    s.wake(300);
    s.thread = 102;
    s.wake(300);
    s.wake(301);
    s.thread = 300;
    s.fetch(20);
    s.answer(20, call::READ, "201 Created");
    s.thread = 301;
    s.fetch(21);
    s.answer(21, call::READ, "202 Accepted");
    s.thread = 101;
    s.answer(5, call::WRITEV, "201 Created");
    s.thread = 102;
    s.answer(6, call::WRITEV, "202 Accepted");
    assert_eq!(statuses(&s), (vec![201, 202], false), "{:#?}", s.events);
}

#[test]
fn a_worker_that_wakes_back_the_client_thread_that_handed_it_a_request_serves_that_one() {
    // Varnish: client thread 101 hands its fetch to worker 300; 102's lock wakes 300 after;
    // 300 tells 101 it took the request (a wake-up back), then calls the backend. 102 hands
    // its own fetch to 301 only later.
    let mut s = Script::new(CATALOG);
    s.client_threads(&[(101, 5), (102, 6)]);
    s.thread = 101;
    s.wake(300);
    s.thread = 102;
    s.wake(300);
    s.thread = 300;
    s.wake(101);
    s.fetch(20);
    s.answer(20, call::READ, "201 Created");
    s.thread = 102;
    s.wake(301);
    s.thread = 301;
    s.fetch(21);
    s.answer(21, call::READ, "202 Accepted");
    s.thread = 101;
    s.answer(5, call::WRITEV, "201 Created");
    s.thread = 102;
    s.answer(6, call::WRITEV, "202 Accepted");
    assert_eq!(statuses(&s), (vec![201, 202], false), "{:#?}", s.events);
}

#[test]
fn a_hand_over_after_a_worker_woke_back_its_last_client_thread_is_the_one_it_serves() {
    // Varnish: worker 300 ends 101's fetch with no backend call (a backend marked down) and
    // wakes 101; then 102 hands it a fetch, which 300 makes.
    let mut s = Script::new(CATALOG);
    s.client_threads(&[(101, 5), (102, 6)]);
    s.thread = 101;
    s.wake(300);
    s.thread = 300;
    s.wake(101);
    s.thread = 102;
    s.wake(300);
    s.thread = 300;
    s.fetch(20);
    s.answer(20, call::READ, "201 Created");
    s.thread = 101;
    s.answer(5, call::WRITEV, "503 Service Unavailable");
    s.thread = 102;
    s.answer(6, call::WRITEV, "201 Created");
    let incoming = s.of(EventKind::IncomingRequest);
    let done = s.of(EventKind::RequestComplete);
    let errors = s.of(EventKind::Error);
    assert_eq!((done.len(), errors.len()), (1, 1), "{:#?}", s.events);
    assert_eq!(done[0].text("ResponseTo"), incoming[1].text("MessageID"));
    assert_eq!(done[0].get("StatusCode"), Some(&Value::Integer(201)));
    assert_eq!(done[0].text("PairingConfidence"), None);
    assert_eq!(errors[0].text("ResponseTo"), incoming[0].text("MessageID"));
}

#[test]
fn of_two_open_hand_overs_the_content_tells_which_when_it_differs() {
    // Varnish: 101 hands worker 300 a fetch of /orders/slow; 102, whose /orders/auth the
    // gateway refuses itself, wakes 300 with a lock meanwhile.
    let mut s = Script::new(CATALOG);
    for (thread, fd, path) in [(101, 5, "slow"), (102, 6, "auth")] {
        s.thread = thread;
        s.accept(fd);
        let head = format!("GET /orders/{path} HTTP/1.1\r\n\r\n");
        s.data(fd, call::READ, head.as_bytes());
    }
    s.thread = 101;
    s.wake(300);
    s.thread = 102;
    s.wake(300);
    s.thread = 300;
    s.connect(20, -115);
    s.data(20, call::WRITEV, b"GET /v1/orders/slow HTTP/1.1\r\n\r\n");
    s.thread = 102;
    s.answer(6, call::WRITEV, "401 Unauthorized");
    s.thread = 300;
    s.answer(20, call::READ, "201 Created");
    s.thread = 101;
    s.answer(5, call::WRITEV, "201 Created");
    let incoming = s.of(EventKind::IncomingRequest);
    let done = s.of(EventKind::RequestComplete);
    let errors = s.of(EventKind::Error);
    assert_eq!((done.len(), errors.len()), (1, 1), "{:#?}", s.events);
    assert_eq!(done[0].text("ResponseTo"), incoming[0].text("MessageID"));
    assert_eq!(errors[0].text("ResponseTo"), incoming[1].text("MessageID"));
    assert_eq!(errors[0].get("Attempts"), None, "{:#?}", errors[0]);
}

#[test]
fn a_worker_that_woke_a_client_thread_serves_its_request_with_low_confidence() {
    // Varnish: worker 300 releases the pool's lock, waking client thread 101, which gives
    // 300 its task with no wake-up; 102's request is older. No wake-up comes with the
    // answers to confirm either pairing.
    let mut s = Script::new(CATALOG);
    s.client_threads(&[(102, 6), (101, 5)]);
    s.thread = 300;
    s.wake(101);
    s.fetch(20);
    s.answer(20, call::READ, "201 Created");
    s.thread = 301;
    s.fetch(21);
    s.answer(21, call::READ, "202 Accepted");
    s.thread = 101;
    s.answer(5, call::WRITEV, "201 Created");
    s.thread = 102;
    s.answer(6, call::WRITEV, "202 Accepted");
    assert_eq!(statuses(&s), (vec![202, 201], true), "{:#?}", s.events);
}

#[test]
fn the_thread_a_fetch_thread_wakes_with_the_answer_owns_it() {
    // The fetch thread that reads an answer wakes the client thread waiting for it, as its
    // very next act: that wake-up trades the two low-confidence pairings.
    let mut s = fetches_with_no_hand_over();
    s.thread = 301;
    s.answer(21, call::READ, "202 Accepted");
    s.wake(101);
    s.thread = 300;
    s.answer(20, call::READ, "201 Created");
    s.wake(102);
    s.thread = 101;
    s.answer(5, call::WRITEV, "202 Accepted");
    s.thread = 102;
    s.answer(6, call::WRITEV, "201 Created");
    assert_eq!(statuses(&s), (vec![202, 201], false), "{:#?}", s.events);
}

#[test]
fn an_answer_whose_thread_does_something_else_first_keeps_its_pairing() {
    // The fetch thread closes its connection before it wakes anyone: the wake-up says
    // nothing, and the pairings by order stand (low confidence), ended when the gateway
    // passes them on.
    let mut s = fetches_with_no_hand_over();
    s.thread = 301;
    s.answer(21, call::READ, "202 Accepted");
    s.close(21);
    s.wake(101);
    s.thread = 300;
    s.answer(20, call::READ, "201 Created");
    s.thread = 101;
    s.answer(5, call::WRITEV, "202 Accepted");
    s.thread = 102;
    s.answer(6, call::WRITEV, "201 Created");
    assert_eq!(statuses(&s), (vec![201, 202], true), "{:#?}", s.events);
}

#[test]
fn refused_backend_is_a_fault_with_the_connect_code() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/x HTTP/1.1\r\n\r\n");
    s.connect(9, -115);
    s.close(9);
    s.answer(5, call::WRITEV, "502 Bad Gateway");
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
    s.data(5, call::RECVFROM, b"GET /orders/x HTTP/1.1\r\n\r\n");
    s.connect(9, 0);
    s.data(9, call::WRITEV, b"GET /v1/orders/x HTTP/1.1\r\n\r\n");
    s.data(9, call::RECVFROM, b"");
    s.close(9);
    s.answer(5, call::WRITEV, "502 Bad Gateway");
    assert_eq!(s.of(EventKind::Error)[0].text("ERROR_CODE"), Some("101505"));
}

#[test]
fn gateway_answers_without_backend_call_are_errors_by_status() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /nothing HTTP/1.1\r\n\r\n");
    s.answer(5, call::WRITEV, "404 Not Found");
    s.data(
        5,
        call::RECVFROM,
        b"GET /orders/1 HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
    );
    s.answer(5, call::WRITEV, "401 Unauthorized");
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
    s.data(5, call::RECVFROM, b"GET /orders/x HTTP/1.1\r\n\r\n");
    s.close(5);
    assert_eq!(s.pipeline.tracked(), (0, 0));
}

fn linked_urls(s: &Script) -> Vec<(String, String)> {
    let incoming = s.of(EventKind::IncomingRequest);
    let mut pairs: Vec<(String, String)> = s
        .of(EventKind::RequestComplete)
        .iter()
        .map(|done| {
            let request = incoming
                .iter()
                .find(|i| i.text("MessageID") == done.text("ResponseTo"))
                .unwrap();
            (
                request.text("RequestInURL").unwrap().to_owned(),
                done.text("RequestOutURL").unwrap().to_owned(),
            )
        })
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn interleaved_non_blocking_connects_pair_by_binding() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.accept(6);
    s.data(5, call::RECVFROM, b"GET /orders/a?k=1 HTTP/1.1\r\n\r\n");
    s.connect(20, -115);
    s.data(6, call::RECVFROM, b"GET /orders/b?k=2 HTTP/1.1\r\n\r\n");
    s.connect(21, -115);
    // Connections complete in the other order; b's backend answers first.
    s.data(21, call::WRITEV, b"GET /v1/orders/b?k=2 HTTP/1.0\r\n\r\n");
    s.data(20, call::WRITEV, b"GET /v1/orders/a?k=1 HTTP/1.0\r\n\r\n");
    s.answer(21, call::RECVFROM, "201 Created");
    s.answer(20, call::RECVFROM, "202 Accepted");
    assert_eq!(
        linked_urls(&s),
        vec![
            (
                "/orders/a?k=1".into(),
                "http://127.0.0.1:8081/v1/orders/a?k=1".into()
            ),
            (
                "/orders/b?k=2".into(),
                "http://127.0.0.1:8081/v1/orders/b?k=2".into()
            ),
        ]
    );
    assert!(s
        .events
        .iter()
        .all(|e| e.get("PairingConfidence").is_none()));
}

#[test]
fn a_body_read_after_other_requests_binds_the_connect_to_its_own_request() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.accept(6);
    s.data(
        5,
        call::RECVFROM,
        b"POST /orders/p HTTP/1.1\r\nContent-Length: 4\r\n\r\n",
    );
    s.data(6, call::RECVFROM, b"GET /orders/g HTTP/1.1\r\n\r\n");
    s.connect(20, -115);
    // The POST's body arrives; only now does the gateway connect for it.
    s.data(5, call::RECVFROM, b"body");
    s.connect(21, -115);
    s.data(
        21,
        call::WRITEV,
        b"POST /v1/orders/p HTTP/1.0\r\nContent-Length: 4\r\n\r\nbody",
    );
    s.data(20, call::WRITEV, b"GET /v1/orders/g HTTP/1.0\r\n\r\n");
    s.answer(20, call::RECVFROM, "200 OK");
    s.answer(21, call::RECVFROM, "201 Created");
    assert_eq!(
        linked_urls(&s),
        vec![
            (
                "/orders/g".into(),
                "http://127.0.0.1:8081/v1/orders/g".into()
            ),
            (
                "/orders/p".into(),
                "http://127.0.0.1:8081/v1/orders/p".into()
            ),
        ]
    );
}

#[test]
fn a_retry_after_a_backend_502_is_the_same_request_and_the_502_a_failed_attempt() {
    // nginx with proxy_next_upstream http_502: the first backend answers 502 on a kept-alive
    // connection, the gateway sends the request to the next one.
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/f?q=1 HTTP/1.1\r\n\r\n");
    s.connect(20, -115);
    s.data(20, call::WRITEV, b"GET /v1/orders/f?q=1 HTTP/1.1\r\n\r\n");
    s.answer(20, call::RECVFROM, "502 Bad Gateway");
    assert!(s.of(EventKind::RequestComplete).is_empty(), "held back");
    s.connect(21, -115);
    s.data(21, call::WRITEV, b"GET /v1/orders/f?q=1 HTTP/1.1\r\n\r\n");
    s.answer(21, call::RECVFROM, "200 OK");
    s.answer(5, call::WRITEV, "200 OK");
    let done = s.of(EventKind::RequestComplete);
    assert_eq!(done.len(), 1, "{:#?}", s.events);
    assert_eq!(done[0].get("StatusCode"), Some(&Value::Integer(200)));
    assert_eq!(done[0].get("Attempts"), Some(&Value::Integer(2)));
    assert_eq!(done[0].text("AttemptResults"), Some("502, 200"));
    assert!(s.of(EventKind::Error).is_empty());
    assert_eq!(s.pipeline.stats().unlinked_outbound, 0);
}

#[test]
fn a_backend_502_the_gateway_passes_on_completes_the_request() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/g HTTP/1.1\r\n\r\n");
    s.connect(20, -115);
    s.data(20, call::WRITEV, b"GET /v1/orders/g HTTP/1.1\r\n\r\n");
    s.answer(20, call::RECVFROM, "502 Bad Gateway");
    s.answer(5, call::WRITEV, "502 Bad Gateway");
    let done = s.of(EventKind::RequestComplete);
    assert_eq!(done.len(), 1, "{:#?}", s.events);
    assert_eq!(done[0].get("StatusCode"), Some(&Value::Integer(502)));
    assert_eq!(done[0].get("Attempts"), Some(&Value::Integer(1)));
    assert!(s.of(EventKind::Error).is_empty());
}

#[test]
fn a_retry_after_a_refused_connect_is_the_same_request_and_counted() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/r HTTP/1.1\r\n\r\n");
    s.connect(20, -115);
    s.close(20);
    s.connect(21, -115);
    s.data(21, call::WRITEV, b"GET /v1/orders/r HTTP/1.0\r\n\r\n");
    s.answer(21, call::RECVFROM, "200 OK");
    s.answer(5, call::WRITEV, "200 OK");
    let done = s.of(EventKind::RequestComplete);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].get("Attempts"), Some(&Value::Integer(2)));
    assert_eq!(done[0].text("AttemptResults"), Some("connect-failed, 200"));
    assert!(s.of(EventKind::Error).is_empty());
}

#[test]
fn a_gateway_that_gives_up_waiting_is_a_timeout() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/slow HTTP/1.1\r\n\r\n");
    s.connect(20, 0);
    s.data(20, call::WRITEV, b"GET /v1/orders/slow HTTP/1.0\r\n\r\n");
    s.close(20);
    s.data(
        5,
        call::WRITEV,
        b"HTTP/1.1 504 Gateway Time-out\r\nContent-Length: 0\r\n\r\n",
    );
    let error = &s.of(EventKind::Error)[0];
    assert_eq!(error.text("ERROR_CODE"), Some("101504"));
}

#[test]
fn a_reset_backend_is_a_closed_connection_fault() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/x HTTP/1.1\r\n\r\n");
    s.connect(20, 0);
    s.data(20, call::WRITEV, b"GET /v1/orders/x HTTP/1.0\r\n\r\n");
    s.hang_up(20, -104);
    s.close(20);
    s.answer(5, call::WRITEV, "502 Bad Gateway");
    let error = &s.of(EventKind::Error)[0];
    assert_eq!(error.text("ERROR_CODE"), Some("101505"));
    assert_eq!(
        error.text("ERROR_MESSAGE"),
        Some("Connection reset by the back end")
    );
}

#[test]
fn a_client_leaving_before_the_answer_is_reported_as_499() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/x HTTP/1.1\r\n\r\n");
    s.connect(20, 0);
    s.data(20, call::WRITEV, b"GET /v1/orders/x HTTP/1.0\r\n\r\n");
    s.hang_up(5, 0);
    s.close(20);
    s.close(5);
    let errors = s.of(EventKind::Error);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].get("StatusCode"), Some(&Value::Integer(499)));
}

#[test]
fn an_id_header_links_exactly_whatever_the_thread_did() {
    let mut s = Script::new(CATALOG);
    s.pipeline.add_existing(
        (WORKER, 9),
        Direction::Outbound,
        Some(&BACKEND.parse().unwrap()),
    );
    s.accept(5);
    s.accept(6);
    s.data(
        5,
        call::RECVFROM,
        b"GET /orders/a HTTP/1.1\r\nX-Request-ID: one\r\n\r\n",
    );
    s.data(
        6,
        call::RECVFROM,
        b"GET /orders/b HTTP/1.1\r\nX-Request-ID: two\r\n\r\n",
    );
    // The last read was connection 6, but this request carries connection 5's id.
    s.data(
        9,
        call::WRITEV,
        b"GET /v1/x HTTP/1.1\r\nX-Request-ID: one\r\n\r\n",
    );
    s.answer(9, call::RECVFROM, "200 OK");
    assert_eq!(
        linked_urls(&s),
        vec![("/orders/a".into(), "http://127.0.0.1:8081/v1/x".into())]
    );
}

#[test]
fn bytes_drained_by_a_closing_gateway_are_not_requests() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    let header = s.header(kind::SHUTDOWN, 5, 0);
    s.feed(Record::Shutdown { header });
    s.data(5, call::READ, b"GET /orders/late HTTP/1.1\r\n\r\n");
    s.close(5);
    assert!(s.events.is_empty(), "{:?}", s.events);
    assert_eq!(s.pipeline.stats().drained_reads, 1);
}

#[test]
fn a_hundred_pipelined_requests_in_one_read_are_answered_in_order() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    let mut requests = Vec::new();
    let mut answers = Vec::new();
    for index in 0..100 {
        requests
            .extend_from_slice(format!("GET /nope/{index} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        let status = if index % 2 == 0 { 404 } else { 401 };
        answers.extend_from_slice(
            format!("HTTP/1.1 {status} X\r\nContent-Length: 3\r\n\r\nabc").as_bytes(),
        );
    }
    s.data(5, call::RECVFROM, &requests);
    s.data(5, call::WRITEV, &answers);
    let errors = s.of(EventKind::Error);
    assert_eq!(errors.len(), 100);
    for (index, error) in errors.iter().enumerate() {
        assert_eq!(
            error.text("RequestInURL"),
            Some(format!("/nope/{index}").as_str())
        );
        let status = if index % 2 == 0 { 404 } else { 401 };
        assert_eq!(error.get("StatusCode"), Some(&Value::Integer(status)));
    }
}

#[test]
fn a_websocket_upgrade_completes_with_101_and_is_left_alone() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(
        5,
        call::RECVFROM,
        b"GET /orders/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    s.connect(20, -115);
    s.data(
        20,
        call::WRITEV,
        b"GET /v1/orders/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    );
    s.data(
        20,
        call::RECVFROM,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
    );
    s.data(
        5,
        call::WRITEV,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    );
    s.data(
        5,
        call::RECVFROM,
        b"\x81\x85garbage frames GET /x HTTP/1.1\r\n\r\n",
    );
    s.close(5);
    s.close(20);
    let done = s.of(EventKind::RequestComplete);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].get("StatusCode"), Some(&Value::Integer(101)));
    assert_eq!(s.of(EventKind::IncomingRequest).len(), 1);
    assert_eq!(s.pipeline.stats().opaque_connections, 2);
}

#[test]
fn a_pairing_on_content_alone_is_marked_low_confidence() {
    // The backend request goes out on a thread that read no client request, over a connection
    // that existed before attach: only its content (method, query, path tail) links it.
    let mut s = Script::new(CATALOG);
    s.pipeline.add_existing(
        (WORKER, 30),
        Direction::Outbound,
        Some(&BACKEND.parse().unwrap()),
    );
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/lc?q=7 HTTP/1.1\r\n\r\n");
    let mut header = s.header(kind::DATA, 30, call::WRITEV);
    header.tid = WORKER + 1;
    let outbound = b"GET /v1/orders/lc?q=7 HTTP/1.1\r\n\r\n";
    s.feed(Record::Data {
        header,
        moved: outbound.len() as i64,
        offset: 0,
        more: false,
        captured: outbound,
    });
    s.answer(30, call::RECVFROM, "200 OK");
    let done = s.of(EventKind::RequestComplete);
    assert_eq!(done.len(), 1, "{:#?}", s.events);
    assert_eq!(done[0].text("PairingConfidence"), Some("low"));
    assert_eq!(s.builder.counts().low_confidence, 1);
}

#[test]
fn a_refused_unreadable_request_is_an_error_in_its_place() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(
        5,
        call::RECVFROM,
        b"GET /nothing HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nBad Header\r\n\r\n",
    );
    s.answer(5, call::WRITEV, "404 Not Found");
    s.answer(5, call::WRITEV, "400 Bad Request");
    s.close(5);
    assert_eq!(s.of(EventKind::IncomingRequest).len(), 1);
    let errors = s.of(EventKind::Error);
    assert_eq!(errors.len(), 2, "{:?}", s.events);
    assert_eq!(errors[0].text("RequestInURL"), Some("/nothing"));
    let refused = errors[1];
    assert_eq!(
        refused.text("ERROR_MESSAGE"),
        Some("Malformed request rejected by the gateway")
    );
    assert_eq!(refused.text("RemoteIP"), Some("10.0.0.7"));
    assert_eq!(refused.text("RequestInURL"), Some("/"));
    assert_eq!(refused.text("RequestInMethod"), Some("GET"));
    assert_eq!(refused.text("ResponseTo"), None);
    assert_eq!(s.pipeline.stats().unreadable_requests, 1);
    assert_eq!(s.builder.counts().errors, 2);
}

#[test]
fn unreadable_bytes_the_gateway_does_not_refuse_are_no_event() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"\x00\x01binary protocol");
    s.close(5);
    assert!(s.events.is_empty(), "{:?}", s.events);
    assert_eq!(s.pipeline.stats().unreadable_requests, 1);
}

#[test]
fn requests_pipelined_after_an_answer_that_closes_are_not_served() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(
        5,
        call::RECVFROM,
        b"GET /bad HTTP/1.1\r\n\r\nGET /dropped HTTP/1.1\r\n\r\n",
    );
    s.answer(5, call::WRITEV, "400 Bad Request\r\nConnection: close");
    s.close(5);
    let errors = s.of(EventKind::Error);
    assert_eq!(errors.len(), 2, "{:?}", s.events);
    assert_eq!(errors[1].text("RequestInURL"), Some("/dropped"));
    assert_eq!(errors[1].text("ERROR_CODE"), Some("0"));
    assert_eq!(errors[1].get("StatusCode"), None);
}

#[test]
fn after_a_refused_upgrade_the_connection_carries_requests_again() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(
        5,
        call::RECVFROM,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /after HTTP/1.1\r\n\r\n",
    );
    assert_eq!(s.of(EventKind::IncomingRequest).len(), 1);
    s.answer(5, call::WRITEV, "404 Not Found");
    s.answer(5, call::WRITEV, "404 Not Found");
    let urls: Vec<_> = s
        .of(EventKind::Error)
        .iter()
        .map(|e| e.text("RequestInURL").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(urls, ["/ws", "/after"]);
}

#[test]
fn a_head_the_gateway_gave_up_on_is_a_refused_unreadable_request() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"PUT /orders/1 HTTP/1.1\r\nContent-Le");
    s.answer(5, call::WRITEV, "400 Bad Request\r\nConnection: close");
    s.close(5);
    let errors = s.of(EventKind::Error);
    assert_eq!(errors.len(), 1, "{:?}", s.events);
    assert_eq!(errors[0].text("RequestInURL"), Some("/orders/1"));
    assert_eq!(errors[0].get("StatusCode"), Some(&Value::Integer(400)));
    assert!(s.of(EventKind::IncomingRequest).is_empty());
}

#[test]
fn an_answer_the_gateway_gives_itself_below_400_completes_the_request() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /health HTTP/1.1\r\n\r\n");
    s.answer(5, call::WRITEV, "200 OK");
    s.data(5, call::RECVFROM, b"GET /orders/old HTTP/1.1\r\n\r\n");
    s.answer(
        5,
        call::WRITEV,
        "301 Moved Permanently\r\nLocation: /orders/new",
    );
    let done = s.of(EventKind::RequestComplete);
    assert_eq!(done.len(), 2, "{:#?}", s.events);
    assert!(s.of(EventKind::Error).is_empty());
    assert_eq!(done[0].text("AnsweredBy"), Some("gateway"));
    assert_eq!(done[0].get("StatusCode"), Some(&Value::Integer(200)));
    assert_eq!(done[0].text("RequestOutURL"), None);
    assert_eq!(done[0].get("Attempts"), Some(&Value::Integer(0)));
    assert_eq!(done[1].get("StatusCode"), Some(&Value::Integer(301)));
    assert_eq!(done[1].text("API"), Some("demo--Orders:v1"));
    assert_eq!(s.builder.counts().answered_by_gateway, 2);
}

#[test]
fn who_closed_first_tells_a_client_that_left_from_a_gateway_that_dropped() {
    let mut s = Script::new(CATALOG);
    // The client's FIN arrived (CLOSE_WAIT) though no read of the gateway saw it.
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/a HTTP/1.1\r\n\r\n");
    s.close_in_state(5, access_log_common::tcp_state::CLOSE_WAIT);
    // The gateway closed a connection still established, without an answer (nginx's 444).
    s.accept(6);
    s.data(6, call::RECVFROM, b"GET /orders/b HTTP/1.1\r\n\r\n");
    s.close_in_state(6, access_log_common::tcp_state::ESTABLISHED);
    let errors = s.of(EventKind::Error);
    assert_eq!(errors.len(), 2, "{:#?}", s.events);
    assert_eq!(errors[0].text("ERROR_CODE"), Some("499"));
    assert_eq!(errors[1].text("ERROR_CODE"), Some("444"));
    assert_eq!(errors[1].get("StatusCode"), None);
}

#[test]
fn a_worker_that_exits_mid_request_ends_it_as_a_gateway_fault() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/x HTTP/1.1\r\n\r\n");
    s.connect(9, -115);
    s.data(9, call::WRITEV, b"GET /v1/orders/x HTTP/1.0\r\n\r\n");
    s.exit();
    let errors = s.of(EventKind::Error);
    assert_eq!(errors.len(), 1, "{:#?}", s.events);
    assert_eq!(
        errors[0].text("ERROR_MESSAGE"),
        Some("The gateway process exited before answering")
    );
    assert_eq!(errors[0].get("Attempts"), Some(&Value::Integer(1)));
    assert_eq!(s.pipeline.tracked(), (0, 0));
}

#[test]
fn records_lost_in_the_kernel_end_what_was_in_flight_in_a_loss_record() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.accept(6);
    s.data(5, call::RECVFROM, b"GET /orders/a HTTP/1.1\r\n\r\n");
    s.data(6, call::RECVFROM, b"GET /orders/b HTTP/1.1\r\n\r\n");
    s.connect(20, -115);
    s.data(20, call::WRITEV, b"GET /v1/orders/b HTTP/1.0\r\n\r\n");
    // Three records are lost here (a's backend request and answer among them, perhaps).
    s.lost_before = 3;
    s.answer(20, call::RECVFROM, "200 OK");
    s.answer(6, call::WRITEV, "200 OK");
    s.answer(5, call::WRITEV, "200 OK");
    // After the gap the connections carry requests again.
    s.data(5, call::RECVFROM, b"GET /nothing HTTP/1.1\r\n\r\n");
    s.answer(5, call::WRITEV, "404 Not Found");
    let lost = s.of(EventKind::Lost);
    assert_eq!(lost.len(), 1, "{:#?}", s.events);
    assert_eq!(lost[0].text("Reason"), Some("ring buffer full"));
    assert_eq!(lost[0].get("RecordsLost"), Some(&Value::Integer(3)));
    // The client connections of the requests it ends, as process:descriptor.
    assert_eq!(lost[0].text("Connections"), Some("100:5,100:6"));
    assert_eq!(lost[0].get("RequestsLost"), Some(&Value::Integer(2)));
    let incoming = s.of(EventKind::IncomingRequest);
    let ids = lost[0].text("RequestIDs").unwrap();
    assert!(ids.contains(incoming[0].text("MessageID").unwrap()));
    assert!(ids.contains(incoming[1].text("MessageID").unwrap()));
    assert!(
        s.of(EventKind::RequestComplete).is_empty(),
        "no pairing across a gap"
    );
    assert_eq!(s.of(EventKind::Error).len(), 1, "the request after the gap");
    assert_eq!(s.pipeline.stats().gaps, 1);
}

#[test]
fn a_repeated_connect_is_the_same_connection_and_its_failure_the_attempts() {
    // HAProxy: connect() in progress, then connect() again to learn how it ended.
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/r HTTP/1.1\r\n\r\n");
    s.connect(20, -115);
    let header = s.header(kind::CONNECT, 20, 0);
    s.feed(Record::Connect {
        header,
        remote: None,
        result: -111,
        repeated: true,
    });
    s.close(20);
    s.connect(21, -115);
    s.data(21, call::WRITEV, b"GET /v1/orders/r HTTP/1.1\r\n\r\n");
    s.answer(21, call::RECVFROM, "200 OK");
    s.answer(5, call::WRITEV, "200 OK");
    let done = s.of(EventKind::RequestComplete);
    assert_eq!(done.len(), 1, "{:#?}", s.events);
    assert_eq!(done[0].text("AttemptResults"), Some("connect-failed, 200"));
}

#[test]
fn an_id_shared_by_two_waiting_requests_is_no_exact_link() {
    // Two concurrent requests of one trace carry the same traceparent: the id cannot tell
    // them apart, the kernel facts do.
    let mut s = Script::new(CATALOG);
    s.pipeline = Pipeline::new(PipelineConfig {
        id_headers: vec!["traceparent".into()],
        ..PipelineConfig::default()
    });
    let trace = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    s.accept(5);
    s.accept(6);
    s.data(
        5,
        call::RECVFROM,
        format!("GET /orders/a HTTP/1.1\r\n{trace}\r\n\r\n").as_bytes(),
    );
    s.connect(20, -115);
    s.data(
        6,
        call::RECVFROM,
        format!("GET /orders/b HTTP/1.1\r\n{trace}\r\n\r\n").as_bytes(),
    );
    s.connect(21, -115);
    s.data(
        21,
        call::WRITEV,
        format!("GET /v1/orders/b HTTP/1.1\r\n{trace}\r\n\r\n").as_bytes(),
    );
    s.data(
        20,
        call::WRITEV,
        format!("GET /v1/orders/a HTTP/1.1\r\n{trace}\r\n\r\n").as_bytes(),
    );
    s.answer(21, call::RECVFROM, "201 Created");
    s.answer(20, call::RECVFROM, "202 Accepted");
    assert_eq!(
        linked_urls(&s),
        vec![
            (
                "/orders/a".into(),
                "http://127.0.0.1:8081/v1/orders/a".into()
            ),
            (
                "/orders/b".into(),
                "http://127.0.0.1:8081/v1/orders/b".into()
            ),
        ]
    );
}

#[test]
fn pipelined_requests_beyond_the_first_window_come_in_continuation_records() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    let mut requests = Vec::new();
    for index in 0..100 {
        requests.extend_from_slice(
            format!("GET /nope/{index:03} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        );
    }
    let moved = requests.len() as i64;
    // The kernel copies the first 1024 bytes, then 4096-byte continuation records.
    let mut offset = 0usize;
    let mut window = 1024usize;
    while offset < requests.len() {
        let end = (offset + window).min(requests.len());
        let header = s.header(kind::DATA, 5, call::RECVFROM);
        s.feed(Record::Data {
            header,
            moved,
            offset: offset as u32,
            more: end < requests.len(),
            captured: &requests[offset..end],
        });
        offset = end;
        window = 4096;
    }
    for _ in 0..100 {
        s.answer(5, call::WRITEV, "404 Not Found");
    }
    assert_eq!(s.of(EventKind::IncomingRequest).len(), 100);
    assert_eq!(s.of(EventKind::Error).len(), 100);
}

#[test]
fn a_unix_socket_backend_is_named_as_nginx_names_it() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/u?x=1 HTTP/1.1\r\n\r\n");
    let header = s.header(kind::CONNECT, 9, 0);
    s.feed(Record::Connect {
        header,
        remote: Some("unix:/run/app.sock".parse().unwrap()),
        result: 0,
        repeated: false,
    });
    s.data(9, call::WRITEV, b"GET /v1/orders/u?x=1 HTTP/1.0\r\n\r\n");
    s.answer(9, call::RECVFROM, "200 OK");
    s.answer(5, call::WRITEV, "200 OK");
    let done = s.of(EventKind::RequestComplete);
    assert_eq!(
        done[0].text("RequestOutURL"),
        Some("http://unix:/run/app.sock:/v1/orders/u?x=1")
    );
}

#[test]
fn credentials_in_the_query_are_redacted_in_every_field() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(
        5,
        call::RECVFROM,
        b"GET /orders/x?access_token=SECRET123&n=1 HTTP/1.1\r\n\r\n",
    );
    s.connect(9, 0);
    s.data(
        9,
        call::WRITEV,
        b"GET /v1/orders/x?access_token=SECRET123&n=1 HTTP/1.0\r\n\r\n",
    );
    s.answer(9, call::RECVFROM, "200 OK");
    s.answer(5, call::WRITEV, "200 OK");
    let text = format!("{:?}", s.events);
    assert!(!text.contains("SECRET123"), "{text}");
    let done = s.of(EventKind::RequestComplete);
    assert_eq!(
        done[0].text("RequestOutURL"),
        Some("http://127.0.0.1:8081/v1/orders/x?access_token=REDACTED&n=1")
    );
    assert_eq!(
        done[0].text("RequestInURL"),
        Some("/orders/x?access_token=REDACTED&n=1")
    );
}

#[test]
fn requests_the_observer_did_not_see_end_are_named_when_it_stops() {
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/slow HTTP/1.1\r\n\r\n");
    s.finish();
    let lost = s.of(EventKind::Lost);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].text("Reason"), Some("observer stopped"));
    assert_eq!(
        lost[0].text("RequestIDs"),
        s.of(EventKind::IncomingRequest)[0].text("MessageID")
    );
}

#[test]
fn a_call_linked_right_after_a_gap_ends_in_the_loss_record_not_a_pairing() {
    // The head of a request was lost; its backend call comes after the gap and would pair
    // with the next request the thread read.
    let mut s = Script::new(CATALOG);
    s.accept(5);
    s.accept(6);
    s.lost_before = 1;
    s.data(6, call::RECVFROM, b"GET /orders/next HTTP/1.1\r\n\r\n");
    s.connect(20, -115);
    s.data(20, call::WRITEV, b"GET /v1/orders/lost HTTP/1.0\r\n\r\n");
    s.answer(20, call::RECVFROM, "200 OK");
    s.answer(6, call::WRITEV, "200 OK");
    assert!(
        s.of(EventKind::RequestComplete).is_empty(),
        "{:#?}",
        s.events
    );
    // The gap's own record (one record lost, no request in flight), then the request.
    let lost = s.of(EventKind::Lost);
    assert_eq!(lost.len(), 2, "{:#?}", s.events);
    assert_eq!(lost[0].get("RecordsLost"), Some(&Value::Integer(1)));
    assert_eq!(
        lost[1].text("RequestIDs"),
        s.of(EventKind::IncomingRequest)[0].text("MessageID")
    );
}

/// A script whose pipeline keeps state within `bounds`.
fn bounded(bounds: Bounds) -> Script {
    let mut s = Script::new(CATALOG);
    s.pipeline = Pipeline::new(PipelineConfig {
        id_headers: vec!["x-request-id".into()],
        bounds,
        ..PipelineConfig::default()
    });
    s
}

#[test]
fn a_connection_idle_past_the_timeout_is_forgotten_and_its_request_lost() {
    let mut s = bounded(Bounds {
        idle_ns: 60_000_000_000,
        ..Bounds::default()
    });
    s.accept(5);
    s.data(5, call::RECVFROM, b"GET /orders/stuck HTTP/1.1\r\n\r\n");
    s.accept(6);
    // Connection 6 stays busy; 5 says nothing for two minutes.
    for _ in 0..120 {
        s.now += 1_000_000_000;
        s.data(6, call::RECVFROM, b"GET /orders/busy HTTP/1.1\r\n\r\n");
        s.answer(6, call::WRITEV, "200 OK");
    }
    let lost = s.of(EventKind::Lost);
    assert_eq!(lost.len(), 1, "{:#?}", lost);
    assert_eq!(lost[0].text("Reason"), Some("state evicted"));
    assert_eq!(lost[0].get("RequestsLost"), Some(&Value::Integer(1)));
    assert_eq!(s.of(EventKind::RequestComplete).len(), 120);
    let stats = s.pipeline.stats();
    assert_eq!(
        (stats.evicted_idle_connections, stats.evicted_requests),
        (1, 0)
    );
    assert_eq!(s.pipeline.tracked(), (1, 0));
}

#[test]
fn connections_over_the_cap_go_least_recently_active_first() {
    let mut s = bounded(Bounds {
        max_connections: 8,
        ..Bounds::default()
    });
    for fd in 10..30 {
        s.accept(fd);
    }
    // The newest 7 stay: 20 + 1 over a cap of 8, down to 7.
    s.now += 2_000_000_000;
    s.accept(100);
    assert_eq!(s.pipeline.stats().evicted_connections_over_cap, 14);
    assert_eq!(s.pipeline.tracked().0, 7);
    // A survivor still carries requests.
    s.data(29, call::RECVFROM, b"GET /orders/kept HTTP/1.1\r\n\r\n");
    s.answer(29, call::WRITEV, "200 OK");
    assert_eq!(s.of(EventKind::RequestComplete).len(), 1);
}

#[test]
fn requests_over_the_cap_end_in_a_loss_record_oldest_first() {
    let mut s = bounded(Bounds {
        max_requests: 4,
        ..Bounds::default()
    });
    for fd in 10..20 {
        s.accept(fd);
        s.data(fd, call::RECVFROM, b"GET /orders/waiting HTTP/1.1\r\n\r\n");
    }
    s.now += 2_000_000_000;
    s.accept(100);
    let lost = s.of(EventKind::Lost);
    assert_eq!(lost.len(), 1);
    // 10 waiting over a cap of 4, down to 3.
    assert_eq!(lost[0].get("RequestsLost"), Some(&Value::Integer(7)));
    assert_eq!(s.pipeline.stats().evicted_requests, 7);
    // The newest are still served.
    s.answer(19, call::WRITEV, "200 OK");
    assert_eq!(s.of(EventKind::RequestComplete).len(), 1);
}

/// HTTP/2 frames as a client or a gateway writes them, header blocks from a real HPACK
/// encoder (one per direction, its table kept across blocks as on a connection).
mod h2 {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = (payload.len() as u32).to_be_bytes();
        let mut bytes = vec![length[1], length[2], length[3], kind, flags];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    pub fn settings() -> Vec<u8> {
        frame(4, 0, 0, &[])
    }

    pub fn headers(
        encoder: &mut loona_hpack::Encoder,
        stream: u32,
        flags: u8,
        fields: &[(&str, &str)],
    ) -> Vec<u8> {
        let block = encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        frame(1, flags | END_HEADERS, stream, &block)
    }

    pub fn get(encoder: &mut loona_hpack::Encoder, stream: u32, path: &str) -> Vec<u8> {
        let fields = [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "gateway"),
            (":path", path),
            ("user-agent", "h2/1"),
        ];
        headers(encoder, stream, END_STREAM, &fields)
    }

    /// A client's first bytes: the preface, then a GET on each (stream, path).
    pub fn opening(encoder: &mut loona_hpack::Encoder, streams: &[(u32, &str)]) -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        for (stream, path) in streams {
            bytes.extend(get(encoder, *stream, path));
        }
        bytes
    }

    pub fn status(encoder: &mut loona_hpack::Encoder, stream: u32, status: &str) -> Vec<u8> {
        headers(encoder, stream, END_STREAM, &[(":status", status)])
    }

    pub fn reset(stream: u32, code: u32) -> Vec<u8> {
        frame(3, 0, stream, &code.to_be_bytes())
    }

    pub fn goaway(last_stream: u32) -> Vec<u8> {
        let mut payload = last_stream.to_be_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_be_bytes());
        frame(7, 0, 0, &payload)
    }
}

/// Statuses of the endings of the requests, in the order they came.
fn ending_statuses(s: &Script) -> Vec<Option<u64>> {
    s.of(EventKind::IncomingRequest)
        .iter()
        .map(|incoming| {
            s.events
                .iter()
                .find(|e| {
                    e.kind != EventKind::IncomingRequest
                        && e.text("ResponseTo") == incoming.text("MessageID")
                })
                .and_then(|e| match e.get("StatusCode") {
                    Some(Value::Integer(status)) => Some(*status),
                    _ => None,
                })
        })
        .collect()
}

#[test]
fn http2_streams_read_at_once_pair_with_the_calls_their_thread_makes_in_order() {
    let mut s = Script::new(CATALOG);
    let (mut client, mut gateway) = (loona_hpack::Encoder::new(), loona_hpack::Encoder::new());
    s.accept(5);
    let mut read = [h2::PREFACE.to_vec(), h2::settings()].concat();
    for (stream, path) in [(1, "/orders/same"), (3, "/orders/same"), (5, "/nope")] {
        read.extend(h2::get(&mut client, stream, path));
    }
    s.data(5, call::RECVFROM, &read);
    assert_eq!(s.of(EventKind::IncomingRequest).len(), 3);
    // nginx runs the streams in order: a connect for each proxied one, then the writes.
    s.connect(9, -115);
    s.connect(10, -115);
    s.data(10, call::WRITEV, b"GET /v1/orders/same HTTP/1.0\r\n\r\n");
    s.data(9, call::WRITEV, b"GET /v1/orders/same HTTP/1.0\r\n\r\n");
    // The gateway answers the stream it runs no backend call for first, then the backends
    // answer out of order.
    let write = [h2::settings(), h2::status(&mut gateway, 5, "404")].concat();
    s.data(5, call::WRITEV, &write);
    s.answer(10, call::RECVFROM, "201 Created");
    s.answer(9, call::RECVFROM, "202 Accepted");
    let write = [
        h2::status(&mut gateway, 3, "201"),
        h2::status(&mut gateway, 1, "202"),
    ]
    .concat();
    s.data(5, call::WRITEV, &write);
    assert_eq!(ending_statuses(&s), [Some(202), Some(201), Some(404)]);
    let errors = s.of(EventKind::Error);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].text("RequestInURL"), Some("/nope"));
    assert!(errors[0].text("RequestOutURL").is_none());
    let incoming = s.of(EventKind::IncomingRequest);
    assert_eq!(incoming[0].text("UserAgent"), Some("h2/1"));
    assert_eq!(incoming[0].text("RequestInMethod"), Some("GET"));
    assert_eq!(s.pipeline.stats().http2_connections, 1);
    assert_eq!(s.pipeline.stats().opaque_connections, 0);
}

#[test]
fn streams_above_the_last_one_a_goaway_names_were_not_served() {
    let mut s = Script::new(CATALOG);
    let (mut client, mut gateway) = (loona_hpack::Encoder::new(), loona_hpack::Encoder::new());
    s.accept(5);
    let read = h2::opening(&mut client, &[(1, "/nope/1"), (3, "/nope/3")]);
    s.data(5, call::READ, &read);
    let write = [h2::status(&mut gateway, 1, "404"), h2::goaway(1)].concat();
    s.data(5, call::WRITE, &write);
    let errors = s.of(EventKind::Error);
    assert_eq!(errors.len(), 2, "{:#?}", s.events);
    assert_eq!(errors[0].get("StatusCode"), Some(&Value::Integer(404)));
    assert_eq!(errors[1].text("RequestInURL"), Some("/nope/3"));
    // Not served: no status of its own.
    assert_eq!(errors[1].text("ERROR_CODE"), Some("0"));
    assert_ne!(errors[1].get("StatusCode"), Some(&Value::Integer(404)));
}

#[test]
fn http2_answers_among_frames_not_captured_are_lost_and_later_frames_read_again() {
    let mut s = Script::new(CATALOG);
    let (mut client, mut gateway) = (loona_hpack::Encoder::new(), loona_hpack::Encoder::new());
    s.accept(5);
    let read = h2::opening(&mut client, &[(1, "/nope/1"), (3, "/nope/3")]);
    s.data(5, call::READ, &read);
    // A write of 64 KiB of which the record carries the first frame's header and a little of
    // its payload: the frames after it (the answers, perhaps) were never seen.
    let data = h2::frame(0, 0, 1, &[b'x'; 100]);
    s.data_beyond_capture(5, call::WRITE, &data, 65536);
    let lost = s.of(EventKind::Lost);
    assert_eq!(lost.len(), 1, "{:#?}", s.events);
    assert_eq!(lost[0].text("Reason"), Some("frames not captured"));
    assert_eq!(lost[0].get("RequestsLost"), Some(&Value::Integer(2)));
    // A write that starts mid-frame is no place to read on; one of whole frames is.
    s.data(5, call::WRITE, &[0u8, 1, 2, 3, 4, 5, 6]);
    s.data(5, call::READ, &h2::get(&mut client, 5, "/nope/5"));
    s.data(5, call::WRITE, &h2::status(&mut gateway, 5, "404"));
    assert_eq!(ending_statuses(&s)[2], Some(404));
    assert_eq!(s.pipeline.stats().http2_frames_lost, 1);
}

#[test]
fn a_request_waiting_for_its_backend_outlives_the_gateways_frames_not_captured() {
    let mut s = Script::new(CATALOG);
    let (mut client, mut gateway) = (loona_hpack::Encoder::new(), loona_hpack::Encoder::new());
    s.accept(5);
    let read = h2::opening(&mut client, &[(1, "/orders/1"), (3, "/nope")]);
    s.data(5, call::READ, &read);
    s.connect(9, -115);
    s.data(9, call::WRITEV, b"GET /v1/orders/1 HTTP/1.0\r\n\r\n");
    // A large write whose frames after the first were not captured: /nope's answer may have
    // been among them, /orders/1's cannot (its backend has not answered).
    let data = h2::frame(0, 0, 7, &[b'x'; 100]);
    s.data_beyond_capture(5, call::WRITE, &data, 65536);
    let lost = s.of(EventKind::Lost);
    assert_eq!(lost.len(), 1, "{:#?}", s.events);
    assert_eq!(lost[0].get("RequestsLost"), Some(&Value::Integer(1)));
    s.answer(9, call::RECVFROM, "200 OK");
    s.data(5, call::WRITE, &h2::status(&mut gateway, 1, "200"));
    assert_eq!(ending_statuses(&s), [Some(200), None]);
}

#[test]
fn a_connection_found_at_attach_reads_as_http2_from_a_call_of_whole_frames() {
    let mut s = Script::new(CATALOG);
    let mut gateway = loona_hpack::Encoder::new();
    s.pipeline.add_existing(
        (WORKER, 5),
        Direction::Inbound,
        Some(&CLIENT.parse().unwrap()),
    );
    // Before attach the client's first request put its agent in the HPACK table; the
    // observer sees only the second, which names it by index: `:method GET`, `:scheme https`,
    // `:path /` from the static table, then the table's newest entry (index 62).
    let block = [0x82, 0x87, 0x84, 0xbe];
    s.data(
        5,
        call::READ,
        &h2::frame(1, h2::END_STREAM | h2::END_HEADERS, 3, &block),
    );
    let incoming = s.of(EventKind::IncomingRequest);
    assert_eq!(incoming.len(), 1, "{:#?}", s.events);
    assert_eq!(incoming[0].text("RequestInMethod"), Some("GET"));
    assert_eq!(incoming[0].text("RequestInURL"), Some("/"));
    assert_eq!(incoming[0].text("RequestInURLTruncated"), None);
    assert_eq!(incoming[0].text("HeadersUnknown"), Some("true"));
    assert!(
        incoming[0].text("UserAgent").is_none(),
        "never a value the table cannot tell"
    );
    assert_eq!(s.pipeline.take_http2_found(), [(WORKER, 5)]);
    assert_eq!(s.pipeline.stats().http2_streams_unknown_fields, 1);
    s.data(5, call::WRITE, &h2::status(&mut gateway, 3, "200"));
    assert_eq!(ending_statuses(&s), [Some(200)]);
}

#[test]
fn an_upgrade_to_h2c_is_answered_on_stream_one_and_the_connection_reads_on_as_http2() {
    let mut s = Script::new(CATALOG);
    let (mut client, mut gateway) = (loona_hpack::Encoder::new(), loona_hpack::Encoder::new());
    s.accept(5);
    s.data(
        5,
        call::READ,
        b"GET /orders/1 HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    );
    s.connect(9, -115);
    s.data(9, call::WRITEV, b"GET /v1/orders/1 HTTP/1.1\r\n\r\n");
    // The 101 and the gateway's first frames in one write.
    let switch = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n".to_vec(),
        h2::settings(),
    ]
    .concat();
    s.data(5, call::WRITEV, &switch);
    assert!(
        s.of(EventKind::RequestComplete).is_empty(),
        "a 101 to h2c is no answer"
    );
    let read = [
        h2::PREFACE.to_vec(),
        h2::settings(),
        h2::get(&mut client, 3, "/orders/2"),
    ]
    .concat();
    s.data(5, call::READ, &read);
    s.answer(9, call::RECVFROM, "201 Created");
    let write = [
        h2::status(&mut gateway, 1, "201"),
        h2::status(&mut gateway, 3, "404"),
    ]
    .concat();
    s.data(5, call::WRITEV, &write);
    assert_eq!(ending_statuses(&s), [Some(201), Some(404)]);
    let complete = s.of(EventKind::RequestComplete);
    assert_eq!(
        complete[0].text("RequestOutURL"),
        Some("http://127.0.0.1:8081/v1/orders/1")
    );
    assert_eq!(s.pipeline.stats().http2_connections, 1);
    assert_eq!(s.pipeline.stats().opaque_connections, 0);
}

#[test]
fn a_stream_the_gateway_refuses_was_not_served_and_one_it_resets_was_dropped() {
    let mut s = Script::new(CATALOG);
    let mut client = loona_hpack::Encoder::new();
    s.accept(5);
    let read = h2::opening(&mut client, &[(1, "/orders/1"), (3, "/orders/3")]);
    s.data(5, call::READ, &read);
    // REFUSED_STREAM (0x7) on stream 1, INTERNAL_ERROR (0x2) on stream 3.
    s.data(
        5,
        call::WRITE,
        &[h2::reset(1, 0x7), h2::reset(3, 0x2)].concat(),
    );
    let errors = s.of(EventKind::Error);
    assert_eq!(errors.len(), 2, "{:#?}", s.events);
    assert_eq!(errors[0].text("ERROR_CODE"), Some("0"), "not served");
    assert_eq!(errors[1].text("ERROR_CODE"), Some("444"), "dropped");
}

#[test]
fn a_walked_http2_call_skips_data_payloads_between_its_records() {
    let mut s = Script::new(CATALOG);
    let (mut client, mut gateway) = (loona_hpack::Encoder::new(), loona_hpack::Encoder::new());
    s.accept(5);
    let read = h2::opening(&mut client, &[(1, "/nope/1"), (3, "/nope/3")]);
    s.data(5, call::READ, &read);
    // One write: stream 1's head and a DATA frame of 10,000 bytes, then stream 3's head. The
    // kernel sends the runs around the DATA payload, which it skips.
    let mut data_header = h2::frame(0, h2::END_STREAM, 1, &[]);
    data_header[..3].copy_from_slice(&[0x00, 0x27, 0x10]);
    let first = [
        h2::headers(&mut gateway, 1, 0, &[(":status", "404")]),
        data_header,
    ]
    .concat();
    let second = h2::status(&mut gateway, 3, "404");
    let moved = (first.len() + 10_000 + second.len()) as i64;
    let mut header = s.header(kind::DATA, 5, call::WRITE);
    header.flags = flags::FIRST | flags::MORE;
    s.feed(Record::Data {
        header,
        moved,
        offset: 0,
        more: true,
        captured: &first,
    });
    let header = RecordHeader { flags: 0, ..header };
    s.feed(Record::Data {
        header,
        moved,
        offset: (first.len() + 10_000) as u32,
        more: false,
        captured: &second,
    });
    assert_eq!(
        ending_statuses(&s),
        [Some(404), Some(404)],
        "{:#?}",
        s.events
    );
    assert_eq!(s.pipeline.stats().http2_frames_lost, 0);
}

#[test]
fn a_backend_resetting_its_http2_stream_is_a_reset_attempt() {
    let mut s = Script::new(CATALOG);
    let (mut client, mut gateway, mut to_backend) = (
        loona_hpack::Encoder::new(),
        loona_hpack::Encoder::new(),
        loona_hpack::Encoder::new(),
    );
    s.accept(5);
    s.data(
        5,
        call::READ,
        &h2::opening(&mut client, &[(1, "/orders/1"), (3, "/orders/3")]),
    );
    // nginx's grpc_pass: a connection to an HTTP/2 backend per request, its stream 1.
    s.connect(9, -115);
    let request = [
        h2::PREFACE.to_vec(),
        h2::settings(),
        h2::get(&mut to_backend, 1, "/v1/orders/1"),
    ]
    .concat();
    s.data(9, call::WRITEV, &request);
    s.connect(10, -115);
    let request = [
        h2::PREFACE.to_vec(),
        h2::get(&mut to_backend, 1, "/v1/orders/3"),
    ]
    .concat();
    s.data(10, call::WRITEV, &request);
    // The first backend resets the stream (INTERNAL_ERROR), the second goes away before it.
    s.data(
        9,
        call::RECVFROM,
        &[h2::settings(), h2::reset(1, 0x2)].concat(),
    );
    s.data(10, call::RECVFROM, &h2::goaway(0));
    let write = [
        h2::status(&mut gateway, 1, "502"),
        h2::status(&mut gateway, 3, "502"),
    ]
    .concat();
    s.data(5, call::WRITE, &write);
    let errors = s.of(EventKind::Error);
    assert_eq!(errors.len(), 2, "{:#?}", s.events);
    assert_eq!(
        errors[0].text("ERROR_MESSAGE"),
        Some("Connection reset by the back end")
    );
    assert_eq!(
        errors[0].text("RequestOutURL"),
        Some("http://127.0.0.1:8081/v1/orders/1")
    );
    assert_eq!(
        errors[1].text("ERROR_MESSAGE"),
        Some("Connection closed by the back end")
    );
    assert_eq!(
        errors[1].text("RequestOutURL"),
        Some("http://127.0.0.1:8081/v1/orders/3")
    );
}
