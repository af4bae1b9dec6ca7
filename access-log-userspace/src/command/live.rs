//! The loop of a live session, shared by `attach` and `record`: drains the ring buffer on a
//! short tick (the kernel side does not wake us per record) in bounded batches, so Ctrl-C,
//! SIGTERM, `--duration` and the gateway's exit are honoured within a tick under any load.
//! It follows the gateway, not a PID: when the attached process exits, the process its pid
//! file names next, or the watched process that outlives it, is followed on. SIGHUP reopens
//! the outputs.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::TargetArgs;
use crate::kernel::{
    privileges, procfs,
    session::{RunTimeStats, Session, SessionConfig},
    RecordConsumer,
};

/// Records handed to the consumer before the loop looks at its signals and timers again.
const BATCH: usize = 16384;
/// How often the ring buffer is drained when it does not fill a batch.
const TICK: Duration = Duration::from_millis(10);
/// How often the consumer's clock work runs and the root's liveness is checked (its exit
/// record may have been lost).
const SECOND: Duration = Duration::from_secs(1);
/// How often followed sockets are checked against the processes' descriptors.
const SOCKET_SWEEP: Duration = Duration::from_secs(10);

/// Why the loop ended, when it was not asked to.
pub struct Outcome {
    stopped_because: Option<String>,
}

impl Outcome {
    /// Why the loop ended by itself (the gateway exited, ...), if it did.
    pub fn reason(&self) -> Option<&str> {
        self.stopped_because.as_deref()
    }

    pub fn report(&self) {
        if let Some(reason) = &self.stopped_because {
            eprintln!("access-log: {reason}");
        }
    }
}

/// The event loop and the signals that stop it, made before the probes attach so a SIGTERM
/// right after `attached:` still ends the session cleanly (summary, flushed output).
pub struct Live {
    runtime: tokio::runtime::Runtime,
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    pub session: Session,
    pidfile: Option<PathBuf>,
    run_time: Option<RunTimeStats>,
    duration: Option<f64>,
}

impl Live {
    pub fn start(args: &TargetArgs) -> anyhow::Result<Live> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the event loop")?;
        let (terminate, interrupt, hangup) = {
            let _context = runtime.enter();
            (
                signal(SignalKind::terminate()).context("handling SIGTERM")?,
                signal(SignalKind::interrupt()).context("handling SIGINT")?,
                signal(SignalKind::hangup()).context("handling SIGHUP")?,
            )
        };
        let pid = args.initial_pid()?;
        if let Some(user) = &args.user {
            privileges::check_user(user)?;
        }
        let session = Session::start(&SessionConfig {
            pid,
            capture_bytes: args.capture_bytes,
            response_capture_bytes: args.response_capture_bytes,
            ring_bytes: args.ring_bytes,
        })?;
        let run_time = if args.bpf_stats {
            Some(RunTimeStats::enable()?)
        } else {
            None
        };
        // Everything that needs more is done: keep only what the run needs. No other thread
        // runs yet (capabilities are each thread's own).
        let dropped = privileges::drop_privileges(args.user.as_deref())?;
        // The `attached:` line last: from there on everything is in place.
        eprintln!("{dropped}");
        for note in &session.notes {
            eprintln!("{note}");
        }
        Ok(Live {
            runtime,
            terminate,
            interrupt,
            hangup,
            session,
            pidfile: args.pidfile.clone(),
            run_time,
            duration: args.duration,
        })
    }

    /// Drains into `consumer` until told to stop, or until the gateway is gone.
    pub fn run(&mut self, consumer: &mut dyn RecordConsumer) -> Outcome {
        for (key, direction, remote) in &self.session.existing {
            consumer.existing(*key, *direction, remote.clone());
        }
        let Live {
            runtime,
            terminate,
            interrupt,
            hangup,
            session,
            duration,
            pidfile,
            ..
        } = self;
        runtime.block_on(async {
            let deadline = tokio::time::sleep(Duration::from_secs_f64(duration.unwrap_or(1e9)));
            tokio::pin!(deadline);
            let mut next = tokio::time::Instant::now() + TICK;
            let mut next_second = Instant::now() + SECOND;
            let mut next_sweep = Instant::now() + SOCKET_SWEEP;
            // The root exited and the pid file does not name its successor yet.
            let mut waiting = false;
            let mut outcome = Outcome {
                stopped_because: None,
            };
            loop {
                tokio::select! {
                    biased;
                    _ = terminate.recv() => break,
                    _ = interrupt.recv() => break,
                    _ = &mut deadline => break,
                    _ = hangup.recv() => consumer.reopen_outputs(),
                    _ = tokio::time::sleep_until(next) => {}
                }
                let drained = session.drain(consumer, BATCH);
                let now = Instant::now();
                let second = now >= next_second;
                let root = session.root();
                if waiting || drained.exited.contains(&root) || (second && !procfs::alive(root)) {
                    if let Some(reason) =
                        carry_on(session, consumer, pidfile.as_ref(), root, &mut waiting)
                    {
                        outcome.stopped_because = Some(reason);
                        break;
                    }
                }
                if second {
                    next_second = now + SECOND;
                    consumer.tick(monotonic_ns(), &session.drops());
                }
                if now >= next_sweep {
                    next_sweep = now + SOCKET_SWEEP;
                    session.sweep_sockets();
                }
                if drained.records < BATCH {
                    next = tokio::time::Instant::now() + TICK;
                } else {
                    // More is waiting: drain again at once, but let the runtime look at its
                    // signals first (a loop that is always ready never lets it, and a stop
                    // under full load would wait for the load to end).
                    tokio::task::yield_now().await;
                    next = tokio::time::Instant::now();
                }
            }
            // What the kernel wrote before the stop, but no more than a few batches: a stop
            // under full load must not wait for the load to end.
            for _ in 0..8 {
                if session.drain(consumer, BATCH).records < BATCH {
                    break;
                }
            }
            session.stop_watching();
            outcome
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
            for (name, nanoseconds, runs) in self.session.program_run_times() {
                if runs > 0 {
                    eprintln!("bpf program {name}: {nanoseconds} ns in {runs} runs");
                }
            }
        }
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the kernel's records.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The followed process `root` exited: follows its successor, or waits for the pid file to
/// name one (`waiting`). Returns why the run ends, when it does.
fn carry_on(
    session: &mut Session,
    consumer: &mut dyn RecordConsumer,
    pidfile: Option<&PathBuf>,
    root: u32,
    waiting: &mut bool,
) -> Option<String> {
    match successor(session, pidfile, root) {
        Successor::Follow(pid, why) => {
            let existing = match session.follow(pid) {
                Ok(existing) => existing,
                Err(error) => return Some(format!("cannot follow PID {pid}: {error}")),
            };
            // Said once it is so: a request from here on is seen.
            let exited = if *waiting {
                String::new()
            } else {
                format!("the gateway's process {root} exited; ")
            };
            *waiting = false;
            eprintln!("access-log: {exited}following PID {pid} ({why})");
            for note in &session.notes {
                eprintln!("{note}");
            }
            for (key, direction, remote) in existing {
                consumer.existing(key, direction, remote);
            }
            None
        }
        Successor::Wait(file) => {
            if !*waiting {
                *waiting = true;
                eprintln!(
                    "access-log: the gateway's process {root} exited; waiting for {} to name \
                     the next one",
                    file.display()
                );
            }
            None
        }
        Successor::Gone => Some(format!("the gateway (PID {root}) exited")),
    }
}

/// Who carries on when the followed process exits.
enum Successor {
    /// This process, and why it is the one.
    Follow(u32, String),
    /// The pid file does not name a running process other than the one that exited (yet):
    /// a restart is under way.
    Wait(PathBuf),
    /// Nothing watched runs any more and no pid file says what comes next.
    Gone,
}

/// The process a pid file names, once it names a running one other than `old`; without a pid
/// file, the watched process that outlives `old` (the new master of nginx's binary upgrade is
/// the old one's child, reparented when it exits).
fn successor(session: &Session, pidfile: Option<&PathBuf>, old: u32) -> Successor {
    if let Some(file) = pidfile {
        return match procfs::read_pid_file(file) {
            Ok(pid) if pid != old => Successor::Follow(pid, format!("named by {}", file.display())),
            _ => Successor::Wait(file.clone()),
        };
    }
    match session.survivors().first() {
        Some(pid) => Successor::Follow(*pid, "a watched process that outlived it".to_owned()),
        None => Successor::Gone,
    }
}
