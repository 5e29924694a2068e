//! The end-to-end test harness: a real `nats-server` per test and deadlines instead of sleeps.
//!
//! - [`TestEnv::start`] runs a `nats-server` with JetStream on a free loopback port, its store in
//!   a temporary directory (both gone when the value drops), plus a data directory for redb files.
//! - [`wait_until`] polls a condition until it holds or a deadline passes, and says which.

pub mod browser;
pub mod process;

pub use process::{http, http_get, http_json, http_post, http_post_oversized, CarrierProcess, HttpResponse};

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use carrier_actors::LocalNatsServer;
use carrier_actors::SystemConfig;

/// Every context of the mall, by name.
pub const ALL: [&str; 8] =
    ["stores", "customers", "baskets", "ordering", "depot", "payments", "notifications", "search"];

/// One test's world: a nats-server and a data directory.
pub struct TestEnv {
    /// The server; `kill` and `restart` it to test recovery.
    pub nats: LocalNatsServer,
    data: tempfile::TempDir,
}

impl TestEnv {
    /// Starts a fresh server and makes an empty data directory.
    pub fn start() -> TestEnv {
        init_tracing();
        let nats = LocalNatsServer::start_temporary().expect("nats-server starts (is it installed?)");
        let data = tempfile::Builder::new().prefix("carrier-data-").tempdir().expect("temp dir");
        TestEnv { nats, data }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        self.nats.url()
    }

    /// Where the redb files go.
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }

    /// A config for `contexts` (declarations) against this environment, with a short ack wait
    /// so that redelivery tests finish quickly.
    pub fn config_of(&self, contexts: Vec<carrier_actors::BoundedContext>) -> SystemConfig {
        let mut config = SystemConfig::new(self.url(), self.data_dir(), contexts);
        config.ack_wait = Duration::from_secs(2);
        config
    }

    /// A plain NATS client, as a producer in another language would have.
    pub async fn plain_client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("plain client connects")
    }
}

/// Polls `condition` every 20 ms until it returns `true`, failing with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs go to the test's captured output; `RUST_LOG` picks the level (warnings by default).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// The `carrier` binary built beside the test executable (`scripts/test.sh` builds it first).
pub fn carrier_bin() -> PathBuf {
    workspace_bin("carrier")
}

/// A binary of the workspace (`carrier`, `carrier-chaos`, an example's) built beside the test
/// executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/<name>
    let bin = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join(name);
    assert!(bin.exists(), "{} is missing: build it first (cargo build --workspace)", bin.display());
    bin
}
