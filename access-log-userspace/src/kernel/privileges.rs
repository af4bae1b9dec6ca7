//! Least privilege once the probes are attached: the observer keeps only the capabilities
//! the rest of the run needs, drops the others from every set (the bounding set too, so no
//! later exec regains them), sets no_new_privs, and can switch to an unprivileged user. Done
//! before any other thread starts: capabilities belong to each thread.
use std::ffi::CString;

// Capability numbers (linux/capability.h).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;

/// Capabilities kept for the rest of the run, and why. Nothing else is needed once the
/// programs are loaded and attached: the ring buffer and the maps are read and written through
/// descriptors the observer already holds. (Attaching uprobes takes CAP_SYS_ADMIN on top of
/// CAP_BPF and CAP_PERFMON: a gateway restarted under `--pidfile` from a new Go executable is
/// followed without its transport probes.)
pub const KEPT: &[(u32, &str, &str)] = &[
    (
        CAP_SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "reading another user's /proc/PID/fd and /proc/PID/exe: the sockets a process of a \
         restarted gateway already holds, the sweep of sockets closed unseen",
    ),
    (
        CAP_DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH",
        "listing another user's /proc/PID/fd directory",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("--user {0}: no such user")]
    NoSuchUser(String),
    #[error("dropping privileges failed at {0}: {1}")]
    Call(&'static str, std::io::Error),
}

/// The bit mask of the kept capabilities, as /proc/PID/status shows CapEff.
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |mask, (cap, _, _)| mask | 1 << cap)
}

fn check(result: libc::c_int, what: &'static str) -> Result<(), PrivilegeError> {
    if result == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::Call(what, std::io::Error::last_os_error()))
    }
}

/// A user's uid and primary gid.
fn lookup(user: &str) -> Result<(libc::uid_t, libc::gid_t), PrivilegeError> {
    let name = CString::new(user).map_err(|_| PrivilegeError::NoSuchUser(user.to_owned()))?;
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16384];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to memory we own, of the sizes given.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(PrivilegeError::NoSuchUser(user.to_owned()));
    }
    Ok((entry.pw_uid, entry.pw_gid))
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Checks that `user` exists, before anything is attached.
pub fn check_user(user: &str) -> Result<(), PrivilegeError> {
    lookup(user).map(|_| ())
}

/// Keeps [`KEPT`] and nothing else, and becomes `user` when given. Returns what it did, for
/// the run's notes.
pub fn drop_privileges(user: Option<&str>) -> Result<String, PrivilegeError> {
    let target = user.map(lookup).transpose()?;
    let keep = kept_mask();
    // The bounding set first, while CAP_SETPCAP is still effective.
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        if keep & (1 << cap) == 0 {
            // SAFETY: plain prctl; EINVAL for a capability this kernel lacks is fine.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    // SAFETY: plain prctl.
    check(
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        },
        "clearing ambient capabilities",
    )?;
    if let Some((uid, gid)) = target {
        // SAFETY: plain prctl and set*id calls; glibc applies set*id to every thread.
        unsafe {
            check(
                libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
                "PR_SET_KEEPCAPS",
            )?;
            check(libc::setgroups(1, &gid), "setgroups")?;
            check(libc::setresgid(gid, gid, gid), "setresgid")?;
            check(libc::setresuid(uid, uid, uid), "setresuid")?;
        }
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: keep as u32,
            permitted: keep as u32,
            inheritable: 0,
        },
        CapData {
            effective: (keep >> 32) as u32,
            permitted: (keep >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset with a version-3 header and its two data words.
    check(
        unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } as libc::c_int,
        "capset",
    )?;
    // SAFETY: plain prctl.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        "PR_SET_NO_NEW_PRIVS",
    )?;
    let names: Vec<&str> = KEPT.iter().map(|(_, name, _)| *name).collect();
    Ok(format!(
        "access-log: attached; now running{} with {} only",
        user.map(|u| format!(" as {u}")).unwrap_or_default(),
        names.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP_SYS_ADMIN: u32 = 21;

    #[test]
    fn the_kept_mask_names_each_capability_once() {
        assert_eq!(kept_mask().count_ones() as usize, KEPT.len());
        assert_eq!(kept_mask() & (1 << CAP_SYS_ADMIN), 0);
    }

    #[test]
    fn an_unknown_user_is_an_error() {
        assert!(matches!(
            check_user("no-such-user-access-log"),
            Err(PrivilegeError::NoSuchUser(_))
        ));
        assert!(check_user("root").is_ok());
    }
}
