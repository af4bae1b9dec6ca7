//! `cargo xtask demo`: a demo gateway (nginx, three APIs, `demo/gateway.conf.template`) in front
//! of real backends (a second nginx, `demo/backend.conf.template`), the observer attached to the
//! gateway's master by PID printing live events, and curl driving varied traffic once a second.
//! Ctrl-C or SIGTERM (or `--duration`) stops it all and leaves nothing running.
use std::{
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use tests::{
    demo, free_port,
    gateway::Gateway,
    observer::{self, Attached},
    wait_for_port,
};

/// The demo's ports when free: the gateway, the two backends, and one where nothing listens.
const GATEWAY: u16 = 18080;
const ORDERS: u16 = 18081;
const INVENTORY: u16 = 18082;
const DEAD: u16 = 18089;

pub fn run(duration: Option<f64>) -> anyhow::Result<()> {
    // A process started in the background by a script inherits SIGINT ignored: SIGTERM too.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing a signal handler")?;
    }

    let (orders, inventory) = (port_or_free(ORDERS), port_or_free(INVENTORY));
    let port = port_or_free(GATEWAY);
    let dead = if TcpStream::connect(("127.0.0.1", DEAD)).is_err() {
        DEAD
    } else {
        free_port()
    };
    // Field drops stop them whatever happens below.
    let backends = Gateway::nginx(
        "demo-backend",
        1,
        &demo::backend_http_block(orders, inventory),
        orders,
    )
    .map_err(anyhow::Error::msg)
    .context("starting the demo backends")?;
    wait_for_port(inventory, Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
    let gateway = Gateway::nginx(
        "demo",
        2,
        &demo::nginx_http_block(port, orders, inventory, dead),
        port,
    )
    .map_err(anyhow::Error::msg)
    .context("starting the demo gateway")?;
    eprintln!(
        "demo: backends (nginx, master PID {}) on 127.0.0.1:{orders} and 127.0.0.1:{inventory}",
        backends.master_pid()
    );
    eprintln!(
        "demo: gateway (nginx, master PID {}) on http://127.0.0.1:{port}: /orders/, /inventory/ \
         (header apikey: {}), /legacy/ (backend 127.0.0.1:{dead} down)",
        gateway.master_pid(),
        demo::API_KEY
    );

    let catalog = demo::catalog_path();
    let mut observer = start_observer(gateway.master_pid(), &catalog)?;
    eprintln!(
        "demo: traffic every second; try `curl -H 'apikey: {}' http://127.0.0.1:{port}/inventory/widgets` \
         yourself; Ctrl-C stops everything",
        demo::API_KEY
    );
    let deadline = duration.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let stopping = || stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d);
    let base = format!("http://127.0.0.1:{port}");
    let mut round = 0u64;
    while !stopping() {
        traffic(&base, round);
        round += 1;
        let next = Instant::now() + Duration::from_secs(1);
        while !stopping() && Instant::now() < next {
            thread::sleep(Duration::from_millis(50));
        }
        // On Ctrl-C in a terminal the observer gets SIGINT too and may be gone already.
        if !stopping() {
            if let Ok(Some(status)) = observer.child.try_wait() {
                bail!("the observer stopped by itself ({status})");
            }
        }
    }
    // It flushes and prints its summary (echoed).
    observer
        .stop()
        .map_err(anyhow::Error::msg)
        .context("stopping the observer")?;
    drop(gateway);
    drop(backends);
    eprintln!("demo: stopped the observer, the gateway and the backends");
    Ok(())
}

/// `port` when nothing uses it on loopback, else any free port.
fn port_or_free(port: u16) -> u16 {
    if TcpListener::bind(("127.0.0.1", port)).is_ok() {
        port
    } else {
        free_port()
    }
}

/// `access-log attach` with pretty output on this terminal; returns once it is attached, its
/// stderr echoed.
fn start_observer(pid: u32, catalog: &Path) -> anyhow::Result<Attached> {
    let mut command = Command::new(observer::binary());
    command
        .args(["attach", "--pid", &pid.to_string(), "--format", "pretty"])
        .arg("--apis")
        .arg(catalog)
        .stdin(Stdio::null());
    Attached::start(command, true)
        .map_err(anyhow::Error::msg)
        .context("starting the observer")
}

/// One round of varied traffic: successes with query strings, keep-alive, a POST, the right
/// API key, and each kind of failure (404, 401 without and with a wrong key, 502).
fn traffic(base: &str, round: u64) {
    let url = |path: &str| format!("{base}{path}");
    let key = format!("apikey: {}", demo::API_KEY);
    let none = Vec::<String>::new;
    // (curl options, URLs): several URLs in one curl share a keep-alive connection.
    let calls: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            none(),
            vec![url(&format!("/orders/items?color=red&page={round}"))],
        ),
        (
            none(),
            vec![url("/orders/1"), url("/orders/2?expand=lines")],
        ),
        (
            vec!["-d".into(), format!("{{\"item\":42,\"round\":{round}}}")],
            vec![url("/orders/new")],
        ),
        (
            vec!["-H".into(), key],
            vec![url("/inventory/widgets?warehouse=3")],
        ),
        (none(), vec![url("/inventory/widgets")]),
        (
            vec!["-H".into(), "apikey: wrong".into()],
            vec![url("/inventory/widgets")],
        ),
        (none(), vec![url("/legacy/report?year=2019")]),
        (none(), vec![url("/nope/x")]),
    ];
    for (options, urls) in calls {
        let mut command = Command::new("curl");
        command
            .args(["-s", "--max-time", "5", "-A", "demo-client/1.0"])
            .args(&options)
            .stdin(Stdio::null());
        for url in &urls {
            command.args(["-o", "/dev/null", url]);
        }
        let _ = command.status();
    }
}
