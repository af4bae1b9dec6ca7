//! What `access-log top` shows, kept from the events as they come (a [`Sink`]): per API the
//! request rate, successes, each error kind and backend latency percentiles; the most recent
//! errors; requests lost. Shared with the thread that draws the screen.
use std::{
    collections::{BTreeMap, VecDeque},
    io,
    sync::{Arc, Mutex, MutexGuard},
};

use super::Sink;
use crate::event::{Event, EventKind, Value};

/// Seconds over which a request rate is counted.
pub const RATE_WINDOW_S: i128 = 10;
/// Backend latencies kept per API for its percentiles (the most recent).
const LATENCIES: usize = 1024;
/// Recent errors kept.
const RECENT_ERRORS: usize = 64;
/// Distinct APIs kept; later ones are counted as `other`.
const MAX_APIS: usize = 500;

/// One API's figures.
#[derive(Clone, Debug, Default)]
pub struct ApiFigures {
    pub requests: u64,
    pub successes: u64,
    /// ERROR events by ERROR_MESSAGE.
    pub errors: BTreeMap<String, u64>,
    /// Arrival times (event nanoseconds) of the requests of the last [`RATE_WINDOW_S`].
    arrivals: VecDeque<i128>,
    latencies_ms: VecDeque<f64>,
}

impl ApiFigures {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Requests per second over the last window that ends at `now`.
    pub fn rate(&self, now: i128) -> f64 {
        let since = now - RATE_WINDOW_S * 1_000_000_000;
        self.arrivals.iter().filter(|t| **t > since).count() as f64 / RATE_WINDOW_S as f64
    }

    /// The `q` quantile of the recent backend latencies (nearest rank), if any.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        let mut sorted: Vec<f64> = self.latencies_ms.iter().copied().collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let rank = (q * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }
}

/// An ERROR as the recent-errors list shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecentError {
    pub unix_nanos: i128,
    pub api: String,
    pub status: Option<u64>,
    pub code: String,
    pub message: String,
    pub url: String,
}

/// Everything `top` shows.
#[derive(Clone, Debug, Default)]
pub struct DashboardState {
    pub apis: BTreeMap<String, ApiFigures>,
    pub recent_errors: VecDeque<RecentError>,
    pub requests_lost: u64,
    /// The time of the newest event (the clock rates are counted against).
    pub now: i128,
    /// The run ended (why): nothing more will come, the probes are detached.
    pub ended: Option<String>,
}

impl DashboardState {
    fn figures(&mut self, event: &Event) -> &mut ApiFigures {
        let api = event.text("API").unwrap_or_default();
        let api = if api.is_empty() { "(no API)" } else { api };
        let key = if self.apis.contains_key(api) || self.apis.len() < MAX_APIS {
            api.to_owned()
        } else {
            "other".to_owned()
        };
        self.apis.entry(key).or_default()
    }

    pub fn add(&mut self, event: &Event) {
        self.now = self.now.max(event.unix_nanos);
        let now = self.now;
        match event.kind {
            EventKind::IncomingRequest => {
                let figures = self.figures(event);
                figures.requests += 1;
                figures.arrivals.push_back(event.unix_nanos);
                while figures
                    .arrivals
                    .front()
                    .is_some_and(|t| *t <= now - RATE_WINDOW_S * 1_000_000_000)
                {
                    figures.arrivals.pop_front();
                }
            }
            EventKind::RequestComplete => {
                let from_backend = event.get("AnsweredBy").is_none();
                let figures = self.figures(event);
                figures.successes += 1;
                if let (true, Some(Value::Millis(ms))) = (from_backend, event.get("ResponseTimeMs"))
                {
                    if figures.latencies_ms.len() == LATENCIES {
                        figures.latencies_ms.pop_front();
                    }
                    figures.latencies_ms.push_back(*ms);
                }
            }
            EventKind::Error => {
                let message = event.text("ERROR_MESSAGE").unwrap_or_default().to_owned();
                *self
                    .figures(event)
                    .errors
                    .entry(message.clone())
                    .or_default() += 1;
                if self.recent_errors.len() == RECENT_ERRORS {
                    self.recent_errors.pop_back();
                }
                self.recent_errors.push_front(RecentError {
                    unix_nanos: event.unix_nanos,
                    api: event.text("API").unwrap_or_default().to_owned(),
                    status: match event.get("StatusCode") {
                        Some(Value::Integer(status)) => Some(*status),
                        _ => None,
                    },
                    code: event.text("ERROR_CODE").unwrap_or_default().to_owned(),
                    message,
                    url: event.text("RequestInURL").unwrap_or_default().to_owned(),
                });
            }
            EventKind::Lost => {
                if let Some(Value::Integer(lost)) = event.get("RequestsLost") {
                    self.requests_lost += lost;
                }
            }
        }
    }
}

/// The dashboard's state, shared by the sink that keeps it and the thread that draws it.
#[derive(Clone, Default)]
pub struct Dashboard(Arc<Mutex<DashboardState>>);

impl Dashboard {
    pub fn state(&self) -> MutexGuard<'_, DashboardState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sink for Dashboard {
    fn write_event(&mut self, event: &Event) -> io::Result<()> {
        self.state().add(event);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fields;

    fn event(kind: EventKind, at_s: i128, fields: Fields) -> Event {
        Event {
            unix_nanos: at_s * 1_000_000_000,
            kind,
            fields: fields.build(),
        }
    }

    #[test]
    fn rates_errors_and_latency_per_api() {
        let mut dashboard = Dashboard::default();
        for second in 0..20 {
            for _ in 0..3 {
                dashboard
                    .write_event(&event(
                        EventKind::IncomingRequest,
                        second,
                        Fields::new().text("API", "Orders:v1"),
                    ))
                    .unwrap();
            }
        }
        for ms in 1..=100 {
            dashboard
                .write_event(&event(
                    EventKind::RequestComplete,
                    19,
                    Fields::new()
                        .text("API", "Orders:v1")
                        .millis("ResponseTimeMs", f64::from(ms)),
                ))
                .unwrap();
        }
        dashboard
            .write_event(&event(
                EventKind::Error,
                19,
                Fields::new()
                    .text("API", "Billing:v2")
                    .integer("StatusCode", 502)
                    .text("ERROR_CODE", "101503")
                    .text("ERROR_MESSAGE", "Error connecting to the back end")
                    .text("RequestInURL", "/billing/1"),
            ))
            .unwrap();
        let state = dashboard.state();
        let orders = &state.apis["Orders:v1"];
        assert_eq!(orders.requests, 60);
        assert_eq!(orders.rate(state.now), 3.0);
        assert_eq!(orders.latency_ms(0.5), Some(50.0));
        assert_eq!(orders.latency_ms(0.99), Some(99.0));
        assert_eq!(state.apis["Billing:v2"].error_count(), 1);
        assert_eq!(state.recent_errors[0].status, Some(502));
        assert_eq!(state.recent_errors[0].url, "/billing/1");
    }
}
