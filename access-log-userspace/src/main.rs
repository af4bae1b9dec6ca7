//! `access-log`: a passive access log for API gateways. The command line and its dispatch;
//! the subcommands are in the library's `command` module.
use std::path::PathBuf;

use clap::{CommandFactory as _, Parser, Subcommand};

use access_log::command::{self, report::ReportArgs, top::TopArgs, EventArgs, TargetArgs};

#[derive(Parser)]
#[command(
    name = "access-log",
    version,
    about = "A passive, eBPF-based access log for API gateways",
    long_about = "A passive, eBPF-based access log for API gateways: attached to a running \
gateway (nginx, HAProxy, Apache httpd, Caddy, Varnish, ...) by its PID, it reads the \
gateway's socket traffic with kernel probes, pairs each client request with the backend call \
made for it, and writes INCOMING_REQUEST, REQUEST_COMPLETE and ERROR events in the WSO2 API \
Manager access-log format, without changing or restarting the gateway."
)]
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
        target: TargetArgs,
        #[command(flatten)]
        events: EventArgs,
        /// Append events to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Also write the raw kernel records to this capture file, as `record` does: `replay`
        /// turns it into the same events later (replaced if it exists).
        #[arg(long, value_name = "FILE")]
        save_records: Option<PathBuf>,
    },
    /// Record the raw kernel records of a gateway to a capture file, for `replay`.
    ///
    /// Example: access-log record --pid 1234 --output capture.alrec --duration 60
    Record {
        #[command(flatten)]
        target: TargetArgs,
        /// The capture file to write (replaced if it exists).
        #[arg(long)]
        output: PathBuf,
        /// Also mask the value of this parameter (repeatable; the captured bytes are masked
        /// wherever a credential parameter stands, as the events' URLs are redacted).
        #[arg(long = "redact-query", value_name = "NAME")]
        redact_query: Vec<String>,
        /// Keep the captured bytes as received, credentials included.
        #[arg(long)]
        no_redact: bool,
        /// Also mask this API-key header's values (repeatable; added to apikey, x-api-key,
        /// api-key).
        #[arg(long = "api-key-header", value_name = "NAME")]
        api_key_header: Vec<String>,
    },
    /// Turn a capture file into events, offline and without privileges.
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
    /// Answer the WSO2 API Manager access log's usual questions from event files: calls per API
    /// over time, successes and failures by API, URLs that matched no API, top errors, backend
    /// latency by API.
    ///
    /// Examples: access-log report /var/log/access-log/events.log*
    ///           access-log report events.log --exclude-api '*Echo*' --html report.html
    Report(ReportArgs),
    /// A live dashboard in the terminal: per API the request rate, successes, errors of each
    /// kind and backend latency; the most recent errors; loss and drops. Keys: q quit, s sort,
    /// / filter by API, c clear the filter, p pause.
    ///
    /// Examples: access-log top --pidfile /run/nginx.pid --apis apis.toml
    ///           access-log top --replay capture.alrec
    Top(TopArgs),
    /// Print a shell completion script.
    ///
    /// Example: access-log completions bash > /etc/bash_completion.d/access-log
    Completions { shell: Shell },
    /// Print the manual page (roff), generated from these same definitions; with --dir,
    /// write it and one page per subcommand (access-log-attach.1, ...) there.
    ///
    /// Example: access-log man --dir /usr/local/share/man/man1
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// API keys for the key catalog (`--keys`), which lists keys by fingerprint only.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

/// Shells `completions` writes for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Read one key on standard input and print its SHA-256 fingerprint (64 hex digits), the
    /// `fingerprint` of a [[key]] entry.
    ///
    /// Example: printf %s "$KEY" | access-log keys fingerprint
    Fingerprint,
}

/// The manual page, or with `dir` every page (the command's and its subcommands') as files.
fn manual(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let command = Cli::command();
    let Some(dir) = dir else {
        return Ok(clap_mangen::Man::new(command).render(&mut std::io::stdout())?);
    };
    let mut pages = vec![("access-log".to_owned(), command.clone())];
    for sub in command.get_subcommands() {
        let name = format!("access-log-{}", sub.get_name());
        let bin = format!("access-log {}", sub.get_name());
        pages.push((name.clone(), sub.clone().display_name(name).bin_name(bin)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn main() {
    let result = match Cli::parse().command {
        Command::Attach {
            target,
            events,
            output,
            save_records,
        } => command::attach::run(&target, &events, output.as_ref(), save_records.as_deref()),
        Command::Record {
            target,
            output,
            redact_query,
            no_redact,
            api_key_header,
        } => command::record::run(
            &target,
            &output,
            access_log::event::redact::Redactor::new(!no_redact, &redact_query)
                .with_key_headers(&api_key_header),
        ),
        Command::Replay {
            file,
            events,
            output,
        } => command::replay::run(&file, &events, output.as_ref()),
        Command::Report(args) => command::report::run(&args),
        Command::Top(args) => command::top::run(&args),
        Command::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "access-log",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { dir } => manual(dir.as_deref()),
        Command::Keys {
            action: KeysAction::Fingerprint,
        } => command::keys::fingerprint(),
    };
    if let Err(error) = result {
        eprintln!("access-log: error: {error:#}");
        std::process::exit(1);
    }
}
