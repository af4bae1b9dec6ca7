//! Compares the observer's events with the gateway's own log: pairings correct, wrong, missing,
//! low-confidence, and error classifications.
use std::collections::HashMap;

use serde_json::Value;

use super::{token_of, Plan, Truth};

/// The figures of one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub requests_sent: usize,
    pub answered_to_client: usize,
    pub with_ground_truth: usize,
    pub incoming_found: usize,
    pub proxied: usize,
    pub paired_correct: usize,
    pub paired_wrong: usize,
    pub paired_missing: usize,
    pub low_confidence: usize,
    pub errors_expected: usize,
    pub errors_correct: usize,
    /// The first few disagreements, to read.
    pub examples: Vec<String>,
}

impl Report {
    pub fn pairing_rate(&self) -> f64 {
        if self.proxied == 0 {
            return 1.0;
        }
        self.paired_correct as f64 / self.proxied as f64
    }

    pub fn summary(&self) -> String {
        format!(
            "requests sent {}, answered {}, in the gateway's log {}, INCOMING_REQUEST found {}; \
             proxied {}: paired correctly {} ({:.3} %), wrong {}, missing {}, low-confidence {}; \
             errors classified correctly {} of {}",
            self.requests_sent,
            self.answered_to_client,
            self.with_ground_truth,
            self.incoming_found,
            self.proxied,
            self.paired_correct,
            100.0 * self.pairing_rate(),
            self.paired_wrong,
            self.paired_missing,
            self.low_confidence,
            self.errors_correct,
            self.errors_expected,
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

/// Compares the observer's events with the gateway's own log.
pub fn compare(
    plan: &Plan,
    answered: &[Result<u16, String>],
    truth: &HashMap<u64, Truth>,
    events: &[Value],
) -> Report {
    let mut report = Report {
        requests_sent: plan.planned.len(),
        answered_to_client: answered.iter().filter(|s| s.is_ok()).count(),
        ..Report::default()
    };
    for (planned, outcome) in plan.planned.iter().zip(answered) {
        if let Err(error) = outcome {
            report.note(format!(
                "n={} {:?}: client error {error}",
                planned.token, planned.route
            ));
        }
    }
    // A client may send a request twice (a retry after a kept-alive connection closed): the
    // token then has several INCOMING_REQUESTs; the one that completed counts.
    let mut incoming: HashMap<u64, Vec<&Value>> = HashMap::new();
    let mut endings: HashMap<&str, Vec<&Value>> = HashMap::new();
    for event in events {
        match text(event, "Event") {
            "INCOMING_REQUEST" => {
                if let Some(token) = token_of(text(event, "RequestInURL")) {
                    incoming.entry(token).or_default().push(event);
                }
            }
            "REQUEST_COMPLETE" | "ERROR" => endings
                .entry(text(event, "ResponseTo"))
                .or_default()
                .push(event),
            _ => {}
        }
    }
    for planned in &plan.planned {
        let Some(truth) = truth.get(&planned.token) else {
            continue;
        };
        report.with_ground_truth += 1;
        let seen = incoming
            .get(&planned.token)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !seen.is_empty() {
            report.incoming_found += 1;
        }
        let all_endings: Vec<&Value> = seen
            .iter()
            .filter_map(|e| endings.get(text(e, "MessageID")))
            .flatten()
            .copied()
            .collect();
        let ending = all_endings
            .iter()
            .find(|e| text(e, "Event") == "REQUEST_COMPLETE")
            .or(all_endings.last())
            .copied();
        let answered_upstream = truth
            .upstream
            .last()
            .and_then(|(_, status)| status.parse::<u16>().ok());
        if let Some(expected) = planned.route.expected_error() {
            report.errors_expected += 1;
            let got = ending.filter(|e| text(e, "Event") == "ERROR");
            let source = planned.route.expected_source().unwrap_or_default();
            match got {
                Some(event)
                    if text(event, "ERROR_CODE") == expected
                        && text(event, "ErrorSource") == source
                        && !text(event, "ERROR_MESSAGE").is_empty() =>
                {
                    report.errors_correct += 1
                }
                other => report.note(format!(
                    "n={} {:?}: expected ERROR {expected}, got {}",
                    planned.token,
                    planned.route,
                    other.map_or("nothing".to_owned(), |e| e.to_string())
                )),
            }
            if ending.is_some_and(|e| e.get("PairingConfidence").is_some()) {
                report.low_confidence += 1;
            }
            continue;
        }
        let Some(backend_status) = answered_upstream else {
            continue;
        };
        report.proxied += 1;
        let Some(event) = ending.filter(|e| text(e, "Event") == "REQUEST_COMPLETE") else {
            report.paired_missing += 1;
            report.note(format!(
                "n={} {:?}: no REQUEST_COMPLETE (truth {truth:?}, got {})",
                planned.token,
                planned.route,
                ending.map_or("nothing".to_owned(), |e| e.to_string())
            ));
            continue;
        };
        if event.get("PairingConfidence").is_some() {
            report.low_confidence += 1;
        }
        let out_url = text(event, "RequestOutURL");
        let (address, _) = truth.upstream.last().expect("answered above");
        let status_ok =
            event.get("StatusCode").and_then(Value::as_u64) == Some(backend_status.into());
        let address_ok = out_url
            .strip_prefix("http://")
            .is_some_and(|rest| rest.starts_with(&format!("{address}/")) || rest == address);
        let token_ok = !planned.route.keeps_query() || token_of(out_url) == Some(planned.token);
        let attempts_ok =
            event.get("Attempts").and_then(Value::as_u64) == Some(truth.upstream.len() as u64);
        if status_ok && address_ok && token_ok && attempts_ok {
            report.paired_correct += 1;
        } else {
            report.paired_wrong += 1;
            report.note(format!(
                "n={} {:?}: truth {truth:?}, got {event}",
                planned.token, planned.route
            ));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accuracy::{parse_nginx_truth, plan, Route};

    #[test]
    fn parses_nginx_ground_truth_with_retries() {
        let truth = parse_nginx_truth(
            "200|/retry/items?n=7&s=1|127.0.0.1:1, 127.0.0.1:2|502, 201\n404|/x?n=8|-|-\n",
        );
        assert_eq!(
            truth[&7].upstream,
            vec![
                ("127.0.0.1:1".to_owned(), "502".to_owned()),
                ("127.0.0.1:2".to_owned(), "201".to_owned())
            ]
        );
        assert_eq!(
            truth[&8],
            Truth {
                status: 404,
                upstream: vec![]
            }
        );
    }

    #[test]
    fn a_wrong_pairing_is_counted_wrong() {
        let plan = plan(2, 3, false, &[(Route::Pooled, 1)]);
        let truth = parse_nginx_truth(
            "200|/pool/items?n=1|127.0.0.1:9|200\n200|/pool/items?n=2|127.0.0.1:9|201\n",
        );
        let events: Vec<Value> = [
            r#"{"Event":"INCOMING_REQUEST","MessageID":"a","RequestInURL":"/pool/items?n=1"}"#,
            r#"{"Event":"INCOMING_REQUEST","MessageID":"b","RequestInURL":"/pool/items?n=2"}"#,
            r#"{"Event":"REQUEST_COMPLETE","ResponseTo":"a","StatusCode":200,"Attempts":1,"RequestOutURL":"http://127.0.0.1:9/v1/pool/items?n=1"}"#,
            r#"{"Event":"REQUEST_COMPLETE","ResponseTo":"b","StatusCode":200,"Attempts":1,"RequestOutURL":"http://127.0.0.1:9/v1/pool/items?n=1"}"#,
        ]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
        let report = compare(&plan, &[Ok(200), Ok(201)], &truth, &events);
        assert_eq!((report.paired_correct, report.paired_wrong), (1, 1));
    }
}
