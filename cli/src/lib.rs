//! Carrier's command line, as a library: hand it your contexts and your binary gets every
//! subcommand (`run`, `status`, `inspect`, `dlq`, `rebuild`, `asyncapi`, `command`, `query`,
//! `publish`) and the dashboard, for those contexts.
//!
//! ```no_run
//! # fn contexts() -> Vec<carrier_actors::BoundedContext> { Vec::new() }
//! fn main() -> std::process::ExitCode {
//!     carrier_cli::main(contexts())
//! }
//! ```
//!
//! A binary with subcommands of its own (the `carrier` binary composes the mall's `demo` and
//! `bench`) uses [`main_with`]. Whatever the binary is called, its help, hints, configuration
//! file and AsyncAPI title use that name ([`binary_name`]).
//! This crate is the only place that sets up a tracing subscriber and the only user of `anyhow`.

mod asyncapi;
mod command;
mod config;
mod consumer;
mod dashboard;
mod dashboard_client;
mod dlq;
mod duration;
mod inspect;
mod nats;
mod otel;
mod progress;
mod publish;
mod rebuild;
mod run;
mod server;
mod status;

pub use config::ConfigError;
pub use dashboard::{start as start_dashboard, Dashboard, DashboardArgs, DEFAULT_ADDR as DEFAULT_DASHBOARD_ADDR};
pub use duration::parse_duration;
pub use inspect::money;
pub use nats::{NatsArgs, DEFAULT_URL as DEFAULT_NATS_URL};
pub use otel::{start as start_otlp, Exporter, OtlpArgs};
pub use progress::Progress;
pub use run::{listen_for_stop, shutdown_signal, stop_running, stop_within, STOP_LIMIT};
pub use server::{nats_or_local, Nats};

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;

use clap::{ArgMatches, Command as ClapCommand, CommandFactory, FromArgMatches, Parser, Subcommand};

use carrier_actors::BoundedContext;

/// Event-carried state transfer between bounded contexts, on NATS JetStream and redb.
#[derive(Parser)]
#[command(name = "carrier", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text for people or as JSON objects for log pipelines; `RUST_LOG` filters
    /// them (e.g. `RUST_LOG=info,carrier_actors=debug`).
    #[arg(long, value_enum, default_value = "pretty", global = true, env = "CARRIER_LOG_FORMAT")]
    log_format: LogFormat,
    /// A TOML file of settings (keys are the flags' long names; `[run]`, `[demo]`, ... apply to
    /// one subcommand); default ./carrier.toml, then ~/.config/carrier/config.toml, when they
    /// exist. Flags and environment variables win over it.
    #[arg(long, global = true, env = "CARRIER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text for a terminal.
    Pretty,
    /// One JSON object per line, with timestamps and the current span's fields.
    Json,
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

static BINARY_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The name of the running binary (`carrier`, or a user's own, e.g. `inventory`): what its
/// help, its hints, its configuration file and its AsyncAPI title call it.
pub fn binary_name() -> &'static str {
    BINARY_NAME.get_or_init(|| {
        std::env::args_os()
            .next()
            .as_deref()
            .map(std::path::Path::new)
            .and_then(|p| p.file_stem())
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("carrier")
            .to_string()
    })
}

#[derive(Subcommand)]
enum Command {
    /// Run chosen bounded contexts as a service until SIGINT or SIGTERM.
    Run(run::RunArgs),
    /// Send a command to a context over NATS request/reply and print the reply.
    Command(command::CommandArgs),
    /// Send a query to a context and print the reply.
    Query(command::QueryArgs),
    /// Publish one event given as JSON, as a producer would.
    Publish(publish::PublishArgs),
    /// Print a context's tables (caches, inbox, outbox, checkpoints) from its redb file, read-only.
    Inspect(inspect::InspectArgs),
    /// List, show, replay or purge a consuming context's dead letters.
    Dlq(dlq::DlqArgs),
    /// Print the supervision tree, consumers, caches, outboxes and dead letters of a running
    /// carrier, from its dashboard's API.
    Status(status::StatusArgs),
    /// Rebuild a running context's caches from the owners' streams, then swap them in.
    Rebuild(rebuild::RebuildArgs),
    /// Pause, resume, seek or skip a running context's consumer of a stream.
    Consumer(consumer::ConsumerArgs),
    /// Print the AsyncAPI 3.0 document of every stream, subject, event, command and query.
    Asyncapi(asyncapi::AsyncApiArgs),
    /// Print the effective configuration of a command line (default `run`): every setting, its
    /// value and where it came from (flag, environment, file and line, default); secrets masked.
    Config(config::ConfigArgs),
}

/// Where the contexts keep their redb files.
#[derive(clap::Args, Clone, Debug)]
pub struct DataDir {
    /// Directory for the contexts' redb files.
    #[arg(long, env = "CARRIER_DATA_DIR", default_value = "./carrier-data")]
    pub data_dir: PathBuf,
}

/// What every subcommand knows: the contexts this binary declares.
pub struct App {
    /// Every declared context, in start order.
    pub contexts: Vec<BoundedContext>,
}

impl App {
    /// The declaration named `name`, or an error listing the declared names.
    pub fn context(&self, name: &str) -> anyhow::Result<&BoundedContext> {
        Ok(carrier_actors::BoundedContext::find(&self.contexts, name)?)
    }
}

/// A binary's own subcommands' future.
pub type ExtraFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<ExitCode>> + 'a>>;

/// No subcommands beyond Carrier's own.
#[derive(Subcommand)]
pub enum NoExtra {}

/// Parses the command line and runs the subcommand over `contexts`.
pub fn main(contexts: Vec<BoundedContext>) -> ExitCode {
    main_with::<NoExtra>(contexts, |never, _| match never {})
}

/// Like [`main`], with the binary's own subcommands `X` beside Carrier's, run by `extra`.
pub fn main_with<X: Subcommand>(
    contexts: Vec<BoundedContext>,
    extra: impl for<'a> FnOnce(X, &'a App) -> ExtraFuture<'a>,
) -> ExitCode {
    limit_malloc_arenas();
    // Named after the running binary: a user's `inventory --help` says `inventory`.
    let own = Cli::command().name(binary_name()).bin_name(binary_name());
    let about = own.get_about().cloned();
    // The extra enum's doc comment would otherwise replace the binary's description.
    let mut command: ClapCommand = X::augment_subcommands(own);
    if let Some(about) = about {
        command = command.about(about);
    }
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let layered = match config::layer(command, &argv) {
        Ok(layered) => layered,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let matches = layered.command.clone().get_matches_from(argv);
    let format = matches.get_one::<LogFormat>("log_format").copied().unwrap_or(LogFormat::Pretty);
    let _ = LOG_FORMAT.set(format);
    let app = App { contexts };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match parse::<X>(&matches) {
            Ok(Parsed::Extra(x)) => extra(x, &app).await,
            Ok(Parsed::Own(command)) => run_command(command, &app).await,
            Err(e) => e.exit(),
        }
    });
    // A blocking task stuck on a dead server (a flush, an export) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Parsed<X> {
    Own(Command),
    Extra(X),
}

fn parse<X: Subcommand>(matches: &ArgMatches) -> Result<Parsed<X>, clap::Error> {
    match matches.subcommand_name() {
        Some(name) if X::has_subcommand(name) => X::from_arg_matches(matches).map(Parsed::Extra),
        _ => Cli::from_arg_matches(matches).map(|cli| Parsed::Own(cli.command)),
    }
}

async fn run_command(command: Command, app: &App) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run::main(args, app).await,
        Command::Publish(args) => publish::main(args, app).await,
        Command::Command(args) => command::main(args, app).await,
        Command::Query(args) => command::query(args, app).await,
        Command::Inspect(args) => inspect::main(args, app),
        Command::Dlq(args) => dlq::main(args, app).await,
        Command::Asyncapi(args) => asyncapi::main(args, app),
        Command::Config(args) => config::main(args),
        Command::Rebuild(args) => {
            let name = app.context(&args.context)?.name();
            tokio::task::spawn_blocking(move || rebuild::main(args, name)).await?
        }
        Command::Status(args) => tokio::task::spawn_blocking(move || status::main(args)).await?,
        Command::Consumer(args) => tokio::task::spawn_blocking(move || consumer::main(args)).await?,
    }
}

/// Logs to `writer`; `RUST_LOG` overrides `default_filter`.
pub fn init_logging(default_filter: &str, to_stdout: bool) {
    // The client's own connection errors are reported once, by the bus, in Carrier's words
    // (which credentials were refused, the URL without secrets), not twice.
    // Its own connection events ("event: connected") are Carrier's to report, in its words.
    let default_filter = format!("{default_filter},async_nats=warn,async_nats::connector=off");
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.as_str().into());
    if LOG_FORMAT.get() == Some(&LogFormat::Json) {
        let builder = tracing_subscriber::fmt().json().with_env_filter(filter).with_current_span(true);
        let _ = if to_stdout {
            builder.with_writer(std::io::stdout).try_init()
        } else {
            builder.with_writer(std::io::stderr).try_init()
        };
        return;
    }
    use std::io::IsTerminal;
    let ansi = if to_stdout { std::io::stdout().is_terminal() } else { std::io::stderr().is_terminal() };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).without_time().with_ansi(ansi);
    let _ = if to_stdout {
        builder.with_writer(std::io::stdout).try_init()
    } else {
        builder.with_writer(std::io::stderr).try_init()
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

/// At most two glibc malloc arenas. A context's batches, rows and redb's cached pages are
/// allocated and freed on many threads (the runtime's, the writer's blocking threads, a
/// rebuild's), and glibc gives each its own arena, up to eight per core, whose freed memory is
/// never given back: a rebuild of a million cached products peaked at 262 MB resident with the
/// default and 157 MB with two (measured by `carrier bench --scale`; mimalloc and jemalloc did
/// no better than the default). `MALLOC_ARENA_MAX` in the environment still wins.
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called before this process
        // starts any thread of its own, and M_ARENA_MAX is a parameter glibc documents.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
