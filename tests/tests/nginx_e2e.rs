//! End to end on a real nginx: the observer attached by PID to the master, real requests from
//! curl, and the exact events checked. Each test starts its own backends, gateway and observer.
use std::time::Duration;

use serde_json::Value;
use tests::{
    backend::Backend,
    curl, demo, free_port,
    gateway::Gateway,
    observer::{ending, of, Observer},
    require_root,
};

struct Setup {
    // Field order is drop order: the observer stops before the gateway and backends.
    observer: Observer,
    gateway: Gateway,
    backend: Backend,
    _inventory: Backend,
}

/// The demo's gateway (its config, with a port where nothing listens for /legacy/) in front of
/// two fresh backends, orders and inventory.
fn demo_gateway(name: &str, workers: u32) -> (Gateway, (Backend, Backend)) {
    let backend = Backend::start().expect("starting a backend");
    let inventory = Backend::start().expect("starting a backend");
    let port = free_port();
    let block = demo::nginx_http_block(port, backend.port(), inventory.port(), free_port());
    let gateway = Gateway::nginx(name, workers, &block, port).expect("starting nginx");
    (gateway, (backend, inventory))
}

impl Setup {
    fn start(name: &str) -> Setup {
        require_root();
        let (gateway, (backend, inventory)) = demo_gateway(name, 2);
        let catalog = demo::catalog_path();
        let observer = Observer::attach(
            gateway.master_pid(),
            &["--apis", catalog.to_str().expect("utf-8 path")],
        )
        .expect("attaching the observer");
        Setup {
            observer,
            gateway,
            backend,
            _inventory: inventory,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway.port)
    }

    fn wait_ended(&self, count: usize) -> Vec<Value> {
        self.observer.wait_ended(count)
    }

    /// Waits until `count` requests ended, then stops the observer (it flushes and must exit
    /// 0) and returns everything it logged, so "exactly one" means exactly one.
    fn finish(self, count: usize) -> Vec<Value> {
        self.observer.wait_ended(count);
        self.observer.stop().0
    }
}

fn all_text(events: &[Value]) -> String {
    events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn proxied_get_with_a_query_string() {
    let setup = Setup::start("get");
    let url = setup.url("/orders/items?color=red&size=2");
    assert_eq!(curl(&["-A", "e2e-agent/1.0", &url]), vec![200]);
    let backend = setup.backend.port();
    let events = setup.finish(1);
    let incoming = of(&events, "INCOMING_REQUEST");
    let complete = of(&events, "REQUEST_COMPLETE");
    assert_eq!((incoming.len(), complete.len()), (1, 1), "{events:#?}");
    assert!(of(&events, "ERROR").is_empty());
    let (request, done) = (incoming[0], complete[0]);
    assert!(request["MessageID"]
        .as_str()
        .unwrap()
        .starts_with("urn:uuid:"));
    assert_eq!(request["RequestInURL"], "/orders/items?color=red&size=2");
    assert_eq!(request["RequestInMethod"], "GET");
    assert_eq!(request["UserAgent"], "e2e-agent/1.0");
    assert_eq!(request["RemoteIP"], "127.0.0.1");
    assert_eq!(request["API"], "demo--Orders:v1");
    assert_eq!(done["ResponseTo"], request["MessageID"]);
    assert_eq!(done["StatusCode"], 200);
    assert_eq!(
        done["RequestOutURL"],
        format!("http://127.0.0.1:{backend}/v1/orders/items?color=red&size=2")
    );
    assert_eq!(done["RequestOutMethod"], "GET");
    assert_eq!(done["RequestInURL"], request["RequestInURL"]);
    assert_eq!(done["API"], "demo--Orders:v1");
    assert!(done["ResponseTimeMs"].as_f64().unwrap() >= 0.0);
    assert!(done["Timestamp"].as_str().unwrap().contains('T'));
}

#[test]
fn keep_alive_client_with_several_requests() {
    let setup = Setup::start("keepalive");
    let urls: Vec<String> = ["/orders/1?a=1", "/orders/2?a=2", "/orders/3?a=3"]
        .iter()
        .map(|p| setup.url(p))
        .collect();
    let args: Vec<&str> = urls.iter().map(String::as_str).collect();
    assert_eq!(curl(&args), vec![200, 200, 200]);
    let backend = setup.backend.port();
    let events = setup.finish(3);
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), 3, "{events:#?}");
    assert_eq!(of(&events, "REQUEST_COMPLETE").len(), 3, "{events:#?}");
    assert!(of(&events, "ERROR").is_empty(), "{events:#?}");
    let mut paths: Vec<&str> = incoming
        .iter()
        .map(|r| r["RequestInURL"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/orders/1?a=1", "/orders/2?a=2", "/orders/3?a=3"]);
    for request in incoming {
        let done = ending(&events, request).expect("each request completes");
        assert_eq!(done["Event"], "REQUEST_COMPLETE");
        let path = request["RequestInURL"].as_str().unwrap();
        assert_eq!(done["RequestInURL"], path);
        assert_eq!(done["StatusCode"], 200);
        let expected = format!("http://127.0.0.1:{backend}/v1{path}");
        assert_eq!(done["RequestOutURL"], expected);
    }
}

#[test]
fn post_with_a_body_logs_no_payload() {
    let setup = Setup::start("post");
    let body = format!("BODY-MARKER-{}", "x".repeat(2048));
    let url = setup.url("/orders/new");
    assert_eq!(curl(&["-d", &body, &url]), vec![200]);
    let events = setup.finish(1);
    let done = of(&events, "REQUEST_COMPLETE");
    assert_eq!(done.len(), 1, "{events:#?}");
    assert_eq!(done[0]["RequestInMethod"], "POST");
    assert_eq!(done[0]["RequestOutMethod"], "POST");
    assert!(!all_text(&events).contains("BODY-MARKER"));
}

#[test]
fn unknown_url_is_a_main_error() {
    let setup = Setup::start("notfound");
    assert_eq!(curl(&[&setup.url("/nope/x")]), vec![404]);
    let events = setup.finish(1);
    assert!(of(&events, "REQUEST_COMPLETE").is_empty());
    let errors = of(&events, "ERROR");
    assert_eq!(errors.len(), 1, "{events:#?}");
    assert_eq!(errors[0]["ErrorSource"], "main");
    assert_eq!(errors[0]["StatusCode"], 404);
    assert_eq!(errors[0]["ERROR_CODE"], "404");
    assert_eq!(errors[0]["RequestInURL"], "/nope/x");
    assert!(errors[0].get("API").is_none(), "no API matched");
}

#[test]
fn missing_and_wrong_api_keys_are_auth_failures() {
    let setup = Setup::start("auth");
    let url = setup.url("/inventory/widgets");
    assert_eq!(curl(&[&url]), vec![401]);
    assert_eq!(curl(&["-H", "apikey: not-the-key-7f3a", &url]), vec![401]);
    assert_eq!(
        curl(&["-H", &format!("apikey: {}", demo::API_KEY), &url]),
        vec![200]
    );
    let events = setup.finish(3);
    let errors = of(&events, "ERROR");
    assert_eq!(errors.len(), 2, "{events:#?}");
    for error in &errors {
        assert_eq!(error["ErrorSource"], "_auth_failure_handler_");
        assert_eq!(error["StatusCode"], 401);
        assert_eq!(error["API"], "demo--Inventory:v2");
    }
    assert_eq!(errors[0]["ERROR_CODE"], "900902");
    assert_eq!(errors[0]["ERROR_MESSAGE"], "Missing Credentials");
    assert_eq!(errors[1]["ERROR_CODE"], "900901");
    assert_eq!(errors[1]["ERROR_MESSAGE"], "Invalid Credentials");
    assert_eq!(of(&events, "REQUEST_COMPLETE").len(), 1);
    let text = all_text(&events);
    assert!(!text.contains("not-the-key-7f3a") && !text.contains(demo::API_KEY));
}

#[test]
fn refused_backend_is_a_fault() {
    let setup = Setup::start("refused");
    assert_eq!(curl(&[&setup.url("/legacy/report")]), vec![502]);
    let events = setup.finish(1);
    let errors = of(&events, "ERROR");
    assert_eq!(errors.len(), 1, "{events:#?}");
    assert_eq!(errors[0]["ErrorSource"], "fault");
    assert_eq!(errors[0]["StatusCode"], 502);
    assert_eq!(errors[0]["ERROR_CODE"], "101503");
    assert_eq!(errors[0]["API"], "demo--Legacy:v0");
    assert!(of(&events, "REQUEST_COMPLETE").is_empty());
}

#[test]
fn workers_started_after_attach_are_followed() {
    let setup = Setup::start("reload");
    let before = setup.gateway.workers();
    setup.gateway.reload().expect("reloading nginx");
    // Wait until the old workers are gone and new ones serve.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = setup.gateway.workers();
        if !now.is_empty() && now.iter().all(|w| !before.contains(w)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nginx did not replace its workers"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(curl(&[&setup.url("/orders/after-reload")]), vec![200]);
    let events = setup.finish(1);
    let done = of(&events, "REQUEST_COMPLETE");
    assert_eq!(done.len(), 1, "{events:#?}");
    assert_eq!(done[0]["RequestInURL"], "/orders/after-reload");
}

#[test]
fn summary_counts_the_events() {
    let setup = Setup::start("summary");
    assert_eq!(
        curl(&[&setup.url("/orders/x"), &setup.url("/nope")]),
        vec![200, 404]
    );
    setup.wait_ended(2);
    let Setup { observer, .. } = setup;
    let (_, stderr) = observer.stop();
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("a summary line");
    assert!(
        summary.contains(
            "2 INCOMING_REQUEST, 1 REQUEST_COMPLETE (0 answered by the gateway), 1 ERROR, 0 LOST"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("kernel: records lost 0 (ring full); not captured 0"),
        "{summary}"
    );
}

#[test]
fn backend_closing_before_answering_is_a_closed_connection_fault() {
    let setup = Setup::start("closed");
    let url = setup.url("/orders/hang-up");
    assert_eq!(curl(&["-H", "x-want-close: 1", &url]), vec![502]);
    let events = setup.wait_ended(1);
    let errors = of(&events, "ERROR");
    assert_eq!(errors.len(), 1, "{events:#?}");
    assert_eq!(errors[0]["ErrorSource"], "fault");
    assert_eq!(errors[0]["ERROR_CODE"], "101505");
    assert_eq!(
        errors[0]["ERROR_MESSAGE"],
        "Connection closed by the back end"
    );
}

#[test]
fn a_client_that_gives_up_is_reported_as_499() {
    let setup = Setup::start("gone");
    let url = setup.url("/orders/slow");
    // curl gives up after 0.5 s; the backend answers after 2 s.
    let status = curl(&["--max-time", "0.5", "-H", "x-want-delay-ms: 2000", &url]);
    assert_eq!(status, vec![0]);
    let events = setup.observer.wait_for(Duration::from_secs(10), |events| {
        !of(events, "ERROR").is_empty()
    });
    let errors = of(&events, "ERROR");
    assert_eq!(errors.len(), 1, "{events:#?}");
    assert_eq!(errors[0]["StatusCode"], 499);
    assert_eq!(
        errors[0]["ERROR_MESSAGE"],
        "Client closed the connection before the response"
    );
    assert!(of(&events, "REQUEST_COMPLETE").is_empty());
}

#[test]
fn a_backend_502_retried_on_the_next_server_is_one_request_with_two_attempts() {
    require_root();
    let backend = Backend::start().expect("starting a backend");
    // An nginx nobody observes, answering 502 to everything: the first upstream server.
    let failing_port = free_port();
    let _failing = Gateway::nginx(
        "retry-502-failing",
        1,
        &format!("  server {{ listen 127.0.0.1:{failing_port}; location / {{ return 502; }} }}"),
        failing_port,
    )
    .expect("starting the failing server");
    let port = free_port();
    let block = format!(
        "  log_format upstreams '$request_uri|$upstream_status';\n  \
         upstream flaky {{ server 127.0.0.1:{failing_port}; server 127.0.0.1:{}; }}\n  \
         server {{ listen 127.0.0.1:{port}; access_log logs/upstreams.log upstreams;\n    \
         location / {{ proxy_pass http://flaky; proxy_next_upstream error http_502; }} }}",
        backend.port()
    );
    let gateway = Gateway::nginx("retry-502", 1, &block, port).expect("starting nginx");
    let observer = Observer::attach(gateway.master_pid(), &[]).expect("attaching");
    let urls: Vec<String> = (1..=4)
        .map(|i| format!("http://127.0.0.1:{port}/r{i}"))
        .collect();
    let args: Vec<&str> = urls.iter().map(String::as_str).collect();
    assert_eq!(curl(&args), vec![200; 4]);
    observer.wait_ended(4);
    let events = observer.stop().0;
    // nginx's own account of each request's attempts: "502, 200" or "200".
    let log = std::fs::read_to_string(gateway.path("logs/upstreams.log")).expect("nginx's log");
    let truth: Vec<(&str, &str)> = log.lines().filter_map(|l| l.split_once('|')).collect();
    assert_eq!(truth.len(), 4, "{log}");
    assert!(
        truth.iter().any(|(_, s)| s.contains("502")),
        "no retry happened: {log}"
    );
    assert!(of(&events, "ERROR").is_empty(), "{events:#?}");
    let done = of(&events, "REQUEST_COMPLETE");
    assert_eq!(done.len(), 4, "{events:#?}");
    for (uri, statuses) in truth {
        let event = done
            .iter()
            .find(|e| e["RequestInURL"] == uri)
            .unwrap_or_else(|| panic!("no REQUEST_COMPLETE for {uri}: {events:#?}"));
        assert_eq!(event["StatusCode"], 200);
        let attempts = statuses.split(", ").count();
        assert_eq!(
            event["Attempts"], attempts as u64,
            "{uri}: nginx says {statuses}"
        );
        if attempts > 1 {
            assert_eq!(event["AttemptResults"], statuses, "{uri}");
        }
    }
}

/// One request on a kept-alive raw connection; returns the status.
fn request_on(stream: &mut std::net::TcpStream, path: &str) -> u16 {
    use std::io::{BufRead, BufReader, Read, Write};
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: early/1\r\n\r\n"
    )
    .expect("sending");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    status
}

#[test]
fn a_client_connection_open_before_attach_is_followed() {
    require_root();
    let (gateway, _backends) = demo_gateway("early", 1);
    let port = gateway.port;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    assert_eq!(request_on(&mut stream, "/orders/before"), 200);
    let observer = Observer::attach(gateway.master_pid(), &[]).expect("attaching");
    assert_eq!(request_on(&mut stream, "/orders/after?k=1"), 200);
    observer.wait_ended(1);
    let (events, stderr) = observer.stop();
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), 1, "{events:#?}\n{stderr}");
    assert_eq!(incoming[0]["RequestInURL"], "/orders/after?k=1");
    // The peer address came from /proc: no accept was seen.
    assert_eq!(incoming[0]["RemoteIP"], "127.0.0.1");
    let done = ending(&events, incoming[0]).expect("an ending event");
    assert_eq!(done["Event"], "REQUEST_COMPLETE");
    assert_eq!(done["StatusCode"], 200);
}

#[test]
fn output_file_is_appended_in_kv_and_duration_ends_the_run() {
    require_root();
    let (gateway, _backends) = demo_gateway("output", 1);
    let port = gateway.port;
    let file = gateway.path("events.log");
    std::fs::write(&file, "an earlier line\n").unwrap();
    for run in 1..=2 {
        let mut command = std::process::Command::new(tests::observer::binary());
        command
            .args(["attach", "--pid", &gateway.master_pid().to_string()])
            .args(["--duration", "3", "--output"])
            .arg(&file);
        let started = std::time::Instant::now();
        let attached = tests::observer::Attached::start(command, false).expect("attaching");
        let url = format!("http://127.0.0.1:{port}/orders/run{run}?x=\"q\"");
        assert_eq!(curl(&[&url]), vec![200]);
        // --duration ends it by itself, with its summary, exit status 0.
        let stderr = attached.wait().expect("the observer ends");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            stderr
                .iter()
                .any(|l| l.starts_with("summary: 1 INCOMING_REQUEST")),
            "{stderr:?}"
        );
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "an earlier line", "{text}");
    assert_eq!(lines.len(), 5, "{text}");
    for (line, run) in [(lines[1], 1), (lines[3], 2)] {
        // kv by default for a file: a timestamp, then Key="value" pairs, quotes escaped.
        assert!(line.contains(" Event=\"INCOMING_REQUEST\", "), "{line}");
        assert!(
            line.contains(&format!("RequestInURL=\"/orders/run{run}?x=\\\"q\\\"\"")),
            "{line}"
        );
    }
    assert!(
        lines[2].contains("Event=\"REQUEST_COMPLETE\""),
        "{}",
        lines[2]
    );
}

#[test]
fn a_stop_while_attaching_still_ends_with_the_summary() {
    require_root();
    let (gateway, _backends) = demo_gateway("early-stop", 1);
    // Attaching takes tens of milliseconds; the signal comes in the middle of it.
    for delay_ms in [15, 30, 45] {
        let observer = std::process::Command::new(tests::observer::binary())
            .args(["attach", "--pid", &gateway.master_pid().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting access-log");
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: signalling a child we own.
        unsafe { libc::kill(observer.id() as i32, libc::SIGTERM) };
        let output = observer.wait_with_output().expect("waiting for access-log");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "SIGTERM after {delay_ms} ms: {:?}: {stderr}",
            output.status
        );
        assert!(stderr.contains("summary: "), "{stderr}");
    }
}
