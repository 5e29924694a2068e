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
pub struct LocalNatsServer {
    child: Option<Child>,
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
        let log = dir.join("nats-server.log");
        // A fresh log per start, so the port we read below is this run's.
        let _ = std::fs::remove_file(&log);
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_string());
        let port_arg = port.map(|p| p.to_string()).unwrap_or_else(|| "-1".to_string());
        let mut command = Command::new(&binary);
        if let Some(config) = config {
            command.arg("-c").arg(config);
        }
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
            port: 0,
            dir: dir.to_path_buf(),
            config: config.map(Path::to_path_buf),
            _temp: None,
        };
        server.port = server.wait_ready(&log, Duration::from_secs(20))?;
        Ok(server)
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
