//! `cargo xtask`: set-up, demo, tests and measurements of access-log, so a fresh machine needs
//! only these commands.
mod accuracy;
mod bench;
mod demo;
mod setup;

use std::process::Command;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages (nginx, curl, ...), rust-src for nightly,
    /// bpf-linker, cargo-fuzz; mount tracefs.
    Setup,
    /// Set up, then build the release binary target/release/access-log.
    Build,
    /// Set up, build, and run every test, the privileged end-to-end ones included.
    Test {
        /// Arguments for `cargo test`, e.g. `--test nginx_e2e -- --nocapture`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz the kernel-record decoder and the HTTP stream reassembler for a bounded time.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Measure what the observer costs the gateway, beside nginx's own access log; writes
    /// BENCHMARKS.md.
    Bench {
        /// A short run (1 round of 2 s, 50,000 replayed requests): a smoke test, not figures.
        #[arg(long)]
        quick: bool,
    },
    /// Measure pairing and error-classification accuracy on every gateway design under load
    /// (nginx, Apache httpd, HAProxy, Caddy, Varnish).
    Accuracy {
        /// Requests per run (each gateway runs identical requests without and with an id
        /// header, and every route).
        #[arg(long, default_value_t = 20000)]
        requests: usize,
        /// Concurrent client connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Only this gateway.
        #[arg(long, value_parser = ["nginx", "apache", "haproxy", "caddy", "varnish"])]
        gateway: Option<String>,
    },
    /// Start a demo gateway with backends and traffic, and show the live events.
    Demo {
        /// Stop by itself after this many seconds (default: until Ctrl-C or SIGTERM).
        #[arg(long)]
        duration: Option<f64>,
        /// Use the existing target/release/access-log: no set-up, no build.
        #[arg(long)]
        no_build: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::ensure(),
        Task::Build => {
            setup::ensure()?;
            build()
        }
        Task::Test { args } => {
            setup::ensure()?;
            build()?;
            let mut test = vec!["test", "--release"];
            test.extend(args.iter().map(String::as_str));
            cargo(&test)?;
            // A short, bounded fuzz run: no panic, memory bounded, on every commit.
            fuzz(20)
        }
        Task::Fuzz { seconds } => {
            setup::ensure()?;
            fuzz(seconds)
        }
        Task::Accuracy {
            requests,
            connections,
            gateway,
        } => {
            setup::ensure()?;
            build()?;
            let gateways = match gateway.as_deref().and_then(tests::gateway::Kind::from_name) {
                Some(kind) => vec![kind],
                None => tests::gateway::Kind::ALL.to_vec(),
            };
            accuracy::run(requests, connections, &gateways)
        }
        Task::Bench { quick } => {
            setup::ensure()?;
            build()?;
            bench::run(&if quick {
                bench::Options {
                    rounds: 1,
                    seconds: 2,
                    replay_requests: 50_000,
                }
            } else {
                bench::Options {
                    rounds: 3,
                    seconds: 5,
                    replay_requests: 1_000_000,
                }
            })
        }
        Task::Demo { duration, no_build } => {
            if !no_build {
                setup::ensure()?;
                build()?;
            }
            demo::run(duration)
        }
    }
}

/// The fuzz targets (fuzz/fuzz_targets), each run for `seconds` with libFuzzer.
const FUZZ_TARGETS: &[&str] = &["kernel_records", "http_stream"];

fn fuzz(seconds: u64) -> anyhow::Result<()> {
    let max_time = format!("-max_total_time={seconds}");
    for target in FUZZ_TARGETS {
        cargo(&[
            "+nightly",
            "fuzz",
            "run",
            "-O",
            target,
            "--",
            &max_time,
            "-rss_limit_mb=1024",
        ])?;
    }
    Ok(())
}

/// One profile for everything (release): the tests and the demo share one build.
fn build() -> anyhow::Result<()> {
    cargo(&["build", "--release"])
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    // A toolchain override (+nightly) needs the rustup proxy, not the cargo running xtask.
    let cargo = if args.first().is_some_and(|a| a.starts_with('+')) {
        "cargo".to_owned()
    } else {
        std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
    };
    eprintln!("xtask: running cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(tests::workspace_root())
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod cli_tests {
    use super::*;

    fn test_args(argv: &[&str]) -> Vec<String> {
        let cli = Cli::try_parse_from(["cargo xtask", "test"].iter().chain(argv)).unwrap();
        match cli.command {
            Task::Test { args } => args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn test_forwards_its_arguments_to_cargo_test() {
        assert!(test_args(&[]).is_empty());
        assert_eq!(
            test_args(&["--test", "nginx_e2e", "--", "--nocapture"]),
            ["--test", "nginx_e2e", "--", "--nocapture"]
        );
        assert_eq!(test_args(&["--", "--test", "x"]), ["--test", "x"]);
    }
}
