//! Bad input gets one clear line on stderr and a non-zero exit, never a panic.
use std::process::{Command, Output};

use tests::{observer::binary, require_root};

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("running access-log")
}

fn assert_one_line_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("access-log: error:"), "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn no_such_process() {
    let output = run(&["attach", "--pid", "999999999"]);
    assert_one_line_error(&output, "no process with PID 999999999");
}

#[test]
fn invalid_and_unreadable_catalogs() {
    let dir = std::env::temp_dir().join(format!("access-log-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[api]]\nname = 'x'\nversion = '1'\ncontext = 'no-slash'\n",
    )
    .unwrap();
    let me = std::process::id().to_string();
    let output = run(&["attach", "--pid", &me, "--apis", bad.to_str().unwrap()]);
    assert_one_line_error(&output, "must start with '/'");
    let missing = dir.join("missing.toml");
    let output = run(&["attach", "--pid", &me, "--apis", missing.to_str().unwrap()]);
    assert_one_line_error(&output, "cannot read API catalog");
    let keys = dir.join("keys.toml");
    std::fs::write(&keys, "[[key]]\nfingerprint = 'abc'\napplication = 'a'\n").unwrap();
    let output = run(&["attach", "--pid", &me, "--keys", keys.to_str().unwrap()]);
    assert_one_line_error(
        &output,
        "key 1 (fingerprint \"abc\"): a fingerprint is 64 hex digits",
    );
    let output = run(&["attach", "--pid", &me, "--keys", missing.to_str().unwrap()]);
    assert_one_line_error(&output, "cannot read key catalog");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn top_needs_a_terminal_and_a_source() {
    // Standard output is a pipe here.
    let output = run(&["top", "--replay", "/dev/null"]);
    assert_one_line_error(&output, "top draws on a terminal");
    let output = run(&["top"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
}

#[test]
fn a_fingerprint_needs_one_key_on_standard_input() {
    use std::io::Write as _;
    for input in ["", "\n", "one\ntwo\n"] {
        let mut child = Command::new(binary())
            .args(["keys", "fingerprint"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running access-log");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert_one_line_error(&output, "key");
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn not_enough_privilege() {
    require_root();
    // The same binary as an unprivileged user (setpriv from util-linux).
    let me = std::process::id().to_string();
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(binary())
        .args(["attach", "--pid", &me])
        .output()
        .expect("running setpriv");
    assert_one_line_error(&output, "must run as root");
}

#[test]
fn pid_files_that_name_no_running_process() {
    let dir = std::env::temp_dir().join(format!("access-log-cli-pid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.pid");
    let attach = |file: &std::path::Path| run(&["attach", "--pidfile", file.to_str().unwrap()]);
    assert_one_line_error(&attach(&file), "cannot read the pid file");
    std::fs::write(&file, "nginx\n").unwrap();
    assert_one_line_error(&attach(&file), "not a process id");
    std::fs::write(&file, "999999999\n").unwrap();
    assert_one_line_error(&attach(&file), "names PID 999999999, which is not running");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_syslog_url_that_is_no_receiver() {
    let me = std::process::id().to_string();
    let output = run(&["attach", "--pid", &me, "--syslog", "http://127.0.0.1:514"]);
    assert_one_line_error(
        &output,
        "is not udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH",
    );
}
