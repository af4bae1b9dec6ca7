//! Data calls on followed sockets: enter saves the arguments, exit copies a bounded head of the
//! bytes actually moved. Calls on anything that is not a followed socket return at enter.
use access_log_common::{role, syscall};
use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};

use crate::{
    capture::{emit, Source},
    connection::{arg, ret, role_of, take},
    maps::{capture_bytes, count, tls_probes, watched_caller, PendingCall, CALLS},
    ssl,
};

const EAGAIN: i64 = -11;
const EINTR: i64 = -4;

/// Saves the call when `fd` is a followed, connected socket.
#[inline(always)]
fn enter(ctx: &TracePointContext, call_syscall: u32, fd_arg: usize) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    let fd = arg(ctx, fd_arg)? as i32;
    let Some(socket_role) = role_of(caller, fd) else {
        return Ok(());
    };
    if !matches!(role::base(socket_role), role::INBOUND | role::OUTBOUND) {
        return Ok(());
    }
    if syscall::is_ingress(call_syscall) && tls_probes() {
        ssl::note_socket_read(caller.pid_tgid, fd);
    }
    // Ciphertext: the plaintext of this call, if any, comes from the TLS library's probes.
    if socket_role & role::TLS != 0
        || (tls_probes() && ssl::inside_ssl_call(caller.pid_tgid, caller.tgid, fd))
    {
        return Ok(());
    }
    let inbound = role::base(socket_role) == role::INBOUND;
    let call = PendingCall {
        pointer: arg(ctx, 1)?,
        length: arg(ctx, 2)?,
        fd,
        syscall: call_syscall,
        window: capture_bytes(syscall::is_ingress(call_syscall) == inbound),
        _pad: 0,
    };
    if CALLS.insert(caller.pid_tgid, call, 0).is_err() {
        count(access_log_common::counter::CALL_TABLE_FULL);
    }
    Ok(())
}

#[inline(always)]
fn exit(ctx: &TracePointContext, call_syscall: u32) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    let Some(call) = take(caller, call_syscall) else {
        return Ok(());
    };
    let moved = ret(ctx)?;
    // Would-block and interrupted calls moved nothing and mean nothing; an end of stream (0 on
    // a read) and real errors (reset, broken pipe) are facts user space classifies.
    if moved == EAGAIN || moved == EINTR || (moved == 0 && !syscall::is_ingress(call_syscall)) {
        return Ok(());
    }
    let source = match call_syscall {
        syscall::READV | syscall::WRITEV => Source::Vector {
            iov: call.pointer,
            count: call.length,
        },
        syscall::RECVMSG | syscall::SENDMSG => {
            // struct msghdr: name, namelen, iov at 16, iovlen at 24.
            // SAFETY: the helper fails cleanly on a bad pointer.
            let header = unsafe { bpf_probe_read_user((call.pointer + 16) as *const [u64; 2]) }
                .map_err(|e| e as i64)?;
            Source::Vector {
                iov: header[0],
                count: header[1],
            }
        }
        syscall::SENDFILE | syscall::SPLICE_IN | syscall::SPLICE_OUT => Source::Counted,
        _ => Source::Buffer {
            pointer: call.pointer,
        },
    };
    emit(caller, call.fd, call_syscall, moved, call.window, source);
    Ok(())
}

macro_rules! data_call {
    ($enter:ident, $exit:ident, $syscall:expr, $fd_arg:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            let _ = enter(&ctx, $syscall, $fd_arg);
            0
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            let _ = exit(&ctx, $syscall);
            0
        }
    };
}

data_call!(read_enter, read_exit, syscall::READ, 0);
data_call!(readv_enter, readv_exit, syscall::READV, 0);
data_call!(recvfrom_enter, recvfrom_exit, syscall::RECVFROM, 0);
data_call!(recvmsg_enter, recvmsg_exit, syscall::RECVMSG, 0);
data_call!(write_enter, write_exit, syscall::WRITE, 0);
data_call!(writev_enter, writev_exit, syscall::WRITEV, 0);
data_call!(sendto_enter, sendto_exit, syscall::SENDTO, 0);
data_call!(sendmsg_enter, sendmsg_exit, syscall::SENDMSG, 0);
// sendfile(out_fd, in_fd, ...): the socket is the destination.
data_call!(sendfile_enter, sendfile_exit, syscall::SENDFILE, 0);

/// splice(fd_in, off_in, fd_out, ...): either end may be a socket; counted, never copied.
#[tracepoint]
pub fn splice_enter(ctx: TracePointContext) -> u32 {
    let _ = try_splice_enter(&ctx);
    0
}

fn try_splice_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    let fd_out = arg(ctx, 2)? as i32;
    let fd_in = arg(ctx, 0)? as i32;
    let followed = |fd| {
        role_of(caller, fd).is_some_and(|r| matches!(role::base(r), role::INBOUND | role::OUTBOUND))
    };
    let (fd, call_syscall) = if followed(fd_out) {
        (fd_out, syscall::SPLICE_OUT)
    } else if followed(fd_in) {
        (fd_in, syscall::SPLICE_IN)
    } else {
        return Ok(());
    };
    let call = PendingCall {
        pointer: 0,
        length: 0,
        fd,
        syscall: call_syscall,
        window: 0,
        _pad: 0,
    };
    if CALLS.insert(caller.pid_tgid, call, 0).is_err() {
        count(access_log_common::counter::CALL_TABLE_FULL);
    }
    Ok(())
}

#[tracepoint]
pub fn splice_exit(ctx: TracePointContext) -> u32 {
    let Some(caller) = watched_caller() else {
        return 0;
    };
    // SAFETY: copied out of the map before use.
    let pending = unsafe { CALLS.get(caller.pid_tgid) }.copied();
    if let Some(call) = pending {
        if call.syscall == syscall::SPLICE_IN || call.syscall == syscall::SPLICE_OUT {
            let _ = exit(&ctx, call.syscall);
        }
    }
    0
}
