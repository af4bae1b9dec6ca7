//! A real HTTP/1.1 backend on loopback for the end-to-end tests and the accuracy run: a TCP
//! server, one thread per connection, keep-alive as HTTP/1.1 says. Each request chooses its
//! answer with headers the gateway forwards: `x-want-status` (default 200) and
//! `x-want-delay-ms` (default 0), so a test can make backends slow, failing and out of order;
//! `x-want-close` makes it close the connection instead of answering; `x-want-bytes: N`
//! answers N bytes of body, chunked (with a trailer) when `x-want-chunked` is present.
//!
//! Every answer to a request with an `x-token: N` header is recorded (token, status, the
//! backend's port): what the accuracy run takes as truth, from outside the observer.
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

/// One answer the backend gave to a request that carried a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    pub token: u64,
    pub status: u16,
    /// The backend's own port (0 for a unix-socket backend).
    pub port: u16,
}

pub struct Backend {
    pub addr: SocketAddr,
    /// For a unix-socket backend, its path (`addr` is then unused).
    pub unix: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<Served>>>,
}

/// A connection the backend serves: TCP or unix.
trait Connection: Read + Write + Send + Sized + 'static {
    fn split(&self) -> io::Result<Self>;
}

impl Connection for TcpStream {
    fn split(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

impl Connection for UnixStream {
    fn split(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

/// Serves every connection `incoming` yields on a thread of its own, until `stop` is set;
/// answers are recorded in `served` with `port`.
fn accept_loop<S: Connection>(
    incoming: impl Iterator<Item = io::Result<S>> + Send + 'static,
    port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<Served>>>,
) {
    thread::spawn(move || {
        for stream in incoming {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Ok(stream) = stream {
                let log = served.clone();
                thread::spawn(move || {
                    let _ = serve(stream, port, &log);
                });
            }
        }
    });
}

impl Backend {
    /// Starts a backend on a free loopback port.
    pub fn start() -> io::Result<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let incoming = std::iter::from_fn(move || Some(listener.accept().map(|(s, _)| s)));
        accept_loop(incoming, addr.port(), stop.clone(), served.clone());
        Ok(Backend {
            addr,
            unix: None,
            stop,
            served,
        })
    }

    /// Starts a backend listening on a unix socket at `path` (replaced if it exists).
    pub fn start_unix(path: &Path) -> io::Result<Backend> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let incoming = std::iter::from_fn(move || Some(listener.accept().map(|(s, _)| s)));
        accept_loop(incoming, 0, stop.clone(), served.clone());
        Ok(Backend {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            unix: Some(path.to_owned()),
            stop,
            served,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The answers given so far to requests that carried a token.
    pub fn served(&self) -> Vec<Served> {
        self.served.lock().expect("served lock").clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        match &self.unix {
            Some(path) => {
                let _ = UnixStream::connect(path);
                let _ = std::fs::remove_file(path);
            }
            None => {
                let _ = TcpStream::connect(self.addr);
            }
        }
    }
}

struct Head {
    keep_alive: bool,
    content_length: usize,
    chunked: bool,
    status: u16,
    delay_ms: u64,
    close_instead: bool,
    body_bytes: Option<usize>,
    chunked_answer: bool,
    path: String,
    token: Option<u64>,
}

fn read_head(reader: &mut BufReader<impl Read>) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let read = reader.read_until(b'\n', &mut raw)?;
        if read == 0 {
            return Ok(None);
        }
        if raw[before..] == *b"\r\n" || raw[before..] == *b"\n" {
            if before == 0 {
                raw.clear();
                continue;
            }
            break;
        }
        if raw.len() > 64 * 1024 {
            return Err(io::Error::other("request head too large"));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    request
        .parse(&raw)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let value = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let http11 = request.version == Some(1);
    let connection = value("connection").unwrap_or_default();
    Ok(Some(Head {
        keep_alive: if http11 {
            connection != "close"
        } else {
            connection == "keep-alive"
        },
        content_length: value("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        chunked: value("transfer-encoding").is_some_and(|v| v.contains("chunked")),
        status: value("x-want-status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(200),
        delay_ms: value("x-want-delay-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        close_instead: value("x-want-close").is_some(),
        body_bytes: value("x-want-bytes").and_then(|v| v.parse().ok()),
        chunked_answer: value("x-want-chunked").is_some(),
        path: request.path.unwrap_or("/").to_owned(),
        token: value("x-token").and_then(|v| v.parse().ok()),
    }))
}

fn serve(stream: impl Connection, port: u16, served: &Mutex<Vec<Served>>) -> io::Result<()> {
    let mut writer = stream.split()?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader)? {
        if head.chunked {
            crate::wire::skip_chunked(&mut reader)?;
        } else {
            io::copy(
                &mut reader.by_ref().take(head.content_length as u64),
                &mut io::sink(),
            )?;
        }
        if head.delay_ms > 0 {
            thread::sleep(Duration::from_millis(head.delay_ms));
        }
        if head.close_instead {
            break;
        }
        if let Some(size) = head.body_bytes {
            write_large(&mut writer, size, head.chunked_answer, head.keep_alive)?;
            if !head.keep_alive {
                break;
            }
            continue;
        }
        let body = if head.status == 204 || head.status == 304 {
            String::new()
        } else {
            format!("{{\"path\":{:?},\"status\":{}}}\n", head.path, head.status)
        };
        let response = format!(
            "HTTP/1.1 {} Test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{}",
            head.status,
            body.len(),
            if head.keep_alive {
                ""
            } else {
                "Connection: close\r\n"
            },
            body
        );
        writer.write_all(response.as_bytes())?;
        if let Some(token) = head.token {
            served.lock().expect("served lock").push(Served {
                token,
                status: head.status,
                port,
            });
        }
        if !head.keep_alive {
            break;
        }
    }
    Ok(())
}

/// A 200 with `size` bytes of body, in 16 KiB pieces: plain with Content-Length, or chunked
/// with a trailer.
fn write_large(
    writer: &mut impl Write,
    size: usize,
    chunked: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n".to_owned()
    } else {
        format!("Content-Length: {size}\r\n")
    };
    let connection = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    write!(
        writer,
        "HTTP/1.1 200 Test\r\nContent-Type: application/octet-stream\r\n{framing}{connection}\r\n"
    )?;
    let piece = [b'r'; 16 * 1024];
    let mut left = size;
    while left > 0 {
        let take = left.min(piece.len());
        if chunked {
            write!(writer, "{take:x}\r\n")?;
        }
        writer.write_all(&piece[..take])?;
        if chunked {
            writer.write_all(b"\r\n")?;
        }
        left -= take;
    }
    if chunked {
        writer.write_all(b"0\r\nX-Checksum: none\r\n\r\n")?;
    }
    writer.flush()
}
