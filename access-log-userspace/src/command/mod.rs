//! The subcommands, one file each, and what they share: the arguments that pick a gateway and
//! say how much to copy (`TargetArgs`), those that say how records become events
//! (`EventArgs`), and the consumer that runs records through the pipeline, the event builder
//! and a sink (`EventConsumer`).
#[cfg(feature = "kernel")]
pub mod attach;
pub mod keys;
#[cfg(feature = "kernel")]
pub mod live;
#[cfg(feature = "kernel")]
pub mod record;
pub mod replay;
pub mod report;
pub mod top;

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, IsTerminal as _},
    path::PathBuf,
    sync::Arc,
};

use anyhow::Context as _;

use crate::{
    event::{
        catalog::Catalog,
        classify::CREDENTIAL_HEADERS,
        identity::{Identities, KeyCatalog},
        loss::LossLedger,
        redact::Redactor,
        Event, EventBuilder, EventCounts,
    },
    kernel::{
        record::decode, Clock, ConnectionKey, Direction, Endpoint, KernelDrops, RecordConsumer,
    },
    pipeline::{Bounds, Outcome, Pipeline, PipelineConfig, PipelineStats},
    protocol::credential::DEFAULT_KEY_HEADERS,
    sink::{
        self,
        metrics::{Metrics, MetricsListener, MetricsSink, RunGauges},
        syslog::{Receiver5424, SyslogSink, SyslogStats},
        Format, Sink,
    },
};

/// Which gateway to attach to and how much of its traffic to copy.
#[derive(clap::Args, Clone, Debug)]
pub struct TargetArgs {
    /// PID of the gateway (its master process: workers are followed too). When it exits, a
    /// watched process that outlives it (the new master of nginx's binary upgrade) is
    /// followed on; when none does, the run ends.
    #[arg(long, required_unless_present = "pidfile", conflicts_with = "pidfile")]
    pub pid: Option<u32>,
    /// The gateway's pid file (nginx's `pid` directive): the process it names is followed, and
    /// when that process exits the file is read again until it names the next one (a restart
    /// or a binary upgrade is followed on; the run ends only when told to).
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C or SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<f64>,
    /// Bytes copied from each socket read or write carrying requests (the head of it; at most
    /// 4096; a read of pipelined requests is copied further, up to 16 KiB).
    #[arg(long, default_value_t = access_log_common::DEFAULT_CAPTURE,
          value_parser = clap::value_parser!(u32).range(64..=access_log_common::MAX_CAPTURE as i64))]
    pub capture_bytes: u32,
    /// Bytes copied from each read or write carrying responses: the status line and the framing
    /// headers (a longer head loses its framing until the next response; at most 4096).
    #[arg(long, default_value_t = access_log_common::DEFAULT_RESPONSE_CAPTURE,
          value_parser = clap::value_parser!(u32).range(64..=access_log_common::MAX_CAPTURE as i64))]
    pub response_capture_bytes: u32,
    /// Size of the kernel ring buffer in bytes (a power of two, at least a page).
    #[arg(long, default_value_t = 8 << 20)]
    pub ring_bytes: u32,
    /// Measure the kernel programs' run time and print it at exit (`bpf: ...`).
    #[arg(long)]
    pub bpf_stats: bool,
    /// Once attached, run as this user (with only the capabilities the run still needs, which
    /// it keeps in every case).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

impl TargetArgs {
    /// The process to attach to first.
    pub fn initial_pid(&self) -> Result<u32, crate::kernel::procfs::ProcError> {
        match (&self.pidfile, self.pid) {
            (Some(file), _) => crate::kernel::procfs::read_pid_file(file),
            (None, Some(pid)) => Ok(pid),
            // clap requires one of them.
            (None, None) => Err(crate::kernel::procfs::ProcError::NoSuchProcess(0)),
        }
    }
}

/// A positive, finite number of seconds.
fn parse_duration(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 1e9 {
        return Err(format!(
            "{text} is not a positive, finite number of seconds"
        ));
    }
    Ok(seconds)
}

/// Whether to color what a person reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Color or not, for an output that is (or is not) a terminal: `auto` follows NO_COLOR
    /// (https://no-color.org) and the terminal.
    pub fn enabled(self, terminal: bool) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

/// How records become events and how they are written.
#[derive(clap::Args, Clone, Debug)]
pub struct EventArgs {
    /// Output format [default: pretty on a terminal, kv otherwise].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Color in the pretty format and in top: auto (on a terminal, unless NO_COLOR is set),
    /// always or never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// API catalog (TOML: [[api]] name, version, context, provider) naming each API.
    #[arg(long)]
    pub apis: Option<PathBuf>,
    /// A header whose value, seen on both the client's request and the backend request,
    /// links them exactly (repeatable).
    #[arg(long = "id-header", default_values_t = ["x-request-id".to_string(), "traceparent".to_string()])]
    pub id_header: Vec<String>,
    /// API-key catalog (TOML: [[key]] fingerprint, application, optional user) naming the
    /// caller of a request that presents a listed key; `access-log keys fingerprint` prints a
    /// key's fingerprint, so no key is stored in clear.
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
    /// Also read API keys from this header (repeatable; added to apikey, x-api-key, api-key).
    #[arg(long = "api-key-header", value_name = "NAME")]
    pub api_key_header: Vec<String>,
    /// JWT claim naming the application (repeatable, the first present wins; replaces
    /// http://wso2.org/claims/applicationname, azp, client_id).
    #[arg(long = "application-claim", value_name = "CLAIM")]
    pub application_claim: Vec<String>,
    /// JWT claim naming the end user (repeatable, the first present wins; replaces
    /// http://wso2.org/claims/enduser, sub).
    #[arg(long = "user-claim", value_name = "CLAIM")]
    pub user_claim: Vec<String>,
    /// Also redact the value of this query parameter (repeatable; added to access_token,
    /// api_key, apikey, key, token, password, secret, client_secret, signature, sig, code).
    #[arg(long = "redact-query", value_name = "NAME")]
    pub redact_query: Vec<String>,
    /// Write query strings as received, credentials included.
    #[arg(long)]
    pub no_redact: bool,
    /// Forget a connection with no traffic for this many seconds, and a request waiting this
    /// long (its end becomes a LOST event, "state evicted").
    #[arg(long, value_name = "SECS", default_value_t = 900.0, value_parser = parse_duration)]
    pub idle_timeout: f64,
    /// Connections followed at most (beyond, the least recently active are forgotten).
    #[arg(long, value_name = "N", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Requests waiting at most (beyond, the oldest are forgotten).
    #[arg(long, value_name = "N", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests: u32,
    /// Also send every event to this syslog receiver, as an RFC 5424 message carrying the kv
    /// line: udp://HOST:PORT, tcp://HOST:PORT (octet-counted frames) or unix:///PATH. A slow or
    /// absent receiver never holds capture up: a bounded queue, drops counted, reconnects.
    #[arg(long, value_name = "URL")]
    pub syslog: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (requests by API, event and status
    /// class, backend latency, errors, losses and kernel drops; e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

impl EventArgs {
    pub fn catalog(&self) -> anyhow::Result<Catalog> {
        Ok(match &self.apis {
            Some(path) => Catalog::load(path)?,
            None => Catalog::default(),
        })
    }

    /// The syslog receiver, when one is asked for (its URL checked before anything is
    /// attached; the forwarder thread starts once privileges are dropped).
    pub fn syslog(&self) -> anyhow::Result<Option<Receiver5424>> {
        Ok(self
            .syslog
            .as_deref()
            .map(Receiver5424::parse)
            .transpose()?)
    }

    /// The metrics' address when `--metrics` asks for them, bound now: an address in use is
    /// an error before anything is attached.
    pub fn metrics(&self) -> anyhow::Result<Option<MetricsListener>> {
        let Some(address) = self.metrics else {
            return Ok(None);
        };
        MetricsListener::bind(address)
            .map(Some)
            .with_context(|| format!("cannot serve metrics on {address}"))
    }

    pub fn redactor(&self) -> Redactor {
        Redactor::new(!self.no_redact, &self.redact_query).with_key_headers(&self.api_key_header)
    }

    /// Who calls, from JWT claims and the key catalog (read now: a bad catalog stops the run
    /// before anything is attached).
    pub fn identities(&self) -> anyhow::Result<Identities> {
        let keys = match &self.keys {
            Some(path) => KeyCatalog::load(path)?,
            None => KeyCatalog::default(),
        };
        Ok(Identities::new(
            self.application_claim.clone(),
            self.user_claim.clone(),
            keys,
        ))
    }

    fn pipeline(&self) -> Pipeline {
        let key_headers: Vec<String> = DEFAULT_KEY_HEADERS
            .iter()
            .map(|h| (*h).to_owned())
            .chain(self.api_key_header.iter().cloned())
            .collect();
        Pipeline::new(PipelineConfig {
            id_headers: self.id_header.clone(),
            noted_headers: CREDENTIAL_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .chain(self.api_key_header.iter().cloned())
                .collect(),
            key_headers,
            bounds: Bounds {
                idle_ns: (self.idle_timeout * 1e9) as u64,
                max_connections: self.max_connections as usize,
                max_requests: self.max_requests as usize,
            },
        })
    }

    /// The sink for `--output FILE` (appended, kv unless told) or standard output (pretty on
    /// a terminal).
    pub fn sink(&self, output: Option<&PathBuf>) -> anyhow::Result<Box<dyn Sink>> {
        Ok(match output {
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open log file {}", path.display()))?;
                sink::open(
                    self.format.unwrap_or(Format::Kv),
                    BufWriter::new(file),
                    self.color.enabled(false),
                )
            }
            None => {
                let terminal = io::stdout().is_terminal();
                let format =
                    self.format
                        .unwrap_or(if terminal { Format::Pretty } else { Format::Kv });
                sink::open(
                    format,
                    BufWriter::new(io::stdout()),
                    self.color.enabled(terminal),
                )
            }
        })
    }
}

/// Records → pipeline → outcomes → events → sink.
pub struct EventConsumer {
    pipeline: Pipeline,
    builder: EventBuilder,
    sink: Box<dyn Sink>,
    losses: LossLedger,
    /// Kernel calls not captured, as last told: the ledger gets each rise.
    not_captured: u64,
    /// A status line on stderr, rewritten every second (stderr is a terminal).
    status_line: bool,
    /// The output file and how to write it, reopened on SIGHUP.
    reopen: Option<(PathBuf, EventArgs)>,
    /// Every event also goes to a syslog receiver.
    syslog: Option<SyslogSink>,
    syslog_stats: Option<Arc<SyslogStats>>,
    /// Every event also counts in the metrics served at `--metrics`.
    metrics: Option<MetricsSink>,
    outcomes: Vec<Outcome>,
    undecodable: u64,
    write_failures: u64,
}

impl EventConsumer {
    pub fn new(args: &EventArgs, clock: Clock, sink: Box<dyn Sink>) -> anyhow::Result<Self> {
        Ok(EventConsumer {
            pipeline: args.pipeline(),
            builder: EventBuilder::new(args.catalog()?, clock, args.redactor())
                .with_identities(args.identities()?),
            sink,
            losses: LossLedger::default(),
            not_captured: 0,
            status_line: false,
            reopen: None,
            syslog: None,
            syslog_stats: None,
            metrics: None,
            outcomes: Vec::new(),
            undecodable: 0,
            write_failures: 0,
        })
    }

    /// Also sends every event to a syslog receiver.
    pub fn forwarding(mut self, syslog: Option<SyslogSink>) -> Self {
        self.syslog_stats = syslog.as_ref().map(SyslogSink::stats);
        self.syslog = syslog;
        self
    }

    /// Also keeps every event in these metrics.
    pub fn counting(mut self, metrics: Option<Metrics>) -> Self {
        self.metrics = metrics.map(MetricsSink);
        self
    }

    /// Rewrites a status line on stderr every second (for a person at a terminal).
    pub fn with_status_line(mut self, enabled: bool) -> Self {
        self.status_line = enabled;
        self
    }

    /// Reopens `path` (the sink's file) when told to: a log rotator renamed it.
    pub fn reopening(mut self, path: Option<&PathBuf>, args: &EventArgs) -> Self {
        self.reopen = path.map(|path| (path.clone(), args.clone()));
        self
    }

    /// Events for the outcomes waiting; losses go to the ledger, which reports them at most
    /// once a second.
    fn write_outcomes(&mut self) {
        let mut outcomes = std::mem::take(&mut self.outcomes);
        for outcome in outcomes.drain(..) {
            if let Outcome::Lost(loss) = &outcome {
                self.losses.add(loss);
                self.report_losses(loss.at);
                continue;
            }
            let event = self.builder.event(&outcome);
            self.emit(&event);
        }
        self.outcomes = outcomes;
    }

    fn emit(&mut self, event: &Event) {
        if let Some(syslog) = &mut self.syslog {
            let _ = syslog.write_event(event);
        }
        if let Some(metrics) = &mut self.metrics {
            let _ = metrics.write_event(event);
        }
        if let Err(error) = self.sink.write_event(event) {
            self.write_failures += 1;
            if self.write_failures == 1 {
                eprintln!("access-log: writing events failed: {error}");
            }
        }
    }

    /// The LOST event of what the ledger holds, when one is due at `now`.
    fn report_losses(&mut self, now: u64) {
        if let Some(report) = self.losses.due(now) {
            let event = self.builder.loss_report(&report);
            self.emit(&event);
        }
    }

    /// The end of the run: requests not ended are named in a loss record, and everything is
    /// flushed.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.pipeline.finish(&mut self.outcomes);
        self.write_outcomes();
        if let Some(report) = self.losses.take() {
            let event = self.builder.loss_report(&report);
            self.emit(&event);
        }
        if self.status_line {
            eprintln!();
        }
        // What is queued for syslog goes out now (for a bounded time).
        self.syslog = None;
        self.sink.flush().context("flushing events")
    }

    pub fn counts(&self) -> &EventCounts {
        self.builder.counts()
    }

    pub fn stats(&self) -> &PipelineStats {
        self.pipeline.stats()
    }

    /// The summary's account of events and of what the pipeline set aside.
    pub fn summary(&self) -> String {
        let counts = self.counts();
        let stats = self.stats();
        let syslog = self
            .syslog_stats
            .as_ref()
            .map(|s| format!("; {}", s.summary()))
            .unwrap_or_default();
        format!(
            "{} INCOMING_REQUEST, {} REQUEST_COMPLETE ({} answered by the gateway), {} ERROR, \
             {} LOST naming {} requests; gaps in the kernel's records {} ({} records); \
             HTTP/2 connections {} (frames lost {} times, streams unreadable {}, streams with \
             fields unknown {}); \
             undecodable records {}; outbound requests not linked {}; low-confidence pairings \
             {}; answers with no request seen {}; encrypted connections not read {}; reads \
             drained by a closing gateway {}; connections left alone (neither HTTP/1 nor HTTP/2) {}; \
             unreadable requests {}; records of unknown connections {}; state evicted: {} idle \
             connections, {} connections over the cap, {} requests; events not written \
             {}{syslog}",
            counts.incoming,
            counts.complete,
            counts.answered_by_gateway,
            counts.errors,
            counts.lost,
            counts.requests_lost,
            stats.gaps,
            stats.records_lost,
            stats.http2_connections,
            stats.http2_frames_lost,
            stats.http2_streams_unreadable,
            stats.http2_streams_unknown_fields,
            self.undecodable,
            stats.unlinked_outbound,
            counts.low_confidence,
            stats.unmatched_answers,
            stats.tls_unreadable,
            stats.drained_reads,
            stats.opaque_connections,
            stats.unreadable_requests,
            stats.unknown_connection_records,
            stats.evicted_idle_connections,
            stats.evicted_connections_over_cap,
            stats.evicted_requests,
            self.write_failures,
        )
    }
}

impl RecordConsumer for EventConsumer {
    fn existing(&mut self, key: ConnectionKey, direction: Direction, remote: Option<Endpoint>) {
        self.pipeline.add_existing(key, direction, remote.as_ref());
    }

    fn peer(&mut self, key: ConnectionKey, remote: Endpoint) {
        self.pipeline.add_peer(key, remote);
    }

    fn record(&mut self, bytes: &[u8]) {
        match decode(bytes) {
            Ok(record) => self.pipeline.process(&record, &mut self.outcomes),
            Err(_) => {
                self.undecodable += 1;
                self.losses.undecodable(1, self.pipeline.last_seen());
            }
        }
        self.write_outcomes();
    }

    fn take_http2_found(&mut self) -> Vec<ConnectionKey> {
        self.pipeline.take_http2_found()
    }

    /// Flushes what the batch wrote, so a reader of the terminal or file sees it now.
    fn batch_done(&mut self) {
        if let Err(error) = self.sink.flush() {
            self.write_failures += 1;
            eprintln!("access-log: writing events failed: {error}");
        }
    }

    /// Losses are reported when due, kernel calls not captured since the last tick join them,
    /// and the status line is rewritten.
    fn tick(&mut self, now_ns: u64, drops: &KernelDrops) {
        let not_captured = drops.not_captured();
        if let Some(metrics) = &self.metrics {
            let (connections, requests_in_flight) = self.pipeline.tracked();
            metrics.0.set_run(
                *drops,
                RunGauges {
                    connections: connections as u64,
                    requests_in_flight: requests_in_flight as u64,
                },
            );
        }
        if not_captured > self.not_captured {
            self.losses
                .not_captured(not_captured - self.not_captured, now_ns);
            self.not_captured = not_captured;
        }
        self.report_losses(now_ns);
        self.batch_done();
        if self.status_line {
            let counts = self.counts();
            eprint!(
                "\r\x1b[Kaccess-log: {} requests in, {} complete, {} errors, {} lost; {} in \
                 flight",
                counts.incoming,
                counts.complete,
                counts.errors,
                counts.requests_lost,
                self.pipeline.tracked().1
            );
        }
    }

    /// Everything written so far goes to the old file; from here on, to a file opened anew at
    /// the path. A file that cannot be opened keeps the old one (and says so).
    fn reopen_outputs(&mut self) {
        if self.reopen.is_none() {
            return;
        }
        self.batch_done();
        let Some((path, args)) = &self.reopen else {
            return;
        };
        match args.sink(Some(path)) {
            Ok(sink) => self.sink = sink,
            Err(error) => eprintln!("access-log: {error:#}; still writing to the old file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ColorChoice;

    #[test]
    fn color_follows_the_choice_the_terminal_and_no_color() {
        assert!(ColorChoice::Always.enabled(false));
        assert!(!ColorChoice::Never.enabled(true));
        assert!(!ColorChoice::Auto.enabled(false));
        // NO_COLOR is read from the environment: set only in this test's process for the
        // check, which no other test of this binary reads.
        let before = std::env::var_os("NO_COLOR");
        // SAFETY: no other thread of this test binary reads or writes NO_COLOR.
        unsafe { std::env::set_var("NO_COLOR", "1") };
        let with_no_color = ColorChoice::Auto.enabled(true);
        // SAFETY: as above.
        unsafe {
            match before {
                Some(value) => std::env::set_var("NO_COLOR", value),
                None => std::env::remove_var("NO_COLOR"),
            }
        }
        assert!(!with_no_color);
        assert!(ColorChoice::Always.enabled(true));
    }
}
