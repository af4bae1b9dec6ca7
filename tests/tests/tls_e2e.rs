//! End to end over TLS: nginx terminating HTTPS and proxying to a plaintext and to an HTTPS
//! backend, a keep-alive HTTPS client, errors over TLS, a reload during TLS traffic, and a
//! Node.js HTTPS proxy (OpenSSL inside the executable). Certificates are made by the tests.
use std::{fs, path::PathBuf, process::Command, thread, time::Duration};

use serde_json::Value;
use tests::{
    backend::Backend,
    certificate, curl, free_port,
    gateway::Gateway,
    observer::{ending, map_entries, of, Observer},
    require_root, wait_for_port,
};

struct Setup {
    observer: Observer,
    gateway: Gateway,
    _tls_backend: Gateway,
    backend: Backend,
    tls_backend_port: u16,
    /// A plaintext listener on the same server, for traffic mixed with TLS.
    plain_port: u16,
    cert_dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.cert_dir);
    }
}

/// A fresh directory holding a self-signed certificate.
fn certificates(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("access-log-certs-{name}-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("certificate directory");
    let (cert, key) = certificate::self_signed(&dir).expect("making a certificate");
    (dir, cert, key)
}

impl Setup {
    fn start(name: &str) -> Setup {
        require_root();
        let backend = Backend::start().expect("starting a backend");
        let tls_backend_port = free_port();
        let port = free_port();
        let plain_port = free_port();
        // The TLS backend: an nginx (not observed) terminating TLS in front of the backend.
        let (cert_dir, cert, key) = certificates(name);
        let (cert, key) = (cert.display(), key.display());
        let tls_backend = Gateway::nginx(
            &format!("{name}-backend"),
            1,
            &format!(
                "  server {{ listen 127.0.0.1:{tls_backend_port} ssl; ssl_certificate {cert}; \
                 ssl_certificate_key {key}; location /hang-up/ {{ return 444; }} \
                 location / {{ proxy_pass http://127.0.0.1:{}; }} }}",
                backend.port()
            ),
            tls_backend_port,
        )
        .expect("starting the TLS backend");
        let block = format!(
            r#"
  upstream plain {{ server 127.0.0.1:{b}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    listen 127.0.0.1:{plain_port};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location /plain/ {{ proxy_pass http://plain/v1/; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    location /secure/ {{ proxy_pass https://127.0.0.1:{tls_backend_port}/v2/; }}
    location /secure-closing/ {{ proxy_pass https://127.0.0.1:{tls_backend_port}/hang-up/; }}
    location /auth/ {{ if ($http_apikey = "") {{ return 401; }} proxy_pass http://plain; }}
    location / {{ return 404; }}
  }}
"#,
            b = backend.port()
        );
        let gateway = Gateway::nginx(name, 2, &block, port).expect("starting nginx");
        let observer = Observer::attach(gateway.master_pid(), &[]).expect("attaching");
        Setup {
            observer,
            gateway,
            _tls_backend: tls_backend,
            backend,
            tls_backend_port,
            plain_port,
            cert_dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.gateway.port)
    }
}

fn https(args: &[&str]) -> Vec<u16> {
    let mut all = vec!["-k"];
    all.extend(args);
    curl(&all)
}

#[test]
fn https_client_to_a_plaintext_backend() {
    let setup = Setup::start("tls-plain");
    assert_eq!(
        https(&["-A", "tls-agent/2", &setup.url("/plain/items?x=1")]),
        vec![200]
    );
    let events = setup.observer.wait_ended(1);
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), 1, "{events:#?}");
    assert_eq!(incoming[0]["ClientTLS"], "true");
    assert_eq!(incoming[0]["RequestInURL"], "/plain/items?x=1");
    assert_eq!(incoming[0]["UserAgent"], "tls-agent/2");
    assert_eq!(incoming[0]["RemoteIP"], "127.0.0.1");
    let done = ending(&events, incoming[0]).expect("an ending event");
    assert_eq!(done["Event"], "REQUEST_COMPLETE");
    assert_eq!(done["StatusCode"], 200);
    assert_eq!(
        done["RequestOutURL"],
        format!("http://127.0.0.1:{}/v1/items?x=1", setup.backend.port())
    );
}

#[test]
fn https_client_to_an_https_backend() {
    let setup = Setup::start("tls-tls");
    assert_eq!(https(&[&setup.url("/secure/z?k=v")]), vec![200]);
    let events = setup.observer.wait_ended(1);
    let done = of(&events, "REQUEST_COMPLETE");
    assert_eq!(done.len(), 1, "{events:#?}");
    assert_eq!(
        done[0]["RequestOutURL"],
        format!("https://127.0.0.1:{}/v2/z?k=v", setup.tls_backend_port)
    );
    assert_eq!(done[0]["ClientTLS"], "true");
}

#[test]
fn https_backend_closing_before_answering_is_a_closed_connection_fault() {
    let setup = Setup::start("tls-closing");
    // The TLS backend closes the connection without an answer (nginx's 444).
    assert_eq!(https(&[&setup.url("/secure-closing/x")]), vec![502]);
    let events = setup.observer.wait_ended(1);
    let errors = of(&events, "ERROR");
    assert_eq!(errors.len(), 1, "{events:#?}");
    assert_eq!(errors[0]["ErrorSource"], "fault");
    assert_eq!(errors[0]["ERROR_CODE"], "101505", "{events:#?}");
    assert_eq!(
        errors[0]["RequestOutURL"],
        format!("https://127.0.0.1:{}/hang-up/x", setup.tls_backend_port)
    );
}

#[test]
fn keep_alive_https_client() {
    let setup = Setup::start("tls-keepalive");
    let urls: Vec<String> = (1..=4)
        .map(|i| setup.url(&format!("/plain/k{i}?i={i}")))
        .collect();
    let args: Vec<&str> = urls.iter().map(String::as_str).collect();
    assert_eq!(https(&args), vec![200; 4]);
    let events = setup.observer.wait_ended(4);
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), 4, "{events:#?}");
    for request in incoming {
        let done = ending(&events, request).expect("an ending event");
        let path = request["RequestInURL"]
            .as_str()
            .unwrap()
            .trim_start_matches("/plain");
        assert_eq!(
            done["RequestOutURL"],
            format!("http://127.0.0.1:{}/v1{path}", setup.backend.port())
        );
    }
}

#[test]
fn plaintext_and_tls_clients_mixed_get_the_same_fields() {
    let setup = Setup::start("tls-mixed");
    let plain = format!("http://127.0.0.1:{}/plain/m?via=http", setup.plain_port);
    for round in 0..3 {
        assert_eq!(
            https(&[&setup.url("/plain/m?via=https")]),
            vec![200],
            "{round}"
        );
        assert_eq!(curl(&[&plain]), vec![200], "{round}");
    }
    let events = setup.observer.wait_ended(6);
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), 6, "{events:#?}");
    let keys = |e: &Value| {
        let mut keys: Vec<String> = e.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    for request in &incoming {
        let tls = request["RequestInURL"] == "/plain/m?via=https";
        assert_eq!(request["ClientTLS"], if tls { "true" } else { "false" });
        let done = ending(&events, request).expect("an ending event");
        assert_eq!(done["Event"], "REQUEST_COMPLETE");
        assert_eq!(done["StatusCode"], 200);
        assert_eq!(keys(request), keys(incoming[0]));
        assert_eq!(keys(done), keys(ending(&events, incoming[0]).unwrap()));
    }
}

#[test]
fn errors_are_classified_over_tls() {
    let setup = Setup::start("tls-errors");
    assert_eq!(https(&[&setup.url("/nothing")]), vec![404]);
    assert_eq!(https(&[&setup.url("/auth/x")]), vec![401]);
    let events = setup.observer.wait_ended(2);
    let errors = of(&events, "ERROR");
    assert_eq!(errors.len(), 2, "{events:#?}");
    assert_eq!(errors[0]["ErrorSource"], "main");
    assert_eq!(errors[1]["ERROR_CODE"], "900902");
    assert!(errors.iter().all(|e| e["ClientTLS"] == "true"));
}

#[test]
fn reload_during_tls_traffic_misses_nothing() {
    let setup = Setup::start("tls-reload");
    let url = setup.url("/plain/during-reload");
    let client = thread::spawn(move || {
        (0..60)
            .map(|_| {
                let status = https(&[&url]);
                thread::sleep(Duration::from_millis(20));
                status
            })
            .collect::<Vec<_>>()
    });
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(250));
        setup.gateway.reload().expect("reloading nginx");
    }
    let statuses = client.join().expect("the client thread");
    let served = statuses.iter().filter(|s| **s == vec![200]).count();
    assert_eq!(served, 60, "{statuses:?}");
    let events = setup.observer.wait_ended(served);
    assert_eq!(of(&events, "INCOMING_REQUEST").len(), served);
    assert_eq!(of(&events, "REQUEST_COMPLETE").len(), served, "{events:#?}");
}

/// Node.js's HTTPS server: OpenSSL linked into the executable, memory BIOs.
#[test]
fn nodejs_https_proxy() {
    require_root();
    let backend = Backend::start().expect("starting a backend");
    let (dir, cert, key) = certificates("node");
    let script = dir.join("proxy.js");
    fs::write(
        &script,
        r#"const https = require('https'), http = require('http'), fs = require('fs');
const [port, backend, cert, key] = process.argv.slice(2);
https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
  const out = http.request({ host: '127.0.0.1', port: +backend, path: '/node' + req.url,
    method: req.method, headers: req.headers }, (r) => { res.writeHead(r.statusCode, r.headers); r.pipe(res); });
  out.on('error', () => { res.writeHead(502); res.end(); });
  req.pipe(out);
}).listen(+port, '127.0.0.1');
"#,
    )
    .expect("writing the node script");
    let port = free_port();
    let mut node = Command::new("node")
        .arg(&script)
        .args([&port.to_string(), &backend.port().to_string()])
        .arg(&cert)
        .arg(&key)
        .spawn()
        .expect("starting node (cargo xtask setup installs nodejs)");
    wait_for_port(port, Duration::from_secs(10)).expect("node listening");
    let observer = Observer::attach(node.id(), &[]).expect("attaching to node");
    let url = format!("https://127.0.0.1:{port}/api/v1?q=node");
    assert_eq!(curl(&["-k", &url]), vec![200]);
    observer.wait_ended(1);
    // Which OpenSSL was read: the one inside the executable (nodesource's node), or the shared
    // libssl (Debian's nodejs); the attach line names it.
    let maps = fs::read_to_string(format!("/proc/{}/maps", node.id())).unwrap_or_default();
    let embedded = !maps.contains("libssl.so");
    let (events, stderr) = observer.stop();
    let _ = node.kill();
    let _ = node.wait();
    let attached = stderr
        .lines()
        .find(|l| l.starts_with("attached:"))
        .expect("the attach line");
    let exe = fs::read_link("/usr/bin/node")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/usr/bin/node".into());
    if embedded {
        eprintln!("node carries OpenSSL in its executable: {attached}");
        assert!(
            attached.contains("TLS read in /usr/bin/node") || attached.contains(&exe),
            "{attached}"
        );
    } else {
        eprintln!("node uses the shared libssl (not the embedded case): {attached}");
        assert!(attached.contains("libssl.so"), "{attached}");
    }
    let incoming = of(&events, "INCOMING_REQUEST");
    assert_eq!(incoming.len(), 1, "{events:#?}");
    assert_eq!(incoming[0]["ClientTLS"], "true");
    assert_eq!(incoming[0]["RequestInURL"], "/api/v1?q=node");
    // libuv accepts without an address buffer: the peer comes from /proc.
    assert_eq!(incoming[0]["RemoteIP"], "127.0.0.1");
    let done = ending(&events, incoming[0]).expect("an ending event");
    assert_eq!(
        done["RequestOutURL"],
        format!("http://127.0.0.1:{}/node/api/v1?q=node", backend.port())
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Caddy (Go, crypto/tls): reported at attach as unreadable; its encrypted connections counted.
#[test]
fn go_tls_is_reported_and_counted() {
    require_root();
    let backend = Backend::start().expect("starting a backend");
    let (dir, cert, key) = certificates("caddy");
    let port = free_port();
    let config = dir.join("Caddyfile");
    fs::write(
        &config,
        format!(
            "{{\n  admin off\n  auto_https off\n  storage file_system {d}\n}}\n\
             https://127.0.0.1:{port} {{\n  tls {c} {k}\n  reverse_proxy 127.0.0.1:{b}\n}}\n",
            d = dir.display(),
            c = cert.display(),
            k = key.display(),
            b = backend.port()
        ),
    )
    .expect("writing the Caddyfile");
    let mut caddy = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&config)
        .env("HOME", &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting caddy (cargo xtask setup installs it)");
    wait_for_port(port, Duration::from_secs(20)).expect("caddy listening");
    let observer = Observer::attach(caddy.id(), &[]).expect("attaching to caddy");
    assert_eq!(
        curl(&["-k", &format!("https://127.0.0.1:{port}/x")]),
        vec![200]
    );
    // The connection is counted when it closes: curl has exited, Caddy closes it when idle.
    thread::sleep(Duration::from_millis(500));
    let _ = caddy.kill();
    let _ = caddy.wait();
    let (events, stderr) = observer.stop();
    let _ = fs::remove_dir_all(&dir);
    assert!(events.is_empty(), "{events:#?}");
    assert!(stderr.contains("is a Go program"), "{stderr}");
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("summary");
    assert!(
        summary.contains("encrypted connections not read 1"),
        "{summary}"
    );
}

#[test]
fn a_java_process_is_reported_as_unreadable_tls() {
    require_root();
    let dir = std::env::temp_dir().join(format!("access-log-java-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let source = dir.join("Idle.java");
    fs::write(
        &source,
        "public class Idle { public static void main(String[] a) throws Exception { \
         System.out.println(\"ready\"); Thread.sleep(60000); } }",
    )
    .unwrap();
    let mut java = Command::new("java")
        .arg(&source)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting java (cargo xtask setup installs it)");
    // Wait until the JVM runs the program (its libjvm.so is mapped by then).
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(java.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    let observer = Observer::attach(java.id(), &[]).expect("attaching to java");
    let (_, stderr) = observer.stop();
    let _ = java.kill();
    let _ = java.wait();
    let _ = fs::remove_dir_all(&dir);
    assert!(
        stderr.contains("is a Java program: JSSE is not read"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("Java program").count(),
        1,
        "reported once: {stderr}"
    );
}

/// The processes the observer's table of TLS objects holds entries for (the key is the SSL
/// object's address, then the process id: bytes 8 to 11, little-endian).
fn tls_object_processes(observer: u32) -> Vec<u32> {
    map_entries(observer, "SSL_SOCKETS")
        .iter()
        .filter_map(|entry| {
            if let Some(tgid) = entry["formatted"]["key"]["tgid"].as_u64() {
                return Some(tgid as u32);
            }
            let bytes: Vec<u8> = entry["key"]
                .as_array()?
                .iter()
                .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
                .collect();
            Some(u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?))
        })
        .collect()
}

#[test]
fn workers_that_exit_leave_no_tls_object_behind() {
    let setup = Setup::start("tls-exit");
    for _ in 0..4 {
        assert_eq!(https(&[&setup.url("/plain/items")]), vec![200]);
    }
    setup.observer.wait_ended(4);
    let workers = setup.gateway.workers();
    let before = tls_object_processes(setup.observer.pid());
    assert!(
        before.iter().any(|p| workers.contains(p)),
        "no TLS object of a worker: {before:?}, workers {workers:?}"
    );
    for worker in &workers {
        // SAFETY: signalling a process the test started (its master starts another).
        unsafe { libc::kill(*worker as i32, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = tls_object_processes(setup.observer.pid());
        if !now.iter().any(|p| workers.contains(p)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "entries of exited workers remain: {now:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // The new workers serve TLS and are read.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(https(&[&setup.url("/plain/after")]), vec![200]);
    let events = setup.observer.wait_ended(5);
    assert!(of(&events, "REQUEST_COMPLETE")
        .iter()
        .any(|e| e["RequestInURL"] == "/plain/after"));
}
