//! The real observer, `target/release/access-log attach`, run against a gateway: waits for its
//! `attached:` line, collects its JSON events as they come, stops it with SIGTERM.
use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::workspace_root;

/// The observer binary: $ACCESS_LOG_BIN, or the release build in $CARGO_TARGET_DIR or in this
/// workspace's target directory.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ACCESS_LOG_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                workspace_root().join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("release/access-log");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --release` (cargo xtask test does)",
        path.display()
    );
    path
}

/// An access-log process (attach or record) whose stderr lines are collected as they come.
pub struct Attached {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    /// What it printed up to and including `attached:` (notes on TLS stacks, tracefs), and
    /// the lines read since by [`Attached::wait_for_line`].
    pub before: Vec<String>,
}

impl Attached {
    /// Starts `command` (stderr piped) and returns once it printed `attached:`; every stderr
    /// line is also echoed when `echo` is set.
    pub fn start(mut command: Command, echo: bool) -> Result<Attached, String> {
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {command:?}: {e}"))?;
        let (sender, lines) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{line}");
                }
                let _ = sender.send(line);
            }
        });
        let mut seen = Vec::new();
        loop {
            match lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.starts_with("attached:") => {
                    seen.push(line);
                    return Ok(Attached {
                        child,
                        lines,
                        before: seen,
                    });
                }
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("access-log did not attach: {}", seen.join("\n")));
                }
            }
        }
    }

    /// Waits (at most `timeout`) for a stderr line containing `text`, keeping every line it
    /// reads for [`Attached::wait`].
    pub fn wait_for_line(&mut self, text: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.before.push(line.clone());
            if line.contains(text) {
                return Some(line);
            }
        }
    }

    /// Stops it with SIGTERM; returns every stderr line it printed (notes, summary, ...).
    pub fn stop(self) -> Result<Vec<String>, String> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait()
    }

    /// Waits for it to end by itself (`--duration`); returns every stderr line it printed, or
    /// an error when it failed.
    pub fn wait(mut self) -> Result<Vec<String>, String> {
        let status = self.child.wait().map_err(|e| e.to_string())?;
        // The reader thread sends the last lines before the pipe closes.
        let mut lines = std::mem::take(&mut self.before);
        lines.extend(self.lines.iter());
        if !status.success() {
            return Err(format!(
                "access-log exited with {status}: {}",
                lines.join("\n")
            ));
        }
        Ok(lines)
    }
}

impl Drop for Attached {
    /// A process still running (an error path, a panicking test) gets SIGTERM and is waited
    /// for, so nothing is left attached.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// The observer attached with `--format json`, its events collected as they come. Dropping it
/// (a failing test) stops the process: [`Attached`]'s drop.
///
/// The events go to a file that a thread of the test reads as it grows, not through a pipe:
/// a test's reader starved by its own load (64 client threads on 2 cores) would otherwise
/// block the observer's writes, and the kernel's ring would fill behind it: the test, not the
/// observer, would lose records.
pub struct Observer {
    /// None once stopped.
    process: Option<Attached>,
    events: Arc<Mutex<Vec<Value>>>,
    reader: Option<thread::JoinHandle<()>>,
    /// Set once the process ended: the reader reads to the file's end, then stops.
    ended: Arc<AtomicBool>,
    file: PathBuf,
}

impl Drop for Observer {
    /// Stops the process (when a test failed before stopping it), ends the reader, removes
    /// the events file.
    fn drop(&mut self) {
        drop(self.process.take());
        self.ended.store(true, Ordering::Release);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Reads the JSON lines of `file` as they are appended, into `sink`, until `ended` is set and
/// the end of the file is reached. A line that is not JSON panics (the join fails the test).
fn follow_events(file: PathBuf, sink: Arc<Mutex<Vec<Value>>>, ended: Arc<AtomicBool>) {
    let opened = std::fs::File::open(&file)
        .unwrap_or_else(|e| panic!("opening the events file {}: {e}", file.display()));
    let mut reader = BufReader::new(opened);
    let mut line = String::new();
    loop {
        // Read after looking at the flag: what was written before the end is read.
        let last = ended.load(Ordering::Acquire);
        match reader.read_line(&mut line) {
            Ok(_) if line.ends_with('\n') => {
                let value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("observer printed a line that is not JSON ({e}): {line}")
                });
                sink.lock().expect("events lock").push(value);
                line.clear();
            }
            // At the end, a part of a line stays in `line` until the rest comes.
            Ok(_) if last => {
                assert!(line.is_empty(), "the observer's last line is cut: {line}");
                return;
            }
            Ok(_) => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("reading the events file: {e}"),
        }
    }
}

impl Observer {
    /// Attaches to `pid` with `--format json` and `extra` arguments; returns once every probe
    /// is attached.
    pub fn attach(pid: u32, extra: &[&str]) -> Result<Observer, String> {
        Observer::attach_with(&["--pid", &pid.to_string()], extra)
    }

    /// Attaches with `target` (`--pid N` or `--pidfile FILE`), `--format json` and `extra`.
    pub fn attach_with(target: &[&str], extra: &[&str]) -> Result<Observer, String> {
        Observer::attach_through(&[], target, extra)
    }

    /// As [`Observer::attach_with`], the observer started by `wrapper` (a program and its
    /// arguments, `setpriv ...`), when not empty.
    pub fn attach_through(
        wrapper: &[&str],
        target: &[&str],
        extra: &[&str],
    ) -> Result<Observer, String> {
        let mut command = match wrapper.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        static OBSERVERS: AtomicUsize = AtomicUsize::new(0);
        let file = std::env::temp_dir().join(format!(
            "access-log-test-events-{}-{}.json",
            std::process::id(),
            OBSERVERS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, b"").map_err(|e| format!("{}: {e}", file.display()))?;
        command
            .arg("attach")
            .args(target)
            .args(["--format", "json", "--output"])
            .arg(&file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let process = Attached::start(command, false).inspect_err(|_| {
            let _ = std::fs::remove_file(&file);
        })?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(AtomicBool::new(false));
        let reader = {
            let (file, sink, ended) = (file.clone(), events.clone(), ended.clone());
            thread::spawn(move || follow_events(file, sink, ended))
        };
        Ok(Observer {
            process: Some(process),
            events,
            reader: Some(reader),
            ended,
            file,
        })
    }

    /// The observer's process id.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("running").child.id()
    }

    /// Waits (at most `timeout`) for a stderr line containing `text`; the line, if it came.
    /// Lines read here are still returned by [`Observer::stop`].
    pub fn wait_for_stderr(&mut self, text: &str, timeout: Duration) -> Option<String> {
        self.process.as_mut()?.wait_for_line(text, timeout)
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().expect("events lock").clone()
    }

    /// Waits (at most `timeout`) until the events satisfy `done`; returns them either way.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events();
            if done(&events) || Instant::now() >= deadline {
                return events;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until at least `count` requests came in and each has its ending event.
    pub fn wait_ended(&self, count: usize) -> Vec<Value> {
        self.wait_for(Duration::from_secs(10), |events| {
            let incoming = of(events, "INCOMING_REQUEST");
            // One pass over the endings (tens of thousands of events in a soak).
            let ended: HashSet<&str> = events
                .iter()
                .filter(|e| e["Event"] != "INCOMING_REQUEST")
                .filter_map(|e| e["ResponseTo"].as_str())
                .collect();
            incoming.len() >= count
                && incoming
                    .iter()
                    .all(|i| i["MessageID"].as_str().is_some_and(|id| ended.contains(id)))
        })
    }

    /// Stops the observer with SIGTERM; returns every event and its stderr (with the summary).
    pub fn stop(mut self) -> (Vec<Value>, String) {
        let process = self.process.take().expect("stopped once");
        let stopped = process.stop();
        self.ended.store(true, Ordering::Release);
        let stderr = stopped.unwrap_or_else(|e| panic!("{e}"));
        if let Some(reader) = self.reader.take() {
            // A line that was not JSON fails the test here.
            if let Err(panic) = reader.join() {
                std::panic::resume_unwind(panic);
            }
        }
        (self.events(), stderr.join("\n"))
    }
}

/// Events of one kind.
pub fn of<'e>(events: &'e [Value], kind: &str) -> Vec<&'e Value> {
    events
        .iter()
        .filter(|e| e["Event"].as_str() == Some(kind))
        .collect()
}

/// The event that ends the request of an INCOMING_REQUEST (REQUEST_COMPLETE or ERROR).
pub fn ending<'e>(events: &'e [Value], incoming: &Value) -> Option<&'e Value> {
    events
        .iter()
        .find(|e| e["ResponseTo"] == incoming["MessageID"] && e["Event"] != "INCOMING_REQUEST")
}

/// Every INCOMING_REQUEST ends in exactly one ending event or is named in a LOST event, and
/// every ending answers an announced request.
pub fn assert_every_request_ends_once(events: &[Value]) {
    let mut ends: HashMap<String, usize> = HashMap::new();
    for event in events {
        match event["Event"].as_str() {
            Some("REQUEST_COMPLETE" | "ERROR") => {
                if let Some(to) = event["ResponseTo"].as_str() {
                    *ends.entry(to.to_owned()).or_default() += 1;
                }
            }
            Some("LOST") => {
                for id in event["RequestIDs"].as_str().unwrap_or("").split(',') {
                    if !id.is_empty() {
                        *ends.entry(id.to_owned()).or_default() += 1;
                    }
                }
            }
            _ => {}
        }
    }
    let incoming = of(events, "INCOMING_REQUEST");
    for request in &incoming {
        let id = request["MessageID"].as_str().unwrap();
        assert_eq!(
            ends.get(id),
            Some(&1),
            "{request} ends {:?} times",
            ends.get(id)
        );
    }
    assert_eq!(
        ends.len(),
        incoming.len(),
        "endings for requests never announced"
    );
}

/// The values of one `fdinfo` field (`prog_id:`, `map_id:`) over a process's descriptors.
pub fn fdinfo_ids(pid: u32, field: &str) -> std::collections::HashSet<u32> {
    let mut ids = std::collections::HashSet::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(id) = line.strip_prefix(field) {
                ids.extend(id.trim().parse::<u32>());
            }
        }
    }
    ids
}

/// The entries of the observer's kernel map `name` (found through its own descriptors), as
/// `bpftool map dump` prints them.
pub fn map_entries(observer: u32, name: &str) -> Vec<Value> {
    for id in fdinfo_ids(observer, "map_id:") {
        let show = Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id.to_string()])
            .output()
            .expect("running bpftool (cargo xtask setup installs it)");
        let info: Value = serde_json::from_slice(&show.stdout).unwrap_or_default();
        if info["name"] == name {
            let dump = Command::new("bpftool")
                .args(["-j", "map", "dump", "id", &id.to_string()])
                .output()
                .expect("running bpftool");
            return serde_json::from_slice(&dump.stdout).unwrap_or_default();
        }
    }
    panic!("the observer holds no map {name}");
}
