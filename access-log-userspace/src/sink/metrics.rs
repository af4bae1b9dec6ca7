//! Prometheus metrics (`--metrics ADDR`): counters and histograms kept from the events as they
//! are written (a [`Sink`] like the others), plus what the run knows besides events (kernel
//! drops, connections and requests tracked), served at `/metrics` in the text exposition
//! format by one small HTTP thread. Label values are bounded: APIs as the events name them,
//! at most [`MAX_APIS`] distinct ones (then `other`), never URLs; error sources and codes come
//! from the fixed taxonomy.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::Duration,
};

use super::Sink;
use crate::{
    event::{Event, EventKind, Value},
    kernel::KernelDrops,
};

/// Distinct API label values kept; later ones are counted as `other`.
pub const MAX_APIS: usize = 200;
/// Upper bounds of the backend latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    /// Observations at or below each bucket's bound (not cumulative yet).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(index) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// What the run knows besides its events, set once a second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunGauges {
    pub connections: u64,
    pub requests_in_flight: u64,
}

#[derive(Default)]
struct State {
    /// (API, event) → requests seen (INCOMING_REQUEST) or ended.
    events: BTreeMap<(String, &'static str, &'static str), u64>,
    latency: BTreeMap<String, Histogram>,
    /// (API, ErrorSource, ERROR_CODE, ERROR_MESSAGE).
    errors: BTreeMap<(String, String, String, String), u64>,
    /// Requests named in LOST events, by reason.
    lost_requests: BTreeMap<String, u64>,
    lost_records: u64,
    /// Ending events by the confidence of their pairing.
    pairings: BTreeMap<&'static str, u64>,
    drops: KernelDrops,
    gauges: RunGauges,
    apis: Vec<String>,
}

impl State {
    /// The API label of an event: its name, `""` when it has none, `other` past the cap.
    fn api(&mut self, event: &Event) -> String {
        let name = event.text("API").unwrap_or_default();
        if self.apis.iter().any(|a| a == name) {
            return name.to_owned();
        }
        if self.apis.len() < MAX_APIS {
            self.apis.push(name.to_owned());
            return name.to_owned();
        }
        "other".to_owned()
    }

    fn add(&mut self, event: &Event) {
        let api = self.api(event);
        match event.kind {
            EventKind::IncomingRequest => {
                *self
                    .events
                    .entry((api, event.kind.as_str(), "none"))
                    .or_default() += 1;
            }
            EventKind::RequestComplete | EventKind::Error => {
                let class = status_class(event.get("StatusCode"));
                *self
                    .events
                    .entry((api.clone(), event.kind.as_str(), class))
                    .or_default() += 1;
                if event.kind == EventKind::Error {
                    let text = |key| event.text(key).unwrap_or_default().to_owned();
                    *self
                        .errors
                        .entry((
                            api.clone(),
                            text("ErrorSource"),
                            text("ERROR_CODE"),
                            text("ERROR_MESSAGE"),
                        ))
                        .or_default() += 1;
                }
                let backend_answer =
                    event.kind == EventKind::RequestComplete && event.get("AnsweredBy").is_none();
                if backend_answer {
                    if let Some(Value::Millis(ms)) = event.get("ResponseTimeMs") {
                        if ms.is_finite() && *ms >= 0.0 {
                            self.latency.entry(api).or_default().observe(ms / 1e3);
                        }
                    }
                }
                if event.get("RequestOutURL").is_some() {
                    let confidence = if event.text("PairingConfidence") == Some("low") {
                        "low"
                    } else {
                        "kernel_or_header"
                    };
                    *self.pairings.entry(confidence).or_default() += 1;
                }
            }
            EventKind::Lost => {
                let requests = match event.get("RequestsLost") {
                    Some(Value::Integer(n)) => *n,
                    _ => 0,
                };
                let reasons: Vec<&str> = event
                    .text("Reason")
                    .unwrap_or_default()
                    .split(", ")
                    .collect();
                // Requests of a LOST event of several reasons count under its first.
                if let Some(first) = reasons.first() {
                    *self.lost_requests.entry((*first).to_owned()).or_default() += requests;
                }
                if let Some(Value::Integer(records)) = event.get("RecordsLost") {
                    self.lost_records += records;
                }
            }
        }
    }

    fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        family(
            &mut out,
            "access_log_requests_total",
            "counter",
            "Requests by API, event (INCOMING_REQUEST when seen, REQUEST_COMPLETE or ERROR when ended) and status class.",
        );
        for ((api, event, class), count) in &self.events {
            let _ = writeln!(
                out,
                "access_log_requests_total{{api=\"{}\",event=\"{event}\",status_class=\"{class}\"}} {count}",
                label(api)
            );
        }
        family(
            &mut out,
            "access_log_backend_response_seconds",
            "histogram",
            "Time from a request's head to its backend's answer, by API.",
        );
        for (api, histogram) in &self.latency {
            let api = label(api);
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(histogram.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "access_log_backend_response_seconds_bucket{{api=\"{api}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "access_log_backend_response_seconds_bucket{{api=\"{api}\",le=\"+Inf\"}} {}\n\
                 access_log_backend_response_seconds_sum{{api=\"{api}\"}} {}\n\
                 access_log_backend_response_seconds_count{{api=\"{api}\"}} {}",
                histogram.count, histogram.sum, histogram.count
            );
        }
        family(
            &mut out,
            "access_log_errors_total",
            "counter",
            "ERROR events by API, ErrorSource, ERROR_CODE and ERROR_MESSAGE.",
        );
        for ((api, source, code, message), count) in &self.errors {
            let _ = writeln!(
                out,
                "access_log_errors_total{{api=\"{}\",error_source=\"{}\",error_code=\"{}\",error_message=\"{}\"}} {count}",
                label(api),
                label(source),
                label(code),
                label(message)
            );
        }
        family(
            &mut out,
            "access_log_lost_requests_total",
            "counter",
            "Requests whose end was not seen (named in LOST events), by reason.",
        );
        for (reason, count) in &self.lost_requests {
            let _ = writeln!(
                out,
                "access_log_lost_requests_total{{reason=\"{}\"}} {count}",
                label(reason)
            );
        }
        let drops = &self.drops;
        family(
            &mut out,
            "access_log_kernel_drops_total",
            "counter",
            "What the kernel side could not do, by cause: records lost (ring buffer full), calls not captured (tables full, unreadable buffers, TLS calls without a socket).",
        );
        for (cause, count) in [
            ("ring_buffer_full", drops.ring_full),
            ("socket_table_full", drops.socket_table_full),
            ("call_table_full", drops.call_table_full),
            ("unreadable_buffer", drops.read_failed),
            ("watch_table_full", drops.watch_table_full),
            ("tls_socket_unknown", drops.tls_socket_unknown),
        ] {
            let _ = writeln!(
                out,
                "access_log_kernel_drops_total{{cause=\"{cause}\"}} {count}"
            );
        }
        family(
            &mut out,
            "access_log_lost_records_total",
            "counter",
            "Kernel records reported lost in LOST events.",
        );
        let _ = writeln!(out, "access_log_lost_records_total {}", self.lost_records);
        family(
            &mut out,
            "access_log_pairings_total",
            "counter",
            "Ending events paired with a backend call, by confidence (low: order or content only).",
        );
        for confidence in ["kernel_or_header", "low"] {
            let count = self.pairings.get(confidence).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "access_log_pairings_total{{confidence=\"{confidence}\"}} {count}"
            );
        }
        family(
            &mut out,
            "access_log_connections",
            "gauge",
            "Client and backend connections followed.",
        );
        let _ = writeln!(out, "access_log_connections {}", self.gauges.connections);
        family(
            &mut out,
            "access_log_requests_in_flight",
            "gauge",
            "Requests seen and not yet ended.",
        );
        let _ = writeln!(
            out,
            "access_log_requests_in_flight {}",
            self.gauges.requests_in_flight
        );
        out
    }
}

/// The HELP and TYPE lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `2xx` .. `5xx`, or `none` for an event with no status.
fn status_class(status: Option<&Value>) -> &'static str {
    match status {
        Some(Value::Integer(status)) => match status / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "other",
        },
        _ => "none",
    }
}

/// A label value escaped as the exposition format says: backslash, double quote, newline.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The metrics, shared by the sink that keeps them and the thread that serves them.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Mutex<State>>);

impl Metrics {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves counters that are still counters.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kernel's drop counters (totals since attach) and the run's gauges.
    pub fn set_run(&self, drops: KernelDrops, gauges: RunGauges) {
        let mut state = self.state();
        state.drops = drops;
        state.gauges = gauges;
    }

    /// The kernel's drop counters and the run's gauges, as last set.
    pub fn run(&self) -> (KernelDrops, RunGauges) {
        let state = self.state();
        (state.drops, state.gauges)
    }

    /// The text exposition format (version 0.0.4) of everything kept.
    pub fn render(&self) -> String {
        self.state().render()
    }

    /// Serves `/metrics` from a thread of its own.
    pub fn serve(&self, listener: TcpListener) -> io::Result<()> {
        let metrics = self.clone();
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    // One scrape at a time: Prometheus scrapes every few seconds.
                    let _ = answer(stream, &metrics);
                }
            })?;
        Ok(())
    }
}

/// The metrics' address, bound before anything is attached (an address in use is an error
/// then) and served once the run has dropped its privileges (a thread started before would
/// keep them).
pub struct MetricsListener(TcpListener);

impl MetricsListener {
    pub fn bind(address: SocketAddr) -> io::Result<MetricsListener> {
        TcpListener::bind(address).map(MetricsListener)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Starts serving; the metrics to keep.
    pub fn start(self) -> io::Result<Metrics> {
        let metrics = Metrics::default();
        metrics.serve(self.0)?;
        Ok(metrics)
    }
}

/// Answers one HTTP/1.1 request: GET /metrics, or 404; the connection is closed after.
fn answer(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (Some(b"GET"), _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET /metrics\n".to_owned(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// Keeps the metrics from the events written.
pub struct MetricsSink(pub Metrics);

impl Sink for MetricsSink {
    fn write_event(&mut self, event: &Event) -> io::Result<()> {
        self.0.state().add(event);
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

    fn event(kind: EventKind, fields: Fields) -> Event {
        Event {
            unix_nanos: 0,
            kind,
            fields: fields.text("Event", kind.as_str()).build(),
        }
    }

    #[test]
    fn events_become_bounded_series() {
        let metrics = Metrics::default();
        let mut sink = MetricsSink(metrics.clone());
        for index in 0..MAX_APIS + 5 {
            let api = format!("api{index}");
            sink.write_event(&event(
                EventKind::IncomingRequest,
                Fields::new().text("API", api),
            ))
            .unwrap();
        }
        sink.write_event(&event(
            EventKind::RequestComplete,
            Fields::new()
                .text("API", "api1")
                .integer("StatusCode", 201)
                .text("RequestOutURL", "http://b/x")
                .millis("ResponseTimeMs", 3.0),
        ))
        .unwrap();
        sink.write_event(&event(
            EventKind::Error,
            Fields::new()
                .text("ErrorSource", "fault")
                .text("API", "api\"2")
                .integer("StatusCode", 502)
                .text("ERROR_CODE", "101503")
                .text("ERROR_MESSAGE", "Error connecting to the back end"),
        ))
        .unwrap();
        sink.write_event(&event(
            EventKind::Lost,
            Fields::new()
                .text("Reason", "ring buffer full, observer stopped")
                .integer("RecordsLost", 7)
                .integer("RequestsLost", 3),
        ))
        .unwrap();
        metrics.set_run(
            KernelDrops {
                ring_full: 7,
                ..KernelDrops::default()
            },
            RunGauges {
                connections: 4,
                requests_in_flight: 2,
            },
        );
        let text = metrics.render();
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        has(
            r#"access_log_requests_total{api="api0",event="INCOMING_REQUEST",status_class="none"} 1"#,
        );
        has(
            r#"access_log_requests_total{api="other",event="INCOMING_REQUEST",status_class="none"} 5"#,
        );
        has(
            r#"access_log_requests_total{api="api1",event="REQUEST_COMPLETE",status_class="2xx"} 1"#,
        );
        has(r#"access_log_backend_response_seconds_bucket{api="api1",le="0.0025"} 0"#);
        has(r#"access_log_backend_response_seconds_bucket{api="api1",le="0.005"} 1"#);
        has(r#"access_log_backend_response_seconds_bucket{api="api1",le="+Inf"} 1"#);
        has(r#"access_log_backend_response_seconds_count{api="api1"} 1"#);
        has(
            r#"access_log_errors_total{api="other",error_source="fault",error_code="101503",error_message="Error connecting to the back end"} 1"#,
        );
        has(r#"access_log_lost_requests_total{reason="ring buffer full"} 3"#);
        has("access_log_lost_records_total 7");
        has(r#"access_log_kernel_drops_total{cause="ring_buffer_full"} 7"#);
        has(r#"access_log_pairings_total{confidence="kernel_or_header"} 1"#);
        has("access_log_connections 4");
        has("access_log_requests_in_flight 2");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_server_answers_metrics_and_nothing_else() {
        let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let _metrics = listener.start().unwrap();
        let get = |request: &str| {
            let mut stream = TcpStream::connect(address).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        let answer = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("# TYPE access_log_requests_total counter"));
        assert!(get("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    }
}
