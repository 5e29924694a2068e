//! `carrier bench --scale`: `carrier run` with a million cached products, as an operator would
//! run it, measured from outside the process.
//!
//! Everything is a real process: a private nats-server, the events published to it as an outside
//! producer would, and `carrier run --contexts baskets` started from this binary, with its
//! resident memory sampled from `/proc` every few milliseconds and its log lines counted. The
//! figures, each beside its goal:
//! - catch-up of the whole stream from an empty file, against the same catch-up over a small key
//!   space (the cache path's rate when every table stays small);
//! - restart to `/readyz` after SIGTERM and after SIGKILL (redb repairs a file that was not
//!   closed);
//! - two rebuilds (`POST /api/contexts/baskets/rebuild`, as `carrier rebuild` does) while a probe
//!   sends one basket command after another (each reads the products cache in the writer's
//!   transaction): the rebuild's time, the slowest command during it, the file's size and the
//!   inbox tables after each;
//! - the peak resident memory over every phase.
//!
//! At the end the file is opened and every product's cached price and version checked against
//! what was published.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::baskets::stores_durable_name;
use crate::stores::StoresEvent;
use crate::workload::Workload;
use anyhow::{bail, Context};
use carrier_actors::Bus;
use carrier_actors::RebuildProgress;
use carrier_messages::DomainEvent;

/// PublishAcks outstanding while loading the stream.
const PUBLISH_WINDOW: usize = 4096;
/// The key the child's dashboard actions take (`--api-key`).
const API_KEY: &str = "carrier-bench-scale-key";
/// How often the child's resident memory is read.
const RSS_EVERY: Duration = Duration::from_millis(5);
/// Pause between two probe commands.
const PROBE_EVERY: Duration = Duration::from_millis(5);

/// What `--scale` is asked to do.
pub struct ScaleArgs {
    /// Events in the large stream.
    pub events: u64,
    /// Products in it.
    pub products: u64,
    /// Events of the small key space's stream.
    pub small_events: u64,
    /// Products of the small key space.
    pub small_products: u64,
    /// redb's page cache per file, MiB (`carrier run --redb-cache-mb`).
    pub redb_cache_mb: u32,
    /// One JSON object on stdout.
    pub json: bool,
}

/// The figures of one scale run.
#[derive(Debug, Default, serde::Serialize)]
struct Figures {
    small_catch_up: f64,
    catch_up: f64,
    catch_up_seconds: f64,
    log_lines_during_catch_up: u64,
    ready_after_sigterm_ms: f64,
    stop_after_sigterm_ms: f64,
    ready_after_sigkill_ms: f64,
    rebuild_seconds: Vec<f64>,
    probe_max_ms_before: f64,
    probe_max_ms_during_rebuild: f64,
    probe_p99_ms_during_rebuild: f64,
    probe_commands_during_rebuild: u64,
    probe_max_ms_replaying: f64,
    probe_max_ms_swapping: f64,
    file_mb_after_catch_up: f64,
    file_mb_after_rebuilds: Vec<f64>,
    inbox_rows: u64,
    inbox_indexed: u64,
    rss_peak_mb_catch_up: f64,
    rss_peak_mb_restarts: f64,
    rss_peak_mb_rebuilds: f64,
    rss_peak_mb: f64,
}

/// Runs `carrier bench --scale`.
pub async fn main(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    if args.products + 1 >= args.events {
        bail!("--events ({}) must exceed --products + 1 ({})", args.events, args.products + 1);
    }
    if args.small_products + 1 >= args.small_events {
        bail!("the small key space needs more events than products");
    }
    let say = |line: String| {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let nats = carrier_cli::nats_or_local(None, None)?;
    let bus = Bus::connect(&nats.url, "carrier-bench-scale", Duration::from_secs(5)).await?;
    bus.ensure_event_stream::<StoresEvent>().await?;
    let exe = std::env::current_exe().context("cannot find this binary to start `carrier run`")?;
    let work = tempfile::Builder::new().prefix("carrier-bench-scale-").tempdir()?;
    let port = free_port()?;
    let rss = RssSampler::start();
    let mut f = Figures::default();
    say(format!(
        "carrier bench --scale: {} events over {} products (small key space: {} over {}), redb cache {} MiB, nats-server {}",
        args.events,
        args.products,
        args.small_events,
        args.small_products,
        args.redb_cache_mb,
        bus.server_version()
    ));

    // The small key space: the cache path's rate when every table stays small.
    {
        let small = Workload::prices(args.small_events, args.small_products)?;
        let last = load(&bus, &small).await?;
        let data = work.path().join("small");
        let mut child = CarrierRun::spawn(&exe, &nats.url, &data, port, args.redb_cache_mb)?;
        let (ready, _) = child.wait_ready(Duration::from_secs(30)).await?;
        wait_caught_up(&bus, &data, last, Duration::from_secs(600)).await?;
        f.small_catch_up = args.small_events as f64 / ready.elapsed().as_secs_f64();
        child.stop(Duration::from_secs(30))?;
        say(format!("  small key space: {:.0} events/s", f.small_catch_up));
    }

    // The large one.
    let workload = Workload::prices(args.events, args.products)?;
    let last = load(&bus, &workload).await?;
    say(format!("  published {} events", workload.events.len()));
    let data = work.path().join("large");
    let file = data.join("baskets.redb");
    rss.reset();
    let mut child = CarrierRun::spawn(&exe, &nats.url, &data, port, args.redb_cache_mb)?;
    rss.watch(child.pid());
    let (ready, _) = child.wait_ready(Duration::from_secs(30)).await?;
    wait_caught_up(&bus, &data, last, Duration::from_secs(1800)).await?;
    f.catch_up_seconds = ready.elapsed().as_secs_f64();
    f.catch_up = args.events as f64 / f.catch_up_seconds;
    f.log_lines_during_catch_up = child.lines.load(Ordering::Relaxed);
    f.rss_peak_mb_catch_up = rss.reset();
    f.file_mb_after_catch_up = file_mb(&file);
    say(format!(
        "  catch-up: {:.0} events/s over {:.1} s, {} log lines, peak RSS {:.0} MB, file {:.0} MB",
        f.catch_up, f.catch_up_seconds, f.log_lines_during_catch_up, f.rss_peak_mb_catch_up, f.file_mb_after_catch_up
    ));

    // Restarts.
    let stopping = Instant::now();
    child.stop(Duration::from_secs(30))?;
    f.stop_after_sigterm_ms = ms(stopping.elapsed());
    let mut child = CarrierRun::spawn(&exe, &nats.url, &data, port, args.redb_cache_mb)?;
    rss.watch(child.pid());
    let (_, took) = child.wait_ready(Duration::from_secs(30)).await?;
    f.ready_after_sigterm_ms = ms(took);
    child.kill()?;
    let mut child = CarrierRun::spawn(&exe, &nats.url, &data, port, args.redb_cache_mb)?;
    rss.watch(child.pid());
    let (_, took) = child.wait_ready(Duration::from_secs(30)).await?;
    f.ready_after_sigkill_ms = ms(took);
    f.rss_peak_mb_restarts = rss.reset();
    say(format!(
        "  restart: stopped {:.0} ms after SIGTERM, ready in {:.0} ms; after SIGKILL ready in {:.0} ms",
        f.stop_after_sigterm_ms, f.ready_after_sigterm_ms, f.ready_after_sigkill_ms
    ));

    // Rebuilds, with a command probe running.
    let probe = Probe::start(bus.clone(), args.products);
    tokio::time::sleep(Duration::from_secs(2)).await; // the probe's baseline, not a wait for a state
    f.probe_max_ms_before = latencies(probe.take().into_iter()).max;
    let mut swaps = Vec::new();
    for round in 0..2 {
        let (seconds, swap) = rebuild(&child.dashboard()).await.with_context(|| format!("rebuild {}", round + 1))?;
        f.rebuild_seconds.push(seconds);
        f.file_mb_after_rebuilds.push(file_mb(&file));
        swaps.push(swap);
    }
    let samples = probe.stop().await?;
    let during = latencies(samples.iter().copied());
    let swapping = |at: &Instant| swaps.iter().any(|(from, to)| at >= from && at <= to);
    f.probe_max_ms_during_rebuild = during.max;
    f.probe_p99_ms_during_rebuild = during.p99;
    f.probe_commands_during_rebuild = during.count;
    f.probe_max_ms_replaying = latencies(samples.iter().copied().filter(|(at, _)| !swapping(at))).max;
    f.probe_max_ms_swapping = latencies(samples.iter().copied().filter(|(at, _)| swapping(at))).max;
    f.rss_peak_mb_rebuilds = rss.reset();
    say(format!(
        "  rebuilds: {:?} s; probe commands: max {:.1} ms before, max {:.1} ms (replaying {:.1}, swapping {:.1}) / p99 {:.1} ms over {} during; file {:?} MB; peak RSS {:.0} MB",
        f.rebuild_seconds,
        f.probe_max_ms_before,
        f.probe_max_ms_during_rebuild,
        f.probe_max_ms_replaying,
        f.probe_max_ms_swapping,
        f.probe_p99_ms_during_rebuild,
        f.probe_commands_during_rebuild,
        f.file_mb_after_rebuilds,
        f.rss_peak_mb_rebuilds
    ));
    child.stop(Duration::from_secs(30))?;
    f.rss_peak_mb = f.rss_peak_mb_catch_up.max(f.rss_peak_mb_restarts).max(f.rss_peak_mb_rebuilds);

    // The end state: every product at its published price and version, the inbox tables alike.
    let tables = carrier_storage::dump_tables(&file, 0)?;
    let rows = |name: &str| tables.iter().find(|t| t.table == name).map(|t| t.rows).unwrap_or(0);
    f.inbox_rows = rows("inbox");
    let writer = carrier_storage::FileWriter::<crate::baskets::Baskets>::open(&file)?;
    f.inbox_indexed = writer.file().inbox_indexed()?;
    let problems = workload.check(&writer.file())?;
    if !problems.is_empty() {
        bail!("the cache disagrees with what was published: {}", problems[..problems.len().min(5)].join("; "));
    }
    drop(writer);

    if args.json {
        let mut object = rounded(serde_json::to_value(&f)?);
        object["catch_up_per_small_catch_up"] = round3(f.catch_up / f.small_catch_up).into();
        object["events"] = args.events.into();
        object["products"] = args.products.into();
        object["redb_cache_mb"] = args.redb_cache_mb.into();
        object["nats_server_version"] = bus.server_version().into();
        println!("{object}");
    } else {
        let worst_rebuild = f.rebuild_seconds.iter().copied().fold(0.0, f64::max);
        println!("  figure                                   value        goal");
        println!(
            "  catch-up / small key space               {:>8.2}     >= 0.50  ({:.0} vs {:.0} events/s)",
            f.catch_up / f.small_catch_up,
            f.catch_up,
            f.small_catch_up
        );
        println!("  ready after SIGTERM                      {:>8.0} ms  < 1000 ms", f.ready_after_sigterm_ms);
        println!("  ready after SIGKILL                      {:>8.0} ms  < 1000 ms", f.ready_after_sigkill_ms);
        println!("  peak resident memory                     {:>8.0} MB  < 200 MB", f.rss_peak_mb);
        println!("  rebuild of {} events (slowest)      {:>8.1} s   < 20 s", args.events, worst_rebuild);
        println!(
            "  slowest command during the rebuilds      {:>8.1} ms  <= 100 ms (before: {:.1} ms)",
            f.probe_max_ms_during_rebuild, f.probe_max_ms_before
        );
        println!(
            "  file after catch-up, rebuild 1, 2        {:.0} / {} MB (inbox {} rows, {} in its time index)",
            f.file_mb_after_catch_up,
            f.file_mb_after_rebuilds.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(" / "),
            f.inbox_rows,
            f.inbox_indexed
        );
        println!("  log lines while catching up              {:>8}", f.log_lines_during_catch_up);
        println!("  verified: every cached price and version equals the published one");
    }
    rss.stop();
    Ok(ExitCode::SUCCESS)
}

/// Empties the stores stream (each run's data directory is a new instance, with a durable of
/// its own), publishes `workload`: the last sequence.
async fn load(bus: &Bus, workload: &Workload) -> anyhow::Result<u64> {
    bus.purge_stream(StoresEvent::STREAM).await?;
    Ok(bus.publish_many(&workload.events, PUBLISH_WINDOW).await?)
}

/// Waits until the baskets durable has acknowledged `last`.
async fn wait_caught_up(bus: &Bus, data: &Path, last: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let durable = stores_durable_name(data)?;
    loop {
        if let Ok(info) = bus.consumer_info(StoresEvent::STREAM, &durable).await {
            if info.ack_floor_stream_seq >= last {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the baskets consumer did not acknowledge {last} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One `carrier run --contexts baskets` process.
struct CarrierRun {
    child: Child,
    port: u16,
    started: Instant,
    /// Lines it wrote to stdout and stderr.
    lines: Arc<AtomicU64>,
}

impl CarrierRun {
    fn spawn(exe: &Path, nats_url: &str, data: &Path, port: u16, cache_mb: u32) -> anyhow::Result<CarrierRun> {
        let mut child = Command::new(exe)
            .args(["run", "--contexts", "baskets", "--nats-url", nats_url, "--data-dir"])
            .arg(data)
            .args(["--dashboard-addr", &format!("127.0.0.1:{port}"), "--dashboard-actions", "--api-key", API_KEY])
            .args(["--redb-cache-mb", &cache_mb.to_string()])
            // Its default log level: what an operator gets.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start `carrier run`")?;
        let lines = Arc::new(AtomicU64::new(0));
        let out = child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>);
        let err = child.stderr.take().map(|e| Box::new(e) as Box<dyn std::io::Read + Send>);
        for pipe in [out, err].into_iter().flatten() {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for _ in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Ok(CarrierRun { child, port, started: Instant::now(), lines })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn dashboard(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits for `/readyz` to answer 200: (when, how long after the process started).
    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<(Instant, Duration)> {
        let url = format!("{}/readyz", self.dashboard());
        let deadline = self.started + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("`carrier run` exited before it was ready ({status})");
            }
            let u = url.clone();
            let ok = tokio::task::spawn_blocking(move || {
                agent(Duration::from_millis(500)).get(&u).call().map(|r| r.status().as_u16() == 200).unwrap_or(false)
            })
            .await?;
            if ok {
                let now = Instant::now();
                return Ok((now, now - self.started));
            }
            if Instant::now() > deadline {
                bail!("`carrier run` was not ready within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// SIGTERM, then waits for the process to exit on its own.
    fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        // The shell's own `kill`: present wherever `sh` is, unlike procps' binary.
        let status = Command::new("sh").args(["-c", &format!("kill -TERM {}", self.pid())]).status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("`carrier run` stopped with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("`carrier run` did not stop within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL: no shutdown at all, the file left as the last commit left it.
    fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for CarrierRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
}

/// Starts a rebuild of baskets through the dashboard and waits for it: its seconds, and when it
/// was seen swapping (from the first poll that saw it so to the one that saw it done).
async fn rebuild(dashboard: &str) -> anyhow::Result<(f64, (Instant, Instant))> {
    let base = dashboard.to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, (Instant, Instant))> {
        let agent = agent(Duration::from_secs(10));
        let mut response = agent
            .post(&format!("{base}/api/contexts/baskets/rebuild"))
            .header("Authorization", &format!("Bearer {API_KEY}"))
            .send_empty()?;
        let body = response.body_mut().read_to_string()?;
        if response.status().as_u16() != 202 {
            bail!("the dashboard refused the rebuild: {body}");
        }
        let started: RebuildProgress = serde_json::from_str(&body)?;
        let deadline = Instant::now() + Duration::from_secs(1800);
        let mut swapping_since = None;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let rebuilds: Vec<RebuildProgress> =
                agent.get(&format!("{base}/api/rebuilds")).call()?.body_mut().read_json()?;
            let Some(p) = rebuilds.into_iter().find(|p| p.context == "baskets" && p.started_at == started.started_at)
            else {
                bail!("the rebuild disappeared");
            };
            let now = Instant::now();
            match p.state.as_str() {
                "swapping" => {
                    swapping_since.get_or_insert(now);
                }
                "done" => return Ok((p.seconds.unwrap_or(0.0), (swapping_since.unwrap_or(now), now))),
                "failed" => bail!("the rebuild failed: {}", p.error.unwrap_or_default()),
                _ if Instant::now() > deadline => bail!("the rebuild did not finish within 30 minutes"),
                _ => {}
            }
        }
    })
    .await?
}

/// Latencies of probe commands.
#[derive(Default)]
struct Latencies {
    max: f64,
    p99: f64,
    count: u64,
}

/// Max, p99 and count of (sent at, milliseconds) samples.
fn latencies(samples: impl Iterator<Item = (Instant, f64)>) -> Latencies {
    let mut ms: Vec<f64> = samples.map(|(_, ms)| ms).collect();
    if ms.is_empty() {
        return Latencies::default();
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    Latencies { max: ms[ms.len() - 1], p99: at(0.99), count: ms.len() as u64 }
}

/// Basket commands one after another over NATS, each adding a cached product (so each reads the
/// products cache and writes the baskets table in the writer's transaction).
struct Probe {
    stop: Arc<AtomicBool>,
    samples: Arc<std::sync::Mutex<Vec<(Instant, f64)>>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Probe {
    fn start(bus: Bus, products: u64) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = {
            let (stop, samples) = (stop.clone(), samples.clone());
            tokio::spawn(async move {
                let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
                let mut i: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let basket = format!("scale-basket-{}", i / 20);
                    let command = if i % 20 == 0 {
                        serde_json::json!({"command": "start_basket", "id": basket, "customer_id": "scale"})
                    } else {
                        let product = format!("load-p{}", i.wrapping_mul(7_919) % products);
                        serde_json::json!({"command": "add_item", "id": basket, "product_id": product, "quantity": 1})
                    };
                    let sent = Instant::now();
                    let reply = bus
                        .request("cmd.baskets", &headers, serde_json::to_vec(&command)?, Duration::from_secs(30))
                        .await?;
                    let took = ms(sent.elapsed());
                    let reply: serde_json::Value = serde_json::from_slice(&reply)?;
                    if reply["ok"] != true {
                        bail!("probe command {command} failed: {reply}");
                    }
                    samples.lock().unwrap_or_else(|p| p.into_inner()).push((sent, took));
                    i += 1;
                    tokio::time::sleep(PROBE_EVERY).await;
                }
                Ok(())
            })
        };
        Probe { stop, samples, task }
    }

    /// The samples so far, and a fresh start.
    fn take(&self) -> Vec<(Instant, f64)> {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn stop(self) -> anyhow::Result<Vec<(Instant, f64)>> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.samples.clone();
        self.task.await??;
        let taken = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(taken)
    }
}

/// Samples one process's resident memory, keeping the peak since the last reset.
struct RssSampler {
    pid: Arc<AtomicU64>,
    peak_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start() -> RssSampler {
        let (pid, peak_kb, stop) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        {
            let (pid, peak_kb, stop) = (pid.clone(), peak_kb.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let p = pid.load(Ordering::Relaxed);
                    if p != 0 {
                        if let Some(kb) = rss_kb(p) {
                            peak_kb.fetch_max(kb, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(RSS_EVERY);
                }
            });
        }
        RssSampler { pid, peak_kb, stop }
    }

    fn watch(&self, pid: u32) {
        self.pid.store(u64::from(pid), Ordering::Relaxed);
    }

    /// The peak since the last reset, in MB, and a fresh start.
    fn reset(&self) -> f64 {
        self.peak_kb.swap(0, Ordering::Relaxed) as f64 / 1024.0
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `VmRSS` of a process, in KiB.
fn rss_kb(pid: u64) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn file_mb(path: &PathBuf) -> f64 {
    std::fs::metadata(path).map(|m| m.len() as f64 / 1_048_576.0).unwrap_or(0.0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Every non-integer number to three decimals.
fn rounded(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => n.as_f64().map(|x| Value::from(round3(x))).unwrap_or(Value::Number(n)),
        Value::Array(items) => Value::Array(items.into_iter().map(rounded).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, rounded(v))).collect()),
        other => other,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
