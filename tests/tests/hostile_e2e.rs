//! Hostile and odd HTTP through a real nginx, recorded and replayed: the replay gives the live
//! events; no header value can forge a field or a line; llhttp's request fixtures, malformed
//! ones too, sent raw from a socket give what nginx itself saw.
use std::{
    collections::{BTreeSet, HashMap},
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use socket2::{Domain, Socket, Type};
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
    let mut block = demo::nginx_http_block(port, backends.0.port(), backends.1.port(), free_port())
        // Room for the large uploads.
        .replacen("server {", "client_max_body_size 16m;\n  server {", 1);
    if log_requests {
        // The gateway's own view of each request, to compare with.
        block = block.replacen(
            "server {",
            "log_format seen '$remote_addr\t$request_method\t$request_uri\t$status\t$bytes_sent\t$server_protocol';\n  server {\n    access_log logs/seen.log seen;",
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
    send_from(Ipv4Addr::LOCALHOST, port, bytes)
}

/// `send_raw` from the loopback address `source`.
fn send_from(source: Ipv4Addr, port: u16, bytes: &[u8]) -> Vec<u8> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .expect("binding a loopback source address");
    socket
        .connect(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
        .expect("connecting");
    let mut stream: TcpStream = socket.into();
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

/// `access-log record` attached to the gateway beside the observer, writing capture.alrec.
fn record(setup: &Setup) -> (Attached, std::path::PathBuf) {
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
    (recorder, file)
}

#[test]
fn replay_gives_the_live_events_and_no_value_forges_a_field() {
    let setup = start("replay", false);
    let (recorder, file) = record(&setup);
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
fn llhttp_request_fixtures_through_nginx_give_what_nginx_saw() {
    // Every request fixture, lenient and malformed ones too: nginx is the judge here.
    let cases: Vec<_> = vectors::load_all()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|c| c.side == vectors::Kind::Request)
        .collect();
    let setup = start("vectors", true);
    // Each case from a loopback address of its own: its log lines and events are told apart
    // by the client's IP.
    let source = |index: usize| Ipv4Addr::new(127, 1, (index / 250) as u8, (index % 250) as u8 + 1);
    for (index, case) in cases.iter().enumerate() {
        send_from(source(index), setup.gateway.port, &case.raw);
    }
    // nginx may log a refusal just after it closed the connection.
    std::thread::sleep(Duration::from_millis(500));
    let seen = loop {
        let log = setup.gateway.read("logs/seen.log");
        if !log.is_empty() {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // nginx's view, per client: (method, URI, status) of each request it parsed, and of each
    // malformed one it answered ("-" for what it could not read).
    let mut nginx: HashMap<String, Vec<(String, String, u64)>> = HashMap::new();
    let mut http09 = BTreeSet::new();
    for line in seen.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [ip, method, uri, status, bytes_sent, protocol] = fields[..] else {
            panic!("unexpected log line {line:?}");
        };
        if protocol == "HTTP/0.9" {
            // HTTP/0.9 has no heads to follow (README: not supported).
            http09.insert(ip.to_owned());
            continue;
        }
        let status: u64 = status.parse().unwrap();
        let read = method != "-" && !method.is_empty();
        // Nothing answered and no client gone (499): nginx gave up on a head the client left
        // halfway, which is no request to the observer either.
        if bytes_sent == "0" && status != 499 {
            continue;
        }
        let (method, uri) = if read {
            (method.to_owned(), unescape_nginx(uri))
        } else {
            ("-".to_owned(), "-".to_owned())
        };
        nginx
            .entry(ip.to_owned())
            .or_default()
            .push((method, uri, status));
    }
    let expected: usize = nginx.values().map(Vec::len).sum();
    let events = setup.observer.wait_for(Duration::from_secs(15), |events| {
        observed_view(events).values().map(Vec::len).sum::<usize>() >= expected
            && of(events, "INCOMING_REQUEST")
                .iter()
                .all(|e| tests::observer::ending(events, e).is_some())
    });
    let mut observed = observed_view(&events);
    assert!(
        expected > 100,
        "nginx logged only {expected} of {} fixtures",
        cases.len()
    );
    let mut differences = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let ip = source(index).to_string();
        if http09.contains(&ip) {
            continue;
        }
        let mut want = nginx.remove(&ip).unwrap_or_default();
        let mut got = observed.remove(&ip).unwrap_or_default();
        // What both saw alike; then what nginx could not read ("-") against a refusal with
        // the same status (the observer may name the method and URL nginx did not log).
        want.retain(|entry| match got.iter().position(|g| g == entry) {
            Some(at) => {
                got.remove(at);
                false
            }
            None => true,
        });
        want.retain(|(method, _, status)| {
            let position = got.iter().position(|g| g.2 == *status);
            match position {
                Some(at) if method == "-" => {
                    got.remove(at);
                    false
                }
                _ => true,
            }
        });
        if !want.is_empty() || !got.is_empty() {
            differences.push(format!(
                "{} / {}{}: nginx {want:?}, observer {got:?}\n    sent {:?}",
                case.file,
                case.title,
                if case.rejected {
                    " (llhttp: malformed)"
                } else {
                    ""
                },
                String::from_utf8_lossy(&case.raw[..case.raw.len().min(300)])
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} fixtures differ:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
}

/// The observer's view of the llhttp cases, per client: each request with the status that ended
/// it, and each refusal of a malformed request; requests the gateway dropped unserved after an
/// answer that closed the connection are left out, as nginx logs nothing for them.
fn observed_view(events: &[Value]) -> HashMap<String, Vec<(String, String, u64)>> {
    let mut observed: HashMap<String, Vec<(String, String, u64)>> = HashMap::new();
    for event in events {
        let ip = event["RemoteIP"].as_str().unwrap_or("").to_owned();
        let text = |key: &str| event[key].as_str().unwrap_or("-").to_owned();
        let status = match event["Event"].as_str() {
            Some("INCOMING_REQUEST") => match tests::observer::ending(events, event) {
                Some(end) if end["ERROR_CODE"] == "0" => continue,
                Some(end) => end["StatusCode"].as_u64().unwrap_or(0),
                None => 0,
            },
            Some("ERROR") if event.get("ResponseTo").is_none() => {
                event["StatusCode"].as_u64().unwrap_or(0)
            }
            _ => continue,
        };
        let url = origin_form(&text("RequestInURL"));
        observed
            .entry(ip)
            .or_default()
            .push((text("RequestInMethod"), url, status));
    }
    observed
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
            return match &rest[start..] {
                "" => "/".to_owned(),
                path => path.to_owned(),
            };
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

#[test]
fn large_bodies_both_ways_are_skipped_not_copied() {
    const UPLOAD: usize = 4_000_000;
    const DOWNLOAD: usize = 4_000_000;
    const CHUNKED: usize = 3_000_000;
    let setup = start("large", false);
    let (recorder, file) = record(&setup);
    // An upload, a download by Content-Length and a chunked one with a trailer, pipelined on
    // one connection.
    let mut bytes =
        format!("POST /orders/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {UPLOAD}\r\n\r\n")
            .into_bytes();
    bytes.extend(std::iter::repeat_n(b'u', UPLOAD));
    bytes.extend_from_slice(
        format!(
            "GET /orders/download HTTP/1.1\r\nHost: x\r\nX-Want-Bytes: {DOWNLOAD}\r\n\r\n\
             GET /orders/chunked HTTP/1.1\r\nHost: x\r\nX-Want-Bytes: {CHUNKED}\r\n\
             X-Want-Chunked: 1\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let answer = send_whole(setup.gateway.port, &bytes);
    assert!(
        answer.len() > DOWNLOAD + CHUNKED,
        "the client got {} bytes",
        answer.len()
    );
    setup.observer.wait_ended(3);
    recorder.stop().expect("stopping the recorder");
    let (events, stderr) = setup.observer.stop();
    let incoming = of(&events, "INCOMING_REQUEST");
    let urls: Vec<_> = incoming.iter().map(|e| e["RequestInURL"].clone()).collect();
    assert_eq!(
        urls,
        ["/orders/upload", "/orders/download", "/orders/chunked"],
        "{events:#?}\n{stderr}"
    );
    for request in &incoming {
        let done = tests::observer::ending(&events, request).expect("an ending");
        assert_eq!(done["Event"], "REQUEST_COMPLETE", "{done}");
        assert_eq!(done["StatusCode"], 200, "{done}");
    }
    assert_eq!(events.len(), 6, "{events:#?}");
    // Every body crosses the gateway twice (client and backend side); the kernel copies at
    // most a capture window of each call, so the recording holds a small part of it.
    let moved = 2 * (UPLOAD + DOWNLOAD + CHUNKED);
    let recorded = fs::metadata(&file).expect("the recording").len() as usize;
    eprintln!(
        "bodies moved through the gateway: {moved} bytes; recorded: {recorded} bytes ({:.1}%)",
        100.0 * recorded as f64 / moved as f64
    );
    assert!(
        recorded < moved / 10,
        "{recorded} bytes recorded for {moved} moved"
    );
}
