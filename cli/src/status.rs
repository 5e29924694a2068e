//! `carrier status`: the dashboard's tree and tables in the terminal, read from its JSON API, in
//! the spirit of `nats consumer report`.

use std::process::ExitCode;

use anyhow::Context;
use carrier_actors::Snapshot;

/// Arguments of `carrier status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// The dashboard of a running `carrier run` or `carrier demo`.
    #[arg(long, env = "CARRIER_DASHBOARD_URL", default_value = "http://127.0.0.1:7878")]
    url: String,
    /// Print the snapshot as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// Prints the status; exits 0 when healthy, 1 when degraded or failed.
pub fn main(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/api/snapshot", args.url.trim_end_matches('/'));
    let body = ureq::get(&url)
        .call()
        .with_context(|| {
            format!("cannot reach the dashboard at {url} (is `{} run` serving it?)", crate::binary_name())
        })?
        .body_mut()
        .read_to_string()
        .context("reading the snapshot")?;
    let snapshot: Snapshot =
        serde_json::from_str(&body).with_context(|| format!("{url} did not answer with a Carrier snapshot"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        print!("{}", render(&snapshot));
    }
    Ok(if snapshot.health.status == "healthy" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The report as text.
pub fn render(s: &Snapshot) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let nats = if s.health.nats_connected { "connected" } else { "DISCONNECTED" };
    let _ = writeln!(out, "Carrier {} at {}: {} (NATS {nats})", s.version, s.taken_at, s.health.status.to_uppercase());
    if !s.instance.id.is_empty() {
        let list = |names: &[String]| if names.is_empty() { "none".to_string() } else { names.join(", ") };
        let _ = writeln!(
            out,
            "Instance {} (durables ...-{}): leases {}; read models {}{}",
            s.instance.id,
            s.instance.durable_suffix,
            list(&s.instance.leases),
            list(&s.instance.read_models),
            if s.instance.standing_by.is_empty() {
                String::new()
            } else {
                format!("; standing by for {}", s.instance.standing_by.join(", "))
            }
        );
        for lease in &s.instance.all_leases {
            let mine = if lease.mine { " (this instance)" } else { "" };
            let _ = writeln!(out, "  lease {}: {}{mine}", lease.context, lease.holder);
        }
    }
    for (context, health) in &s.health.contexts {
        if let carrier_actors::Health::Degraded(reason) | carrier_actors::Health::Failed(reason) = health {
            let _ = writeln!(out, "  {context}: {reason}");
        }
    }

    let _ = writeln!(out, "\nSupervision tree");
    let rows: Vec<Vec<String>> = s
        .tree
        .iter()
        .map(|a| {
            vec![
                format!("{}{}", "  ".repeat(a.depth), a.name),
                format!("{:?}", a.state).to_lowercase(),
                a.restarts.to_string(),
                a.uptime_seconds.map(|u| format!("{u}s")).unwrap_or_default(),
                a.last_failure.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&mut out, &["ACTOR", "STATE", "RESTARTS", "UPTIME", "LAST FAILURE"], &rows, &[2, 3]);

    let _ = writeln!(out, "\nConsumers");
    let rows: Vec<Vec<String>> = s
        .consumers
        .iter()
        .map(|c| {
            vec![
                c.context.clone(),
                c.stream.clone(),
                c.durable.clone(),
                c.delivered_stream_seq.to_string(),
                c.ack_floor_stream_seq.to_string(),
                c.pending.to_string(),
                c.ack_pending.to_string(),
                c.redelivered.to_string(),
                c.counters.applied.to_string(),
                c.counters.duplicates.to_string(),
                format!("{:.0}", c.rate_per_second),
                match (c.paused, &c.server_error) {
                    (_, Some(error)) => error.clone(),
                    (true, None) => "PAUSED (carrier consumer resume)".to_string(),
                    (false, None) => String::new(),
                },
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "CONTEXT",
            "STREAM",
            "DURABLE",
            "DELIVERED",
            "ACK FLOOR",
            "PENDING",
            "ACK PENDING",
            "REDELIVERED",
            "APPLIED",
            "DUPLICATES",
            "MSG/S",
            "NOTE",
        ],
        &rows,
        &[3, 4, 5, 6, 7, 8, 9, 10],
    );

    let _ = writeln!(out, "\nCaches");
    let rows: Vec<Vec<String>> = s
        .caches
        .iter()
        .map(|c| {
            let tables: Vec<String> = c
                .tables
                .iter()
                .filter(|t| t.table.ends_with("_cache") || !is_engine_table(&t.table))
                .map(|t| format!("{}={}", t.table, t.rows))
                .collect();
            let fallbacks: Vec<String> = c
                .fallbacks
                .iter()
                .map(|f| format!("{} {}/{}/{} {:?}", f.owner, f.ok, f.failed, f.rejected, f.breaker).to_lowercase())
                .collect();
            vec![
                c.context.clone(),
                c.inbox.to_string(),
                c.parked.to_string(),
                c.hits.to_string(),
                c.misses.to_string(),
                fallbacks.join(", "),
                c.error.clone().unwrap_or_else(|| tables.join(" ")),
            ]
        })
        .collect();
    table(
        &mut out,
        &["CONTEXT", "INBOX", "PARKED", "HITS", "MISSES", "FALLBACKS ok/failed/rejected", "TABLES"],
        &rows,
        &[1, 2, 3, 4],
    );

    let _ = writeln!(out, "\nOutbox");
    let rows: Vec<Vec<String>> = s
        .outbox
        .iter()
        .map(|o| vec![o.context.clone(), o.backlog.to_string(), o.error.clone().unwrap_or_default()])
        .collect();
    table(&mut out, &["CONTEXT", "BACKLOG", "ERROR"], &rows, &[1]);

    let _ = writeln!(out, "\nDead letters");
    let rows: Vec<Vec<String>> = s
        .dead_letters
        .iter()
        .map(|d| {
            let latest = d.latest.first().map(|l| format!("#{} {}: {}", l.seq, l.reason, l.error)).unwrap_or_default();
            vec![d.context.clone(), d.count.to_string(), d.error.clone().unwrap_or(latest)]
        })
        .collect();
    table(&mut out, &["CONTEXT", "COUNT", "LATEST"], &rows, &[1]);

    if !s.full_syncs.is_empty() {
        let _ = writeln!(out, "\nFull syncs");
        let rows: Vec<Vec<String>> = s
            .full_syncs
            .iter()
            .map(|f| {
                let st = &f.status;
                let state = if st.in_progress {
                    format!("syncing {}/{}", st.done, st.total)
                } else {
                    match st.last_success {
                        Some(true) => "synced".to_string(),
                        Some(false) => format!("failed: {}", st.last_error.clone().unwrap_or_default()),
                        None => "never".to_string(),
                    }
                };
                vec![
                    f.context.clone(),
                    state,
                    st.last_reason.clone().unwrap_or_default(),
                    st.last_through.to_string(),
                    format!("{}/{}", st.completed, st.failed),
                    f.positions_lost.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["CONTEXT", "STATE", "LAST REASON", "AS OF SEQ", "DONE/FAILED", "POSITIONS LOST"],
            &rows,
            &[3, 5],
        );
    }
    for panel in &s.panels {
        let _ = writeln!(out, "\n{}", panel.title);
        let rows: Vec<Vec<String>> = panel.rows.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect();
        table(&mut out, &["", ""], &rows, &[]);
    }
    out
}

fn is_engine_table(name: &str) -> bool {
    matches!(
        name,
        "inbox"
            | "inbox_by_time"
            | "inbox_batches"
            | "entity_versions"
            | "parked"
            | "checkpoints"
            | "outbox"
            | "outbox_next"
            | "idempotency"
            | "idempotency_by_time"
    )
}

/// A plain aligned table; columns in `right` are right-aligned.
fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>], right: &[usize]) {
    use std::fmt::Write;
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut text = String::from(" ");
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if right.contains(&i) {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if i + 1 < cells.len() {
                    text.push_str(&" ".repeat(pad));
                }
            }
            text.push_str("  ");
        }
        text.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(headers.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        let _ = writeln!(out, " (none)");
    }
}
