//! `carrier central`: the central inventory's context and its HTTP API in one process.

use std::net::SocketAddr;
use std::process::ExitCode;

use crate::central::{self, http::CentralApi, Central};
use crate::http::ApiKeys;
use anyhow::Context;
use carrier_actors::{CarrierSystem, ContextHandle, SystemConfig};

/// Arguments of `carrier central`; each also from the environment seed 003 names.
#[derive(clap::Args)]
pub struct CentralArgs {
    #[command(flatten)]
    nats: carrier_cli::NatsArgs,
    /// Start a nats-server with JetStream on a free loopback port (its store under the data
    /// directory) instead of connecting to --nats-url.
    #[arg(long)]
    local_nats: bool,
    /// The HTTP API's port.
    #[arg(long, env = "PORT", default_value_t = 8081)]
    port: u16,
    /// The address the HTTP API listens on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    host: std::net::IpAddr,
    /// API keys accepted in X-API-Key, comma separated (every endpoint but /health needs one).
    #[arg(long, env = "API_KEYS", hide_env_values = true, value_parser = parse_keys)]
    api_keys: ApiKeys,
    /// Directory for central.redb.
    #[arg(long, env = "DATA_DIR", default_value = "./carrier-data/central")]
    data_dir: std::path::PathBuf,
    /// Hours an idempotency key is remembered (a retry after that is decided again).
    #[arg(long, env = "IDEMPOTENCY_RETENTION_HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(1..=8760))]
    idempotency_retention_hours: u32,
    #[command(flatten)]
    dashboard: carrier_cli::DashboardArgs,
}

/// At least one key, none blank.
pub(crate) fn parse_keys(list: &str) -> Result<ApiKeys, String> {
    let keys = ApiKeys::parse(list);
    if keys.is_empty() {
        return Err("name at least one key (comma separated)".into());
    }
    Ok(keys)
}

/// Runs `carrier central` until SIGINT or SIGTERM.
pub async fn main(args: CentralArgs) -> anyhow::Result<ExitCode> {
    carrier_cli::listen_for_stop();
    carrier_cli::init_logging("info,carrier::flow=warn", false);
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let nats = if args.local_nats {
        carrier_cli::nats_or_local(None, Some(&args.data_dir))?
    } else {
        carrier_cli::nats_or_local(Some(args.nats.options()?), None)?
    };
    let mut config = SystemConfig::new(nats.options.clone(), &args.data_dir, vec![central::context()]);
    config.inbox_retention.idempotency_keys =
        std::time::Duration::from_secs(u64::from(args.idempotency_retention_hours) * 3600);
    let system = CarrierSystem::start(config).await.context("the central inventory did not start")?;
    let handle = system.handle::<ContextHandle<Central>>().context("the central context is not running")?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--port {}: cannot listen on {addr}", args.port))?;
    let addr = listener.local_addr().context("listening address")?;
    let app = crate::central::http::router(CentralApi { handle, bus: system.bus.clone() }, args.api_keys);
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    });
    let dashboard = carrier_cli::start_dashboard(&args.dashboard, system.observer()).await?;
    if let Some(dashboard) = &dashboard {
        tracing::info!(url = %format!("{}/", dashboard.url()), "dashboard, JSON API (/api) and metrics (/metrics)");
    }
    tracing::info!(http = %format!("http://{addr}"), nats = %nats.url, data_dir = %args.data_dir.display(),
        "the central inventory is running; SIGINT or SIGTERM stops it");
    carrier_cli::shutdown_signal().await;
    server.abort();
    carrier_cli::stop_running(system, dashboard, None).await;
    Ok(ExitCode::SUCCESS)
}
