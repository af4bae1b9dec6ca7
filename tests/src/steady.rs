//! A steady load for the lifecycle tests: a few client threads, each sending one request per
//! fresh connection, paths unique (`/steady/T-N`), at a modest rate, until stopped. What each
//! request got back (a status, or the error that ended it) is the truth the observer's events
//! are held to.
use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

/// What one request got.
#[derive(Clone, Debug)]
pub struct Sent {
    pub path: String,
    /// The response's status, or why there was none.
    pub answer: Result<u16, String>,
    /// When its connection was opened, and when its answer (or failure) came.
    pub started: Instant,
    pub ended: Instant,
}

pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl SteadyLoad {
    /// `clients` threads against 127.0.0.1:`port`, each pausing `pause` between requests.
    pub fn start(port: u16, clients: usize, pause: Duration) -> SteadyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|client| {
                let (stop, sent) = (stop.clone(), sent.clone());
                thread::spawn(move || {
                    let mut number = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let path = format!("/steady/{client}-{number}");
                        number += 1;
                        let started = Instant::now();
                        let answer = request(port, &path);
                        let ended = Instant::now();
                        sent.lock().expect("lock").push(Sent {
                            path,
                            answer,
                            started,
                            ended,
                        });
                        thread::sleep(pause);
                    }
                })
            })
            .collect();
        SteadyLoad {
            stop,
            sent,
            threads,
        }
    }

    /// How many requests were answered so far.
    pub fn answered(&self) -> usize {
        let sent = self.sent.lock().expect("lock");
        sent.iter().filter(|s| s.answer.is_ok()).count()
    }

    /// Stops the clients; returns every request sent, in the order they ended.
    pub fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("client thread");
        }
        let sent = self.sent.lock().expect("lock");
        sent.clone()
    }
}

/// One GET on a fresh connection (closed after the answer); the status, or what went wrong.
pub fn request(port: u16, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    // One write: `write!` on the stream would send the formatted pieces in several.
    let head = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {:?}", text.get(..40)))
}
