//! The files a host installs (`packaging/`): the systemd unit verifies cleanly with systemd's
//! own checker and its sandboxing rates "OK" or better; its capability set is the one the
//! least-privilege test starts the observer with, and the logrotate snippet is the one the
//! logrotate test runs (both in lifecycle_e2e.rs).
use std::{fs, process::Command};

use tests::{observer::binary, workspace_root};

/// The unit with ExecStart pointing at the built binary (systemd checks that it exists).
fn unit_here(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = fs::read_to_string(workspace_root().join("packaging/access-log.service"))
        .expect("packaging/access-log.service");
    let here = unit.replace(
        "/usr/local/bin/access-log",
        binary().to_str().expect("utf-8 path"),
    );
    fs::create_dir_all(dir).unwrap();
    let path = dir.join("access-log.service");
    fs::write(&path, here).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    let dir = std::env::temp_dir().join(format!("access-log-unit-{}", std::process::id()));
    let unit = unit_here(&dir);
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("running systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Unknown keys and bad values are only warnings to systemd: none is allowed here.
    assert_eq!(stderr.trim(), "", "systemd-analyze verify warned");
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("running systemd-analyze security");
    let text = String::from_utf8_lossy(&output.stdout);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure level in {text}"))
        .to_owned();
    assert!(
        overall.contains(" OK") || overall.contains(" SAFE"),
        "{overall}"
    );
    eprintln!("{}", overall.trim());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_broken_unit_is_caught_by_the_same_check() {
    // The check above can fail: the same unit with a misspelt key warns.
    let dir = std::env::temp_dir().join(format!("access-log-unit-bad-{}", std::process::id()));
    let unit = unit_here(&dir);
    let text = fs::read_to_string(&unit).unwrap();
    fs::write(&unit, text.replace("NoNewPrivileges=", "NoNewPrivilege=")).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("running systemd-analyze");
    assert!(String::from_utf8_lossy(&output.stderr).contains("Unknown key"));
    let _ = fs::remove_dir_all(&dir);
}
