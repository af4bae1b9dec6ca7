//! A concurrent HTTP/1.1 client for the accuracy run: many connections at once, each sending
//! its share of a request list, kept alive or one connection per request. Bounded: every
//! request is sent once, every read has a timeout.
//!
//! Every connection comes from a loopback address of its own (127.1.0.1, 127.1.0.2, ...), so
//! the client's address and the request's place on its connection name each request in the
//! observer's events even when every request has the same method, URL and body.
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicU32, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use socket2::{Domain, Socket, Type};

/// What became of one request: the status the client got, and where it came from.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub status: Result<u16, String>,
    /// The client address of the connection it went out on.
    pub source: Option<IpAddr>,
    /// Its place among the requests sent from that address (0 first).
    pub sequence: usize,
}

/// A loopback address no other connection of this process used.
fn fresh_source() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    IpAddr::V4(Ipv4Addr::new(
        127,
        (1 + n / 62_500 % 200) as u8,
        (n / 250 % 250 + 1) as u8,
        (n % 250 + 1) as u8,
    ))
}

fn connect_from(source: IpAddr, gateway: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect(&gateway.into())?;
    Ok(socket.into())
}

/// One client connection and the address it comes from.
struct Client {
    reader: BufReader<TcpStream>,
    source: IpAddr,
    sent: usize,
}

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

/// What became of each request, by index.
pub fn run(
    gateway: SocketAddr,
    requests: &[Request],
    connections: usize,
    keep_alive: impl Fn(usize) -> bool + Sync,
) -> Vec<Delivery> {
    let next = AtomicUsize::new(0);
    let unsent = Delivery {
        status: Err("not sent".to_owned()),
        source: None,
        sequence: 0,
    };
    let results = Arc::new(Mutex::new(vec![unsent; requests.len()]));
    thread::scope(|scope| {
        for worker in 0..connections {
            let next = &next;
            let results = results.clone();
            let keep = keep_alive(worker);
            scope.spawn(move || {
                let mut connection: Option<Client> = None;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(request) = requests.get(index) else {
                        break;
                    };
                    let reused = connection.is_some();
                    let mut delivery = send(&mut connection, gateway, request, keep);
                    // A server may close an idle kept-alive connection just as a request
                    // goes out; like every HTTP client, retry once on a new connection (from
                    // a new address) when nothing came back.
                    if reused
                        && delivery
                            .status
                            .as_ref()
                            .is_err_and(|e| e.contains("closed before the status line"))
                    {
                        connection = None;
                        delivery = send(&mut connection, gateway, request, keep);
                    }
                    if delivery.status.is_err() || !keep {
                        connection = None;
                    }
                    results.lock().expect("results lock")[index] = delivery;
                }
            });
        }
    });
    let results = results.lock().expect("results lock").clone();
    results
}

fn send(
    connection: &mut Option<Client>,
    gateway: SocketAddr,
    request: &Request,
    keep_alive: bool,
) -> Delivery {
    if connection.is_none() {
        let source = fresh_source();
        match connect_from(source, gateway).and_then(|stream| {
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.set_nodelay(true)?;
            Ok(stream)
        }) {
            Ok(stream) => {
                *connection = Some(Client {
                    reader: BufReader::new(stream),
                    source,
                    sent: 0,
                })
            }
            Err(error) => {
                return Delivery {
                    status: Err(error.to_string()),
                    source: None,
                    sequence: 0,
                }
            }
        }
    }
    let client = connection.as_mut().expect("connected above");
    let source = client.source;
    let sequence = client.sent;
    client.sent += 1;
    let status = match exchange(&mut client.reader, request, keep_alive) {
        Ok((status, closes)) => {
            if closes {
                *connection = None;
            }
            Ok(status)
        }
        Err(error) => Err(error.to_string()),
    };
    Delivery {
        status,
        source: Some(source),
        sequence,
    }
}

/// Sends one request and reads its answer: (status, whether the server closes).
fn exchange(
    reader: &mut BufReader<TcpStream>,
    request: &Request,
    keep_alive: bool,
) -> io::Result<(u16, bool)> {
    reader.get_mut().write_all(&request.encode(keep_alive))?;
    let (status, length, chunked, close) = read_response_head(reader)?;
    if chunked {
        crate::wire::skip_chunked(reader)?;
    } else if let Some(length) = length {
        io::copy(&mut reader.by_ref().take(length), &mut io::sink())?;
    } else {
        io::copy(reader, &mut io::sink())?;
    }
    Ok((status, close))
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

/// What became of each request sent over HTTP/2 (cleartext, prior knowledge): `requests`
/// dealt round-robin to `connections` connections, each from a loopback address of its own,
/// carrying up to `in_flight` streams at once (tests/clients/h2_streams.py, one process per
/// connection). A request's place on its connection is the order its stream was opened.
pub fn run_http2(
    gateway: SocketAddr,
    requests: &[Request],
    connections: usize,
    in_flight: usize,
) -> Vec<Delivery> {
    let script = crate::workspace_root().join("tests/clients/h2_streams.py");
    let mut clients = Vec::new();
    for connection in 0..connections {
        let indexes: Vec<usize> = (connection..requests.len()).step_by(connections).collect();
        let spec: Vec<serde_json::Value> = indexes
            .iter()
            .map(|&index| {
                let request = &requests[index];
                let headers: serde_json::Map<String, serde_json::Value> = request
                    .headers
                    .iter()
                    .map(|(name, value)| (name.to_ascii_lowercase(), value.clone().into()))
                    .collect();
                serde_json::json!({"path": request.target, "method": request.method, "headers": headers})
            })
            .collect();
        let source = fresh_source();
        let child = std::process::Command::new("/usr/bin/python3")
            .arg(&script)
            .args([gateway.ip().to_string(), gateway.port().to_string()])
            .args(["clear", "-", "--source", &source.to_string()])
            .args(["--in-flight", &in_flight.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            continue;
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(serde_json::Value::from(spec).to_string().as_bytes());
        }
        clients.push((child, source, indexes));
    }
    let mut results = vec![
        Delivery {
            status: Err("not sent".to_owned()),
            source: None,
            sequence: 0,
        };
        requests.len()
    ];
    for (child, source, indexes) in clients {
        let Ok(output) = child.wait_with_output() else {
            continue;
        };
        let lines = String::from_utf8_lossy(&output.stdout).into_owned();
        for (sequence, (line, index)) in lines.lines().zip(indexes).enumerate() {
            let status = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|answer| answer["status"].as_u64())
                .map(|status| status as u16)
                .ok_or_else(|| format!("no answer on its stream: {line}"));
            results[index] = Delivery {
                status,
                source: Some(source),
                sequence,
            };
        }
    }
    results
}
