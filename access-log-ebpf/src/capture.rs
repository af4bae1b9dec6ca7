//! Copying a bounded head of a call's bytes from user memory into ring-buffer records.
//!
//! The verifier must see every copy offset and length bounded; the masks are applied in inline
//! asm right before each helper call, because LLVM may drop a Rust `min()` when it spills.
use access_log_common::{
    call, counter, flags, frames, kind, role, RecordHeader, SocketKey, HTTP2_PREFACE,
    MAX_CALL_CAPTURE, MAX_CAPTURE, MAX_CONTINUATIONS,
};
use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_loop, bpf_probe_read_user},
};

use crate::maps::{
    capture_bytes, claim_scratch, count, header, lose_record, release_scratch, Caller, DataRecord,
    BPF_EXIST, COPY_MASK, EVENTS, HTTP2_FRAMES, MAX_RUNS, RUNS, SCRATCH, SOCKETS,
};

/// Most iovecs looked at in one readv/writev/sendmsg/recvmsg: Varnish writes each header line
/// of a request as an iovec of its own.
const MAX_IOVECS: usize = 32;

#[inline(always)]
fn bounded(value: u64) -> u64 {
    let mut value = value;
    // SAFETY: pure register arithmetic.
    unsafe { core::arch::asm!("{v} &= {m}", v = inout(reg) value, m = const COPY_MASK) };
    value
}

/// Where the bytes of a call are in user memory.
#[derive(Clone, Copy)]
pub enum Source {
    /// One buffer (read, write, recvfrom, sendto).
    Buffer { pointer: u64 },
    /// An iovec array (readv, writev, and the msghdr of recvmsg/sendmsg).
    Vector { iov: u64, count: u64 },
    /// Bytes moved without passing through the process (sendfile, splice): counted only.
    CountOnly,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// Emits the records of a call on followed socket `fd` (of role `socket_role`) that moved
/// `moved` bytes (or failed with it): one record with the head of the bytes (the request or
/// the response window; [`MAX_CAPTURE`] on an HTTP/2 connection); from one buffer, when the
/// call goes on (a read carrying HTTP/1 requests that holds head text, any call on an HTTP/2
/// connection), continuation records with the bytes after it, up to [`MAX_CALL_CAPTURE`] in
/// all, so that pipelined requests or multiplexed frames moved at once are all seen. Requests
/// that start with the HTTP/2 preface mark their socket HTTP/2; from one buffer, the calls of
/// an HTTP/2 socket whose frames are known are walked frame by frame instead ([`walk`]).
#[inline(always)]
pub fn emit(caller: Caller, fd: i32, data_call: u32, moved: i64, socket_role: u32, source: Source) {
    let Some(slot) = claim_scratch() else {
        return;
    };
    emit_in(slot, caller, fd, data_call, moved, socket_role, source);
    release_scratch(slot);
}

/// [`emit`] with this CPU's scratch slot `slot`.
#[inline(always)]
fn emit_in(
    slot: u32,
    caller: Caller,
    fd: i32,
    data_call: u32,
    moved: i64,
    socket_role: u32,
    source: Source,
) {
    let Some(record) = SCRATCH.get_ptr_mut(slot) else {
        return;
    };
    let key = SocketKey {
        tgid: caller.tgid,
        fd,
    };
    let index = if call::is_ingress(data_call) {
        frames::READS
    } else {
        frames::WRITES
    };
    if socket_role & role::HTTP2 != 0 && moved > 0 {
        match source {
            Source::Buffer { pointer } => {
                if let Some(cursor) = frames_cursor(key, index) {
                    let mut head: RecordHeader = header(caller, kind::DATA, fd);
                    head.call = data_call;
                    head.result = moved;
                    let after = walk(slot, head, pointer, moved as u64, cursor, 0);
                    set_frames_cursor(key, index, after);
                    return;
                }
            }
            // Iovecs are not walked: the frames of this direction are not known any more.
            _ => set_frames_cursor(key, index, frames::UNKNOWN),
        }
    }
    let http2 = socket_role & role::HTTP2 != 0;
    let inbound = role::base(socket_role) == role::INBOUND;
    let requests_read = call::is_ingress(data_call) && inbound;
    // Requests flow into inbound sockets and out of outbound ones.
    let carries_requests = call::is_ingress(data_call) == inbound;
    let window = if http2 {
        MAX_CAPTURE as u32
    } else {
        capture_bytes(carries_requests)
    };
    // SAFETY: the per-CPU scratch slot claimed for this program (claim_scratch).
    let record = unsafe { &mut *record };
    let mut wanted = 0u64;
    if moved > 0 {
        wanted = moved as u64;
        if wanted > window as u64 {
            wanted = window as u64;
        }
        if wanted > MAX_CAPTURE as u64 {
            wanted = MAX_CAPTURE as u64;
        }
    }
    let captured = match source {
        Source::Buffer { pointer } => copy(record, 0, pointer, wanted),
        Source::Vector { iov, count } => copy_vector(record, iov, count, wanted),
        Source::CountOnly => 0,
    };
    let mut head: RecordHeader = header(caller, kind::DATA, fd);
    head.call = data_call;
    head.result = moved;
    head.captured_len = captured as u32;
    // A client's preface read by the gateway, or the gateway's own to an HTTP/2 backend: the
    // socket is HTTP/2 from here, both directions at a frame's start after the preface (a
    // call from iovecs is not walked: its direction's frames are not known).
    if carries_requests && !http2 && starts_with_preface(record, captured) {
        mark_http2(key, socket_role);
        let after = match source {
            Source::Buffer { pointer } => walk(
                slot,
                head,
                pointer,
                moved as u64,
                0,
                HTTP2_PREFACE.len() as u64,
            ),
            _ => {
                let _ = send(record, head, captured);
                frames::UNKNOWN
            }
        };
        let mut cursors = [0u32; 2];
        if index == frames::READS {
            cursors[frames::READS] = after;
        } else {
            cursors[frames::WRITES] = after;
        }
        let _ = HTTP2_FRAMES.insert(key, cursors, 0);
        return;
    }
    let Source::Buffer { pointer } = source else {
        let _ = send(record, head, captured);
        return;
    };
    let http2_now = http2;
    // Continuation: on HTTP/2 every call (frames of many streams share it); on HTTP/1 only a
    // read carrying requests that holds head text (pipelined requests, read in pieces that
    // start anywhere in a head; a long URL), only when the whole first window came. A read
    // inside an HTTP/1 body (an upload) is not copied further.
    let continues = http2_now || (requests_read && head_text(record));
    let last = if continues && moved > 0 && moved as u64 > captured && captured == wanted {
        let moved = moved as u64;
        if moved < MAX_CALL_CAPTURE as u64 {
            moved
        } else {
            MAX_CALL_CAPTURE as u64
        }
    } else {
        0
    };
    let mut offset = captured;
    if offset < last {
        head.flags = flags::MORE;
    }
    // After a record the ring could not take, the rest of the call is not worth sending: the
    // next record user space sees carries the loss.
    if !send(record, head, captured) {
        return;
    }
    for _ in 0..MAX_CONTINUATIONS {
        if offset >= last {
            break;
        }
        let mut length = last - offset;
        if length > MAX_CAPTURE as u64 {
            length = MAX_CAPTURE as u64;
        }
        let copied = copy(record, 0, pointer + offset, length);
        if copied != length {
            // The rest is counted as moved beyond capture.
            head.flags = 0;
            head.offset = offset as u32;
            head.captured_len = 0;
            let _ = send(record, head, 0);
            return;
        }
        head.offset = offset as u32;
        head.captured_len = copied as u32;
        offset += copied;
        head.flags = if offset < last { flags::MORE } else { 0 };
        if !send(record, head, copied) {
            return;
        }
    }
}

/// Whether the captured bytes start with the HTTP/2 client preface.
#[inline(always)]
fn starts_with_preface(record: &DataRecord, captured: u64) -> bool {
    captured >= HTTP2_PREFACE.len() as u64
        && record.data[0] == HTTP2_PREFACE[0]
        && record.data[..HTTP2_PREFACE.len()] == HTTP2_PREFACE[..]
}

/// Marks a followed socket HTTP/2: its calls are walked frame by frame from now on.
#[inline(always)]
fn mark_http2(key: SocketKey, socket_role: u32) {
    // A full table cannot refuse an update of an existing entry; a socket closed meanwhile
    // has no entry to update (BPF_EXIST).
    let _ = SOCKETS.insert(key, socket_role | role::HTTP2, BPF_EXIST);
}

/// Where the frames of direction `index` of HTTP/2 socket `key` stand, when known.
#[inline(always)]
fn frames_cursor(key: SocketKey, index: usize) -> Option<u32> {
    // SAFETY: the value is copied.
    let cursors = unsafe { HTTP2_FRAMES.get(key) }.copied()?;
    let cursor = if index == frames::READS {
        cursors[frames::READS]
    } else {
        cursors[frames::WRITES]
    };
    (cursor != frames::UNKNOWN).then_some(cursor)
}

#[inline(always)]
fn set_frames_cursor(key: SocketKey, index: usize, cursor: u32) {
    let Some(cursors) = HTTP2_FRAMES.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: the entry lives while the map does; a racing update of the other direction
    // touches the other word.
    unsafe {
        if index == frames::READS {
            (*cursors)[frames::READS] = cursor;
        } else {
            (*cursors)[frames::WRITES] = cursor;
        }
    }
}

/// HTTP/2 frame header length and DATA's type.
const FRAME_HEADER: u64 = 9;
const DATA_FRAME: u8 = 0;

/// A walk of one HTTP/2 call, shared by the loop callbacks ([`bpf_loop`] verifies each
/// callback once, where an unrolled walk would be verified frame by frame).
#[repr(C)]
struct Walk {
    head: RecordHeader,
    /// The scratch slot ([`SCRATCH`], [`RUNS`]) of the program walking.
    slot: u64,
    pointer: u64,
    moved: u64,
    /// Where the next frame header stands.
    next: u64,
    /// Where the run of kept bytes under way starts.
    run: u64,
    /// Runs found (in [`RUNS`]).
    count: u64,
    /// Non-zero: where the frames stand is lost (a header cut by the call's end, an
    /// unreadable buffer).
    lost: u64,
    /// Non-zero: the last frame walked is kept (not DATA).
    last_kept: u64,
}

/// Emits the records of a call of `moved` bytes at `pointer` on an HTTP/2 socket whose frames
/// are known (`cursor`), after `start` bytes that are no frame (the preface, kept): each
/// record one run of kept bytes (frame headers, header blocks, control frames) at its
/// `offset`, the DATA payloads between the runs skipped, the first record marked
/// [`flags::FIRST`]. Returns where the frames stand after the call ([`frames::UNKNOWN`] when a
/// frame header is cut by the call's end, or more than [`frames::MAX_WALKED`] frames came).
#[inline(always)]
fn walk(slot: u32, head: RecordHeader, pointer: u64, moved: u64, cursor: u32, start: u64) -> u32 {
    let left = (cursor & !frames::KEPT) as u64;
    let kept = cursor & frames::KEPT != 0;
    let mut walk = Walk {
        head,
        slot: slot as u64,
        pointer,
        moved,
        next: start + left,
        run: if kept { 0 } else { left },
        count: 0,
        lost: 0,
        last_kept: kept as u64,
    };
    let context = &mut walk as *mut Walk as *mut c_void;
    // SAFETY: the callbacks are BPF subprograms taking (index, context); the context is
    // this stack frame's `walk`, alive across the call.
    unsafe { bpf_loop(frames::MAX_WALKED, walk_frame as *mut c_void, context, 0) };
    if walk.next < walk.moved {
        // More frames than walked: the rest of the call goes as one run.
        walk.lost = 1;
    }
    // The run under way up to the call's end (or, for a call that was all DATA payload, an
    // empty record at its end, so that the call is seen).
    if walk.run < moved || walk.count == 0 {
        let from = if walk.run < moved { walk.run } else { moved };
        add_run(&mut walk, from, moved);
    }
    // SAFETY: as above.
    unsafe { bpf_loop(MAX_RUNS as u32, send_walked_run as *mut c_void, context, 0) };
    if walk.lost != 0 {
        frames::UNKNOWN
    } else if walk.last_kept != 0 {
        frames::KEPT | (walk.next - moved) as u32
    } else {
        (walk.next - moved) as u32
    }
}

/// Notes the run `[from, to)` of a walk.
#[inline(always)]
fn add_run(walk: &mut Walk, from: u64, to: u64) {
    let Some(runs) = RUNS.get_ptr_mut(walk.slot as u32) else {
        walk.lost = 1;
        return;
    };
    // SAFETY: the per-CPU scratch slot claimed for this program (claim_scratch).
    let runs = unsafe { &mut *runs };
    let index = walk.count as usize;
    if let (Some(start), Some(end)) = (runs.starts.get_mut(index), runs.ends.get_mut(index)) {
        *start = from as u32;
        *end = to as u32;
        walk.count += 1;
    } else {
        walk.lost = 1;
    }
}

/// One step of a walk: the frame header at `next`. Returns 1 to stop.
#[inline(never)]
extern "C" fn walk_frame(_index: u32, context: *mut c_void) -> i64 {
    // SAFETY: `walk` passes its own Walk.
    let walk = unsafe { &mut *(context as *mut Walk) };
    if walk.next >= walk.moved {
        return 1;
    }
    if walk.next + FRAME_HEADER > walk.moved {
        walk.lost = 1;
        return 1;
    }
    // SAFETY: a read of user memory through the helper, which fails cleanly.
    let Ok(frame) = (unsafe {
        aya_ebpf::helpers::bpf_probe_read_user((walk.pointer + walk.next) as *const [u8; 9])
    }) else {
        walk.lost = 1;
        return 1;
    };
    let length = ((frame[0] as u64) << 16) | ((frame[1] as u64) << 8) | frame[2] as u64;
    let end = walk.next + FRAME_HEADER + length;
    let kept = frame[3] != DATA_FRAME;
    walk.last_kept = kept as u64;
    if !kept {
        // The run ends with this DATA frame's header; its payload is skipped.
        let (from, to) = (walk.run, walk.next + FRAME_HEADER);
        add_run(walk, from, to);
        walk.run = end;
    }
    walk.next = end;
    0
}

/// Sends run `index` of a walk. Returns 1 to stop.
#[inline(never)]
extern "C" fn send_walked_run(index: u32, context: *mut c_void) -> i64 {
    // SAFETY: `walk` passes its own Walk.
    let walk = unsafe { &mut *(context as *mut Walk) };
    let index = index as u64;
    if index >= walk.count {
        return 1;
    }
    let slot = walk.slot as u32;
    let (Some(runs), Some(record)) = (RUNS.get_ptr_mut(slot), SCRATCH.get_ptr_mut(slot)) else {
        return 1;
    };
    // SAFETY: per-CPU scratch slots, ours for the duration of this program.
    let (runs, record) = unsafe { (&*runs, &mut *record) };
    let (Some(from), Some(to)) = (
        runs.starts.get(index as usize),
        runs.ends.get(index as usize),
    ) else {
        return 1;
    };
    send_run(
        record,
        walk.head,
        walk.pointer,
        *from as u64,
        *to as u64,
        index + 1 < walk.count,
        index == 0,
    );
    0
}

/// Sends the bytes `[from, to)` of a walked call (at most [`MAX_CAPTURE`] of them) in one
/// record: `more` when a record of the call follows, `first` for the call's first record.
#[inline(always)]
fn send_run(
    record: &mut DataRecord,
    mut head: RecordHeader,
    pointer: u64,
    from: u64,
    to: u64,
    more: bool,
    first: bool,
) {
    let mut length = to - from;
    if length > MAX_CAPTURE as u64 {
        length = MAX_CAPTURE as u64;
    }
    let copied = copy(record, 0, pointer + from, length);
    head.offset = from as u32;
    head.captured_len = copied as u32;
    head.flags = if more { flags::MORE } else { 0 } | if first { flags::FIRST } else { 0 };
    let _ = send(record, head, copied);
}

/// How far into a read a line end is looked for.
const HEAD_LINE: usize = 64;

/// Whether the captured bytes read as HTTP head text: a line end (CR LF) within the first
/// [`HEAD_LINE`] bytes, only printable ASCII before it. A binary or form-encoded body has none.
#[inline(always)]
fn head_text(record: &DataRecord) -> bool {
    for index in 0..HEAD_LINE {
        let byte = record.data[index];
        if byte == b'\r' {
            return record.data[index + 1] == b'\n';
        }
        if !(0x20..0x7f).contains(&byte) {
            return false;
        }
    }
    false
}

/// Sends the header and the first `captured` bytes of the scratch record; false when the ring
/// buffer was full (the loss is counted).
#[inline(always)]
fn send(record: &mut DataRecord, head: RecordHeader, captured: u64) -> bool {
    record.header = head;
    let size = bounded(captured) + core::mem::size_of::<RecordHeader>() as u64;
    // SAFETY: `size` is at most the header plus COPY_MASK bytes, inside the scratch record.
    let bytes =
        unsafe { core::slice::from_raw_parts(record as *const _ as *const u8, size as usize) };
    if EVENTS
        .output::<[u8]>(bytes, crate::maps::NO_WAKEUP)
        .is_err()
    {
        lose_record();
        return false;
    }
    true
}

/// Copies `length` bytes from `source` to the record at `offset`; returns the new end offset.
#[inline(always)]
fn copy(record: &mut DataRecord, offset: u64, source: u64, length: u64) -> u64 {
    if length == 0 {
        return offset;
    }
    let offset_bounded = bounded(offset);
    let length_bounded = bounded(length);
    // SAFETY: offset and length are each at most COPY_MASK; the buffer holds twice that.
    let ret = unsafe {
        bpf_probe_read_user(
            record.data.as_mut_ptr().add(offset_bounded as usize) as *mut c_void,
            length_bounded as u32,
            source as *const c_void,
        )
    };
    if ret != 0 {
        count(counter::READ_FAILED);
        return offset;
    }
    offset + length
}

/// Copies the first `wanted` bytes of an iovec array; stops at the first vector it cannot
/// read, so the bytes it returns are contiguous from the start of the call.
#[inline(always)]
fn copy_vector(record: &mut DataRecord, iov: u64, count: u64, wanted: u64) -> u64 {
    let mut offset = 0u64;
    for index in 0..MAX_IOVECS {
        if index as u64 >= count || offset >= wanted {
            break;
        }
        let address = iov + (index * core::mem::size_of::<IoVec>()) as u64;
        // SAFETY: a read of user memory through the helper, which fails cleanly on a bad pointer.
        let Ok(vector) =
            (unsafe { aya_ebpf::helpers::bpf_probe_read_user(address as *const IoVec) })
        else {
            break;
        };
        let mut length = vector.len;
        if length > wanted - offset {
            length = wanted - offset;
        }
        let end = copy(record, offset, vector.base, length);
        if end != offset + length {
            break;
        }
        // Masked so that the verifier sees one range, not one exact value per path: the
        // states of every iteration then prune to one.
        offset = bounded(end);
    }
    offset
}
