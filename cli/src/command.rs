//! `carrier command`: send a command to a context over NATS request/reply and print the reply.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use carrier_actors::Bus;
use carrier_messages::header;
use carrier_messages::{command_subject, query_subject, CommandReply};

/// Arguments of `carrier command`.
#[derive(clap::Args)]
pub struct CommandArgs {
    /// The context (one that takes commands, e.g. stores).
    context: String,
    /// The command as JSON, e.g. '{"command":"create_store","id":"s-1","name":"Corner Shop","location":"North"}'.
    command: String,
    /// Correlation id to carry into the recorded event.
    #[arg(long)]
    correlation_id: Option<String>,
    /// How long to wait for the reply, e.g. `10s`, `500ms` (a bare number is seconds). Longer
    /// than a read's own wait for a position (5 s), so that its answer arrives.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse_duration)]
    timeout: Duration,
    /// Print the reply as one line of JSON, for scripts (readable, indented JSON otherwise).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: crate::nats::NatsArgs,
}

/// Refuses a context this binary does not declare, or one without `kind` endpoints.
fn check_endpoint(app: &crate::App, context: &str, kind: &str) -> anyhow::Result<()> {
    let declared = app.context(context)?;
    if !declared.endpoints().iter().any(|e| e.kind == kind) {
        let with: Vec<&str> =
            app.contexts.iter().filter(|c| c.endpoints().iter().any(|e| e.kind == kind)).map(|c| c.name()).collect();
        let what = if kind == "cmd" { "commands" } else { "queries" };
        anyhow::bail!("{context} takes no {what} (contexts with {what}: {})", with.join(", "));
    }
    Ok(())
}

pub async fn main(args: CommandArgs, app: &crate::App) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn", false);
    check_endpoint(app, &args.context, "cmd")?;
    let body: serde_json::Value = serde_json::from_str(&args.command).context("the command is not JSON")?;
    let bus = Bus::connect(args.nats.options()?, "carrier-command", Duration::from_secs(5)).await?;
    let mut headers = vec![(header::CONTENT_TYPE.to_string(), "application/json".to_string())];
    if let Some(id) = args.correlation_id {
        headers.push((header::CORRELATION_ID.to_string(), id));
    }
    let subject = command_subject(&args.context);
    let reply = bus
        .request(&subject, &headers, serde_json::to_vec(&body)?, args.timeout)
        .await
        .with_context(|| format!("is the {} context running?", args.context))?;
    let parsed: CommandReply = serde_json::from_slice(&reply).context("the reply is not a command reply")?;
    print_reply(&serde_json::to_value(&parsed)?, args.json)?;
    Ok(if parsed.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Arguments of `carrier query`.
#[derive(clap::Args)]
pub struct QueryArgs {
    /// The context (one that answers queries, e.g. stores).
    context: String,
    /// The query as JSON, e.g. '{"query":"search_orders","status":"completed","limit":10}'.
    query: String,
    /// How long to wait for the reply, e.g. `10s`, `500ms` (a bare number is seconds). Longer
    /// than a read's own wait for a position (5 s), so that its answer arrives.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse_duration)]
    timeout: Duration,
    /// Print the reply as one line of JSON, for scripts (readable, indented JSON otherwise).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: crate::nats::NatsArgs,
}

/// Sends a query to `query.<context>` and prints the reply as JSON; fails when it is not `ok`.
pub async fn query(args: QueryArgs, app: &crate::App) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn", false);
    check_endpoint(app, &args.context, "query")?;
    let body: serde_json::Value = serde_json::from_str(&args.query).context("the query is not JSON")?;
    let bus = Bus::connect(args.nats.options()?, "carrier-query", Duration::from_secs(5)).await?;
    let headers = vec![(header::CONTENT_TYPE.to_string(), "application/json".to_string())];
    let reply = bus
        .request(&query_subject(&args.context), &headers, serde_json::to_vec(&body)?, args.timeout)
        .await
        .with_context(|| format!("is the {} context running?", args.context))?;
    let parsed: serde_json::Value = serde_json::from_slice(&reply).context("the reply is not JSON")?;
    print_reply(&parsed, args.json)?;
    let ok = parsed.get("ok").and_then(|v| v.as_bool()).unwrap_or(false);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints a command's or a query's reply the same way: one line with `--json`, indented
/// otherwise.
fn print_reply(reply: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    let text = if json { serde_json::to_string(reply)? } else { serde_json::to_string_pretty(reply)? };
    println!("{text}");
    Ok(())
}
