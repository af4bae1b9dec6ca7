//! `cargo xtask accuracy`: the pairing and classification accuracy of the observer on nginx and
//! Apache httpd under concurrent load, against each gateway's own log.
use anyhow::bail;
use tests::{
    accuracy::{self, RunConfig},
    gateway::Kind,
};

pub fn run(requests: usize, connections: usize, gateways: &[Kind]) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for &gateway in gateways {
        for id_header in [false, true] {
            let config = RunConfig {
                gateway,
                requests,
                connections,
                id_header,
                seed: 0x5eed,
            };
            let name = format!(
                "{gateway:?}, {} id header",
                if id_header { "with" } else { "no" }
            );
            eprintln!("accuracy: {name}: {requests} requests over {connections} connections");
            let report = accuracy::run(&config).map_err(anyhow::Error::msg)?;
            println!("{name}: {}", report.summary());
            for example in &report.examples {
                println!("  {example}");
            }
            let target = if id_header { 1.0 } else { 0.999 };
            if report.pairing_rate() < target
                || report.errors_correct < report.errors_expected
                || report.incoming_found < report.with_ground_truth
            {
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("below target: {}", failed.join("; "));
    }
    Ok(())
}
