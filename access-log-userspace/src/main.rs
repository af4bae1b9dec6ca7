//! `access-log`: a passive access log for API gateways. The command line and its dispatch;
//! the subcommands are in the library's `command` module.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use access_log::command::{self, EventArgs, TargetArgs};

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
    /// API keys for the key catalog (`--keys`), which lists keys by fingerprint only.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Read one key on standard input and print its SHA-256 fingerprint (64 hex digits), the
    /// `fingerprint` of a [[key]] entry.
    ///
    /// Example: printf %s "$KEY" | access-log keys fingerprint
    Fingerprint,
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
        Command::Keys {
            action: KeysAction::Fingerprint,
        } => command::keys::fingerprint(),
    };
    if let Err(error) = result {
        eprintln!("access-log: error: {error:#}");
        std::process::exit(1);
    }
}
