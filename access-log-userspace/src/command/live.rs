//! The loop of a live session, shared by `attach` and `record`: drains the ring buffer on a
//! short tick (the kernel side does not wake us per record) in bounded batches, so Ctrl-C,
//! SIGTERM, `--duration` and the gateway's exit are honoured within a tick under any load.
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::TargetArgs;
use crate::kernel::{
    session::{RunTimeStats, Session, SessionConfig},
    RecordConsumer,
};

/// Records handed to the consumer before the loop looks at its signals and timers again.
const BATCH: usize = 16384;
/// How often the ring buffer is drained when it does not fill a batch.
const TICK: Duration = Duration::from_millis(10);

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

/// The event loop and the signals that stop it, made before the probes attach so a SIGTERM
/// right after `attached:` still ends the session cleanly (summary, flushed output).
pub struct Live {
    runtime: tokio::runtime::Runtime,
    terminate: Signal,
    interrupt: Signal,
    pub session: Session,
    run_time: Option<RunTimeStats>,
    duration: Option<f64>,
}

impl Live {
    pub fn start(args: &TargetArgs) -> anyhow::Result<Live> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the event loop")?;
        let (terminate, interrupt) = {
            let _context = runtime.enter();
            (
                signal(SignalKind::terminate()).context("handling SIGTERM")?,
                signal(SignalKind::interrupt()).context("handling SIGINT")?,
            )
        };
        let session = Session::start(&SessionConfig {
            pid: args.pid,
            capture_bytes: args.capture_bytes,
            response_capture_bytes: args.response_capture_bytes,
            ring_bytes: args.ring_bytes,
        })?;
        for note in &session.notes {
            eprintln!("{note}");
        }
        let run_time = if args.bpf_stats {
            Some(RunTimeStats::enable()?)
        } else {
            None
        };
        Ok(Live {
            runtime,
            terminate,
            interrupt,
            session,
            run_time,
            duration: args.duration,
        })
    }

    /// Drains into `consumer` until told to stop.
    pub fn run(&mut self, consumer: &mut dyn RecordConsumer) -> Outcome {
        for (key, direction, remote) in &self.session.existing {
            consumer.existing(*key, *direction, remote.clone());
        }
        let Live {
            runtime,
            terminate,
            interrupt,
            session,
            duration,
            ..
        } = self;
        let root = session.root();
        runtime.block_on(async {
            let deadline = tokio::time::sleep(Duration::from_secs_f64(duration.unwrap_or(1e9)));
            tokio::pin!(deadline);
            let mut next = tokio::time::Instant::now() + TICK;
            let mut outcome = Outcome {
                stopped_because: None,
            };
            loop {
                tokio::select! {
                    biased;
                    _ = terminate.recv() => break,
                    _ = interrupt.recv() => break,
                    _ = &mut deadline => break,
                    _ = tokio::time::sleep_until(next) => {}
                }
                let drained = session.drain(consumer, BATCH);
                if drained.root_exited {
                    outcome.stopped_because = Some(format!("the gateway (PID {root}) exited"));
                    break;
                }
                next = tokio::time::Instant::now()
                    + if drained.records < BATCH {
                        TICK
                    } else {
                        Duration::ZERO
                    };
            }
            // What the kernel wrote before the stop, but no more than a few batches: a stop
            // under full load must not wait for the load to end.
            for _ in 0..8 {
                if session.drain(consumer, BATCH).records < BATCH {
                    break;
                }
            }
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
        }
    }
}
