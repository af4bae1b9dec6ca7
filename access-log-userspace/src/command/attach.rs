//! `access-log attach`: follow a gateway live and write its events (and, when asked, the raw
//! records behind them, to replay later).
use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::{
    live::Live,
    record::{self, CaptureConsumer},
    EventArgs, EventConsumer, TargetArgs,
};
use crate::{
    kernel::{ConnectionKey, Direction, Endpoint, KernelDrops, RecordConsumer},
    sink::{metrics::MetricsListener, syslog::SyslogSink},
};

pub fn run(
    target: &TargetArgs,
    events: &EventArgs,
    output: Option<&PathBuf>,
    save_records: Option<&Path>,
) -> anyhow::Result<()> {
    // The catalogs and the outputs are checked before anything is attached.
    events.catalog()?;
    events.identities()?;
    let sink = events.sink(output)?;
    let syslog = events.syslog()?;
    let metrics = events.metrics()?;
    let capture_file = save_records
        .map(|path| record::create(path).map(|file| (file, path)))
        .transpose()?;
    let mut live = Live::start(target)?;
    let syslog = syslog.map(SyslogSink::start);
    let metrics = metrics
        .map(MetricsListener::start)
        .transpose()
        .context("serving metrics")?;
    let mut consumer = EventConsumer::new(events, live.session.clock, sink)?
        .reopening(output, events)
        .forwarding(syslog)
        .counting(metrics)
        .with_status_line(std::io::stderr().is_terminal());
    let mut saved = String::new();
    let outcome = match capture_file {
        Some((file, path)) => {
            // The capture masks credentials as the events redact them.
            let mut capture = CaptureConsumer::new(file, live.session.clock, events.redactor())
                .with_context(|| format!("writing {}", path.display()))?;
            let outcome = live.run(&mut Tee {
                events: &mut consumer,
                capture: &mut capture,
            });
            let records = capture
                .finish()
                .with_context(|| format!("writing {}", path.display()))?;
            saved = format!("; {records} records saved to {}", path.display());
            outcome
        }
        None => live.run(&mut consumer),
    };
    consumer.finish()?;
    eprintln!(
        "summary: {}{saved}; kernel: {}",
        consumer.summary(),
        live.session.drops_summary()
    );
    live.report_run_time();
    outcome.report();
    Ok(())
}

/// Hands every record to the event pipeline and to a capture file, in the same order: the
/// file replays to the events printed.
struct Tee<'a, C: RecordConsumer> {
    events: &'a mut EventConsumer,
    capture: &'a mut C,
}

impl<C: RecordConsumer> RecordConsumer for Tee<'_, C> {
    fn existing(&mut self, key: ConnectionKey, direction: Direction, remote: Option<Endpoint>) {
        self.capture.existing(key, direction, remote.clone());
        self.events.existing(key, direction, remote);
    }

    fn peer(&mut self, key: ConnectionKey, remote: Endpoint) {
        self.capture.peer(key, remote.clone());
        self.events.peer(key, remote);
    }

    fn record(&mut self, bytes: &[u8]) {
        self.capture.record(bytes);
        self.events.record(bytes);
    }

    fn batch_done(&mut self) {
        self.capture.batch_done();
        self.events.batch_done();
    }

    fn tick(&mut self, now_ns: u64, drops: &KernelDrops) {
        self.capture.tick(now_ns, drops);
        self.events.tick(now_ns, drops);
    }

    /// The capture file is one stream from its header on: only the event outputs reopen.
    fn reopen_outputs(&mut self) {
        self.events.reopen_outputs();
    }
}
