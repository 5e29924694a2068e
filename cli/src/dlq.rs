//! `carrier dlq`: a consuming context's dead letters: list, show, replay, purge.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use carrier_actors::{dead_letter_header as dlq, Bus, DeadLetter};
use carrier_messages::header;

/// Arguments of `carrier dlq`.
#[derive(clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    nats: crate::nats::NatsArgs,
}

#[derive(clap::Subcommand)]
enum Action {
    /// List dead letters, oldest first: sequence, time, reason, subject, event.
    List {
        /// The consuming context.
        context: String,
        /// Start at this sequence of the dead-letter stream.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one dead letter: every header and the body.
    Show {
        /// The consuming context.
        context: String,
        /// Its sequence in the dead-letter stream.
        seq: u64,
    },
    /// Publish dead letters again to their original subjects (same event ids), then delete them.
    Replay {
        /// The consuming context.
        context: String,
        /// Sequences to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        seqs: Vec<u64>,
        /// Replay every dead letter of the context.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters without replaying them.
    Purge {
        /// The consuming context.
        context: String,
        /// Sequences to delete.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        seqs: Vec<u64>,
        /// Delete every dead letter of the context.
        #[arg(long)]
        all: bool,
    },
}

pub async fn main(args: DlqArgs, app: &crate::App) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn", false);
    let named = match &args.action {
        Action::List { context, .. }
        | Action::Show { context, .. }
        | Action::Replay { context, .. }
        | Action::Purge { context, .. } => context.clone(),
    };
    let declared = app.context(&named);
    if let Ok(declared) = &declared {
        if !declared.consumes() {
            bail!("{named} reads no stream, so it has no dead letters");
        }
    }
    let bus = Bus::connect(args.nats.options()?, "carrier-dlq", Duration::from_secs(5)).await?;
    // Not a context, but maybe an event bus (`EventBus`), whose dead letters live in a stream
    // of the same shape: go on if that stream exists.
    if let Err(unknown) = declared {
        let stream = carrier_actors::dead_letter_stream(&named);
        if !matches!(bus.stream_message_count(&stream).await, Ok(Some(_))) {
            return Err(unknown.context(format!("and there is no event bus dead-letter stream {stream} either")));
        }
    }
    match args.action {
        Action::List { context, from, limit } => {
            let letters = bus.dead_letters(&context, from, limit).await?;
            if letters.is_empty() {
                println!("no dead letters for {}", context);
            }
            for letter in letters {
                let envelope = letter.envelope();
                println!(
                    "{:>6}  {}  {:<26} {:<36} {} {}@{}  {}",
                    letter.seq,
                    rfc3339(letter.stored_at_unix_nanos),
                    letter.header(dlq::REASON).unwrap_or("?"),
                    letter.header(dlq::ORIGINAL_SUBJECT).unwrap_or("?"),
                    envelope.as_ref().map(|e| e.event_type.as_str()).unwrap_or("-"),
                    envelope.as_ref().map(|e| e.aggregate_id.as_str()).unwrap_or("-"),
                    envelope.as_ref().map(|e| e.aggregate_version.to_string()).unwrap_or_else(|| "-".into()),
                    clip(letter.header(dlq::ERROR).unwrap_or(""), 80),
                );
            }
        }
        Action::Show { context, seq } => {
            let letter = bus
                .read_dead_letter(&context, seq)
                .await?
                .with_context(|| format!("no dead letter {seq} for {}", context))?;
            show(&letter);
        }
        Action::Replay { context, seqs, all } => {
            let seqs = if all { every_seq(&bus, &context).await? } else { seqs };
            let mut progress = crate::progress::Progress::new(&format!("replay {}", context), seqs.len() as u64);
            for (done, seq) in seqs.iter().enumerate() {
                let receipt = bus.replay_dead_letter(&context, *seq).await?;
                progress.println(&format!("replayed dead letter {seq}: stored at stream seq {}", receipt.stream_seq));
                progress.update(done as u64 + 1, "");
            }
            progress.finish(&format!("{} replayed", seqs.len()));
        }
        Action::Purge { context, seqs, all } => {
            if all {
                let purged = bus.purge_dead_letters(&context, None).await?;
                println!("purged {purged} dead letters of {}", context);
            } else {
                for seq in seqs {
                    if bus.purge_dead_letters(&context, Some(seq)).await? == 0 {
                        bail!("no dead letter {seq} for {}", context);
                    }
                    println!("deleted dead letter {seq}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn every_seq(bus: &Bus, context: &str) -> anyhow::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    let mut from = 1;
    loop {
        let page = bus.dead_letters(context, from, 1000).await?;
        let Some(last) = page.last().map(|l| l.seq) else { break };
        seqs.extend(page.iter().map(|l| l.seq));
        from = last + 1;
    }
    Ok(seqs)
}

fn show(letter: &DeadLetter) {
    println!("dead letter {} on {} at {}", letter.seq, letter.subject, rfc3339(letter.stored_at_unix_nanos));
    for (name, value) in &letter.headers {
        println!("  {name}: {value}");
    }
    let content_type = letter.header(header::CONTENT_TYPE).unwrap_or("application/cloudevents+cbor");
    println!("body ({} bytes, {content_type}):", letter.body.len());
    let as_json = if content_type.contains("json") {
        serde_json::from_slice::<serde_json::Value>(&letter.body).ok()
    } else {
        carrier_messages::cbor::from_slice::<serde_json::Value>(&letter.body).ok()
    };
    match as_json.and_then(|v| serde_json::to_string_pretty(&v).ok()) {
        Some(text) => println!("{text}"),
        None => {
            let hex: Vec<String> = letter.body.iter().take(512).map(|b| format!("{b:02x}")).collect();
            println!("{}{}", hex.join(" "), if letter.body.len() > 512 { " …" } else { "" });
        }
    }
}

fn rfc3339(nanos: i128) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "?".into())
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}
