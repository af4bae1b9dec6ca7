//! `access-log record`: the raw kernel records of a live session to a capture file.
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use anyhow::Context as _;

use super::{live::Live, TargetArgs};
use crate::{
    event::redact::Redactor,
    kernel::{capture_file::Writer, Clock, ConnectionKey, Direction, Endpoint, RecordConsumer},
};

pub fn run(target: &TargetArgs, output: &Path, redactor: Redactor) -> anyhow::Result<()> {
    let file = create(output)?;
    let mut live = Live::start(target)?;
    let mut consumer = CaptureConsumer::new(file, live.session.clock, redactor)
        .with_context(|| format!("writing {}", output.display()))?;
    let outcome = live.run(&mut consumer);
    let records = consumer
        .finish()
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "summary: {records} records written to {}; kernel: {}",
        output.display(),
        live.session.drops_summary()
    );
    live.report_run_time();
    outcome.report();
    Ok(())
}

/// Creates (or replaces) a capture file, before anything is attached.
pub(super) fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    File::create(path)
        .map(BufWriter::new)
        .with_context(|| format!("cannot create capture file {}", path.display()))
}

/// Writes what it receives to the capture file; the first write error stops the writing.
pub(super) struct CaptureConsumer<W: Write> {
    writer: Writer<W>,
    /// Masks credential parameters in the captured bytes before they are written.
    redactor: Redactor,
    masked: Vec<u8>,
    /// Connections (process, descriptor) whose last captured slice ended inside a credential
    /// header line: the next slice's first line is masked whole.
    inside_credential: std::collections::HashSet<(u32, i32)>,
    records: u64,
    failed: Option<std::io::Error>,
}

impl<W: Write> CaptureConsumer<W> {
    pub(super) fn new(out: W, clock: Clock, redactor: Redactor) -> std::io::Result<Self> {
        Ok(CaptureConsumer {
            writer: Writer::new(out, clock)?,
            redactor,
            masked: Vec::new(),
            inside_credential: std::collections::HashSet::new(),
            records: 0,
            failed: None,
        })
    }

    /// Flushes the file; the number of records written, or the first write error.
    pub(super) fn finish(mut self) -> std::io::Result<u64> {
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        self.writer.flush()?;
        Ok(self.records)
    }

    fn keep(&mut self, result: std::io::Result<()>) {
        if let Err(error) = result {
            self.failed.get_or_insert(error);
        }
    }
}

impl<W: Write> RecordConsumer for CaptureConsumer<W> {
    fn existing(&mut self, key: ConnectionKey, direction: Direction, remote: Option<Endpoint>) {
        if self.failed.is_none() {
            let result = self.writer.existing(key, direction, remote.as_ref());
            self.keep(result);
        }
    }

    fn peer(&mut self, key: ConnectionKey, remote: Endpoint) {
        if self.failed.is_none() {
            let result = self.writer.peer(key, &remote);
            self.keep(result);
        }
    }

    fn record(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            const HEADER: usize = size_of::<access_log_common::RecordHeader>();
            self.masked.clear();
            self.masked.extend_from_slice(bytes);
            if let Ok(header) = crate::kernel::record::read_header(bytes) {
                if header.kind == access_log_common::kind::DATA && self.masked.len() > HEADER {
                    let connection = (header.tgid, header.fd);
                    let inside = self.inside_credential.remove(&connection);
                    let payload = &mut self.masked[HEADER..];
                    self.redactor.mask(payload);
                    if self.redactor.mask_credentials(payload, inside) {
                        self.inside_credential.insert(connection);
                    }
                }
            }
            let result = self.writer.record(&self.masked);
            if result.is_ok() {
                self.records += 1;
            }
            self.keep(result);
        }
    }

    fn batch_done(&mut self) {}
}
