//! The real observer, `target/release/access-log attach`, run against a gateway: waits for its
//! `attached:` line, collects its JSON events as they come, stops it with SIGTERM.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::workspace_root;

/// The observer binary: $ACCESS_LOG_BIN, or the release build in this workspace.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ACCESS_LOG_BIN") {
        return PathBuf::from(path);
    }
    let path = workspace_root().join("target/release/access-log");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --release` (cargo xtask test does)",
        path.display()
    );
    path
}

pub struct Observer {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Observer {
    /// Attaches to `pid` with `--format json` and `extra` arguments; returns once every probe
    /// is attached.
    pub fn attach(pid: u32, extra: &[&str]) -> Result<Observer, String> {
        let mut child = Command::new(binary())
            .args(["attach", "--pid", &pid.to_string(), "--format", "json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the observer: {e}"))?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped");
        let sink = events.clone();
        let out_reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("observer printed a line that is not JSON ({e}): {line}")
                });
                sink.lock().expect("events lock").push(value);
            }
        });
        let (attached_tx, attached_rx) = mpsc::channel();
        let lines = stderr.clone();
        let err = child.stderr.take().expect("piped");
        let err_reader = thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.starts_with("attached:") {
                    let _ = attached_tx.send(());
                }
                lines.lock().expect("stderr lock").push(line);
            }
        });
        let mut observer = Observer {
            child,
            events,
            stderr,
            readers: vec![out_reader, err_reader],
        };
        if attached_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = observer.child.kill();
            let _ = observer.child.wait();
            return Err(format!(
                "the observer did not attach: {}",
                observer.stderr_text()
            ));
        }
        Ok(observer)
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr lock").join("\n")
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
            incoming.len() >= count && incoming.iter().all(|i| ending(events, i).is_some())
        })
    }

    /// Stops the observer with SIGTERM; returns every event and its stderr (with the summary).
    pub fn stop(mut self) -> (Vec<Value>, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let stderr = self.stderr_text();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "the observer exited with {status:?}: {stderr}"
        );
        (self.events(), stderr)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
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
