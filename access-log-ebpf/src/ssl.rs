//! Plaintext of TLS connections, read where the gateway's OpenSSL has it: uprobes at the entry
//! of SSL_read/SSL_write (and their _ex forms, or OpenSSL's internal read and write when the
//! entries would single-step: user space picks the sites) save the buffer, uretprobes copy what
//! was moved. The socket is the one the syscall inside the call used (seen by the syscall
//! tracepoints, which then skip the ciphertext), remembered per SSL object for calls OpenSSL
//! serves from its own buffer. Attached for every process that maps the library; the tgid
//! filter runs first.
use access_log_common::{call, counter, role, watched, SocketKey, SslKey};
use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, uprobe, uretprobe},
    maps::{LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    capture::{emit, Source},
    maps::{count, watched_caller, BPF_EXIST, SOCKETS, WATCHED},
};

/// An SSL call under way on a thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    pub ssl: u64,
    pub buffer: u64,
    /// For the _ex forms: where OpenSSL writes the byte count.
    pub length_out: u64,
    /// The socket, once the call's syscall (or an earlier call on this SSL object) showed it.
    pub fd: i32,
    /// [`call::TLS_READ`], [`call::TLS_WRITE`] or [`HANDSHAKE`].
    pub function: u32,
}

/// Marks a handshake call (SSL_do_handshake, SSL_accept, SSL_connect) in [`SslCall::function`].
const HANDSHAKE: u32 = 0;

/// How a probed function reports the bytes it moved.
#[derive(Clone, Copy)]
enum Form {
    /// SSL_read/SSL_write: the return value is the byte count.
    Counted,
    /// SSL_read_ex/SSL_write_ex: returns 1 and stores the count through the pointer passed as
    /// this argument; any failure returns 0.
    CountOut(usize),
    /// OpenSSL's internal read/write (ssl_read_internal, ssl_write_internal): like the _ex
    /// forms, but 0 is the peer's end of stream and a retry is negative. The count pointer is
    /// argument 3 (4 for OpenSSL 3.2's ssl_write_internal, which takes flags before it).
    Internal(usize),
}

impl Form {
    fn count_argument(self) -> Option<usize> {
        match self {
            Form::Counted => None,
            Form::CountOut(index) | Form::Internal(index) => Some(index),
        }
    }

    /// Whether a return value says the peer ended the stream (SSL_read's 0; the _ex forms
    /// cannot tell it from a retry).
    fn end_of_stream(self, result: i32) -> bool {
        result == 0 && matches!(self, Form::Counted | Form::Internal(_))
    }
}

#[map]
pub static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16384, 0);

#[map]
pub static SSL_SOCKETS: LruHashMap<SslKey, i32> = LruHashMap::with_max_entries(65536, 0);

/// The socket read last on each CPU, and by which thread. A TLS library on memory BIOs
/// (Node.js) makes no syscall inside SSL calls: it reads ciphertext first, then hands it to
/// OpenSSL on the same thread, almost always on the same CPU (a per-CPU slot costs far less
/// than a per-thread hash entry on every read; a migration in between is counted).
#[map]
pub static LAST_SOCKET_READ: PerCpuArray<LastRead> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastRead {
    pub pid_tgid: u64,
    pub fd: i32,
    pub _pad: u32,
}

/// Notes the socket a thread reads (called by the syscall tracepoints for followed sockets).
#[inline(always)]
pub fn note_socket_read(pid_tgid: u64, fd: i32) {
    if let Some(slot) = LAST_SOCKET_READ.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, written only by programs running on this CPU.
        unsafe {
            (*slot).pid_tgid = pid_tgid;
            (*slot).fd = fd;
        }
    }
}

fn last_socket_read(pid_tgid: u64) -> Option<i32> {
    let slot = LAST_SOCKET_READ.get(0)?;
    (slot.pid_tgid == pid_tgid).then_some(slot.fd)
}

/// Marks a followed socket as TLS: its syscalls carry ciphertext from now on.
#[inline(always)]
fn mark_tls(tgid: u32, fd: i32) {
    let key = SocketKey { tgid, fd };
    // SAFETY: the value is copied.
    if let Some(socket_role) = unsafe { SOCKETS.get(key) }.copied() {
        if socket_role & role::TLS == 0 {
            let _ = SOCKETS.insert(key, socket_role | role::TLS, 0);
        }
    }
}

/// Called by the syscall tracepoints: when this thread is inside an SSL call, the syscall's fd
/// is that call's socket. Returns true when the syscall moves ciphertext (not to be captured).
#[inline(always)]
pub fn inside_ssl_call(pid_tgid: u64, tgid: u32, fd: i32) -> bool {
    let Some(call) = SSL_CALLS.get_ptr_mut(pid_tgid) else {
        return false;
    };
    // SAFETY: the entry belongs to this thread, which is running this program.
    unsafe { (*call).fd = fd };
    mark_tls(tgid, fd);
    true
}

#[inline(always)]
fn enter(ctx: &ProbeContext, function: u32, form: Form) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    if caller.flags & watched::TLS_CALLS == 0 {
        // Before the call's own syscalls: they look for it from now on.
        let _ = WATCHED.insert(caller.tgid, caller.flags | watched::TLS_CALLS, BPF_EXIST);
    }
    let ssl: u64 = ctx.arg(0).ok_or(1i64)?;
    let buffer: u64 = ctx.arg(1).ok_or(1i64)?;
    let length_out: u64 = match form.count_argument() {
        None => 0,
        Some(index) => ctx.arg(index).ok_or(1i64)?,
    };
    let key = SslKey {
        ssl,
        tgid: caller.tgid,
        _pad: 0,
    };
    // SAFETY: the value is copied.
    let fd = unsafe { SSL_SOCKETS.get(key) }.copied().unwrap_or(-1);
    let call = SslCall {
        ssl,
        buffer,
        length_out,
        fd,
        function,
    };
    // A handshake run from inside SSL_read/SSL_write must not replace the outer call.
    const NO_EXIST: u64 = 1;
    let flags = if function == HANDSHAKE { NO_EXIST } else { 0 };
    if SSL_CALLS.insert(caller.pid_tgid, call, flags).is_err() && flags == 0 {
        count(counter::CALL_TABLE_FULL);
    }
    Ok(())
}

#[inline(always)]
fn exit(ctx: &RetProbeContext, function: u32, form: Form) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    // SAFETY: the entry is copied out before it is removed.
    let Some(call) = (unsafe { SSL_CALLS.get(caller.pid_tgid) }).copied() else {
        return Ok(());
    };
    if call.function != function {
        // The return of a nested call; the entry is the outer call's.
        return Ok(());
    }
    let _ = SSL_CALLS.remove(caller.pid_tgid);
    let mut call = call;
    // The socket is known from this call's own syscall or the SSL object, not guessed.
    let socket_known = call.fd >= 0;
    if call.fd < 0 && call.function != call::TLS_WRITE {
        // No syscall inside the call and none remembered: a memory-BIO library; the
        // ciphertext it decrypts is what this thread read last.
        if let Some(fd) = last_socket_read(caller.pid_tgid) {
            call.fd = fd;
            mark_tls(caller.tgid, fd);
        }
    }
    let key = SslKey {
        ssl: call.ssl,
        tgid: caller.tgid,
        _pad: 0,
    };
    if call.function == HANDSHAKE {
        // The handshake's syscalls named the socket: later reads served from OpenSSL's
        // buffer (a request that arrived with the handshake's last flight) need it.
        if call.fd >= 0 {
            let _ = SSL_SOCKETS.insert(key, call.fd, 0);
        }
        return Ok(());
    }
    let result: i32 = ctx.ret();
    if call.function == call::TLS_READ && socket_known && form.end_of_stream(result) {
        // The peer closed the TLS stream (close_notify or EOF), perhaps with no read() of ours
        // seeing it: a fact user space needs (a backend that hung up before answering).
        emit(caller, call.fd, call.function, 0, 0, Source::CountOnly);
        return Ok(());
    }
    let moved: i64 = if form.count_argument().is_some() {
        if result != 1 {
            return Ok(());
        }
        // SAFETY: the helper fails cleanly on a bad pointer.
        unsafe { bpf_probe_read_user(call.length_out as *const u64) }.map_err(|e| e as i64)? as i64
    } else {
        result as i64
    };
    if moved <= 0 {
        return Ok(());
    }
    if call.fd < 0 {
        count(counter::TLS_SOCKET_UNKNOWN);
        return Ok(());
    }
    let _ = SSL_SOCKETS.insert(key, call.fd, 0);
    // SAFETY: the value is copied.
    let Some(socket_role) = (unsafe {
        SOCKETS.get(SocketKey {
            tgid: caller.tgid,
            fd: call.fd,
        })
    })
    .copied()
    .filter(|r| matches!(role::base(*r), role::INBOUND | role::OUTBOUND)) else {
        // Not a followed connection (a socket the observer never saw open): its direction is
        // unknown, and guessing one would make requests of responses.
        count(counter::TLS_SOCKET_UNKNOWN);
        return Ok(());
    };
    emit(
        caller,
        call.fd,
        call.function,
        moved,
        socket_role,
        Source::Buffer {
            pointer: call.buffer,
        },
    );
    Ok(())
}

/// An entry uprobe and a return uprobe for one family of SSL functions.
macro_rules! ssl_probes {
    ($enter:ident, $exit:ident, $kind:expr, $form:expr) => {
        #[uprobe]
        pub fn $enter(ctx: ProbeContext) -> u32 {
            let _ = enter(&ctx, $kind, $form);
            0
        }

        #[uretprobe]
        pub fn $exit(ctx: RetProbeContext) -> u32 {
            let _ = exit(&ctx, $kind, $form);
            0
        }
    };
}

ssl_probes!(ssl_read_enter, ssl_read_exit, call::TLS_READ, Form::Counted);
ssl_probes!(
    ssl_read_ex_enter,
    ssl_read_ex_exit,
    call::TLS_READ,
    Form::CountOut(3)
);
ssl_probes!(
    ssl_write_enter,
    ssl_write_exit,
    call::TLS_WRITE,
    Form::Counted
);
ssl_probes!(
    ssl_write_ex_enter,
    ssl_write_ex_exit,
    call::TLS_WRITE,
    Form::CountOut(3)
);
// OpenSSL's internal functions behind SSL_read/SSL_read_ex and SSL_write/SSL_write_ex; 3.2's
// ssl_write_internal(s, buf, num, flags, written) takes flags before the count.
ssl_probes!(
    ssl_read_internal_enter,
    ssl_read_internal_exit,
    call::TLS_READ,
    Form::Internal(3)
);
ssl_probes!(
    ssl_write_internal_enter,
    ssl_write_internal_exit,
    call::TLS_WRITE,
    Form::Internal(3)
);
ssl_probes!(
    ssl_write_flags_enter,
    ssl_write_flags_exit,
    call::TLS_WRITE,
    Form::Internal(4)
);
// SSL_do_handshake, SSL_accept and SSL_connect: only to learn the SSL object's socket.
ssl_probes!(
    ssl_handshake_enter,
    ssl_handshake_exit,
    HANDSHAKE,
    Form::Counted
);
