//! `carrier rebuild <context>`: rebuild a running context's caches from the owners' streams into
//! a fresh file while the old caches keep serving, then swap; with progress.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use carrier_actors::RebuildProgress;

/// Arguments of `carrier rebuild`.
#[derive(clap::Args)]
pub struct RebuildArgs {
    /// The consuming context whose caches to rebuild (baskets, depot, payments, notifications,
    /// search).
    pub(crate) context: String,
    #[command(flatten)]
    dashboard: crate::dashboard_client::DashboardClientArgs,
}

pub fn main(args: RebuildArgs, name: &str) -> anyhow::Result<ExitCode> {
    let base = args.dashboard.base();
    let context = name;
    let agent = args.dashboard.agent(Duration::from_secs(10));
    let answer = args.dashboard.post(&agent, &format!("/api/contexts/{context}/rebuild"), None, 202, "rebuild")?;
    let started: RebuildProgress = serde_json::from_value(answer).context("the dashboard's answer")?;
    let mut bar = crate::progress::Progress::new(&format!("rebuild {context}"), 0);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let rebuilds: Vec<RebuildProgress> = agent
            .get(&format!("{base}/api/rebuilds"))
            .call()
            .context("polling the rebuild")?
            .body_mut()
            .read_json()
            .context("the dashboard's rebuild report")?;
        let Some(p) = rebuilds.into_iter().find(|p| p.context == context && p.started_at == started.started_at) else {
            bail!("the rebuild of {context} disappeared from the dashboard (was carrier restarted?)");
        };
        bar.set_total(p.total);
        let streams: Vec<String> =
            p.sources.iter().map(|s| format!("{}@{}/{}", s.stream, s.applied_through, s.target)).collect();
        bar.update(p.events, &format!("{} {}", p.state, streams.join(" ")));
        match p.state.as_str() {
            "done" => {
                bar.finish(&format!("done in {:.1} s", p.seconds.unwrap_or(0.0)));
                for t in &p.tables {
                    println!("{:<16} {:>8} rows before  {:>8} rows after", t.table, t.before, t.after);
                }
                return Ok(ExitCode::SUCCESS);
            }
            "failed" => {
                bar.finish("failed");
                bail!("the rebuild of {context} failed: {}", p.error.unwrap_or_default());
            }
            _ => {}
        }
    }
}
