//! Hostile and odd HTTP through a real nginx, recorded and replayed: the replay gives the live
//! events; no header value can forge a field or a line; llhttp's request fixtures sent raw from
//! a socket give the heads llhttp reports.
use std::{
    collections::BTreeSet,
    fs,
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tests::{
    backend::Backend,
    curl, demo, free_port,
    gateway::Gateway,
    observer::{binary, of, Attached, Observer},
    require_root, vectors,
};

struct Setup {
    observer: Observer,
    gateway: Gateway,
    _backends: (Backend, Backend),
}

fn start(name: &str, log_requests: bool) -> Setup {
    require_root();
    let backends = (Backend::start().unwrap(), Backend::start().unwrap());
    let port = free_port();
    let mut block = demo::nginx_http_block(port, backends.0.port(), backends.1.port(), free_port());
    if log_requests {
        // The gateway's own view of each request, to compare with.
        block = block.replacen(
            "server {",
            "log_format seen '$request_method $request_uri $status';\n  server {\n    access_log logs/seen.log seen;",
            1,
        );
    }
    let gateway = Gateway::nginx(name, 2, &block, port).expect("starting nginx");
    let observer = Observer::attach(gateway.master_pid(), &[]).expect("attaching");
    Setup {
        observer,
        gateway,
        _backends: backends,
    }
}

/// Sends raw bytes on a fresh connection, half-closes, and reads until the gateway closes.
fn send_raw(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// Every field of every event but the random ids, which are per run, and the times (the live
/// observer and the recorder are two attachments, whose probes read the clock each on their
/// own); ResponseTo becomes the URL of the request it answers, so the links are compared too.
fn projection(events: &[Value]) -> Vec<String> {
    let url_of: std::collections::HashMap<&str, &Value> = events
        .iter()
        .filter(|e| e["Event"] == "INCOMING_REQUEST")
        .map(|e| (e["MessageID"].as_str().unwrap_or(""), &e["RequestInURL"]))
        .collect();
    let mut out: Vec<String> = events
        .iter()
        .map(|e| {
            let mut e = e.as_object().expect("an object").clone();
            e.remove("MessageID");
            e.remove("Timestamp");
            e.remove("ResponseTimeMs");
            if let Some(to) = e.remove("ResponseTo") {
                let url = url_of.get(to.as_str().unwrap_or("")).copied();
                e.insert("ResponseTo".into(), url.cloned().unwrap_or(Value::Null));
            }
            Value::Object(e).to_string()
        })
        .collect();
    out.sort();
    out
}

#[test]
fn replay_gives_the_live_events_and_no_value_forges_a_field() {
    let setup = start("replay", false);
    let file = setup.gateway.path("capture.alrec");
    let mut command = Command::new(binary());
    command
        .args([
            "record",
            "--pid",
            &setup.gateway.master_pid().to_string(),
            "--output",
        ])
        .arg(&file);
    let recorder = Attached::start(command, false).expect("starting the recorder");
    let port = setup.gateway.port;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    curl(&[&url("/orders/a?x=1"), &url("/orders/b")]);
    curl(&["-d", "payload", &url("/orders/new")]);
    curl(&[&url("/nope")]);
    curl(&[&url("/inventory/x")]);
    curl(&[&url("/legacy/y")]);
    // A User-Agent that tries to end its field and add one (control bytes are refused by
    // the gateway itself; the formatter's escaping of them is unit-tested).
    send_raw(
        port,
        b"GET /orders/forged HTTP/1.1\r\nHost: x\r\nUser-Agent: evil\", Event=\"ERROR\\\r\nConnection: close\r\n\r\n",
    );
    let live = setup.observer.wait_ended(8);
    recorder.stop().expect("stopping the recorder");
    // Replay needs no privilege: it runs as nobody.
    let _ = fs::set_permissions(
        setup.gateway.path(""),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let _ = fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let replay = |format: &str| {
        let output = std::os::unix::process::CommandExt::uid(
            Command::new(binary())
                .args(["replay", "--format", format])
                .arg(&file),
            65534,
        )
        .output()
        .expect("replaying");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    };
    let replayed: Vec<Value> = replay("json")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(
        replayed.len(),
        live.len(),
        "live {live:#?}\nreplayed {replayed:#?}"
    );
    assert_eq!(projection(&replayed), projection(&live));
    let forged = of(&live, "INCOMING_REQUEST")
        .into_iter()
        .find(|e| e["RequestInURL"] == "/orders/forged")
        .expect("the forging request is logged");
    assert_eq!(forged["UserAgent"], "evil\", Event=\"ERROR\\");
    for line in replay("kv").lines() {
        assert_eq!(line.matches("Event=\"").count(), 1, "{line}");
        if line.contains("/orders/forged") {
            assert!(
                line.contains(r#"UserAgent="evil\", Event=\"ERROR\\""#),
                "{line}"
            );
        }
    }
}

#[test]
fn a_broken_record_file_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("access-log-broken-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.alrec");
    fs::write(&file, b"ALREC01\n\x01\x10\x00\x00").unwrap();
    let output = Command::new(binary())
        .arg("replay")
        .arg(&file)
        .output()
        .unwrap();
    let _ = fs::remove_dir_all(&dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("access-log: error:"), "{stderr}");
}

#[test]
fn llhttp_request_fixtures_through_nginx() {
    let cases: Vec<_> = vectors::load()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|c| c.side == vectors::Kind::Request)
        .collect();
    let setup = start("vectors", true);
    for case in &cases {
        send_raw(setup.gateway.port, &case.raw);
    }
    // nginx's own log: every request it parsed, with its method and URI as received.
    let seen_log = loop {
        let log = setup.gateway.read("logs/seen.log");
        if !log.is_empty() {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let parsed: Vec<(String, String)> = seen_log
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let (method, uri, status) = (parts.next()?, parts.next()?, parts.next()?);
            // "-": nginx could not read a request line; it answered 400 to nothing.
            let _ = status;
            (method != "-").then(|| (method.to_owned(), unescape_nginx(uri)))
        })
        .collect();
    let events = setup.observer.wait_for(Duration::from_secs(10), |events| {
        of(events, "INCOMING_REQUEST").len() >= parsed.len()
    });
    let observed: BTreeSet<(String, String)> = of(&events, "INCOMING_REQUEST")
        .iter()
        .map(|e| {
            (
                e["RequestInMethod"].as_str().unwrap_or("").to_owned(),
                origin_form(e["RequestInURL"].as_str().unwrap_or("")),
            )
        })
        .collect();
    let missing: Vec<_> = parsed.iter().filter(|p| !observed.contains(*p)).collect();
    assert!(
        parsed.len() > 50,
        "nginx parsed only {} of {} fixtures",
        parsed.len(),
        cases.len()
    );
    assert!(
        missing.is_empty(),
        "nginx served {} requests; not observed: {missing:?}",
        parsed.len()
    );
}

/// nginx's access log writes `"` and `\` (and bytes outside printable ASCII) as `\xHH`.
fn unescape_nginx(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index..].starts_with(b"\\x") && index + 4 <= bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[index + 2..index + 4], 16) {
                out.push(byte);
                index += 4;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The observer logs the target exactly as sent; nginx logs an absolute-form target
/// (`http://host/path?q`) as its path and query.
fn origin_form(target: &str) -> String {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            let start = rest.find(['/', '?']).unwrap_or(rest.len());
            return rest[start..].to_owned();
        }
    }
    target.to_owned()
}

/// Sends `head`, waits for the interim `100 Continue`, then sends `body`; returns the answer.
fn send_expecting_continue(port: u16, head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    stream.write_all(head).unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).expect("the interim answer");
    assert!(interim.starts_with(b"HTTP/1.1 100 Continue"), "{interim:?}");
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// Sends raw bytes and reads until the gateway closes, without half-closing first (nginx
/// takes a client's FIN while a request is proxied as the client leaving: a 499).
fn send_whole(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    stream.write_all(bytes).expect("sending");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn odd_but_valid_http_from_a_raw_socket_gives_the_right_events() {
    let setup = start("odd", false);
    let port = setup.gateway.port;
    // HTTP/1.0, closed after the answer.
    send_whole(port, b"GET /orders/h10 HTTP/1.0\r\n\r\n");
    // HTTP/1.0 kept alive, then a second request pipelined (which ends the connection).
    send_whole(
        port,
        b"GET /orders/h10ka-1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
          GET /orders/h10ka-2 HTTP/1.0\r\n\r\n",
    );
    // HTTP/1.1 with Connection: close.
    send_whole(
        port,
        b"GET /orders/close HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    // A 304 and a HEAD answer carry no body: the request after each must still be found.
    send_whole(
        port,
        b"GET /orders/not-modified HTTP/1.1\r\nHost: x\r\nX-Want-Status: 304\r\n\r\n\
          HEAD /orders/head HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /orders/after-bodyless HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    // A body far beyond the capture window, then a pipelined request.
    let mut big =
        b"POST /orders/big HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'b', 200_000));
    big.extend_from_slice(
        b"GET /orders/after-big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    send_whole(port, &big);
    // Expect: 100-continue: the interim 100 is not the answer.
    let answer = send_expecting_continue(
        port,
        b"POST /orders/continue HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
          Expect: 100-continue\r\nConnection: close\r\n\r\n",
        b"hello",
    );
    assert!(
        String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A head the client abandons halfway is no request.
    send_raw(port, b"GET /orders/cut HTTP/1.1\r\nHost: x\r\nUser-Ag");
    let expected = [
        ("/orders/h10", 200),
        ("/orders/h10ka-1", 200),
        ("/orders/h10ka-2", 200),
        ("/orders/close", 200),
        ("/orders/not-modified", 304),
        ("/orders/head", 200),
        ("/orders/after-bodyless", 200),
        ("/orders/big", 200),
        ("/orders/after-big", 200),
        ("/orders/continue", 200),
    ];
    setup.observer.wait_ended(expected.len());
    let (events, stderr) = setup.observer.stop();
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), expected.len(), "{events:#?}\n{stderr}");
    assert!(of(&events, "ERROR").is_empty(), "{events:#?}");
    for (url, status) in expected {
        let request = incoming
            .iter()
            .find(|e| e["RequestInURL"] == url)
            .unwrap_or_else(|| panic!("no INCOMING_REQUEST for {url}: {events:#?}"));
        let done = tests::observer::ending(&events, request)
            .unwrap_or_else(|| panic!("no ending for {url}: {events:#?}"));
        assert_eq!(done["Event"], "REQUEST_COMPLETE", "{url}");
        assert_eq!(done["StatusCode"], status, "{url}");
        let path = url.trim_start_matches("/orders/");
        assert!(
            done["RequestOutURL"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/v1/orders/{path}")),
            "{url}: {done}"
        );
    }
    assert!(!events.iter().any(|e| e.to_string().contains("/orders/cut")));
}
