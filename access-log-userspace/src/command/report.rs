//! `access-log report FILE...`: what the event files say, as the original Splunk queries ask.
use std::path::PathBuf;

use anyhow::Context as _;

use crate::report::{
    query::{Filter, Pattern, ReportBuilder},
    read::{parse_time, read_files},
    render,
};

#[derive(clap::Args, Clone, Debug)]
pub struct ReportArgs {
    /// Event files written by `attach --output` (kv or JSON; rotated and .gz ones too).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Only APIs matching this pattern (`*` for any text, case-insensitive; repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub api: Vec<String>,
    /// Leave out APIs matching this pattern (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub exclude_api: Vec<String>,
    /// Only requests whose RequestInURL matches this pattern.
    #[arg(long, value_name = "PATTERN")]
    pub url: Option<String>,
    /// Only events at or after this time (2026-12-03T10:00:00+00:00, or the log's own form).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events before this time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Width of the time buckets in seconds (default: about 30 buckets over the span).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub bucket: u32,
    /// table (default) or json, on standard output.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Also write one self-contained HTML page with charts to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
}

fn time(text: Option<&String>, name: &str) -> anyhow::Result<Option<i64>> {
    text.map(|t| {
        parse_time(t)
            .with_context(|| format!("--{name} {t:?} is no time (write 2026-12-03T10:00:00+00:00)"))
    })
    .transpose()
}

pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let filter = Filter {
        apis: args.api.iter().map(|p| Pattern::new(p)).collect(),
        exclude_apis: args.exclude_api.iter().map(|p| Pattern::new(p)).collect(),
        url: args.url.as_deref().map(Pattern::new),
        since_ms: time(args.since.as_ref(), "since")?,
        until_ms: time(args.until.as_ref(), "until")?,
    };
    let mut builder = ReportBuilder::new(filter, i64::from(args.bucket));
    let read = read_files(&args.files, &mut |event| builder.add(&event))?;
    if read.events == 0 {
        anyhow::bail!(
            "no events in {} (files written by `access-log attach --output`, kv or JSON)",
            args.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some((file, line)) = &read.first_skipped {
        eprintln!(
            "access-log: {} lines were no event and were left out (the first: {file} line {line})",
            read.skipped
        );
    }
    let report = builder.finish();
    match args.format {
        ReportFormat::Table => print!("{}", render::table(&report)),
        ReportFormat::Json => println!("{}", render::json(&report)),
    }
    if let Some(path) = &args.html {
        std::fs::write(path, render::html(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
