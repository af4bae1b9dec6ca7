//! `access-log top` driven in tmux (send-keys, capture-pane) while nginx serves traffic: in an
//! 80x24 terminal and a large one it shows the APIs with their request counts and errors and
//! the most recent errors, filters by API, and quits cleanly on `q` (the run's summary
//! follows); fed by a capture file of the same traffic, it shows the same counts.
use std::{
    fs,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tests::{curl, gateway::ApiGateway, observer::binary, require_root};

fn tmux(args: &[&str]) -> String {
    let output = Command::new("tmux")
        .args(args)
        .output()
        .expect("running tmux");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn alive(session: &str) -> bool {
    Command::new("tmux")
        .args(["has-session", "-t", session])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The pane's text once `done` holds (or the last one seen, after 15 s).
fn screen_when(session: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if done(&screen) || Instant::now() > deadline {
            return screen;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// A tmux session, killed when dropped (a failed assertion included), so that none outlives
/// its test.
struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        if alive(&self.0) {
            tmux(&["kill-session", "-t", &self.0]);
        }
    }
}

/// Runs `command` in a detached tmux session of `columns` x `lines` (a session of the same
/// name left by an earlier run, whose PID this one reuses, is killed first).
fn start_session(session: &str, columns: u16, lines: usize, command: &str) -> Session {
    if alive(session) {
        tmux(&["kill-session", "-t", session]);
    }
    tmux(&[
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        &columns.to_string(),
        "-y",
        &lines.to_string(),
        command,
    ]);
    Session(session.to_owned())
}

/// Sends `q` and waits (15 s at most) for the session's program to end; the session is killed
/// if it does not.
fn quits_on_q(session: &str) -> bool {
    tmux(&["send-keys", "-t", session, "q"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(session) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let quit = !alive(session);
    if !quit {
        tmux(&["kill-session", "-t", session]);
    }
    quit
}

/// The line of the APIs table that names `api`.
fn row<'s>(screen: &'s str, api: &str) -> Option<&'s str> {
    screen.lines().find(|l| l.contains(api) && l.contains('│'))
}

#[test]
fn top_shows_apis_and_errors_filters_and_quits_in_small_and_large_terminals() {
    require_root();
    let ApiGateway {
        backend,
        gateway,
        apis,
        port,
    } = ApiGateway::start("top", "", "");
    // Everything both runs see, recorded for `top --replay` after them.
    let capture = gateway.dir.join("capture.alrec");
    let mut command = Command::new(binary());
    command
        .args([
            "record",
            "--pid",
            &gateway.master_pid().to_string(),
            "--output",
        ])
        .arg(&capture)
        .stdout(std::process::Stdio::null());
    let recorder = tests::observer::Attached::start(command, false).expect("recording");
    for (columns, lines) in [(80, 24), (200, 50)] {
        let session = format!("access-log-top-{}-{columns}", std::process::id());
        let stderr = gateway.dir.join(format!("top-{columns}.err"));
        let command = format!(
            "{} top --pid {} --apis {} 2>{}",
            binary().display(),
            gateway.master_pid(),
            apis.display(),
            stderr.display()
        );
        let _guard = start_session(&session, columns, lines, &command);
        let screen = screen_when(&session, |s| s.contains("access-log top: gateway PID"));
        assert!(screen.contains("q quit"), "{screen}");
        for index in 0..20 {
            assert_eq!(
                curl(&[&format!("http://127.0.0.1:{port}/orders/{index}")]),
                vec![200]
            );
        }
        for index in 0..3 {
            assert_eq!(
                curl(&[&format!("http://127.0.0.1:{port}/billing/{index}")]),
                vec![502]
            );
        }
        let screen = screen_when(&session, |s| {
            row(s, "Orders:v1").is_some_and(|r| r.contains(" 20 "))
                && row(s, "Billing:v2").is_some()
                && s.matches("101503 Error connecting to the back end").count() == 3
        });
        let orders = row(&screen, "Orders:v1").unwrap_or_else(|| panic!("{screen}"));
        assert!(orders.contains(" 20 "), "{screen}");
        let billing = row(&screen, "Billing:v2").unwrap_or_else(|| panic!("{screen}"));
        assert!(billing.contains(" 3 "), "{screen}");
        assert_eq!(
            screen
                .matches("101503 Error connecting to the back end")
                .count(),
            3,
            "{screen}"
        );
        assert!(screen.contains("/billing/2"), "{screen}");
        assert!(screen.lines().count() <= lines, "{screen}");
        // Filter by API, then sort, then quit.
        tmux(&["send-keys", "-t", &session, "/", "bill", "Enter"]);
        let screen = screen_when(&session, |s| row(s, "Orders:v1").is_none());
        assert!(row(&screen, "Orders:v1").is_none(), "{screen}");
        assert!(row(&screen, "Billing:v2").is_some(), "{screen}");
        assert!(screen.contains("filter: bill"), "{screen}");
        tmux(&["send-keys", "-t", &session, "c", "s"]);
        let screen = screen_when(&session, |s| s.contains("sort: requests"));
        assert!(row(&screen, "Orders:v1").is_some(), "{screen}");
        assert!(quits_on_q(&session), "top did not quit on q");
        let stderr = fs::read_to_string(&stderr).unwrap_or_default();
        assert!(stderr.contains("summary: 23 INCOMING_REQUEST"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    thread::sleep(Duration::from_millis(300));
    recorder.stop().expect("stopping the recorder");
    // The same figures from the capture file, without a gateway.
    let session = format!("access-log-top-{}-replay", std::process::id());
    let command = format!(
        "{} top --replay {} --apis {}",
        binary().display(),
        capture.display(),
        apis.display()
    );
    let _guard = start_session(&session, 80, 24, &command);
    let screen = screen_when(&session, |s| {
        row(s, "Orders:v1").is_some_and(|r| r.contains(" 40 "))
    });
    assert!(screen.contains("access-log top: capture"), "{screen}");
    assert!(
        row(&screen, "Orders:v1").is_some_and(|r| r.contains(" 40 ")),
        "{screen}"
    );
    assert!(
        row(&screen, "Billing:v2").is_some_and(|r| r.contains(" 6 ")),
        "{screen}"
    );
    assert!(quits_on_q(&session), "top --replay did not quit on q");
    drop(backend);
}

#[test]
fn when_the_gateway_exits_top_says_so_and_holds_no_probe() {
    require_root();
    let ApiGateway {
        backend,
        gateway,
        apis,
        port,
    } = ApiGateway::start("top-exit", "", "");
    let session = format!("access-log-top-{}-exit", std::process::id());
    // `exec`: the pane's process is top itself.
    let command = format!(
        "exec {} top --pid {} --apis {}",
        binary().display(),
        gateway.master_pid(),
        apis.display()
    );
    let _guard = start_session(&session, 100, 30, &command);
    let screen = screen_when(&session, |s| s.contains("access-log top: gateway PID"));
    assert!(screen.contains("q quit"), "{screen}");
    let top: u32 = tmux(&["display-message", "-p", "-t", &session, "#{pane_pid}"])
        .trim()
        .parse()
        .expect("the pane's process");
    assert!(
        !tests::observer::fdinfo_ids(top, "prog_id:").is_empty(),
        "top holds its programs while it runs"
    );
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{port}/orders/1")]),
        vec![200]
    );
    drop(gateway);
    let screen = screen_when(&session, |s| s.contains("run ended"));
    assert!(screen.contains("run ended: the gateway"), "{screen}");
    assert!(row(&screen, "Orders:v1").is_some(), "{screen}");
    // The probes go with the run, not with the screen.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !tests::observer::fdinfo_ids(top, "prog_id:").is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        tests::observer::fdinfo_ids(top, "prog_id:").is_empty(),
        "top still holds programs after its run ended"
    );
    assert!(
        quits_on_q(&session),
        "top did not quit on q after its run ended"
    );
    drop(backend);
}
