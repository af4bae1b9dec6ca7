//! Data calls on followed sockets, seen once, at their exit: the arguments come from the
//! registers the task saved at syscall entry (x86-64 keeps them intact through the call), so
//! no enter program and no per-call map entry are needed. A bounded head of the bytes actually
//! moved is copied. Calls on anything that is not a followed socket return after two lookups.
use access_log_common::{call, role, watched};
use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    capture::{emit, Source},
    connection::{ret, role_of},
    maps::{tls_probes, watched_caller},
    ssl,
};

/// The errors that say something about the connection (the peer reset or refused it, the
/// network failed); anything else (EAGAIN, EINTR, a restart) says nothing and is not sent.
#[inline(always)]
fn connection_error(result: i64) -> bool {
    const EPIPE: i64 = -32;
    const ENETUNREACH: i64 = -101;
    const ECONNABORTED: i64 = -103;
    const ECONNRESET: i64 = -104;
    const ETIMEDOUT: i64 = -110;
    const ECONNREFUSED: i64 = -111;
    const EHOSTUNREACH: i64 = -113;
    matches!(
        result,
        EPIPE | ENETUNREACH | ECONNABORTED | ECONNRESET | ETIMEDOUT | ECONNREFUSED | EHOSTUNREACH
    )
}

/// Offset in x86-64's `struct pt_regs` of r10; r9, r8, ax, cx, dx, si and di follow it. The
/// first four syscall arguments are di, si, dx and r10: one read gets them all.
const REG_R10: usize = 7 * 8;
const MSG_PEEK: u64 = 2;

/// The first four arguments of the current syscall, from the task's saved registers.
#[inline(always)]
fn syscall_arguments() -> Result<[u64; 4], i64> {
    // SAFETY: helpers on the current task; the read goes through bpf_probe_read_kernel, which
    // fails cleanly.
    let [r10, _r9, _r8, _ax, _cx, dx, si, di] = unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const u8;
        bpf_probe_read_kernel(regs.add(REG_R10) as *const [u64; 8]).map_err(|e| e as i64)?
    };
    Ok([di, si, dx, r10])
}

/// Offset in `struct pt_regs` of r14, which holds the running goroutine (`g`) in Go's register
/// ABI (Go 1.17 and later) at every syscall a goroutine makes.
const REG_R14: usize = 8;

/// The goroutine of a Go program's current syscall.
#[inline(always)]
fn running_goroutine() -> u64 {
    // SAFETY: as for syscall_arguments.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const u8;
        bpf_probe_read_kernel(regs.add(REG_R14) as *const u64).unwrap_or(0)
    }
}

/// Whether a receive only peeked (nginx peeks one byte to tell TLS from plaintext): the bytes
/// stay queued and come again with the real read. recvfrom's flags are its fourth argument,
/// recvmsg's its third.
#[inline(always)]
fn peeked(data_call: u32, [_, _, third, fourth]: [u64; 4]) -> bool {
    let flags = match data_call {
        call::RECVMSG => third,
        call::RECVFROM => fourth,
        _ => return false,
    };
    flags & MSG_PEEK != 0
}

#[inline(always)]
fn exit(ctx: &TracePointContext, data_call: u32) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    let moved = ret(ctx)?;
    // An end of stream (0 on a read) and connection errors are facts user space classifies;
    // would-block, interrupted and other failed calls moved nothing and mean nothing.
    if (moved < 0 && !connection_error(moved)) || (moved == 0 && !call::is_ingress(data_call)) {
        return Ok(());
    }
    let arguments = syscall_arguments()?;
    let mut caller = caller;
    if caller.flags & watched::GO != 0 {
        caller.goroutine = running_goroutine();
    }
    let [first, pointer, length, _] = arguments;
    let (fd, data_call) = match data_call {
        // splice(fd_in, off_in, fd_out, ...): either end may be the socket.
        call::SPLICE_OUT => {
            if followed(caller, length as i32) {
                (length as i32, call::SPLICE_OUT)
            } else {
                (first as i32, call::SPLICE_IN)
            }
        }
        _ => (first as i32, data_call),
    };
    let Some(socket_role) = role_of(caller, fd) else {
        return Ok(());
    };
    // A peek's bytes come again with the real read; its end of stream or error is news (nginx
    // peeks to learn that a client waiting for a backend went away).
    if !matches!(role::base(socket_role), role::INBOUND | role::OUTBOUND)
        || (moved > 0 && peeked(data_call, arguments))
    {
        return Ok(());
    }
    let ingress = call::is_ingress(data_call);
    // Bytes on a TLS socket are ciphertext, skipped: their plaintext comes from the TLS
    // library's probes. An end of stream or a connection error is a fact of the socket either
    // way, and goes through.
    let ciphertext = moved > 0;
    if tls_probes() {
        if ingress {
            ssl::note_socket_read(caller.pid_tgid, fd);
        }
        if caller.flags & watched::TLS_CALLS != 0
            && ssl::inside_ssl_call(caller.pid_tgid, caller.tgid, fd)
            && ciphertext
        {
            return Ok(());
        }
    }
    if socket_role & role::TLS != 0 && ciphertext {
        return Ok(());
    }
    let source = match data_call {
        call::READV | call::WRITEV => Source::Vector {
            iov: pointer,
            count: length,
        },
        call::RECVMSG | call::SENDMSG => {
            // struct msghdr: name, namelen, iov at 16, iovlen at 24.
            // SAFETY: the helper fails cleanly on a bad pointer.
            let header = unsafe { bpf_probe_read_user((pointer + 16) as *const [u64; 2]) }
                .map_err(|e| e as i64)?;
            Source::Vector {
                iov: header[0],
                count: header[1],
            }
        }
        call::SENDFILE | call::SPLICE_IN | call::SPLICE_OUT => Source::CountOnly,
        _ => Source::Buffer { pointer },
    };
    emit(caller, fd, data_call, moved, socket_role, source);
    Ok(())
}

#[inline(always)]
fn followed(caller: crate::maps::Caller, fd: i32) -> bool {
    role_of(caller, fd).is_some_and(|r| matches!(role::base(r), role::INBOUND | role::OUTBOUND))
}

macro_rules! data_call {
    ($exit:ident, $call:expr) => {
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            let _ = exit(&ctx, $call);
            0
        }
    };
}

data_call!(read_exit, call::READ);
data_call!(readv_exit, call::READV);
data_call!(recvfrom_exit, call::RECVFROM);
data_call!(recvmsg_exit, call::RECVMSG);
data_call!(write_exit, call::WRITE);
data_call!(writev_exit, call::WRITEV);
data_call!(sendto_exit, call::SENDTO);
data_call!(sendmsg_exit, call::SENDMSG);
// sendfile(out_fd, in_fd, ...): the socket is the destination; counted, never copied.
data_call!(sendfile_exit, call::SENDFILE);
data_call!(splice_exit, call::SPLICE_OUT);
