//! One direction of one connection's bytes, turned into message heads: HTTP/1.x (`http1`),
//! and HTTP/2 frames to stream events (`http2`, with `hpack` for its header blocks). Knows
//! nothing of connections, pairing or events; what to keep of a head beyond its framing is the
//! caller's choice ([`http1::HeaderInterest`]); credentials are reduced to what may be kept
//! (`credential`) before a head leaves.
pub mod credential;
pub mod hpack;
pub mod http1;
pub mod http2;
