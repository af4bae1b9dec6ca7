//! From an fd of the current task to its socket's TCP state and peer address, by walking
//! task → files → fdtable → file → socket → sock with the offsets user space read from BTF.
//! Every read goes through bpf_probe_read_kernel and fails cleanly; a zero offset table (a
//! kernel without the members) skips the walk.
use access_log_common::{KernelOffsets, SocketAddress};
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

/// The offsets, set by user space at load time.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    task_files: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_private_data: 0,
    socket_sk: 0,
    skc_state: 0,
    skc_family: 0,
    skc_daddr: 0,
    skc_dport: 0,
    skc_v6_daddr: 0,
    _pad: 0,
};

/// Whether the walk from an fd to its socket is possible on this kernel.
#[inline(always)]
pub fn walks() -> bool {
    offsets().task_files != 0
}

#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: a read of a load-time constant.
    unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS) }
}

#[inline(always)]
fn read<T>(address: u64) -> Option<T> {
    // SAFETY: the helper checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel(address as *const T) }.ok()
}

/// The `struct sock` behind `fd` of the current task.
#[inline(always)]
fn sock_of(offsets: &KernelOffsets, fd: i32) -> Option<u64> {
    if offsets.task_files == 0 || fd < 0 {
        return None;
    }
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task + offsets.task_files as u64)?;
    let fdt: u64 = read(files + offsets.files_fdt as u64)?;
    let max_fds: u32 = read(fdt + offsets.fdtable_max_fds as u64)?;
    if fd as u32 >= max_fds {
        return None;
    }
    let table: u64 = read(fdt + offsets.fdtable_fd as u64)?;
    let file: u64 = read(table + 8 * fd as u64)?;
    let socket: u64 = read(file + offsets.file_private_data as u64)?;
    let sock: u64 = read(socket + offsets.socket_sk as u64)?;
    (sock != 0).then_some(sock)
}

/// The TCP state of the socket behind `fd`, 0 when it cannot be read.
#[inline(always)]
pub fn state(fd: i32) -> u8 {
    let offsets = offsets();
    sock_of(&offsets, fd)
        .and_then(|sock| read::<u8>(sock + offsets.skc_state as u64))
        .unwrap_or(0)
}

/// The peer address of the TCP socket behind `fd` (an accept that passed no address buffer).
#[inline(always)]
pub fn peer(fd: i32) -> SocketAddress {
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;
    let mut address = SocketAddress::default();
    let offsets = offsets();
    let Some(sock) = sock_of(&offsets, fd) else {
        return address;
    };
    let Some(family) = read::<u16>(sock + offsets.skc_family as u64) else {
        return address;
    };
    let Some(port) = read::<u16>(sock + offsets.skc_dport as u64) else {
        return address;
    };
    match family {
        AF_INET => {
            if let Some(ip) = read::<[u8; 4]>(sock + offsets.skc_daddr as u64) {
                address.family = AF_INET;
                address.addr[..4].copy_from_slice(&ip);
            }
        }
        AF_INET6 => {
            if let Some(ip) = read::<[u8; 16]>(sock + offsets.skc_v6_daddr as u64) {
                address.family = AF_INET6;
                address.addr = ip;
            }
        }
        _ => return address,
    }
    address.port = u16::from_be(port);
    address
}
