//! The errno values the kernel side reports and user space interprets (negated, as syscalls
//! return them), in one place.
pub const EPIPE: i64 = -32;
pub const ENETUNREACH: i64 = -101;
pub const ECONNABORTED: i64 = -103;
pub const ECONNRESET: i64 = -104;
pub const EISCONN: i64 = -106;
pub const ETIMEDOUT: i64 = -110;
pub const ECONNREFUSED: i64 = -111;
pub const EHOSTUNREACH: i64 = -113;
pub const EALREADY: i64 = -114;
pub const EINPROGRESS: i64 = -115;
