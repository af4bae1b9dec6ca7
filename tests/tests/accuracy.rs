//! The accuracy run in small: nginx and Apache httpd under 64 concurrent connections, checked
//! against each gateway's own log (`cargo xtask accuracy` runs the full count).
use tests::{
    accuracy::{run, RunConfig},
    gateway::Kind,
    require_root,
};

fn check(gateway: Kind, id_header: bool) {
    require_root();
    let report = run(&RunConfig {
        gateway,
        requests: 1500,
        connections: 64,
        id_header,
        seed: 7,
    })
    .expect("the accuracy run");
    let detail = format!("{}\n{}", report.summary(), report.examples.join("\n"));
    assert_eq!(report.answered_to_client, report.requests_sent, "{detail}");
    assert_eq!(report.incoming_found, report.with_ground_truth, "{detail}");
    let target = if id_header { 1.0 } else { 0.999 };
    assert!(report.pairing_rate() >= target, "{detail}");
    assert_eq!(report.errors_correct, report.errors_expected, "{detail}");
}

#[test]
fn nginx_pairs_and_classifies_under_load() {
    check(Kind::Nginx, false);
}

#[test]
fn nginx_pairs_exactly_with_an_id_header() {
    check(Kind::Nginx, true);
}

#[test]
fn apache_pairs_and_classifies_under_load() {
    check(Kind::Apache, false);
}
