//! The questions the WSO2 API Manager access log's users ask of it, answered from events: calls
//! per API over time, successes and failures by API, URLs that matched no API, the most
//! frequent errors, and backend latency by API; filtered by API, URL pattern and time, as the
//! original's Splunk queries filter (patterns with `*`, case-insensitive).
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::read::LoggedEvent;

/// The name a request with no API is reported under.
pub const NO_API: &str = "(no API)";

/// A Splunk-style pattern: `*` matches any run of characters, the rest is compared without
/// regard to case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(Vec<String>);

impl Pattern {
    pub fn new(text: &str) -> Pattern {
        Pattern(text.to_lowercase().split('*').map(str::to_owned).collect())
    }

    pub fn matches(&self, text: &str) -> bool {
        let text = text.to_lowercase();
        let parts = &self.0;
        let (first, last) = (&parts[0], &parts[parts.len() - 1]);
        if parts.len() == 1 {
            return text == *first;
        }
        if !text.starts_with(first.as_str()) || text.len() < first.len() + last.len() {
            return false;
        }
        if !text[first.len()..].ends_with(last.as_str()) {
            return false;
        }
        let mut rest = &text[first.len()..text.len() - last.len()];
        for middle in &parts[1..parts.len() - 1] {
            match rest.find(middle.as_str()) {
                Some(at) => rest = &rest[at + middle.len()..],
                None => return false,
            }
        }
        true
    }
}

/// Which events a report counts.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// API=pattern (any of them).
    pub apis: Vec<Pattern>,
    /// NOT API=pattern.
    pub exclude_apis: Vec<Pattern>,
    /// RequestInURL=pattern.
    pub url: Option<Pattern>,
    /// Milliseconds since the epoch, inclusive / exclusive.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

impl Filter {
    fn keeps(&self, event: &LoggedEvent) -> bool {
        let api = event.get("API").unwrap_or_default();
        (self.apis.is_empty() || self.apis.iter().any(|p| p.matches(api)))
            && !self.exclude_apis.iter().any(|p| p.matches(api))
            && self
                .url
                .as_ref()
                .is_none_or(|p| p.matches(event.get("RequestInURL").unwrap_or_default()))
            && self.since_ms.is_none_or(|since| event.unix_ms >= since)
            && self.until_ms.is_none_or(|until| event.unix_ms < until)
    }
}

/// Backend latency of one API, from REQUEST_COMPLETE's ResponseTimeMs (answers from a backend).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One error kind and how often it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorCount {
    pub error_source: String,
    pub error_code: String,
    pub error_message: String,
    pub count: u64,
}

/// Everything a report says.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub events: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// Width of a time bucket, in seconds.
    pub bucket_seconds: i64,
    /// INCOMING_REQUEST | timechart count by API: bucket start (ms) → API → calls.
    pub calls_over_time: BTreeMap<i64, BTreeMap<String, u64>>,
    /// NOT INCOMING_REQUEST | eval result=if(Event=="REQUEST_COMPLETE", "Success",
    /// ERROR_MESSAGE) | chart count by API, result.
    pub results_by_api: BTreeMap<String, BTreeMap<String, u64>>,
    /// StatusCode=404 | stats count by RequestInURL, the most frequent first.
    pub not_found_urls: Vec<(String, u64)>,
    /// ERROR events by kind, the most frequent first.
    pub top_errors: Vec<ErrorCount>,
    pub latency_by_api: BTreeMap<String, Latency>,
    /// Requests named in LOST events (their end was not seen).
    pub requests_lost: u64,
}

/// The result a success/failure chart shows for a successful call.
pub const SUCCESS: &str = "Success";

/// Distinct time buckets kept while reading with an automatic width: past it, the buckets
/// are merged into wider ones, so memory stays bounded however long the logs span.
const MAX_BUCKETS: usize = 4096;

/// Builds a [`Report`] one event at a time.
pub struct ReportBuilder {
    filter: Filter,
    /// Bucket width in seconds; `auto` lets it grow (see [`MAX_BUCKETS`]).
    width: i64,
    auto: bool,
    events: u64,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    calls: BTreeMap<i64, BTreeMap<String, u64>>,
    results_by_api: BTreeMap<String, BTreeMap<String, u64>>,
    not_found: HashMap<String, u64>,
    errors: HashMap<(String, String, String), u64>,
    latencies: BTreeMap<String, Vec<f64>>,
    requests_lost: u64,
}

impl ReportBuilder {
    /// `bucket_seconds` 0 picks a width that gives about 30 buckets over the events' span.
    pub fn new(filter: Filter, bucket_seconds: i64) -> ReportBuilder {
        ReportBuilder {
            filter,
            width: bucket_seconds.max(1),
            auto: bucket_seconds <= 0,
            events: 0,
            first_ms: None,
            last_ms: None,
            calls: BTreeMap::new(),
            results_by_api: BTreeMap::new(),
            not_found: HashMap::new(),
            errors: HashMap::new(),
            latencies: BTreeMap::new(),
            requests_lost: 0,
        }
    }

    /// Counts `event` if the filter keeps it.
    pub fn add(&mut self, event: &LoggedEvent) {
        if !self.filter.keeps(event) {
            return;
        }
        self.events += 1;
        self.first_ms = Some(
            self.first_ms
                .map_or(event.unix_ms, |f| f.min(event.unix_ms)),
        );
        self.last_ms = Some(self.last_ms.map_or(event.unix_ms, |l| l.max(event.unix_ms)));
        let api = match event.get("API") {
            Some(api) if !api.is_empty() => api.to_owned(),
            _ => NO_API.to_owned(),
        };
        match event.kind() {
            "INCOMING_REQUEST" => {
                let bucket_ms = self.width * 1000;
                let bucket = event.unix_ms.div_euclid(bucket_ms) * bucket_ms;
                *self
                    .calls
                    .entry(bucket)
                    .or_default()
                    .entry(api)
                    .or_default() += 1;
                if self.auto && self.calls.len() > MAX_BUCKETS {
                    let wider = WIDTHS
                        .iter()
                        .copied()
                        .find(|w| *w > self.width)
                        .unwrap_or(self.width * 2);
                    self.rebucket(wider);
                }
            }
            "REQUEST_COMPLETE" | "ERROR" => {
                let complete = event.kind() == "REQUEST_COMPLETE";
                let result = if complete {
                    SUCCESS.to_owned()
                } else {
                    event.get("ERROR_MESSAGE").unwrap_or("null").to_owned()
                };
                *self
                    .results_by_api
                    .entry(api.clone())
                    .or_default()
                    .entry(result)
                    .or_default() += 1;
                if event.get("StatusCode") == Some("404") {
                    let url = event.get("RequestInURL").unwrap_or_default().to_owned();
                    *self.not_found.entry(url).or_default() += 1;
                }
                if complete {
                    let from_backend = event.get("AnsweredBy").is_none();
                    let ms = event
                        .get("ResponseTimeMs")
                        .and_then(|m| m.parse::<f64>().ok());
                    if let (true, Some(ms)) = (from_backend, ms) {
                        self.latencies.entry(api).or_default().push(ms);
                    }
                } else {
                    let text = |key| event.get(key).unwrap_or_default().to_owned();
                    *self
                        .errors
                        .entry((
                            text("ErrorSource"),
                            text("ERROR_CODE"),
                            text("ERROR_MESSAGE"),
                        ))
                        .or_default() += 1;
                }
            }
            "LOST" => {
                self.requests_lost += event
                    .get("RequestsLost")
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
    }

    /// The calls merged into buckets `width` seconds wide.
    fn rebucket(&mut self, width: i64) {
        let bucket_ms = width * 1000;
        let mut wider: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
        for (start, by_api) in std::mem::take(&mut self.calls) {
            let merged = wider
                .entry(start.div_euclid(bucket_ms) * bucket_ms)
                .or_default();
            for (api, count) in by_api {
                *merged.entry(api).or_default() += count;
            }
        }
        self.calls = wider;
        self.width = width;
    }

    pub fn finish(mut self) -> Report {
        if self.auto {
            let span = self.first_ms.zip(self.last_ms).map_or(0, |(a, b)| b - a);
            let width = auto_bucket(span);
            if width > self.width {
                self.rebucket(width);
            }
        }
        let mut not_found_urls: Vec<(String, u64)> = self.not_found.into_iter().collect();
        not_found_urls.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut top_errors: Vec<ErrorCount> = self
            .errors
            .into_iter()
            .map(
                |((error_source, error_code, error_message), count)| ErrorCount {
                    error_source,
                    error_code,
                    error_message,
                    count,
                },
            )
            .collect();
        top_errors.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.error_code.cmp(&b.error_code))
        });
        let latency_by_api = self
            .latencies
            .into_iter()
            .map(|(api, mut values)| {
                values.sort_by(f64::total_cmp);
                let latency = Latency {
                    count: values.len() as u64,
                    p50_ms: quantile(&values, 0.50),
                    p90_ms: quantile(&values, 0.90),
                    p99_ms: quantile(&values, 0.99),
                    max_ms: values.last().copied().unwrap_or(0.0),
                };
                (api, latency)
            })
            .collect();
        Report {
            events: self.events,
            first_ms: self.first_ms,
            last_ms: self.last_ms,
            bucket_seconds: self.width,
            calls_over_time: self.calls,
            results_by_api: self.results_by_api,
            not_found_urls,
            top_errors,
            latency_by_api,
            requests_lost: self.requests_lost,
        }
    }
}

impl Report {
    /// A report of the events `filter` keeps (see [`ReportBuilder::new`] for the bucket).
    pub fn build(events: &[LoggedEvent], filter: &Filter, bucket_seconds: i64) -> Report {
        let mut builder = ReportBuilder::new(filter.clone(), bucket_seconds);
        for event in events {
            builder.add(event);
        }
        builder.finish()
    }

    /// Every API that appears in the calls over time, in order.
    pub fn apis_over_time(&self) -> Vec<&str> {
        let mut apis: Vec<&str> = self
            .calls_over_time
            .values()
            .flat_map(|by_api| by_api.keys().map(String::as_str))
            .collect();
        apis.sort_unstable();
        apis.dedup();
        apis
    }
}

/// The nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Round bucket widths, in seconds.
const WIDTHS: [i64; 12] = [1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 21_600, 86_400];

/// A round bucket width giving about 30 buckets over `span_ms`.
fn auto_bucket(span_ms: i64) -> i64 {
    let wanted = span_ms / 1000 / 30;
    WIDTHS
        .iter()
        .copied()
        .find(|w| *w >= wanted)
        .unwrap_or(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ms: i64, fields: &[(&str, &str)]) -> LoggedEvent {
        LoggedEvent {
            unix_ms: ms,
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v != "null").then(|| (*v).to_owned())))
                .collect(),
        }
    }

    fn sample() -> Vec<LoggedEvent> {
        vec![
            event(
                0,
                &[
                    ("Event", "INCOMING_REQUEST"),
                    ("API", "lzelus--Echo:v1.0.0"),
                    ("RequestInURL", "/echo/1"),
                ],
            ),
            event(
                500,
                &[
                    ("Event", "REQUEST_COMPLETE"),
                    ("API", "lzelus--Echo:v1.0.0"),
                    ("StatusCode", "200"),
                    ("ResponseTimeMs", "4.000"),
                    ("RequestInURL", "/echo/1"),
                ],
            ),
            event(
                1_000,
                &[
                    ("Event", "INCOMING_REQUEST"),
                    ("API", "Orders:v1"),
                    ("RequestInURL", "/orders/CCES/2"),
                ],
            ),
            event(
                1_200,
                &[
                    ("Event", "ERROR"),
                    ("API", "Orders:v1"),
                    ("StatusCode", "502"),
                    ("ErrorSource", "fault"),
                    ("ERROR_CODE", "101503"),
                    ("ERROR_MESSAGE", "Error connecting to the back end"),
                    ("RequestInURL", "/orders/CCES/2"),
                ],
            ),
            event(
                61_000,
                &[("Event", "INCOMING_REQUEST"), ("RequestInURL", "/nothing")],
            ),
            event(
                61_100,
                &[
                    ("Event", "ERROR"),
                    ("StatusCode", "404"),
                    ("ErrorSource", "main"),
                    ("ERROR_CODE", "404"),
                    ("ERROR_MESSAGE", "No API matches the request"),
                    ("RequestInURL", "/nothing"),
                ],
            ),
            event(62_000, &[("Event", "LOST"), ("RequestsLost", "2")]),
        ]
    }

    #[test]
    fn the_original_queries_are_answered() {
        let report = Report::build(&sample(), &Filter::default(), 60);
        assert_eq!(report.events, 7);
        assert_eq!(report.calls_over_time.len(), 2);
        assert_eq!(report.calls_over_time[&0]["Orders:v1"], 1);
        assert_eq!(report.calls_over_time[&60_000][NO_API], 1);
        assert_eq!(report.results_by_api["lzelus--Echo:v1.0.0"][SUCCESS], 1);
        assert_eq!(
            report.results_by_api["Orders:v1"]["Error connecting to the back end"],
            1
        );
        assert_eq!(report.not_found_urls, vec![("/nothing".to_owned(), 1)]);
        assert_eq!(report.top_errors.len(), 2);
        assert_eq!(report.latency_by_api["lzelus--Echo:v1.0.0"].p99_ms, 4.0);
        assert_eq!(report.requests_lost, 2);
    }

    #[test]
    fn filters_restrict_as_the_splunk_queries_do() {
        let echo_only = Filter {
            apis: vec![Pattern::new("*echo*")],
            ..Filter::default()
        };
        assert_eq!(Report::build(&sample(), &echo_only, 60).events, 2);
        let not_echo = Filter {
            exclude_apis: vec![Pattern::new("*Echo*")],
            ..Filter::default()
        };
        assert_eq!(Report::build(&sample(), &not_echo, 60).events, 5);
        let cces = Filter {
            url: Some(Pattern::new("*CCES*")),
            ..Filter::default()
        };
        assert_eq!(Report::build(&sample(), &cces, 60).events, 2);
        let late = Filter {
            since_ms: Some(61_000),
            until_ms: Some(62_000),
            ..Filter::default()
        };
        assert_eq!(Report::build(&sample(), &late, 60).events, 2);
    }

    #[test]
    fn a_long_span_is_counted_in_wider_buckets_as_it_is_read() {
        let mut builder = ReportBuilder::new(Filter::default(), 0);
        for second in 0..20_000 {
            builder.add(&event(
                second * 1000,
                &[("Event", "INCOMING_REQUEST"), ("API", "a")],
            ));
            assert!(builder.calls.len() <= MAX_BUCKETS + 1);
        }
        let report = builder.finish();
        assert_eq!(report.bucket_seconds, 900);
        assert_eq!(report.calls_over_time.len(), 23);
        let total: u64 = report.calls_over_time.values().map(|b| b["a"]).sum();
        assert_eq!(total, 20_000);
    }

    #[test]
    fn patterns_and_quantiles() {
        assert!(Pattern::new("*Echo*").matches("lzelus--echo:v1"));
        assert!(Pattern::new("a*c").matches("abc"));
        assert!(!Pattern::new("a*c").matches("ab"));
        assert!(Pattern::new("a*b*c").matches("a-b-c"));
        assert!(!Pattern::new("a*b*c").matches("a-c-b"));
        assert!(Pattern::new("exact").matches("EXACT"));
        assert!(!Pattern::new("ab*ba").matches("aba"));
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), 50.0);
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(auto_bucket(3_600_000), 300);
    }
}
