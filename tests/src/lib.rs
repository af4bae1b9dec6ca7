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
pub mod steady;
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

/// A loopback port free right now, below the kernel's range of ephemeral ports: a port the
/// kernel handed out (`bind` to port 0) is handed out again to the next outgoing connection,
/// which then holds it when a gateway starts listening there ("address already in use").
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // Ports from 10000 up to the ephemeral range, starting at a place of this process's own
    // so that test binaries running side by side rarely try the same ones.
    let (low, high) = (10_000, ephemeral_low.max(10_001));
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..1000 {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = low + start.wrapping_add(step.wrapping_mul(97)) % (high - low);
        if let Ok(port) = u16::try_from(port) {
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
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

/// A directory of a test's own under the temporary directory, removed with it (whether the
/// test passed or not).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh `access-log-{name}-{pid}` directory.
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("access-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
