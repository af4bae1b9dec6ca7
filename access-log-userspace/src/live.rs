//! A live session on a gateway: checks, attach (tracepoints, TLS uprobes, watched processes,
//! sockets that already exist), then the loop that drains the ring buffer into a consumer
//! until Ctrl-C, SIGTERM, `--duration` or the gateway's exit. Used by `attach` and `record`.
use std::{fs::File, io::BufWriter, net::SocketAddr, path::Path, time::Duration};

use access_log::{
    pipeline::{Clock, ConnectionKey, Direction},
    probe::{self, ProbeConfig, Probes},
    procfs, record,
    recording::Writer,
    tls,
};
use access_log_common::{kind, ConnectionRecord, RecordHeader};
use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

#[derive(clap::Args)]
pub struct TargetArgs {
    /// PID of the gateway (its master process: workers are followed too).
    #[arg(long)]
    pid: u32,
    /// Stop after this many seconds (default: run until Ctrl-C or SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    /// Bytes copied from each socket read or write (the head of it; at most 4096).
    #[arg(long, default_value_t = access_log_common::DEFAULT_CAPTURE,
          value_parser = clap::value_parser!(u32).range(64..=access_log_common::MAX_CAPTURE as i64))]
    capture_bytes: u32,
    /// Bytes copied from each read or write carrying responses: the status line and the framing
    /// headers (a longer head loses its framing until the next response; at most 4096).
    #[arg(long, default_value_t = access_log_common::DEFAULT_RESPONSE_CAPTURE,
          value_parser = clap::value_parser!(u32).range(64..=access_log_common::MAX_CAPTURE as i64))]
    response_capture_bytes: u32,
    /// Size of the kernel ring buffer in bytes (a power of two, at least a page).
    #[arg(long, default_value_t = 8 << 20)]
    ring_bytes: u32,
    /// Measure the kernel programs' run time and print it at exit (`bpf: ...`).
    #[arg(long)]
    bpf_stats: bool,
}

/// What receives the live records, a batch at a time.
pub trait Consumer {
    fn record(&mut self, bytes: &[u8]);
    fn batch_done(&mut self);
}

pub struct Session {
    /// Made before the probes attach, with the stop signals already caught, so a SIGTERM
    /// right after `attached:` still ends the session cleanly (summary, flushed output).
    event_loop: Option<EventLoop>,
    probes: Probes,
    run_time: Option<probe::RunTimeStats>,
    pub clock: Clock,
    /// Connections the watched processes held at attach.
    pub existing: Vec<(ConnectionKey, Direction, Option<SocketAddr>)>,
    root: u32,
    duration: Option<f64>,
}

/// Why the loop ended, when it was not asked to.
pub struct Outcome {
    stopped_because: Option<String>,
}

impl Outcome {
    pub fn report(&self) {
        if let Some(reason) = &self.stopped_because {
            eprintln!("access-log: {reason}");
        }
    }
}

fn now_clock() -> Clock {
    let read = |id| {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(id, &mut now) };
        now.tv_sec as i128 * 1_000_000_000 + now.tv_nsec as i128
    };
    let monotonic = read(libc::CLOCK_MONOTONIC);
    let wall = read(libc::CLOCK_REALTIME);
    Clock {
        offset_ns: wall - monotonic,
    }
}

/// The event loop and the signals that stop it.
struct EventLoop {
    runtime: tokio::runtime::Runtime,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl EventLoop {
    fn new() -> anyhow::Result<EventLoop> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the event loop")?;
        let _context = runtime.enter();
        let terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        Ok(EventLoop {
            runtime,
            terminate,
            interrupt,
        })
    }
}

impl Session {
    pub fn start(args: &TargetArgs) -> anyhow::Result<Session> {
        if !args.ring_bytes.is_power_of_two() || args.ring_bytes < 4096 {
            anyhow::bail!(
                "--ring-bytes {} must be a power of two of at least 4096",
                args.ring_bytes
            );
        }
        let event_loop = EventLoop::new()?;
        procfs::check_process(args.pid)?;
        probe::check_privileges()?;
        if procfs::ensure_tracefs()? {
            eprintln!("access-log: mounted tracefs at {}", procfs::TRACEFS);
        }
        // The TLS libraries to probe are known before loading (it sets how syscalls treat TLS);
        // a new worker maps the same library file.
        let tls_scan = tls::scan(&procfs::process_tree(args.pid));
        let mut probes = Probes::load(&ProbeConfig {
            capture_bytes: args.capture_bytes,
            response_capture_bytes: args.response_capture_bytes,
            ring_bytes: args.ring_bytes,
            tls_probes: !tls_scan.targets.is_empty(),
        })?;
        // Root first: from here on the kernel adds every child forked; then the children that
        // exist already, then the sockets they already hold.
        probes.watch(args.pid)?;
        let tree = procfs::process_tree(args.pid);
        for pid in &tree {
            probes.watch(*pid)?;
        }
        let mut tls_probes = 0;
        for target in &tls_scan.targets {
            tls_probes += probes.attach_tls(target)?;
        }
        for (pid, kind) in &tls_scan.unreadable {
            eprintln!(
                "access-log: PID {pid} is {kind}; its encrypted connections are counted, not read"
            );
        }
        let mut existing = Vec::new();
        for socket in procfs::existing_sockets(&tree) {
            probes.follow_socket(socket.pid, socket.fd, socket.direction)?;
            existing.push((
                (socket.pid, socket.fd),
                socket.direction,
                Some(socket.remote),
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
                eprintln!(
                    "access-log: in {}, the probes on {} single-step their first instruction: \
                     each call costs the gateway a debug trap",
                    target.shown,
                    stepped.join(", ")
                );
            }
        }
        let tls_read = if tls_scan.targets.is_empty() {
            "no TLS library found".to_owned()
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
        eprintln!(
            "attached: PID {} ({} processes, {} open connections), {} probes, {tls_read}, \
             capturing {} bytes of requests and {} of responses per call",
            args.pid,
            tree.len(),
            existing.len(),
            probes.attached,
            args.capture_bytes,
            args.response_capture_bytes
        );
        let run_time = if args.bpf_stats {
            Some(probe::RunTimeStats::enable()?)
        } else {
            None
        };
        Ok(Session {
            event_loop: Some(event_loop),
            probes,
            run_time,
            clock: now_clock(),
            existing,
            root: args.pid,
            duration: args.duration,
        })
    }

    /// The `bpf:` line, when run-time statistics were asked for.
    pub fn report_run_time(&self) {
        if let Some(stats) = &self.run_time {
            let (nanoseconds, runs) = stats.totals();
            eprintln!(
                "bpf: {nanoseconds} ns in {runs} program runs ({:.0} ns per run)",
                nanoseconds as f64 / runs.max(1) as f64
            );
        }
    }

    pub fn drops_summary(&self) -> String {
        let drops = self.probes.drops();
        format!(
            "{} (ring full {}, socket table full {}, call table full {}, unreadable buffers {}, \
             children not watched {}, TLS calls without a socket {})",
            drops.records_lost(),
            drops.ring_full,
            drops.socket_table_full,
            drops.call_table_full,
            drops.read_failed,
            drops.watch_table_full,
            drops.tls_socket_unknown
        )
    }

    /// Drains the ring buffer into `consumer` until told to stop.
    pub fn run(&mut self, consumer: &mut dyn Consumer) -> anyhow::Result<Outcome> {
        let mut event_loop = self
            .event_loop
            .take()
            .context("the session has already run")?;
        let outcome = event_loop.runtime.block_on(self.run_loop(
            consumer,
            &mut event_loop.terminate,
            &mut event_loop.interrupt,
        ));
        self.event_loop = Some(event_loop);
        outcome
    }

    async fn run_loop(
        &mut self,
        consumer: &mut dyn Consumer,
        terminate: &mut tokio::signal::unix::Signal,
        interrupt: &mut tokio::signal::unix::Signal,
    ) -> anyhow::Result<Outcome> {
        let deadline = tokio::time::sleep(Duration::from_secs_f64(self.duration.unwrap_or(1e9)));
        tokio::pin!(deadline);
        // The kernel side does not wake us per record; a short tick batches the ring's records.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outcome = Outcome {
            stopped_because: None,
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if self.drain(consumer) {
                        outcome.stopped_because =
                            Some(format!("the gateway (PID {}) exited", self.root));
                        break;
                    }
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = &mut deadline => break,
            }
        }
        self.drain(consumer);
        Ok(outcome)
    }

    /// Hands every waiting record to the consumer. Returns whether the root process exited.
    fn drain(&mut self, consumer: &mut dyn Consumer) -> bool {
        let root = self.root;
        let mut root_exited = false;
        self.probes.drain(|bytes| {
            let Ok(header) = record::read_header(bytes) else {
                consumer.record(bytes);
                return;
            };
            if header.kind == kind::EXIT && header.tgid == root {
                root_exited = true;
            }
            match with_peer(&header, bytes) {
                Some(enriched) => consumer.record(&enriched),
                None => consumer.record(bytes),
            }
        });
        consumer.batch_done();
        root_exited
    }
}

/// An accept record without the peer's address (libuv passes no buffer) gets it from /proc,
/// while the socket is surely still open.
fn with_peer(header: &RecordHeader, bytes: &[u8]) -> Option<Vec<u8>> {
    if header.kind != kind::ACCEPT || bytes.len() < size_of::<ConnectionRecord>() {
        return None;
    }
    // SAFETY: plain old data, length checked above.
    let mut record: ConnectionRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if record.remote.family != 0 {
        return None;
    }
    let peer = procfs::socket_peer(header.tgid, header.fd)?;
    record.remote = record::to_socket_address(peer);
    // SAFETY: viewing plain old data as bytes.
    let raw = unsafe {
        std::slice::from_raw_parts(
            (&record as *const ConnectionRecord).cast::<u8>(),
            size_of::<ConnectionRecord>(),
        )
    };
    Some(raw.to_vec())
}

/// `access-log record`: the raw records to a file.
pub fn record(args: &TargetArgs, output: &Path) -> anyhow::Result<()> {
    let file = File::create(output)
        .with_context(|| format!("cannot create record file {}", output.display()))?;
    let mut session = Session::start(args)?;
    let mut writer = Writer::new(BufWriter::new(file), session.clock)?;
    for (key, direction, remote) in &session.existing {
        writer.existing(*key, *direction, *remote)?;
    }
    let mut consumer = RecordConsumer {
        writer,
        records: 0,
        failed: None,
    };
    let outcome = session.run(&mut consumer)?;
    consumer.writer.flush()?;
    if let Some(error) = consumer.failed {
        return Err(error).with_context(|| format!("writing {}", output.display()));
    }
    eprintln!(
        "summary: {} records written to {}; kernel drops: {}",
        consumer.records,
        output.display(),
        session.drops_summary()
    );
    session.report_run_time();
    outcome.report();
    Ok(())
}

struct RecordConsumer {
    writer: Writer<BufWriter<File>>,
    records: u64,
    failed: Option<std::io::Error>,
}

impl Consumer for RecordConsumer {
    fn record(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            match self.writer.record(bytes) {
                Ok(()) => self.records += 1,
                Err(error) => self.failed = Some(error),
            }
        }
    }

    fn batch_done(&mut self) {}
}
