//! A gateway process started for a test: nginx or Apache httpd from Debian's packages, with a
//! config of the test's own in a fresh directory, on loopback. Dropping it stops it and waits
//! until its master is gone.
use std::{
    fs,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::wait_for_port;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Apache,
}

pub struct Gateway {
    pub kind: Kind,
    pub dir: PathBuf,
    pub port: u16,
    config: PathBuf,
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
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Gateway {
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
        fs::write(&path, config).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let gateway = Gateway {
            kind: Kind::Nginx,
            dir,
            port,
            config: path,
        };
        run(Command::new("nginx")
            .arg("-p")
            .arg(&gateway.dir)
            .arg("-c")
            .arg(&gateway.config))?;
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(gateway)
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
        fs::write(&path, config).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let gateway = Gateway {
            kind: Kind::Apache,
            dir,
            port,
            config: path,
        };
        run(Command::new("apache2")
            .arg("-f")
            .arg(&gateway.config)
            .args(["-k", "start"]))?;
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(gateway)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join(match self.kind {
            Kind::Nginx => "nginx.pid",
            Kind::Apache => "httpd.pid",
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
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        let rest = s[s.rfind(')')? + 1..].to_owned();
                        rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                    })
                    == Some(master)
            })
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
        }
    }

    /// A file in the gateway's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    pub fn stop(&self) {
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
