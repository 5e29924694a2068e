//! `carrier`: Carrier's command line with three applications composed in: the MallBots mall's
//! eight contexts (seed 001), seed 003's central inventory and store nodes, and seed 004's
//! Whisko, plus their own subcommands: `demo` (a story per application, every cache checked),
//! `bench` (the hot paths against the raw limit), `central`, `store-node` and `whisko`.
//!
//! Each application owns its contexts and its subcommands (`carrier_mall::cli`,
//! `carrier_storenodes::cli`, `carrier_whisko::cli`); this binary only composes them on
//! `carrier_cli::main_with`, as a user's binary composes theirs (see `examples/inventory`, which
//! compiles none of these applications).

use std::process::ExitCode;

/// mimalloc rather than glibc's allocator: the hot paths allocate per event from several
/// threads (the NATS reader, the consumer, the writer's blocking thread), and glibc's arenas
/// showed as a tenth of the cache path's profile, lock wake-ups included.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The applications' subcommands beside Carrier's own.
#[derive(clap::Subcommand)]
enum AppCommand {
    /// Run the single-node demo: every context, the order story, and every cache checked.
    Demo(StoryArgs),
    /// Measure the cache path against a raw consume-and-ack loop over the same messages.
    Bench(BenchArgs),
    /// Run seed 003's central inventory: its context (`cmd.central`, `query.central`, the stream
    /// CENTRAL) and its HTTP API.
    Central(carrier_storenodes::cli::central::CentralArgs),
    /// Run one of seed 003's store nodes: a local cache of the central inventory, fed by its
    /// stream, with its HTTP API (reads from the cache, writes proxied to the central).
    StoreNode(carrier_storenodes::cli::store_node::StoreNodeArgs),
    /// Run seed 004's Whisko: users and payments event-sourced on JetStream (`cmd.users`,
    /// `cmd.billing`), their projections (`query.user_views`, `query.payment_views`), the event
    /// bus's mail handlers, and the HTTP API.
    Whisko(carrier_whisko::cli::serve::WhiskoArgs),
}

/// Arguments of `carrier demo`: the story, and the stage every story runs on (the mall's).
#[derive(clap::Args)]
struct StoryArgs {
    /// Which story: the MallBots mall (seed 001), seed 003's store nodes (a central inventory
    /// and two store nodes, each with its HTTP API), or seed 004's Whisko (event-sourced users
    /// and payments, projections, the event bus).
    #[arg(long, value_enum, default_value = "mall")]
    story: Story,
    #[command(flatten)]
    stage: carrier_mall::cli::demo::DemoArgs,
}

/// The demo's stories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Story {
    /// Seed 001: every context of the mall, the order flow, every cache checked.
    Mall,
    /// Seed 003: a central inventory and two store nodes.
    Inventory,
    /// Seed 004: Whisko's event-sourced users and payments, their projections and event bus.
    Whisko,
}

/// Arguments of `carrier bench`.
#[derive(clap::Args)]
struct BenchArgs {
    /// Events to publish and consume per round (one store, its products, then price changes)
    /// [default: 100000; with --scale 1200000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    events: Option<u64>,
    /// Products the price changes are spread over [default: 1000; with --scale 1000000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    products: Option<u64>,
    /// Measure `carrier run` at scale instead: catch-up of `--events` over `--products`, restarts
    /// after SIGTERM and SIGKILL, two rebuilds under a command probe, resident memory throughout.
    #[arg(long)]
    scale: bool,
    /// Measure a store node (seed 003) instead: product reads over HTTP against a static
    /// baseline, with wrk, and the full sync of `--products` products [default: 100000].
    #[arg(long, conflicts_with = "scale")]
    store_node: bool,
    /// Measure seed 004's Whisko instead: commands through decide → append with the expected
    /// sequence → projection visible against bare publishes, by `--connections` writers over
    /// `--products` users [default: 100], and the load of an aggregate of `--history` events
    /// with and without a snapshot.
    #[arg(long, conflicts_with_all = ["scale", "store_node"])]
    whisko: bool,
    /// With --whisko: events of the aggregate whose load is timed.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(2..=10_000_000))]
    history: u64,
    /// With --store-node: seconds of HTTP load per measurement.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    seconds: u32,
    /// With --store-node: wrk's connections; with --whisko: writers at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// With --scale: redb's page cache per file, MiB (as `carrier run --redb-cache-mb`).
    #[arg(long, default_value_t = (carrier_storage::DEFAULT_CACHE_BYTES >> 20) as u32,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    redb_cache_mb: u32,
    /// Most events applied per redb transaction.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_max: u32,
    /// Rounds; the median of each measurement over the rounds is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Events per second offered in the latency measurement.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: u32,
    /// Events published at `--rate` in the latency measurement, per round.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    latency_events: u64,
    /// Owner commands decided in the relay measurement (with --whisko: event-sourced commands),
    /// per round.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    commands: u64,
    /// Print exactly one JSON object on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // Every application's contexts: `carrier run` runs any of them bare, on NATS, and every
    // operator tool sees them.
    let mut contexts = carrier_mall::contexts();
    contexts.extend(carrier_storenodes::contexts());
    contexts.extend(carrier_whisko::contexts());
    carrier_cli::main_with(contexts, |command: AppCommand, _app| {
        Box::pin(async move {
            match command {
                AppCommand::Demo(args) => demo(args).await,
                AppCommand::Bench(args) => bench(args).await,
                AppCommand::Central(args) => carrier_storenodes::cli::central::main(args).await,
                AppCommand::StoreNode(args) => carrier_storenodes::cli::store_node::main(args).await,
                AppCommand::Whisko(args) => carrier_whisko::cli::serve::main(args).await,
            }
        })
    })
}

async fn demo(args: StoryArgs) -> anyhow::Result<ExitCode> {
    if args.story == Story::Mall {
        return carrier_mall::cli::demo::main(args.stage).await;
    }
    let stage = args.stage.stage()?;
    match args.story {
        Story::Whisko => {
            println!("Carrier demo, seed 004's Whisko, on JetStream at {}\n", stage.nats.url);
            carrier_whisko::cli::demo::main(&stage.nats.options, &stage.data_dir, stage.timeout).await
        }
        _ => {
            println!("Carrier demo, seed 003's store nodes, on JetStream at {}\n", stage.nats.url);
            carrier_storenodes::cli::demo::main(&stage.nats.options, &stage.data_dir, stage.timeout).await
        }
    }
}

async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.whisko {
        carrier_cli::init_logging("warn", false);
        return carrier_whisko::cli::bench::main(carrier_whisko::cli::bench::WhiskoBench {
            commands: args.commands,
            users: args.products.unwrap_or(100),
            writers: args.connections,
            history: args.history,
            rounds: args.rounds,
            json: args.json,
        })
        .await;
    }
    if args.store_node {
        carrier_cli::init_logging("warn", false);
        return carrier_storenodes::cli::bench::main(carrier_storenodes::cli::bench::StoreNodeBench {
            products: args.products.unwrap_or(100_000),
            seconds: args.seconds,
            connections: args.connections,
            rounds: args.rounds,
            json: args.json,
        })
        .await;
    }
    carrier_mall::cli::bench::main(carrier_mall::cli::bench::MallBench {
        events: args.events,
        products: args.products,
        scale: args.scale,
        redb_cache_mb: args.redb_cache_mb,
        batch_max: args.batch_max,
        rounds: args.rounds,
        rate: args.rate,
        latency_events: args.latency_events,
        commands: args.commands,
        json: args.json,
    })
    .await
}

#[cfg(test)]
mod tests {
    /// The composed subcommands' flags are consistent (clap checks them only when a subcommand
    /// is parsed, so a clash would otherwise surface as a panic of `carrier demo`).
    #[test]
    fn the_composed_command_line_is_consistent() {
        use clap::Subcommand;
        super::AppCommand::augment_subcommands(clap::Command::new("carrier")).debug_assert();
    }
}
