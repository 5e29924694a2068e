//! `carrier store-node`: one store's local cache of the central inventory and its HTTP API.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::http::ApiKeys;
use crate::node::{self, http::NodeApi, StoreHandle, StoreNode};
use anyhow::Context;
use carrier_actors::{CarrierSystem, SystemConfig};

/// Arguments of `carrier store-node`; each also from the environment seed 003 names.
#[derive(clap::Args)]
pub struct StoreNodeArgs {
    /// This store's id (`store-s1`): names its data directory and prefixes the idempotency keys
    /// of the writes it proxies.
    #[arg(long, env = "STORE_ID", value_parser = parse_store_id)]
    store_id: String,
    #[command(flatten)]
    nats: carrier_cli::NatsArgs,
    /// The HTTP API's port.
    #[arg(long, env = "PORT", default_value_t = 8083)]
    port: u16,
    /// The address the HTTP API listens on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    host: std::net::IpAddr,
    /// API keys accepted in X-API-Key, comma separated (every endpoint but /health needs one).
    #[arg(long, env = "API_KEYS", hide_env_values = true, value_parser = super::central::parse_keys)]
    api_keys: ApiKeys,
    /// Directory for store.redb [default: ./carrier-data/<store id>].
    #[arg(long, env = "DATA_DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Most events applied per transaction (10 to 500).
    #[arg(long, env = "EVENT_BATCH_LIMIT", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(10..=500))]
    event_batch_limit: u32,
    /// Accepted for seed 003's configurations; no effect on JetStream, which pushes each event
    /// to the node's waiting pull request as it is stored (5 to 60).
    #[arg(long, env = "EVENT_WAIT_TIMEOUT_SECONDS", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(5..=60))]
    event_wait_timeout_seconds: u32,
    /// Accepted for seed 003's configurations; no effect on JetStream: there is no polling
    /// (10 to 300).
    #[arg(long, env = "SYNC_INTERVAL_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(10..=300))]
    sync_interval_seconds: u32,
    /// How often a node in fallback mode (event sync failing 5 times in a row) tries a full sync
    /// from the central, minutes (1 to 1440).
    #[arg(long, env = "SYNC_INTERVAL_MINUTES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1440))]
    sync_interval_minutes: u32,
    /// debug, info, warn or error (RUST_LOG, when set, wins).
    #[arg(long, env = "LOG_LEVEL", default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
    log_level: String,
    #[command(flatten)]
    dashboard: carrier_cli::DashboardArgs,
}

/// 1 to 64 letters, digits, `-` or `_`.
fn parse_store_id(id: &str) -> Result<String, String> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(format!("{id:?} is not a store id: use 1 to 64 letters, digits, '-' or '_'"));
    }
    Ok(id.to_string())
}

/// Runs `carrier store-node` until SIGINT or SIGTERM.
pub async fn main(args: StoreNodeArgs) -> anyhow::Result<ExitCode> {
    carrier_cli::listen_for_stop();
    carrier_cli::init_logging(&format!("{},carrier::flow=warn", args.log_level), false);
    let data_dir = args.data_dir.clone().unwrap_or_else(|| std::path::Path::new("./carrier-data").join(&args.store_id));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    for (set, name) in [
        (args.event_wait_timeout_seconds != 20, "EVENT_WAIT_TIMEOUT_SECONDS"),
        (args.sync_interval_seconds != 30, "SYNC_INTERVAL_SECONDS"),
    ] {
        if set {
            tracing::info!("{name} has no effect on JetStream: events are pushed to the node as they are stored");
        }
    }
    let nats = carrier_cli::nats_or_local(Some(args.nats.options()?), None)?;
    let mut config = SystemConfig::new(nats.options.clone(), &data_dir, vec![node::context()]);
    config.batch_max = args.event_batch_limit as usize;
    if let Ok(spec) = std::env::var("CARRIER_FAULTS") {
        // Failure drills only: see carrier_actors::faults.
        let faults = carrier_actors::Faults::from_spec(&spec).map_err(|e| anyhow::anyhow!("CARRIER_FAULTS: {e}"))?;
        tracing::warn!(%spec, "failure injection is on");
        config.faults = std::sync::Arc::new(faults);
    }
    let system = CarrierSystem::start(config).await.context("the store node did not start")?;
    let handle = system.handle::<StoreHandle>().context("the store cache is not running")?;
    let store = StoreNode::new(args.store_id.clone(), handle, system.bus.clone());
    let monitor = store.start(Duration::from_secs(u64::from(args.sync_interval_minutes) * 60), true);
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--port {}: cannot listen on {addr}", args.port))?;
    let addr = listener.local_addr().context("listening address")?;
    let app = node::http::router(NodeApi::new(store.clone()), args.api_keys);
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    });
    let observer = system.observer();
    let panel = store.clone();
    observer.add_panel(format!("Store node {}", args.store_id), std::sync::Arc::new(move || panel.panel_rows()));
    let dashboard = carrier_cli::start_dashboard(&args.dashboard, observer).await?;
    if let Some(dashboard) = &dashboard {
        tracing::info!(url = %format!("{}/", dashboard.url()), "dashboard, JSON API (/api) and metrics (/metrics)");
    }
    tracing::info!(store = %args.store_id, http = %format!("http://{addr}"), nats = %nats.url, data_dir = %data_dir.display(),
        "the store node is running; SIGINT or SIGTERM stops it");
    carrier_cli::shutdown_signal().await;
    server.abort();
    monitor.abort();
    carrier_cli::stop_running(system, dashboard, None).await;
    Ok(ExitCode::SUCCESS)
}
