//! The accuracy run in small, on every gateway design: identical requests under 64 concurrent
//! connections (pairing can only come from kernel facts), every route with its errors, and an
//! id header; checked against the backends' records and the gateways' own logs (`cargo xtask
//! accuracy` runs the full count).
use tests::{
    accuracy::{check, run, Mix, RunConfig},
    gateway::Kind,
    require_root,
};

/// One run at a time: two gateways under load on two cores would measure each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn measure(gateway: Kind, mix: Mix, id_header: bool) {
    require_root();
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let config = RunConfig {
        gateway,
        mix,
        requests: 1500,
        connections: 64,
        id_header,
        seed: 7,
    };
    let report = run(&config).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}\n{}", report.summary(), report.examples.join("\n"));
    if let Err(failure) = check(&config, &report) {
        panic!("{failure}\n{}", report.examples.join("\n"));
    }
}

macro_rules! gateway_runs {
    ($gateway:ident, $kind:expr) => {
        mod $gateway {
            use super::*;

            #[test]
            fn identical_requests() {
                measure($kind, Mix::Identical, false);
            }

            #[test]
            fn identical_requests_with_an_id_header() {
                measure($kind, Mix::Identical, true);
            }

            #[test]
            fn every_route() {
                measure($kind, Mix::Routes, false);
            }
        }
    };
}

gateway_runs!(nginx, Kind::Nginx);
gateway_runs!(apache, Kind::Apache);
gateway_runs!(haproxy, Kind::Haproxy);
gateway_runs!(caddy, Kind::Caddy);
gateway_runs!(varnish, Kind::Varnish);
