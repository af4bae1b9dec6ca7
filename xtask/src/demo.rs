//! `cargo xtask demo`: a demo gateway (nginx, three APIs, real backends), the observer attached
//! to it by PID printing live events, and a client driving varied traffic. Ctrl-C or SIGTERM
//! stops it all and leaves nothing running.
use std::{
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
    backend::Backend,
    demo, free_port,
    gateway::Gateway,
    observer::{self, Attached},
};

/// The demo's gateway port, when free.
const PORT: u16 = 18080;

pub fn run(duration: Option<f64>) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let orders = Backend::start().context("starting the orders backend")?;
    let inventory = Backend::start().context("starting the inventory backend")?;
    let port = if std::net::TcpListener::bind(("127.0.0.1", PORT)).is_ok() {
        PORT
    } else {
        free_port()
    };
    let dead = free_port();
    let block = demo::nginx_http_block(port, orders.port(), inventory.port(), dead);
    let gateway = Gateway::nginx("demo", 2, &block, port)
        .map_err(anyhow::Error::msg)
        .context("starting the demo gateway")?;
    let catalog = gateway.path("apis.toml");
    std::fs::write(&catalog, demo::CATALOG)?;
    eprintln!(
        "demo: nginx (master PID {}) on http://127.0.0.1:{port}; APIs /orders/, /inventory/ \
         (header apikey: {}), /legacy/ (backend down); Ctrl-C stops everything",
        gateway.master_pid(),
        demo::API_KEY
    );

    let mut observer = start_observer(gateway.master_pid(), &catalog)?;
    let deadline = duration.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let base = format!("http://127.0.0.1:{port}");
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        traffic(&base, round);
        round += 1;
        for _ in 0..10 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        if let Ok(Some(status)) = observer.child.try_wait() {
            bail!("the observer stopped ({status})");
        }
    }
    // It flushes and prints its summary (echoed).
    observer.stop().map_err(anyhow::Error::msg)?;
    drop(gateway);
    eprintln!("demo: stopped the observer, the gateway and the backends");
    Ok(())
}

fn start_observer(pid: u32, catalog: &std::path::Path) -> anyhow::Result<Attached> {
    let mut command = Command::new(observer::binary());
    command
        .args(["attach", "--pid", &pid.to_string(), "--apis"])
        .arg(catalog)
        .stdin(Stdio::null());
    Attached::start(command, true).map_err(anyhow::Error::msg)
}

/// One round of varied traffic: successes with query strings, keep-alive, a POST, and each
/// kind of failure.
fn traffic(base: &str, round: u64) {
    let url = |path: &str| format!("{base}{path}");
    let key = format!("apikey: {}", demo::API_KEY);
    // (curl options, URLs): several URLs in one curl share a keep-alive connection.
    let calls: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec![],
            vec![url(&format!("/orders/items?color=red&page={round}"))],
        ),
        (
            vec![],
            vec![url("/orders/1"), url("/orders/2?expand=lines")],
        ),
        (
            vec!["-d".into(), "{\"item\":42}".into()],
            vec![url("/orders/new")],
        ),
        (
            vec!["-H".into(), key],
            vec![url("/inventory/widgets?warehouse=3")],
        ),
        (vec![], vec![url("/inventory/widgets")]),
        (
            vec!["-H".into(), "apikey: wrong".into()],
            vec![url("/inventory/widgets")],
        ),
        (vec![], vec![url("/legacy/report")]),
        (vec![], vec![url("/my-api/orders")]),
    ];
    for (options, urls) in calls {
        let mut command = Command::new("curl");
        command.args(["-s", "-A", "demo-client/1.0"]).args(&options);
        for url in &urls {
            command.args(["-o", "/dev/null", url]);
        }
        let _ = command.status();
    }
}
