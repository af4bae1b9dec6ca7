//! A live session on a gateway: the checks, then the attach sequence (tracefs, TLS libraries,
//! the programs, the watched processes, the sockets that already exist) and the drain of the
//! ring buffer into a [`RecordConsumer`]. The loop that decides when to drain and when to stop
//! belongs to the command that runs it.
use std::{collections::HashSet, os::unix::fs::MetadataExt as _, path::PathBuf};

use access_log_common::{kind, watched, ConnectionRecord, SocketKey};

use super::{
    probes::{self, NotRoot, ProbeConfig, ProbeError, Probes},
    procfs::{self, ProcError},
    record, tls, Clock, ConnectionKey, Direction, Endpoint, KernelDrops, RecordConsumer,
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

/// A connection a watched process held when it was first watched.
pub type Existing = (ConnectionKey, Direction, Option<Endpoint>);

/// A Go executable whose transport is probed: its path (through the process's root), the path
/// shown, and the probe sites.
type GoProgram = (PathBuf, String, Vec<super::tls_sites::ProbeSite>);

pub struct Session {
    probes: Probes,
    pub clock: Clock,
    /// Connections the watched processes held at attach.
    pub existing: Vec<Existing>,
    /// The `attached:` line, and notes about TLS stacks that are not read.
    pub notes: Vec<String>,
    root: u32,
    go_programs: Vec<GoProgram>,
    /// Followed sockets whose descriptor was gone at the last sweep: forgotten if still gone.
    gone_at_last_sweep: HashSet<SocketKey>,
    pub upkeep: Upkeep,
    /// The first tree is watched: what fails from here on (privileges dropped) is a note.
    attached_once: bool,
}

/// What the session did to keep the kernel's tables true.
#[derive(Debug, Default, Clone, Copy)]
pub struct Upkeep {
    /// Socket entries of processes that exited.
    pub sockets_of_exited: u64,
    /// Socket entries whose descriptor was closed unseen (close_range, dup2, exec).
    pub sockets_closed_unseen: u64,
}

/// What one drain saw.
pub struct Drained {
    pub records: usize,
    /// Watched processes whose exit was seen.
    pub exited: Vec<u32>,
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
        // a new worker, or a restarted gateway, maps the same library file: the probes are
        // attached to the file, for every process, and the kernel keeps to the watched ones.
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
        let probes = Probes::load(&ProbeConfig {
            capture_bytes: config.capture_bytes,
            response_capture_bytes: config.response_capture_bytes,
            ring_bytes: config.ring_bytes,
            tls_probes: !tls_scan.targets.is_empty(),
            offsets,
            wake_ups,
        })?;
        let mut session = Session {
            probes,
            clock: Clock::now(),
            existing: Vec::new(),
            notes,
            root: config.pid,
            go_programs: Vec::new(),
            gone_at_last_sweep: HashSet::new(),
            upkeep: Upkeep::default(),
            attached_once: false,
        };
        let (processes, existing) = session.watch_tree(config.pid)?;
        session.existing = existing;
        let mut tls_probes = 0;
        for target in &tls_scan.targets {
            tls_probes += session.probes.attach_tls(target)?;
        }
        let notes = &mut session.notes;
        for (pid, kind) in &tls_scan.unreadable {
            notes.push(format!(
                "access-log: PID {pid} is {kind}; its encrypted connections are counted, not read"
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
            "attached: PID {} ({processes} processes, {} open connections), {} probes, \
             {tls_read}, capturing {} bytes of requests and {} of responses per call",
            config.pid,
            session.existing.len(),
            session.probes.attached,
            config.capture_bytes,
            config.response_capture_bytes
        ));
        session.attached_once = true;
        Ok(session)
    }

    /// Watches `root`, its descendants and their threads (the kernel adds every child forked
    /// from here on), probes the Go programs among them not probed yet, and follows the
    /// sockets they already hold. Returns how many processes, and those sockets.
    fn watch_tree(&mut self, root: u32) -> Result<(usize, Vec<Existing>), SessionError> {
        let probed = self.go_programs.len();
        // Root first: from here on the kernel adds every child forked; then the children that
        // exist already, then the sockets they already hold.
        let root_flags = watched::YES | go_flag(root, &mut self.go_programs, &mut self.notes);
        self.probes.watch(root, root_flags)?;
        let tree = procfs::process_tree(root);
        for pid in &tree {
            let flags = if *pid == root {
                root_flags
            } else {
                watched::YES | go_flag(*pid, &mut self.go_programs, &mut self.notes)
            };
            self.probes.watch(*pid, flags)?;
            // Its threads too: a wake-up of one of them is a hand-off inside the gateway.
            for thread in procfs::threads(*pid) {
                self.probes.watch(thread, flags)?;
            }
        }
        for (path, shown, sites) in &self.go_programs[probed..] {
            if let Err(error) = self.probes.attach_sites(sites, path, shown) {
                // Only a process followed later gets here with its privileges dropped
                // (uprobes take CAP_SYS_ADMIN): its pairings rest on thread facts.
                if self.attached_once {
                    self.notes.push(format!(
                        "access-log: {shown} is a Go program whose transport is not probed \
                         ({error}); its pairings rest on thread facts"
                    ));
                    continue;
                }
                return Err(error.into());
            }
            let names: Vec<&str> = sites.iter().map(|s| s.function.as_str()).collect();
            self.notes.push(format!(
                "access-log: {shown} is a Go program: its net/http transport is probed at {}",
                names.join(", ")
            ));
        }
        let mut existing = Vec::new();
        for socket in procfs::existing_sockets(&tree) {
            self.probes
                .follow_socket(socket.pid, socket.fd, socket.direction)?;
            existing.push((
                (socket.pid, socket.fd),
                socket.direction,
                Some(Endpoint::Ip(socket.remote)),
            ));
        }
        Ok((tree.len(), existing))
    }

    /// The attached (root) process.
    pub fn root(&self) -> u32 {
        self.root
    }

    /// Makes `pid` the root: a process already watched (a new master forked by the old one,
    /// nginx's binary upgrade) is only named so; another (a restarted gateway) is watched with
    /// its tree. Returns the connections it already held, to hand to the consumer, and notes.
    pub fn follow(&mut self, pid: u32) -> Result<Vec<Existing>, SessionError> {
        self.root = pid;
        if self.probes.is_watched(pid) {
            return Ok(Vec::new());
        }
        self.notes.clear();
        Ok(self.watch_tree(pid)?.1)
    }

    /// The watched processes still running, the ones no other of them is parent of first, the
    /// one with most descendants among them before the others: when the root exits, the first
    /// is the gateway's new root (the new master of a binary upgrade, reparented).
    pub fn survivors(&self) -> Vec<u32> {
        let mut alive: Vec<u32> = self
            .probes
            .watched_ids()
            .into_iter()
            .filter(|pid| procfs::is_process(*pid) && procfs::alive(*pid))
            .collect();
        alive.sort_unstable();
        alive.dedup();
        let parents: std::collections::HashMap<u32, Option<u32>> = alive
            .iter()
            .map(|pid| (*pid, procfs::parent_of(*pid)))
            .collect();
        let descendants = |pid: u32| {
            alive
                .iter()
                .filter(|other| {
                    let mut at = **other;
                    // Bounded: a parent chain within the set.
                    for _ in 0..alive.len() {
                        match parents.get(&at).copied().flatten() {
                            Some(parent) if parent == pid => return true,
                            Some(parent) if parents.contains_key(&parent) => at = parent,
                            _ => return false,
                        }
                    }
                    false
                })
                .count()
        };
        let is_top = |pid: &u32| {
            parents
                .get(pid)
                .copied()
                .flatten()
                .is_none_or(|parent| !parents.contains_key(&parent))
        };
        let mut ranked: Vec<(bool, usize, u32)> = alive
            .iter()
            .map(|pid| (is_top(pid), descendants(*pid), *pid))
            .collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        ranked.into_iter().map(|(_, _, pid)| pid).collect()
    }

    /// Forgets followed sockets whose descriptor is gone (closed by a call the probes do not
    /// follow: close_range, dup2 over it, exec), when it was gone at the previous sweep too,
    /// so that a socket accepted in between is not forgotten. Returns how many were.
    pub fn sweep_sockets(&mut self) -> usize {
        let mut gone = HashSet::new();
        let mut forgotten = 0;
        for key in self.probes.followed_sockets() {
            if procfs::fd_is_socket(key.tgid, key.fd) != Some(false) {
                continue;
            }
            if self.gone_at_last_sweep.contains(&key) {
                if self.probes.unfollow_socket(key) {
                    forgotten += 1;
                }
            } else {
                gone.insert(key);
            }
        }
        self.gone_at_last_sweep = gone;
        self.upkeep.sockets_closed_unseen += forgotten as u64;
        forgotten
    }

    /// (name, nanoseconds, runs) of each kernel program, the busiest first (while run-time
    /// statistics are on).
    pub fn program_run_times(&self) -> Vec<(String, u64, u64)> {
        self.probes.run_times()
    }

    /// The kernel's counts of what it could not do.
    pub fn drops(&self) -> KernelDrops {
        self.probes.drops()
    }

    pub fn drops_summary(&self) -> String {
        let drops = self.drops();
        format!(
            "records lost {} (ring full); not captured {} (socket table full {}, call or \
             scratch tables full {}, unreadable buffers {}, children not watched {}, TLS calls without a \
             socket {}); sockets forgotten: {} of exited processes, {} closed unseen",
            drops.records_lost(),
            drops.not_captured(),
            drops.socket_table_full,
            drops.call_table_full,
            drops.read_failed,
            drops.watch_table_full,
            drops.tls_socket_unknown,
            self.upkeep.sockets_of_exited,
            self.upkeep.sockets_closed_unseen
        )
    }

    /// Hands at most `limit` waiting records to `consumer` (so the caller can look at its
    /// signals and timers under any load), then ends the batch. The sockets of processes
    /// that exited are forgotten: a process that reuses the PID starts with none.
    pub fn drain(&mut self, consumer: &mut dyn RecordConsumer, limit: usize) -> Drained {
        let mut exited = Vec::new();
        let records = self.probes.drain(limit, |bytes| {
            let Ok(header) = record::read_header(bytes) else {
                consumer.record(bytes);
                return;
            };
            if header.kind == kind::EXIT {
                exited.push(header.tgid);
            }
            if let Some(peer) = missing_peer(&header, bytes) {
                consumer.peer((header.tgid, header.fd), peer);
            }
            consumer.record(bytes);
        });
        consumer.batch_done();
        for (tgid, fd) in consumer.take_http2_found() {
            self.probes.mark_http2(SocketKey { tgid, fd });
        }
        if !exited.is_empty() {
            let gone: HashSet<u32> = exited.iter().copied().collect();
            self.upkeep.sockets_of_exited += self.probes.forget_sockets_of(&gone) as u64;
        }
        Drained { records, exited }
    }
}

impl Session {
    /// Empties the watched set: from here on every probe returns at its first check, so the
    /// gateway pays next to nothing while the kernel detaches the probes one grace period
    /// after the other (seconds under full load).
    pub fn stop_watching(&mut self) {
        self.probes.unwatch_all();
    }
}

/// The [`watched::GO`] bit for a Go program whose transport can be probed (its sites added to
/// `programs` once per executable), 0 for any other; a Go program that cannot be probed is
/// named in `notes`.
fn go_flag(pid: u32, programs: &mut Vec<GoProgram>, notes: &mut Vec<String>) -> u32 {
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
