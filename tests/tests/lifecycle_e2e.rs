//! The observer runs as long as the gateway does (nginx here, started by each test on
//! loopback): configuration reloads and nginx's binary upgrade under load, a restart followed
//! through the pid file, a worker killed and respawned, the output file rotated by logrotate
//! under load, and the observer itself killed. The truth is what each client got back: every
//! request answered while the observer followed the gateway ends in exactly one event.
use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    backend::Backend,
    gateway::{parent_of, Gateway},
    observer::{
        assert_every_request_ends_once, binary, fdinfo_ids, map_entries, of, Attached, Observer,
    },
    require_root,
    steady::{request, Sent, SteadyLoad},
    workspace_root,
};

struct Setup {
    gateway: Gateway,
    _backend: Backend,
}

/// nginx with `workers` workers proxying everything to a fresh backend.
fn nginx(name: &str, workers: u32) -> Setup {
    require_root();
    let backend = Backend::start().expect("a backend");
    let gateway = Gateway::nginx_proxy(name, workers, backend.port()).expect("starting nginx");
    Setup {
        gateway,
        _backend: backend,
    }
}

/// Waits (at most 10 s) until `done` holds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The ending events (REQUEST_COMPLETE, ERROR) of each incoming path.
fn endings_by_path(events: &[Value]) -> HashMap<String, Vec<&Value>> {
    let mut endings: HashMap<String, Vec<&Value>> = HashMap::new();
    for event in events {
        if matches!(event["Event"].as_str(), Some("REQUEST_COMPLETE" | "ERROR")) {
            if let Some(path) = event["RequestInURL"].as_str() {
                endings.entry(path.to_owned()).or_default().push(event);
            }
        }
    }
    endings
}

/// Every request in `held` that its client saw answered ends in exactly one event with the
/// status the client got; returns how many were checked.
fn assert_answered_logged(events: &[Value], held: &[&Sent]) -> usize {
    assert_every_request_ends_once(events);
    let endings = endings_by_path(events);
    let mut checked = 0;
    for sent in held {
        let Ok(status) = sent.answer else { continue };
        let found = endings.get(&sent.path).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(
            found.len(),
            1,
            "{} (answered {status}) has {} endings: {found:?}",
            sent.path,
            found.len()
        );
        assert_eq!(found[0]["StatusCode"], status, "{}", found[0]);
        checked += 1;
    }
    checked
}

/// Waits until the observer logged an ending for every answered request of `sent`, then
/// stops it; its events and stderr.
fn finish(observer: Observer, sent: &[Sent]) -> (Vec<Value>, String) {
    let answered: HashSet<&str> = sent
        .iter()
        .filter(|s| s.answer.is_ok())
        .map(|s| s.path.as_str())
        .collect();
    observer.wait_for(Duration::from_secs(10), |events| {
        let endings = endings_by_path(events);
        answered.iter().all(|p| endings.contains_key(*p))
    });
    observer.stop()
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: signalling a process the test started.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn children(pid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| parent_of(*p) == Some(pid) && alive(*p))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn twenty_reloads_under_load_lose_no_request() {
    let setup = nginx("reloads", 2);
    let observer = Observer::attach(setup.gateway.master_pid(), &[]).expect("attaching");
    let load = SteadyLoad::start(setup.gateway.port, 2, Duration::from_millis(5));
    for _ in 0..20 {
        let before = load.answered();
        setup.gateway.reload().expect("reloading nginx");
        // The next reload once requests flow again.
        wait_until("answers after a reload", || load.answered() >= before + 10);
    }
    let sent = load.stop();
    let (events, stderr) = finish(observer, &sent);
    let held: Vec<&Sent> = sent.iter().collect();
    let checked = assert_answered_logged(&events, &held);
    assert!(checked >= 200, "only {checked} requests answered\n{stderr}");
    assert!(of(&events, "LOST").is_empty(), "{:?}", of(&events, "LOST"));
    eprintln!("20 reloads: {checked} answered requests, every one logged once");
}

#[test]
fn a_binary_upgrade_is_followed_to_the_new_master() {
    let setup = nginx("upgrade", 2);
    let old = setup.gateway.master_pid();
    let mut observer = Observer::attach(old, &[]).expect("attaching");
    let load = SteadyLoad::start(setup.gateway.port, 2, Duration::from_millis(5));
    // nginx's documented upgrade: USR2 starts the new binary as the old master's child (its pid
    // file moves to nginx.pid.oldbin), WINCH retires the old workers, QUIT ends the old master.
    signal(old, libc::SIGUSR2);
    let pid_file = setup.gateway.path("nginx.pid");
    wait_until("the new master", || {
        setup.gateway.path("nginx.pid.oldbin").exists()
            && fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .is_some_and(|p| p != old && !children(p).is_empty())
    });
    let new: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(parent_of(new), Some(old));
    signal(old, libc::SIGWINCH);
    wait_until("the old workers to leave", || children(old) == vec![new]);
    signal(old, libc::SIGQUIT);
    wait_until("the old master to leave", || !alive(old));
    let line = observer
        .wait_for_stderr("following PID", Duration::from_secs(10))
        .expect("the observer follows the new master");
    assert!(line.contains(&format!("following PID {new}")), "{line}");
    let workers = children(new);
    let mut after = Vec::new();
    for number in 0..50 {
        let path = format!("/after-upgrade/{number}");
        assert_eq!(request(setup.gateway.port, &path), Ok(200));
        after.push(path);
    }
    let sent = load.stop();
    let (events, stderr) = finish(observer, &sent);
    let held: Vec<&Sent> = sent.iter().collect();
    let checked = assert_answered_logged(&events, &held);
    let endings = endings_by_path(&events);
    for path in &after {
        let found = endings
            .get(path)
            .unwrap_or_else(|| panic!("{path} not logged\n{stderr}"));
        assert_eq!(found.len(), 1);
        let pid = found[0]["GatewayPID"].as_u64().expect("GatewayPID") as u32;
        assert!(
            workers.contains(&pid),
            "{path} served by {pid}, not by {workers:?}"
        );
    }
    assert!(of(&events, "LOST").is_empty(), "{:?}", of(&events, "LOST"));
    eprintln!(
        "binary upgrade: {checked} answered under load and 50 after, all logged; new workers {workers:?}"
    );
}

#[test]
fn a_restart_is_followed_through_the_pid_file() {
    let mut setup = nginx("restart", 1);
    let pid_file = setup.gateway.path("nginx.pid");
    let first = setup.gateway.master_pid();
    let mut observer =
        Observer::attach_with(&["--pidfile", pid_file.to_str().expect("utf-8 path")], &[])
            .expect("attaching");
    let load = SteadyLoad::start(setup.gateway.port, 2, Duration::from_millis(5));
    wait_until("answers", || load.answered() >= 20);
    let stopping = Instant::now();
    setup.gateway.restart_nginx().expect("restarting nginx");
    let second = setup.gateway.master_pid();
    assert_ne!(first, second);
    let line = observer
        .wait_for_stderr("following PID", Duration::from_secs(10))
        .expect("the observer follows the restarted nginx");
    assert!(line.contains(&format!("following PID {second}")), "{line}");
    let followed = Instant::now();
    let before = load.answered();
    wait_until("answers after the restart", || {
        load.answered() >= before + 50
    });
    let sent = load.stop();
    let (events, stderr) = finish(observer, &sent);
    // Requests answered by the old master before it was stopped, and those sent once the
    // observer said it follows the new one; between the two, the new nginx may answer before
    // the observer attaches to it (README: Operating it).
    let held: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.ended < stopping || s.started > followed)
        .collect();
    let checked = assert_answered_logged(&events, &held);
    assert!(checked >= 70, "only {checked} requests held\n{stderr}");
    eprintln!("restart through the pid file: {checked} answered requests, every one logged once");
}

#[test]
fn a_worker_killed_is_replaced_and_its_successor_followed() {
    let setup = nginx("worker-killed", 2);
    let master = setup.gateway.master_pid();
    let observer = Observer::attach(master, &[]).expect("attaching");
    let load = SteadyLoad::start(setup.gateway.port, 2, Duration::from_millis(5));
    wait_until("answers", || load.answered() >= 20);
    let workers = children(master);
    signal(workers[0], libc::SIGKILL);
    wait_until("a new worker", || {
        let now = children(master);
        now.len() == workers.len() && !now.contains(&workers[0])
    });
    let before = load.answered();
    wait_until("answers after the respawn", || {
        load.answered() >= before + 50
    });
    let sent = load.stop();
    let (events, _) = finish(observer, &sent);
    // A request in the killed worker's hands when it died gets no answer (its client sees the
    // connection end) and ends in an ERROR; every answered one is logged.
    let held: Vec<&Sent> = sent.iter().collect();
    let checked = assert_answered_logged(&events, &held);
    eprintln!("worker killed: {checked} answered requests, every one logged once");
}

/// The `Event` and `RequestInURL` of each kv line of a file.
fn kv_events(path: &Path) -> Vec<(String, String)> {
    let field = |line: &str, name: &str| -> String {
        line.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_owned()
    };
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| (field(line, "Event"), field(line, "RequestInURL")))
        .collect()
}

#[test]
fn logrotate_under_load_loses_no_event_and_sighup_reopens_the_file() {
    let setup = nginx("logrotate", 2);
    let log = setup.gateway.path("logs/access-log.log");
    let mut command = Command::new(binary());
    command
        .args(["attach", "--pid", &setup.gateway.master_pid().to_string()])
        .arg("--output")
        .arg(&log);
    let observer = Attached::start(command, false).expect("attaching");
    // The repository's logrotate snippet, for this file, this user and this observer (no
    // systemd here to reload it).
    let snippet =
        fs::read_to_string(workspace_root().join("packaging/access-log.logrotate")).unwrap();
    let config = setup.gateway.path("logrotate.conf");
    let here = snippet
        .replace("/var/log/access-log/*.log", log.to_str().unwrap())
        .replace("create 0640 access-log adm", "create 0640 root root")
        .replace(
            "systemctl reload access-log.service",
            &format!("kill -HUP {}", observer.child.id()),
        );
    assert_ne!(here, snippet);
    fs::write(&config, here).unwrap();
    let load = SteadyLoad::start(setup.gateway.port, 2, Duration::from_millis(5));
    wait_until("answers", || load.answered() >= 100);
    let output = Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(setup.gateway.path("logrotate.state"))
        .arg(&config)
        .output()
        .expect("running logrotate (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "logrotate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rotated_at = Instant::now();
    let before = load.answered();
    wait_until("answers after the rotation", || {
        load.answered() >= before + 200
    });
    let sent = load.stop();
    thread::sleep(Duration::from_millis(500));
    observer.stop().expect("the observer ends cleanly");
    let rotated = kv_events(&setup.gateway.path("logs/access-log.log.1"));
    let current = kv_events(&log);
    assert!(!rotated.is_empty() && !current.is_empty());
    let ended_in = |events: &[(String, String)], path: &str| {
        events
            .iter()
            .filter(|(event, url)| event == "REQUEST_COMPLETE" && url == path)
            .count()
    };
    let mut late = 0;
    for sent in sent.iter().filter(|s| s.answer.is_ok()) {
        let (old, new) = (
            ended_in(&rotated, &sent.path),
            ended_in(&current, &sent.path),
        );
        assert_eq!(old + new, 1, "{} logged {old} + {new} times", sent.path);
        // The signal is handled within a tick of logrotate's postrotate.
        if sent.started > rotated_at + Duration::from_millis(200) {
            assert_eq!(new, 1, "{} went to the rotated file", sent.path);
            late += 1;
        }
    }
    assert!(late >= 50, "only {late} requests after the rotation");
    eprintln!(
        "logrotate: {} events in the rotated file, {} in the new one",
        rotated.len(),
        current.len()
    );
}

/// The ids of the BPF programs a process holds (its descriptors' fdinfo `prog_id:` lines).
fn program_ids(pid: u32) -> HashSet<u32> {
    fdinfo_ids(pid, "prog_id:")
}

/// The ids of every BPF program loaded on the host, as bpftool lists them.
fn loaded_programs() -> HashSet<u32> {
    let output = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("running bpftool (cargo xtask setup installs it)");
    assert!(output.status.success(), "bpftool prog show failed");
    let list: Vec<Value> = serde_json::from_slice(&output.stdout).expect("bpftool's JSON");
    list.iter()
        .filter_map(|p| p["id"].as_u64().map(|id| id as u32))
        .collect()
}

#[test]
fn the_observer_killed_under_load_leaves_no_program_attached() {
    let setup = nginx("observer-killed", 2);
    let observer = Observer::attach(setup.gateway.master_pid(), &[]).expect("attaching");
    let ours = program_ids(observer.pid());
    assert!(ours.len() >= 5, "the observer holds programs {ours:?}");
    assert!(ours.is_subset(&loaded_programs()));
    let load = SteadyLoad::start(setup.gateway.port, 2, Duration::from_millis(2));
    wait_until("answers", || load.answered() >= 50);
    signal(observer.pid(), libc::SIGKILL);
    // The kernel frees a program when its last reference goes.
    wait_until("the programs to be unloaded", || {
        loaded_programs().is_disjoint(&ours)
    });
    let before = load.answered();
    wait_until("answers after the kill", || load.answered() >= before + 50);
    let sent = load.stop();
    let failed: Vec<&Sent> = sent.iter().filter(|s| s.answer.is_err()).collect();
    assert!(failed.is_empty(), "the gateway failed requests: {failed:?}");
    drop(observer);
}

#[test]
fn the_gateway_stopped_without_a_pid_file_ends_the_run() {
    let mut setup = nginx("gateway-stopped", 1);
    let master = setup.gateway.master_pid();
    let mut command = Command::new(binary());
    command
        .args(["attach", "--pid", &master.to_string()])
        .stdout(std::process::Stdio::null());
    let observer = Attached::start(command, false).expect("attaching");
    assert_eq!(request(setup.gateway.port, "/before-stop"), Ok(200));
    setup.gateway.stop();
    // It ends by itself, with status 0, and says why.
    let stderr = observer.wait().expect("the observer ends with status 0");
    let stderr = stderr.join("\n");
    assert!(
        stderr.contains(&format!("the gateway (PID {master}) exited")),
        "{stderr}"
    );
    assert!(stderr.contains("summary: 1 INCOMING_REQUEST"), "{stderr}");
}

/// A `/proc/PID/status` field's value.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn after_attach_it_runs_as_another_user_with_two_capabilities() {
    let mut setup = nginx("least-privilege", 1);
    let pid_file = setup.gateway.path("nginx.pid");
    // Started with only the capabilities the systemd unit grants (root's others removed from
    // the bounding set), as the unit does.
    let unit = fs::read_to_string(workspace_root().join("packaging/access-log.service")).unwrap();
    let granted: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit's CapabilityBoundingSet")
        .split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("--bounding-set=-all,{}", granted.join(","));
    let mut observer = Observer::attach_through(
        &["setpriv", &bounding, "--inh-caps=-all"],
        &["--pidfile", pid_file.to_str().expect("utf-8 path")],
        &["--user", "nobody"],
    )
    .expect("attaching with the listed capabilities");
    // CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE, in every thread.
    let kept = format!("{:016x}", (1u64 << 2) | (1u64 << 19));
    let tasks: Vec<_> = fs::read_dir(format!("/proc/{}/task", observer.pid()))
        .unwrap()
        .flatten()
        .collect();
    for task in &tasks {
        let status = fs::read_to_string(task.path().join("status")).unwrap();
        for field in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(status_field(&status, field), kept, "{field} of {task:?}");
        }
        assert_eq!(status_field(&status, "CapAmb"), "0000000000000000");
        assert_eq!(status_field(&status, "NoNewPrivs"), "1");
        let uids: Vec<String> = status_field(&status, "Uid")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_eq!(uids, vec!["65534"; 4], "real, effective, saved and fs uid");
    }
    // It still does its work: a request, a restart followed, a request after it.
    assert_eq!(request(setup.gateway.port, "/as-nobody/before"), Ok(200));
    setup.gateway.restart_nginx().expect("restarting nginx");
    observer
        .wait_for_stderr("following PID", Duration::from_secs(10))
        .expect("the restarted gateway followed without privileges");
    assert_eq!(request(setup.gateway.port, "/as-nobody/after"), Ok(200));
    observer.wait_ended(2);
    let (events, stderr) = observer.stop();
    let endings = endings_by_path(&events);
    for path in ["/as-nobody/before", "/as-nobody/after"] {
        assert_eq!(endings.get(path).map(Vec::len), Some(1), "{path}\n{stderr}");
    }
    assert!(stderr.contains("now running as nobody with CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH only"));
    eprintln!(
        "{} threads, each with CapEff {kept} as uid 65534",
        tasks.len()
    );
}

/// A process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status_field(&status, "VmRSS")
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

/// Entries in the observer's kernel socket table.
fn followed_sockets(observer: u32) -> usize {
    map_entries(observer, "SOCKETS").len()
}

#[test]
fn a_soak_of_short_connections_leaves_the_state_where_it_was() {
    let setup = nginx("soak", 2);
    let observer = Observer::attach(setup.gateway.master_pid(), &[]).expect("attaching");
    let port = setup.gateway.port;
    // Four clients, each request on a connection of its own (closed after the answer).
    let round = |name: &str, each: usize| {
        thread::scope(|scope| {
            for client in 0..4 {
                scope.spawn(move || {
                    for number in 0..each {
                        let path = format!("/soak/{name}/{client}-{number}");
                        assert_eq!(request(port, &path), Ok(200), "{path}");
                    }
                });
            }
        });
    };
    // A first round warms every table and buffer up; the second is measured against it.
    round("warm", 500);
    observer.wait_ended(2000);
    let before = rss_kib(observer.pid());
    let started = Instant::now();
    round("measured", 4500);
    observer.wait_ended(20_000);
    let elapsed = started.elapsed();
    let after = rss_kib(observer.pid());
    let sockets = followed_sockets(observer.pid());
    let (events, stderr) = observer.stop();
    assert_every_request_ends_once(&events);
    assert_eq!(of(&events, "REQUEST_COMPLETE").len(), 20_000, "{stderr}");
    // 18,000 connections came and went (36,000 sockets with the backend's): the kernel's
    // table holds none of them once closed.
    assert!(sockets <= 16, "{sockets} sockets still followed");
    eprintln!(
        "soak: 18,000 short connections in {:.1} s; observer RSS {before} KiB before, {after} KiB \
         after; kernel socket table {sockets} entries after",
        elapsed.as_secs_f64()
    );
}

#[test]
fn sigterm_under_full_load_flushes_within_a_second_then_detaches() {
    let setup = nginx("sigterm-load", 2);
    let mut command = Command::new(binary());
    command
        .args(["attach", "--pid", &setup.gateway.master_pid().to_string()])
        .stdout(std::process::Stdio::null());
    let mut observer = Attached::start(command, false).expect("attaching");
    // wrk saturates the gateway (and the two cores) for longer than the test needs.
    let mut wrk = Command::new("wrk")
        .args(["-t", "2", "-c", "32", "-d", "20s"])
        .arg(format!("http://127.0.0.1:{}/load", setup.gateway.port))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("running wrk (cargo xtask setup installs it)");
    thread::sleep(Duration::from_secs(3));
    let asked = Instant::now();
    signal(observer.child.id(), libc::SIGTERM);
    // The drain loop yields to its signals under any load: the rest is drained (bounded),
    // the output flushed and the summary printed at once.
    observer
        .wait_for_line("summary: ", Duration::from_secs(10))
        .expect("a summary");
    let flushed = asked.elapsed();
    observer.wait().expect("the observer ends with status 0");
    let exited = asked.elapsed();
    let _ = wrk.kill();
    let _ = wrk.wait();
    assert!(
        flushed < Duration::from_secs(1),
        "flushed after {flushed:?}"
    );
    // The kernel detaches the probes one grace period after the other (README).
    assert!(exited < Duration::from_secs(10), "exited after {exited:?}");
    eprintln!(
        "SIGTERM under saturation: summary after {} ms, exit after {} ms",
        flushed.as_millis(),
        exited.as_millis()
    );
}

#[test]
fn on_a_terminal_a_status_line_is_rewritten_every_second() {
    let setup = nginx("status-line", 1);
    // `script` (util-linux) gives the observer a terminal for its stdout and stderr.
    let observed = format!(
        "{} attach --pid {} --format kv --duration 4",
        binary().display(),
        setup.gateway.master_pid()
    );
    let script = std::process::Command::new("script")
        .args(["-qfec", &observed, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running script");
    let port = setup.gateway.port;
    let client = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let _ = request(port, "/status-line");
            thread::sleep(Duration::from_millis(100));
        }
    });
    let output = script.wait_with_output().expect("script ends");
    client.join().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    let lines: Vec<&str> = text
        .split("\r\u{1b}[K")
        .skip(1)
        .filter(|part| part.starts_with("access-log: ") && part.contains(" requests in, "))
        .collect();
    assert!(lines.len() >= 2, "no status line rewritten in {text:?}");
    assert!(
        lines
            .iter()
            .any(|line| !line.starts_with("access-log: 0 requests in")),
        "{lines:?}"
    );
    eprintln!(
        "status line, last: {}",
        lines.last().unwrap().lines().next().unwrap()
    );
}

#[test]
fn sockets_closed_by_close_range_are_forgotten_by_the_sweep() {
    require_root();
    // A small server of our own that closes its accepted sockets with close_range(2), which
    // the probes do not follow (CPython's os.closerange calls it).
    let port = tests::free_port();
    let script = format!(
        "import os, socket, sys, time\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen(64)\n\
         print('ready', flush=True); sys.stdin.readline()\n\
         conns = [s.accept()[0] for _ in range(8)]\n\
         fds = sorted(c.detach() for c in conns)\n\
         os.closerange(fds[0], fds[-1] + 1)\n\
         print('closed', flush=True); time.sleep(120)\n"
    );
    let mut server = Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::{BufRead as _, Write as _};
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let observer = Observer::attach(server.id(), &[]).expect("attaching");
    let clients: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    server.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "closed");
    // Followed at accept; gone from the process without a close the probes saw.
    assert_eq!(followed_sockets(observer.pid()), 8);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(40);
    while followed_sockets(observer.pid()) > 0 {
        assert!(Instant::now() < deadline, "the sweep did not forget them");
        thread::sleep(Duration::from_millis(500));
    }
    let waited = started.elapsed();
    drop(clients);
    let (_, stderr) = observer.stop();
    let _ = server.kill();
    let _ = server.wait();
    assert!(stderr.contains("8 closed unseen"), "{stderr}");
    eprintln!(
        "close_range: 8 sockets forgotten by the sweep {:.1} s after they were closed",
        waited.as_secs_f64()
    );
}
