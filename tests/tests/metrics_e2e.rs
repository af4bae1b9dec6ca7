//! `--metrics` scraped by a real Prometheus server (Debian's package) started here: nginx
//! answers through its backend, refuses an unknown API and fails to reach a dead backend; the
//! query API then returns the series those requests must make, `promtool check metrics` finds
//! the exposition clean, and nothing but /metrics is served.
use std::{
    fs,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    curl, free_port, gateway::ApiGateway, observer::Observer, require_root, wait_for_port,
};

/// Prometheus, killed with the test.
struct Prometheus(Child, std::path::PathBuf);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = fs::remove_dir_all(&self.1);
    }
}

fn get(url: &str) -> String {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "5", url])
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of the one series `query` selects, as Prometheus's query API answers it.
fn query(port: u16, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let answer = get(&format!(
        "http://127.0.0.1:{port}/api/v1/query?query={encoded}"
    ));
    let answer: Value = serde_json::from_str(&answer).ok()?;
    let result = answer["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_requests_errors_and_latency_by_api() {
    require_root();
    let ApiGateway {
        backend,
        gateway,
        apis,
        port,
    } = ApiGateway::start("metrics", "", "");
    let metrics_port = free_port();
    let metrics_address = format!("127.0.0.1:{metrics_port}");
    let observer = Observer::attach(
        gateway.master_pid(),
        &[
            "--apis",
            apis.to_str().unwrap(),
            "--metrics",
            &metrics_address,
        ],
    )
    .expect("attaching");

    // Prometheus scraping the observer every second.
    let prometheus_port = free_port();
    let dir = std::env::temp_dir().join(format!("access-log-prometheus-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: access-log\n    static_configs:\n      - targets: ['{metrics_address}']\n"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting prometheus (cargo xtask setup installs it)");
    let _prometheus = Prometheus(child, dir);
    wait_for_port(prometheus_port, Duration::from_secs(30)).expect("prometheus listening");

    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    for index in 0..20 {
        let status = if index % 4 == 3 { "201" } else { "200" };
        let header = format!("x-want-status: {status}");
        let expected: u16 = status.parse().unwrap();
        assert_eq!(
            curl(&["-H", &header, &url(&format!("/orders/{index}"))]),
            vec![expected]
        );
    }
    for index in 0..3 {
        assert_eq!(curl(&[&url(&format!("/billing/{index}"))]), vec![502]);
    }
    assert_eq!(curl(&[&url("/nowhere")]), vec![404]);
    observer.wait_ended(24);

    // The exposition as served, and as promtool reads it.
    let exposition = get(&format!("http://{metrics_address}/metrics"));
    assert!(
        exposition.contains(
            "access_log_requests_total{api=\"Orders:v1\",event=\"REQUEST_COMPLETE\",status_class=\"2xx\"} 20"
        ),
        "{exposition}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    {
        use std::io::Write as _;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(exposition.as_bytes())
            .unwrap();
    }
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(get(&format!("http://{metrics_address}/")).contains("/metrics"));

    // What Prometheus stored.
    let expected = [
        (
            r#"access_log_requests_total{api="Orders:v1",event="REQUEST_COMPLETE",status_class="2xx"}"#,
            20.0,
        ),
        (
            r#"access_log_requests_total{api="Orders:v1",event="INCOMING_REQUEST"}"#,
            20.0,
        ),
        (
            r#"access_log_requests_total{api="Billing:v2",event="ERROR",status_class="5xx"}"#,
            3.0,
        ),
        (
            r#"sum(access_log_errors_total{api="Billing:v2",error_code="101503"})"#,
            3.0,
        ),
        (
            r#"sum(access_log_errors_total{api="",error_source="main",error_code="404"})"#,
            1.0,
        ),
        (
            r#"access_log_backend_response_seconds_count{api="Orders:v1"}"#,
            20.0,
        ),
        (
            r#"access_log_backend_response_seconds_bucket{api="Orders:v1",le="+Inf"}"#,
            20.0,
        ),
        (
            r#"access_log_kernel_drops_total{cause="ring_buffer_full"}"#,
            0.0,
        ),
        (r#"access_log_pairings_total{confidence="low"}"#, 0.0),
        (r#"up{job="access-log"}"#, 1.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let missing = expected
            .iter()
            .map(|(q, want)| (q, *want, query(prometheus_port, q)))
            .filter(|(_, want, got)| *got != Some(*want))
            .map(|(q, want, got)| format!("{q}: want {want}, got {got:?}"))
            .collect::<Vec<_>>();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        thread::sleep(Duration::from_millis(500));
    };
    assert!(
        last.is_empty(),
        "series Prometheus does not have:\n{}",
        last.join("\n")
    );
    // A histogram Prometheus can take quantiles of.
    let p99 = query(
        prometheus_port,
        r#"histogram_quantile(0.99, sum by (le) (access_log_backend_response_seconds_bucket{api="Orders:v1"}))"#,
    )
    .expect("a p99 backend latency");
    assert!(p99 > 0.0 && p99 <= 1.0, "p99 {p99}");
    let (events, _) = observer.stop();
    tests::observer::assert_every_request_ends_once(&events);
    drop(backend);
}
