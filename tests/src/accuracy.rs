//! The accuracy measurement: a planned mix of requests (routes, keep-alive or not, GET and
//! POST, random backend latencies and statuses, failing backends), the gateway's own log as
//! ground truth, and the comparison of the observer's events against it.
use std::{collections::HashMap, net::SocketAddr, time::Duration};

use serde_json::Value;

use crate::{
    backend::Backend,
    free_port,
    gateway::{Gateway, Kind},
    load::Request,
    observer::Observer,
};

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
        let report = compare(&plan, &[Ok(200), Ok(201)], &truth, &events);
        assert_eq!((report.paired_correct, report.paired_wrong), (1, 1));
    }
}

/// Routes and weights (out of 1000) each gateway serves.
pub fn routes(kind: Kind) -> Vec<(Route, u32)> {
    let mut routes = vec![
        (Route::Pooled, 430),
        (Route::PooledPost, 120),
        (Route::Fresh, 150),
        (Route::Down, 30),
        (Route::Slow, 4),
        (Route::AuthMissing, 25),
        (Route::AuthWrong, 25),
        (Route::AuthRight, 40),
        (Route::Unknown, 30),
    ];
    if kind == Kind::Nginx {
        routes.push((Route::Rewritten, 100));
        routes.push((Route::Retry, 50));
    }
    routes
}

fn nginx_block(dir: &std::path::Path, port: u16, one: u16, two: u16, dead: u16) -> String {
    let key = RIGHT_KEY;
    let pooled = "proxy_http_version 1.1; proxy_set_header Connection \"\";";
    format!(
        r#"
  log_format truth '{NGINX_TRUTH_FORMAT}';
  upstream pool {{ server 127.0.0.1:{one}; server 127.0.0.1:{two}; keepalive 32; }}
  upstream retry {{ server 127.0.0.1:{dead} max_fails=0; server 127.0.0.1:{one} max_fails=0; }}
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    access_log {dir}/truth.log truth;
    keepalive_requests 100000;
    location /pool/ {{ proxy_pass http://pool/v1/pool/; {pooled} }}
    location /fresh/ {{ proxy_pass http://127.0.0.1:{two}/v2/fresh/; }}
    location /rewrite/ {{ rewrite ^ /fixed? break; proxy_pass http://pool; {pooled} }}
    location /retry/ {{ proxy_pass http://retry; proxy_next_upstream error; }}
    location /down/ {{ proxy_pass http://127.0.0.1:{dead}; }}
    location /slow/ {{ proxy_pass http://127.0.0.1:{one}; proxy_read_timeout 1s; }}
    location /auth/ {{
      if ($http_apikey = "") {{ return 401; }}
      if ($http_apikey != "{key}") {{ return 401; }}
      proxy_pass http://pool; {pooled}
    }}
    location / {{ return 404; }}
  }}
"#,
        dir = dir.display()
    )
}

fn apache_body(dir: &std::path::Path, one: u16, two: u16, dead: u16) -> String {
    format!(
        r#"
LogFormat "{APACHE_TRUTH_FORMAT}" truth
CustomLog {dir}/truth.log truth
KeepAlive On
MaxKeepAliveRequests 0
RewriteEngine On
RewriteCond %{{HTTP:apikey}} ^$
RewriteRule ^/auth/ - [R=401,L]
RewriteCond %{{HTTP:apikey}} !^{RIGHT_KEY}$
RewriteRule ^/auth/ - [R=401,L]
ProxyPass /pool/ http://127.0.0.1:{one}/v1/pool/
ProxyPass /auth/ http://127.0.0.1:{one}/v1/auth/
ProxyPass /fresh/ http://127.0.0.1:{two}/v2/fresh/ disablereuse=On
ProxyPass /down/ http://127.0.0.1:{dead}/ retry=0
ProxyPass /slow/ http://127.0.0.1:{one}/ timeout=1
"#,
        dir = dir.display()
    )
}

/// One accuracy run's settings.
pub struct RunConfig {
    pub gateway: Kind,
    pub requests: usize,
    pub connections: usize,
    pub id_header: bool,
    pub seed: u64,
}

/// Starts backends, the gateway and the observer, drives the planned load, and compares.
pub fn run(config: &RunConfig) -> Result<Report, String> {
    let one = Backend::start().map_err(|e| format!("starting a backend: {e}"))?;
    let two = Backend::start().map_err(|e| format!("starting a backend: {e}"))?;
    let dead = free_port();
    let port = free_port();
    let gateway = match config.gateway {
        // Relative log paths resolve in the gateway's own directory (nginx -p, ServerRoot).
        Kind::Nginx => Gateway::nginx(
            "accuracy",
            2,
            &nginx_block(
                std::path::Path::new("logs"),
                port,
                one.port(),
                two.port(),
                dead,
            ),
            port,
        )?,
        Kind::Apache => Gateway::apache(
            "accuracy",
            &apache_body(std::path::Path::new("logs"), one.port(), two.port(), dead),
            port,
        )?,
    };
    let observer = Observer::attach(gateway.master_pid(), &[])?;
    let plan = plan(
        config.requests,
        config.seed,
        config.id_header,
        &routes(config.gateway),
    );
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let answered = crate::load::run(address, &plan.requests, config.connections, |worker| {
        worker % 2 == 0
    });
    // Let the last records drain, then stop the observer and the gateway (which flushes its
    // log).
    let expected = answered.iter().filter(|s| s.is_ok()).count();
    observer.wait_for(Duration::from_secs(10), |events| {
        events
            .iter()
            .filter(|e| e["Event"] != "INCOMING_REQUEST")
            .count()
            >= expected
    });
    let (events, _) = observer.stop();
    gateway.stop();
    let log = gateway.read("logs/truth.log");
    let truth = match config.gateway {
        Kind::Nginx => parse_nginx_truth(&log),
        Kind::Apache => parse_apache_truth(&log, |path| {
            let backend = if path.starts_with("/fresh/") {
                two.port()
            } else if path.starts_with("/pool/") || path.starts_with("/auth/") {
                one.port()
            } else {
                return None;
            };
            Some(format!("127.0.0.1:{backend}"))
        }),
    };
    Ok(compare(&plan, &answered, &truth, &events))
}
