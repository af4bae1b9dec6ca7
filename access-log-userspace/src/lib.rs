//! access-log's user-space library: the pipeline from kernel records to access-log events
//! (decode, reassemble, parse, pair, classify, format) and the seams to the kernel and /proc.
//! The `access-log` binary (src/main.rs) is the command line around it.
pub mod catalog;
pub mod classify;
pub mod event;
pub mod format;
pub mod http;
pub mod pipeline;
#[cfg(feature = "kernel")]
pub mod probe;
pub mod procfs;
pub mod record;
pub mod recording;
pub mod tls;
pub mod tls_sites;
