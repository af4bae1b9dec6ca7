//! Events to a syslog receiver (rsyslog, syslog-ng, a log engine's collector): each event one
//! RFC 5424 message whose MSG is the event's kv line, over UDP, TCP (RFC 6587 octet counting)
//! or a unix socket. Capture never waits for the receiver: the pipeline hands messages to a
//! bounded queue, a sender thread writes them, a full queue drops (counted), and a lost
//! connection is made again with a growing pause.
use std::{
    io::{self, Write},
    net::{TcpStream, UdpSocket},
    os::unix::net::{UnixDatagram, UnixStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use chrono::{DateTime, SecondsFormat, Utc};

use super::{kv, Sink};
use crate::event::{Event, EventKind};

/// Messages waiting for the sender thread before new ones are dropped.
const QUEUE: usize = 65536;
/// The longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the end of a run waits for queued messages to go out.
const LAST_SEND: Duration = Duration::from_secs(2);
/// RFC 5424 facility local0: the one sites give their own applications.
const FACILITY: u8 = 16;

#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error("--syslog {0:?} is not udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH")]
    Url(String),
}

/// Where the receiver listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Receiver5424 {
    Udp(String),
    Tcp(String),
    Unix(PathBuf),
}

impl Receiver5424 {
    pub fn parse(url: &str) -> Result<Receiver5424, SyslogError> {
        let bad = || SyslogError::Url(url.to_owned());
        if let Some(path) = url.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad());
            }
            return Ok(Receiver5424::Unix(PathBuf::from(path)));
        }
        let (scheme, address) = url.split_once("://").ok_or_else(bad)?;
        // HOST:PORT with a port: a name or address, IPv6 in brackets.
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad());
        }
        match scheme {
            "udp" => Ok(Receiver5424::Udp(address.to_owned())),
            "tcp" => Ok(Receiver5424::Tcp(address.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// What the sender did, read by the summary.
#[derive(Debug, Default)]
pub struct SyslogStats {
    /// Messages written to the receiver (a datagram refused later is not known).
    pub sent: AtomicU64,
    /// Dropped because the queue was full (the receiver slow or away).
    pub dropped_queue_full: AtomicU64,
    /// Dropped because sending failed (the receiver refused or went away).
    pub dropped_send_failed: AtomicU64,
    pub connects: AtomicU64,
}

pub struct SyslogSink {
    queue: Option<SyncSender<Vec<u8>>>,
    stats: Arc<SyslogStats>,
    done: Receiver<()>,
    header_tail: String,
    line: String,
}

impl SyslogStats {
    /// The summary's account.
    pub fn summary(&self) -> String {
        format!(
            "syslog: {} sent, {} dropped (queue full), {} dropped (send failed), {} connections",
            self.sent.load(Ordering::Relaxed),
            self.dropped_queue_full.load(Ordering::Relaxed),
            self.dropped_send_failed.load(Ordering::Relaxed),
            self.connects.load(Ordering::Relaxed)
        )
    }
}

impl SyslogSink {
    /// Starts the sender thread; nothing is connected until the first message.
    pub fn start(receiver: Receiver5424) -> SyslogSink {
        let (queue, messages) = mpsc::sync_channel(QUEUE);
        let (finished, done) = mpsc::channel();
        let stats = Arc::new(SyslogStats::default());
        let shared = stats.clone();
        thread::Builder::new()
            .name("syslog".into())
            .spawn(move || {
                Sender::new(receiver, shared).run(messages);
                let _ = finished.send(());
            })
            .expect("spawning the syslog sender thread");
        let hostname = hostname();
        SyslogSink {
            queue: Some(queue),
            stats,
            done,
            header_tail: format!(" {hostname} access-log {} ", std::process::id()),
            line: String::with_capacity(1024),
        }
    }

    pub fn stats(&self) -> Arc<SyslogStats> {
        self.stats.clone()
    }

    /// One RFC 5424 message: `<PRI>1 TIMESTAMP HOST APP PROCID MSGID - MSG`.
    fn message(&mut self, event: &Event) -> Vec<u8> {
        let severity = match event.kind {
            EventKind::IncomingRequest | EventKind::RequestComplete => 6,
            EventKind::Error | EventKind::Lost => 4,
        };
        self.line.clear();
        kv::line(event, &mut self.line);
        let seconds = event.unix_nanos.div_euclid(1_000_000_000) as i64;
        let nanos = event.unix_nanos.rem_euclid(1_000_000_000) as u32;
        let time = DateTime::<Utc>::from_timestamp(seconds, nanos)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Micros, true);
        format!(
            "<{}>1 {time}{}{} - {}",
            FACILITY * 8 + severity,
            self.header_tail,
            event.kind.as_str(),
            self.line
        )
        .into_bytes()
    }
}

impl Sink for SyslogSink {
    fn write_event(&mut self, event: &Event) -> io::Result<()> {
        let message = self.message(event);
        if let Some(queue) = &self.queue {
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                queue.try_send(message)
            {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The sender thread writes as messages come: nothing waits here.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogSink {
    /// The end of the run: what is queued goes out, for a bounded time.
    fn drop(&mut self) {
        self.queue = None;
        let _ = self.done.recv_timeout(LAST_SEND);
    }
}

fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer and its length are ours; gethostname NUL-terminates within it.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let name = if ok {
        let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    } else {
        String::new()
    };
    // RFC 5424 HOSTNAME: printable ASCII without spaces, or the nil value.
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        "-".to_owned()
    } else {
        name
    }
}

enum Connection {
    Udp(UdpSocket),
    Tcp(TcpStream),
    UnixDatagram(UnixDatagram),
    UnixStream(UnixStream),
}

struct Sender {
    receiver: Receiver5424,
    stats: Arc<SyslogStats>,
    connection: Option<Connection>,
    backoff: Duration,
    next_attempt: Instant,
    framed: Vec<u8>,
}

impl Sender {
    fn new(receiver: Receiver5424, stats: Arc<SyslogStats>) -> Sender {
        Sender {
            receiver,
            stats,
            connection: None,
            backoff: Duration::from_millis(100),
            next_attempt: Instant::now(),
            framed: Vec::new(),
        }
    }

    /// Sends until the sink is dropped and the queue is empty.
    fn run(mut self, messages: Receiver<Vec<u8>>) {
        let mut batch: Vec<Vec<u8>> = Vec::new();
        loop {
            if batch.is_empty() {
                match messages.recv_timeout(Duration::from_millis(200)) {
                    Ok(message) => batch.push(message),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while batch.len() < 256 {
                match messages.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            if self.send(&batch) {
                self.stats
                    .sent
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
            } else {
                // Kept for the next connection; the queue behind it fills and drops.
                let pause = self.next_attempt.saturating_duration_since(Instant::now());
                match messages.recv_timeout(pause.max(Duration::from_millis(10))) {
                    Ok(message) => {
                        if batch.len() < QUEUE {
                            batch.push(message);
                        } else {
                            self.stats
                                .dropped_queue_full
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        // The run ends with the receiver away: one last try, then count.
                        if !self.send(&batch) {
                            self.stats
                                .dropped_send_failed
                                .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        }
                        return;
                    }
                }
            }
        }
    }

    /// Sends every message of `batch`; false when there is no connection to send on (the
    /// batch is then kept). A datagram the receiver refuses is counted and not retried.
    fn send(&mut self, batch: &[Vec<u8>]) -> bool {
        if !self.connected() {
            return false;
        }
        let result = match self.connection.as_mut() {
            Some(Connection::Tcp(stream)) => write_framed(stream, batch, &mut self.framed),
            Some(Connection::UnixStream(stream)) => write_framed(stream, batch, &mut self.framed),
            Some(Connection::Udp(socket)) => {
                send_datagrams(&self.stats, batch, |message| socket.send(message));
                Ok(())
            }
            Some(Connection::UnixDatagram(socket)) => {
                send_datagrams(&self.stats, batch, |message| socket.send(message));
                Ok(())
            }
            None => return false,
        };
        if result.is_err() {
            self.disconnect();
            return false;
        }
        true
    }

    fn disconnect(&mut self) {
        self.connection = None;
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// A connection that is still up (a stream the receiver has not closed), or a new one when
    /// the pause after the last failure is over.
    fn connected(&mut self) -> bool {
        if let Some(Connection::Tcp(stream)) = &self.connection {
            if peer_closed(stream) {
                self.disconnect();
            }
        }
        if self.connection.is_some() {
            return true;
        }
        if Instant::now() < self.next_attempt {
            return false;
        }
        match self.connect() {
            Ok(connection) => {
                self.connection = Some(connection);
                self.backoff = Duration::from_millis(100);
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.disconnect();
                false
            }
        }
    }

    fn connect(&self) -> io::Result<Connection> {
        Ok(match &self.receiver {
            Receiver5424::Udp(address) => {
                let socket = UdpSocket::bind(if address.starts_with('[') {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                })?;
                socket.connect(address.as_str())?;
                Connection::Udp(socket)
            }
            Receiver5424::Tcp(address) => {
                let stream = TcpStream::connect(address.as_str())?;
                stream.set_nodelay(true)?;
                stream.set_write_timeout(Some(Duration::from_secs(1)))?;
                Connection::Tcp(stream)
            }
            Receiver5424::Unix(path) => {
                let socket = UnixDatagram::unbound()?;
                match socket.connect(path) {
                    Ok(()) => Connection::UnixDatagram(socket),
                    // A stream socket (syslog-ng's unix-stream source).
                    Err(error) if error.raw_os_error() == Some(libc::EPROTOTYPE) => {
                        let stream = UnixStream::connect(path)?;
                        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
                        Connection::UnixStream(stream)
                    }
                    Err(error) => return Err(error),
                }
            }
        })
    }
}

/// One datagram a message; one the receiver refuses is counted and not retried.
fn send_datagrams(
    stats: &SyslogStats,
    batch: &[Vec<u8>],
    send: impl Fn(&[u8]) -> io::Result<usize>,
) {
    for message in batch {
        if send(message).is_err() {
            stats.dropped_send_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// RFC 6587 octet counting: `LEN SP MESSAGE`, the batch in one write.
fn write_framed(
    stream: &mut impl Write,
    batch: &[Vec<u8>],
    framed: &mut Vec<u8>,
) -> io::Result<()> {
    framed.clear();
    for message in batch {
        framed.extend_from_slice(itoa::Buffer::new().format(message.len()).as_bytes());
        framed.push(b' ');
        framed.extend_from_slice(message);
    }
    stream.write_all(framed)
}

/// Whether the receiver has closed the stream (a read would return end of file): a write to
/// it would still succeed once, and its message be lost.
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let closed = matches!(stream.peek(&mut byte), Ok(0))
        || matches!(stream.peek(&mut byte), Err(ref e) if e.kind() != io::ErrorKind::WouldBlock);
    let _ = stream.set_nonblocking(false);
    closed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fields;

    #[test]
    fn parses_receiver_urls() {
        assert_eq!(
            Receiver5424::parse("udp://127.0.0.1:514").unwrap(),
            Receiver5424::Udp("127.0.0.1:514".into())
        );
        assert_eq!(
            Receiver5424::parse("tcp://[::1]:6514").unwrap(),
            Receiver5424::Tcp("[::1]:6514".into())
        );
        assert_eq!(
            Receiver5424::parse("unix:///dev/log").unwrap(),
            Receiver5424::Unix("/dev/log".into())
        );
        for bad in [
            "127.0.0.1:514",
            "http://x:1",
            "udp://x",
            "udp://:514",
            "tcp://x:0",
            "unix://dev/log",
        ] {
            assert!(Receiver5424::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_message_is_rfc5424_with_the_kv_line() {
        let mut sink = SyslogSink::start(Receiver5424::Udp("127.0.0.1:9".into()));
        let event = Event {
            unix_nanos: 1_700_000_000_123_456_789,
            kind: EventKind::Error,
            fields: Fields::new()
                .text("Event", "ERROR")
                .integer("StatusCode", 502)
                .build(),
        };
        let message = String::from_utf8(sink.message(&event)).unwrap();
        let expected_start = "<132>1 2023-11-14T22:13:20.123456Z ";
        assert!(message.starts_with(expected_start), "{message}");
        assert!(
            message.contains(&format!(" access-log {} ERROR - ", std::process::id())),
            "{message}"
        );
        assert!(
            message.ends_with("Event=\"ERROR\", StatusCode=\"502\""),
            "{message}"
        );
    }

    #[test]
    fn octet_counting_prefixes_each_message_with_its_length() {
        let mut out = Vec::new();
        write_framed(
            &mut out,
            &[b"<1>1 a".to_vec(), b"xy".to_vec()],
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(out, b"6 <1>1 a2 xy");
    }
}
