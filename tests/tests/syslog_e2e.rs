//! `--syslog`: every event reaches a real rsyslog (Debian's package, started by the test on
//! loopback with its own configuration) as an RFC 5424 message carrying the kv line, over TCP
//! (octet-counted frames) and over UDP; the observer survives rsyslog's restart and the events
//! after it arrive too.
use std::{
    fs,
    path::PathBuf,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    backend::Backend,
    free_port,
    gateway::Gateway,
    observer::{of, Observer},
    require_root,
    steady::request,
};

/// rsyslogd in the foreground, listening on loopback, writing each message's MSGID and MSG
/// to a file.
struct Rsyslog {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    fn start(dir: &std::path::Path, port: u16) -> Rsyslog {
        let mut rsyslog = Rsyslog {
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        rsyslog.run();
        rsyslog
    }

    fn run(&mut self) {
        let d = self.dir.display();
        let port = self.port;
        let config = self.dir.join("rsyslog.conf");
        fs::write(
            &config,
            format!(
                "global(workDirectory=\"{d}\")\n\
                 module(load=\"imtcp\")\nmodule(load=\"imudp\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
                 input(type=\"imudp\" address=\"127.0.0.1\" port=\"{port}\")\n\
                 template(name=\"line\" type=\"string\" string=\"%msgid% %msg%\\n\")\n\
                 *.* action(type=\"omfile\" file=\"{d}/received.log\" template=\"line\")\n"
            ),
        )
        .unwrap();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&config)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .spawn()
            .expect("starting rsyslogd (cargo xtask setup installs rsyslog)");
        self.child = Some(child);
        // Listening on TCP means its inputs are up (UDP is bound before).
        tests::wait_for_port(port, Duration::from_secs(10)).expect("rsyslogd listens");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    fn received(&self) -> String {
        fs::read_to_string(self.dir.join("received.log")).unwrap_or_default()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until every event the observer printed is in rsyslog's file (by MessageID).
fn wait_received(rsyslog: &Rsyslog, events: &[Value]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let received = rsyslog.received();
        let missing: Vec<&str> = events
            .iter()
            .filter_map(|e| e["MessageID"].as_str())
            .filter(|id| !received.contains(&format!("MessageID=\"{id}\"")))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {} events not received, e.g. {}",
                missing.len(),
                events.len(),
                missing[0]
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn every_event_reaches_rsyslog(transport: &str) {
    require_root();
    let backend = Backend::start().expect("a backend");
    let gateway = Gateway::nginx_proxy(&format!("syslog-{transport}"), 1, backend.port())
        .expect("starting nginx");
    let port = gateway.port;
    let syslog_port = free_port();
    let mut rsyslog = Rsyslog::start(&gateway.dir, syslog_port);
    let url = format!("{transport}://127.0.0.1:{syslog_port}");
    let observer = Observer::attach(gateway.master_pid(), &["--syslog", &url]).expect("attaching");
    for number in 0..50 {
        assert_eq!(request(port, &format!("/syslog/first/{number}")), Ok(200));
    }
    let first = observer.wait_ended(50);
    assert_eq!(of(&first, "REQUEST_COMPLETE").len(), 50);
    wait_received(&rsyslog, &first).unwrap();
    let received = rsyslog.received();
    // MSGID is the event type, MSG the kv line.
    assert!(
        received
            .lines()
            .any(|l| l.starts_with("REQUEST_COMPLETE ") && l.contains("Event=\"REQUEST_COMPLETE\"")),
        "{received}"
    );
    // rsyslog restarts; the observer carries on and the events after it arrive.
    rsyslog.stop();
    rsyslog.run();
    for number in 0..50 {
        assert_eq!(request(port, &format!("/syslog/second/{number}")), Ok(200));
    }
    let all = observer.wait_ended(100);
    let second: Vec<Value> = all
        .iter()
        .filter(|e| {
            e["RequestInURL"]
                .as_str()
                .is_some_and(|u| u.starts_with("/syslog/second/"))
        })
        .cloned()
        .collect();
    assert_eq!(second.len(), 100, "{all:#?}");
    wait_received(&rsyslog, &second).unwrap();
    let (_, stderr) = observer.stop();
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("summary:"))
        .unwrap_or_default()
        .to_owned();
    assert!(summary.contains("syslog: "), "{summary}");
    eprintln!("{transport}: {summary}");
}

#[test]
fn every_event_reaches_rsyslog_over_tcp_across_its_restart() {
    every_event_reaches_rsyslog("tcp");
}

#[test]
fn every_event_reaches_rsyslog_over_udp_across_its_restart() {
    every_event_reaches_rsyslog("udp");
}

#[test]
fn an_absent_receiver_holds_nothing_up_and_its_losses_are_counted() {
    require_root();
    let backend = Backend::start().expect("a backend");
    let gateway = Gateway::nginx_proxy("syslog-absent", 1, backend.port()).expect("starting nginx");
    let port = gateway.port;
    // Nothing listens there.
    let url = format!("tcp://127.0.0.1:{}", free_port());
    let observer = Observer::attach(gateway.master_pid(), &["--syslog", &url]).expect("attaching");
    for number in 0..20 {
        assert_eq!(request(port, &format!("/absent/{number}")), Ok(200));
    }
    assert_eq!(of(&observer.wait_ended(20), "REQUEST_COMPLETE").len(), 20);
    let (events, stderr) = observer.stop();
    assert_eq!(events.len(), 40);
    assert!(
        stderr.contains(
            "syslog: 0 sent, 0 dropped (queue full), 40 dropped (send failed), 0 connections"
        ),
        "{stderr}"
    );
}
