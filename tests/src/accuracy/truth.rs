//! The gateways' own logs, read as ground truth: what each request got, and which upstream
//! attempts the gateway made for it.
use std::collections::HashMap;

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

/// Apache's ground-truth line: `%>s|%U%q|%{BALANCER_WORKER_NAME}e`; the balancer names the
/// member it chose, a route with one backend names none (it comes from the route).
pub const APACHE_TRUTH_FORMAT: &str = "%>s|%U%q|%{BALANCER_WORKER_NAME}e";

pub fn parse_apache_truth(
    log: &str,
    backend_of: impl Fn(&str) -> Option<String>,
) -> HashMap<u64, Truth> {
    log.lines()
        .filter_map(|line| {
            let mut fields = line.split('|');
            let status: u16 = fields.next()?.trim().parse().ok()?;
            let url = fields.next()?;
            let worker = fields
                .next()
                .map(str::trim)
                .filter(|w| !w.is_empty() && *w != "-")
                .map(|w| {
                    w.trim_start_matches("http://")
                        .trim_end_matches('/')
                        .to_owned()
                });
            let token = token_of(url)?;
            let path = url.split('?').next()?;
            let upstream = match worker.or_else(|| backend_of(path)) {
                Some(address) if status < 500 => vec![(address, status.to_string())],
                _ => Vec::new(),
            };
            Some((token, Truth { status, upstream }))
        })
        .collect()
}
