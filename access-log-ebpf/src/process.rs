//! Process lifecycle: children of watched processes are watched from the fork on (nginx workers,
//! new workers after a reload); exits are reported and their entries dropped. And the
//! wake-ups between a watched process's threads: which thread handed work to which.
use access_log_common::{counter, kind};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    maps::{
        count, fork_child_pid_offset, header, submit, waking_pid_offset, watched_caller, CALLS,
        WATCHED,
    },
    ssl::SSL_CALLS,
};

#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    let _ = try_process_fork(&ctx);
    0
}

fn try_process_fork(ctx: &TracePointContext) -> Result<(), i64> {
    // The parent is the current task; the child inherits its bits.
    let Some(parent) = watched_caller() else {
        return Ok(());
    };
    let offset = (fork_child_pid_offset() & 0xff) as usize;
    // SAFETY: a read inside the tracepoint record; the helper fails cleanly.
    let child: u32 = unsafe { ctx.read_at(offset) }.map_err(|e| e as i64)?;
    // A new thread of a watched process is inserted too: harmless (its tgid is already
    // watched) and removed again at its exit.
    if WATCHED.insert(child, parent.flags, 0).is_err() {
        count(counter::WATCH_TABLE_FULL);
    }
    Ok(())
}

#[tracepoint]
pub fn process_exit(_ctx: TracePointContext) -> u32 {
    let Some(caller) = watched_caller() else {
        return 0;
    };
    if caller.tid == caller.tgid {
        submit(header(caller, kind::EXIT, -1));
    }
    // A call the thread was inside ends with it: its entries would otherwise stay until the
    // thread id is reused. Its sockets are the process's, and user space forgets those when
    // the process has gone (it sees the exit record).
    let _ = CALLS.remove(caller.pid_tgid);
    let _ = SSL_CALLS.remove(caller.pid_tgid);
    let _ = WATCHED.remove(caller.tid);
    0
}

/// sched_waking runs in the waker's context: a watched thread wakes another. User space keeps
/// the wake-ups between threads of one process (a client thread waking the thread that will
/// call the backend).
#[tracepoint]
pub fn thread_waking(ctx: TracePointContext) -> u32 {
    let _ = try_thread_waking(&ctx);
    0
}

fn try_thread_waking(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = watched_caller() else {
        return Ok(());
    };
    let offset = (waking_pid_offset() & 0xff) as usize;
    // SAFETY: a read inside the tracepoint record; the helper fails cleanly.
    let woken: u32 = unsafe { ctx.read_at(offset) }.map_err(|e| e as i64)?;
    // Only a thread of a watched process is handed work: a write that wakes the backend's or
    // the client's reader is no fact about the gateway.
    // SAFETY: the value is only tested for presence.
    if woken == caller.tid || woken == 0 || unsafe { WATCHED.get(woken) }.is_none() {
        return Ok(());
    }
    let mut head = header(caller, kind::WAKE, -1);
    head.result = woken as i64;
    submit(head);
    Ok(())
}
