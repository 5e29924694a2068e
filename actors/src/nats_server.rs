//! A `nats-server` child process with JetStream, on a loopback port, with its store in a
//! directory of its own. The demo starts one when no server URL is given; the test harness starts
//! one per test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    /// The binary is missing.
    #[error("cannot run {binary:?}: {source} (install it with `apt-get install nats-server`, or set NATS_SERVER_BIN)")]
    Spawn {
        /// The program tried.
        binary: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It started but did not get ready.
    #[error("nats-server did not get ready within {waited:?}; last log lines:\n{log_tail}")]
    NotReady {
        /// How long we waited.
        waited: Duration,
        /// The end of its log.
        log_tail: String,
    },
    /// The store directory could not be made.
    #[error("cannot prepare {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A running `nats-server`; killed, and its temporary directory removed, on drop.
///
/// A server started in a directory of its own (`start_in`) dies with the process that started
/// it (Linux: the parent-death signal), and records its pid and port in `server.json` there,
/// so that the next start on the same store reuses a server a crash left running instead of
/// starting a second one on the same JetStream store, and other commands find it
/// ([`LocalNatsServer::recorded_url`]).
pub struct LocalNatsServer {
    child: Option<Child>,
    /// A server found running on this store (left by a process that died), adopted: killed by
    /// pid when this one is.
    adopted: Option<u32>,
    port: u16,
    dir: PathBuf,
    /// The configuration file it was started with, if any (a restart uses it again).
    config: Option<PathBuf>,
    _temp: Option<tempfile::TempDir>,
}

impl LocalNatsServer {
    /// Starts a server on a free loopback port with its store in a new temporary directory.
    pub fn start_temporary() -> Result<Self, NatsServerError> {
        let temp = tempfile::Builder::new()
            .prefix("carrier-nats-")
            .tempdir()
            .map_err(|source| NatsServerError::Dir { path: std::env::temp_dir(), source })?;
        let dir = temp.path().to_path_buf();
        let mut server = Self::start_in(&dir, None)?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// Starts a server like [`start_temporary`](Self::start_temporary) with `config` (nats-server's
    /// configuration syntax: `authorization { ... }`, `tls { ... }`) written to a file beside its
    /// store: how the tests run servers that require credentials or TLS.
    pub fn start_temporary_with_config(config: &str) -> Result<Self, NatsServerError> {
        let temp = tempfile::Builder::new()
            .prefix("carrier-nats-")
            .tempdir()
            .map_err(|source| NatsServerError::Dir { path: std::env::temp_dir(), source })?;
        let dir = temp.path().to_path_buf();
        let file = dir.join("server.conf");
        std::fs::write(&file, config).map_err(|source| NatsServerError::Dir { path: file.clone(), source })?;
        let mut server = Self::start_with(&dir, None, Some(&file))?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// Starts a server with its store in `dir` (kept after it stops), on `port` or a free one.
    pub fn start_in(dir: &Path, port: Option<u16>) -> Result<Self, NatsServerError> {
        Self::start_with(dir, port, None)
    }

    fn start_with(dir: &Path, port: Option<u16>, config: Option<&Path>) -> Result<Self, NatsServerError> {
        std::fs::create_dir_all(dir).map_err(|source| NatsServerError::Dir { path: dir.to_path_buf(), source })?;
        if let Some(record) = Record::running(dir).filter(|r| port.is_none_or(|p| p == r.port)) {
            tracing::warn!(pid = record.pid, port = record.port, "reusing the nats-server left running on this store");
            return Ok(LocalNatsServer {
                child: None,
                adopted: Some(record.pid),
                port: record.port,
                dir: dir.to_path_buf(),
                config: config.map(Path::to_path_buf),
                _temp: None,
            });
        }
        let log = dir.join("nats-server.log");
        // A fresh log per start, so the port we read below is this run's.
        let _ = std::fs::remove_file(&log);
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_string());
        let port_arg = port.map(|p| p.to_string()).unwrap_or_else(|| "-1".to_string());
        let mut command = Command::new(&binary);
        if let Some(config) = config {
            command.arg("-c").arg(config);
        }
        die_with_parent(&mut command);
        let child = command
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "--store_dir"])
            .arg(dir.join("jetstream"))
            .arg("--log")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| NatsServerError::Spawn { binary: binary.clone(), source })?;
        let mut server = LocalNatsServer {
            child: Some(child),
            adopted: None,
            port: 0,
            dir: dir.to_path_buf(),
            config: config.map(Path::to_path_buf),
            _temp: None,
        };
        server.port = server.wait_ready(&log, Duration::from_secs(20))?;
        if let Some(child) = &server.child {
            Record { pid: child.id(), port: server.port }.write(dir);
        }
        Ok(server)
    }

    /// The URL of the server recorded as running on the store in `dir` (as `start_in` left it),
    /// if it still runs: how `command`, `query` and the rest find the server of `run
    /// --local-nats` without being told its port.
    pub fn recorded_url(dir: &Path) -> Option<String> {
        Record::running(dir).map(|r| format!("nats://127.0.0.1:{}", r.port))
    }

    fn wait_ready(&mut self, log: &Path, limit: Duration) -> Result<u16, NatsServerError> {
        let started = Instant::now();
        let marker = "Listening for client connections on ";
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let port = text
                .lines()
                .find_map(|l| l.split(marker).nth(1))
                .and_then(|addr| addr.trim().rsplit(':').next())
                .and_then(|p| p.trim().parse::<u16>().ok());
            if let (Some(port), true) = (port, text.contains("Server is ready")) {
                return Ok(port);
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()).is_some();
            if exited || started.elapsed() > limit {
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let log_tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                return Err(NatsServerError::NotReady { waited: started.elapsed(), log_tail });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the store and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            Record::remove(&self.dir);
        }
        if let Some(pid) = self.adopted.take() {
            kill_pid(pid);
            Record::remove(&self.dir);
        }
    }

    /// Starts the server again on the same port and store (after [`kill`](Self::kill)).
    pub fn restart(&mut self) -> Result<(), NatsServerError> {
        self.kill();
        let mut again = Self::start_with(&self.dir, Some(self.port), self.config.as_deref())?;
        self.child = again.child.take();
        Ok(())
    }
}

/// A JetStream cluster of nats-servers on loopback, each with its store in a directory of its
/// own: how the tests try Carrier against replicated streams and a node that dies. Nodes are
/// named `n0`, `n1`, ... (the names JetStream reports as stream leaders).
pub struct LocalNatsCluster {
    /// The nodes, in name order; `kill` and `restart` one to test failover.
    pub nodes: Vec<LocalNatsServer>,
    _temp: tempfile::TempDir,
}

impl LocalNatsCluster {
    /// Starts `size` servers routed to each other as one cluster.
    pub fn start(size: usize) -> Result<Self, NatsServerError> {
        let temp = tempfile::Builder::new()
            .prefix("carrier-nats-cluster-")
            .tempdir()
            .map_err(|source| NatsServerError::Dir { path: std::env::temp_dir(), source })?;
        let route_ports =
            free_ports(size).map_err(|source| NatsServerError::Dir { path: temp.path().into(), source })?;
        let mut nodes = Vec::with_capacity(size);
        for (i, port) in route_ports.iter().enumerate() {
            let dir = temp.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir).map_err(|source| NatsServerError::Dir { path: dir.clone(), source })?;
            let routes: Vec<String> = route_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            let config = format!(
                "server_name: n{i}\ncluster {{\n  name: carrier-test\n  listen: 127.0.0.1:{port}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            );
            let file = dir.join("server.conf");
            std::fs::write(&file, config).map_err(|source| NatsServerError::Dir { path: file.clone(), source })?;
            nodes.push(LocalNatsServer::start_with(&dir, None, Some(&file))?);
        }
        Ok(LocalNatsCluster { nodes, _temp: temp })
    }

    /// Every node's URL, comma separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(LocalNatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// The node JetStream calls `name` (`n0`, `n1`, ...).
    pub fn node_named(&mut self, name: &str) -> Option<&mut LocalNatsServer> {
        let index: usize = name.strip_prefix('n')?.parse().ok()?;
        self.nodes.get_mut(index)
    }
}

/// `count` loopback ports that were free a moment ago (a cluster's routes must be known before
/// its servers start).
fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..count).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect()
}

impl Drop for LocalNatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `server.json` beside a local server's store: its pid and port.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    pid: u32,
    port: u16,
}

impl Record {
    const FILE: &'static str = "server.json";

    fn write(&self, dir: &Path) {
        if let Ok(text) = serde_json::to_string(self) {
            let _ = std::fs::write(dir.join(Self::FILE), text);
        }
    }

    fn remove(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(Self::FILE));
    }

    /// The record of `dir`, if its server still runs there: the pid is a nats-server whose
    /// command line names this store, and its port answers.
    fn running(dir: &Path) -> Option<Record> {
        let record: Record = serde_json::from_str(&std::fs::read_to_string(dir.join(Self::FILE)).ok()?).ok()?;
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", record.pid)).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let store = dir.join("jetstream");
        if !cmdline.contains("nats-server") || !cmdline.contains(store.to_string_lossy().as_ref()) {
            return None;
        }
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], record.port));
        std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
        Some(record)
    }
}

/// Asks Linux to SIGTERM the server when the thread that started it ends: when `carrier run
/// --local-nats` or `demo` is SIGKILLed, its server goes with it instead of holding the store
/// (the next start would run a second server on it). Only from the process's main thread,
/// which lives as long as the process: the signal follows the thread, not the process.
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    if std::thread::current().name() == Some("main") {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent's memory.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// SIGKILLs `pid` and waits (at most 5 s) until it is gone.
fn kill_pid(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a pid we recorded as our server's.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
