//! The kernel seam: loads the eBPF object, attaches its tracepoints, fills the watched-process
//! and socket tables, drains the ring buffer and reads the drop counters. Everything else in
//! user space works on the values this hands out.
use std::collections::HashSet;

use access_log_common::{counter, role, SocketKey, SslKey, MAX_CAPTURE};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{uprobe::UProbeScope, ProgramError, TracePoint, UProbe},
    Ebpf, EbpfError, EbpfLoader,
};

use super::{
    procfs::{self, ProcError},
    tls::TlsTarget,
    tls_sites::ProbeSite,
    Direction, KernelDrops,
};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): access-log needs a kernel \
         built with CONFIG_DEBUG_INFO_BTF"
    )]
    NoBtf,
    #[error("access-log reads syscall arguments from x86-64 registers; this is {0}")]
    Architecture(&'static str),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("sched_process_fork or sched_waking lacks its pid field in this kernel")]
    NoChildPid,
    #[error(
        "the kernel refused to load eBPF programs: run access-log as root (it needs CAP_BPF, \
         CAP_PERFMON and CAP_SYS_ADMIN): {0}"
    )]
    NotPermitted(String),
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[source] EbpfError),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: ProgramError,
    },
    #[error("{what}: {source}")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
}

fn program_error(what: impl Into<String>) -> impl FnOnce(ProgramError) -> ProbeError {
    let what = what.into();
    move |source| {
        let text = format!("{source:?}");
        if text.contains("EPERM") || text.contains("PermissionDenied") {
            ProbeError::NotPermitted(format!("{what}: {source}"))
        } else {
            ProbeError::Program { what, source }
        }
    }
}

fn map_error(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> ProbeError {
    let what = what.into();
    move |source| ProbeError::Map { what, source }
}

/// (program, tracepoint category, tracepoint) for every attachment, in attach order: process
/// tracking first so no child forked during attach is missed.
const ATTACHMENTS: &[(&str, &str, &str)] = &[
    ("process_fork", "sched", "sched_process_fork"),
    ("process_exit", "sched", "sched_process_exit"),
    ("socket_enter", "syscalls", "sys_enter_socket"),
    ("socket_exit", "syscalls", "sys_exit_socket"),
    ("accept_enter", "syscalls", "sys_enter_accept"),
    ("accept_exit", "syscalls", "sys_exit_accept"),
    ("accept_enter", "syscalls", "sys_enter_accept4"),
    ("accept_exit", "syscalls", "sys_exit_accept4"),
    ("connect_enter", "syscalls", "sys_enter_connect"),
    ("connect_exit", "syscalls", "sys_exit_connect"),
    ("close_enter", "syscalls", "sys_enter_close"),
    ("shutdown_enter", "syscalls", "sys_enter_shutdown"),
    ("read_exit", "syscalls", "sys_exit_read"),
    ("readv_exit", "syscalls", "sys_exit_readv"),
    ("recvfrom_exit", "syscalls", "sys_exit_recvfrom"),
    ("recvmsg_exit", "syscalls", "sys_exit_recvmsg"),
    ("write_exit", "syscalls", "sys_exit_write"),
    ("writev_exit", "syscalls", "sys_exit_writev"),
    ("sendto_exit", "syscalls", "sys_exit_sendto"),
    ("sendmsg_exit", "syscalls", "sys_exit_sendmsg"),
    ("sendfile_exit", "syscalls", "sys_exit_sendfile64"),
    ("splice_exit", "syscalls", "sys_exit_splice"),
];

pub struct ProbeConfig {
    pub capture_bytes: u32,
    pub response_capture_bytes: u32,
    pub ring_bytes: u32,
    /// TLS probes will be attached: syscalls then check for an SSL call under way.
    pub tls_probes: bool,
    /// Where the kernel structures the programs walk keep their members (all zero: no walk).
    pub offsets: access_log_common::KernelOffsets,
    /// Follow wake-ups between the gateway's threads (`sched_waking`, which runs on every
    /// wake-up of the host): only worth it for a gateway whose threads hand work to each other.
    pub wake_ups: bool,
}

pub struct Probes {
    ebpf: Ebpf,
    loaded_uprobes: HashSet<&'static str>,
    ring: RingBuf<MapData>,
    watched: HashMap<MapData, u32, u32>,
    sockets: HashMap<MapData, SocketKey, u32>,
    ssl_sockets: HashMap<MapData, SslKey, i32>,
    /// Where the frames of each HTTP/2 socket stand, per direction.
    http2_frames: HashMap<MapData, SocketKey, [u32; 2]>,
    counters: PerCpuArray<MapData, u64>,
    pub attached: usize,
}

impl Probes {
    /// Loads and attaches everything; nothing is watched until [`Probes::watch`].
    pub fn load(config: &ProbeConfig) -> Result<Probes, ProbeError> {
        if !cfg!(target_arch = "x86_64") {
            return Err(ProbeError::Architecture(std::env::consts::ARCH));
        }
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(ProbeError::NoBtf);
        }
        let fork_format = procfs::tracepoint_format("sched", "sched_process_fork")?;
        let child_offset =
            procfs::field_offset(&fork_format, "child_pid").ok_or(ProbeError::NoChildPid)?;
        let waking_format = procfs::tracepoint_format("sched", "sched_waking")?;
        let waking_offset =
            procfs::field_offset(&waking_format, "pid").ok_or(ProbeError::NoChildPid)?;
        for (_, category, name) in ATTACHMENTS {
            procfs::tracepoint_format(category, name)?;
        }
        let capture = config.capture_bytes.min(MAX_CAPTURE as u32);
        let response_capture = config.response_capture_bytes.min(MAX_CAPTURE as u32);
        let tls_probes = u32::from(config.tls_probes);
        let mut ebpf = EbpfLoader::new()
            .override_global("KERNEL_OFFSETS", &config.offsets, true)
            .override_global("CAPTURE_BYTES", &capture, true)
            .override_global("RESPONSE_CAPTURE_BYTES", &response_capture, true)
            .override_global("TLS_PROBES", &tls_probes, true)
            .override_global("FORK_CHILD_PID_OFFSET", &child_offset, true)
            .override_global("WAKING_PID_OFFSET", &waking_offset, true)
            .map_max_entries("EVENTS", config.ring_bytes)
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/access-log"
            )))
            .map_err(|e| {
                let text = format!("{e:?}");
                if text.contains("EPERM") || text.contains("PermissionDenied") {
                    ProbeError::NotPermitted(e.to_string())
                } else {
                    ProbeError::Load(e)
                }
            })?;
        let mut loaded = HashSet::new();
        let mut attached = 0;
        let wake_ups = [("thread_waking", "sched", "sched_waking")];
        let attachments = ATTACHMENTS
            .iter()
            .chain(wake_ups.iter().filter(|_| config.wake_ups));
        for (program_name, category, name) in attachments {
            let program: &mut TracePoint = ebpf
                .program_mut(program_name)
                .ok_or(ProbeError::Missing(program_name))?
                .try_into()
                .map_err(program_error(*program_name))?;
            if loaded.insert(*program_name) {
                program
                    .load()
                    .map_err(program_error(format!("loading {program_name}")))?;
            }
            program
                .attach(category, name)
                .map_err(program_error(format!(
                    "attaching {program_name} to {category}/{name}"
                )))?;
            attached += 1;
        }
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(ProbeError::Missing(name));
        let ring = RingBuf::try_from(take("EVENTS")?).map_err(map_error("EVENTS"))?;
        let watched = HashMap::try_from(take("WATCHED")?).map_err(map_error("WATCHED"))?;
        let sockets = HashMap::try_from(take("SOCKETS")?).map_err(map_error("SOCKETS"))?;
        let ssl_sockets =
            HashMap::try_from(take("SSL_SOCKETS")?).map_err(map_error("SSL_SOCKETS"))?;
        let http2_frames =
            HashMap::try_from(take("HTTP2_FRAMES")?).map_err(map_error("HTTP2_FRAMES"))?;
        let counters = PerCpuArray::try_from(take("COUNTERS")?).map_err(map_error("COUNTERS"))?;
        Ok(Probes {
            ebpf,
            loaded_uprobes: HashSet::new(),
            ring,
            watched,
            sockets,
            ssl_sockets,
            http2_frames,
            counters,
            attached,
        })
    }

    /// Attaches the TLS probes to a library or executable, for every process that maps it (a
    /// PID filter would miss workers forked later); the programs filter by tgid themselves.
    pub fn attach_tls(&mut self, target: &TlsTarget) -> Result<usize, ProbeError> {
        self.attach_sites(&target.sites, &target.path, &target.shown)
    }

    /// Attaches the probes at `sites` of the file at `path` (`shown` in messages).
    pub fn attach_sites(
        &mut self,
        sites: &[ProbeSite],
        path: &std::path::Path,
        shown: &str,
    ) -> Result<usize, ProbeError> {
        let mut attached = 0;
        for site in sites {
            for program_name in std::iter::once(site.entry_program).chain(site.exit_program) {
                let program: &mut UProbe = self
                    .ebpf
                    .program_mut(program_name)
                    .ok_or(ProbeError::Missing(program_name))?
                    .try_into()
                    .map_err(program_error(program_name))?;
                if self.loaded_uprobes.insert(program_name) {
                    program
                        .load()
                        .map_err(program_error(format!("loading {program_name}")))?;
                }
                program
                    .attach(site.file_offset, path, UProbeScope::AllProcesses)
                    .map_err(program_error(format!(
                        "attaching {program_name} to {} in {shown}",
                        site.function
                    )))?;
                attached += 1;
            }
        }
        self.attached += attached;
        Ok(attached)
    }

    /// Watches a process (or thread) with the [`access_log_common::watched`] bits `flags`.
    pub fn watch(&mut self, pid: u32, flags: u32) -> Result<(), ProbeError> {
        self.watched
            .insert(pid, flags, 0)
            .map_err(map_error(format!("adding PID {pid} to the watched set")))
    }

    pub fn follow_socket(
        &mut self,
        pid: u32,
        fd: i32,
        direction: Direction,
    ) -> Result<(), ProbeError> {
        let socket_role = match direction {
            Direction::Inbound => role::INBOUND,
            Direction::Outbound => role::OUTBOUND,
        };
        self.sockets
            .insert(SocketKey { tgid: pid, fd }, socket_role, 0)
            .map_err(map_error(format!("following socket {fd} of PID {pid}")))
    }

    /// Forgets the sockets of processes that have gone (their exit seen), and the TLS objects
    /// they tied to sockets: a process that reuses one of their PIDs starts with none. Returns
    /// how many socket entries were removed.
    pub fn forget_sockets_of(&mut self, gone: &HashSet<u32>) -> usize {
        remove_where(&mut self.ssl_sockets, |key| gone.contains(&key.tgid));
        remove_where(&mut self.http2_frames, |key| gone.contains(&key.tgid));
        remove_where(&mut self.sockets, |key| gone.contains(&key.tgid))
    }

    /// The sockets the kernel follows, as (PID, fd).
    pub fn followed_sockets(&self) -> Vec<SocketKey> {
        self.sockets.keys().flatten().collect()
    }

    /// Stops following one socket (closed in a way the probes do not see).
    pub fn unfollow_socket(&mut self, key: SocketKey) -> bool {
        let _ = self.http2_frames.remove(&key);
        self.sockets.remove(&key).is_ok()
    }

    /// Marks a followed socket HTTP/2 (its calls are then captured whole); false when it is
    /// not followed (closed meanwhile).
    pub fn mark_http2(&mut self, key: SocketKey) -> bool {
        let Ok(socket_role) = self.sockets.get(&key, 0) else {
            return false;
        };
        self.sockets
            .insert(key, socket_role | role::HTTP2, 0)
            .is_ok()
    }

    /// (name, nanoseconds, runs) of each program, the busiest first, while run-time statistics
    /// are on ([`RunTimeStats`]): where the kernel side's time goes. Read from the descriptors
    /// held (no capability needed once attached).
    pub fn run_times(&self) -> Vec<(String, u64, u64)> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let mut programs: Vec<(String, u64, u64)> = self
            .ebpf
            .programs()
            .filter_map(|(name, program)| {
                let fd = program.fd().ok()?.as_fd().as_raw_fd();
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
                let (nanoseconds, runs) = run_time_fields(&info);
                Some((name.to_owned(), nanoseconds, runs))
            })
            .collect();
        programs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        programs
    }

    /// Empties the watched set.
    pub fn unwatch_all(&mut self) {
        remove_where(&mut self.watched, |_| true);
    }

    /// The thread and process ids in the watched set.
    pub fn watched_ids(&self) -> Vec<u32> {
        self.watched.keys().flatten().collect()
    }

    /// Whether a process (or thread) is in the watched set.
    pub fn is_watched(&self, pid: u32) -> bool {
        self.watched.get(&pid, 0).is_ok()
    }

    /// Hands up to `limit` records waiting in the ring buffer to `handle`; returns how many.
    pub fn drain(&mut self, limit: usize, mut handle: impl FnMut(&[u8])) -> usize {
        let mut count = 0;
        while count < limit {
            let Some(item) = self.ring.next() else {
                break;
            };
            handle(&item);
            count += 1;
        }
        count
    }

    pub fn drops(&self) -> KernelDrops {
        let sum = |index: u32| -> u64 {
            self.counters
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        KernelDrops {
            ring_full: sum(counter::RING_FULL),
            socket_table_full: sum(counter::SOCKET_TABLE_FULL),
            call_table_full: sum(counter::CALL_TABLE_FULL),
            read_failed: sum(counter::READ_FAILED),
            watch_table_full: sum(counter::WATCH_TABLE_FULL),
            tls_socket_unknown: sum(counter::TLS_SOCKET_UNKNOWN),
        }
    }
}

/// Removes the entries of a kernel hash map whose key matches; returns how many.
fn remove_where<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    matches: impl Fn(&K) -> bool,
) -> usize {
    let stale: Vec<K> = map.keys().flatten().filter(|key| matches(key)).collect();
    stale.iter().filter(|key| map.remove(key).is_ok()).count()
}

#[derive(Debug, thiserror::Error)]
#[error("access-log must run as root to load eBPF programs (try: sudo access-log ...)")]
pub struct NotRoot;

/// Fails early, with what to do, when the process cannot load eBPF at all.
pub fn check_privileges() -> Result<(), NotRoot> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(NotRoot);
    }
    Ok(())
}

/// (run_time_ns, run_cnt) of a BPF program's fdinfo text.
fn run_time_fields(info: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("run_time_ns:"), field("run_cnt:"))
}

/// The /proc/self/fdinfo text of each BPF program descriptor this process holds.
fn held_program_fdinfo() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter(|info| info.contains("prog_tag:"))
        .collect()
}

/// Keeps the kernel's BPF run-time statistics on while held (BPF_ENABLE_STATS).
pub struct RunTimeStats {
    _enabled: std::os::fd::OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> Result<RunTimeStats, ProbeError> {
        let fd =
            aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| ProbeError::Program {
                what: "enabling BPF run-time statistics".into(),
                source: e.into(),
            })?;
        Ok(RunTimeStats { _enabled: fd })
    }

    /// (nanoseconds, runs) of every BPF program this process holds, from /proc/self/fdinfo.
    pub fn totals(&self) -> (u64, u64) {
        let mut totals = (0, 0);
        for info in held_program_fdinfo() {
            let (nanoseconds, runs) = run_time_fields(&info);
            totals.0 += nanoseconds;
            totals.1 += runs;
        }
        totals
    }
}
