//! An open-loop HTTP/1.1 client for latency at a fixed rate: requests go out on a schedule
//! (a late answer does not delay the next send; a request whose connection is still busy waits
//! and its wait counts), and each latency is measured from the scheduled send time.
//!
//! One thread drives every connection through epoll, woken by a timerfd at each send time, so
//! the client costs little beside the gateway it measures on the same cores (a thread per
//! connection costs two context switches per request, enough to saturate a 2-core machine long
//! before the gateway does).
use std::{
    collections::VecDeque,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

struct Connection {
    stream: TcpStream,
    /// The scheduled send time of the request in flight.
    due: Option<Instant>,
    received: Vec<u8>,
}

/// Bytes of a complete response at the start of `bytes`, if one is there (Content-Length
/// framing, as the benchmark's backend answers).
fn complete_response(bytes: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(bytes).ok()? else {
        return None;
    };
    let length: usize = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0);
    (bytes.len() >= head + length).then_some(head + length)
}

fn check(result: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::new(
            io::Error::last_os_error().kind(),
            format!("{what}: {}", io::Error::last_os_error()),
        ))
    } else {
        Ok(result)
    }
}

/// A CLOCK_MONOTONIC timerfd, armed at absolute times.
struct Timer {
    fd: OwnedFd,
    origin: Instant,
    origin_ns: i128,
}

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: plain syscalls; the fd is owned from here on.
        let fd = check(
            unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK) },
            "timerfd_create",
        )?;
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        Ok(Timer {
            // SAFETY: fd was just created and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            origin: Instant::now(),
            origin_ns: now.tv_sec as i128 * 1_000_000_000 + now.tv_nsec as i128,
        })
    }

    fn arm(&self, at: Instant) -> io::Result<()> {
        let ns =
            (self.origin_ns + at.saturating_duration_since(self.origin).as_nanos() as i128).max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: valid fd and pointers.
        check(
            unsafe {
                libc::timerfd_settime(
                    self.fd.as_raw_fd(),
                    libc::TFD_TIMER_ABSTIME,
                    &spec,
                    std::ptr::null_mut(),
                )
            },
            "timerfd_settime",
        )?;
        Ok(())
    }

    fn clear(&self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reading 8 bytes into a local buffer; EAGAIN when not expired is fine.
        unsafe { libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
    }
}

/// Sends `request` (raw bytes, keep-alive) at `rate` per second in total for `duration` over
/// `connections` connections; returns every latency, sorted.
pub fn paced(
    gateway: SocketAddr,
    request: &[u8],
    rate: f64,
    duration: Duration,
    connections: usize,
) -> io::Result<Vec<Duration>> {
    // SAFETY: plain syscall; the fd is owned from here on.
    let epoll = unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(0), "epoll_create1")?) };
    let timer = Timer::new()?;
    let add = |fd: i32, token: u64| -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid fds and event pointer.
        check(
            unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) },
            "epoll_ctl",
        )?;
        Ok(())
    };
    let timer_token = u64::MAX;
    add(timer.fd.as_raw_fd(), timer_token)?;
    let mut pool = Vec::with_capacity(connections);
    for index in 0..connections {
        let stream = TcpStream::connect(gateway)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        add(stream.as_raw_fd(), index as u64)?;
        pool.push(Connection {
            stream,
            due: None,
            received: Vec::new(),
        });
    }
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + duration;
    // Give up on answers this long after the last send.
    let deadline = end + Duration::from_secs(5);
    let mut idle: VecDeque<usize> = (0..connections).collect();
    let mut waiting: VecDeque<Instant> = VecDeque::new();
    let mut next = start;
    let mut latencies = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; connections + 1];
    let mut buffer = vec![0u8; 16 * 1024];
    let send = |connection: &mut Connection, due: Instant| -> io::Result<()> {
        connection.due = Some(due);
        // A request this small goes out whole on a connection with nothing in flight.
        connection.stream.write_all(request)
    };
    loop {
        let now = Instant::now();
        while next <= now && next < end {
            match idle.pop_front() {
                Some(index) => send(&mut pool[index], next)?,
                None => waiting.push_back(next),
            }
            next += interval;
        }
        let busy = idle.len() < connections || !waiting.is_empty();
        if (next >= end && !busy) || now >= deadline {
            break;
        }
        timer.arm(if next < end { next } else { deadline })?;
        // SAFETY: valid epoll fd and event buffer.
        let ready = check(
            unsafe {
                libc::epoll_wait(
                    epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    -1,
                )
            },
            "epoll_wait",
        )
        .or_else(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            }
        })?;
        for event in &events[..ready as usize] {
            if event.u64 == timer_token {
                timer.clear();
                continue;
            }
            let index = event.u64 as usize;
            let connection = &mut pool[index];
            loop {
                match connection.stream.read(&mut buffer) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the gateway closed a kept-alive connection",
                        ))
                    }
                    Ok(n) => connection.received.extend_from_slice(&buffer[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if let Some(length) = complete_response(&connection.received) {
                connection.received.drain(..length);
                if let Some(due) = connection.due.take() {
                    latencies.push(due.elapsed());
                }
                match waiting.pop_front() {
                    Some(due) => send(connection, due)?,
                    None => idle.push_back(index),
                }
            }
        }
    }
    latencies.sort();
    Ok(latencies)
}

/// The q-quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
