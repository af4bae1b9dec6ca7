//! `access-log top`: a live dashboard in the terminal, attached to a gateway or fed by a capture
//! file: per API the request rate, successes, errors of each kind and backend latency; the
//! most recent errors; loss and kernel drops. Keys sort, filter by API, pause and quit.
use std::{
    io::IsTerminal as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ratatui::{
    crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind},
    layout::{Constraint, Layout},
    style::{Modifier, Style, Stylize as _},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row, Table},
    DefaultTerminal, Frame,
};

use super::{EventArgs, EventConsumer};
use crate::{
    kernel::capture_file::{self, Entry, Reader},
    sink::{
        dashboard::{Dashboard, DashboardState, RATE_WINDOW_S},
        metrics::Metrics,
    },
};

#[derive(clap::Args, Clone, Debug)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["pid", "pidfile", "replay"]))]
pub struct TopArgs {
    /// PID of the gateway (its master process).
    #[arg(long)]
    pub pid: Option<u32>,
    /// The gateway's pid file (followed across restarts, as `attach --pidfile` does).
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Show a capture file (`access-log record`) instead of a live gateway.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
    #[command(flatten)]
    pub events: EventArgs,
}

/// What the rows are sorted by; `s` steps through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SortBy {
    Rate,
    Requests,
    Errors,
    P99,
    Name,
}

impl SortBy {
    fn next(self) -> SortBy {
        match self {
            SortBy::Rate => SortBy::Requests,
            SortBy::Requests => SortBy::Errors,
            SortBy::Errors => SortBy::P99,
            SortBy::P99 => SortBy::Name,
            SortBy::Name => SortBy::Rate,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SortBy::Rate => "rate",
            SortBy::Requests => "requests",
            SortBy::Errors => "errors",
            SortBy::P99 => "p99",
            SortBy::Name => "name",
        }
    }
}

/// The screen's own state: sorting, filter, pause.
struct View {
    source: String,
    sort: SortBy,
    filter: String,
    /// Typing a filter (after `/`).
    editing: bool,
    /// The state shown while paused.
    frozen: Option<DashboardState>,
    color: bool,
}

pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("top draws on a terminal: standard output is not one (use attach for a log)");
    }
    let dashboard = Dashboard::default();
    let metrics = Metrics::default();
    let color = args.events.color.enabled(true);
    if let Some(file) = &args.replay {
        let input =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let mut reader = Reader::new(std::io::BufReader::new(input))
            .with_context(|| format!("cannot replay {}", file.display()))?;
        let Ok(Some(Entry::Clock(clock))) = reader.next_entry() else {
            anyhow::bail!(
                "{}: the file does not start with its clock entry",
                file.display()
            );
        };
        let mut consumer = EventConsumer::new(&args.events, clock, Box::new(dashboard.clone()))?;
        let result = capture_file::replay(&mut reader, &mut consumer);
        consumer.finish()?;
        result.with_context(|| format!("{} ends early", file.display()))?;
        let view = View::new(format!("capture {}", file.display()), color);
        return show(dashboard, metrics, view, false);
    }
    live(args, dashboard, metrics, color)
}

#[cfg(feature = "kernel")]
fn live(args: &TopArgs, dashboard: Dashboard, metrics: Metrics, color: bool) -> anyhow::Result<()> {
    let target = super::TargetArgs {
        pid: args.pid,
        pidfile: args.pidfile.clone(),
        duration: None,
        capture_bytes: access_log_common::DEFAULT_CAPTURE,
        response_capture_bytes: access_log_common::DEFAULT_RESPONSE_CAPTURE,
        ring_bytes: 8 << 20,
        bpf_stats: false,
        user: None,
    };
    args.events.catalog()?;
    args.events.identities()?;
    let mut live = super::live::Live::start(&target)?;
    let mut consumer = EventConsumer::new(
        &args.events,
        live.session.clock,
        Box::new(dashboard.clone()),
    )?
    .counting(Some(metrics.clone()));
    let source = format!("gateway PID {}", live.session.root());
    let ended_on = dashboard.clone();
    // The screen is drawn by a thread of its own, started once privileges are dropped; its
    // `q` stops the run as SIGTERM would.
    let screen = thread::Builder::new()
        .name("top".into())
        .spawn(move || show(dashboard, metrics, View::new(source, color), true))
        .context("starting the screen")?;
    let outcome = live.run(&mut consumer);
    consumer.finish()?;
    let summary = format!(
        "summary: {}; kernel: {}",
        consumer.summary(),
        live.session.drops_summary()
    );
    // The run is over (q, a signal, or the gateway gone): every probe is detached now, while
    // the screen may stay up until q.
    drop(live);
    dashboard_ended(&ended_on, outcome.reason());
    let shown = screen
        .join()
        .map_err(|_| anyhow::anyhow!("the screen thread panicked"))?;
    eprintln!("{summary}");
    outcome.report();
    shown
}

/// Tells the screen the run ended, and why.
#[cfg(feature = "kernel")]
fn dashboard_ended(dashboard: &Dashboard, reason: Option<&str>) {
    dashboard.state().ended = Some(reason.unwrap_or("stopped").to_owned());
}

#[cfg(not(feature = "kernel"))]
fn live(_: &TopArgs, _: Dashboard, _: Metrics, _: bool) -> anyhow::Result<()> {
    anyhow::bail!("this build has no kernel side: use --replay FILE")
}

impl View {
    fn new(source: String, color: bool) -> View {
        View {
            source,
            sort: SortBy::Rate,
            filter: String::new(),
            editing: false,
            frozen: None,
            color,
        }
    }

    /// Handles one key; false when it asks to quit.
    fn key(&mut self, code: KeyCode, dashboard: &Dashboard) -> bool {
        if self.editing {
            match code {
                KeyCode::Enter | KeyCode::Esc => self.editing = false,
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            return true;
        }
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            KeyCode::Char('c') => self.filter.clear(),
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                self.frozen = match self.frozen {
                    Some(_) => None,
                    None => Some(dashboard.state().clone()),
                }
            }
            _ => {}
        }
        true
    }
}

/// Draws until `q`; `live` stops the run (SIGTERM to this process) on the way out.
fn show(dashboard: Dashboard, metrics: Metrics, mut view: View, live: bool) -> anyhow::Result<()> {
    let mut terminal = ratatui::init();
    let result = draw_loop(&mut terminal, &dashboard, &metrics, &mut view);
    ratatui::restore();
    if live && dashboard.state().ended.is_none() {
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    }
    result
}

fn draw_loop(
    terminal: &mut DefaultTerminal,
    dashboard: &Dashboard,
    metrics: &Metrics,
    view: &mut View,
) -> anyhow::Result<()> {
    let mut next_draw = Instant::now();
    loop {
        if Instant::now() >= next_draw {
            let state = match &view.frozen {
                Some(frozen) => frozen.clone(),
                None => dashboard.state().clone(),
            };
            let (drops, gauges) = metrics.run();
            terminal
                .draw(|frame| {
                    draw(
                        frame,
                        &state,
                        view,
                        drops.records_lost(),
                        drops.not_captured(),
                        gauges.requests_in_flight,
                    )
                })
                .context("drawing")?;
            next_draw = Instant::now() + Duration::from_millis(500);
        }
        if event::poll(Duration::from_millis(100)).context("reading keys")? {
            match event::read().context("reading keys")? {
                TermEvent::Key(key) if key.kind == KeyEventKind::Press => {
                    if !view.key(key.code, dashboard) {
                        return Ok(());
                    }
                    next_draw = Instant::now();
                }
                TermEvent::Resize(_, _) => next_draw = Instant::now(),
                _ => {}
            }
        }
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

fn draw(
    frame: &mut Frame,
    state: &DashboardState,
    view: &View,
    records_lost: u64,
    not_captured: u64,
    in_flight: u64,
) {
    let [header, apis, errors, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(5),
        Constraint::Length(9),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let requests: u64 = state.apis.values().map(|a| a.requests).sum();
    let error_total: u64 = state.apis.values().map(|a| a.error_count()).sum();
    let filter_shown = if view.filter.is_empty() && !view.editing {
        "-".to_owned()
    } else {
        format!("{}{}", view.filter, if view.editing { "_" } else { "" })
    };
    let mut title = format!(
        "access-log top: {}  sort: {}  filter: {filter_shown}",
        view.source,
        view.sort.name()
    );
    if view.frozen.is_some() {
        title.push_str("  [paused]");
    }
    if let Some(reason) = &state.ended {
        title.push_str(&format!("  [run ended: {reason}; q quits]"));
    }
    frame.render_widget(
        Paragraph::new(vec![
            Line::from(title).bold(),
            Line::from(format!(
                "requests {requests}  errors {error_total}  in flight {in_flight}  lost {}  \
                 kernel drops: {records_lost} records, {not_captured} calls",
                state.requests_lost,
            )),
        ]),
        header,
    );
    let filter = view.filter.to_lowercase();
    let mut rows: Vec<(&String, &crate::sink::dashboard::ApiFigures)> = state
        .apis
        .iter()
        .filter(|(api, _)| filter.is_empty() || api.to_lowercase().contains(&filter))
        .collect();
    let now = state.now;
    match view.sort {
        SortBy::Rate => rows.sort_by(|a, b| b.1.rate(now).total_cmp(&a.1.rate(now))),
        SortBy::Requests => rows.sort_by_key(|r| std::cmp::Reverse(r.1.requests)),
        SortBy::Errors => rows.sort_by_key(|r| std::cmp::Reverse(r.1.error_count())),
        SortBy::P99 => rows.sort_by(|a, b| {
            b.1.latency_ms(0.99)
                .unwrap_or(-1.0)
                .total_cmp(&a.1.latency_ms(0.99).unwrap_or(-1.0))
        }),
        SortBy::Name => rows.sort_by(|a, b| a.0.cmp(b.0)),
    }
    let error_style = if view.color {
        Style::new().red()
    } else {
        Style::new()
    };
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|(api, figures)| {
            let errors = figures
                .errors
                .iter()
                .map(|(message, count)| format!("{count} {message}"))
                .collect::<Vec<_>>()
                .join(", ");
            Row::new(vec![
                Cell::from(api.as_str()),
                Cell::from(format!("{:.1}", figures.rate(now))),
                Cell::from(figures.requests.to_string()),
                Cell::from(figures.successes.to_string()),
                Cell::from(figures.error_count().to_string()),
                Cell::from(ms(figures.latency_ms(0.5))),
                Cell::from(ms(figures.latency_ms(0.99))),
                Cell::from(errors).style(error_style),
            ])
        })
        .collect();
    let widths = [
        Constraint::Min(20),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Fill(2),
    ];
    frame.render_widget(
        Table::new(table_rows, widths)
            .header(
                Row::new(vec![
                    "API",
                    "req/s",
                    "requests",
                    "success",
                    "errors",
                    "p50 ms",
                    "p99 ms",
                    "errors by kind",
                ])
                .style(Style::new().add_modifier(Modifier::BOLD)),
            )
            .block(Block::bordered().title(format!(
                "APIs (rate over {RATE_WINDOW_S} s, latency of the backend's answers)"
            ))),
        apis,
    );
    let recent: Vec<Line> = state
        .recent_errors
        .iter()
        .take(usize::from(errors.height.saturating_sub(2)))
        .map(|e| {
            let time = chrono::DateTime::from_timestamp_nanos(e.unix_nanos as i64)
                .with_timezone(&chrono::Local)
                .format("%H:%M:%S");
            let status = e.status.map_or_else(|| "-".to_owned(), |s| s.to_string());
            Line::from(format!(
                "{time} {status} {} {} {} {}",
                e.code,
                e.message,
                if e.api.is_empty() { "(no API)" } else { &e.api },
                e.url
            ))
            .style(error_style)
        })
        .collect();
    frame.render_widget(
        Paragraph::new(recent).block(Block::bordered().title("Most recent errors")),
        errors,
    );
    let keys = if view.editing {
        "type an API name part, Enter to apply, Esc to stop"
    } else {
        "q quit  s sort  / filter by API  c clear filter  p pause"
    };
    frame.render_widget(Paragraph::new(keys).reversed(), footer);
}
