//! `cargo xtask accuracy`: pairing and classification accuracy on every gateway design, with
//! identical requests and with every route, without and with an id header, against the
//! backends' records and the gateways' own logs. Prints the README's table.
use anyhow::bail;
use tests::{
    accuracy::{self, Mix, RunConfig},
    gateway::Kind,
};

pub fn run(requests: usize, connections: usize, gateways: &[Kind]) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for &gateway in gateways {
        let mut mixes = vec![
            (Mix::Identical, false),
            (Mix::Identical, true),
            (Mix::Routes, false),
        ];
        if gateway == Kind::Nginx {
            mixes.push((Mix::IdenticalHttp2, false));
        }
        for (mix, id_header) in mixes {
            let config = RunConfig {
                gateway,
                mix,
                requests,
                connections,
                id_header,
                random_key: 0x5a17,
                save_records: None,
            };
            eprintln!(
                "accuracy: {}: {requests} requests over {connections} connections",
                config.name()
            );
            let report = accuracy::run(&config).map_err(anyhow::Error::msg)?;
            println!("{}", report.summary());
            for example in &report.examples {
                println!("  {example}");
            }
            let mix_name = match (mix, id_header) {
                (Mix::Identical, false) => "identical, no id header",
                (Mix::Identical, true) => "identical, X-Request-ID",
                (Mix::Routes, _) => "every route, no id header",
                (Mix::IdenticalHttp2, _) => "identical over HTTP/2 (multiplexed), no id header",
            };
            rows.push(report.table_row(gateway.describe(), mix_name));
            if let Err(failure) = accuracy::check(&config, &report) {
                failed.push(failure);
            }
        }
    }
    println!(
        "\n| gateway | requests | sent | proxied | paired correctly | wrong | missing | low \
         confidence | errors classified | without an ending |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for row in rows {
        println!("{row}");
    }
    if !failed.is_empty() {
        bail!("below target:\n{}", failed.join("\n"));
    }
    Ok(())
}
