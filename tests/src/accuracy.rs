//! The accuracy measurement: a planned mix of requests (routes, keep-alive or not, GET and
//! POST, random backend latencies and statuses, failing backends), the gateway's own log as
//! ground truth, and the comparison of the observer's events against it.
use std::collections::HashMap;

use serde_json::Value;

use crate::load::Request;

/// What a planned request exercises. Every gateway config maps these paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// Keep-alive upstream pool, path rewritten by prefix, query kept.
    Pooled,
    /// The same with a request body.
    PooledPost,
    /// A new upstream connection per request.
    Fresh,
    /// Keep-alive pool, rewritten to one fixed path without the query: content cannot link it.
    Rewritten,
    /// Two upstream servers, the first refusing: about half the requests retry.
    Retry,
    /// A backend that refuses connections.
    Down,
    /// A backend slower than the gateway's read timeout.
    Slow,
    AuthMissing,
    AuthWrong,
    AuthRight,
    /// A path no API serves.
    Unknown,
}

impl Route {
    pub fn path(self) -> &'static str {
        match self {
            Route::Pooled | Route::PooledPost => "/pool/items",
            Route::Fresh => "/fresh/items",
            Route::Rewritten => "/rewrite/items",
            Route::Retry => "/retry/items",
            Route::Down => "/down/items",
            Route::Slow => "/slow/items",
            Route::AuthMissing | Route::AuthWrong | Route::AuthRight => "/auth/items",
            Route::Unknown => "/nothing/here",
        }
    }

    /// Whether the backend request carries the client's query (the token).
    fn keeps_query(self) -> bool {
        !matches!(self, Route::Rewritten)
    }

    /// The error the observer should report, for routes that end in one.
    fn expected_error(self) -> Option<&'static str> {
        match self {
            Route::Down => Some("101503"),
            Route::Slow => Some("101504"),
            Route::AuthMissing => Some("900902"),
            Route::AuthWrong => Some("900901"),
            Route::Unknown => Some("404"),
            _ => None,
        }
    }
}

/// The gateway's read timeout for /slow/ is 1 s; its backend takes longer.
pub const SLOW_DELAY_MS: u64 = 1500;
pub const RIGHT_KEY: &str = "right-key";

#[derive(Clone, Debug)]
pub struct Planned {
    pub token: u64,
    pub route: Route,
}

pub struct Plan {
    pub requests: Vec<Request>,
    pub planned: Vec<Planned>,
}

/// A small deterministic generator, so a run can be repeated.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Plans `count` requests over the routes the gateway supports, weighted like an API's
/// traffic: mostly proxied, a few percent of each failure.
pub fn plan(count: usize, seed: u64, id_header: bool, routes: &[(Route, u32)]) -> Plan {
    let mut random = XorShift(seed | 1);
    let total: u32 = routes.iter().map(|(_, weight)| weight).sum();
    let mut requests = Vec::with_capacity(count);
    let mut planned = Vec::with_capacity(count);
    for token in 1..=count as u64 {
        let mut pick = random.below(total as u64) as u32;
        let route = routes
            .iter()
            .find(|(_, weight)| {
                if pick < *weight {
                    true
                } else {
                    pick -= weight;
                    false
                }
            })
            .map(|(route, _)| *route)
            .unwrap_or(Route::Pooled);
        let status = [200, 201, 202, 203][random.below(4) as usize];
        let delay = if route == Route::Slow {
            SLOW_DELAY_MS
        } else {
            random.below(16)
        };
        let mut headers = vec![
            ("X-Want-Status".to_owned(), status.to_string()),
            ("X-Want-Delay-Ms".to_owned(), delay.to_string()),
        ];
        match route {
            Route::AuthWrong => headers.push(("apikey".into(), "wrong-key".into())),
            Route::AuthRight => headers.push(("apikey".into(), RIGHT_KEY.into())),
            _ => {}
        }
        if id_header {
            headers.push(("X-Request-ID".into(), format!("accuracy-{seed}-{token}")));
        }
        let body =
            (route == Route::PooledPost).then(|| vec![b'x'; 100 + random.below(3000) as usize]);
        requests.push(Request {
            method: if body.is_some() { "POST" } else { "GET" },
            target: format!("{}?n={token}&s={}", route.path(), random.below(1000)),
            headers,
            body,
        });
        planned.push(Planned { token, route });
    }
    Plan { requests, planned }
}

/// What the gateway logged for one request: its answer and each upstream attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth {
    pub status: u16,
    /// (address, status) per upstream attempt, as the gateway logged them.
    pub upstream: Vec<(String, String)>,
}

/// The `n=` token of a URL.
pub fn token_of(url: &str) -> Option<u64> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("n="))
        .and_then(|n| n.parse().ok())
}

/// nginx's ground-truth line: `$status|$request_uri|$upstream_addr|$upstream_status`.
pub const NGINX_TRUTH_FORMAT: &str = "$status|$request_uri|$upstream_addr|$upstream_status";

pub fn parse_nginx_truth(log: &str) -> HashMap<u64, Truth> {
    log.lines()
        .filter_map(|line| {
            let mut fields = line.split('|');
            let status = fields.next()?.parse().ok()?;
            let token = token_of(fields.next()?)?;
            let addresses = fields.next()?;
            let statuses = fields.next()?;
            let split = |s: &str| -> Vec<String> {
                s.split([',', ':'])
                    .map(str::trim)
                    .filter(|p| !p.is_empty() && *p != "-")
                    .map(str::to_owned)
                    .collect()
            };
            // $upstream_addr separates attempts with ", " (and ": " across upstream groups).
            let addresses: Vec<String> = addresses
                .split([','])
                .map(str::trim)
                .filter(|p| !p.is_empty() && *p != "-")
                .map(str::to_owned)
                .collect();
            let statuses = split(statuses);
            let upstream = addresses.into_iter().zip(statuses).collect();
            Some((token, Truth { status, upstream }))
        })
        .collect()
}

/// Apache's ground-truth line: `%>s|%U%q`; the backend address comes from the route, since
/// Apache does not log it.
pub const APACHE_TRUTH_FORMAT: &str = "%>s|%U%q";

pub fn parse_apache_truth(
    log: &str,
    backend_of: impl Fn(&str) -> Option<String>,
) -> HashMap<u64, Truth> {
    log.lines()
        .filter_map(|line| {
            let (status, url) = line.split_once('|')?;
            let status: u16 = status.trim().parse().ok()?;
            let token = token_of(url)?;
            let path = url.split('?').next()?;
            let upstream = match backend_of(path) {
                Some(address) if status < 500 => vec![(address, status.to_string())],
                _ => Vec::new(),
            };
            Some((token, Truth { status, upstream }))
        })
        .collect()
}

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
    answered: &[Option<u16>],
    truth: &HashMap<u64, Truth>,
    events: &[Value],
) -> Report {
    let mut report = Report {
        requests_sent: plan.planned.len(),
        answered_to_client: answered.iter().filter(|s| s.is_some()).count(),
        ..Report::default()
    };
    let mut incoming: HashMap<u64, &Value> = HashMap::new();
    let mut endings: HashMap<&str, Vec<&Value>> = HashMap::new();
    for event in events {
        match text(event, "Event") {
            "INCOMING_REQUEST" => {
                if let Some(token) = token_of(text(event, "RequestInURL")) {
                    incoming.insert(token, event);
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
        let seen = incoming.get(&planned.token);
        if seen.is_some() {
            report.incoming_found += 1;
        }
        let ending = seen
            .and_then(|e| endings.get(text(e, "MessageID")))
            .and_then(|v| v.last())
            .copied();
        let answered_upstream = truth
            .upstream
            .last()
            .and_then(|(_, status)| status.parse::<u16>().ok());
        if let Some(expected) = planned.route.expected_error() {
            report.errors_expected += 1;
            let got = ending.filter(|e| text(e, "Event") == "ERROR");
            match got {
                Some(event) if text(event, "ERROR_CODE") == expected => report.errors_correct += 1,
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
        let report = compare(&plan, &[Some(200), Some(201)], &truth, &events);
        assert_eq!((report.paired_correct, report.paired_wrong), (1, 1));
    }
}
