//! Socket lifecycle: socket() marks TCP and unix stream sockets, accept() follows inbound
//! connections, connect() follows outbound ones (to a TCP or a unix-socket backend), close()
//! stops following. Only these calls add or remove followed sockets; data calls look them up.
use access_log_common::{
    counter, flags, kind, role, ConnectionRecord, SocketAddress, SocketKey, UnixConnectRecord,
    UNIX_PATH_MAX,
};
use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};

use crate::maps::{count, header, submit, watched_caller, Caller, PendingCall, CALLS, SOCKETS};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u64 = 1;
/// Marks a saved socket() call in [`PendingCall::syscall`].
const CALL_SOCKET: u32 = 100;
const CALL_ACCEPT: u32 = 101;
const CALL_CONNECT: u32 = 102;

/// Offset of the first syscall argument in a `sys_enter_*` record, and of `ret` in `sys_exit_*`.
pub const ARG0: usize = 16;
pub const RET: usize = 16;

#[inline(always)]
pub fn arg(ctx: &TracePointContext, index: usize) -> Result<u64, i64> {
    // SAFETY: reads inside the tracepoint record; the helper fails cleanly.
    unsafe { ctx.read_at::<u64>(ARG0 + 8 * index) }.map_err(|e| e as i64)
}

#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> Result<i64, i64> {
    // SAFETY: as above.
    unsafe { ctx.read_at::<i64>(RET) }.map_err(|e| e as i64)
}

#[inline(always)]
fn save(caller: Caller, call: PendingCall) {
    if CALLS.insert(caller.pid_tgid, call, 0).is_err() {
        count(counter::CALL_TABLE_FULL);
    }
}

/// Takes the saved arguments of this thread's call, if they are of `syscall`.
#[inline(always)]
pub fn take(caller: Caller, syscall: u32) -> Option<PendingCall> {
    // SAFETY: the entry is copied out before it is removed.
    let call = unsafe { CALLS.get(caller.pid_tgid) }.copied()?;
    let _ = CALLS.remove(caller.pid_tgid);
    (call.syscall == syscall).then_some(call)
}

#[inline(always)]
pub fn role_of(caller: Caller, fd: i32) -> Option<u32> {
    // SAFETY: the value is copied.
    unsafe {
        SOCKETS.get(SocketKey {
            tgid: caller.tgid,
            fd,
        })
    }
    .copied()
}

fn follow(caller: Caller, fd: i32, socket_role: u32) {
    let key = SocketKey {
        tgid: caller.tgid,
        fd,
    };
    if SOCKETS.insert(key, socket_role, 0).is_err() {
        count(counter::SOCKET_TABLE_FULL);
    }
}

fn read_address(pointer: u64) -> SocketAddress {
    let mut address = SocketAddress::default();
    if pointer == 0 {
        return address;
    }
    // Exactly the address's size, by its family: a 16-byte sockaddr_in may end a page (Go's
    // do), and reading a sockaddr_in6's 28 bytes there fails.
    // SAFETY: the helper fails cleanly on a bad pointer.
    let Ok(family) = (unsafe { bpf_probe_read_user(pointer as *const u16) }) else {
        return address;
    };
    match family {
        AF_INET => {
            // family, port, addr[4]
            // SAFETY: as above.
            if let Ok(raw) = unsafe { bpf_probe_read_user(pointer as *const [u8; 8]) } {
                address.family = family;
                address.port = u16::from_be_bytes([raw[2], raw[3]]);
                address.addr[..4].copy_from_slice(&raw[4..8]);
            }
        }
        AF_INET6 => {
            // family, port, flowinfo, addr[16]
            // SAFETY: as above.
            if let Ok(raw) = unsafe { bpf_probe_read_user(pointer as *const [u8; 24]) } {
                address.family = family;
                address.port = u16::from_be_bytes([raw[2], raw[3]]);
                address.addr.copy_from_slice(&raw[8..24]);
            }
        }
        _ => {}
    }
    address
}

#[tracepoint]
pub fn socket_enter(ctx: TracePointContext) -> u32 {
    let _ = try_socket_enter(&ctx);
    0
}

fn try_socket_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    let domain = arg(ctx, 0)? as u16;
    let socket_type = arg(ctx, 1)?;
    if matches!(domain, AF_INET | AF_INET6 | AF_UNIX) && socket_type & 0xf == SOCK_STREAM {
        save(
            caller,
            PendingCall {
                pointer: 0,
                length: 0,
                fd: -1,
                syscall: CALL_SOCKET,
                window: 0,
                _pad: 0,
            },
        );
    }
    Ok(())
}

#[tracepoint]
pub fn socket_exit(ctx: TracePointContext) -> u32 {
    let _ = try_socket_exit(&ctx);
    0
}

fn try_socket_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    if take(caller, CALL_SOCKET).is_none() {
        return Ok(());
    }
    let fd = ret(ctx)?;
    if fd >= 0 {
        follow(caller, fd as i32, role::CREATED);
    }
    Ok(())
}

/// accept and accept4 share their first arguments: fd, sockaddr pointer.
#[tracepoint]
pub fn accept_enter(ctx: TracePointContext) -> u32 {
    let _ = try_accept_enter(&ctx);
    0
}

fn try_accept_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    save(
        caller,
        PendingCall {
            pointer: arg(ctx, 1)?,
            length: 0,
            fd: arg(ctx, 0)? as i32,
            syscall: CALL_ACCEPT,
            window: 0,
            _pad: 0,
        },
    );
    Ok(())
}

#[tracepoint]
pub fn accept_exit(ctx: TracePointContext) -> u32 {
    let _ = try_accept_exit(&ctx);
    0
}

fn try_accept_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    // The saved arguments are missing when the thread was already blocked in accept() at
    // attach (Varnish's and Apache's acceptor threads): the socket itself names the peer.
    let pointer = take(caller, CALL_ACCEPT).map_or(0, |call| call.pointer);
    let fd = ret(ctx)?;
    if fd < 0 {
        return Ok(());
    }
    let mut remote = read_address(pointer);
    if remote.family == 0 {
        // No address buffer (libuv), or none seen: ask the socket.
        remote = crate::socket::peer(fd as i32);
    }
    // A unix-socket accept (a gateway's own channels) is not a client connection; an accept
    // whose peer is unknown (no buffer, no walk on this kernel) is followed all the same.
    if remote.family == 0 && (pointer != 0 || crate::socket::walks()) {
        return Ok(());
    }
    follow(caller, fd as i32, role::INBOUND);
    submit(ConnectionRecord {
        header: header(caller, kind::ACCEPT, fd as i32),
        remote,
    });
    Ok(())
}

#[tracepoint]
pub fn connect_enter(ctx: TracePointContext) -> u32 {
    let _ = try_connect_enter(&ctx);
    0
}

fn try_connect_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    let fd = arg(ctx, 0)? as i32;
    // A connect on a socket already followed as outbound is a repeat (HAProxy confirms a
    // non-blocking connect this way): the same connection, not a new one.
    let repeated = match role_of(caller, fd).map(role::base) {
        Some(role::CREATED) => 0,
        Some(role::OUTBOUND) => 1,
        _ => return Ok(()),
    };
    save(
        caller,
        PendingCall {
            pointer: arg(ctx, 1)?,
            length: repeated,
            fd,
            syscall: CALL_CONNECT,
            window: 0,
            _pad: 0,
        },
    );
    Ok(())
}

/// Whether a connect result says nothing new about a connection already under way: done
/// (0, EISCONN), or still going (EALREADY, EINPROGRESS).
#[inline(always)]
fn connect_goes_on(result: i64) -> bool {
    const EISCONN: i64 = -106;
    const EALREADY: i64 = -114;
    const EINPROGRESS: i64 = -115;
    matches!(result, 0 | EISCONN | EALREADY | EINPROGRESS)
}

#[tracepoint]
pub fn connect_exit(ctx: TracePointContext) -> u32 {
    let _ = try_connect_exit(&ctx);
    0
}

fn try_connect_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    let Some(call) = take(caller, CALL_CONNECT) else {
        return Ok(());
    };
    let result = ret(ctx)?;
    let repeated = call.length != 0;
    if repeated && connect_goes_on(result) {
        return Ok(());
    }
    if !repeated {
        follow(caller, call.fd, role::OUTBOUND);
    }
    let family = if call.pointer == 0 {
        0
    } else {
        // SAFETY: the helper fails cleanly on a bad pointer.
        unsafe { bpf_probe_read_user(call.pointer as *const u16) }.unwrap_or(0)
    };
    let mut head = header(caller, kind::CONNECT, call.fd);
    head.result = result;
    if repeated {
        head.flags = flags::REPEATED;
    }
    if family == AF_UNIX {
        head.kind = kind::CONNECT_UNIX;
        submit_unix(head, call.pointer);
        return Ok(());
    }
    let mut remote = read_address(call.pointer);
    if remote.family == 0 {
        // The address could not be read: the socket knows where it connects.
        remote = crate::socket::peer(call.fd);
    }
    submit(ConnectionRecord {
        header: head,
        remote,
    });
    Ok(())
}

/// Sends a unix connect record with the path written straight into the ring buffer (the
/// record is larger than is wise on the stack).
#[inline(always)]
fn submit_unix(head: access_log_common::RecordHeader, pointer: u64) {
    let Some(mut entry) = crate::maps::EVENTS.reserve::<UnixConnectRecord>(0) else {
        crate::maps::lose_record();
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: the entry is reserved for this record; every field is written before submit.
    unsafe {
        (*record).header = head;
        (*record)._pad = 0;
        let path = (*record).path.as_mut_ptr();
        // sockaddr_un: family (2 bytes), then sun_path.
        if aya_ebpf::helpers::generated::bpf_probe_read_user(
            path as *mut aya_ebpf::cty::c_void,
            UNIX_PATH_MAX as u32,
            (pointer + 2) as *const aya_ebpf::cty::c_void,
        ) != 0
        {
            core::ptr::write_bytes(path, 0, UNIX_PATH_MAX);
        }
    }
    entry.submit(crate::maps::NO_WAKEUP);
}

#[tracepoint]
pub fn close_enter(ctx: TracePointContext) -> u32 {
    let _ = try_close_enter(&ctx);
    0
}

fn try_close_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    let fd = arg(ctx, 0)? as i32;
    let Some(socket_role) = role_of(caller, fd) else {
        return Ok(());
    };
    let key = SocketKey {
        tgid: caller.tgid,
        fd,
    };
    let _ = SOCKETS.remove(key);
    if socket_role & role::HTTP2 != 0 {
        let _ = crate::maps::HTTP2_FRAMES.remove(key);
    }
    if role::base(socket_role) != role::CREATED {
        // The state tells whether the peer ended the connection first (a client that left,
        // a backend that hung up) when no read of ours saw it.
        let mut head = header(caller, kind::CLOSE, fd);
        head.result = crate::socket::state(fd) as i64;
        submit(head);
    }
    Ok(())
}

#[tracepoint]
pub fn shutdown_enter(ctx: TracePointContext) -> u32 {
    let _ = try_shutdown_enter(&ctx);
    0
}

fn try_shutdown_enter(ctx: &TracePointContext) -> Result<(), i64> {
    const SHUT_WR: u64 = 1;
    const SHUT_RDWR: u64 = 2;
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    let fd = arg(ctx, 0)? as i32;
    let how = arg(ctx, 1)?;
    if how != SHUT_WR && how != SHUT_RDWR {
        return Ok(());
    }
    if role_of(caller, fd).map(role::base) == Some(role::INBOUND) {
        let mut head = header(caller, kind::SHUTDOWN, fd);
        head.result = how as i64;
        submit(head);
    }
    Ok(())
}
