//! A live session on a gateway: the checks, then the attach sequence (tracefs, TLS libraries,
//! the programs, the watched processes, the sockets that already exist) and the drain of the
//! ring buffer into a [`RecordConsumer`]. The loop that decides when to drain and when to stop
//! belongs to the command that runs it.
use std::{collections::HashSet, os::unix::fs::MetadataExt as _, path::PathBuf};

use access_log_common::{kind, watched, ConnectionRecord};

use super::{
    probes::{self, KernelDrops, NotRoot, ProbeConfig, ProbeError, Probes},
    procfs::{self, ProcError},
    record, tls, Clock, ConnectionKey, Direction, Endpoint, RecordConsumer,
};

/// What to attach to and how much to copy.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The gateway's master process: its workers are followed too.
    pub pid: u32,
    pub capture_bytes: u32,
    pub response_capture_bytes: u32,
    pub ring_bytes: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("--ring-bytes {0} must be a power of two of at least 4096")]
    RingSize(u32),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    NotRoot(#[from] NotRoot),
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

pub struct Session {
    probes: Probes,
    pub clock: Clock,
    /// Connections the watched processes held at attach.
    pub existing: Vec<(ConnectionKey, Direction, Option<Endpoint>)>,
    /// The `attached:` line, and notes about TLS stacks that are not read.
    pub notes: Vec<String>,
    root: u32,
}

/// What one drain saw.
pub struct Drained {
    pub records: usize,
    /// The attached (root) process exited.
    pub root_exited: bool,
}

impl Session {
    pub fn start(config: &SessionConfig) -> Result<Session, SessionError> {
        if !config.ring_bytes.is_power_of_two() || config.ring_bytes < 4096 {
            return Err(SessionError::RingSize(config.ring_bytes));
        }
        procfs::check_process(config.pid)?;
        probes::check_privileges()?;
        let mut notes = Vec::new();
        if procfs::ensure_tracefs()? {
            notes.push(format!(
                "access-log: mounted tracefs at {}",
                procfs::TRACEFS
            ));
        }
        // The TLS libraries to probe are known before loading (it sets how syscalls treat TLS);
        // a new worker maps the same library file.
        let tls_scan = tls::scan(&procfs::process_tree(config.pid));
        let (offsets, no_walk) = super::btf::kernel_offsets();
        if let Some(why) = no_walk {
            notes.push(format!(
                "access-log: socket states cannot be read on this kernel ({why}): a client \
                 leaving is told from the gateway closing only by the reads that see it"
            ));
        }
        // Wake-ups are hand-offs only between threads of one process: a gateway of
        // single-threaded processes (nginx's workers) has none, and a Go program's are the
        // runtime's own, read otherwise.
        let processes = procfs::process_tree(config.pid);
        let wake_ups = processes
            .iter()
            .any(|pid| procfs::threads(*pid).len() > 1 && !super::go::is_go_program(*pid));
        let mut probes = Probes::load(&ProbeConfig {
            capture_bytes: config.capture_bytes,
            response_capture_bytes: config.response_capture_bytes,
            ring_bytes: config.ring_bytes,
            tls_probes: !tls_scan.targets.is_empty(),
            offsets,
            wake_ups,
        })?;
        // Root first: from here on the kernel adds every child forked; then the children that
        // exist already, then the sockets they already hold. A Go program's transport is
        // probed, and its data records carry the goroutine.
        let mut go_programs = Vec::new();
        let root_flags = watched::YES | go_flag(config.pid, &mut go_programs, &mut notes);
        probes.watch(config.pid, root_flags)?;
        let tree = procfs::process_tree(config.pid);
        for pid in &tree {
            let flags = if *pid == config.pid {
                root_flags
            } else {
                watched::YES | go_flag(*pid, &mut go_programs, &mut notes)
            };
            probes.watch(*pid, flags)?;
            // Its threads too: a wake-up of one of them is a hand-off inside the gateway.
            for thread in procfs::threads(*pid) {
                probes.watch(thread, flags)?;
            }
        }
        let mut go_probes = 0;
        for (path, shown, sites) in &go_programs {
            go_probes += probes.attach_sites(sites, path, shown)?;
            let names: Vec<&str> = sites.iter().map(|s| s.function.as_str()).collect();
            notes.push(format!(
                "access-log: {shown} is a Go program: its net/http transport is probed at {}",
                names.join(", ")
            ));
        }
        let _ = go_probes;
        let mut tls_probes = 0;
        for target in &tls_scan.targets {
            tls_probes += probes.attach_tls(target)?;
        }
        for (pid, kind) in &tls_scan.unreadable {
            notes.push(format!(
                "access-log: PID {pid} is {kind}; its encrypted connections are counted, not read"
            ));
        }
        let mut existing = Vec::new();
        for socket in procfs::existing_sockets(&tree) {
            probes.follow_socket(socket.pid, socket.fd, socket.direction)?;
            existing.push((
                (socket.pid, socket.fd),
                socket.direction,
                Some(Endpoint::Ip(socket.remote)),
            ));
        }
        for target in &tls_scan.targets {
            let stepped: Vec<&str> = target
                .sites
                .iter()
                .filter(|s| s.single_steps)
                .map(|s| s.function.as_str())
                .collect();
            if !stepped.is_empty() {
                notes.push(format!(
                    "access-log: in {}, the probes on {} single-step their first instruction: \
                     each call costs the gateway a debug trap",
                    target.shown,
                    stepped.join(", ")
                ));
            }
        }
        let tls_read = if tls_scan.targets.is_empty() {
            tls_scan
                .unreadable_files
                .first()
                .map(|(file, why)| format!("TLS library {file} not read ({why})"))
                .unwrap_or_else(|| "no TLS library found".to_owned())
        } else {
            let names: Vec<String> = tls_scan
                .targets
                .iter()
                .map(|t| {
                    let sites: Vec<&str> = t.sites.iter().map(|s| s.function.as_str()).collect();
                    format!("{} at {}", t.shown, sites.join(", "))
                })
                .collect();
            format!("TLS read in {} ({tls_probes} uprobes)", names.join("; "))
        };
        notes.push(format!(
            "attached: PID {} ({} processes, {} open connections), {} probes, {tls_read}, \
             capturing {} bytes of requests and {} of responses per call",
            config.pid,
            tree.len(),
            existing.len(),
            probes.attached,
            config.capture_bytes,
            config.response_capture_bytes
        ));
        Ok(Session {
            probes,
            clock: Clock::now(),
            existing,
            notes,
            root: config.pid,
        })
    }

    /// The attached process.
    pub fn root(&self) -> u32 {
        self.root
    }

    /// The kernel's counts of what it could not do.
    pub fn drops(&self) -> KernelDrops {
        self.probes.drops()
    }

    pub fn drops_summary(&self) -> String {
        let drops = self.drops();
        format!(
            "records lost {} (ring full); not captured {} (socket table full {}, call table \
             full {}, unreadable buffers {}, children not watched {}, TLS calls without a \
             socket {})",
            drops.records_lost(),
            drops.not_captured(),
            drops.socket_table_full,
            drops.call_table_full,
            drops.read_failed,
            drops.watch_table_full,
            drops.tls_socket_unknown
        )
    }

    /// Hands at most `limit` waiting records to `consumer` (so the caller can look at its
    /// signals and timers under any load), then ends the batch.
    pub fn drain(&mut self, consumer: &mut dyn RecordConsumer, limit: usize) -> Drained {
        let root = self.root;
        let mut root_exited = false;
        let records = self.probes.drain(limit, |bytes| {
            let Ok(header) = record::read_header(bytes) else {
                consumer.record(bytes);
                return;
            };
            if header.kind == kind::EXIT && header.tgid == root {
                root_exited = true;
            }
            if let Some(peer) = missing_peer(&header, bytes) {
                consumer.peer((header.tgid, header.fd), peer);
            }
            consumer.record(bytes);
        });
        consumer.batch_done();
        Drained {
            records,
            root_exited,
        }
    }
}

/// The [`watched::GO`] bit for a Go program whose transport can be probed (its sites added to
/// `programs` once per executable), 0 for any other; a Go program that cannot be probed is
/// named in `notes`.
fn go_flag(
    pid: u32,
    programs: &mut Vec<(PathBuf, String, Vec<super::tls_sites::ProbeSite>)>,
    notes: &mut Vec<String>,
) -> u32 {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return 0;
    };
    let shown = exe.display().to_string();
    let path = PathBuf::from(format!("/proc/{pid}/root")).join(shown.trim_start_matches('/'));
    let Ok(meta) = std::fs::metadata(&path) else {
        return 0;
    };
    let known: HashSet<(u64, u64)> = programs
        .iter()
        .filter_map(|(p, _, _)| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino())))
        .collect();
    if known.contains(&(meta.dev(), meta.ino())) {
        return watched::GO;
    }
    let Ok(data) = std::fs::read(&path) else {
        return 0;
    };
    match super::go::sites(&data) {
        Ok(sites) => {
            programs.push((path, shown, sites));
            watched::GO
        }
        Err(super::go::GoError::NotGo) => 0,
        Err(why) => {
            notes.push(format!(
                "access-log: PID {pid} ({shown}) is a Go program whose transport is not probed: \
                 {why}; its pairings rest on thread facts"
            ));
            0
        }
    }
}

/// The peer of an accept record without one (libuv passes no address buffer), from /proc
/// while the socket is, most likely, still open.
fn missing_peer(header: &access_log_common::RecordHeader, bytes: &[u8]) -> Option<Endpoint> {
    if header.kind != kind::ACCEPT || bytes.len() < size_of::<ConnectionRecord>() {
        return None;
    }
    // SAFETY: plain old data, length checked above.
    let record: ConnectionRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if record.remote.family != 0 {
        return None;
    }
    procfs::socket_peer(header.tgid, header.fd).map(Endpoint::Ip)
}

/// Enables the kernel's BPF run-time statistics while held.
pub use super::probes::RunTimeStats;
