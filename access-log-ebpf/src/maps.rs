//! Maps and load-time settings shared by every program, and the watched-process filter that each
//! program runs first.
use access_log_common::{counter, RecordHeader, SocketKey, MAX_CAPTURE};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};

/// Bytes of each request-carrying call to copy; set by user space at load time
/// (`--capture-bytes`): a request head with its URL.
#[unsafe(no_mangle)]
static CAPTURE_BYTES: u32 = access_log_common::DEFAULT_CAPTURE;

/// Bytes of each response-carrying call to copy (`--response-capture-bytes`): a status line and
/// the framing headers; what follows is body, never needed.
#[unsafe(no_mangle)]
static RESPONSE_CAPTURE_BYTES: u32 = access_log_common::DEFAULT_RESPONSE_CAPTURE;

/// Non-zero when TLS probes are attached: data syscalls then check whether they run inside an
/// SSL call. Set by user space at load time.
#[unsafe(no_mangle)]
static TLS_PROBES: u32 = 0;

pub fn tls_probes() -> bool {
    // SAFETY: a read of a load-time constant.
    unsafe { core::ptr::read_volatile(&TLS_PROBES) != 0 }
}

/// Offset of `child_pid` in the `sched_process_fork` record; read by user space from tracefs,
/// since the layout changed across kernels.
#[unsafe(no_mangle)]
static FORK_CHILD_PID_OFFSET: u32 = 20;

/// The capture window for a call: requests flow into inbound sockets and out of outbound ones.
pub fn capture_bytes(carries_requests: bool) -> u32 {
    // SAFETY: reads of load-time constants that the loader may have rewritten.
    unsafe {
        if carries_requests {
            core::ptr::read_volatile(&CAPTURE_BYTES)
        } else {
            core::ptr::read_volatile(&RESPONSE_CAPTURE_BYTES)
        }
    }
}

/// Offset of `pid` (the woken thread) in the `sched_waking` record, read from tracefs.
#[unsafe(no_mangle)]
static WAKING_PID_OFFSET: u32 = 24;

pub fn waking_pid_offset() -> u32 {
    // SAFETY: a read of a load-time constant.
    unsafe { core::ptr::read_volatile(&WAKING_PID_OFFSET) }
}

pub fn fork_child_pid_offset() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&FORK_CHILD_PID_OFFSET) }
}

/// Thread groups whose sockets are followed (the attached process and its descendants), and
/// their threads, with [`access_log_common::watched`] bits.
#[map]
pub static WATCHED: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

/// Followed sockets of watched processes, with their [`access_log_common::role`].
#[map]
pub static SOCKETS: HashMap<SocketKey, u32> = HashMap::with_max_entries(65536, 0);

/// Where the frames of each direction of an HTTP/2 socket stand ([`access_log_common::frames`]),
/// for sockets whose calls are walked frame by frame (entered when the preface is seen).
#[map]
pub static HTTP2_FRAMES: HashMap<SocketKey, [u32; 2]> = HashMap::with_max_entries(65536, 0);

/// Per-CPU scratch for the runs of kept bytes a walk of an HTTP/2 call finds, sent after the
/// walk (the verifier checks a loop that only reads frame headers cheaply, and one that sends);
/// one per [`SCRATCH`] slot.
#[map]
pub static RUNS: PerCpuArray<Runs> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// Runs of kept bytes of one call: `[starts[i], ends[i])`.
#[repr(C)]
pub struct Runs {
    pub starts: [u32; MAX_RUNS],
    pub ends: [u32; MAX_RUNS],
}

/// Runs one walked call sends at most (a DATA frame ends each but the last).
pub const MAX_RUNS: usize = access_log_common::frames::MAX_WALKED as usize + 1;

/// Arguments of a call between its enter and exit tracepoints, keyed by pid_tgid. A plain hash
/// (an LRU costs more on every call): an entry left by a thread that died inside a call is
/// replaced when its thread id is reused, and a full table is counted.
#[map]
pub static CALLS: HashMap<u64, PendingCall> = HashMap::with_max_entries(65536, 0);

/// Per-CPU scratch for building a data record too large for the 512-byte stack: a few slots,
/// taken in turn ([`claim_scratch`]), because on a preemptible kernel a uprobe program (and,
/// where syscall tracepoints may fault, a syscall program) can be preempted on its CPU by a
/// task whose program then runs on the same CPU: one slot would be overwritten under it.
#[map]
pub static SCRATCH: PerCpuArray<DataRecord> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// Scratch slots per CPU: programs nested by preemption on one CPU, at most.
pub const SCRATCH_SLOTS: u32 = 3;

/// Per CPU, the scratch slots in use: the next free one. Preemption on one CPU nests (a program
/// that preempts another ends before it resumes), so the slots are taken and given back like a
/// stack, without atomics: a preempting program between our read and write of the count takes
/// and gives back the slot we then take.
#[map]
static SCRATCH_IN_USE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Takes this CPU's next scratch slot; None (counted) when every slot is in use.
#[inline(always)]
pub fn claim_scratch() -> Option<u32> {
    let in_use = SCRATCH_IN_USE.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; see SCRATCH_IN_USE for why no atomics are needed.
    let slot = unsafe { *in_use };
    if slot >= SCRATCH_SLOTS {
        count(counter::CALL_TABLE_FULL);
        return None;
    }
    // SAFETY: as above.
    unsafe { *in_use = slot + 1 };
    Some(slot)
}

/// Gives back `slot`, the last claimed on this CPU.
#[inline(always)]
pub fn release_scratch(slot: u32) {
    if let Some(in_use) = SCRATCH_IN_USE.get_ptr_mut(0) {
        // SAFETY: as in claim_scratch.
        unsafe { *in_use = slot };
    }
}

/// Per-CPU counts of what the programs could not do (indexes in [`counter`]).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Records the ring buffer could not take, over the session and every CPU: each record carries
/// the count as it was when the record was made, so user space sees where a gap lies.
#[map]
pub static LOST: Array<u64> = Array::with_max_entries(1, 0);

/// Every record for user space. User space sets the size at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// bpf_map_update_elem's flag: update an existing entry only (one removed meanwhile stays
/// removed).
pub const BPF_EXIST: u64 = 2;

/// Ring-buffer submit flag: user space drains on a timer, so no record wakes it (a wakeup per
/// record costs about 20 times the batched path).
pub const NO_WAKEUP: u64 = 1;

/// A syscall's arguments saved at enter for its exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    /// Buffer, iovec array, msghdr or sockaddr pointer, depending on the call.
    pub pointer: u64,
    /// Length or iovec count, depending on the call.
    pub length: u64,
    pub fd: i32,
    pub syscall: u32,
    /// Bytes to copy at most (the request or the response window).
    pub window: u32,
    pub _pad: u32,
}

/// Mask that bounds every copy offset and length for the verifier; the scratch buffer holds
/// two masks' worth so `offset + length` always stays inside it.
pub const COPY_MASK: u64 = (2 * MAX_CAPTURE - 1) as u64;

#[repr(C)]
pub struct DataRecord {
    pub header: RecordHeader,
    pub data: [u8; 4 * MAX_CAPTURE],
}

/// The calling thread, when its process is watched.
#[derive(Clone, Copy)]
pub struct Caller {
    pub pid_tgid: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The process's [`access_log_common::watched`] bits.
    pub flags: u32,
    /// In a Go program, the goroutine making the call (set by the program that knows it).
    pub goroutine: u64,
}

/// The watched-process filter: every program calls this first and returns for anyone else.
#[inline(always)]
pub fn watched_caller() -> Option<Caller> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the value is copied.
    let flags = unsafe { WATCHED.get(tgid) }.copied()?;
    Some(Caller {
        pid_tgid,
        tgid,
        tid: pid_tgid as u32,
        flags,
        goroutine: 0,
    })
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// The session's count of records lost so far.
#[inline(always)]
fn lost_so_far() -> u64 {
    // SAFETY: a plain read of an array slot; a racing increment is seen by the next record.
    LOST.get(0)
        .map_or(0, |lost| unsafe { core::ptr::read_volatile(lost) })
}

/// Counts a record the ring buffer could not take: per CPU for the summary, and in the
/// session-wide count the next records carry.
#[inline(always)]
pub fn lose_record() {
    count(counter::RING_FULL);
    if let Some(lost) = LOST.get_ptr_mut(0) {
        // An atomic add across CPUs (BPF_ATOMIC | BPF_ADD); the BPF target has no Rust atomics.
        // SAFETY: the slot lives as long as the map and is 8-byte aligned.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({slot} + 0) += {one}",
                slot = in(reg) lost,
                one = in(reg) 1u64,
            )
        };
    }
}

#[inline(always)]
pub fn header(caller: Caller, kind: u32, fd: i32) -> RecordHeader {
    RecordHeader {
        // SAFETY: no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        kind,
        tgid: caller.tgid,
        tid: caller.tid,
        fd,
        call: 0,
        captured_len: 0,
        result: 0,
        offset: 0,
        flags: 0,
        lost_before: lost_so_far(),
        goroutine: caller.goroutine,
    }
}

/// Sends a fixed-size record, counting a full ring instead of losing it silently.
#[inline(always)]
pub fn submit<T: 'static>(record: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(NO_WAKEUP);
        }
        None => lose_record(),
    }
}
