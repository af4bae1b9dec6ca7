//! Which inbound request a backend call serves. The gateway designs differ: an nginx worker
//! proxies a request right after reading it; an HAProxy thread reads a batch of requests and
//! then runs their streams in order; an Apache thread serves one connection at a time; Go
//! moves goroutines between OS threads; Varnish hands the backend fetch to another thread. The
//! facts that hold in all of them, strongest first:
//! 1. an id header (X-Request-ID, traceparent, ...) with the same value on both requests, when
//!    no other request waiting for a backend in that process carries it: exact;
//! 2. a thread that just saw an attempt fail (a refused connect, a closed or answered-with-5xx
//!    attempt) retries for that attempt's request;
//! 3. connect() binding: the first request written on a new connection is the one it was
//!    connected for;
//! 4. the thread's own requests: a thread calls the backend for the requests it read in the
//!    order it read them (one at a time for nginx and Apache, a batch for HAProxy), those
//!    whose body is complete before those still reading one;
//! 5. the requests handed to this thread when another woke it (`sched_waking`: a client thread
//!    waking a fetch thread): the waker's first request by rule 4 at the moment of the
//!    wake-up, reserved for this thread until its waker wakes another; of several, the one
//!    named last: handed over last, or whose waker this thread woke in turn (Varnish's worker
//!    tells the client thread it took the request); a thread takes one task at a time, and
//!    other wake-ups were a lock's;
//! 6. the request of a thread this thread woke (a worker releasing the pool's lock wakes the
//!    client thread waiting for it, which then gives it its task with no wake-up): marked low
//!    confidence;
//! 7. the oldest request of the process waiting for a backend and not handed to another
//!    thread, counting those still waiting for a connection they asked for: a connection pool
//!    gives a freed or new connection to its oldest waiter (Go's transport), a task queue
//!    gives a task to whichever thread is free (Varnish); order alone, so marked low
//!    confidence;
//! 8. content (method, query, path tail): marked low confidence.
//!
//! A low-confidence pairing is checked again when its answer comes, where the process's
//! wake-ups are followed: the thread that read the answer wakes the request's own thread next
//! (see `Pipeline::answer_woke`). Not on an HTTP/2 connection: one thread reads all its
//! streams, so neither its wake-ups nor a hand-over from it (rule 5: Apache's mod_http2 gives
//! each stream to whichever worker takes it from a queue) tell one stream from another; such
//! pairings stay low confidence.
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::{outcome::Confidence, Hold, InboundRequest, Tables};
use access_log_common::go_call;

use crate::{
    kernel::{errno, ConnectionKey, ThreadKey},
    pipeline::outcome::AttemptOutcome,
    protocol::http1::RequestHead,
};

/// What the kernel showed a thread doing last.
#[derive(Debug, Default)]
struct Thread {
    /// The inbound request whose backend attempt this thread just saw fail.
    retry_for: Option<u64>,
    /// The requests handed over with wake-ups, named last first: handed over, or named again
    /// when this thread woke the thread that handed it over. A thread woken by several before
    /// it got to work serves the one named last still waiting and not handed to another
    /// since: a worker is handed one task at a time, and a client thread hands its task over
    /// with its last wake-up (one before, to a worker waiting for the pool's lock it
    /// released, was the lock's).
    handed: std::collections::VecDeque<u64>,
    /// The waiting requests of the threads this thread woke, oldest first.
    woke_for: std::collections::VecDeque<u64>,
}

/// Puts `number` last in a short list of facts, newest last (a thread's recent wake-ups).
fn remember(list: &mut std::collections::VecDeque<u64>, number: u64) {
    if let Some(place) = list.iter().position(|n| *n == number) {
        list.remove(place);
    } else if list.len() == 4 {
        list.pop_front();
    }
    list.push_back(number);
}

/// The facts pairing rests on, beyond what the connections and requests hold.
#[derive(Default)]
pub(super) struct Linker {
    threads: HashMap<ThreadKey, Thread>,
    /// Requests not yet ended by their id-header value, per process (values come from clients:
    /// the default hasher resists collisions).
    ids: std::collections::HashMap<(u32, Arc<str>), Vec<u64>>,
    /// Requests handed to a thread by a wake-up: reserved for that thread (id).
    handed_to: HashMap<u64, u32>,
    /// Go programs: the goroutine facts that replace thread facts there.
    go: GoFacts,
    /// Processes whose wake-ups are followed (a wake-up record was seen).
    waking: rustc_hash::FxHashSet<u32>,
    /// Answers held for confirmation, by the thread that read them: (request, when).
    answered: HashMap<ThreadKey, (u64, u64)>,
}

/// What a Go program's transport showed: the request each goroutine read last, the request
/// each connection (`*persistConn`) was handed, and the connection each writer goroutine
/// writes. The outbound request a writer goroutine writes is its connection's request.
#[derive(Default)]
struct GoFacts {
    /// Processes whose records carry goroutines.
    programs: rustc_hash::FxHashSet<u32>,
    read_by: HashMap<(u32, u64), u64>,
    handed: HashMap<(u32, u64), u64>,
    writer_of: HashMap<(u32, u64), u64>,
}

/// The outcome of an attempt whose backend ended the stream: EOF is a close, an errno a reset.
pub(super) fn hang_up_outcome(moved: i64) -> AttemptOutcome {
    match moved {
        0 => AttemptOutcome::Closed,
        errno::ECONNREFUSED => AttemptOutcome::ConnectFailed,
        _ => AttemptOutcome::Reset,
    }
}

/// Whether a request can be the one a new backend call serves: no attempt under way and no
/// answer held (a held answer's retry is found by rule 2).
fn candidate(request: &InboundRequest) -> bool {
    request.held_answer.is_none() && request.awaiting_backend()
}

/// Whether a request may own an answer its thread was woken for: nothing paired to it by
/// more than order (no attempt under way but ones paired with low confidence, no answer held
/// but one held for confirmation).
fn may_own_answer(request: &InboundRequest) -> bool {
    match request.held_answer {
        Some(held) => held.hold == Hold::Unconfirmed,
        None => request
            .attempts
            .iter()
            .filter(|a| a.attempt.outcome.in_progress())
            .all(|a| a.attempt.confidence == Confidence::Low),
    }
}

/// How soon after reading an answer held for confirmation its thread's wake-up counts (the
/// next act of that thread in any case).
const ANSWER_WAKE_NS: u64 = 5_000_000;

impl Linker {
    /// A thread read from an inbound connection: a retry it was about to make is off.
    pub fn inbound_read(&mut self, thread: ThreadKey) {
        if let Some(state) = self.threads.get_mut(&thread) {
            state.retry_for = None;
        }
    }

    /// Whether the process's wake-ups are followed.
    pub fn wakes_followed(&self, tgid: u32) -> bool {
        self.waking.contains(&tgid)
    }

    /// `thread` read an answer for `number` that waits for its next wake-up to confirm it.
    pub fn answer_held(&mut self, thread: ThreadKey, number: u64, at: u64) {
        self.answered.insert(thread, (number, at));
    }

    /// `thread` did something other than wake a thread: an answer it held waits no more.
    pub fn thread_acted(&mut self, thread: ThreadKey) {
        if !self.answered.is_empty() {
            self.answered.remove(&thread);
        }
    }

    /// The request whose held answer `waker` read just before this wake-up, if any.
    pub fn take_answered(&mut self, waker: ThreadKey, at: u64) -> Option<u64> {
        let (number, answered_at) = self.answered.remove(&waker)?;
        (at.saturating_sub(answered_at) <= ANSWER_WAKE_NS).then_some(number)
    }

    /// The request of thread `woken` that an answer held for `answered` may belong to: the
    /// oldest one it read that [`may_own_answer`].
    pub fn answer_owner(&self, tables: &Tables, woken: ThreadKey, answered: u64) -> Option<u64> {
        tables
            .requests
            .iter()
            .filter(|(number, r)| **number != answered && r.reader == woken && may_own_answer(r))
            .map(|(number, _)| *number)
            .min()
    }

    /// A thread woke another: its first waiting request (if any) is handed over.
    pub fn woke(&mut self, waker: ThreadKey, woken: u32, tables: &Tables) {
        self.waking.insert(waker.0);
        if let Some(waiting) = self.first_of(tables, (waker.0, woken)) {
            let state = self.threads.entry(waker).or_default();
            remember(&mut state.woke_for, waiting);
            // Waking the thread that handed it a request names that request again (Varnish's
            // worker tells the client thread it took it): the newest fact of what it serves.
            if state.handed.contains(&waiting) {
                remember(&mut state.handed, waiting);
            }
        }
        let Some(handed) = self.first_of(tables, waker) else {
            return;
        };
        let state = self.threads.entry((waker.0, woken)).or_default();
        remember(&mut state.handed, handed);
        // Handed new work, the thread is not about to retry an old attempt.
        state.retry_for = None;
        self.handed_to.insert(handed, woken);
    }

    /// How far a pairing by thread facts (rules 2, 4, 5) of `thread` with request `id` can be
    /// trusted: a request handed over from the thread that read every stream of an HTTP/2
    /// connection was handed to whichever worker took it from a queue (Apache's mod_http2),
    /// which the wake-ups do not tell: order alone, low.
    fn hand_over_confidence(&self, tables: &Tables, thread: ThreadKey, id: u64) -> Confidence {
        let retried = self
            .threads
            .get(&thread)
            .is_some_and(|s| s.retry_for == Some(id));
        let handed_from_http2 = tables.requests.get(&id).is_some_and(|r| {
            r.reader != thread
                && tables
                    .connections
                    .get(&r.connection)
                    .is_some_and(|c| c.http2.is_some())
        });
        if handed_from_http2 && !retried {
            Confidence::Low
        } else {
            Confidence::Kernel
        }
    }

    /// A thread (and, in a Go program, a goroutine) completed an inbound request head.
    pub fn request(
        &mut self,
        thread: ThreadKey,
        goroutine: u64,
        number: u64,
        id: Option<&Arc<str>>,
    ) {
        if goroutine != 0 {
            self.go.programs.insert(thread.0);
            self.go.read_by.insert((thread.0, goroutine), number);
        }
        if let Some(id) = id {
            self.ids
                .entry((thread.0, id.clone()))
                .or_default()
                .push(number);
        }
    }

    /// A request ended: its id no longer links, and no thread holds it.
    pub fn forget(&mut self, tgid: u32, number: u64, id: Option<&Arc<str>>) {
        self.handed_to.remove(&number);
        let Some(id) = id else {
            return;
        };
        let key = (tgid, id.clone());
        if let Some(numbers) = self.ids.get_mut(&key) {
            numbers.retain(|n| *n != number);
            if numbers.is_empty() {
                self.ids.remove(&key);
            }
        }
    }

    /// A thread saw an attempt of `number` fail: the connect it makes next is the retry.
    pub fn retry(&mut self, thread: ThreadKey, number: u64) {
        self.threads.entry(thread).or_default().retry_for = Some(number);
    }

    /// A Go program's transport call: a goroutine handed its request to `connection`
    /// (roundTrip), or started writing `connection`'s requests (writeLoop).
    pub fn go_call(&mut self, tgid: u32, function: u32, goroutine: u64, connection: u64) {
        match function {
            go_call::ROUND_TRIP => {
                if let Some(number) = self.go.read_by.get(&(tgid, goroutine)).copied() {
                    self.go.handed.insert((tgid, connection), number);
                }
            }
            go_call::WRITE_LOOP => {
                self.go.writer_of.insert((tgid, goroutine), connection);
            }
            _ => {}
        }
    }

    /// The request a Go writer goroutine's outbound request serves, by the transport's facts.
    fn by_goroutine(&mut self, tgid: u32, goroutine: u64, tables: &Tables) -> Option<u64> {
        let connection = *self.go.writer_of.get(&(tgid, goroutine))?;
        let number = self.go.handed.remove(&(tgid, connection))?;
        tables.requests.contains_key(&number).then_some(number)
    }

    /// A process is gone: its threads' facts with it.
    pub fn process_exited(&mut self, tgid: u32) {
        self.threads.retain(|(owner, _), _| *owner != tgid);
        self.ids.retain(|(owner, _), _| *owner != tgid);
        self.go.programs.remove(&tgid);
        self.go.read_by.retain(|(owner, _), _| *owner != tgid);
        self.go.handed.retain(|(owner, _), _| *owner != tgid);
        self.go.writer_of.retain(|(owner, _), _| *owner != tgid);
        self.waking.remove(&tgid);
        self.answered.retain(|(owner, _), _| *owner != tgid);
    }

    /// After a gap in the records, what threads did last is unknown.
    pub fn forget_threads(&mut self) {
        self.threads.clear();
        self.handed_to.clear();
        self.answered.clear();
    }

    /// Whether `number` was handed to a thread other than `thread`.
    fn reserved_elsewhere(&self, number: u64, thread: ThreadKey) -> bool {
        self.handed_to
            .get(&number)
            .is_some_and(|tid| *tid != thread.1)
    }

    /// The oldest candidate of the whole process.
    fn first_waiting(&self, tables: &Tables, thread: ThreadKey) -> Option<u64> {
        tables
            .requests
            .iter()
            .filter(|(number, r)| {
                r.connection.0 == thread.0
                    && candidate(r)
                    && !self.reserved_elsewhere(**number, thread)
            })
            .map(|(number, r)| (!r.ready, *number))
            .min()
            .map(|(_, number)| number)
    }

    /// The first candidate read by `reader`: oldest first, those whose body is complete
    /// first.
    fn first_of(&self, tables: &Tables, reader: ThreadKey) -> Option<u64> {
        tables
            .requests
            .iter()
            .filter(|(_, r)| r.reader == reader && candidate(r))
            .map(|(number, r)| (!r.ready, *number))
            .min()
            .map(|(_, number)| number)
    }

    /// The oldest request of the process waiting for a connection for its backend call: a
    /// candidate, or one whose connect is under way elsewhere than `key`.
    fn oldest_in(&self, tables: &Tables, thread: ThreadKey, key: ConnectionKey) -> Option<u64> {
        tables
            .requests
            .iter()
            .filter(|(number, r)| {
                r.connection.0 == thread.0
                    && !self.reserved_elsewhere(**number, thread)
                    && r.held_answer.is_none()
                    && r.attempts.iter().all(|a| {
                        a.attempt.outcome == AttemptOutcome::Connecting && a.connection != key
                            || !a.attempt.outcome.in_progress()
                    })
            })
            .map(|(number, r)| (!r.ready, *number))
            .min()
            .map(|(_, number)| number)
    }

    /// Rules 2, 4 and 5: the request a new backend call on `thread` serves by kernel facts
    /// (`head`: the backend request, once written).
    fn by_thread(
        &self,
        thread: ThreadKey,
        tables: &Tables,
        head: Option<&RequestHead>,
    ) -> Option<u64> {
        let state = self.threads.get(&thread);
        if let Some(id) = state
            .and_then(|s| s.retry_for)
            .filter(|id| tables.waiting(*id))
        {
            return Some(id);
        }
        if let Some(id) = self.first_of(tables, thread) {
            return Some(id);
        }
        let mut handed = self.open_hand_overs(thread, tables);
        let named_last = handed.next()?;
        // Several hand-overs still open: all but one were a lock's wake-ups. The content tells
        // them apart where it differs (one route's request against another's); where it is
        // the same, the one named last stands. A connect waits for the request it carries.
        let Some(head) = head else {
            return handed.next().is_none().then_some(named_last);
        };
        let score = |id: u64| {
            tables
                .requests
                .get(&id)
                .map_or(0, |r| content_score(&r.request.head, head))
        };
        Some(handed.fold(
            named_last,
            |best, id| {
                if score(id) > score(best) {
                    id
                } else {
                    best
                }
            },
        ))
    }

    /// The requests handed over to `thread` still waiting and not handed to another since,
    /// named last first.
    fn open_hand_overs<'a>(
        &'a self,
        thread: ThreadKey,
        tables: &'a Tables,
    ) -> impl Iterator<Item = u64> + 'a {
        self.threads
            .get(&thread)
            .into_iter()
            .flat_map(|state| state.handed.iter().rev().copied())
            .filter(move |id| {
                tables.requests.get(id).is_some_and(candidate)
                    && !self.reserved_elsewhere(*id, thread)
            })
    }

    /// Rule 6: the newest waiting request of a thread `thread` woke, not handed to another.
    fn by_wake_given(&self, thread: ThreadKey, tables: &Tables) -> Option<u64> {
        self.threads
            .get(&thread)?
            .woke_for
            .iter()
            .rev()
            .copied()
            .find(|id| {
                tables.requests.get(id).is_some_and(candidate)
                    && !self.reserved_elsewhere(*id, thread)
            })
    }

    /// The request a thread's new connect() is for. None in a Go program: its dial goroutine
    /// runs wherever the scheduler puts it, and the transport's calls pair its requests.
    pub fn link_connect(&self, thread: ThreadKey, tables: &Tables) -> Option<(u64, Confidence)> {
        if self.go.programs.contains(&thread.0) {
            return None;
        }
        if let Some(id) = self.by_thread(thread, tables, None) {
            return Some((id, self.hand_over_confidence(tables, thread, id)));
        }
        if self.open_hand_overs(thread, tables).nth(1).is_some() {
            // Several hand-overs open: the request written on the connection tells.
            return None;
        }
        self.by_wake_given(thread, tables)
            .or_else(|| self.first_waiting(tables, thread))
            .map(|id| (id, Confidence::Low))
    }

    /// The request an outbound request head on `key` serves (written by `goroutine` in a Go
    /// program).
    pub fn link_request(
        &mut self,
        key: ConnectionKey,
        thread: ThreadKey,
        goroutine: u64,
        bound: Option<(u64, Confidence)>,
        head: &RequestHead,
        tables: &Tables,
    ) -> Option<(u64, Confidence)> {
        let by_go = (goroutine != 0)
            .then(|| self.by_goroutine(key.0, goroutine, tables))
            .flatten();
        // A request this one may serve: a candidate, or connecting on this very connection.
        let connecting_here = |r: &InboundRequest| {
            r.attempts
                .iter()
                .any(|a| a.connection == key && a.attempt.outcome == AttemptOutcome::Connecting)
        };
        let with_id: Vec<u64> = head
            .id
            .as_ref()
            .and_then(|id| self.ids.get(&(key.0, id.clone())))
            .map(|numbers| {
                numbers
                    .iter()
                    .copied()
                    .filter(|n| {
                        tables
                            .requests
                            .get(n)
                            .is_some_and(|r| r.held_answer.is_none() || connecting_here(r))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let [only] = with_id.as_slice() {
            return Some((*only, Confidence::Exact));
        }
        if let Some(number) = by_go {
            return Some((number, Confidence::Kernel));
        }
        let bound = bound.filter(|(id, _)| tables.requests.get(id).is_some_and(connecting_here));
        let by_kernel = bound
            .or_else(|| {
                self.by_thread(thread, tables, Some(head))
                    .map(|id| (id, self.hand_over_confidence(tables, thread, id)))
            })
            .or_else(|| {
                self.by_wake_given(thread, tables)
                    .or_else(|| self.oldest_in(tables, thread, key))
                    .map(|id| (id, Confidence::Low))
            });
        // Several waiting requests share the id: the kernel facts choose among them.
        if with_id.len() > 1 {
            return match by_kernel {
                Some((id, confidence)) if with_id.contains(&id) => Some((id, confidence)),
                _ => with_id.first().map(|id| (*id, Confidence::Low)),
            };
        }
        if let Some((id, confidence)) = by_kernel {
            let consistent = tables
                .requests
                .get(&id)
                .is_some_and(|r| !contradicts(&r.request.head, head));
            return Some((
                id,
                if consistent {
                    confidence
                } else {
                    Confidence::Low
                },
            ));
        }
        best_by_content(tables, key.0, head).map(|id| (id, Confidence::Low))
    }
}

/// Among the process's requests waiting for a backend, the one whose content fits best.
fn best_by_content(tables: &Tables, tgid: u32, head: &RequestHead) -> Option<u64> {
    tables
        .requests
        .iter()
        .filter(|(_, r)| r.connection.0 == tgid && r.awaiting_backend())
        .map(|(id, r)| {
            (
                content_score(&r.request.head, head),
                std::cmp::Reverse(*id),
                *id,
            )
        })
        .max()
        .map(|(_, _, id)| id)
}

/// An outbound request that cannot have come from this inbound one: a different query string
/// when both have one (gateways forward the query unchanged unless configured otherwise). A
/// target cut by the capture window is compared as far as both go.
fn contradicts(inbound: &RequestHead, outbound: &RequestHead) -> bool {
    let (_, in_query) = split_target(&inbound.target);
    let (_, out_query) = split_target(&outbound.target);
    if in_query.is_empty() || out_query.is_empty() {
        return false;
    }
    if inbound.truncated || outbound.truncated {
        let common = in_query.len().min(out_query.len());
        return in_query.as_bytes()[..common] != out_query.as_bytes()[..common];
    }
    in_query != out_query
}

/// How well an outbound request's content fits an inbound one (method, query, path tail,
/// whole path: a rewrite that adds a prefix keeps it).
fn content_score(inbound: &RequestHead, outbound: &RequestHead) -> u32 {
    let (in_path, in_query) = split_target(&inbound.target);
    let (out_path, out_query) = split_target(&outbound.target);
    let last_segment = in_path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
    u32::from(inbound.method == outbound.method)
        + u32::from(in_query == out_query)
        + u32::from(!last_segment.is_empty() && out_path.ends_with(last_segment))
        + u32::from(out_path.ends_with(in_path))
}

fn split_target(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}
