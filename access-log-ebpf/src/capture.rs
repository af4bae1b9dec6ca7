//! Copying a bounded head of a call's bytes from user memory into a ring-buffer record.
//!
//! The verifier must see every copy offset and length bounded; the masks are applied in inline
//! asm right before each helper call, because LLVM may drop a Rust `min()` when it spills.
use access_log_common::{counter, kind, RecordHeader, MAX_CAPTURE};
use aya_ebpf::{cty::c_void, helpers::generated::bpf_probe_read_user};

use crate::maps::{count, header, Caller, COPY_MASK, EVENTS, NO_WAKEUP, SCRATCH};

/// Most iovecs looked at in one readv/writev/sendmsg/recvmsg; heads sit in the first few.
const MAX_IOVECS: usize = 8;

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
    Counted,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// Emits one data record for a call on `fd` that moved `moved` bytes (or failed with it).
#[inline(always)]
pub fn emit(caller: Caller, fd: i32, syscall: u32, moved: i64, window: u32, source: Source) {
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return;
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
        Source::Counted => 0,
    };
    let mut head: RecordHeader = header(caller, kind::DATA, fd);
    head.syscall = syscall;
    head.result = moved;
    head.captured_len = captured as u32;
    record.header = head;
    let size = bounded(captured) + core::mem::size_of::<RecordHeader>() as u64;
    // SAFETY: `size` is at most the header plus COPY_MASK bytes, inside the scratch record.
    let bytes =
        unsafe { core::slice::from_raw_parts(record as *const _ as *const u8, size as usize) };
    if EVENTS.output::<[u8]>(bytes, NO_WAKEUP).is_err() {
        count(counter::RING_FULL);
    }
}

/// Copies `length` bytes from `source` to the record at `offset`; returns the new end offset.
#[inline(always)]
fn copy(record: &mut crate::maps::DataRecord, offset: u64, source: u64, length: u64) -> u64 {
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

#[inline(always)]
fn copy_vector(record: &mut crate::maps::DataRecord, iov: u64, count: u64, wanted: u64) -> u64 {
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
        offset = copy(record, offset, vector.base, length);
    }
    offset
}
