//! A concurrent HTTP/1.1 client for the accuracy run: many connections at once, each sending
//! its share of a request list, kept alive or one connection per request. Bounded: every
//! request is sent once, every read has a timeout.
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

#[derive(Clone, Debug)]
pub struct Request {
    pub method: &'static str,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    fn encode(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: gateway\r\nUser-Agent: access-log-accuracy/1\r\n",
            self.method, self.target
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if !keep_alive {
            out.push_str("Connection: close\r\n");
        }
        if let Some(body) = &self.body {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if let Some(body) = &self.body {
            bytes.extend_from_slice(body);
        }
        bytes
    }
}

/// The status each request got, by index, or why the client got none.
pub fn run(
    gateway: SocketAddr,
    requests: &[Request],
    connections: usize,
    keep_alive: impl Fn(usize) -> bool + Sync,
) -> Vec<Result<u16, String>> {
    let next = AtomicUsize::new(0);
    let results = Arc::new(Mutex::new(vec![Err("not sent".to_owned()); requests.len()]));
    thread::scope(|scope| {
        for worker in 0..connections {
            let next = &next;
            let results = results.clone();
            let keep = keep_alive(worker);
            scope.spawn(move || {
                let mut connection: Option<BufReader<TcpStream>> = None;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(request) = requests.get(index) else {
                        break;
                    };
                    let reused = connection.is_some();
                    let mut status = send(&mut connection, gateway, request, keep);
                    // A server may close an idle kept-alive connection just as a request
                    // goes out; like every HTTP client, retry once on a new connection when
                    // nothing came back.
                    if reused
                        && status
                            .as_ref()
                            .is_err_and(|e| e.kind() == io::ErrorKind::UnexpectedEof)
                    {
                        connection = None;
                        status = send(&mut connection, gateway, request, keep);
                    }
                    if status.is_err() || !keep {
                        connection = None;
                    }
                    results.lock().expect("results lock")[index] =
                        status.map_err(|e| e.to_string());
                }
            });
        }
    });
    let results = results.lock().expect("results lock").clone();
    results
}

fn send(
    connection: &mut Option<BufReader<TcpStream>>,
    gateway: SocketAddr,
    request: &Request,
    keep_alive: bool,
) -> io::Result<u16> {
    if connection.is_none() {
        let stream = TcpStream::connect(gateway)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        *connection = Some(BufReader::new(stream));
    }
    let reader = connection.as_mut().expect("connected above");
    reader.get_mut().write_all(&request.encode(keep_alive))?;
    let (status, length, chunked, close) = read_response_head(reader)?;
    if chunked {
        crate::wire::skip_chunked(reader)?;
    } else if let Some(length) = length {
        io::copy(&mut reader.by_ref().take(length), &mut io::sink())?;
    } else {
        io::copy(reader, &mut io::sink())?;
    }
    if close {
        *connection = None;
    }
    Ok(status)
}

fn read_response_head(
    reader: &mut BufReader<TcpStream>,
) -> io::Result<(u16, Option<u64>, bool, bool)> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before the status line",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed in head",
            ));
        }
        let trimmed = line.trim();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            let value = value.trim().to_ascii_lowercase();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().ok(),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => close = value == "close",
                _ => {}
            }
        }
    }
    Ok((status, length, chunked, close))
}
