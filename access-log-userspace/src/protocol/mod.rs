//! One direction of one connection's bytes, turned into message heads: HTTP/1.x here. Knows
//! nothing of connections, pairing or events; what to keep of a head beyond its framing is
//! the caller's choice ([`http1::HeaderInterest`]).
pub mod http1;
