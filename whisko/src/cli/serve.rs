//! `carrier whisko`: Whisko's contexts, event bus and HTTP API in one process.

use std::net::SocketAddr;
use std::process::ExitCode;

use crate::http::WhiskoApi;
use crate::Whisko;
use anyhow::Context;
use carrier_actors::SystemConfig;
use carrier_http::ApiKeys;

/// Arguments of `carrier whisko`; each also from the environment seed 004 names.
#[derive(clap::Args)]
pub struct WhiskoArgs {
    #[command(flatten)]
    nats: carrier_cli::NatsArgs,
    /// Start a nats-server with JetStream on a free loopback port (its store under the data
    /// directory) instead of connecting to --nats-url.
    #[arg(long)]
    local_nats: bool,
    /// The HTTP API's port.
    #[arg(long, env = "PORT", default_value_t = 8085)]
    port: u16,
    /// The address the HTTP API listens on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    host: std::net::IpAddr,
    /// API keys accepted in X-API-Key, comma separated; without any, the API is open (every
    /// endpoint but /health needs one when keys are given).
    #[arg(long, env = "API_KEYS", hide_env_values = true, default_value = "")]
    api_keys: String,
    /// Directory for the projections' files and the event bus's file (the event stores keep
    /// nothing here: their state is in JetStream).
    #[arg(long, env = "DATA_DIR", default_value = "./carrier-data/whisko")]
    data_dir: std::path::PathBuf,
    #[command(flatten)]
    dashboard: carrier_cli::DashboardArgs,
    #[command(flatten)]
    otlp: carrier_cli::OtlpArgs,
}

/// Runs `carrier whisko` until SIGINT or SIGTERM.
pub async fn main(args: WhiskoArgs) -> anyhow::Result<ExitCode> {
    carrier_cli::listen_for_stop();
    carrier_cli::init_logging("info,carrier::flow=warn", false);
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let nats = if args.local_nats {
        carrier_cli::nats_or_local(None, Some(&args.data_dir))?
    } else {
        carrier_cli::nats_or_local(Some(args.nats.options()?), None)?
    };
    let keys = ApiKeys::parse(&args.api_keys);
    let exporter = carrier_cli::start_otlp(&args.otlp).await?;
    let config = SystemConfig::new(nats.options.clone(), &args.data_dir, crate::contexts());
    let whisko = Whisko::start(config).await.context("whisko did not start")?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--port {}: cannot listen on {addr}", args.port))?;
    let addr = listener.local_addr().context("listening address")?;
    let app = crate::http::router(WhiskoApi::of(&whisko), keys.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    });
    let dashboard = carrier_cli::start_dashboard(&args.dashboard, whisko.system.observer()).await?;
    if let Some(dashboard) = &dashboard {
        tracing::info!(url = %format!("{}/", dashboard.url()), "dashboard, JSON API (/api) and metrics (/metrics)");
    }
    tracing::info!(http = %format!("http://{addr}"), nats = %nats.url, data_dir = %args.data_dir.display(),
        api_keys = if keys.is_empty() { "none (open)" } else { "required" },
        "whisko is running; SIGINT or SIGTERM stops it");
    carrier_cli::shutdown_signal().await;
    server.abort();
    let Whisko { system, bus, .. } = whisko;
    carrier_cli::stop_within(async move {
        bus.stop().await;
    })
    .await;
    carrier_cli::stop_running(system, dashboard, exporter).await;
    Ok(ExitCode::SUCCESS)
}
