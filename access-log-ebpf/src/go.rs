//! Go programs' net/http transport, where thread facts do not hold (goroutines move between OS
//! threads, a pooled connection goes to the oldest waiting request): a handler's goroutine
//! hands its request to a connection (`(*persistConn).roundTrip`, the connection in RAX), and
//! that connection's `writeLoop` goroutine (the connection in RAX) writes it. Each probe
//! reports the goroutine (R14 in Go's register ABI) and the connection; user space joins them
//! with the goroutine of each data syscall. Entry probes only: Go moves stacks, so no return
//! probes.
use access_log_common::{go_call, kind, GoCallRecord};
use aya_ebpf::{macros::uprobe, programs::ProbeContext};

use crate::maps::{header, submit, watched_caller};

#[inline(always)]
fn go_call(ctx: &ProbeContext, function: u32) -> Result<(), i64> {
    let Some(mut caller) = watched_caller() else {
        return Ok(());
    };
    // SAFETY: the probe context's registers are the probed thread's, saved at the trap.
    let regs = unsafe { &*ctx.regs };
    caller.goroutine = regs.r14;
    let mut head = header(caller, kind::GO_CALL, -1);
    head.call = function;
    submit(GoCallRecord {
        header: head,
        connection: regs.rax,
    });
    Ok(())
}

#[uprobe]
pub fn go_round_trip(ctx: ProbeContext) -> u32 {
    let _ = go_call(&ctx, go_call::ROUND_TRIP);
    0
}

#[uprobe]
pub fn go_write_loop(ctx: ProbeContext) -> u32 {
    let _ = go_call(&ctx, go_call::WRITE_LOOP);
    0
}
