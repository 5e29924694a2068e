//! `carrier consumer pause|resume|seek|skip <context> <source>`: move a running consumer's
//! position, through the dashboard's API of the carrier that owns it (see
//! `carrier_actors::offsets` for what each does and why it is safe).

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::dashboard_client::DashboardClientArgs;

/// Arguments of `carrier consumer`.
#[derive(clap::Args)]
pub struct ConsumerArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Stop the consumer pulling (nothing is delivered or left pending) until resumed; the
    /// cache keeps serving what it has.
    Pause(Target),
    /// Resume a paused consumer from its checkpoint.
    Resume(Target),
    /// Move the consumer's position to a stream sequence or a time. Backwards is safe (what
    /// comes again is dropped as duplicate or stale); forwards passes over events unapplied.
    Seek(SeekArgs),
    /// Pass over the next events this consumer would get, recording each as a dead letter with
    /// reason `skipped` (`carrier dlq replay` brings them back).
    Skip(SkipArgs),
}

#[derive(clap::Args)]
struct Target {
    /// The consuming context (e.g. baskets).
    context: String,
    /// The context whose stream it reads (e.g. stores).
    source: String,
    #[command(flatten)]
    dashboard: DashboardClientArgs,
    /// Print the dashboard's JSON answer.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["sequence", "time", "ago"])))]
struct SeekArgs {
    #[command(flatten)]
    target: Target,
    /// The stream sequence to deliver next.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    sequence: Option<u64>,
    /// Deliver next the first event stored at or after this time (RFC 3339, e.g.
    /// 2026-12-04T10:00:00Z).
    #[arg(long, value_parser = parse_time)]
    time: Option<time::OffsetDateTime>,
    /// Deliver next the first event stored at most this long ago (e.g. 90s, 15m, 2h, 1d).
    #[arg(long, value_parser = parse_ago, value_name = "DURATION")]
    ago: Option<Duration>,
}

#[derive(clap::Args)]
struct SkipArgs {
    #[command(flatten)]
    target: Target,
    /// How many events to pass over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=carrier_actors::MAX_SKIP as i64))]
    count: u32,
}

fn parse_time(text: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time such as 2026-12-04T10:00:00Z: {e}"))
}

fn parse_ago(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| "a number and a unit: 90s, 15m, 2h or 1d".to_string())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unit {unit:?}: use s, m, h or d (e.g. 15m)")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

pub fn main(args: ConsumerArgs) -> anyhow::Result<ExitCode> {
    let (target, action, body) = match &args.action {
        Action::Pause(target) => (target, "pause", None),
        Action::Resume(target) => (target, "resume", None),
        Action::Seek(seek) => {
            let body = if let Some(seq) = seek.sequence {
                serde_json::json!({ "sequence": seq })
            } else {
                let at = match (seek.time, seek.ago) {
                    (Some(at), _) => at,
                    (None, Some(ago)) => time::OffsetDateTime::from(
                        SystemTime::now().checked_sub(ago).context("--ago reaches before 1970")?,
                    ),
                    (None, None) => anyhow::bail!("give --sequence, --time or --ago"),
                };
                let at = at.format(&time::format_description::well_known::Rfc3339).context("formatting the time")?;
                serde_json::json!({ "time": at })
            };
            (&seek.target, "seek", Some(body))
        }
        Action::Skip(skip) => (&skip.target, "skip", Some(serde_json::json!({ "count": skip.count }))),
    };
    let dashboard = &target.dashboard;
    // A seek or skip waits for the consumer to take it between batches (up to 30 s there).
    let agent = dashboard.agent(Duration::from_secs(40));
    let path = format!("/api/consumers/{}/{}/{action}", target.context, target.source);
    let answer = dashboard.post(&agent, &path, body.as_ref(), 200, action)?;
    if target.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (context, source) = (&target.context, &target.source);
    match action {
        "pause" => println!(
            "{context} paused its consumer of {source}: nothing is pulled until `{} consumer resume {context} {source}`", crate::binary_name()
        ),
        "resume" => println!("{context} resumed its consumer of {source} from its checkpoint"),
        _ => {
            let (from, to) = (answer["from"].as_u64().unwrap_or(0), answer["to"].as_u64().unwrap_or(0));
            println!(
                "{}: next stream sequence {to} (was {from}); the stream holds {}..={}",
                answer["durable"].as_str().unwrap_or_default(),
                answer["first_retained"],
                answer["last_seq"]
            );
            if let Some(skipped) = answer["skipped"].as_array().filter(|s| !s.is_empty()) {
                println!("skipped {} events, each now a dead letter with reason `skipped`:", skipped.len());
                for event in skipped {
                    println!("  {:>10}  {}", event["stream_seq"], event["subject"].as_str().unwrap_or_default());
                }
            } else if to > from {
                println!("{} stream sequences passed over without being applied", to - from);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
