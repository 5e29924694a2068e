//! `carrier`: the single-node demo, the long-lived service, and tools for producers and operators.
//!
//! This binary is the only place that sets up a tracing subscriber and the only user of `anyhow`.

mod asyncapi;
mod bench;
mod command;
mod dashboard;
mod demo;
mod dlq;
mod inspect;
mod otel;
mod progress;
mod publish;
mod rebuild;
mod run;
mod server;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

#[derive(Subcommand)]
enum Command {
    /// Run the single-node demo: every context, the order story, and every cache checked.
    Demo(demo::DemoArgs),
    /// Run chosen bounded contexts as a service until SIGINT or SIGTERM.
    Run(run::RunArgs),
    /// Send a command to a context over NATS request/reply and print the reply.
    Command(command::CommandArgs),
    /// Send a query to a context (stores, customers, search) and print the reply.
    Query(command::QueryArgs),
    /// Publish one event given as JSON, as a producer would.
    Publish(publish::PublishArgs),
    /// Print a context's tables (caches, inbox, outbox, checkpoints) from its redb file.
    Inspect(inspect::InspectArgs),
    /// List, show, replay or purge a consuming context's dead letters.
    Dlq(dlq::DlqArgs),
    /// Print the supervision tree, consumers, caches, outboxes and dead letters of a running
    /// carrier, from its dashboard's API.
    Status(status::StatusArgs),
    /// Rebuild a running context's caches from the owners' streams, then swap them in.
    Rebuild(rebuild::RebuildArgs),
    /// Print the AsyncAPI 3.0 document of every stream, subject, event, command and query.
    Asyncapi(asyncapi::AsyncApiArgs),
    /// Measure the cache path against a raw consume-and-ack loop over the same messages.
    Bench(bench::BenchArgs),
}

/// Where the contexts keep their redb files.
#[derive(clap::Args, Clone, Debug)]
pub struct DataDir {
    /// Directory for the contexts' redb files.
    #[arg(long, env = "CARRIER_DATA_DIR", default_value = "./carrier-data")]
    pub data_dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => demo::main(args).await,
            Command::Run(args) => run::main(args).await,
            Command::Publish(args) => publish::main(args).await,
            Command::Command(args) => command::main(args).await,
            Command::Query(args) => command::query(args).await,
            Command::Inspect(args) => inspect::main(args),
            Command::Bench(args) => bench::main(args).await,
            Command::Dlq(args) => dlq::main(args).await,
            Command::Asyncapi(args) => asyncapi::main(args),
            Command::Rebuild(args) => tokio::task::spawn_blocking(move || rebuild::main(args)).await?,
            Command::Status(args) => tokio::task::spawn_blocking(move || status::main(args)).await?,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to `writer`; `RUST_LOG` overrides `default_filter`.
pub fn init_logging(default_filter: &str, to_stdout: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
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
