//! One followed connection: its two HTTP/1 streams and the requests waiting on it.
use std::{collections::VecDeque, sync::Arc};

use super::{http2::Http2Connection, outcome::AttemptOutcome, Confidence};
use crate::{
    kernel::{Direction, Endpoint},
    protocol::http1::{HeaderInterest, RequestLine, Side, Stream},
};

pub(super) struct Connection {
    pub direction: Direction,
    /// The other end as text (`ip:port`, `unix:/path`), made once for all its requests.
    pub remote_text: Option<Arc<str>>,
    /// Inbound: the client's IP as text.
    pub remote_ip: Option<Arc<str>>,
    /// Outbound: the backend is a unix socket.
    pub unix: bool,
    pub requests: Stream,
    pub responses: Stream,
    /// Requests on this connection still waiting for their response, oldest first: inbound
    /// request numbers on an inbound connection (None for bytes that were no readable
    /// request); on an outbound one, the inbound request each outbound request serves (None
    /// when it could not be linked).
    pub awaiting: VecDeque<Option<u64>>,
    /// Inbound: what each unreadable request (a None in `awaiting`) said, oldest first.
    pub unreadable: VecDeque<Option<RequestLine>>,
    /// Outbound: the inbound request this connection was opened for (connect-time binding).
    pub bound: Option<(u64, Confidence)>,
    /// Outbound: the backend ended the connection (EOF or error) before the gateway closed it.
    pub hung_up: Option<AttemptOutcome>,
    /// Plaintext of this connection comes from the TLS library's probes.
    pub tls: bool,
    /// Ciphertext was seen on the syscall path and no TLS probe read it.
    pub encrypted_unread: bool,
    /// Inbound: the gateway shut down its sending side; what it reads now is drained.
    pub closing: bool,
    /// Inbound: the gateway's last answer ended the connection (`Connection: close`): the
    /// requests after it were not served.
    pub answer_closed: bool,
    /// Inbound: the client ended its side (end of stream, reset) before the gateway closed.
    pub client_ended: bool,
    /// The newest record's time on it (0: none yet, as for a connection found at attach).
    pub last_active: u64,
    /// Found at attach, and no HTTP/1 request read on it since: it may speak HTTP/2.
    pub joined_late: bool,
    /// Per direction (written, read), where the records of the call under way have reached
    /// in it: a record further on follows bytes the kernel skipped.
    pub call_cursor: [u64; 2],
    /// Inbound, speaking HTTP/2: its frames and streams (its HTTP/1 streams then stay unused).
    pub http2: Option<Box<Http2Connection>>,
}

impl Connection {
    pub fn new(
        direction: Direction,
        remote: Option<&Endpoint>,
        interest: &Arc<HeaderInterest>,
    ) -> Connection {
        Connection {
            direction,
            remote_text: remote.map(|r| Arc::from(r.to_string())),
            remote_ip: remote.and_then(|r| match r {
                Endpoint::Ip(address) => Some(Arc::from(address.ip().to_string())),
                Endpoint::Unix(_) => None,
            }),
            unix: matches!(remote, Some(Endpoint::Unix(_))),
            requests: Stream::with_interest(Side::Requests, interest.clone()),
            responses: Stream::with_interest(Side::Responses, interest.clone()),
            awaiting: VecDeque::new(),
            unreadable: VecDeque::new(),
            bound: None,
            hung_up: None,
            tls: false,
            encrypted_unread: false,
            last_active: 0,
            closing: false,
            answer_closed: false,
            client_ended: false,
            joined_late: false,
            call_cursor: [0; 2],
            http2: None,
        }
    }

    /// Outbound: the inbound requests with an attempt under way here, those waiting for an
    /// answer and the one it was connected for.
    pub fn attempting(&self) -> Vec<u64> {
        self.awaiting
            .iter()
            .flatten()
            .copied()
            .chain(self.bound.map(|(id, _)| id))
            .collect()
    }

    /// Forgets what waits on it and where its streams stand: after a gap in the records, the
    /// next answer could belong to any request.
    pub fn forget_order(&mut self) {
        self.awaiting.clear();
        self.unreadable.clear();
        self.bound = None;
        if let Some(http2) = &mut self.http2 {
            http2.forget_frames();
        }
        if !self.requests.is_opaque() {
            self.requests.resync();
        }
        if !self.responses.is_opaque() {
            self.responses.resync();
        }
    }
}
