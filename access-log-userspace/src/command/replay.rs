//! `access-log replay`: a capture file into events, offline and without privileges.
use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::{EventArgs, EventConsumer};
use crate::{
    kernel::capture_file::{self, Entry, Reader},
    sink::syslog::SyslogSink,
};

pub fn run(file: &Path, events: &EventArgs, output: Option<&PathBuf>) -> anyhow::Result<()> {
    let input = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut reader = Reader::new(BufReader::new(input))
        .with_context(|| format!("cannot replay {}", file.display()))?;
    let clock = match reader.next_entry() {
        Ok(Some(Entry::Clock(clock))) => clock,
        _ => anyhow::bail!(
            "{}: the file does not start with its clock entry",
            file.display()
        ),
    };
    let mut consumer = EventConsumer::new(events, clock, events.sink(output)?)?
        .forwarding(events.syslog()?.map(SyslogSink::start));
    let result = capture_file::replay(&mut reader, &mut consumer);
    consumer.finish()?;
    eprintln!("summary: {}", consumer.summary());
    result.with_context(|| {
        format!(
            "{} ends early; the events before the break were written",
            file.display()
        )
    })
}
