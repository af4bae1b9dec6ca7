//! Every request accounted for, on a real nginx: answers the gateway gives itself, a backend on a
//! unix socket, a request line longer than the capture window, 100 pipelined requests in one
//! write, credentials in the query string, two requests of one trace, and a ring buffer too
//! small for a burst. Each case asserts its exact events, and every INCOMING_REQUEST ends in
//! exactly one event or is named in a LOST event.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use tests::{
    backend::Backend,
    curl, free_port,
    gateway::Gateway,
    load::{self, Request},
    observer::{assert_every_request_ends_once, binary, of, Attached, Observer},
    require_root, TempDir,
};

struct Setup {
    observer: Observer,
    gateway: Gateway,
    backend: Backend,
    /// The gateway's cache directory, removed after the gateway.
    _dir: TempDir,
}

/// nginx with `locations` in its one server, in front of a fresh backend (`@BACKEND@` in the
/// text is its port); `@DIR@` is the gateway's directory.
fn start(name: &str, locations: &str, extra: &[&str]) -> Setup {
    require_root();
    let backend = Backend::start().expect("a backend");
    let port = free_port();
    let locations = locations.replace("@BACKEND@", &backend.port().to_string());
    let block = format!(
        "  proxy_cache_path @DIR@/cache keys_zone=answers:1m;\n  \
         server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 10000;\n{locations}\n  }}\n"
    );
    let dir = TempDir::new(&format!("{name}-dir"));
    let block = block.replace("@DIR@", &dir.0.display().to_string());
    let gateway = Gateway::nginx(name, 1, &block, port).expect("starting nginx");
    let observer = Observer::attach(gateway.master_pid(), extra).expect("attaching");
    Setup {
        observer,
        gateway,
        backend,
        _dir: dir,
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway.port)
    }

    fn finish(self, count: usize) -> Vec<Value> {
        self.observer.wait_ended(count);
        let (events, _) = self.observer.stop();
        assert_every_request_ends_once(&events);
        events
    }
}

fn ending<'e>(events: &'e [Value], url: &str) -> &'e Value {
    let request = of(events, "INCOMING_REQUEST")
        .into_iter()
        .find(|e| e["RequestInURL"] == url)
        .unwrap_or_else(|| panic!("no INCOMING_REQUEST for {url}: {events:#?}"));
    tests::observer::ending(events, request).unwrap_or_else(|| panic!("no ending for {url}"))
}

#[test]
fn answers_the_gateway_gives_itself_complete_their_requests() {
    let setup = start(
        "own-answers",
        "    location = /health { return 200 'ok'; }\n    \
         location = /old { return 301 /new; }\n    \
         location /cached/ { proxy_cache answers; proxy_cache_valid 200 1m; \
         proxy_pass http://127.0.0.1:@BACKEND@; }",
        &[],
    );
    assert_eq!(curl(&[&setup.url("/health")]), vec![200]);
    assert_eq!(curl(&[&setup.url("/old")]), vec![301]);
    // The first asks the backend; the second is answered from nginx's cache.
    assert_eq!(curl(&[&setup.url("/cached/a")]), vec![200]);
    assert_eq!(curl(&[&setup.url("/cached/a")]), vec![200]);
    let backend = setup.backend.port();
    let events = setup.finish(4);
    assert_eq!(of(&events, "INCOMING_REQUEST").len(), 4, "{events:#?}");
    assert!(of(&events, "ERROR").is_empty(), "{events:#?}");
    for (url, status) in [("/health", 200), ("/old", 301)] {
        let done = ending(&events, url);
        assert_eq!(done["Event"], "REQUEST_COMPLETE", "{done}");
        assert_eq!(done["AnsweredBy"], "gateway", "{done}");
        assert_eq!(done["StatusCode"], status, "{done}");
        assert!(done.get("RequestOutURL").is_none(), "{done}");
    }
    let cached: Vec<&Value> = of(&events, "REQUEST_COMPLETE")
        .into_iter()
        .filter(|e| e["RequestInURL"] == "/cached/a")
        .collect();
    assert_eq!(cached.len(), 2, "{events:#?}");
    assert_eq!(
        cached[0]["RequestOutURL"],
        format!("http://127.0.0.1:{backend}/cached/a")
    );
    assert_eq!(
        cached[1]["AnsweredBy"], "gateway",
        "the cache hit: {}",
        cached[1]
    );
    assert_eq!(cached[1]["StatusCode"], 200);
}

#[test]
fn a_backend_on_a_unix_socket_is_named_as_nginx_names_it() {
    require_root();
    let temp = TempDir::new("unix");
    let dir = &temp.0;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("app.sock");
    let app = Backend::start_unix(&path).expect("a unix-socket backend");
    // nginx's workers run as nobody: they must be allowed to connect.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
    let setup = start(
        "unix",
        &format!(
            "    location /app/ {{ proxy_pass http://unix:{}:/v2/; }}",
            path.display()
        ),
        &[],
    );
    assert_eq!(
        curl(&["-H", "x-want-status: 203", &setup.url("/app/items?page=2")]),
        vec![203]
    );
    let events = setup.finish(1);
    drop(app);
    let done = ending(&events, "/app/items?page=2");
    assert_eq!(done["Event"], "REQUEST_COMPLETE", "{done}");
    assert_eq!(done["StatusCode"], 203);
    assert_eq!(
        done["RequestOutURL"],
        format!("http://unix:{}:/v2/items?page=2", path.display())
    );
}

#[test]
fn a_request_line_longer_than_the_capture_window_is_kept_and_marked() {
    let setup = start(
        "long-url",
        "    location /api/ { proxy_pass http://127.0.0.1:@BACKEND@; }",
        &[],
    );
    let query = "q=".to_owned() + &"a".repeat(6000);
    let url = format!("/api/long?{query}");
    assert_eq!(curl(&[&setup.url(&url)]), vec![200]);
    let events = setup.finish(1);
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), 1, "{events:#?}");
    let request = incoming[0];
    assert_eq!(request["RequestInMethod"], "GET");
    assert_eq!(request["RequestInURLTruncated"], "true", "{request}");
    let seen = request["RequestInURL"].as_str().unwrap();
    assert!(url.starts_with(seen) && seen.len() >= 1000, "{seen}");
    let done = tests::observer::ending(&events, request).expect("an ending");
    assert_eq!(done["Event"], "REQUEST_COMPLETE", "{done}");
    assert_eq!(done["StatusCode"], 200);
}

#[test]
fn a_hundred_pipelined_requests_in_one_write_give_a_hundred_endings() {
    let setup = start(
        "pipelined",
        "    location /api/ { proxy_pass http://127.0.0.1:@BACKEND@; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; }\n    \
         location = /health { return 200 'ok'; }",
        &[],
    );
    let mut requests = Vec::new();
    for index in 0..100 {
        let path = if index % 2 == 0 {
            "/api/items"
        } else {
            "/health"
        };
        let close = if index == 99 {
            "Connection: close\r\n"
        } else {
            ""
        };
        requests.extend_from_slice(
            format!("GET {path}?n={index:03} HTTP/1.1\r\nHost: pipelined\r\n{close}\r\n")
                .as_bytes(),
        );
    }
    assert!(requests.len() > 4096, "{} bytes", requests.len());
    let mut stream = TcpStream::connect(("127.0.0.1", setup.gateway.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&requests).expect("one write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answers = String::from_utf8_lossy(&answer)
        .matches("HTTP/1.1 200")
        .count();
    assert_eq!(answers, 100, "nginx answered {answers}");
    let events = setup.finish(100);
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), 100, "{events:#?}");
    for index in 0..100 {
        let path = if index % 2 == 0 {
            "/api/items"
        } else {
            "/health"
        };
        let url = format!("{path}?n={index:03}");
        let done = ending(&events, &url);
        assert_eq!(done["Event"], "REQUEST_COMPLETE", "{done}");
        if index % 2 == 0 {
            assert!(
                done["RequestOutURL"].as_str().unwrap().ends_with(&url),
                "{done}"
            );
        } else {
            assert_eq!(done["AnsweredBy"], "gateway", "{done}");
        }
    }
}

#[test]
fn a_token_in_the_query_string_appears_in_no_output() {
    const SECRET: &str = "SECRET123";
    let setup = start(
        "redacted",
        "    location /api/ { proxy_pass http://127.0.0.1:@BACKEND@; }",
        &[],
    );
    let pid = setup.gateway.master_pid().to_string();
    // Outputs outlive the gateway (whose directory goes with it).
    let temp = TempDir::new("redacted");
    let dir = &temp.0;
    let kv = dir.join("events.kv");
    let pretty = dir.join("events.pretty");
    let capture = dir.join("capture.alrec");
    let start_extra = |args: &[&str]| {
        let mut command = Command::new(binary());
        command.args(args).stdout(Stdio::null());
        Attached::start(command, false).expect("attaching")
    };
    let kv_observer = start_extra(&[
        "attach",
        "--pid",
        &pid,
        "--format",
        "kv",
        "--output",
        kv.to_str().unwrap(),
    ]);
    let pretty_observer = start_extra(&[
        "attach",
        "--pid",
        &pid,
        "--format",
        "pretty",
        "--output",
        pretty.to_str().unwrap(),
    ]);
    let recorder = start_extra(&[
        "record",
        "--pid",
        &pid,
        "--output",
        capture.to_str().unwrap(),
    ]);
    let url = format!("/api/x?access_token={SECRET}&page=1");
    assert_eq!(curl(&[&setup.url(&url)]), vec![200]);
    setup.observer.wait_ended(1);
    thread::sleep(Duration::from_millis(300));
    let mut outputs = Vec::new();
    for process in [kv_observer, pretty_observer, recorder] {
        outputs.push(process.stop().expect("stopping").join("\n"));
    }
    let events = setup.finish(1);
    let json: String = events.iter().map(Value::to_string).collect();
    let replayed = Command::new(binary())
        .args(["replay", "--format", "json"])
        .arg(&capture)
        .output()
        .expect("replaying");
    let texts = [
        ("json", json.clone()),
        ("kv", fs::read_to_string(&kv).unwrap()),
        ("pretty", fs::read_to_string(&pretty).unwrap()),
        (
            "capture file",
            String::from_utf8_lossy(&fs::read(&capture).unwrap()).into_owned(),
        ),
        (
            "replay",
            String::from_utf8_lossy(&replayed.stdout).into_owned(),
        ),
        ("stderr", outputs.join("\n")),
    ];
    for (name, text) in &texts {
        assert!(!text.contains(SECRET), "{name} holds the token: {text}");
    }
    let done = ending(&events, "/api/x?access_token=REDACTED&page=1");
    assert!(
        done["RequestOutURL"]
            .as_str()
            .unwrap()
            .ends_with("/api/x?access_token=REDACTED&page=1"),
        "{done}"
    );
    assert!(
        texts[1].1.contains("access_token=REDACTED"),
        "{}",
        texts[1].1
    );
    assert!(
        texts[4].1.contains("access_token=REDACTED"),
        "{}",
        texts[4].1
    );
}

#[test]
fn two_concurrent_requests_of_one_trace_are_each_paired_with_their_own_call() {
    let setup = start(
        "trace",
        "    location /api/ { proxy_pass http://127.0.0.1:@BACKEND@; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; }",
        &[],
    );
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736";
    let address = SocketAddr::from(([127, 0, 0, 1], setup.gateway.port));
    // The same trace: one pair shares the parent span too (the whole value), one does not.
    let requests: Vec<Request> = [
        ("a", "00f067aa0ba902b7", 201),
        ("b", "00f067aa0ba902b8", 202),
        ("c", "00f067aa0ba902b9", 203),
        ("d", "00f067aa0ba902b9", 204),
    ]
    .iter()
    .map(|(name, span, status)| Request {
        method: "GET",
        target: format!("/api/{name}"),
        headers: vec![
            ("traceparent".into(), format!("{trace}-{span}-01")),
            ("X-Want-Status".into(), status.to_string()),
            ("X-Want-Delay-Ms".into(), "200".into()),
        ],
        body: None,
    })
    .collect();
    let delivered = load::run(address, &requests, 4, |_| true);
    let statuses: Vec<u16> = delivered
        .iter()
        .map(|d| *d.status.as_ref().unwrap())
        .collect();
    assert_eq!(statuses, [201, 202, 203, 204]);
    let events = setup.finish(4);
    for (name, status) in [("a", 201), ("b", 202), ("c", 203), ("d", 204)] {
        let done = ending(&events, &format!("/api/{name}"));
        assert_eq!(done["StatusCode"], status, "{done}");
        assert!(
            done["RequestOutURL"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/api/{name}")),
            "{done}"
        );
    }
}

#[test]
fn a_ring_buffer_too_small_for_a_burst_gives_loss_records_and_no_wrong_pairing() {
    let setup = start(
        "tiny-ring",
        "    location /api/ { proxy_pass http://127.0.0.1:@BACKEND@; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; }",
        &["--ring-bytes", "65536"],
    );
    let started = std::time::Instant::now();
    let address = SocketAddr::from(([127, 0, 0, 1], setup.gateway.port));
    // The observer is stopped (SIGSTOP) through the burst, as a consumer stalled by a slow
    // sink would be: however fast the machine drains, the kernel finds the ring full.
    let observer = setup.observer.pid() as i32;
    // SAFETY: signalling the observer this test started.
    unsafe { libc::kill(observer, libc::SIGSTOP) };
    let requests: Vec<Request> = (0..2000)
        .map(|n| Request {
            method: "GET",
            target: format!("/api/items?n={n}"),
            headers: vec![("X-Want-Status".into(), (200 + n % 40).to_string())],
            body: None,
        })
        .collect();
    let delivered = load::run(address, &requests, 64, |_| true);
    // SAFETY: as above.
    unsafe { libc::kill(observer, libc::SIGCONT) };
    assert!(delivered.iter().all(|d| d.status.is_ok()));
    // Then, once the burst's records are drained, calm: one request at a time fits the ring,
    // and is paired. The first records after the stall show the gap (the count of lost records
    // they carry rose): what is linked in the quarantine after it (250 ms) ends in the loss
    // record too, so the calm requests come after a request that shows it and that quarantine.
    thread::sleep(Duration::from_millis(600));
    let showing_the_gap = Request {
        method: "GET",
        target: "/api/items?n=4999".into(),
        headers: vec![],
        body: None,
    };
    load::run(address, &[showing_the_gap], 1, |_| true);
    thread::sleep(Duration::from_millis(600));
    let calm: Vec<Request> = (5000..5020)
        .map(|n| Request {
            method: "GET",
            target: format!("/api/items?n={n}"),
            headers: vec![],
            body: None,
        })
        .collect();
    let delivered = load::run(address, &calm, 1, |_| true);
    assert!(delivered.iter().all(|d| d.status.is_ok()));
    thread::sleep(Duration::from_millis(500));
    let (events, stderr) = setup.observer.stop();
    assert_every_request_ends_once(&events);
    let lost = of(&events, "LOST");
    assert!(
        lost.iter().any(|e| e["Reason"]
            .as_str()
            .is_some_and(|r| r.contains("ring buffer full"))),
        "no loss record: {stderr}"
    );
    // At most one LOST event a second, however many gaps (and one more at the stop).
    let seconds = started.elapsed().as_secs() as usize + 1;
    assert!(
        lost.len() <= seconds + 1,
        "{} LOST events in {seconds} s: {lost:#?}",
        lost.len()
    );
    eprintln!(
        "tiny ring: {} LOST events in {seconds} s naming {} requests",
        lost.len(),
        lost.iter()
            .map(|e| e["RequestsLost"].as_u64().unwrap_or(0))
            .sum::<u64>()
    );
    // Every pairing made is right: the backend request carries the client's query.
    let complete = of(&events, "REQUEST_COMPLETE");
    assert!(
        complete
            .iter()
            .filter(|e| e["RequestInURL"].as_str().unwrap().contains("?n=50"))
            .count()
            >= 20,
        "the calm requests after the burst are paired: {stderr}"
    );
    for done in complete {
        let query = done["RequestInURL"]
            .as_str()
            .unwrap()
            .split_once('?')
            .unwrap()
            .1;
        assert!(
            done["RequestOutURL"]
                .as_str()
                .unwrap()
                .ends_with(&format!("?{query}")),
            "wrong pairing: {done}"
        );
    }
    assert!(stderr.contains("records lost"), "{stderr}");
}
