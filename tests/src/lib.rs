//! The harness of access-log's end-to-end tests, demo and accuracy run: real gateways (nginx,
//! Apache httpd from Debian's packages) started with their own config on loopback, real
//! backends, real clients, and the real observer attached to the gateway by PID.
pub mod accuracy;
pub mod backend;
pub mod certificate;
pub mod demo;
pub mod gateway;
pub mod load;
pub mod observer;
pub mod paced;
pub mod vectors;
pub mod wire;

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a loopback port")
}

/// Waits until something accepts connections on the loopback port.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "nothing listens on 127.0.0.1:{port} after {timeout:?}"
    ))
}

/// The end-to-end tests load eBPF programs: without root they must fail, not skip.
pub fn require_root() {
    // SAFETY: no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the end-to-end tests attach eBPF probes and must run as root (cargo xtask test does)"
    );
}

/// Runs curl with `args` and returns the HTTP status of each transfer it made (one per URL:
/// several URLs in one curl reuse the connection, keep-alive).
pub fn curl(args: &[&str]) -> Vec<u16> {
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}\\n"])
        .args(args)
        .output()
        .expect("running curl (is it installed? cargo xtask setup installs it)");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
