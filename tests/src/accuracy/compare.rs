//! Compares the observer's events with the truth: for each request (named by its client's
//! address and its place on that connection), its one ending event, the backend's answer, the
//! backend's address and the attempts. A request with no ending, with two, an event nobody
//! sent and a run without truth all count against the observer.
use std::{collections::HashMap, net::IpAddr};

use serde_json::Value;

use super::{Plan, RunConfig, Truth};
use crate::load::Delivery;

/// The figures of one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub name: String,
    pub requests_sent: usize,
    pub answered_to_client: usize,
    /// Requests the truth knows something of (a backend's answer, the gateway's log).
    pub with_truth: usize,
    pub incoming_found: usize,
    /// Requests a backend answered.
    pub proxied: usize,
    pub paired_correct: usize,
    pub paired_wrong: usize,
    /// Proxied requests with no REQUEST_COMPLETE.
    pub paired_missing: usize,
    pub low_confidence: usize,
    pub errors_expected: usize,
    pub errors_correct: usize,
    /// Requests whose INCOMING_REQUEST has no ending event.
    pub without_ending: usize,
    /// Of those, requests a LOST event names.
    pub lost: usize,
    /// Requests with more than one ending event, and events that match no request sent.
    pub duplicates: usize,
    pub extra: usize,
    /// The first few disagreements, to read.
    pub examples: Vec<String>,
    /// The observer's events, as it printed them.
    pub events: Vec<Value>,
}

impl Report {
    pub fn pairing_rate(&self) -> f64 {
        if self.proxied == 0 {
            return 0.0;
        }
        self.paired_correct as f64 / self.proxied as f64
    }

    pub fn summary(&self) -> String {
        format!(
            "{}: requests {}, answered {}, with truth {}, INCOMING_REQUEST found {}; proxied {}: \
             paired correctly {} ({:.3} %), wrong {}, missing {}, low confidence {}; errors \
             classified correctly {} of {}; without an ending event {} (named in LOST {}); \
             duplicate endings {}; extra events {}",
            self.name,
            self.requests_sent,
            self.answered_to_client,
            self.with_truth,
            self.incoming_found,
            self.proxied,
            self.paired_correct,
            100.0 * self.pairing_rate(),
            self.paired_wrong,
            self.paired_missing,
            self.low_confidence,
            self.errors_correct,
            self.errors_expected,
            self.without_ending,
            self.lost,
            self.duplicates,
            self.extra,
        )
    }

    /// A row of the README's table.
    pub fn table_row(&self, gateway: &str, mix: &str) -> String {
        format!(
            "| {gateway} | {mix} | {} | {} | {} ({:.2} %) | {} | {} | {} | {} / {} | {} |",
            self.requests_sent,
            self.proxied,
            self.paired_correct,
            100.0 * self.pairing_rate(),
            self.paired_wrong + self.duplicates + self.extra,
            self.paired_missing,
            self.low_confidence,
            self.errors_correct,
            self.errors_expected,
            self.without_ending,
        )
    }

    fn note(&mut self, example: String) {
        if self.examples.len() < 10 {
            self.examples.push(example);
        }
    }
}

fn text<'v>(event: &'v Value, key: &str) -> &'v str {
    event.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Compares the observer's events with the truth. Fails when there is no truth to compare
/// with: a measurement without truth says nothing.
pub fn compare(
    config: &RunConfig,
    plan: &Plan,
    delivered: &[Delivery],
    truth: &HashMap<u64, Truth>,
    events: &[Value],
) -> Result<Report, String> {
    let mut report = Report {
        name: config.name(),
        requests_sent: plan.planned.len(),
        answered_to_client: delivered.iter().filter(|d| d.status.is_ok()).count(),
        with_truth: truth.len(),
        ..Report::default()
    };
    if truth.is_empty() || report.answered_to_client == 0 {
        return Err(format!(
            "{}: no truth to compare with ({} requests answered, {} with a trace outside the \
             observer)",
            report.name,
            report.answered_to_client,
            truth.len()
        ));
    }
    // Each client address's INCOMING_REQUESTs, in the order the observer wrote them.
    let mut incoming: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut endings: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut lost: HashMap<&str, usize> = HashMap::new();
    for event in events {
        match text(event, "Event") {
            "INCOMING_REQUEST" => incoming
                .entry(text(event, "RemoteIP"))
                .or_default()
                .push(event),
            "REQUEST_COMPLETE" | "ERROR" if event.get("ResponseTo").is_some() => endings
                .entry(text(event, "ResponseTo"))
                .or_default()
                .push(event),
            "LOST" => {
                for id in text(event, "RequestIDs")
                    .split(',')
                    .filter(|i| !i.is_empty())
                {
                    *lost.entry(id).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    let mut matched: HashMap<&str, usize> = HashMap::new();
    for (planned, delivery) in plan.planned.iter().zip(delivered) {
        let route = planned.route;
        if let Err(error) = &delivery.status {
            report.note(format!(
                "{route:?} #{}: client error {error}",
                planned.token
            ));
            continue;
        }
        let Some(source) = delivery.source.map(|ip: IpAddr| ip.to_string()) else {
            continue;
        };
        let Some(request) = incoming
            .get(source.as_str())
            .and_then(|list| list.get(delivery.sequence))
        else {
            report.note(format!(
                "{route:?} #{}: no INCOMING_REQUEST from {source} (#{} there)",
                planned.token, delivery.sequence
            ));
            if route.expected_error().is_some() {
                report.errors_expected += 1;
            } else if truth.contains_key(&planned.token) {
                report.proxied += 1;
                report.paired_missing += 1;
            }
            continue;
        };
        *matched
            .entry(incoming.get_key_value(source.as_str()).expect("found").0)
            .or_default() += 1;
        report.incoming_found += 1;
        let id = text(request, "MessageID");
        let mine = endings.get(id).map(Vec::as_slice).unwrap_or_default();
        if mine.is_empty() {
            report.without_ending += 1;
            if lost.contains_key(id) {
                report.lost += 1;
            }
        }
        if mine.len() > 1 {
            report.duplicates += 1;
            report.note(format!(
                "{route:?} #{}: {} ending events: {mine:?}",
                planned.token,
                mine.len()
            ));
        }
        let ending = mine.first().copied();
        if ending.is_some_and(|e| e.get("PairingConfidence").is_some()) {
            report.low_confidence += 1;
        }
        if let Some((code, source)) = route.expected_error() {
            report.errors_expected += 1;
            match ending {
                Some(event)
                    if mine.len() == 1
                        && text(event, "Event") == "ERROR"
                        && text(event, "ERROR_CODE") == code
                        && text(event, "ErrorSource") == source =>
                {
                    report.errors_correct += 1
                }
                other => report.note(format!(
                    "{route:?} #{}: expected ERROR {code} ({source}), got {}",
                    planned.token,
                    other.map_or("nothing".to_owned(), |e| e.to_string())
                )),
            }
            continue;
        }
        let Some(truth) = truth.get(&planned.token) else {
            continue;
        };
        let Some(answer) = truth.served.last() else {
            continue;
        };
        report.proxied += 1;
        let Some(event) = ending.filter(|e| text(e, "Event") == "REQUEST_COMPLETE") else {
            report.paired_missing += 1;
            report.note(format!(
                "{route:?} #{}: no REQUEST_COMPLETE (truth {truth:?}, got {})",
                planned.token,
                ending.map_or("nothing".to_owned(), |e| e.to_string())
            ));
            continue;
        };
        let status_ok =
            event.get("StatusCode").and_then(Value::as_u64) == Some(answer.status.into());
        let address_ok = text(event, "RequestOutURL")
            .strip_prefix("http://")
            .is_some_and(|rest| rest.starts_with(&format!("127.0.0.1:{}/", answer.port)));
        let attempts = truth.attempts.unwrap_or(truth.served.len());
        let attempts_ok = event.get("Attempts").and_then(Value::as_u64) == Some(attempts as u64);
        if status_ok && address_ok && attempts_ok && mine.len() == 1 {
            report.paired_correct += 1;
        } else {
            report.paired_wrong += 1;
            report.note(format!(
                "{route:?} #{}: truth {truth:?}, got {event}",
                planned.token
            ));
        }
    }
    // INCOMING_REQUESTs nobody sent (beyond each connection's requests), and endings of
    // requests that were never announced.
    for (source, list) in &incoming {
        let extra = list
            .len()
            .saturating_sub(matched.get(source).copied().unwrap_or(0));
        if extra > 0 {
            report.extra += extra;
            report.note(format!(
                "{extra} INCOMING_REQUEST from {source} beyond what it sent"
            ));
        }
    }
    let announced: std::collections::HashSet<&str> = incoming
        .values()
        .flatten()
        .map(|e| text(e, "MessageID"))
        .collect();
    for (id, list) in &endings {
        if !announced.contains(id) {
            report.extra += list.len();
            report.note(format!(
                "an ending for {id}, which no INCOMING_REQUEST announced"
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        accuracy::{plan, Mix, Route},
        backend::Served,
        gateway::Kind,
    };

    fn config() -> RunConfig {
        RunConfig {
            gateway: Kind::Nginx,
            mix: Mix::Identical,
            requests: 2,
            connections: 1,
            id_header: false,
            random_key: 3,
            save_records: None,
        }
    }

    fn delivered(count: usize) -> Vec<Delivery> {
        (0..count)
            .map(|sequence| Delivery {
                status: Ok(200),
                source: Some("127.1.1.1".parse().unwrap()),
                sequence,
            })
            .collect()
    }

    fn truth(plan: &Plan) -> HashMap<u64, Truth> {
        plan.planned
            .iter()
            .map(|p| {
                (
                    p.token,
                    Truth {
                        served: vec![Served {
                            token: p.token,
                            status: p.status,
                            port: 9,
                        }],
                        attempts: None,
                    },
                )
            })
            .collect()
    }

    fn events(plan: &Plan, statuses: &[u16], extra: &str) -> Vec<Value> {
        let mut lines = vec![
            r#"{"Event":"INCOMING_REQUEST","MessageID":"a","RemoteIP":"127.1.1.1"}"#.to_owned(),
            r#"{"Event":"INCOMING_REQUEST","MessageID":"b","RemoteIP":"127.1.1.1"}"#.to_owned(),
        ];
        for (id, status) in ["a", "b"].iter().zip(statuses) {
            lines.push(format!(
                r#"{{"Event":"REQUEST_COMPLETE","ResponseTo":"{id}","StatusCode":{status},"Attempts":1,"RequestOutURL":"http://127.0.0.1:9/v1/pool/items?page=3"}}"#
            ));
        }
        if !extra.is_empty() {
            lines.push(extra.to_owned());
        }
        let _ = plan;
        lines
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect()
    }

    #[test]
    fn a_swapped_pairing_is_counted_wrong_and_a_right_one_right() {
        let plan = plan(2, 3, false, &[(Route::Pooled, 1)]);
        let statuses: Vec<u16> = plan.planned.iter().map(|p| p.status).collect();
        assert_ne!(statuses[0], statuses[1], "random key 3 plans two statuses");
        let truth = truth(&plan);
        let right = compare(
            &config(),
            &plan,
            &delivered(2),
            &truth,
            &events(&plan, &statuses, ""),
        )
        .unwrap();
        assert_eq!(
            (right.paired_correct, right.paired_wrong),
            (2, 0),
            "{right:?}"
        );
        let swapped = [statuses[1], statuses[0]];
        let wrong = compare(
            &config(),
            &plan,
            &delivered(2),
            &truth,
            &events(&plan, &swapped, ""),
        )
        .unwrap();
        assert_eq!(
            (wrong.paired_correct, wrong.paired_wrong),
            (0, 2),
            "{wrong:?}"
        );
    }

    #[test]
    fn duplicate_and_extra_endings_count_against_the_observer() {
        let plan = plan(2, 3, false, &[(Route::Pooled, 1)]);
        let statuses: Vec<u16> = plan.planned.iter().map(|p| p.status).collect();
        let truth = truth(&plan);
        let duplicate = format!(
            r#"{{"Event":"ERROR","ResponseTo":"a","StatusCode":{},"ERROR_CODE":"1"}}"#,
            statuses[0]
        );
        let report = compare(
            &config(),
            &plan,
            &delivered(2),
            &truth,
            &events(&plan, &statuses, &duplicate),
        )
        .unwrap();
        assert_eq!(report.duplicates, 1, "{report:?}");
        assert_eq!(report.paired_correct, 1, "{report:?}");
        let stray = r#"{"Event":"REQUEST_COMPLETE","ResponseTo":"zz","StatusCode":200}"#;
        let report = compare(
            &config(),
            &plan,
            &delivered(2),
            &truth,
            &events(&plan, &statuses, stray),
        )
        .unwrap();
        assert_eq!(report.extra, 1, "{report:?}");
    }

    #[test]
    fn no_truth_is_a_failed_measurement() {
        let plan = plan(2, 3, false, &[(Route::Pooled, 1)]);
        let statuses: Vec<u16> = plan.planned.iter().map(|p| p.status).collect();
        let result = compare(
            &config(),
            &plan,
            &delivered(2),
            &HashMap::new(),
            &events(&plan, &statuses, ""),
        );
        assert!(result.is_err());
    }
}
