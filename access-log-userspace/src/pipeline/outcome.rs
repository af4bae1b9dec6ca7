//! What the pipeline hands out: plain values saying what became of each request. The event
//! layer turns them into events; nothing here knows an event's fields.
//!
//! The invariant the pipeline keeps: every request handed out as [`Outcome::Incoming`] is
//! later handed out exactly once more, in an [`Outcome::Ended`] or named in an
//! [`Outcome::Lost`].
use std::sync::Arc;

use crate::{
    kernel::ConnectionKey,
    protocol::{
        http1::{RequestHead, RequestLine},
        http2::GrpcStatus,
    },
    text::Text,
};

/// An inbound request as the pipeline knows it: cheap to clone (its texts are shared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Unique within a session, in arrival order: the event layer names the request by it.
    pub number: u64,
    pub head: RequestHead,
    /// The client's IP as text, shared by the connection's requests.
    pub remote_ip: Option<Arc<str>>,
    /// The client's connection was TLS (read through the TLS library's probes).
    pub tls: bool,
    /// When its head was complete (monotonic nanoseconds).
    pub received_ns: u64,
    /// The gateway process that read it (a worker, or the one process of a threaded gateway).
    pub process: u32,
}

/// How much the kernel facts behind a pairing can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confidence {
    /// The same id header value on both sides, unique among the requests waiting.
    Exact,
    /// Kernel facts: thread, order, connect binding, wake-ups.
    Kernel,
    /// Content or recency only: may be wrong under concurrency.
    Low,
}

/// How one backend attempt ended, as far as the kernel showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// connect() issued; no request written yet.
    Connecting,
    /// Request written; no response yet.
    Sent,
    /// The backend answered with this status.
    Answered(u16),
    /// The connection failed before a request could be written (refused, unreachable).
    ConnectFailed,
    /// The backend closed the connection before answering.
    Closed,
    /// The backend reset the connection before answering.
    Reset,
    /// The gateway closed the connection while waiting for the answer: it gave up (timeout).
    Abandoned,
}

impl AttemptOutcome {
    pub fn in_progress(self) -> bool {
        matches!(self, AttemptOutcome::Connecting | AttemptOutcome::Sent)
    }
}

/// One backend call the gateway made for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The backend as text: `127.0.0.1:8081`, or `unix:/run/app.sock`.
    pub backend: Option<Arc<str>>,
    /// The backend is a unix socket (its URL is written `http://unix:/path:/target`).
    pub unix: bool,
    pub method: Option<Text>,
    pub target: Option<Arc<str>>,
    pub outcome: AttemptOutcome,
    pub confidence: Confidence,
    /// The request went out through the TLS library.
    pub tls: bool,
}

/// What ended a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The backend's answer on attempt `attempt` (an index into the attempts) ended it.
    Backend { attempt: usize, status: u16 },
    /// The gateway answered with `status` and no backend answer: an answer of its own (a
    /// health check, a redirect, a cached answer), a refusal, or a failure after attempts.
    Gateway { status: u16 },
    /// The client closed its connection before any answer.
    ClientGone,
    /// Pipelined after an answer that ended the connection: never served.
    NotServed,
    /// The gateway closed the client's connection without an answer (nginx's 444, a timeout
    /// it does not answer).
    Dropped,
    /// The gateway process exited (crashed, killed) before answering.
    GatewayExited,
}

/// A request that ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub request: Request,
    pub attempts: Vec<Attempt>,
    pub ending: Ending,
    /// A gRPC call's outcome, from the trailers the client got.
    pub grpc: Option<GrpcStatus>,
    /// When (monotonic nanoseconds).
    pub at: u64,
}

impl Ended {
    /// The attempt whose facts the ending event shows: the one answered, else the last.
    pub fn shown_attempt(&self) -> Option<&Attempt> {
        match self.ending {
            Ending::Backend { attempt, .. } => self.attempts.get(attempt),
            _ => self.attempts.last(),
        }
    }
}

/// Why requests ended without their end being seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// The kernel could not deliver records (ring buffer full): what was in flight may have
    /// lost its answer or its link.
    RingFull,
    /// A connection's state was lost: its fd was accepted or connected again without a close
    /// the observer saw.
    ConnectionReplaced,
    /// The observer stopped (or the capture file ended) before the requests ended.
    ObserverStopped,
    /// The pipeline's bounds forgot them: their connection idle longer than the idle
    /// timeout, a request waiting longer than it, or a table over its cap.
    Evicted,
    /// HTTP/2 frames that may have held their answer were not captured (bytes of one call
    /// beyond the capture, or an answer's head only in part).
    FramesNotCaptured,
}

/// Requests ended without their end being seen, and what was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    pub reason: LossReason,
    /// When the loss was noticed (monotonic nanoseconds).
    pub at: u64,
    /// The requests it ends, by number.
    pub requests: Vec<u64>,
    /// The client connections (process, descriptor) those requests came on.
    pub connections: Vec<ConnectionKey>,
    /// Kernel records lost, when that is the reason.
    pub records: u64,
}

/// One thing the pipeline learned, in the order it learned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A client's request head is complete.
    Incoming(Request),
    Ended(Box<Ended>),
    /// The gateway refused bytes that were no readable request (with the method and target
    /// when the first line was a request line).
    Unreadable {
        line: Option<RequestLine>,
        remote_ip: Option<Arc<str>>,
        tls: bool,
        status: u16,
        at: u64,
    },
    Lost(Loss),
}
