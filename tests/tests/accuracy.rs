//! The accuracy run in small, on every gateway design: identical requests under 64 concurrent
//! connections (pairing can only come from kernel facts), every route with its errors, and an
//! id header; checked against the backends' records and the gateways' own logs (`cargo xtask
//! accuracy` runs the full count).
use std::{collections::HashMap, process::Command};

use serde_json::Value;
use tests::{
    accuracy::{check, run, Mix, RunConfig},
    gateway::Kind,
    observer::binary,
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
        random_key: 7,
        save_records: None,
    };
    let report = run(&config).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}\n{}", report.summary(), report.examples.join("\n"));
    if let Err(failure) = check(&config, &report) {
        panic!("{failure}\n{}", report.examples.join("\n"));
    }
}

/// Events with their MessageIDs (random per session) replaced by their place in the list.
fn without_ids(events: &[Value]) -> Vec<Value> {
    let place: HashMap<String, usize> = events
        .iter()
        .enumerate()
        .filter_map(|(index, e)| Some((e["MessageID"].as_str()?.to_owned(), index)))
        .collect();
    let id = |value: &Value| {
        value
            .as_str()
            .and_then(|id| place.get(id))
            .map_or(Value::Null, |index| Value::from(*index))
    };
    events
        .iter()
        .map(|event| {
            let mut event = event.clone();
            let object = event.as_object_mut().expect("an event is an object");
            object.remove("MessageID");
            if let Some(to) = object.get_mut("ResponseTo") {
                *to = id(to);
            }
            // A loss record names its requests as one comma-separated list.
            if let Some(ids) = object.get("RequestIDs").and_then(Value::as_str) {
                let places: Vec<Value> = ids.split(',').map(|i| id(&Value::from(i))).collect();
                object.insert("RequestIDs".into(), Value::from(places));
            }
            event
        })
        .collect()
}

#[test]
fn the_records_an_attach_saved_replay_to_the_events_it_printed() {
    // Varnish under concurrent identical requests: its threads hand work to each other, so
    // pairing rests on the order in which records from different CPUs arrive; the file holds
    // that order, and the pipeline depends on nothing else.
    require_root();
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = std::env::temp_dir().join(format!("access-log-saved-{}.alrec", std::process::id()));
    let config = RunConfig {
        gateway: Kind::Varnish,
        mix: Mix::Identical,
        requests: 400,
        connections: 32,
        id_header: false,
        random_key: 11,
        save_records: Some(path.clone()),
    };
    let report = run(&config).unwrap_or_else(|e| panic!("{e}"));
    let replayed = Command::new(binary())
        .args(["replay", "--format", "json"])
        .arg(&path)
        .output()
        .expect("replaying");
    let _ = std::fs::remove_file(&path);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let replayed: Vec<Value> = String::from_utf8_lossy(&replayed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert!(report.events.len() >= 800, "{}", report.summary());
    assert_eq!(without_ids(&replayed), without_ids(&report.events));
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

/// Identical requests multiplexed over HTTP/2 (8 client connections of 32 streams in flight)
/// through nginx to HTTP/1.1 backends: pairing from kernel facts only, at the HTTP/1 target.
#[test]
fn nginx_identical_requests_over_http2() {
    measure(Kind::Nginx, Mix::IdenticalHttp2, false);
}
