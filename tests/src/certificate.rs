//! A self-signed certificate for the TLS tests, made with Debian's openssl command.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Writes `cert.pem` and `key.pem` for 127.0.0.1/localhost into `dir`.
pub fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let output = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| format!("running openssl: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok((cert, key))
}
