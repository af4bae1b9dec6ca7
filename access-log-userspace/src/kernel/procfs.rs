//! What /proc and tracefs tell about the target before and during attach: the process tree,
//! sockets that already exist, tracepoint layouts. Read-only, except mounting tracefs.
use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use super::Direction;

pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("no process with PID {0} (is the gateway running? check with `ps -p {0}`)")]
    NoSuchProcess(u32),
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed: {0} (run as root)")]
    TracefsMount(std::io::Error),
    #[error(
        "this kernel has no tracepoint {0} (needs syscall tracepoints: CONFIG_FTRACE_SYSCALLS)"
    )]
    MissingTracepoint(String),
    #[error("cannot read the pid file {0}: {1}")]
    PidFile(String, std::io::Error),
    #[error("the pid file {0} holds {1:?}, not a process id")]
    PidFileContent(String, String),
    #[error("the pid file {0} names PID {1}, which is not running (is the gateway started?)")]
    PidFileStale(String, u32),
}

/// Mounts tracefs when it is absent; returns whether it did.
pub fn ensure_tracefs() -> Result<bool, ProcError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(false);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: plain mount(2) with static NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProcError::TracefsMount(std::io::Error::last_os_error()));
    }
    Ok(true)
}

/// Checks that a tracepoint exists and returns its format text.
pub fn tracepoint_format(category: &str, name: &str) -> Result<String, ProcError> {
    fs::read_to_string(format!("{TRACEFS}/events/{category}/{name}/format"))
        .map_err(|_| ProcError::MissingTracepoint(format!("{category}/{name}")))
}

/// The byte offset of a field in a tracepoint format (`field:pid_t child_pid; offset:20; ...`).
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let declaration = line.strip_prefix("field:")?.split(';').next()?;
        let name = declaration.split_whitespace().last()?;
        if name != field {
            return None;
        }
        let offset = line.split("offset:").nth(1)?.split(';').next()?;
        offset.trim().parse().ok()
    })
}

pub fn check_process(pid: u32) -> Result<(), ProcError> {
    if Path::new(&format!("/proc/{pid}")).is_dir() {
        Ok(())
    } else {
        Err(ProcError::NoSuchProcess(pid))
    }
}

/// The process and all its descendants alive now.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut index = 0;
    while index < tree.len() {
        if let Some(kids) = children.get(&tree[index]) {
            tree.extend(kids);
        }
        index += 1;
    }
    tree
}

/// The thread ids of a process, from /proc/PID/task.
pub fn threads(pid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The fields of /proc/PID/stat after the command name (state first), which may contain
/// spaces and parentheses: they start after the last ')'.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

pub fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Whether `pid` is a running process or thread (a zombie waiting to be reaped is gone).
pub fn alive(pid: u32) -> bool {
    stat_fields(pid)
        .and_then(|fields| fields.into_iter().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Whether `pid` is a process (its main thread), not another thread of one.
pub fn is_process(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Tgid:"))
            .and_then(|tgid| tgid.trim().parse::<u32>().ok())
            == Some(pid)
    })
}

/// Whether descriptor `fd` of `pid` is a socket now: `Some(false)` when the process or the
/// descriptor is gone or is something else, `None` when /proc would not say (no permission).
pub fn fd_is_socket(pid: u32, fd: i32) -> Option<bool> {
    match fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
        Ok(link) => Some(socket_inode(&link).is_some()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Some(false),
        Err(_) => None,
    }
}

/// The process a pid file names, when it is running.
pub fn read_pid_file(path: &Path) -> Result<u32, ProcError> {
    let shown = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|e| ProcError::PidFile(shown.clone(), e))?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| ProcError::PidFileContent(shown.clone(), text.trim().to_owned()))?;
    if pid == 0 || !alive(pid) {
        return Err(ProcError::PidFileStale(shown, pid));
    }
    Ok(pid)
}

/// A connected TCP socket a watched process already had at attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingSocket {
    pub pid: u32,
    pub fd: i32,
    pub direction: Direction,
    pub remote: SocketAddr,
}

/// The remote address of one socket of a process, from /proc (for an accept() that passed no
/// address buffer, as libuv does).
pub fn socket_peer(pid: u32, fd: i32) -> Option<SocketAddr> {
    let inode = socket_inode(&fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?)?;
    ["tcp", "tcp6"].iter().find_map(|file| {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{file}")).ok()?;
        parse_tcp_table(&text)
            .into_iter()
            .find(|(entry_inode, _)| *entry_inode == inode)
            .map(|(_, entry)| entry.remote)
    })
}

fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

struct TcpEntry {
    local: SocketAddr,
    remote: SocketAddr,
    listening: bool,
}

/// Connected TCP sockets of the given processes: inbound when the local port is one the tree
/// listens on, outbound otherwise.
pub fn existing_sockets(pids: &[u32]) -> Vec<ExistingSocket> {
    let mut table: HashMap<u64, TcpEntry> = HashMap::new();
    let mut listening_ports = HashSet::new();
    let mut sockets = Vec::new();
    for &pid in pids {
        for file in ["tcp", "tcp6"] {
            if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
                for (inode, entry) in parse_tcp_table(&text) {
                    if entry.listening {
                        listening_ports.insert(entry.local.port());
                    }
                    table.insert(inode, entry);
                }
            }
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(number) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|link| socket_inode(&link))
            {
                sockets.push((pid, number, inode));
            }
        }
    }
    sockets
        .into_iter()
        .filter_map(|(pid, fd, inode)| {
            let entry = table.get(&inode)?;
            if entry.listening {
                return None;
            }
            let direction = if listening_ports.contains(&entry.local.port()) {
                Direction::Inbound
            } else {
                Direction::Outbound
            };
            Some(ExistingSocket {
                pid,
                fd,
                direction,
                remote: entry.remote,
            })
        })
        .collect()
}

fn parse_tcp_table(text: &str) -> Vec<(u64, TcpEntry)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = parse_hex_address(fields.get(1)?)?;
            let remote = parse_hex_address(fields.get(2)?)?;
            let listening = *fields.get(3)? == "0A";
            let inode = fields.get(9)?.parse().ok()?;
            Some((
                inode,
                TcpEntry {
                    local,
                    remote,
                    listening,
                },
            ))
        })
        .collect()
}

/// Parses `0100007F:1F90` (IPv4) or a 32-hex-digit IPv6 address, as /proc/net/tcp writes them:
/// 32-bit words in host byte order.
fn parse_hex_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(address, 16).ok()?.to_ne_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (index, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(&address[index * 8..index * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_field_offsets_from_a_tracepoint_format() {
        let format = "name: sched_process_fork\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(format, "child_pid"), Some(20));
        assert_eq!(field_offset(format, "parent_pid"), Some(12));
        assert_eq!(field_offset(format, "nothing"), None);
    }

    #[test]
    fn parses_proc_net_tcp_addresses() {
        assert_eq!(
            parse_hex_address("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_hex_address("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
    }

    #[test]
    fn reads_pid_files() {
        let dir = std::env::temp_dir().join(format!("access-log-pidfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gateway.pid");
        fs::write(&file, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(read_pid_file(&file).unwrap(), std::process::id());
        fs::write(&file, "nginx\n").unwrap();
        assert!(matches!(
            read_pid_file(&file),
            Err(ProcError::PidFileContent(_, text)) if text == "nginx"
        ));
        fs::write(&file, format!("{}\n", u32::MAX - 1)).unwrap();
        assert!(matches!(
            read_pid_file(&file),
            Err(ProcError::PidFileStale(_, _))
        ));
        assert!(matches!(
            read_pid_file(&dir.join("absent.pid")),
            Err(ProcError::PidFile(_, _))
        ));
        fs::remove_dir_all(&dir).unwrap();
        assert!(is_process(std::process::id()));
        assert!(alive(std::process::id()));
        assert!(fd_is_socket(std::process::id(), 0).is_some());
    }

    #[test]
    fn finds_this_process_in_its_own_tree() {
        let me = std::process::id();
        assert_eq!(process_tree(me)[0], me);
        assert!(check_process(me).is_ok());
        assert!(matches!(
            check_process(u32::MAX - 1),
            Err(ProcError::NoSuchProcess(_))
        ));
    }
}
