//! The kernel seam: loading and attaching the eBPF programs, what /proc and tracefs say about
//! the gateway, where its TLS library can be probed, draining the ring buffer, and decoding
//! the records. Also the capture file, which stores the same records for replay. Nothing here
//! knows HTTP or requests: it hands out [`record::Record`] values and the facts below.
pub mod btf;
pub mod capture_file;
pub mod errno;
pub mod go;
#[cfg(feature = "kernel")]
pub mod privileges;
pub mod probe_sites;
#[cfg(feature = "kernel")]
pub mod probes;
pub mod procfs;
pub mod record;
#[cfg(feature = "kernel")]
pub mod session;
pub mod tls;
pub mod tls_sites;

use std::{fmt, net::SocketAddr, sync::Arc};

/// A followed socket: (process, fd). accept/connect on a reused fd replace the entry.
pub type ConnectionKey = (u32, i32);

/// A thread: (process, thread id).
pub type ThreadKey = (u32, u32);

/// Which side of the gateway a socket is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A client connected to the gateway.
    Inbound,
    /// The gateway connected to a backend.
    Outbound,
}

/// The other end of a followed socket: an IP address and port, or a unix socket's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Ip(SocketAddr),
    Unix(Arc<str>),
}

impl fmt::Display for Endpoint {
    /// `127.0.0.1:8080`, or `unix:/run/app.sock` as nginx writes a unix upstream.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Ip(address) => address.fmt(f),
            Endpoint::Unix(path) => write!(f, "unix:{path}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = std::net::AddrParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.strip_prefix("unix:") {
            Some(path) => Ok(Endpoint::Unix(Arc::from(path))),
            None => text.parse().map(Endpoint::Ip),
        }
    }
}

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Wall-clock nanoseconds minus monotonic nanoseconds.
    pub offset_ns: i128,
}

impl Clock {
    pub fn wall(&self, monotonic_ns: u64) -> i128 {
        monotonic_ns as i128 + self.offset_ns
    }

    /// The offset now, from the two clocks read back to back.
    pub fn now() -> Clock {
        let read = |id| {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid pointer to a timespec.
            unsafe { libc::clock_gettime(id, &mut now) };
            now.tv_sec as i128 * 1_000_000_000 + now.tv_nsec as i128
        };
        let monotonic = read(libc::CLOCK_MONOTONIC);
        let wall = read(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: wall - monotonic,
        }
    }
}

/// Kernel-side counts of what could not be done.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelDrops {
    pub ring_full: u64,
    pub socket_table_full: u64,
    pub call_table_full: u64,
    pub read_failed: u64,
    pub watch_table_full: u64,
    pub tls_socket_unknown: u64,
}

impl KernelDrops {
    /// Records the kernel made and could not deliver.
    pub fn records_lost(&self) -> u64 {
        self.ring_full
    }

    /// Calls or connections whose bytes were not captured, in part or at all: tables full,
    /// unreadable buffers, TLS calls without a known socket.
    pub fn not_captured(&self) -> u64 {
        self.socket_table_full
            + self.call_table_full
            + self.read_failed
            + self.watch_table_full
            + self.tls_socket_unknown
    }
}

/// What receives kernel records, from the live ring buffer or from a capture file: the
/// connections that existed at attach first, then the records a batch at a time.
pub trait RecordConsumer {
    /// A connection the gateway held before attach (found in /proc).
    fn existing(&mut self, key: ConnectionKey, direction: Direction, remote: Option<Endpoint>);
    /// The peer of an accepted connection whose accept gave none (read from /proc).
    fn peer(&mut self, key: ConnectionKey, remote: Endpoint);
    /// One ring-buffer record, as the kernel laid it out.
    fn record(&mut self, bytes: &[u8]);
    /// The end of a batch: a moment to flush output.
    fn batch_done(&mut self);
    /// About once a second, records or not: a moment for what is due by the clock. `now_ns`
    /// is CLOCK_MONOTONIC (the records' clock); `drops`, the kernel's counts so far of what
    /// it could not do.
    fn tick(&mut self, _now_ns: u64, _drops: &KernelDrops) {}
    /// SIGHUP: reopen output files (a log rotator renamed them).
    fn reopen_outputs(&mut self) {}
    /// Connections found to speak HTTP/2 by their frames since the last call (joined
    /// mid-stream, no preface seen): the kernel captures their calls whole from then on.
    fn take_http2_found(&mut self) -> Vec<ConnectionKey> {
        Vec::new()
    }
}
