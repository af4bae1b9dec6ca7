//! A gateway process started for a test, from Debian's packages, with a config of the test's
//! own in a fresh directory, on loopback: nginx (event loops in worker processes), Apache httpd
//! (event MPM: a thread serves a connection), HAProxy (threads that share connections), Caddy
//! (Go: goroutines moved between OS threads) and Varnish (a client thread hands the backend
//! fetch to another thread). Dropping it stops it and waits until its master is gone.
use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::wait_for_port;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Nginx,
    Apache,
    Haproxy,
    Caddy,
    Varnish,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Nginx,
        Kind::Apache,
        Kind::Haproxy,
        Kind::Caddy,
        Kind::Varnish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Apache => "apache",
            Kind::Haproxy => "haproxy",
            Kind::Caddy => "caddy",
            Kind::Varnish => "varnish",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The gateway and its design, for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx 1.22 (2 worker processes, event loops)",
            Kind::Apache => "Apache httpd 2.4 (event MPM, a thread per connection at a time)",
            Kind::Haproxy => "HAProxy 2.6 (2 threads sharing connections)",
            Kind::Caddy => "Caddy 2.6 (Go: goroutines over OS threads)",
            Kind::Varnish => "Varnish 7.1 (pass: a fetch thread per backend call)",
        }
    }
}

pub struct Gateway {
    pub kind: Kind,
    pub dir: PathBuf,
    pub port: u16,
    config: PathBuf,
    /// A gateway that runs in the foreground as our child (Caddy).
    child: Option<Child>,
}

fn fresh_dir(name: &str) -> Result<PathBuf, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "access-log-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("logs")).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        ))
    }
}

fn write(path: &PathBuf, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

impl Gateway {
    fn new(kind: Kind, dir: PathBuf, port: u16, config: PathBuf) -> Gateway {
        Gateway {
            kind,
            dir,
            port,
            config,
            child: None,
        }
    }

    /// Starts nginx (master and `workers` workers) with `http_body` inside its http block;
    /// `port` must be one of the ports it listens on.
    pub fn nginx(name: &str, workers: u32, http_body: &str, port: u16) -> Result<Gateway, String> {
        let dir = fresh_dir(name)?;
        let d = dir.display();
        let config = format!(
            "daemon on;\nmaster_process on;\nworker_processes {workers};\npid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/client_body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{http_body}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        write(&path, &config)?;
        let gateway = Gateway::new(Kind::Nginx, dir, port, path);
        gateway.start_nginx()?;
        Ok(gateway)
    }

    /// nginx with `workers` workers proxying every path to the backend on `backend_port`, on a
    /// port of its own.
    pub fn nginx_proxy(name: &str, workers: u32, backend_port: u16) -> Result<Gateway, String> {
        let port = crate::free_port();
        let block = format!(
            "server {{\n listen 127.0.0.1:{port};\n location / {{ proxy_pass \
             http://127.0.0.1:{backend_port}; }}\n}}\n"
        );
        Gateway::nginx(name, workers, &block, port)
    }

    /// Runs nginx on this gateway's configuration, by its full path: its binary upgrade
    /// (SIGUSR2) executes the path it was started with.
    fn start_nginx(&self) -> Result<(), String> {
        run(Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(&self.config))?;
        wait_for_port(self.port, Duration::from_secs(10))
    }

    /// Stops nginx and starts it again on the same configuration: a new master process.
    pub fn restart_nginx(&mut self) -> Result<(), String> {
        self.stop();
        self.start_nginx()
    }

    /// Starts Apache httpd (event MPM, mod_proxy) with `body` after the base config.
    pub fn apache(name: &str, body: &str, port: u16) -> Result<Gateway, String> {
        let dir = fresh_dir(name)?;
        let d = dir.display();
        let modules = "/usr/lib/apache2/modules";
        let config = format!(
            "ServerRoot {d}\nServerName localhost\nPidFile {d}/httpd.pid\n\
             ErrorLog {d}/logs/error.log\nMutex file:{d}\nDocumentRoot {d}\n\
             LoadModule mpm_event_module {modules}/mod_mpm_event.so\n\
             LoadModule authz_core_module {modules}/mod_authz_core.so\n\
             LoadModule rewrite_module {modules}/mod_rewrite.so\n\
             LoadModule proxy_module {modules}/mod_proxy.so\n\
             LoadModule proxy_http_module {modules}/mod_proxy_http.so\n\
             LoadModule slotmem_shm_module {modules}/mod_slotmem_shm.so\n\
             LoadModule proxy_balancer_module {modules}/mod_proxy_balancer.so\n\
             LoadModule lbmethod_byrequests_module {modules}/mod_lbmethod_byrequests.so\n\
             DefaultRuntimeDir {d}\n\
             User nobody\nGroup nogroup\nStartServers 2\nServerLimit 4\nThreadsPerChild 32\n\
             MaxRequestWorkers 128\nListen 127.0.0.1:{port}\n{body}\n"
        );
        let path = dir.join("httpd.conf");
        write(&path, &config)?;
        let gateway = Gateway::new(Kind::Apache, dir, port, path);
        run(Command::new("apache2")
            .arg("-f")
            .arg(&gateway.config)
            .args(["-k", "start"]))?;
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(gateway)
    }

    /// Starts HAProxy in master-worker mode (the master forks one worker of `threads`
    /// threads), with `body` (frontends and backends) after the global and default sections.
    pub fn haproxy(name: &str, threads: u32, body: &str, port: u16) -> Result<Gateway, String> {
        let dir = fresh_dir(name)?;
        let config = format!(
            "global\n  nbthread {threads}\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  \
             timeout server 60s\n  timeout http-keep-alive 60s\n  option http-keep-alive\n\
             {body}\n"
        );
        let path = dir.join("haproxy.cfg");
        write(&path, &config)?;
        let gateway = Gateway::new(Kind::Haproxy, dir, port, path);
        run(Command::new("haproxy")
            .args(["-W", "-D", "-p"])
            .arg(gateway.pid_file())
            .arg("-f")
            .arg(&gateway.config))?;
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(gateway)
    }

    /// Starts Caddy in the foreground (our child) with `site` blocks after global options that
    /// turn off its admin endpoint and automatic HTTPS.
    pub fn caddy(name: &str, sites: &str, port: u16) -> Result<Gateway, String> {
        let dir = fresh_dir(name)?;
        let config = format!(
            "{{\n  admin off\n  auto_https off\n  storage file_system {}\n}}\n{sites}\n",
            dir.display()
        );
        let path = dir.join("Caddyfile");
        write(&path, &config)?;
        let mut gateway = Gateway::new(Kind::Caddy, dir, port, path);
        let child = Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&gateway.config)
            .env("HOME", &gateway.dir)
            .env("XDG_DATA_HOME", &gateway.dir)
            .env("XDG_CONFIG_HOME", &gateway.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                fs::File::create(gateway.dir.join("logs/caddy.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .map_err(|e| format!("starting caddy: {e}"))?;
        write(&gateway.pid_file(), &child.id().to_string())?;
        gateway.child = Some(child);
        if let Err(e) = wait_for_port(port, Duration::from_secs(20)) {
            let log = fs::read_to_string(gateway.dir.join("logs/caddy.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(format!("caddy did not start: {e}; its log ends: {tail:?}"));
        }
        Ok(gateway)
    }

    /// Starts Varnish (a manager and its worker child) with `vcl`, no cache storage to speak of.
    pub fn varnish(name: &str, vcl: &str, port: u16) -> Result<Gateway, String> {
        let dir = fresh_dir(name)?;
        let path = dir.join("gateway.vcl");
        write(&path, vcl)?;
        let gateway = Gateway::new(Kind::Varnish, dir, port, path);
        run(Command::new("varnishd")
            .args(["-a", &format!("127.0.0.1:{port}"), "-f"])
            .arg(&gateway.config)
            .arg("-n")
            .arg(gateway.dir.join("work"))
            .arg("-P")
            .arg(gateway.pid_file())
            .args([
                "-s",
                "malloc,32m",
                "-p",
                "thread_pools=1",
                "-p",
                "thread_pool_min=200",
                "-p",
                "timeout_idle=60",
            ]))?;
        wait_for_port(port, Duration::from_secs(20))?;
        Ok(gateway)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join(match self.kind {
            Kind::Nginx => "nginx.pid",
            Kind::Apache => "httpd.pid",
            Kind::Haproxy => "haproxy.pid",
            Kind::Caddy => "caddy.pid",
            Kind::Varnish => "varnish.pid",
        })
    }

    /// The master process: what the observer attaches to.
    pub fn master_pid(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = fs::read_to_string(self.pid_file())
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no pid file in {}",
                self.dir.display()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Live worker PIDs (children of the master).
    pub fn workers(&self) -> Vec<u32> {
        let master = self.master_pid();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| parent_of(*pid) == Some(master))
            .collect()
    }

    /// Reloads the configuration: new workers replace the old ones.
    pub fn reload(&self) -> Result<(), String> {
        match self.kind {
            Kind::Nginx => run(Command::new("nginx")
                .arg("-p")
                .arg(&self.dir)
                .arg("-c")
                .arg(&self.config)
                .args(["-s", "reload"])),
            Kind::Apache => run(Command::new("apache2")
                .arg("-f")
                .arg(&self.config)
                .args(["-k", "graceful"])),
            _ => {
                // SAFETY: signalling a process we started.
                unsafe { libc::kill(self.master_pid() as i32, libc::SIGUSR2) };
                Ok(())
            }
        }
    }

    /// A file in the gateway's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        let Some(pid) = fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            return;
        };
        if !alive(pid) {
            return;
        }
        // SAFETY: signalling a process we started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if alive(pid) {
            // SAFETY: as above; the process did not stop in time.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            while alive(pid) && Instant::now() < deadline + Duration::from_secs(5) {
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The parent of a process, from /proc/PID/stat.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is a live process (a zombie waiting to be reaped counts as gone).
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("ACCESS_LOG_KEEP_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// nginx serving catalogued APIs, as the tests of what operators read (metrics, report, top)
/// need it: `/orders/` (Orders:v1) answered by a backend of ours, `/billing/` (Billing:v2)
/// whose backend is down; `locations` adds nginx locations (`@BACKEND@` is the backend's
/// port) and `apis` catalog entries. The catalog is at `apis`.
pub struct ApiGateway {
    pub backend: crate::backend::Backend,
    pub gateway: Gateway,
    pub apis: PathBuf,
    pub port: u16,
}

impl ApiGateway {
    pub fn start(name: &str, locations: &str, apis: &str) -> ApiGateway {
        let backend = crate::backend::Backend::start().expect("a backend");
        let port = crate::free_port();
        let dead = crate::free_port();
        let block = format!(
            "  server {{\n    listen 127.0.0.1:{port};\n    \
             location /orders/ {{ proxy_pass http://127.0.0.1:@BACKEND@; }}\n    \
             location /billing/ {{ proxy_pass http://127.0.0.1:{dead}; }}\n{locations}  }}\n"
        )
        .replace("@BACKEND@", &backend.port().to_string());
        let gateway = Gateway::nginx(name, 1, &block, port).expect("starting nginx");
        let catalog = gateway.dir.join("apis.toml");
        fs::write(
            &catalog,
            format!(
                "[[api]]\nname = \"Orders\"\nversion = \"v1\"\ncontext = \"/orders\"\n\
                 [[api]]\nname = \"Billing\"\nversion = \"v2\"\ncontext = \"/billing\"\n{apis}"
            ),
        )
        .expect("writing the API catalog");
        ApiGateway {
            backend,
            gateway,
            apis: catalog,
            port,
        }
    }
}
