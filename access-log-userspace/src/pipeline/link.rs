//! Which inbound request a backend call serves. The evidence, strongest first:
//! 1. an id header (X-Request-ID, traceparent, ...) with the same value on both requests: exact;
//! 2. connect() binding: an event-loop gateway connects right after it has read the request it
//!    connects for (its head, or the last of its body), on the same thread; a connect right
//!    after the gateway closed a failed attempt is the retry of that attempt's request;
//! 3. on a reused keep-alive connection, the request whose connection the thread read last;
//! 4. content (method, query, path tail) among the process's requests waiting for a backend,
//!    marked low confidence.
use super::{ConnectionKey, InboundRequest, Pipeline, ThreadKey};
use crate::{classify::AttemptOutcome, http::RequestHead};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confidence {
    /// The same id header value on both sides.
    Exact,
    /// Kernel facts: thread, order, connect binding.
    Kernel,
    /// Content or recency only: may be wrong under concurrency.
    Low,
}

/// What the kernel showed a thread doing last.
#[derive(Debug, Default)]
pub struct Thread {
    /// The inbound connection this thread read from last.
    pub last_inbound_read: Option<ConnectionKey>,
    /// The inbound request whose backend attempt this thread just saw fail.
    pub retry_for: Option<u64>,
    /// The last inbound request head completed on this thread.
    pub last_request: Option<u64>,
}

impl Thread {
    pub fn inbound_read(&mut self, key: ConnectionKey) {
        self.last_inbound_read = Some(key);
        self.retry_for = None;
    }
}

/// The outcome of an attempt whose backend ended the stream: EOF is a close, an errno a reset.
pub fn hang_up_outcome(moved: i64) -> AttemptOutcome {
    const ECONNREFUSED: i64 = -111;
    match moved {
        0 => AttemptOutcome::Closed,
        ECONNREFUSED => AttemptOutcome::ConnectFailed,
        _ => AttemptOutcome::Reset,
    }
}

impl Pipeline {
    fn waiting(&self, id: u64) -> bool {
        self.requests
            .get(&id)
            .is_some_and(InboundRequest::awaiting_backend)
    }

    /// The oldest request on an inbound connection that still needs a backend.
    fn current_on(&self, key: ConnectionKey) -> Option<u64> {
        let connection = self.connections.get(&key)?;
        connection
            .awaiting
            .iter()
            .flatten()
            .copied()
            .find(|id| self.waiting(*id))
    }

    /// The request a thread's new connect() is for.
    pub(super) fn link_connect(&mut self, thread: ThreadKey) -> Option<(u64, Confidence)> {
        let state = self.threads.get(&thread)?;
        if let Some(id) = state.retry_for.filter(|id| self.waiting(*id)) {
            return Some((id, Confidence::Kernel));
        }
        if let Some(id) = state.last_inbound_read.and_then(|key| self.current_on(key)) {
            return Some((id, Confidence::Kernel));
        }
        let id = state.last_request.filter(|id| self.waiting(*id))?;
        Some((id, Confidence::Low))
    }

    /// The request an outbound request head serves.
    pub(super) fn link_request(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        bound: Option<(u64, Confidence)>,
        head: &RequestHead,
    ) -> Option<(u64, Confidence)> {
        if let Some(id) = head
            .correlation
            .as_ref()
            .and_then(|c| self.by_correlation.get(c))
            .copied()
            .filter(|id| self.requests.contains_key(id))
        {
            return Some((id, Confidence::Exact));
        }
        let bound = bound.filter(|(id, _)| {
            self.requests.get(id).is_some_and(|r| {
                r.attempts
                    .iter()
                    .any(|a| a.connection == key && a.outcome == AttemptOutcome::Connecting)
            })
        });
        let by_kernel = bound.or_else(|| {
            let state = self.threads.get(&thread)?;
            if let Some(id) = state.retry_for.filter(|id| self.waiting(*id)) {
                return Some((id, Confidence::Kernel));
            }
            let id = state.last_inbound_read.and_then(|k| self.current_on(k))?;
            Some((id, Confidence::Kernel))
        });
        if let Some((id, confidence)) = by_kernel {
            let consistent = self
                .requests
                .get(&id)
                .is_some_and(|r| !contradicts(&r.head, head));
            return Some((
                id,
                if consistent {
                    confidence
                } else {
                    Confidence::Low
                },
            ));
        }
        self.best_by_content(key.0, head)
            .map(|id| (id, Confidence::Low))
    }

    /// Among the process's requests waiting for a backend, the one whose content fits best.
    fn best_by_content(&self, tgid: u32, head: &RequestHead) -> Option<u64> {
        self.requests
            .iter()
            .filter(|(_, r)| r.connection.0 == tgid && r.awaiting_backend())
            .map(|(id, r)| (content_score(&r.head, head), std::cmp::Reverse(*id), *id))
            .max()
            .map(|(_, _, id)| id)
    }
}

/// An outbound request that cannot have come from this inbound one: a different query string
/// when both have one (gateways forward the query unchanged unless configured otherwise).
fn contradicts(inbound: &RequestHead, outbound: &RequestHead) -> bool {
    let (_, in_query) = split_target(&inbound.target);
    let (_, out_query) = split_target(&outbound.target);
    !in_query.is_empty() && !out_query.is_empty() && in_query != out_query
}

/// How well an outbound request's content fits an inbound one (method, query, path tail).
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
