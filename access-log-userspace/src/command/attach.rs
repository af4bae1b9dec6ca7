//! `access-log attach`: follow a gateway live and write its events.
use std::path::PathBuf;

use super::{live::Live, EventArgs, EventConsumer, TargetArgs};

pub fn run(
    target: &TargetArgs,
    events: &EventArgs,
    output: Option<&PathBuf>,
) -> anyhow::Result<()> {
    // The catalog and the output are checked before anything is attached.
    events.catalog()?;
    let sink = events.sink(output)?;
    let mut live = Live::start(target)?;
    let mut consumer = EventConsumer::new(events, live.session.clock, sink)?;
    let outcome = live.run(&mut consumer);
    consumer.finish()?;
    eprintln!(
        "summary: {}; kernel: {}",
        consumer.summary(),
        live.session.drops_summary()
    );
    live.report_run_time();
    outcome.report();
    Ok(())
}
