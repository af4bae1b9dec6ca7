//! Installs what a fresh Debian machine lacks for building and testing access-log, and nothing
//! that is already there: Debian packages (gateways and clients the tests drive), the nightly
//! toolchain's rust-src (the eBPF crate builds core), bpf-linker, and cargo-fuzz.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// (command that proves the package is installed, Debian package).
const PACKAGES: &[(&str, &str)] = &[
    ("/usr/sbin/nginx", "nginx"),
    ("/usr/bin/curl", "curl"),
    ("/usr/sbin/apache2", "apache2"),
    ("/usr/bin/openssl", "openssl"),
    ("/usr/bin/node", "nodejs"),
    ("/usr/bin/caddy", "caddy"),
    ("/usr/bin/java", "openjdk-17-jre-headless"),
    ("/usr/bin/wrk", "wrk"),
    // The bench's profiles of the observer and of the gateway.
    ("/usr/bin/perf", "linux-perf"),
    ("/usr/sbin/haproxy", "haproxy"),
    ("/usr/sbin/varnishd", "varnish"),
    ("/usr/sbin/logrotate", "logrotate"),
    ("/usr/sbin/rsyslogd", "rsyslog"),
    ("/usr/sbin/bpftool", "bpftool"),
    ("/usr/bin/systemd-analyze", "systemd"),
    ("/usr/bin/python3", "python3"),
    // HTTP/2 clients: h2load, and Python's h2 and gRPC for the tests' own clients and server.
    ("/usr/bin/h2load", "nghttp2-client"),
    // The metrics' real scraper, and its format checker (promtool).
    ("/usr/bin/prometheus", "prometheus"),
    // Renders `report --html` pages in the tests.
    ("/usr/bin/chromium", "chromium"),
    // Drives `top` in the tests; renders the manual pages.
    ("/usr/bin/tmux", "tmux"),
    ("/usr/bin/man", "man-db"),
    (
        "/usr/lib/python3/dist-packages/h2/__init__.py",
        "python3-h2",
    ),
    (
        "/usr/lib/python3/dist-packages/grpc/__init__.py",
        "python3-grpcio",
    ),
];

/// The bpf-linker release that loads the calling rustc's LLVM (the nightly's, LLVM 22).
const BPF_LINKER: &str = "bpf-linker@0.10.3";

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Puts cargo's bin directory (where `cargo install` puts bpf-linker) on PATH, for this process
/// and the builds it starts, as `. ~/.cargo/env` would.
fn cargo_bin_on_path() {
    let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    else {
        return;
    };
    let bin = home.join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    if let Ok(joined) =
        std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(&path)))
    {
        eprintln!("xtask: adding {} to PATH", bin.display());
        // Edition 2021, and no other thread runs yet.
        std::env::set_var("PATH", joined);
    }
}

pub fn ensure() -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask must run as root: it installs packages and loads eBPF programs");
    }
    cargo_bin_on_path();
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(binary, _)| !Path::new(binary).exists())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        run("apt-get", &["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&missing);
        run("apt-get", &args)?;
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    );
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        if installed.is_empty() {
            run(
                "rustup",
                &[
                    "toolchain",
                    "install",
                    "nightly",
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ],
            )?;
        } else {
            run(
                "rustup",
                &["component", "add", "rust-src", "--toolchain", "nightly"],
            )?;
        }
    }
    if !on_path("bpf-linker") {
        run("cargo", &["install", BPF_LINKER, "--locked"])?;
    }
    if !on_path("cargo-fuzz") {
        run("cargo", &["install", "cargo-fuzz@0.13.2", "--locked"])?;
    }
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        run("mount", &["-t", "tracefs", "nodev", "/sys/kernel/tracing"])?;
    }
    Ok(())
}
