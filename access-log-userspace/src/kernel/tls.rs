//! Finding the TLS library a gateway really uses: the libssl each watched process maps (read
//! through /proc/PID/root, so a gateway in a container works too), or OpenSSL linked into the
//! executable with its symbols exported (Node.js). Processes whose TLS cannot be read (Go's
//! crypto/tls, stripped static BoringSSL, Java) are named, so the operator knows.
use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectSymbol as _};

use super::tls_sites::{self, ProbeSite};

/// The functions whose probes carry plaintext; a library must export the first to be read.
pub const READ_SYMBOL: &str = "SSL_read";

/// A file to attach the TLS probes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTarget {
    /// Path through /proc/PID/root.
    pub path: PathBuf,
    /// The path as the process sees it, for messages.
    pub shown: String,
    /// Where its probes go.
    pub sites: Vec<ProbeSite>,
}

#[derive(Debug, Default)]
pub struct TlsScan {
    pub targets: Vec<TlsTarget>,
    /// (PID, what it is) for processes whose TLS, if any, cannot be read.
    pub unreadable: Vec<(u32, String)>,
    /// (file, why) for TLS libraries a process maps that could not be read or probed.
    pub unreadable_files: Vec<(String, String)>,
}

/// The probe sites of a file that exports SSL_read: Ok(None) for a file that does not,
/// Err(why) for one that cannot be read or decoded.
fn probe_sites(path: &Path) -> Result<Option<Vec<ProbeSite>>, String> {
    let data = fs::read(path).map_err(|e| e.to_string())?;
    let file = object::File::parse(&*data).map_err(|e| e.to_string())?;
    let exports_read = file
        .dynamic_symbols()
        .chain(file.symbols())
        .any(|s| s.is_definition() && s.name_bytes() == Ok(READ_SYMBOL.as_bytes()));
    if !exports_read {
        return Ok(None);
    }
    tls_sites::sites(&data).map(Some).map_err(|e| e.to_string())
}

/// Why an executable's TLS cannot be read, when we can tell.
fn unreadable_kind(path: &Path) -> Option<String> {
    let data = fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    if file.section_by_name(".go.buildinfo").is_some() {
        return Some("a Go program: crypto/tls is not read".into());
    }
    if data.windows(9).any(|w| w == b"BoringSSL") {
        return Some("BoringSSL linked without exported symbols: not read".into());
    }
    None
}

/// Scans the watched processes' mappings for TLS libraries.
pub fn scan(pids: &[u32]) -> TlsScan {
    let mut scan = TlsScan::default();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    for &pid in pids {
        let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let mut mapped: Vec<String> = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .filter(|path| path.starts_with('/'))
            .map(str::to_owned)
            .collect();
        mapped.dedup();
        let mut readable = false;
        for shown in mapped {
            let name = shown.rsplit('/').next().unwrap_or("");
            let candidate = name.starts_with("libssl.so") || Some(&shown) == exe.as_ref();
            if !candidate {
                continue;
            }
            let path = root.join(shown.trim_start_matches('/'));
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if !seen.insert((meta.dev(), meta.ino())) {
                readable |= scan.targets.iter().any(|t| t.shown == shown);
                continue;
            }
            match probe_sites(&path) {
                Ok(Some(sites)) => {
                    readable = true;
                    scan.targets.push(TlsTarget { path, shown, sites });
                }
                Ok(None) => {
                    if name.starts_with("libssl.so") {
                        scan.unreadable_files
                            .push((shown, "it exports no SSL_read".into()));
                    }
                }
                Err(why) => scan.unreadable_files.push((shown, why)),
            }
        }
        if !readable && maps.contains("/libjvm.so") {
            scan.unreadable
                .push((pid, "a Java program: JSSE is not read".into()));
            continue;
        }
        if !readable {
            if let Some(kind) = exe
                .as_ref()
                .and_then(|e| unreadable_kind(&root.join(e.trim_start_matches('/'))))
            {
                scan.unreadable.push((pid, kind));
            }
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_no_tls_library_in_a_process_without_one() {
        // The test binary links no libssl.
        let scan = scan(&[std::process::id()]);
        assert!(scan.targets.iter().all(|t| !t.shown.contains("libssl")));
    }
}
