//! `access-log`: a passive access log for API gateways. Attaches to a gateway by PID, follows
//! its sockets with eBPF and prints INCOMING_REQUEST, REQUEST_COMPLETE and ERROR events; records
//! the raw kernel records to a file; replays such a file offline.
mod live;

use std::{
    fs::{File, OpenOptions},
    io::{self, BufReader, BufWriter, IsTerminal as _},
    path::PathBuf,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use access_log::{
    catalog::Catalog,
    format::{Format, Sink, WriterSink},
    pipeline::{Clock, Pipeline, PipelineConfig, PipelineStats},
    record,
    recording::{self, Entry},
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
    Attach {
        #[command(flatten)]
        target: live::TargetArgs,
        #[command(flatten)]
        events: EventArgs,
        /// Append events to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Record the raw kernel records of a gateway to a file, for `replay`.
    ///
    /// Example: access-log record --pid 1234 --output capture.alrec --duration 60
    Record {
        #[command(flatten)]
        target: live::TargetArgs,
        /// The record file to write (replaced if it exists).
        #[arg(long)]
        output: PathBuf,
    },
    /// Turn a record file into events, offline and without privileges.
    ///
    /// Example: access-log replay capture.alrec --format json
    Replay {
        /// A file written by `access-log record`.
        file: PathBuf,
        #[command(flatten)]
        events: EventArgs,
        /// Append events to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// How records become events and how they are written.
#[derive(clap::Args)]
struct EventArgs {
    /// Output format [default: pretty on a terminal, kv otherwise].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// API catalog (TOML: [[api]] name, version, context, provider) naming each API.
    #[arg(long)]
    apis: Option<PathBuf>,
    /// A header whose value, seen on both the client's request and the backend request,
    /// links them exactly (repeatable).
    #[arg(long = "id-header", default_values_t = ["x-request-id".to_string(), "traceparent".to_string()])]
    id_header: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach {
            target,
            events,
            output,
        } => attach(target, events, output),
        Command::Record { target, output } => live::record(&target, &output),
        Command::Replay {
            file,
            events,
            output,
        } => replay(&file, events, output),
    };
    if let Err(error) = result {
        eprintln!("access-log: error: {error:#}");
        std::process::exit(1);
    }
}

fn catalog(args: &EventArgs) -> anyhow::Result<Catalog> {
    Ok(match &args.apis {
        Some(path) => Catalog::load(path)?,
        None => Catalog::default(),
    })
}

fn pipeline(args: &EventArgs, catalog: Catalog, clock: Clock) -> Pipeline {
    Pipeline::new(PipelineConfig {
        catalog,
        clock,
        id_headers: args.id_header.clone(),
    })
}

fn sink(args: &EventArgs, output: Option<&PathBuf>) -> anyhow::Result<Box<dyn Sink>> {
    Ok(match output {
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
    })
}

fn events_summary(stats: &PipelineStats) -> String {
    format!(
        "{} INCOMING_REQUEST, {} REQUEST_COMPLETE, {} ERROR",
        stats.incoming, stats.complete, stats.errors
    )
}

fn pipeline_summary(stats: &PipelineStats, undecodable: u64) -> String {
    format!(
        "undecodable records {undecodable}; outbound requests not linked {}; low-confidence \
         pairings {}; encrypted connections not read {}; reads drained by a closing gateway {}; \
         connections left alone (not HTTP/1) {}; unreadable requests {}",
        stats.unlinked_outbound,
        stats.low_confidence,
        stats.tls_unreadable,
        stats.drained_reads,
        stats.opaque_connections,
        stats.unreadable_requests
    )
}

fn attach(
    target: live::TargetArgs,
    args: EventArgs,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let catalog = catalog(&args)?;
    let sink = sink(&args, output.as_ref())?;
    let mut session = live::Session::start(&target)?;
    let mut pipeline = pipeline(&args, catalog, session.clock);
    for (key, direction, remote) in &session.existing {
        pipeline.add_existing(*key, *direction, *remote);
    }
    let mut consumer = EventConsumer {
        pipeline,
        sink,
        events: Vec::new(),
        undecodable: 0,
        write_failures: 0,
    };
    let outcome = session.run(&mut consumer)?;
    let EventConsumer {
        pipeline,
        mut sink,
        undecodable,
        write_failures,
        ..
    } = consumer;
    sink.flush().context("flushing events")?;
    let stats = pipeline.stats();
    eprintln!(
        "summary: {}; kernel drops: {}; {}; events not written {write_failures}",
        events_summary(stats),
        session.drops_summary(),
        pipeline_summary(stats, undecodable)
    );
    session.report_run_time();
    outcome.report();
    Ok(())
}

fn replay(file: &PathBuf, args: EventArgs, output: Option<PathBuf>) -> anyhow::Result<()> {
    let catalog = catalog(&args)?;
    let input = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut reader = recording::Reader::new(BufReader::new(input))
        .with_context(|| format!("cannot replay {}", file.display()))?;
    let clock = match reader.next_entry() {
        Ok(Some(Entry::Clock(clock))) => clock,
        _ => anyhow::bail!(
            "{}: the file does not start with its clock entry",
            file.display()
        ),
    };
    let mut consumer = EventConsumer {
        pipeline: pipeline(&args, catalog, clock),
        sink: sink(&args, output.as_ref())?,
        events: Vec::new(),
        undecodable: 0,
        write_failures: 0,
    };
    let mut failure = None;
    let mut entries = 0u64;
    loop {
        let entry = match reader.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(error) => {
                failure = Some(error);
                break;
            }
        };
        match entry {
            Entry::Clock(_) => {}
            Entry::Existing {
                key,
                direction,
                remote,
            } => consumer.pipeline.add_existing(key, direction, remote),
            Entry::Record(bytes) => live::Consumer::record(&mut consumer, &bytes),
        }
        entries += 1;
        if entries.is_multiple_of(4096) {
            live::Consumer::batch_done(&mut consumer);
        }
    }
    live::Consumer::batch_done(&mut consumer);
    consumer.sink.flush().context("flushing events")?;
    let stats = consumer.pipeline.stats();
    eprintln!(
        "summary: {}; {}; events not written {}; still tracked: {} connections, {} requests",
        events_summary(stats),
        pipeline_summary(stats, consumer.undecodable),
        consumer.write_failures,
        consumer.pipeline.tracked().0,
        consumer.pipeline.tracked().1
    );
    if let Some(error) = failure {
        return Err(anyhow::Error::new(error).context(format!(
            "{} ends early; the events before the break were written",
            file.display()
        )));
    }
    Ok(())
}

/// Live records → pipeline → events → sink.
struct EventConsumer {
    pipeline: Pipeline,
    sink: Box<dyn Sink>,
    events: Vec<access_log::event::Event>,
    undecodable: u64,
    write_failures: u64,
}

impl live::Consumer for EventConsumer {
    fn record(&mut self, bytes: &[u8]) {
        match record::decode(bytes) {
            Ok(record) => self.pipeline.process(&record, &mut self.events),
            Err(_) => self.undecodable += 1,
        }
        for event in self.events.drain(..) {
            if let Err(error) = self.sink.write_event(&event) {
                self.write_failures += 1;
                if self.write_failures == 1 {
                    eprintln!("access-log: writing events failed: {error}");
                }
            }
        }
    }

    /// Flushes what the batch wrote, so a reader of the terminal or file sees it now.
    fn batch_done(&mut self) {
        if let Err(error) = self.sink.flush() {
            eprintln!("access-log: writing events failed: {error}");
        }
    }
}
