//! Copying a bounded head of a call's bytes from user memory into ring-buffer records.
//!
//! The verifier must see every copy offset and length bounded; the masks are applied in inline
//! asm right before each helper call, because LLVM may drop a Rust `min()` when it spills.
use access_log_common::{
    call, counter, flags, kind, role, RecordHeader, SocketKey, HTTP2_PREFACE, MAX_CALL_CAPTURE,
    MAX_CAPTURE, MAX_CONTINUATIONS,
};
use aya_ebpf::{cty::c_void, helpers::generated::bpf_probe_read_user};

use crate::maps::{
    capture_bytes, count, header, lose_record, Caller, DataRecord, COPY_MASK, EVENTS, SCRATCH,
    SOCKETS,
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
/// that start with the HTTP/2 preface mark their socket HTTP/2.
#[inline(always)]
pub fn emit(caller: Caller, fd: i32, data_call: u32, moved: i64, socket_role: u32, source: Source) {
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
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
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
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
    let Source::Buffer { pointer } = source else {
        let _ = send(record, head, captured);
        return;
    };
    let mut http2_now = http2;
    // A client's preface read by the gateway, or the gateway's own to an HTTP/2 backend.
    if carries_requests && !http2 && starts_with_preface(record, captured) {
        mark_http2(caller.tgid, fd, socket_role);
        http2_now = true;
    }
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

/// Marks a followed socket HTTP/2: its calls are captured whole from now on.
#[inline(always)]
fn mark_http2(tgid: u32, fd: i32, socket_role: u32) {
    let key = SocketKey { tgid, fd };
    // A full table cannot refuse an update of an existing entry; a socket closed meanwhile
    // has no entry to update (BPF_EXIST).
    let _ = SOCKETS.insert(key, socket_role | role::HTTP2, BPF_EXIST);
}

/// bpf_map_update_elem's flag: update an existing entry only.
const BPF_EXIST: u64 = 2;

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
