//! access-log's kernel side: syscall and sched tracepoints that follow the sockets of watched
//! processes and copy bounded heads of their traffic into one ring buffer.
//!
//! One file per probe family; shared maps and the capture path live in `maps` and `capture`.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod capture;
mod connection;
mod data;
mod go;
mod maps;
mod process;
mod socket;
mod ssl;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
