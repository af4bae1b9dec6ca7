//! Truth from outside the observer: what each backend answered to each request's token (the
//! backends record it), and where the gateway logs its attempts (nginx's `$upstream_addr` and
//! `$upstream_status`), how many it made.
use std::collections::HashMap;

use super::Plan;
use crate::backend::Served;

/// What is known of one request without the observer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Truth {
    /// Each answer a backend gave to the request's token, in order.
    pub served: Vec<Served>,
    /// The backend attempts the gateway made (refused connects included), where its log says.
    pub attempts: Option<usize>,
}

/// nginx's ground-truth line: `$http_x_token|$status|$upstream_addr|$upstream_status`.
pub const NGINX_TRUTH_FORMAT: &str = "$http_x_token|$status|$upstream_addr|$upstream_status";

/// Attempts per token from nginx's log: `$upstream_addr` separates attempts with ", " (and
/// ": " across upstream groups).
pub fn parse_nginx_truth(log: &str) -> HashMap<u64, usize> {
    log.lines()
        .filter_map(|line| {
            let mut fields = line.split('|');
            let token = fields.next()?.trim().parse().ok()?;
            let _status = fields.next()?;
            let addresses = fields.next()?;
            let attempts = addresses
                .split([',', ':'])
                .map(str::trim)
                .filter(|p| !p.is_empty() && *p != "-" && p.contains('.'))
                .count();
            Some((token, attempts))
        })
        .collect()
}

/// The truth of every planned request that left a trace outside the observer.
pub fn combine(
    plan: &Plan,
    served: &HashMap<u64, Vec<Served>>,
    attempts: &HashMap<u64, usize>,
) -> HashMap<u64, Truth> {
    plan.planned
        .iter()
        .filter_map(|planned| {
            let truth = Truth {
                served: served.get(&planned.token).cloned().unwrap_or_default(),
                attempts: attempts.get(&planned.token).copied(),
            };
            (!truth.served.is_empty() || truth.attempts.is_some()).then_some((planned.token, truth))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nginx_attempts_with_retries() {
        let truth = parse_nginx_truth(
            "7|200|127.0.0.1:1, 127.0.0.1:2|502, 201\n8|404|-|-\n9|200|127.0.0.1:1|200\n",
        );
        assert_eq!(truth[&7], 2);
        assert_eq!(truth[&8], 0);
        assert_eq!(truth[&9], 1);
    }
}
