//! `cargo xtask bench`: what the observer costs the gateway, measured against the gateway's own
//! access log, in one run on one machine (ratios of alternating rounds, medians): throughput at
//! saturation (wrk), added latency at half that rate, BPF run time and the observer's CPU per
//! request, drops, the user-space pipeline's replay throughput and peak memory, and perf
//! profiles of the observer and of the gateway with it attached. Writes BENCHMARKS.md.
use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tests::{
    free_port,
    gateway::Gateway,
    observer::{self, Attached},
    paced,
};

pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
    pub replay_requests: u64,
}

/// nginx's own access log as operators run it: a dozen variables, buffered.
const ACCESS_LOG: &str = "log_format bench '$remote_addr - $remote_user [$time_local] \"$request\" \
$status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" $request_time $upstream_addr \
$upstream_status $upstream_response_time $request_id';\n  access_log logs/access.log bench buffer=64k flush=1s;";

struct Bench {
    _backend: Gateway,
    plain: Gateway,
    _logged: Gateway,
    ports: Ports,
    /// A process that does nothing but maps the gateway's libssl: attaching the observer to it
    /// attaches every probe (tracepoints and TLS uprobes) while nothing is watched, so its cost
    /// is the probe choice's floor before any of our code runs.
    idle: Idle,
}

struct Idle(std::process::Child);

impl Idle {
    fn start(libssl: &Path) -> anyhow::Result<Idle> {
        let child = Command::new("sleep")
            .arg("100000")
            .env("LD_PRELOAD", libssl)
            .spawn()
            .context("starting the idle process for the probe floor")?;
        // Wait until the loader has mapped the library.
        for _ in 0..100 {
            let maps = fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap_or_default();
            if maps.contains("libssl") {
                return Ok(Idle(child));
            }
            thread::sleep(Duration::from_millis(10));
        }
        anyhow::bail!("the idle process never mapped {}", libssl.display())
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The libssl nginx maps, read from its worker's memory map.
fn gateway_libssl(pid: u32) -> anyhow::Result<std::path::PathBuf> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("libssl.so"))
        })
        .map(std::path::PathBuf::from)
        .context("nginx maps no libssl: the HTTPS scenario and the probe floor need one")
}

#[derive(Clone, Copy)]
struct Ports {
    plain: u16,
    plain_tls: u16,
    plain_h2: u16,
    logged: u16,
    logged_tls: u16,
    logged_h2: u16,
}

/// A gateway's ports: plaintext HTTP/1, TLS, and cleartext HTTP/2 (prior knowledge).
type Listeners = (u16, u16, u16);

fn gateway_block(
    (port, tls_port, h2_port): Listeners,
    backend: u16,
    dir: &Path,
    access_log: bool,
) -> String {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    format!(
        "  upstream backend {{ server 127.0.0.1:{backend}; keepalive 32; }}\n  {}\n  server {{\n    \
         listen 127.0.0.1:{port} backlog=4096;\n    listen 127.0.0.1:{tls_port} ssl backlog=4096;\n    \
         listen 127.0.0.1:{h2_port} http2 backlog=4096;\n    \
         ssl_certificate {};\n    ssl_certificate_key {};\n    keepalive_requests 1000000;\n    \
         location / {{ proxy_pass http://backend; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; }}\n  }}\n",
        if access_log { ACCESS_LOG } else { "" },
        cert.display(),
        key.display()
    )
}

impl Bench {
    fn start() -> anyhow::Result<Bench> {
        let backend_port = free_port();
        let backend = Gateway::nginx(
            "bench-backend",
            1,
            &format!(
                "  server {{ listen 127.0.0.1:{backend_port} backlog=4096; keepalive_requests 1000000;\n    \
                 location /small {{ return 200 \"ok\\n\"; }}\n    location /big {{ root html; }}\n  }}\n"
            ),
            backend_port,
        )
        .map_err(anyhow::Error::msg)?;
        fs::create_dir_all(backend.path("html"))?;
        fs::write(backend.path("html/big"), vec![b'x'; 64 * 1024])?;
        let certs = std::env::temp_dir().join(format!("access-log-bench-{}", std::process::id()));
        fs::create_dir_all(&certs)?;
        tests::certificate::self_signed(&certs).map_err(anyhow::Error::msg)?;
        let ports = Ports {
            plain: free_port(),
            plain_tls: free_port(),
            plain_h2: free_port(),
            logged: free_port(),
            logged_tls: free_port(),
            logged_h2: free_port(),
        };
        let plain = Gateway::nginx(
            "bench-plain",
            1,
            &gateway_block(
                (ports.plain, ports.plain_tls, ports.plain_h2),
                backend_port,
                &certs,
                false,
            ),
            ports.plain,
        )
        .map_err(anyhow::Error::msg)?;
        let logged = Gateway::nginx(
            "bench-logged",
            1,
            &gateway_block(
                (ports.logged, ports.logged_tls, ports.logged_h2),
                backend_port,
                &certs,
                true,
            ),
            ports.logged,
        )
        .map_err(anyhow::Error::msg)?;
        let idle = Idle::start(&gateway_libssl(plain.master_pid())?)?;
        Ok(Bench {
            _backend: backend,
            plain,
            _logged: logged,
            ports,
            idle,
        })
    }
}

/// How wrk loads the gateway.
#[derive(Clone, Copy, Default)]
struct Load<'a> {
    /// Every request with `Connection: close`.
    close: bool,
    /// HTTP/2 with prior knowledge (h2load, 32 connections of 8 streams in flight) instead of
    /// wrk's HTTP/1.1.
    http2: bool,
    /// A directory holding a copy of libssl that wrk loads instead of the gateway's: the TLS
    /// uprobes sit on the gateway's file, so wrk's own TLS calls take no trap.
    private_libssl: Option<&'a Path>,
}

/// One wrk run (h2load for [`Load::http2`]): requests per second and the number of requests.
fn wrk(url: &str, seconds: u64, load: Load) -> anyhow::Result<(f64, u64)> {
    if load.http2 {
        return h2load(url, seconds);
    }
    let mut command = Command::new("wrk");
    command.args(["-t1", "-c32", &format!("-d{seconds}s")]);
    if load.close {
        command.args(["-H", "Connection: close"]);
    }
    if let Some(dir) = load.private_libssl {
        command.env("LD_LIBRARY_PATH", dir);
    }
    let output = command.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rate = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk printed no rate: {text}"))?;
    let total = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.to_owned())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Ok((rate, total))
}

/// One h2load run over cleartext HTTP/2 (prior knowledge): requests per second and the
/// number of requests that succeeded.
fn h2load(url: &str, seconds: u64) -> anyhow::Result<(f64, u64)> {
    let output = Command::new("h2load")
        .args(["-t1", "-c32", "-m8", "-D"])
        .arg(seconds.to_string())
        .arg(url)
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "finished in 5.00s, 12345.67 req/s, ..." and "requests: N total, N started, N done,
    // N succeeded, ...".
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.trim().parse().ok())
        .with_context(|| format!("h2load printed no rate: {text}"))?;
    let succeeded = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|rest| rest.split(", ").find_map(|p| p.strip_suffix(" succeeded")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Ok((rate, succeeded))
}

fn attach(pid: u32, extra: &[&str]) -> anyhow::Result<Attached> {
    let mut command = Command::new(observer::binary());
    command
        .args(["attach", "--pid", &pid.to_string(), "--format", "kv"])
        .args(["--output", "/dev/null"])
        .args(extra)
        .stdout(Stdio::null());
    Attached::start(command, false).map_err(anyhow::Error::msg)
}

/// `access-log record` to /dev/null: the kernel side's whole cost (probes, copies, ring) with
/// almost no user-space work.
fn record_only(pid: u32) -> anyhow::Result<Attached> {
    let mut command = Command::new(observer::binary());
    command
        .args(["record", "--pid", &pid.to_string(), "--output", "/dev/null"])
        .stdout(Stdio::null());
    Attached::start(command, false).map_err(anyhow::Error::msg)
}

/// One wrk run with `attached` running beside it.
struct WithRun {
    rate: f64,
    requests: u64,
    /// What the attached process printed (its summary, `bpf` lines).
    lines: Vec<String>,
    /// CPU time (user and system) the attached process used during the wrk run.
    cpu_seconds: f64,
}

fn wrk_with(attached: Attached, url: &str, seconds: u64, load: Load) -> anyhow::Result<WithRun> {
    let pid = attached.child.id();
    let before = cpu_seconds(pid)?;
    let (rate, requests) = wrk(url, seconds, load)?;
    let cpu_seconds = cpu_seconds(pid)? - before;
    let lines = attached.stop().map_err(anyhow::Error::msg)?;
    // A round that served nothing would make every per-request figure meaningless.
    if requests == 0 {
        anyhow::bail!("the load generator reported no requests served at {url}");
    }
    Ok(WithRun {
        rate,
        requests,
        lines,
        cpu_seconds,
    })
}

/// User and system CPU seconds process `pid` used so far (/proc/PID/stat, in clock ticks).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces), from the state (field 3):
    // utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("no field {n} in {path}"))
    };
    Ok((field(14)? + field(15)?) as f64 / ticks)
}

fn kernel_drops(lines: &[String]) -> u64 {
    lines
        .iter()
        .find_map(|l| l.split("records lost ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(';').parse().ok())
        .unwrap_or(0)
}

fn bpf_nanoseconds(lines: &[String]) -> u64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("bpf: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Each program's (name, nanoseconds, runs) from the observer's `bpf program` lines.
fn bpf_programs(lines: &[String]) -> Vec<(String, u64, u64)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("bpf program "))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once(": ")?;
            let mut words = rest.split_whitespace();
            let nanoseconds = words.next()?.parse().ok()?;
            let runs = words.nth(2)?.parse().ok()?;
            Some((name.to_owned(), nanoseconds, runs))
        })
        .collect()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

struct ScenarioResult {
    name: &'static str,
    baseline_rps: f64,
    floor_ratio: f64,
    kernel_ratio: f64,
    observer_ratio: f64,
    access_log_ratio: f64,
    bpf_ns_per_request: f64,
    /// The observer process's CPU time (user and system) per request, median of rounds.
    process_ns_per_request: f64,
    drops: u64,
    /// Per BPF program over every observer round: (name, nanoseconds, runs), and the requests
    /// those rounds served.
    programs: Vec<(String, u64, u64)>,
    observed_requests: u64,
}

fn scenario(
    bench: &Bench,
    options: &Options,
    name: &'static str,
    scheme_port: (&str, u16, u16),
    path: &str,
    load: Load,
) -> anyhow::Result<ScenarioResult> {
    let (scheme, plain_port, logged_port) = scheme_port;
    let plain_url = format!("{scheme}://127.0.0.1:{plain_port}{path}");
    let logged_url = format!("{scheme}://127.0.0.1:{logged_port}{path}");
    let gateway = bench.plain.master_pid();
    let idle = bench.idle.0.id();
    let (mut floor, mut kernel, mut observer, mut logged, mut baselines, mut bpf) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut process = Vec::new();
    let mut drops = 0;
    let mut programs: Vec<(String, u64, u64)> = Vec::new();
    let mut observed_requests = 0;
    // Warm both gateways' upstream pools.
    wrk(&plain_url, 1, load)?;
    wrk(&logged_url, 1, load)?;
    for round in 0..options.rounds {
        let (baseline, _) = wrk(&plain_url, options.seconds, load)?;
        let floored = wrk_with(attach(idle, &[])?, &plain_url, options.seconds, load)?.rate;
        let recorded = wrk_with(record_only(gateway)?, &plain_url, options.seconds, load)?;
        drops += kernel_drops(&recorded.lines);
        let recorded = recorded.rate;
        let WithRun {
            rate: observed,
            requests,
            lines,
            cpu_seconds,
        } = wrk_with(
            attach(gateway, &["--bpf-stats"])?,
            &plain_url,
            options.seconds,
            load,
        )?;
        drops += kernel_drops(&lines);
        let (with_log, _) = wrk(&logged_url, options.seconds, load)?;
        bpf.push(bpf_nanoseconds(&lines) as f64 / requests.max(1) as f64);
        process.push(cpu_seconds * 1e9 / requests.max(1) as f64);
        observed_requests += requests;
        for (name, nanoseconds, runs) in bpf_programs(&lines) {
            match programs.iter_mut().find(|p| p.0 == name) {
                Some(program) => {
                    program.1 += nanoseconds;
                    program.2 += runs;
                }
                None => programs.push((name, nanoseconds, runs)),
            }
        }
        baselines.push(baseline);
        floor.push(floored / baseline);
        kernel.push(recorded / baseline);
        observer.push(observed / baseline);
        logged.push(with_log / baseline);
        eprintln!(
            "bench: {name} round {}: nothing {baseline:.0}/s, probe floor {floored:.0}/s, \
             kernel side {recorded:.0}/s, observer {observed:.0}/s, access_log {with_log:.0}/s",
            round + 1
        );
    }
    Ok(ScenarioResult {
        name,
        baseline_rps: median(&mut baselines),
        floor_ratio: median(&mut floor),
        kernel_ratio: median(&mut kernel),
        observer_ratio: median(&mut observer),
        access_log_ratio: median(&mut logged),
        bpf_ns_per_request: median(&mut bpf),
        process_ns_per_request: median(&mut process),
        drops,
        programs,
        observed_requests,
    })
}

struct Latency {
    rate: f64,
    without: (Duration, Duration),
    with: (Duration, Duration),
}

fn latency(bench: &Bench, options: &Options, rate: f64) -> anyhow::Result<Latency> {
    let address = SocketAddr::from(([127, 0, 0, 1], bench.ports.plain));
    let request = b"GET /small HTTP/1.1\r\nHost: gateway\r\nUser-Agent: access-log-bench/1\r\n\r\n";
    let seconds = Duration::from_secs(options.seconds);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..options.rounds {
        without.extend(paced::paced(address, request, rate, seconds, 32)?);
        let observer = attach(bench.plain.master_pid(), &[])?;
        with.extend(paced::paced(address, request, rate, seconds, 32)?);
        observer.stop().map_err(anyhow::Error::msg)?;
    }
    without.sort();
    with.sort();
    let pair = |v: &[Duration]| (paced::quantile(v, 0.5), paced::quantile(v, 0.99));
    Ok(Latency {
        rate,
        without: pair(&without),
        with: pair(&with),
    })
}

struct Replay {
    requests: u64,
    records_bytes: u64,
    cpu_seconds: f64,
    wall_seconds: f64,
    peak_rss_kib: i64,
    /// Where the replay's CPU went: each stage's inclusive share of the samples, in percent.
    stages: Vec<(&'static str, f64)>,
}

/// The replay's stages, each named by the function that does it (a substring of its symbol)
/// and counted with everything it calls: perf's inclusive ("children") share.
const REPLAY_STAGES: [(&str, &str); 5] = [
    (
        "reading the capture file",
        "capture_file::Reader<R>::next_entry",
    ),
    (
        "the pipeline: connections, pairing, outcomes",
        "pipeline::Pipeline::process",
    ),
    (
        "of which HTTP/1 heads (httparse and framing)",
        "protocol::http1::Stream::feed",
    ),
    (
        "events built from outcomes",
        "event::build::EventBuilder::event",
    ),
    (
        "kv lines formatted and written",
        "sink::kv::KvSink<W> as access_log::sink::Sink>::write_event",
    ),
];

/// Samples a replay of `file` with call stacks (perf, DWARF unwinding through the binary's
/// unwind tables) and returns each of REPLAY_STAGES' inclusive share of the samples. A stage
/// perf never saw (inlined away, renamed) fails the bench rather than reading as free.
fn replay_stages(file: &Path) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let profile = std::env::temp_dir().join(format!(
        "access-log-bench-replay-{}.perf",
        std::process::id()
    ));
    let status = Command::new("perf")
        .args(["record", "-F", "499", "--call-graph", "dwarf,8192", "-o"])
        .arg(&profile)
        .arg("--")
        .arg(observer::binary())
        .args(["replay", "--format", "kv", "--output", "/dev/null"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("perf record of the replay")?;
    if !status.success() {
        anyhow::bail!("perf record of the replay failed ({status})");
    }
    let output = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--children",
            "--sort",
            "symbol",
            "-g",
            "none",
            "-i",
        ])
        .arg(&profile)
        .output()
        .context("perf report of the replay")?;
    let _ = fs::remove_file(&profile);
    let report = String::from_utf8_lossy(&output.stdout);
    REPLAY_STAGES
        .iter()
        .map(|(label, symbol)| {
            let line = report
                .lines()
                .find(|l| l.contains(symbol))
                .with_context(|| format!("no samples in {symbol} in the replay's profile"))?;
            let percent = line
                .split('%')
                .next()
                .and_then(|p| p.trim().parse::<f64>().ok())
                .with_context(|| format!("perf's line for {symbol}: {line}"))?;
            Ok((*label, percent))
        })
        .collect()
}

fn replay_throughput(bench: &Bench, options: &Options, rate: f64) -> anyhow::Result<Replay> {
    let file = std::env::temp_dir().join(format!("access-log-bench-{}.alrec", std::process::id()));
    let mut command = Command::new(observer::binary());
    command
        .args([
            "record",
            "--pid",
            &bench.plain.master_pid().to_string(),
            "--output",
        ])
        .arg(&file);
    let recorder = Attached::start(command, false).map_err(anyhow::Error::msg)?;
    // Enough load for the wanted count, at about the rate wrk reaches with a recorder attached.
    let seconds = (options.replay_requests as f64 / (rate * 0.6)).ceil() as u64 + 1;
    let url = format!("http://127.0.0.1:{}/small", bench.ports.plain);
    let mut requests = 0;
    while requests < options.replay_requests {
        requests += wrk(&url, seconds, Load::default())?.1;
    }
    recorder.stop().map_err(anyhow::Error::msg)?;
    let records_bytes = fs::metadata(&file)?.len();
    let started = Instant::now();
    let child = Command::new(observer::binary())
        .args(["replay", "--format", "kv", "--output", "/dev/null"])
        .arg(&file)
        .stderr(Stdio::null())
        .spawn()
        .context("starting the replay")?;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall_seconds = started.elapsed().as_secs_f64();
    // A replay that failed measured nothing.
    if waited < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let _ = fs::remove_file(&file);
        anyhow::bail!("the replay of the recorded capture failed (wait status {status})");
    }
    // A second replay, sampled, says where the first one's time went.
    let stages = replay_stages(&file);
    let _ = fs::remove_file(&file);
    let stages = stages?;
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Replay {
        requests,
        records_bytes,
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        wall_seconds,
        peak_rss_kib: usage.ru_maxrss,
        stages,
    })
}

/// Symbols shown per profile, the busiest first.
const PROFILE_LINES: usize = 20;

/// perf's view of where the CPU goes with the observer attached: its process, and the
/// gateway's workers.
struct Profiles {
    seconds: u64,
    observer: Vec<String>,
    gateway: Vec<String>,
}

/// Samples the observer and nginx's workers (perf at 999 Hz, self time by symbol) under the
/// plaintext keep-alive load.
fn profiles(bench: &Bench, options: &Options) -> anyhow::Result<Profiles> {
    let seconds = options.seconds.max(2);
    let observer = attach(bench.plain.master_pid(), &[])?;
    let url = format!("http://127.0.0.1:{}/small", bench.ports.plain);
    let load = thread::spawn(move || wrk(&url, seconds + 2, Load::default()));
    thread::sleep(Duration::from_secs(1));
    let dir = std::env::temp_dir();
    let workers: Vec<String> = bench.plain.workers().iter().map(u32::to_string).collect();
    let targets = [
        (
            observer.child.id().to_string(),
            dir.join("access-log-bench-observer.perf"),
        ),
        (workers.join(","), dir.join("access-log-bench-gateway.perf")),
    ];
    let mut recorders = Vec::new();
    for (pids, file) in &targets {
        let child = Command::new("perf")
            .args(["record", "-F", "999", "-o"])
            .arg(file)
            .args(["-p", pids, "--", "sleep", &seconds.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record")?;
        recorders.push(child);
    }
    for mut recorder in recorders {
        recorder.wait().context("perf record")?;
    }
    load.join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    observer.stop().map_err(anyhow::Error::msg)?;
    let mut reports = Vec::new();
    for (_, file) in &targets {
        let output = Command::new("perf")
            .args(["report", "--stdio", "--sort", "symbol", "-i"])
            .arg(file)
            .output()
            .context("perf report")?;
        let _ = fs::remove_file(file);
        let all: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && l.contains('%'))
            .map(|l| l.trim_end_matches([' ', '-']).to_owned())
            .collect();
        // Totals by where the time went: user space, the kernel, and the BPF programs in it.
        let (mut user, mut kernel, mut bpf) = (0.0, 0.0, 0.0);
        for line in &all {
            let percent: f64 = line
                .split('%')
                .next()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0.0);
            if line.contains("[k]") {
                kernel += percent;
                if line.contains("bpf_prog_") {
                    bpf += percent;
                }
            } else {
                user += percent;
            }
        }
        let mut lines: Vec<String> = all.into_iter().take(PROFILE_LINES).collect();
        lines.push(format!(
            "(all samples: user space {user:.1} %, kernel {kernel:.1} %, of which BPF \
             programs {bpf:.1} %)"
        ));
        if lines.len() == 1 {
            anyhow::bail!(
                "perf recorded nothing in {}: {}",
                file.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        reports.push(lines);
    }
    let gateway = reports.pop().unwrap_or_default();
    let observer = reports.pop().unwrap_or_default();
    Ok(Profiles {
        seconds,
        observer,
        gateway,
    })
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| format!("{} GiB", kib / 1024 / 1024))
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nginx = Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default();
    format!(
        "{} cores ({cpu}), {memory} memory, Linux {}, {nginx}, wrk -t1 -c32 (HTTP/2: h2load -t1 -c32 -m8)",
        thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel.trim()
    )
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let bench = Bench::start()?;
    let p = bench.ports;
    // wrk's own copy of libssl, under the name its loader looks for.
    let private = std::env::temp_dir().join(format!("access-log-bench-ssl-{}", std::process::id()));
    fs::create_dir_all(&private)?;
    let libssl = gateway_libssl(bench.plain.master_pid())?;
    let soname = libssl.file_name().context("libssl's file name")?;
    fs::copy(&libssl, private.join(soname)).context("copying libssl for wrk")?;
    let keep_alive = Load::default();
    let mut results = Vec::new();
    for (name, scheme_port, path, load) in [
        (
            "plaintext, keep-alive, small",
            ("http", p.plain, p.logged),
            "/small",
            keep_alive,
        ),
        (
            "plaintext, Connection: close, small",
            ("http", p.plain, p.logged),
            "/small",
            Load {
                close: true,
                ..keep_alive
            },
        ),
        (
            "HTTPS, keep-alive, small",
            ("https", p.plain_tls, p.logged_tls),
            "/small",
            keep_alive,
        ),
        (
            "HTTPS, keep-alive, small, wrk's own libssl",
            ("https", p.plain_tls, p.logged_tls),
            "/small",
            Load {
                private_libssl: Some(&private),
                ..keep_alive
            },
        ),
        (
            "plaintext, keep-alive, 64 KiB",
            ("http", p.plain, p.logged),
            "/big",
            keep_alive,
        ),
        (
            "cleartext HTTP/2 (h2load, 8 streams a connection), small",
            ("http", p.plain_h2, p.logged_h2),
            "/small",
            Load {
                http2: true,
                ..keep_alive
            },
        ),
    ] {
        results.push(scenario(&bench, options, name, scheme_port, path, load)?);
    }
    let _ = fs::remove_dir_all(&private);
    let half_rate = results[0].baseline_rps / 2.0;
    let latency = latency(&bench, options, half_rate)?;
    let replay = replay_throughput(&bench, options, results[0].baseline_rps)?;
    let profiles = profiles(&bench, options)?;

    let mut report = String::new();
    let _ = writeln!(report, "# Benchmarks\n");
    let _ = writeln!(
        report,
        "Measured by `cargo xtask bench` on {}; {}; {} rounds of {} s per measurement, \
         alternating nothing / probe floor / kernel side / observer / nginx's own access_log; medians of per-round ratios. \
         Run time {:.0} s.\n",
        chrono_free_date(),
        machine(),
        options.rounds,
        options.seconds,
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        report,
        "## Gateway throughput (nginx proxying to a keep-alive upstream)\n"
    );
    let _ = writeln!(
        report,
        "| scenario | nothing attached | probe floor (nothing watched) | kernel side only (`record`) | with the observer | with nginx's access_log (buffered) | BPF time per request | observer process CPU per request | observer's total CPU per request | kernel drops |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let _ = writeln!(
            report,
            "| {} | {:.0} req/s | {:.3} | {:.3} | **{:.3}** | {:.3} | {:.0} ns | {:.0} ns | **{:.0} ns** | {} |",
            r.name,
            r.baseline_rps,
            r.floor_ratio,
            r.kernel_ratio,
            r.observer_ratio,
            r.access_log_ratio,
            r.bpf_ns_per_request,
            r.process_ns_per_request,
            r.bpf_ns_per_request + r.process_ns_per_request,
            r.drops
        );
    }
    let _ = writeln!(
        report,
        "\nColumns after the first are throughput ratios to nothing attached. The probe floor is \
         the observer attached to an idle process that maps the same libssl: every tracepoint \
         and TLS uprobe attached, every program returning at its first check; it is what the \
         probe choice costs before any of our code runs. The kernel side adds the copies into \
         the ring (`access-log record` to /dev/null); the observer adds user space (decode, \
         pair, format kv to /dev/null) on the same two cores as the gateway, its load \
         generator and its backend. The observer's total CPU per request is the BPF time \
         (`--bpf-stats`) plus the observer process's own CPU time (user and system, \
         /proc/PID/stat) over the requests of its rounds: a figure that does not depend on how \
         the cores are shared. \"wrk's own libssl\": wrk loads a copy of the library, so its \
         TLS calls do not hit the uprobes set on the gateway's file."
    );
    let _ = writeln!(
        report,
        "\n## Where the BPF time goes\n\nPer program, over every observer round of each \
         scenario (`--bpf-stats`): nanoseconds per proxied request, and in brackets runs per \
         request and nanoseconds per run. Programs under 50 ns per request in every scenario \
         are left out.\n"
    );
    let mut names: Vec<String> = Vec::new();
    for r in &results {
        for (name, nanoseconds, _) in &r.programs {
            let per_request = *nanoseconds as f64 / r.observed_requests.max(1) as f64;
            if per_request >= 50.0 && !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    let _ = writeln!(
        report,
        "| program | {} |",
        results
            .iter()
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(report, "|---|{}", "---|".repeat(results.len()));
    for name in &names {
        let cells: Vec<String> = results
            .iter()
            .map(|r| {
                let requests = r.observed_requests.max(1) as f64;
                match r.programs.iter().find(|p| &p.0 == name) {
                    Some((_, nanoseconds, runs)) => format!(
                        "{:.0} ns ({:.1} × {:.0} ns)",
                        *nanoseconds as f64 / requests,
                        *runs as f64 / requests,
                        *nanoseconds as f64 / (*runs).max(1) as f64
                    ),
                    None => "-".to_owned(),
                }
            })
            .collect();
        let _ = writeln!(report, "| {name} | {} |", cells.join(" | "));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let _ = writeln!(
        report,
        "\n## Latency at half the saturation rate ({:.0} req/s, 32 connections, open loop)\n\n\
         | | p50 | p99 |\n|---|---|---|\n| nothing attached | {:.3} ms | {:.3} ms |\n\
         | with the observer | {:.3} ms | {:.3} ms |\n| added | {:+.3} ms | {:+.3} ms |",
        latency.rate,
        ms(latency.without.0),
        ms(latency.without.1),
        ms(latency.with.0),
        ms(latency.with.1),
        ms(latency.with.0) - ms(latency.without.0),
        ms(latency.with.1) - ms(latency.without.1),
    );
    let per_core = replay.requests as f64 / replay.cpu_seconds.max(1e-9);
    let _ = writeln!(
        report,
        "\n## User space: replay of a recorded capture\n\n\
         {} proxied requests recorded live ({:.0} MB of kernel records), replayed to kv lines: \
         {:.2} s CPU, {:.2} s wall, **{:.0} proxied requests per second per core**, peak RSS \
         {:.1} MiB.",
        replay.requests,
        replay.records_bytes as f64 / 1e6,
        replay.cpu_seconds,
        replay.wall_seconds,
        per_core,
        replay.peak_rss_kib as f64 / 1024.0
    );
    let per_request_ns = replay.cpu_seconds * 1e9 / replay.requests.max(1) as f64;
    let _ = writeln!(
        report,
        "\nWhere that time goes, per proxied request ({per_request_ns:.0} ns in all; 1.5 million \
         a second per core would be {:.0} ns): a second replay of the same capture sampled by \
         perf with call stacks (499 Hz, DWARF unwinding), each stage with everything it calls.\n\n\
         | stage (function) | share of the CPU | per proxied request |\n|---|---|---|",
        1e9 / 1.5e6
    );
    for ((label, percent), (_, symbol)) in replay.stages.iter().zip(REPLAY_STAGES) {
        let _ = writeln!(
            report,
            "| {label} (`{symbol}`) | {percent:.1} % | {:.0} ns |",
            percent / 100.0 * per_request_ns
        );
    }
    let _ = writeln!(
        report,
        "\n## Profiles (plaintext, keep-alive, small; perf at 999 Hz for {} s)\n\n\
         Where the CPU goes, by symbol (self time, the {PROFILE_LINES} busiest), in the \
         observer process and in nginx's worker with the observer attached (kernel symbols \
         included: the BPF programs show as `bpf_prog_*`). Without a hardware PMU perf samples \
         on a timer, so time spent with interrupts off is counted where they are turned back \
         on (`_raw_spin_unlock_irqrestore`: among others the ring buffer's lock, and waking a \
         thread).\n",
        profiles.seconds
    );
    for (title, lines) in [
        ("the observer process", &profiles.observer),
        ("nginx's worker", &profiles.gateway),
    ] {
        let _ = writeln!(report, "{title}:\n\n```\n{}\n```\n", lines.join("\n"));
    }
    println!("{report}");
    fs::write(tests::workspace_root().join("BENCHMARKS.md"), &report)?;
    eprintln!("bench: wrote BENCHMARKS.md");
    Ok(())
}

/// Today's date (UTC) without a date crate.
fn chrono_free_date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod report_tests {
    use super::{bpf_nanoseconds, bpf_programs};

    #[test]
    fn the_observers_per_program_lines_are_read() {
        let lines: Vec<String> = [
            "bpf: 900 ns in 3 program runs (300 ns per run)",
            "bpf program writev_exit: 658000 ns in 1000 runs",
            "bpf program read_exit: 12 ns in 1 runs",
            "summary: ...",
        ]
        .iter()
        .map(|l| (*l).to_owned())
        .collect();
        assert_eq!(
            bpf_programs(&lines),
            [
                ("writev_exit".to_owned(), 658000, 1000),
                ("read_exit".to_owned(), 12, 1)
            ]
        );
        assert_eq!(bpf_nanoseconds(&lines), 900);
    }
}
