//! `carrier inspect`: a context's tables, every row, read from its redb file without writing it.
//!
//! Nothing here knows any context: the file is opened read-only and every table is shown with
//! its rows as JSON (CBOR rows decoded), so a context a user declares is inspected the same way
//! as the mall's.

use std::process::ExitCode;

use anyhow::bail;

/// Arguments of `carrier inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// The context whose file to read.
    context: String,
    #[command(flatten)]
    data: crate::DataDir,
    /// Rows shown per table.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only this table.
    #[arg(long)]
    table: Option<String>,
    /// Repair the file first, if the process that last wrote it was killed (what the next
    /// `run` would do); nothing else may hold it open.
    #[arg(long)]
    repair: bool,
    /// One JSON document on standard output: `{"file": ..., "tables": [{"table", "types", "rows",
    /// "entries": [[key, value], ...]}]}`.
    #[arg(long)]
    json: bool,
}

pub fn main(args: InspectArgs, app: &crate::App) -> anyhow::Result<ExitCode> {
    let declared = app.context(&args.context)?;
    if !declared.has_file() {
        let stream = declared.publishes().map(|s| s.stream).unwrap_or("its stream");
        bail!(
            "{} is event-sourced and keeps no file: its state is the stream {stream} (read it with `nats stream view {stream}`), its projections are the read models that consume it",
            declared.name()
        );
    }
    let path = args.data.data_dir.join(declared.db_file());
    if !path.exists() {
        bail!("{} does not exist (wrong --data-dir, or the context never ran there)", path.display());
    }
    if args.repair {
        carrier_storage::repair_file(&path).map_err(|e| explain(&path, e))?;
    }
    let mut tables = carrier_storage::dump_tables(&path, args.limit).map_err(|e| explain(&path, e))?;
    if let Some(only) = &args.table {
        tables.retain(|t| &t.table == only);
        if tables.is_empty() {
            bail!("{} has no table {only:?}", path.display());
        }
    }
    if args.json {
        let doc = serde_json::json!({ "file": path.display().to_string(), "tables": tables });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", path.display());
    for table in tables {
        println!("\n{} ({} rows, {})", table.table, table.rows, table.types);
        for (key, value) in &table.entries {
            if table.table == CHECKPOINTS {
                println!("  {:<32} last committed stream seq {}", compact(key), compact(value));
            } else {
                println!("  {}  {}", compact(key), compact(value));
            }
        }
        if table.rows > table.entries.len() as u64 {
            println!("  … {} more (--limit)", table.rows - table.entries.len() as u64);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The engine's table of each durable consumer's position, which every consuming context has.
const CHECKPOINTS: &str = "checkpoints";

/// A JSON value on one line; a bare string without its quotes.
fn compact(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Minor units as a decimal amount.
pub fn money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", minor.unsigned_abs() / 100, minor.unsigned_abs() % 100)
}

/// Why a context's file could not be read, in the operator's terms.
fn explain(path: &std::path::Path, error: carrier_storage::StorageError) -> anyhow::Error {
    use carrier_storage::FileState;
    match FileState::of(&error) {
        Some(FileState::InUse) => anyhow::anyhow!(
            "{} is in use: a running carrier holds it open; stop it first, or inspect a copy (cp it, then --data-dir)",
            path.display()
        ),
        Some(FileState::NeedsRepair) => anyhow::anyhow!(
            "{} needs repair: the process that last wrote it was killed; the next `run` repairs it, or add --repair to repair it now",
            path.display()
        ),
        None => anyhow::Error::new(error).context(format!("cannot read {}", path.display())),
    }
}
