//! `carrier bench --whisko`: seed 004's write path and aggregate loads, each against a baseline
//! run in the same process on the same server and client.
//!
//! - Commands: `--connections` writers each decide a profile update on one of `--products`
//!   users, append it with the expected last subject sequence, and wait until the `user_views`
//!   projection has applied it (decide → append → visible). The baseline is the bare limit:
//!   the same number of writers each publishing a message of the same size and awaiting its
//!   PublishAck, nothing else.
//! - Loads: one user with `--history` events (10,000 by default), loaded from its first event
//!   and from a snapshot.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::{UserProfileUpdated, UsersEvent};
use crate::users::UsersCommand;
use crate::Whisko;
use anyhow::{bail, Context};
use carrier_actors::{Position, SystemConfig};
use carrier_messages::Causality;
use carrier_messages::Decoded;

/// What `carrier bench --whisko` is told.
pub struct WhiskoBench {
    /// Commands per round.
    pub commands: u64,
    /// Users the commands are spread over.
    pub users: u64,
    /// Writers at once.
    pub writers: u32,
    /// Events of the aggregate whose load is timed.
    pub history: u64,
    /// Rounds; medians are reported.
    pub rounds: u32,
    /// One JSON object on stdout.
    pub json: bool,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Runs `carrier bench --whisko`.
pub async fn main(args: WhiskoBench) -> anyhow::Result<ExitCode> {
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    };
    let profile = if cfg!(debug_assertions) { "debug (build with --release for real figures)" } else { "release" };
    say(format!(
        "carrier bench --whisko: {} commands over {} users by {} writers, an aggregate of {} events, {} round(s), {profile} build",
        args.commands, args.users, args.writers, args.history, args.rounds
    ));
    let nats = carrier_cli::nats_or_local(None, None)?;
    let dir = tempfile::Builder::new().prefix("carrier-bench-whisko-").tempdir().context("temp dir")?;
    let whisko = Whisko::start(SystemConfig::new(nats.options.clone(), dir.path(), crate::contexts()))
        .await
        .context("whisko did not start")?;
    let bus = whisko.system.bus.clone();
    bus.ensure_stream("BENCH_BARE", "bench_bare.>").await?;

    let run = uuid::Uuid::now_v7().simple().to_string();
    let ids: Arc<Vec<String>> = Arc::new((0..args.users).map(|n| format!("bench-{}-{n}", &run[..12])).collect());
    for id in ids.iter() {
        let create = UsersCommand::CreateUser {
            id: id.clone(),
            name: "Bench User".into(),
            email: "bench@whisko.example".into(),
            phone: String::new(),
            address: String::new(),
        };
        whisko
            .users
            .execute(create, Causality::default())
            .await
            .map_err(|e| anyhow::anyhow!("creating a bench user: {e}"))?;
    }
    // A message of a profile update's size, for the baseline.
    let sample = Decoded::new(
        UsersEvent::UserProfileUpdated(UserProfileUpdated {
            id: ids[0].clone(),
            name: "Bench User 000000".into(),
            address: "Street 000000".into(),
        }),
        2,
        &Causality::default(),
    )
    .encode()?;

    let (mut bare, mut commands, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        // Baseline: bare publishes with their acks, the same writers at once.
        let started = Instant::now();
        let per_writer = args.commands / u64::from(args.writers);
        let mut tasks = Vec::new();
        for w in 0..args.writers {
            let (bus, mut message) = (bus.clone(), sample.clone());
            message.subject = format!("bench_bare.w{w}");
            message.headers.clear();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_writer {
                    bus.publish(&message).await?;
                }
                Ok::<_, carrier_actors::BusError>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let bare_rate = (per_writer * u64::from(args.writers)) as f64 / started.elapsed().as_secs_f64();

        // Commands: decide, append with the expected sequence, wait until the projection has it.
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..args.writers {
            let (store, views, ids) = (whisko.users.clone(), whisko.user_views.clone(), ids.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_writer as usize);
                for n in 0..per_writer {
                    let id = ids[((u64::from(w) * per_writer + n) % ids.len() as u64) as usize].clone();
                    let t = Instant::now();
                    let command = UsersCommand::UpdateProfile {
                        id,
                        name: format!("Bench User {n:06}"),
                        address: format!("Street {round:03}{w:03}"),
                    };
                    let decided =
                        store.execute(command, Causality::default()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    let position: Position =
                        decided.position.as_deref().unwrap_or_default().parse().map_err(anyhow::Error::msg)?;
                    views
                        .wait_for_position(&position, Duration::from_secs(30))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            }));
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await??);
        }
        let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
        latencies.sort();
        let (l50, l99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        say(format!(
            "round {round}: bare publish+ack {bare_rate:.0}/s; commands decide→append→visible {rate:.0}/s ({:.2} of bare), p50 {l50:.2} ms, p99 {l99:.2} ms",
            rate / bare_rate
        ));
        bare.push(bare_rate);
        commands.push(rate);
        p50.push(l50);
        p99.push(l99);
    }
    let conflicts = whisko.users.stats().conflicts.load(std::sync::atomic::Ordering::Relaxed);

    // Loads: one user with a long history, written fast (pipelined publishes of versions 2..N on
    // its subject, as the event store would have appended them one by one).
    let long = format!("bench-{}-long", &run[..12]);
    let create = UsersCommand::CreateUser {
        id: long.clone(),
        name: "Long History".into(),
        email: "long@whisko.example".into(),
        phone: String::new(),
        address: String::new(),
    };
    whisko.users.execute(create, Causality::default()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let history: Vec<_> = (2..=args.history.max(2))
        .map(|v| {
            Decoded::new(
                UsersEvent::UserProfileUpdated(UserProfileUpdated {
                    id: long.clone(),
                    name: format!("Name {v}"),
                    address: String::new(),
                }),
                v,
                &Causality::default(),
            )
            .encode()
        })
        .collect::<Result<_, _>>()?;
    bus.publish_many(&history, 1024).await?;
    let (mut plain, mut snapped) = (Vec::new(), Vec::new());
    let mut replayed_from_snapshot = 0;
    for _ in 0..args.rounds.max(3) {
        let t = Instant::now();
        let loaded = whisko.users.load_with(&long, false).await?;
        plain.push(t.elapsed().as_secs_f64() * 1000.0);
        if loaded.version != args.history.max(2) {
            bail!("the long aggregate loaded at version {}, not {}", loaded.version, args.history);
        }
    }
    whisko.users.snapshot_now(&long).await?;
    for _ in 0..args.rounds.max(3) {
        let t = Instant::now();
        let loaded = whisko.users.load_with(&long, true).await?;
        snapped.push(t.elapsed().as_secs_f64() * 1000.0);
        if !loaded.from_snapshot || loaded.version != args.history.max(2) {
            bail!("the snapshot was not used (from_snapshot {}, version {})", loaded.from_snapshot, loaded.version);
        }
        replayed_from_snapshot = loaded.replayed;
    }
    let (plain, snapped) = (median(plain), median(snapped));

    let (bare, commands, p50, p99) = (median(bare), median(commands), median(p50), median(p99));
    say(format!("\ncommands decide→append→projection visible: {commands:.0}/s, {:.2} of bare publish+ack ({bare:.0}/s); p50 {p50:.2} ms, p99 {p99:.2} ms; {conflicts} conflicts retried", commands / bare));
    say(format!(
        "aggregate of {} events: load from its first event {plain:.1} ms, from a snapshot {snapped:.2} ms ({replayed_from_snapshot} events after it): {:.1}x faster",
        args.history,
        plain / snapped.max(0.001)
    ));
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "whisko",
                "commands": args.commands, "users": args.users, "writers": args.writers, "rounds": args.rounds,
                "bare_publish_per_second": bare,
                "commands_visible_per_second": commands,
                "commands_ratio_to_bare": commands / bare,
                "command_visible_p50_ms": p50,
                "command_visible_p99_ms": p99,
                "conflicts_retried": conflicts,
                "history_events": args.history,
                "load_without_snapshot_ms": plain,
                "load_with_snapshot_ms": snapped,
                "snapshot_speedup": plain / snapped.max(0.001),
            })
        );
    }
    whisko.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
