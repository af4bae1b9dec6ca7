//! Records shared by the kernel programs and the user-space daemon.
//!
//! Every record in the ring buffer starts with a [`RecordHeader`]; its `kind` says what follows:
//! captured bytes for [`kind::DATA`], a [`SocketAddress`] for [`kind::ACCEPT`] and
//! [`kind::CONNECT`], a unix socket path for [`kind::CONNECT_UNIX`], nothing for the others. Layouts are fixed (`#[repr(C)]`, explicit padding,
//! size asserted) because both sides read the same bytes.
#![no_std]

/// The largest head slice one data record can carry (`--capture-bytes` is capped here).
pub const MAX_CAPTURE: usize = 4096;
/// The default capture window for requests: holds the request line and headers of ordinary
/// requests.
pub const DEFAULT_CAPTURE: u32 = 1024;
/// The default capture window for responses: a status line and the framing headers.
pub const DEFAULT_RESPONSE_CAPTURE: u32 = 512;
/// The most bytes copied from one call that goes on in continuation records (a read carrying
/// HTTP/1 requests, any call on an HTTP/2 connection): the first window, then records of up
/// to [`MAX_CAPTURE`] bytes each, so that many pipelined requests or multiplexed frames moved
/// at once are all seen. Bytes beyond it are counted, not copied.
pub const MAX_CALL_CAPTURE: u32 = 16384;
/// Continuation records one call can add after its first record.
pub const MAX_CONTINUATIONS: u32 = MAX_CALL_CAPTURE / MAX_CAPTURE as u32;
/// What an HTTP/2 client sends first (RFC 9113 section 3.4), on a cleartext connection with
/// prior knowledge and after TLS's ALPN chose h2.
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest unix socket path (`sun_path`).
pub const UNIX_PATH_MAX: usize = 108;

/// What a record reports.
pub mod kind {
    /// Bytes moved on a followed socket (`result` bytes; the first `captured_len` follow).
    pub const DATA: u32 = 1;
    /// A socket accepted by a watched process: an inbound connection.
    pub const ACCEPT: u32 = 2;
    /// A watched process connected a socket: an outbound connection (`result` is connect's).
    pub const CONNECT: u32 = 3;
    /// A followed socket was closed (`result` holds its TCP state just before, 0 when it
    /// could not be read).
    pub const CLOSE: u32 = 4;
    /// A watched process (a whole thread group) exited.
    pub const EXIT: u32 = 5;
    /// The process shut down the sending side of an inbound socket (`result` holds `how`):
    /// whatever it reads afterwards is drained, not served (Apache's lingering close).
    pub const SHUTDOWN: u32 = 7;
    /// A watched process connected a unix stream socket: an outbound connection to a local
    /// backend (`result` is connect's); a [`super::UnixConnectRecord`].
    pub const CONNECT_UNIX: u32 = 8;
    /// A thread of a watched process woke another thread (`result` holds the woken thread's
    /// id): work handed from one thread to another (a fetch thread, a goroutine's new OS
    /// thread).
    pub const WAKE: u32 = 9;
    /// A Go program's net/http transport call, a [`super::GoCallRecord`]: `call` says which
    /// (see [`super::go_call`]), `goroutine` is the goroutine that made it.
    pub const GO_CALL: u32 = 10;
}

/// The Go net/http transport functions probed, in a [`kind::GO_CALL`] record's `call`.
pub mod go_call {
    /// `(*persistConn).roundTrip`: a handler's goroutine hands its request to a connection.
    pub const ROUND_TRIP: u32 = 1;
    /// `(*persistConn).writeLoop`: the goroutine that writes a connection's requests starts.
    pub const WRITE_LOOP: u32 = 2;
}

/// Bits of the value of a process's entry in the kernel's watched-process table.
pub mod watched {
    /// The process is watched.
    pub const YES: u32 = 1;
    /// The process runs Go: its data records carry the goroutine (R14 in Go's register ABI).
    pub const GO: u32 = 2;
    /// The process has entered a probed TLS library function since attach (set by the
    /// kernel): only then can one of its syscalls run inside an SSL call, so only then do its
    /// data syscalls look for one (a lookup saved on every call of a plaintext gateway).
    pub const TLS_CALLS: u32 = 4;
}

/// Bits of [`RecordHeader::flags`].
pub mod flags {
    /// A data record whose call moved more bytes than it carries, and whose next bytes follow
    /// in a continuation record of the same call (same timestamp, tid and fd; a larger
    /// `offset`).
    pub const MORE: u32 = 1;
    /// A connect record for a socket already connecting or connected: HAProxy, among others,
    /// calls connect() again to learn how a non-blocking connect ended. Only failures are
    /// sent; the connection is the same.
    pub const REPEATED: u32 = 2;
    /// A data record of an HTTP/2 call whose frames the kernel walked: the first record of
    /// its call, whatever its `offset`. The records of such a call carry slices of it (frame
    /// headers and header blocks); the bytes between them (DATA payloads) were skipped.
    pub const FIRST: u32 = 4;
}

/// Which call produced a data record: a syscall, or a TLS library's read or write.
pub mod call {
    pub const READ: u32 = 1;
    pub const READV: u32 = 2;
    pub const RECVFROM: u32 = 3;
    pub const RECVMSG: u32 = 4;
    pub const WRITE: u32 = 5;
    pub const WRITEV: u32 = 6;
    pub const SENDTO: u32 = 7;
    pub const SENDMSG: u32 = 8;
    pub const SENDFILE: u32 = 9;
    pub const SPLICE_IN: u32 = 10;
    pub const SPLICE_OUT: u32 = 11;
    /// Plaintext returned by SSL_read / SSL_read_ex (a uretprobe, not a syscall).
    pub const TLS_READ: u32 = 12;
    /// Plaintext passed to SSL_write / SSL_write_ex.
    pub const TLS_WRITE: u32 = 13;

    /// True for calls that move bytes from the socket to the process.
    pub const fn is_ingress(call: u32) -> bool {
        matches!(
            call,
            READ | READV | RECVFROM | RECVMSG | SPLICE_IN | TLS_READ
        )
    }

    /// True for plaintext read through the process's TLS library.
    pub const fn is_tls(call: u32) -> bool {
        matches!(call, TLS_READ | TLS_WRITE)
    }
}

/// Role of a followed socket in the kernel's socket table.
pub mod role {
    /// Created by socket(AF_INET*/AF_UNIX, SOCK_STREAM) but not yet connected.
    pub const CREATED: u32 = 1;
    /// Accepted from a listening socket: a client talks to the gateway.
    pub const INBOUND: u32 = 2;
    /// Connected by the gateway: the gateway talks to a backend.
    pub const OUTBOUND: u32 = 3;
    /// Flag: the socket carries TLS that the process's TLS library reads and writes; its
    /// syscalls move ciphertext and are not captured (the plaintext comes from the uprobes).
    pub const TLS: u32 = 0x100;
    /// Flag: the connection speaks HTTP/2 (its client sent the preface, or user space
    /// recognized its frames): frames of many streams share one call and a lost frame header
    /// hides the frames after it, so a call is walked frame by frame where the frames are
    /// known ([`super::frames`]), else captured whole up to [`super::MAX_CALL_CAPTURE`].
    pub const HTTP2: u32 = 0x200;
    /// The role without flags.
    pub const fn base(role: u32) -> u32 {
        role & 0xff
    }
}

/// Indexes of the per-CPU counters of things the kernel side could not do.
pub mod counter {
    /// A record did not fit in the ring buffer.
    pub const RING_FULL: u32 = 0;
    /// The socket table was full: a connection is not followed.
    pub const SOCKET_TABLE_FULL: u32 = 1;
    /// The in-flight call table, or this CPU's scratch records (programs nested by
    /// preemption), were full: a call's bytes were not captured.
    pub const CALL_TABLE_FULL: u32 = 2;
    /// Reading the process's buffer failed.
    pub const READ_FAILED: u32 = 3;
    /// The watched-process table was full: a child is not watched.
    pub const WATCH_TABLE_FULL: u32 = 4;
    /// A TLS call's socket could not be found: its plaintext was not captured.
    pub const TLS_SOCKET_UNKNOWN: u32 = 5;
    pub const COUNT: u32 = 6;
}

/// The first bytes of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub timestamp_ns: u64,
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    /// One of [`call`] for data records, 0 otherwise.
    pub call: u32,
    /// Bytes of payload that follow this header in a data record.
    pub captured_len: u32,
    /// The syscall's return value: bytes moved, or a negative errno.
    pub result: i64,
    /// Where the captured bytes start within the call's bytes: 0, or the offset of a
    /// continuation record's slice.
    pub offset: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// Records the kernel had failed to deliver (ring buffer full), over the whole session,
    /// when it made this one: a rise from one record to the next says a gap lies between them.
    pub lost_before: u64,
    /// In a Go program, the goroutine (its `g` address) that made the call; 0 elsewhere.
    pub goroutine: u64,
}
const _: () = assert!(core::mem::size_of::<RecordHeader>() == 64);

/// A socket address as the kernel gave it; `family` is AF_INET (2) or AF_INET6 (10), or 0 when
/// unknown. `port` is in host byte order; IPv4 addresses use the first four bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketAddress {
    pub family: u16,
    pub port: u16,
    pub addr: [u8; 16],
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SocketAddress>() == 24);

/// The record for accept and connect: the header, then the remote address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub header: RecordHeader,
    pub remote: SocketAddress,
}
const _: () = assert!(core::mem::size_of::<ConnectionRecord>() == 88);

/// The record of a Go transport call: the header, then the `*persistConn` it concerns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoCallRecord {
    pub header: RecordHeader,
    pub connection: u64,
}
const _: () = assert!(core::mem::size_of::<GoCallRecord>() == 72);

/// The record for a connect on a unix stream socket: the header, then the path as given to
/// connect() (NUL-terminated when shorter; an abstract socket starts with a NUL byte).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixConnectRecord {
    pub header: RecordHeader,
    pub path: [u8; UNIX_PATH_MAX],
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<UnixConnectRecord>() == 176);

/// Offsets (bytes) of the kernel structure members the programs walk from the current task to
/// a socket's state and peer, read from the kernel's BTF at load time. A zero `task_files`
/// means the walk is not possible on this kernel and is skipped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// task_struct.files
    pub task_files: u32,
    /// files_struct.fdt
    pub files_fdt: u32,
    /// fdtable.max_fds
    pub fdtable_max_fds: u32,
    /// fdtable.fd
    pub fdtable_fd: u32,
    /// file.private_data (a struct socket for a socket file)
    pub file_private_data: u32,
    /// socket.sk
    pub socket_sk: u32,
    /// sock_common.skc_state (sock_common starts struct sock)
    pub skc_state: u32,
    /// sock_common.skc_family
    pub skc_family: u32,
    /// sock_common.skc_daddr
    pub skc_daddr: u32,
    /// sock_common.skc_dport
    pub skc_dport: u32,
    /// sock_common.skc_v6_daddr
    pub skc_v6_daddr: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 48);

/// TCP states as the kernel numbers them (include/net/tcp_states.h), for a socket's state at
/// close: whether the peer had ended the connection first.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const CLOSING: u8 = 11;

    /// The peer sent its FIN or a reset before this side closed.
    pub const fn peer_ended(state: u8) -> bool {
        matches!(state, TIME_WAIT | CLOSE | CLOSE_WAIT | LAST_ACK | CLOSING)
    }
}

/// Key of the kernel's table of followed sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SocketKey {
    pub tgid: u32,
    pub fd: i32,
}
const _: () = assert!(core::mem::size_of::<SocketKey>() == 8);

/// Where the frames of one direction of an HTTP/2 socket stand at the start of its next call,
/// in the kernel's table of them: [`frames::UNKNOWN`], or the bytes of the current frame still
/// to come, with [`frames::KEPT`] when they are copied (a header block) rather than skipped (a
/// DATA payload). 0: at a frame's start.
pub mod frames {
    pub const UNKNOWN: u32 = u32::MAX;
    pub const KEPT: u32 = 1 << 31;
    /// Frames walked in one call at most; a call with more is captured whole from there on
    /// (and its direction's frames are unknown after it).
    pub const MAX_WALKED: u32 = 64;
    /// Index of the direction in the table's value: what the process reads, and writes.
    pub const READS: usize = 0;
    pub const WRITES: usize = 1;
}

/// Key of the kernel's table of TLS objects and their sockets: an SSL object's address within
/// one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SslKey {
    pub ssl: u64,
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SslKey>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data: repr(C), every field an integer, no implicit padding.
    unsafe impl aya::Pod for super::SocketKey {}
    unsafe impl aya::Pod for super::SslKey {}
    unsafe impl aya::Pod for super::RecordHeader {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}
