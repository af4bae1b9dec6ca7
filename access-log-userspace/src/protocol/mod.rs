//! One direction of one connection's bytes, turned into message heads: HTTP/1.x (`http1`),
//! and HTTP/2 frames to stream events (`http2`, with `hpack` for its header blocks; not yet
//! fed by the pipeline). Knows nothing of connections, pairing or events; what to keep of a
//! head beyond its framing is the caller's choice ([`http1::HeaderInterest`]).
pub mod hpack;
pub mod http1;
pub mod http2;
