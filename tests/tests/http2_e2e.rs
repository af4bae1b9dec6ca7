//! End to end over HTTP/2 from clients: nginx with `http2` on a TLS listener (ALPN h2) and on a
//! cleartext one (prior knowledge), proxying to an HTTP/1.1 backend or to a gRPC server
//! (`grpc_pass`); HAProxy with `proto h2` in front. Clients: curl, and a
//! client of our own on Python's h2 (tests/clients/h2_streams.py) that puts many streams in
//! flight on one connection and can cancel one.
use std::{fs, path::PathBuf, process::Command};

use serde_json::{json, Value};
use tests::{
    backend::Backend,
    certificate, curl, free_port,
    gateway::Gateway,
    observer::{assert_every_request_ends_once, ending, of, Observer},
    require_root, workspace_root,
};

struct Setup {
    // Field order is drop order: the observer stops before the gateway and backend.
    observer: Observer,
    _gateway: Gateway,
    backend: Backend,
    tls_port: u16,
    clear_port: u16,
    _certificates: Certificates,
}

/// The directory of the gateway's certificate, removed with it.
struct Certificates(PathBuf);

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Setup {
    fn start(name: &str, workers: u32) -> Setup {
        Setup::start_with(name, workers, &[])
    }

    /// As [`Setup::start`], the observer given `extra` arguments.
    fn start_with(name: &str, workers: u32, extra: &[&str]) -> Setup {
        require_root();
        let backend = Backend::start().expect("starting a backend");
        let tls_port = free_port();
        let clear_port = free_port();
        let cert_dir =
            std::env::temp_dir().join(format!("access-log-h2-{name}-{}", std::process::id()));
        fs::create_dir_all(&cert_dir).expect("certificate directory");
        let (cert, key) = certificate::self_signed(&cert_dir).expect("making a certificate");
        let block = format!(
            r#"
  server {{
    listen 127.0.0.1:{tls_port} ssl http2;
    listen 127.0.0.1:{clear_port} http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location /api/ {{ proxy_pass http://127.0.0.1:{b}; }}
    location = /health {{ return 200 "ok\n"; }}
    location / {{ return 404; }}
  }}
"#,
            cert = cert.display(),
            key = key.display(),
            b = backend.port()
        );
        let gateway = Gateway::nginx(name, workers, &block, tls_port).expect("starting nginx");
        let observer = Observer::attach(gateway.master_pid(), extra).expect("attaching");
        Setup {
            observer,
            _gateway: gateway,
            backend,
            tls_port,
            clear_port,
            _certificates: Certificates(cert_dir),
        }
    }

    /// Runs the h2 client of our own on one connection; returns its line per request.
    fn streams(&self, tls: bool, requests: &Value) -> Vec<Value> {
        h2_client(
            if tls { self.tls_port } else { self.clear_port },
            tls,
            requests,
        )
    }
}

/// Runs the h2 client of our own on one connection to `port` (TLS, or cleartext with prior
/// knowledge); returns its line per request, in the order sent.
fn h2_client(port: u16, tls: bool, requests: &Value) -> Vec<Value> {
    let script = workspace_root().join("tests/clients/h2_streams.py");
    let output = Command::new("/usr/bin/python3")
        .arg(script)
        .args(["127.0.0.1", &port.to_string()])
        .arg(if tls { "tls" } else { "clear" })
        .arg(requests.to_string())
        .output()
        .expect("running the h2 client (cargo xtask setup installs python3-h2)");
    assert!(
        output.status.success(),
        "h2 client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("client line"))
        .collect()
}

/// `count` requests of `path`, identical but for headers the observer does not read: each
/// asks the backend for a status of its own (10 in turn) after a delay of its own, so the
/// answers come back out of order.
fn identical_streams(count: usize, path: &str) -> Vec<Value> {
    (0..count)
        .map(|i| {
            json!({
                "path": path,
                "headers": {
                    "x-want-status": (200 + i % 5 + 100 * (i % 2)).to_string(),
                    "x-want-delay-ms": ((count - i) * 7 % 53).to_string(),
                },
            })
        })
        .collect()
}

/// The RequestInURL of each INCOMING_REQUEST, in order.
fn incoming_urls(events: &[Value]) -> Vec<&str> {
    of(events, "INCOMING_REQUEST")
        .iter()
        .map(|e| e["RequestInURL"].as_str().unwrap_or(""))
        .collect()
}

/// The ending events whose status is not the one the client got on the stream: a request's
/// place among the INCOMING_REQUESTs is its stream's place among those the client opened.
fn paired_wrong<'e>(events: &'e [Value], answers: &[Value]) -> Vec<&'e Value> {
    of(events, "INCOMING_REQUEST")
        .iter()
        .zip(answers)
        .filter_map(|(request, answer)| {
            let end = ending(events, request).expect("an ending");
            (end["StatusCode"] != answer["status"]).then_some(end)
        })
        .collect()
}

#[test]
fn curl_over_tls_and_over_cleartext_with_prior_knowledge() {
    let setup = Setup::start("h2-curl", 2);
    let tls = |path: &str| format!("https://127.0.0.1:{}{path}", setup.tls_port);
    let clear = |path: &str| format!("http://127.0.0.1:{}{path}", setup.clear_port);
    assert_eq!(
        curl(&[
            "--http2",
            "-k",
            "-A",
            "h2-curl/1.0",
            &tls("/api/a?x=1"),
            &tls("/health")
        ]),
        vec![200, 200]
    );
    // One URL per curl: curl 7.88 sends nothing for a second URL on a prior-knowledge
    // connection it reuses.
    for (path, status) in [("/api/b", 200), ("/nope", 404)] {
        assert_eq!(
            curl(&[
                "--http2-prior-knowledge",
                "-A",
                "h2c-curl/1.0",
                &clear(path)
            ]),
            vec![status]
        );
    }
    setup.observer.wait_ended(4);
    let backend = setup.backend.port();
    let (events, summary) = setup.observer.stop();
    assert_every_request_ends_once(&events);
    let incoming = of(&events, "INCOMING_REQUEST");
    let urls = incoming_urls(&events);
    assert_eq!(
        urls,
        ["/api/a?x=1", "/health", "/api/b", "/nope"],
        "{events:#?}"
    );
    for (request, agent) in incoming
        .iter()
        .zip(["h2-curl/1.0", "h2-curl/1.0", "h2c-curl/1.0"])
    {
        assert_eq!(request["RequestInMethod"], "GET");
        assert_eq!(request["UserAgent"], agent);
        assert_eq!(request["RemoteIP"], "127.0.0.1");
    }
    let end = |index: usize| ending(&events, incoming[index]).expect("an ending");
    assert_eq!(end(0)["Event"], "REQUEST_COMPLETE");
    assert_eq!(end(0)["StatusCode"], 200);
    assert_eq!(
        end(0)["RequestOutURL"],
        format!("http://127.0.0.1:{backend}/api/a?x=1")
    );
    assert_eq!(end(1)["Event"], "REQUEST_COMPLETE");
    assert_eq!(end(1)["StatusCode"], 200);
    assert!(end(1).get("RequestOutURL").is_none(), "{:#?}", end(1));
    assert_eq!(end(2)["StatusCode"], 200);
    assert_eq!(
        end(2)["RequestOutURL"],
        format!("http://127.0.0.1:{backend}/api/b")
    );
    assert_eq!(end(3)["Event"], "ERROR");
    assert_eq!(end(3)["StatusCode"], 404);
    assert!(
        summary.contains("HTTP/2 connections 3 "),
        "every connection read as HTTP/2: {summary}"
    );
}

/// One connection, 100 streams in flight at once, identical but for headers the observer
/// does not read: each asks the backend for its own status after its own delay, so the
/// answers come back out of order. The client's view of each stream is the truth.
#[test]
fn a_hundred_concurrent_streams_on_one_connection_are_each_paired() {
    let setup = Setup::start("h2-streams", 1);
    let count = 100;
    let requests = identical_streams(count, "/api/same?q=1");
    let answers = setup.streams(true, &Value::from(requests.clone()));
    assert_eq!(answers.len(), count);
    for (answer, request) in answers.iter().zip(&requests) {
        assert_eq!(
            answer["status"].to_string(),
            request["headers"]["x-want-status"].as_str().unwrap(),
            "the gateway passed the backend's status on"
        );
    }
    setup.observer.wait_ended(count);
    let (events, _) = setup.observer.stop();
    assert_every_request_ends_once(&events);
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), count, "{events:#?}");
    let wrong = paired_wrong(&events, &answers);
    assert!(
        wrong.is_empty(),
        "paired with another stream's call: {wrong:#?}"
    );
    for request in incoming {
        let end = ending(&events, request).expect("an ending");
        assert!(end.get("RequestOutURL").is_some(), "{end:#}");
    }
}

/// A stream the client cancels before its answer ends as the client's going away; the others
/// on the connection are answered.
#[test]
fn a_stream_reset_by_the_client_ends_as_client_gone() {
    let setup = Setup::start("h2-reset", 1);
    let requests = json!([
        {"path": "/api/slow", "headers": {"x-want-delay-ms": "3000"}, "reset_after_ms": 300},
        {"path": "/api/fast", "headers": {"x-want-status": "201"}},
    ]);
    let answers = setup.streams(false, &requests);
    assert_eq!(answers[1]["status"], 201);
    setup.observer.wait_ended(2);
    let (events, _) = setup.observer.stop();
    assert_every_request_ends_once(&events);
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), 2, "{events:#?}");
    let slow = ending(&events, incoming[0]).expect("an ending");
    assert_eq!(slow["Event"], "ERROR", "{slow:#}");
    assert_eq!(slow["ERROR_CODE"], "499", "{slow:#}");
    let fast = ending(&events, incoming[1]).expect("an ending");
    assert_eq!(fast["StatusCode"], 201);
}

/// The gRPC server of tests/clients/grpc_calls.py on a port of its own, stopped with the test.
struct GrpcServer {
    child: std::process::Child,
    port: u16,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let port = free_port();
        let script = workspace_root().join("tests/clients/grpc_calls.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(["serve", &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the gRPC server (cargo xtask setup installs python3-grpcio)");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("the gRPC server's first line");
        assert_eq!(line.trim(), "listening");
        GrpcServer { child, port }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Unary gRPC calls from grpcio's client through nginx's `grpc_pass` to grpcio's server, on
/// one client connection: each paired with the stream nginx opens to the backend, its outcome
/// read from the trailers; a non-zero status is an ERROR with the gRPC code and message.
#[test]
fn grpc_calls_through_grpc_pass_end_with_their_status() {
    require_root();
    let server = GrpcServer::start();
    let port = free_port();
    let block = format!(
        "  server {{ listen 127.0.0.1:{port} http2; \
         location /demo.Items/ {{ grpc_pass grpc://127.0.0.1:{}; }} }}",
        server.port
    );
    let gateway = Gateway::nginx("h2-grpc", 1, &block, port).expect("starting nginx");
    let observer = Observer::attach(gateway.master_pid(), &[]).expect("attaching");
    let codes = [0u32, 5, 16, 14, 0];
    let script = workspace_root().join("tests/clients/grpc_calls.py");
    let output = Command::new("/usr/bin/python3")
        .arg(script)
        .args(["call", &format!("127.0.0.1:{port}")])
        .arg(Value::from(codes.to_vec()).to_string())
        .output()
        .expect("running the gRPC client");
    let results: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("client line"))
        .collect();
    let received: Vec<u64> = results
        .iter()
        .map(|r| r["code"].as_u64().unwrap())
        .collect();
    assert_eq!(
        received,
        codes.iter().map(|c| u64::from(*c)).collect::<Vec<_>>(),
        "the calls went through: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    observer.wait_ended(codes.len());
    let (events, _) = observer.stop();
    assert_every_request_ends_once(&events);
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), codes.len(), "{events:#?}");
    for (request, code) in incoming.iter().zip(codes) {
        assert_eq!(request["RequestInURL"], "/demo.Items/Get");
        assert_eq!(request["RequestInMethod"], "POST");
        let end = ending(&events, request).expect("an ending");
        assert_eq!(end["GrpcStatus"], code, "{end:#}");
        assert_eq!(
            end["RequestOutURL"],
            format!("http://127.0.0.1:{}/demo.Items/Get", server.port),
            "paired with the stream nginx opened to the backend: {end:#}"
        );
        if code == 0 {
            assert_eq!(end["Event"], "REQUEST_COMPLETE", "{end:#}");
            assert_eq!(end["StatusCode"], 200);
        } else {
            assert_eq!(end["Event"], "ERROR", "{end:#}");
            assert_eq!(end["GrpcMessage"], format!("wanted {code}"));
        }
    }
    let error_code =
        |index: usize| ending(&events, incoming[index]).expect("an ending")["ERROR_CODE"].clone();
    assert_eq!(error_code(1), "900906", "NOT_FOUND");
    assert_eq!(error_code(2), "900901", "UNAUTHENTICATED");
    assert_eq!(error_code(3), "101503", "UNAVAILABLE");
}

/// Runs h2load against `url` and returns how many requests succeeded (2xx) as it reports.
fn h2load(url: &str, requests: usize, clients: usize, streams: usize) -> usize {
    let output = Command::new("h2load")
        .args(["-n", &requests.to_string()])
        .args(["-c", &clients.to_string()])
        .args(["-m", &streams.to_string()])
        .args(["-H", "x-want-delay-ms: 1", "-H", "x-want-bytes: 20000"])
        .arg(url)
        .output()
        .expect("running h2load (cargo xtask setup installs nghttp2-client)");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_else(|| panic!("h2load printed no status codes: {text}"));
    // "status codes: 3000 2xx, 0 3xx, 0 4xx, 0 5xx"
    line.split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected h2load line: {line}"))
}

/// h2load at high concurrency, over TLS and over cleartext, answers of 20 KB (more than the
/// kernel copies of one call): every request it made is an INCOMING_REQUEST that ends once,
/// answered by the backend, none lost.
#[test]
fn h2load_at_high_concurrency_gives_one_event_pair_per_request() {
    let setup = Setup::start("h2-load", 2);
    let (requests, clients, streams) = (3000, 8, 64);
    let tls = h2load(
        &format!("https://127.0.0.1:{}/api/load", setup.tls_port),
        requests,
        clients,
        streams,
    );
    let clear = h2load(
        &format!("http://127.0.0.1:{}/api/load", setup.clear_port),
        requests,
        clients,
        streams,
    );
    assert_eq!(
        (tls, clear),
        (requests, requests),
        "h2load's requests succeeded"
    );
    setup.observer.wait_ended(2 * requests);
    let (events, summary) = setup.observer.stop();
    assert_every_request_ends_once(&events);
    assert_eq!(
        of(&events, "INCOMING_REQUEST").len(),
        2 * requests,
        "{summary}"
    );
    assert!(of(&events, "LOST").is_empty(), "{summary}");
    let complete = of(&events, "REQUEST_COMPLETE");
    assert_eq!(complete.len(), 2 * requests, "{summary}");
    assert!(complete
        .iter()
        .all(|e| e["StatusCode"] == 200 && e.get("RequestOutURL").is_some()));
    eprintln!("{summary}");
}

/// A client connection opened before the observer attached: its HPACK state is unknown, so
/// the observer finds the connection by its frames, decodes what the static table and
/// literals give, marks the requests whose headers it could not all read, and never prints a
/// wrong value.
#[test]
fn a_connection_opened_before_attach_is_read_from_its_next_frames() {
    require_root();
    let backend = Backend::start().expect("starting a backend");
    let port = free_port();
    let block = format!(
        "  server {{ listen 127.0.0.1:{port} http2; \
         location /api/ {{ proxy_pass http://127.0.0.1:{}; }} }}",
        backend.port()
    );
    let gateway = Gateway::nginx("h2-early", 1, &block, port).expect("starting nginx");
    let requests = json!([
        {"path": "/api/before", "headers": {"x-want-status": "200"}},
        {"path": "/api/after-1", "headers": {"x-want-status": "201"}},
        {"path": "/api/after-2", "headers": {"x-want-status": "202"}},
    ]);
    let script = workspace_root().join("tests/clients/h2_streams.py");
    let mut client = Command::new("/usr/bin/python3")
        .arg(script)
        .args([
            "127.0.0.1",
            &port.to_string(),
            "clear",
            &requests.to_string(),
        ])
        .args(["--pause-ms", "4000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the h2 client");
    let mut stdout = std::io::BufReader::new(client.stdout.take().expect("piped"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("the client's first line");
    assert_eq!(line.trim(), "paused", "the first request was answered");
    let observer = Observer::attach(gateway.master_pid(), &[]).expect("attaching");
    let rest: Vec<String> = std::io::BufRead::lines(stdout)
        .map_while(Result::ok)
        .collect();
    assert!(client.wait().expect("the client").success());
    let statuses: Vec<u64> = rest
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("client line")["status"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(statuses, [200, 201, 202]);
    observer.wait_ended(2);
    let (events, summary) = observer.stop();
    assert_every_request_ends_once(&events);
    let incoming = of(&events, "INCOMING_REQUEST");
    let urls = incoming_urls(&events);
    assert_eq!(urls, ["/api/after-1", "/api/after-2"], "{events:#?}");
    for (request, status) in incoming.iter().zip([201, 202]) {
        assert_eq!(request["RequestInMethod"], "GET");
        // The client's User-Agent went into the HPACK table before attach: named by index.
        assert!(request.get("UserAgent").is_none(), "{request:#}");
        assert_eq!(request["HeadersUnknown"], "true", "{request:#}");
        let end = ending(&events, request).expect("an ending");
        assert_eq!(end["StatusCode"], status, "{end:#}");
    }
    assert!(summary.contains("HTTP/2 connections 1 "), "{summary}");
}

/// HAProxy (2 threads) with HTTP/2 in front (cleartext, prior knowledge) and HTTP/1.1 to the
/// backend: 50 streams in flight on one connection, identical but for headers the observer
/// does not read, each paired with its own backend call; a stream HAProxy answers itself.
#[test]
fn haproxy_with_http2_in_front_pairs_each_stream() {
    require_root();
    let backend = Backend::start().expect("starting a backend");
    let port = free_port();
    let body = format!(
        "frontend h2\n  bind 127.0.0.1:{port} proto h2\n  \
         http-request return status 404 if {{ path_beg /nope }}\n  default_backend app\n\
         backend app\n  server one 127.0.0.1:{}\n",
        backend.port()
    );
    let gateway = Gateway::haproxy("h2-haproxy", 2, &body, port).expect("starting HAProxy");
    let observer = Observer::attach(gateway.master_pid(), &[]).expect("attaching");
    let count = 50;
    let mut requests = identical_streams(count, "/api/same");
    requests.push(json!({"path": "/nope"}));
    let answers = h2_client(port, false, &Value::from(requests));
    assert_eq!(answers.len(), count + 1);
    assert_eq!(answers[count]["status"], 404);
    observer.wait_ended(count + 1);
    let (events, _) = observer.stop();
    assert_every_request_ends_once(&events);
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), count + 1, "{events:#?}");
    let wrong = paired_wrong(&events, &answers);
    assert!(
        wrong.is_empty(),
        "paired with another stream's call: {wrong:#?}"
    );
    let refused = ending(&events, incoming[count]).expect("an ending");
    assert_eq!(refused["Event"], "ERROR");
    assert!(refused.get("RequestOutURL").is_none(), "{refused:#}");
}

/// Apache httpd (event MPM) with mod_http2 offering h2c (upgrade and prior knowledge),
/// proxying /api/ to a backend of its own, and the observer attached.
fn apache_http2(name: &str) -> (Backend, Gateway, Observer) {
    require_root();
    let backend = Backend::start().expect("starting a backend");
    let port = free_port();
    let body = format!(
        "LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so\n\
         Protocols h2c http/1.1\nProxyPass /api/ http://127.0.0.1:{}/v1/\n",
        backend.port()
    );
    let gateway = Gateway::apache(name, &body, port).expect("starting Apache");
    let observer = Observer::attach(gateway.master_pid(), &[]).expect("attaching");
    (backend, gateway, observer)
}

/// Apache httpd (mod_http2) upgrading a client's HTTP/1.1 request to HTTP/2 over cleartext
/// (`Upgrade: h2c`, curl's `--http2` on an http URL): the upgrade request is answered on
/// stream 1, not by the 101. (One URL per curl: curl 7.88 sends nothing for a second URL on
/// the upgraded connection it reuses.)
#[test]
fn an_h2c_upgrade_on_apache_is_answered_on_stream_one() {
    let (backend, gateway, observer) = apache_http2("h2-upgrade");
    let port = gateway.port;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    for path in ["/api/first", "/api/second"] {
        assert_eq!(
            curl(&["--http2", "-H", "x-want-status: 201", &url(path)]),
            vec![201]
        );
    }
    observer.wait_ended(2);
    let (events, summary) = observer.stop();
    assert_every_request_ends_once(&events);
    let incoming = of(&events, "INCOMING_REQUEST");
    let urls = incoming_urls(&events);
    assert_eq!(urls, ["/api/first", "/api/second"], "{events:#?}");
    for (request, path) in incoming.iter().zip(["first", "second"]) {
        let end = ending(&events, request).expect("an ending");
        assert_eq!(end["Event"], "REQUEST_COMPLETE", "{end:#}");
        assert_eq!(end["StatusCode"], 201, "{end:#}");
        assert_eq!(
            end["RequestOutURL"],
            format!("http://127.0.0.1:{}/v1/{path}", backend.port())
        );
    }
    assert!(summary.contains("HTTP/2 connections 2 "), "{summary}");
    assert!(
        summary.contains("connections left alone (neither HTTP/1 nor HTTP/2) 0"),
        "{summary}"
    );
}

/// Apache httpd (mod_http2): one thread reads a connection's frames and hands each stream to
/// a worker thread, taken from a queue, that makes the backend call. 50 identical streams in
/// flight on one connection (prior knowledge): every request ends once, and a pairing the
/// kernel facts cannot tell (order alone) is marked low confidence: no wrong pairing is
/// claimed with confidence. (The share paired right, 76-86 % in repeated runs, is reported,
/// not asserted.)
#[test]
fn apache_hands_streams_to_workers_and_no_wrong_pairing_is_confident() {
    let (_backend, gateway, observer) = apache_http2("h2-workers");
    let port = gateway.port;
    let count = 50;
    let answers = h2_client(
        port,
        false,
        &Value::from(identical_streams(count, "/api/same")),
    );
    assert_eq!(answers.len(), count);
    observer.wait_ended(count);
    let (events, summary) = observer.stop();
    assert_every_request_ends_once(&events);
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), count, "{summary}");
    let wrong = paired_wrong(&events, &answers);
    let confident: Vec<&&Value> = wrong
        .iter()
        .filter(|end| end["PairingConfidence"] != "low")
        .collect();
    assert!(
        confident.is_empty(),
        "paired wrong with confidence: {confident:#?}\n{summary}"
    );
    eprintln!("{} of {count} paired right", count - wrong.len());
}

/// Over TLS the kernel walks the frames of each call: DATA payloads are skipped, never
/// copied (the recording of 20 KB answers holds a small part of what crossed the gateway), no
/// frame header is lost, and answers the gateway gives itself between large proxied ones are
/// all seen.
#[test]
fn large_answers_over_tls_are_framed_not_copied() {
    let recording =
        std::env::temp_dir().join(format!("access-log-h2-walk-{}.alrec", std::process::id()));
    let setup = Setup::start_with(
        "h2-walk",
        1,
        &["--save-records", recording.to_str().expect("utf-8")],
    );
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", setup.tls_port);
    let output = Command::new("h2load")
        .args(["-n", "1000", "-c", "4", "-m", "32"])
        .args(["-H", "x-want-bytes: 20000"])
        .args([url("/api/large"), url("/health")])
        .output()
        .expect("running h2load");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("1000 succeeded"), "{text}");
    setup.observer.wait_ended(1000);
    let (events, summary) = setup.observer.stop();
    let recorded = fs::metadata(&recording).expect("the recording").len();
    let _ = fs::remove_file(&recording);
    assert_every_request_ends_once(&events);
    assert!(of(&events, "LOST").is_empty(), "{summary}");
    let complete = of(&events, "REQUEST_COMPLETE");
    assert_eq!(complete.len(), 1000, "{summary}");
    let by_gateway = complete
        .iter()
        .filter(|e| e["AnsweredBy"] == "gateway")
        .count();
    assert_eq!(by_gateway, 500, "{summary}");
    assert!(summary.contains("frames lost 0 times"), "{summary}");
    // Copied whole, the client side alone would record every byte of the answers; what is
    // recorded is mostly the backend side's HTTP/1 windows (a response window of each read).
    let moved = 500 * 20_000;
    assert!(
        recorded < moved / 3,
        "{recorded} bytes recorded for {moved} bytes of answers"
    );
}
