//! `access-log report` on the log of a live run: nginx serves two catalogued APIs, fails to
//! reach a third's backend and refuses URLs no API matches; the kv log is rotated (renamed,
//! gzip-compressed, SIGHUP) halfway. The report's numbers are checked against the counts the
//! test keeps itself, its filters against the original Splunk queries', and its HTML page is
//! loaded in headless Chromium (Debian's package), whose rendered DOM must hold the charts.
use std::{
    collections::HashMap,
    fs,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use tests::{
    curl,
    gateway::ApiGateway,
    observer::{binary, Attached, Observer},
    require_root,
};

fn report(args: &[&str]) -> (String, String) {
    let output = Command::new(binary())
        .arg("report")
        .args(args)
        .output()
        .expect("running access-log report");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "report {args:?}: {stderr}");
    (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}

#[test]
fn a_report_of_a_live_runs_rotated_log_counts_what_the_test_sent() {
    require_root();
    let ApiGateway {
        backend,
        gateway,
        apis,
        port,
    } = ApiGateway::start(
        "report",
        "    location /echo/ { proxy_pass http://127.0.0.1:@BACKEND@; }\n",
        "[[api]]\nname = \"Echo\"\nversion = \"v1.0.0\"\ncontext = \"/echo\"\nprovider = \"lzelus\"\n",
    );
    let dir = gateway.dir.clone();
    let log = dir.join("events.log");
    let mut command = Command::new(binary());
    command
        .args([
            "attach",
            "--pid",
            &gateway.master_pid().to_string(),
            "--apis",
        ])
        .arg(&apis)
        .args(["--format", "kv", "--output"])
        .arg(&log)
        .stdout(Stdio::null());
    let logger = Attached::start(command, false).expect("attaching");
    // Tells when the requests have ended.
    let watcher = Observer::attach(gateway.master_pid(), &[]).expect("attaching");

    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    // What the test sent, and so what the report must say.
    let mut results: HashMap<(&str, &str), u64> = HashMap::new();
    let mut not_found: HashMap<String, u64> = HashMap::new();
    let sent = std::cell::Cell::new(0);
    let send = |path: String, status: u16, header: Option<&str>| {
        let target = url(&path);
        let mut args = vec![target.as_str()];
        if let Some(header) = header {
            args.insert(0, header);
            args.insert(0, "-H");
        }
        assert_eq!(curl(&args), vec![status], "{path}");
        sent.set(sent.get() + 1);
        path
    };
    for round in 0..2 {
        for index in 0..15 {
            send(format!("/orders/{round}-{index}"), 200, None);
            *results.entry(("Orders:v1", "Success")).or_default() += 1;
        }
        // A backend's 500 is its answer: a success for the access log.
        send(
            format!("/orders/fail-{round}"),
            500,
            Some("x-want-status: 500"),
        );
        *results.entry(("Orders:v1", "Success")).or_default() += 1;
        for index in 0..5 {
            send(format!("/echo/{round}-{index}"), 200, None);
            *results
                .entry(("lzelus--Echo:v1.0.0", "Success"))
                .or_default() += 1;
        }
        for index in 0..2 {
            send(format!("/billing/{round}-{index}"), 502, None);
            *results
                .entry(("Billing:v2", "Error connecting to the back end"))
                .or_default() += 1;
        }
        for path in ["/nothing/here", "/CCES/x"] {
            let path = send(path.to_owned(), 404, None);
            *not_found.entry(path).or_default() += 1;
        }
        let path = send(format!("/CCES/{round}"), 404, None);
        *not_found.entry(path).or_default() += 1;
        if round == 0 {
            watcher.wait_ended(sent.get());
            thread::sleep(Duration::from_millis(300));
            // logrotate's way: rename, signal, compress the old file.
            fs::rename(&log, dir.join("events.log.1")).unwrap();
            // SAFETY: signalling the logger we started.
            unsafe { libc::kill(logger.child.id() as i32, libc::SIGHUP) };
            thread::sleep(Duration::from_millis(300));
            let status = Command::new("gzip")
                .arg(dir.join("events.log.1"))
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
    let sent = sent.get();
    watcher.wait_ended(sent);
    thread::sleep(Duration::from_millis(300));
    logger.stop().expect("stopping the logger");
    let _ = watcher.stop();
    let rotated = dir.join("events.log.1.gz");
    let files = [rotated.to_str().unwrap(), log.to_str().unwrap()];
    assert!(rotated.exists() && log.exists());

    let (text, _) = report(&[files[0], files[1], "--format", "json"]);
    let json: Value = serde_json::from_str(&text).expect("report JSON");
    // Every request was seen (INCOMING_REQUEST | timechart count by API).
    let calls: u64 = json["calls_over_time"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|by_api| by_api.as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(calls, sent as u64, "{text}");
    for ((api, result), count) in &results {
        assert_eq!(
            json["results_by_api"][api][result].as_u64(),
            Some(*count),
            "{api} {result}: {text}"
        );
    }
    assert_eq!(
        json["results_by_api"]["(no API)"]["No API matches the request"].as_u64(),
        Some(6)
    );
    // StatusCode=404 | stats count by RequestInURL.
    let listed: HashMap<String, u64> = json["not_found_urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_owned(),
                pair[1].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, not_found);
    assert_eq!(
        json["top_errors"][0]["error_message"],
        "No API matches the request"
    );
    assert_eq!(json["top_errors"][0]["count"], 6);
    assert_eq!(json["latency_by_api"]["Orders:v1"]["count"], 32);
    assert_eq!(json["latency_by_api"]["lzelus--Echo:v1.0.0"]["count"], 10);
    assert_eq!(json["requests_lost"], 0);

    // NOT API=*Echo*, and RequestInURL="*CCES*".
    let (text, _) = report(&[
        files[0],
        files[1],
        "--format",
        "json",
        "--exclude-api",
        "*echo*",
    ]);
    let json: Value = serde_json::from_str(&text).unwrap();
    assert!(json["results_by_api"].get("lzelus--Echo:v1.0.0").is_none());
    assert_eq!(json["results_by_api"]["Orders:v1"]["Success"], 32);
    let (text, _) = report(&[files[0], files[1], "--format", "json", "--url", "*cces*"]);
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        json["results_by_api"]["(no API)"]["No API matches the request"],
        4
    );
    let (text, _) = report(&[files[0], files[1], "--api", "*Echo*"]);
    assert!(
        text.contains("lzelus--Echo:v1.0.0  Success     10"),
        "{text}"
    );
    assert!(!text.contains("shop--Orders"), "{text}");

    // The page, as Chromium renders it.
    let page = dir.join("report.html");
    let (table, _) = report(&[files[0], files[1], "--html", page.to_str().unwrap()]);
    assert!(table.contains("Calls per API over time"), "{table}");
    let profile = dir.join("chromium-profile");
    let chromium = |extra: &[&str]| {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("running chromium (cargo xtask setup installs it)")
    };
    let dom = chromium(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(dom.contains("id=\"calls-over-time\""), "{dom}");
    assert!(dom.contains("id=\"results-by-api\""), "{dom}");
    assert_eq!(
        dom.matches("<polyline class=\"series\"").count(),
        4,
        "{dom}"
    );
    assert!(
        dom.contains("data-api=\"Orders:v1\" data-result=\"Success\" data-count=\"32\""),
        "{dom}"
    );
    assert!(
        dom.contains("data-api=\"Billing:v2\" data-result=\"Error connecting to the back end\" data-count=\"4\""),
        "{dom}"
    );
    let shot = dir.join("report.png");
    let _ = chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1000,1400",
    ]);
    let png = fs::read(&shot).expect("chromium's screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    drop(backend);
}

#[test]
fn a_report_of_nothing_readable_is_one_line_and_a_failure() {
    let dir = std::env::temp_dir().join(format!("access-log-report-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-events.log");
    fs::write(&file, "hello\nworld\n").unwrap();
    for args in [
        vec![file.to_str().unwrap()],
        vec![dir.join("missing.log").to_str().unwrap()],
        vec![file.to_str().unwrap(), "--since", "yesterday"],
    ] {
        let output = Command::new(binary())
            .arg("report")
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("access-log: error:"), "{stderr}");
    }
    let _ = fs::remove_dir_all(&dir);
}
