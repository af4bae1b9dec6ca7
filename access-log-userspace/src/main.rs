//! `access-log`: a passive access log for API gateways. Attaches to a gateway by PID, follows
//! its sockets with eBPF and prints INCOMING_REQUEST, REQUEST_COMPLETE and ERROR events.
use std::{
    collections::HashMap,
    fs::OpenOptions,
    io::{self, BufWriter, IsTerminal as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

use access_log::{
    catalog::Catalog,
    format::{Format, Sink, WriterSink},
    pipeline::{Clock, Pipeline, PipelineConfig},
    probe::{self, ProbeConfig, Probes},
    procfs, record, tls,
};

#[derive(Parser)]
#[command(name = "access-log", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to a running gateway and log every API call it handles.
    ///
    /// Example: access-log attach --pid $(cat /run/nginx.pid) --apis apis.toml
    Attach(AttachArgs),
}

#[derive(clap::Args)]
struct AttachArgs {
    /// PID of the gateway (its master process: workers are followed too).
    #[arg(long)]
    pid: u32,
    /// Output format [default: pretty on a terminal, kv otherwise].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Append events to this file instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
    /// API catalog (TOML: [[api]] name, version, context, provider) naming each API.
    #[arg(long)]
    apis: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C or SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    /// Bytes copied from each socket read or write (the head of it; at most 4096).
    #[arg(long, default_value_t = access_log_common::DEFAULT_CAPTURE,
          value_parser = clap::value_parser!(u32).range(64..=access_log_common::MAX_CAPTURE as i64))]
    capture_bytes: u32,
    /// A header whose value, seen on both the client's request and the backend request,
    /// links them exactly (repeatable).
    #[arg(long = "id-header", default_values_t = ["x-request-id".to_string(), "traceparent".to_string()])]
    id_header: Vec<String>,
    /// Size of the kernel ring buffer in bytes (a power of two, at least a page).
    #[arg(long, default_value_t = 8 << 20)]
    ring_bytes: u32,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach(args) => attach(args),
    };
    if let Err(error) = result {
        eprintln!("access-log: error: {error:#}");
        std::process::exit(1);
    }
}

fn clock() -> Clock {
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

fn attach(args: AttachArgs) -> anyhow::Result<()> {
    if !args.ring_bytes.is_power_of_two() || args.ring_bytes < 4096 {
        anyhow::bail!(
            "--ring-bytes {} must be a power of two of at least 4096",
            args.ring_bytes
        );
    }
    let catalog = match &args.apis {
        Some(path) => Catalog::load(path)?,
        None => Catalog::default(),
    };
    procfs::check_process(args.pid)?;
    probe::check_privileges()?;
    if procfs::ensure_tracefs()? {
        eprintln!("access-log: mounted tracefs at {}", procfs::TRACEFS);
    }
    let mut sink: Box<dyn Sink> = match &args.output {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            Box::new(WriterSink::new(
                BufWriter::new(file),
                args.format.unwrap_or(Format::Kv),
                false,
            ))
        }
        None => {
            let terminal = io::stdout().is_terminal();
            let format = args
                .format
                .unwrap_or(if terminal { Format::Pretty } else { Format::Kv });
            let color = terminal && std::env::var_os("NO_COLOR").is_none();
            Box::new(WriterSink::new(BufWriter::new(io::stdout()), format, color))
        }
    };

    let mut probes = Probes::load(&ProbeConfig {
        capture_bytes: args.capture_bytes,
        ring_bytes: args.ring_bytes,
    })?;
    let mut pipeline = Pipeline::new(PipelineConfig {
        catalog,
        clock: clock(),
        id_headers: args.id_header.clone(),
    });
    // Root first: from here on the kernel adds every child forked; then the children that
    // exist already, then the sockets they already hold.
    probes.watch(args.pid)?;
    let tree = procfs::process_tree(args.pid);
    for pid in &tree {
        probes.watch(*pid)?;
    }
    let tls_scan = tls::scan(&tree);
    let mut tls_probes = 0;
    for target in &tls_scan.targets {
        tls_probes += probes.attach_tls(target)?;
    }
    for (pid, kind) in &tls_scan.unreadable {
        eprintln!(
            "access-log: PID {pid} is {kind}; its encrypted connections are counted, not read"
        );
    }
    let existing = procfs::existing_sockets(&tree);
    for socket in &existing {
        probes.follow_socket(socket.pid, socket.fd, socket.direction)?;
        pipeline.add_existing(
            (socket.pid, socket.fd),
            socket.direction,
            Some(socket.remote),
        );
    }
    let tls_read = if tls_scan.targets.is_empty() {
        "no TLS library found".to_owned()
    } else {
        let names: Vec<&str> = tls_scan.targets.iter().map(|t| t.shown.as_str()).collect();
        format!("TLS read in {} ({tls_probes} uprobes)", names.join(", "))
    };
    eprintln!(
        "attached: PID {} ({} processes, {} open connections), {} probes, {tls_read}, capturing {} bytes per call",
        args.pid,
        tree.len(),
        existing.len(),
        probes.attached,
        args.capture_bytes
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let outcome = runtime.block_on(run(
        &mut probes,
        &mut pipeline,
        sink.as_mut(),
        args.pid,
        args.duration,
    ));
    sink.flush().context("flushing events")?;
    let stats = pipeline.stats();
    let drops = probes.drops();
    eprintln!(
        "summary: {} INCOMING_REQUEST, {} REQUEST_COMPLETE, {} ERROR; kernel drops: {} (ring full {}, socket table full {}, call table full {}, unreadable buffers {}, children not watched {}); undecodable records {}; outbound requests not linked {}; low-confidence pairings {}; encrypted connections not read {}; TLS calls without a socket {}",
        stats.incoming,
        stats.complete,
        stats.errors,
        drops.records_lost(),
        drops.ring_full,
        drops.socket_table_full,
        drops.call_table_full,
        drops.read_failed,
        drops.watch_table_full,
        outcome.undecodable,
        stats.unlinked_outbound,
        stats.low_confidence,
        stats.tls_unreadable,
        drops.tls_socket_unknown,
    );
    if let Some(reason) = outcome.stopped_because {
        eprintln!("access-log: {reason}");
    }
    Ok(())
}

struct RunOutcome {
    undecodable: u64,
    stopped_because: Option<String>,
}

async fn run(
    probes: &mut Probes,
    pipeline: &mut Pipeline,
    sink: &mut dyn Sink,
    root: u32,
    duration: Option<f64>,
) -> RunOutcome {
    let mut outcome = RunOutcome {
        undecodable: 0,
        stopped_because: None,
    };
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        outcome.stopped_because = Some("cannot install signal handlers".into());
        return outcome;
    };
    let deadline = tokio::time::sleep(Duration::from_secs_f64(duration.unwrap_or(1e9)));
    tokio::pin!(deadline);
    // The kernel side does not wake us per record; a short tick batches the ring's records.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut decode_errors: HashMap<String, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let exited = drain(probes, pipeline, sink, root, &mut outcome, &mut decode_errors);
                if exited {
                    outcome.stopped_because = Some(format!("the gateway (PID {root}) exited"));
                    break;
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = &mut deadline => break,
        }
    }
    drain(
        probes,
        pipeline,
        sink,
        root,
        &mut outcome,
        &mut decode_errors,
    );
    for (error, count) in decode_errors {
        eprintln!("access-log: {count} records undecodable: {error}");
    }
    outcome
}

/// Moves every waiting record through the pipeline into the sink. Returns whether the root
/// process exited.
fn drain(
    probes: &mut Probes,
    pipeline: &mut Pipeline,
    sink: &mut dyn Sink,
    root: u32,
    outcome: &mut RunOutcome,
    decode_errors: &mut HashMap<String, u64>,
) -> bool {
    let mut events = Vec::new();
    let mut root_exited = false;
    probes.drain(|bytes| match record::decode(bytes) {
        Ok(mut record) => {
            if let record::Record::Accept {
                header,
                remote: remote @ None,
            } = &mut record
            {
                *remote = procfs::socket_peer(header.tgid, header.fd);
            }
            if matches!(record, record::Record::Exit { header } if header.tgid == root) {
                root_exited = true;
            }
            pipeline.process(&record, &mut events);
        }
        Err(error) => {
            outcome.undecodable += 1;
            *decode_errors.entry(error.to_string()).or_default() += 1;
        }
    });
    let mut failed = None;
    for event in &events {
        if let Err(error) = sink.write_event(event) {
            failed = Some(error);
        }
    }
    if !events.is_empty() {
        if let Err(error) = sink.flush() {
            failed = Some(error);
        }
    }
    if let Some(error) = failed {
        eprintln!("access-log: writing events failed: {error}");
    }
    root_exited
}
