//! `carrier run`: chosen contexts as a long-lived service.

use std::process::ExitCode;

use anyhow::Context;
use carrier_actors::{CarrierSystem, SystemConfig};

/// Arguments of `carrier run`.
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    nats: crate::nats::NatsArgs,
    /// Start a nats-server with JetStream on a free loopback port (its store under the data
    /// directory) and run against it instead of `--nats-url`: a whole local setup in one command.
    #[arg(long)]
    local_nats: bool,
    #[command(flatten)]
    data: crate::DataDir,
    /// Contexts to run, comma separated (default: every context this binary declares).
    #[arg(long, value_delimiter = ',')]
    contexts: Vec<String>,
    /// Most events applied per transaction.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_max: u32,
    /// How often one event, applied on its own, may make a cache fail before it is dead-lettered.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    poison_threshold: u32,
    /// Memory, in MiB, redb may use to cache each context file's pages (a rebuild's fresh file
    /// gets as much again); beyond it pages come from the operating system's page cache.
    #[arg(long, env = "CARRIER_REDB_CACHE_MB", default_value_t = (carrier_storage::DEFAULT_CACHE_BYTES >> 20) as u32,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    redb_cache_mb: u32,
    /// Copies JetStream keeps of each stream and bucket Carrier creates: 3 on a cluster; when
    /// given, existing streams are changed to it (when not, new ones get 1 and existing ones
    /// keep theirs).
    #[arg(long, env = "CARRIER_STREAM_REPLICAS", value_parser = clap::value_parser!(u8).range(1..=5))]
    stream_replicas: Option<u8>,
    /// Hours a read model instance's own durables may go unpulled (the instance stopped or
    /// paused) before the server deletes them; its checkpoint positions new ones when it returns.
    #[arg(long, env = "CARRIER_READ_MODEL_IDLE_HOURS", default_value_t = 72,
          value_parser = clap::value_parser!(u32).range(1..=8760))]
    read_model_idle_hours: u32,
    /// How long to wait at start for a NATS server that is not there yet (refused, no answer),
    /// e.g. `30s`, `2m`; `0` fails at once. Refused credentials fail at once either way.
    #[arg(long, env = "CARRIER_NATS_WAIT", default_value = "30s", value_parser = parse_wait)]
    nats_wait: std::time::Duration,
    #[command(flatten)]
    dashboard: crate::dashboard::DashboardArgs,
    #[command(flatten)]
    otlp: crate::otel::OtlpArgs,
}

/// A wait: a duration, or `0` for none.
fn parse_wait(text: &str) -> Result<std::time::Duration, String> {
    match text.trim() {
        "0" | "0s" | "0ms" => Ok(std::time::Duration::ZERO),
        other => crate::duration::parse_duration(other),
    }
}

pub async fn main(args: RunArgs, app: &crate::App) -> anyhow::Result<ExitCode> {
    // No line per event by default: the flow log (`carrier::flow`) is the demo's; turn it on with
    // RUST_LOG=info,carrier::flow=info.
    crate::init_logging("info,carrier::flow=warn", false);
    listen_for_stop();
    args.dashboard.check()?;
    let contexts = if args.contexts.is_empty() {
        app.contexts.clone()
    } else {
        carrier_actors::BoundedContext::select(&app.contexts, &args.contexts)?
    };
    let names: Vec<&str> = contexts.iter().map(|c| c.name()).collect();
    let names = names.join(",");
    let nats = if args.local_nats {
        std::fs::create_dir_all(&args.data.data_dir)
            .with_context(|| format!("cannot create {}", args.data.data_dir.display()))?;
        let nats = crate::server::nats_or_local(None, Some(&args.data.data_dir))?;
        println!("nats-server with JetStream at {}", nats.url);
        nats
    } else {
        crate::server::nats_or_local(Some(args.nats.options()?), None)?
    };
    let mut config = SystemConfig::new(nats.options.clone(), &args.data.data_dir, contexts);
    config.batch_max = args.batch_max as usize;
    config.connect_wait = args.nats_wait;
    config.poison_threshold = args.poison_threshold;
    config.cache_bytes = (args.redb_cache_mb as usize) << 20;
    config.stream_replicas = args.stream_replicas.map(usize::from);
    config.read_model_idle = std::time::Duration::from_secs(u64::from(args.read_model_idle_hours) * 3600);
    if let Ok(spec) = std::env::var("CARRIER_FAULTS") {
        // Failure drills only: see actors::faults.
        let faults = carrier_actors::Faults::from_spec(&spec).map_err(|e| anyhow::anyhow!("CARRIER_FAULTS: {e}"))?;
        tracing::warn!(%spec, "failure injection is on");
        config.faults = std::sync::Arc::new(faults);
    }
    let exporter = crate::otel::start(&args.otlp).await?;
    // A signal while starting stops the start (it may be waiting for NATS).
    let system = tokio::select! {
        system = CarrierSystem::start(config) => system.context("carrier did not start")?,
        () = shutdown_signal() => {
            tracing::info!("stopped while starting");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let dashboard = crate::dashboard::start(&args.dashboard, system.observer()).await?;
    if let Some(dashboard) = &dashboard {
        tracing::info!(url = %format!("{}/", dashboard.url()), "dashboard, JSON API (/api) and metrics (/metrics)");
    }
    tracing::info!(
        contexts = %names,
        nats = %nats.url,
        server_version = %system.bus.server_version(),
        data_dir = %args.data.data_dir.display(),
        "{} is running; SIGINT or SIGTERM stops it",
        crate::binary_name()
    );
    shutdown_signal().await;
    stop_running(system, dashboard, exporter).await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Stops the dashboard, the system (consumers after their in-flight batch, relays after a
/// flush) and the exporter, within [`STOP_LIMIT`] (see [`stop_within`]).
pub async fn stop_running(
    system: CarrierSystem,
    dashboard: Option<crate::dashboard::Dashboard>,
    exporter: Option<crate::otel::Exporter>,
) {
    stop_within(async move {
        tracing::info!("stopping: finishing in-flight batches and flushing the outbox");
        if let Some(dashboard) = dashboard {
            dashboard.stop();
        }
        system.shutdown().await;
        if let Some(exporter) = exporter {
            exporter.shutdown().await;
        }
    })
    .await;
}

/// How long a stop may take after SIGINT or SIGTERM.
pub const STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `stop` (after the first SIGINT or SIGTERM) for at most [`STOP_LIMIT`]; a second signal
/// ends it sooner. Either way the process exits at once, with status 1, rather than wait on
/// something that may never come back (a NATS server that is gone, a blocked flush): a stop is
/// bounded whatever the network does.
pub async fn stop_within(stop: impl std::future::Future<Output = ()>) {
    // Listening before the stop starts, so a second signal sent as soon as it began counts.
    let second = signal_listener();
    tokio::select! {
        () = stop => {}
        () = tokio::time::sleep(STOP_LIMIT) => {
            eprintln!("error: not stopped within {} s; exiting without finishing", STOP_LIMIT.as_secs());
            std::process::exit(1);
        }
        () = second => {
            eprintln!("error: a second signal while stopping; exiting without finishing");
            std::process::exit(1);
        }
    }
}

/// A future that ends at the next SIGINT or SIGTERM, listening from the moment it is made.
fn signal_listener() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        #[cfg(unix)]
        match (term, int) {
            (Some(mut term), Some(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => wait_for_signal().await,
        }
        #[cfg(not(unix))]
        wait_for_signal().await;
    }
}

/// Where [`listen_for_stop`] says a stop signal came.
static STOP: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> = std::sync::OnceLock::new();

/// Listens for SIGINT and SIGTERM from now on, for [`shutdown_signal`]: a long-running command
/// calls it first, so that a signal sent while it starts (say, once its consumers have
/// acknowledged something, before it has logged that it runs) stops it cleanly instead of
/// killing it.
pub fn listen_for_stop() {
    let listener = signal_listener();
    let (tx, rx) = tokio::sync::watch::channel(false);
    if STOP.set(rx).is_ok() {
        tokio::spawn(async move {
            listener.await;
            let _ = tx.send(true);
        });
    }
}

/// Waits for SIGINT or SIGTERM (since [`listen_for_stop`] when it was called).
pub async fn shutdown_signal() {
    if let Some(stop) = STOP.get() {
        let mut stop = stop.clone();
        let _ = stop.wait_for(|stopped| *stopped).await;
        return;
    }
    wait_for_signal().await;
}

/// Waits for the next SIGINT or SIGTERM.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
