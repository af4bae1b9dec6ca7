//! The accuracy measurement: a planned mix of requests (routes, keep-alive or not, GET and
//! POST, random backend latencies and statuses, failing backends), the gateway's own log as
//! ground truth (`truth`), and the comparison of the observer's events against it (`compare`).
mod compare;
mod configs;
mod truth;

use std::{net::SocketAddr, time::Duration};

pub use compare::{compare, Report};
pub use truth::{parse_apache_truth, parse_nginx_truth, token_of, Truth};

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
    /// The ErrorSource that goes with each expected ERROR_CODE.
    fn expected_source(self) -> Option<&'static str> {
        match self {
            Route::Down | Route::Slow => Some("fault"),
            Route::AuthMissing | Route::AuthWrong => Some("_auth_failure_handler_"),
            Route::Unknown => Some("main"),
            _ => None,
        }
    }

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
        // Fifty statuses, so that a wrong pairing rarely matches the backend's status by
        // chance (the rewritten route drops the query that otherwise names the request).
        // (204 and 205 carry no body, and the backend sends one.)
        let status = match 200 + random.below(50) {
            204 | 205 => 200,
            status => status,
        };
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
            &configs::nginx_block(
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
            &configs::apache_body(std::path::Path::new("logs"), one.port(), two.port(), dead),
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
        // The balancer route's member comes from Apache's log; the other routes have one
        // backend each.
        Kind::Apache => parse_apache_truth(&log, |path| {
            let backend = if path.starts_with("/fresh/") {
                two.port()
            } else if path.starts_with("/auth/") {
                one.port()
            } else {
                return None;
            };
            Some(format!("127.0.0.1:{backend}"))
        }),
    };
    Ok(compare(&plan, &answered, &truth, &events))
}
