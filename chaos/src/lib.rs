//! Carrier's chaos checker.
//!
//! A workload of its own: a producer outside Carrier publishes `chaos.Added` events (an amount
//! added to one key's total, each key's events numbered 1, 2, 3, ...) and the `tally` read model
//! adds each amount to its key's sum and appends the event's version to the key's list. A sum is
//! not idempotent: an event applied twice shows in it, and so does one lost. The read model runs
//! on every instance, so each instance's file is a complete copy to count.
//!
//! A run, from a seed: start a nats-server and `instances` processes of this binary (`run
//! --contexts tally`), publish `events` events over `keys` keys (some published a second time
//! under another message id, as a producer that retries after the server's duplicate window
//! does), and on a schedule drawn from the seed SIGKILL an instance and start it again, or
//! SIGKILL the server and start it again on the same store. Then wait for every instance to
//! acknowledge the whole stream, stop them, and count, per key, on every instance and on the
//! stream: ok, lost, doubled and reordered events, and whether the sum is the sum of the
//! amounts published. A run passes when nothing is lost, doubled or reordered anywhere.
//!
//! The same seed gives the same events, amounts, duplicates and fault schedule (not the same
//! timing: the faults land where the processes happen to be).
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use carrier::actors::{durable_suffix, instance_durable_name, instance_id, Bus, LocalNatsServer};
use carrier::messages::{Decoded, EventId};
use carrier::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An amount added to one key's total.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Added {
    /// The key.
    pub id: String,
    /// What is added to its total.
    pub amount: i64,
}

impl Validate for Added {}

domain_events! {
    /// What the chaos producer publishes.
    enum ChaosEvent, context "chaos", stream "CHAOS", subjects "chaos.>";
    Added => "key", "chaos.key.added";
}

/// One key's total on one instance: the sum of the amounts applied, and the version of every
/// event applied, in the order applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub sum: i64,
    pub versions: Vec<u64>,
}

/// The read model's table, by key.
pub const TALLIES: Rows<Tally> = Rows::new("tallies");

/// The `tally` read model.
pub struct Tallies;

impl ContextKind for Tallies {
    const NAME: &'static str = "tally";
    type Event = NoEvents;
}

impl Reacts<ChaosEvent> for Tallies {
    type Tables<'txn> = RowsMut<'txn, Tally>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<RowsMut<'txn, Tally>, StorageError> {
        TALLIES.open(txn)
    }

    fn react(
        tallies: &mut RowsMut<'_, Tally>,
        _emit: &mut Emitter<'_, NoEvents>,
        envelope: &Envelope,
        event: &ChaosEvent,
    ) -> Result<(), ReactError> {
        let ChaosEvent::Added(added) = event;
        let mut tally = tallies.get(&added.id)?.unwrap_or_default();
        // Deliberately not idempotent: the engine must apply each event once.
        tally.sum += added.amount;
        tally.versions.push(envelope.aggregate_version);
        tallies.put(&added.id, &tally)?;
        Ok(())
    }
}

/// The contexts of the chaos binary.
pub fn contexts() -> Vec<BoundedContext> {
    vec![BoundedContext::of::<Tallies>().consume::<ChaosEvent>().read_model().build()]
}

/// What a run does, all drawn from `seed`.
#[derive(Clone, Debug, clap::Args)]
pub struct Plan {
    /// The seed of the events, amounts, duplicates and fault schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Events published (each once, plus the duplicates).
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub events: u64,
    /// Keys the events are spread over.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub keys: u64,
    /// Instances running the read model, each with its own data directory.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=8))]
    pub instances: u64,
    /// Instances SIGKILLed (and started again) during the run.
    #[arg(long, default_value_t = 4)]
    pub kills: u64,
    /// Times the nats-server is SIGKILLed and started again on the same store.
    #[arg(long, default_value_t = 1)]
    pub nats_restarts: u64,
    /// Per mille of events published a second time under another message id.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub duplicates_per_mille: u64,
    /// Seconds to wait for every instance to acknowledge the whole stream at the end.
    #[arg(long, default_value_t = 120)]
    pub settle_secs: u64,
}

/// One key's count in one place (an instance's file, or the stream).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// Events present exactly once.
    pub ok: u64,
    /// Events published and absent.
    pub lost: u64,
    /// Extra copies of events present more than once.
    pub doubled: u64,
    /// Events applied after a later version of their key.
    pub reordered: u64,
    /// Keys whose sum is not the sum of the amounts published.
    pub bad_sums: u64,
}

impl Count {
    fn add(&mut self, other: Count) {
        self.ok += other.ok;
        self.lost += other.lost;
        self.doubled += other.doubled;
        self.reordered += other.reordered;
        self.bad_sums += other.bad_sums;
    }

    /// Nothing lost, doubled, reordered or mis-summed.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.doubled == 0 && self.reordered == 0 && self.bad_sums == 0
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ok={} lost={} doubled={} reordered={} bad_sums={}",
            self.ok, self.lost, self.doubled, self.reordered, self.bad_sums
        )
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Report {
    pub plan: Plan,
    /// Copies published a second time (under another message id).
    pub republished: u64,
    /// Instances SIGKILLed, nats-server restarts done.
    pub kills: u64,
    pub nats_restarts: u64,
    /// The stream: every event id once (the republished copies are not counted as doubled).
    pub stream: Count,
    /// Each instance's file.
    pub instances: Vec<Count>,
    /// From the last event published until every instance had acknowledged the stream.
    pub settled_in: Duration,
    pub took: Duration,
}

impl Report {
    /// Nothing lost, doubled or reordered anywhere.
    pub fn passed(&self) -> bool {
        self.stream.clean() && self.instances.iter().all(Count::clean)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.plan;
        write!(
            f,
            "{} seed={} events={} keys={} republished={} kills={} nats_restarts={} | stream {}",
            if self.passed() { "PASS" } else { "FAIL" },
            p.seed,
            p.events,
            p.keys,
            self.republished,
            self.kills,
            self.nats_restarts,
            self.stream
        )?;
        for (i, count) in self.instances.iter().enumerate() {
            write!(f, " | instance{i} {count}")?;
        }
        write!(f, " | settled {:.1}s, took {:.1}s", self.settled_in.as_secs_f64(), self.took.as_secs_f64())
    }
}

/// SplitMix64: a small, fixed PRNG, so a seed means the same run on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One published event, as the producer remembers it.
struct Sent {
    id: EventId,
    key: String,
    version: u64,
    amount: i64,
}

/// What happens at an event's index in the publishing order.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill { instance: usize, down: Duration },
    RestartNats { down: Duration },
}

/// One instance: its data directory and, while it runs, its process.
struct Instance {
    data: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Instance {
    fn start(&mut self, program: &Path, url: &str) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(program)
            .args(["run", "--contexts", "tally", "--no-dashboard", "--nats-url", url, "--data-dir"])
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn signal(&mut self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY-free: libc::kill on a child's pid.
            let pid = child.id() as i32;
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Stops it with SIGTERM (SIGKILL after `limit`).
    fn stop(&mut self, limit: Duration) {
        self.signal(libc::SIGTERM);
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `plan` with `program` (this crate's binary) as the instances.
pub async fn run(plan: &Plan, program: &Path) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut rng = Rng(plan.seed);
    // Kept when the run fails, for its logs and files.
    let dir = tempfile::Builder::new().prefix("carrier-chaos-").tempdir()?.keep();
    let mut nats = LocalNatsServer::start_in(&dir.join("nats"), None).context("nats-server starts")?;
    let url = nats.url();

    // The events, their duplicates and the fault schedule, all from the seed.
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = Vec::with_capacity(plan.events as usize);
    for _ in 0..plan.events {
        let key = format!("k{:05}", rng.below(plan.keys));
        let version = versions.entry(key.clone()).and_modify(|v| *v += 1).or_insert(1);
        let amount = 1 + rng.below(1_000) as i64;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&rng.next().to_be_bytes());
        id[8..].copy_from_slice(&rng.next().to_be_bytes());
        sent.push(Sent { id: EventId::from_bytes(id), key, version: *version, amount });
    }
    let duplicated: Vec<bool> = (0..plan.events).map(|_| rng.below(1_000) < plan.duplicates_per_mille).collect();
    let mut faults: BTreeMap<u64, Vec<Fault>> = BTreeMap::new();
    for _ in 0..plan.kills {
        let at = rng.below(plan.events);
        let fault = Fault::Kill {
            instance: rng.below(plan.instances) as usize,
            down: Duration::from_millis(100 + rng.below(1_500)),
        };
        faults.entry(at).or_default().push(fault);
    }
    for _ in 0..plan.nats_restarts {
        let at = rng.below(plan.events);
        faults.entry(at).or_default().push(Fault::RestartNats { down: Duration::from_millis(200 + rng.below(1_000)) });
    }

    let bus = Bus::connect(url.as_str(), "carrier-chaos producer", Duration::from_secs(5)).await?;
    bus.ensure_event_stream::<ChaosEvent>().await?;
    let mut instances: Vec<Instance> = (0..plan.instances)
        .map(|i| Instance {
            data: dir.join(format!("instance{i}")),
            child: None,
            log: dir.join(format!("instance{i}.log")),
        })
        .collect();
    for instance in &mut instances {
        std::fs::create_dir_all(&instance.data)?;
        instance.start(program, &url)?;
    }

    let (mut kills, mut nats_restarts, mut republished) = (0, 0, 0);
    for (index, event) in sent.iter().enumerate() {
        for fault in faults.get(&(index as u64)).into_iter().flatten() {
            match *fault {
                Fault::Kill { instance, down } => {
                    instances[instance].kill();
                    tokio::time::sleep(down).await;
                    instances[instance].start(program, &url)?;
                    kills += 1;
                }
                Fault::RestartNats { down } => {
                    nats.kill();
                    tokio::time::sleep(down).await;
                    nats.restart().context("nats-server restarts on its store")?;
                    nats_restarts += 1;
                }
            }
        }
        let decoded = decoded(event);
        let wire = decoded.encode()?;
        publish(&bus, &wire).await?;
        if duplicated[index] {
            // The same event under another message id: the server stores it again, and only
            // the consumers' inbox can tell.
            let mut again = wire.clone();
            for (name, value) in &mut again.headers {
                if name.eq_ignore_ascii_case(carrier::messages::header::NATS_MSG_ID) {
                    value.push_str("-again");
                }
            }
            publish(&bus, &again).await?;
            republished += 1;
        }
    }
    let published_at = Instant::now();

    // Every instance acknowledges the whole stream.
    let last = bus.last_sequence("CHAOS").await?;
    let deadline = Instant::now() + Duration::from_secs(plan.settle_secs);
    for (i, instance) in instances.iter_mut().enumerate() {
        let suffix = durable_suffix(&instance_id(&instance.data)?);
        let durable = instance_durable_name("tally", "chaos", &suffix);
        loop {
            if let Some(status) = instance.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(&instance.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!("instance{i} exited ({status}) before it caught up; its log ends:\n{}", tail.join("\n"));
            }
            let acked = bus.consumer_info("CHAOS", &durable).await.map(|i| i.ack_floor_stream_seq).unwrap_or(0);
            if acked >= last {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} acknowledged {acked} of {last} stream messages within {}s (logs in {})",
                    durable,
                    plan.settle_secs,
                    instance.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let settled_in = published_at.elapsed();
    for instance in &mut instances {
        instance.stop(Duration::from_secs(10));
    }

    // The expected totals, the stream's copy and each instance's.
    let mut expected: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    for event in &sent {
        let entry = expected.entry(event.key.as_str()).or_default();
        entry.0 = entry.0.max(event.version);
        entry.1 += event.amount;
    }
    let stream = count_stream(&bus, last, &sent, &duplicated).await?;
    let mut counts = Vec::new();
    for instance in &instances {
        let file = carrier::storage::FileWriter::<Tallies>::open(instance.data.join("tally.redb"))?;
        let tallies: BTreeMap<String, Tally> = file.read(|txn| TALLIES.all(txn))?.into_iter().collect();
        let mut count = Count::default();
        for (key, (last_version, sum)) in &expected {
            let tally = tallies.get(*key).cloned().unwrap_or_default();
            count.add(count_versions(&tally.versions, *last_version));
            if tally.sum != *sum {
                count.bad_sums += 1;
            }
        }
        counts.push(count);
    }
    bus.close().await;
    drop(instances);
    drop(nats);
    let report = Report {
        plan: plan.clone(),
        republished,
        kills,
        nats_restarts,
        stream,
        instances: counts,
        settled_in,
        took: started.elapsed(),
    };
    if report.passed() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

/// The event as Carrier's wire has it: its id, key, version and amount.
fn decoded(event: &Sent) -> Decoded<ChaosEvent> {
    let added = ChaosEvent::Added(Added { id: event.key.clone(), amount: event.amount });
    let mut decoded = Decoded::new(added, event.version, &Causality::default());
    decoded.envelope.event_id = event.id;
    decoded.envelope.correlation_id = event.id.to_string();
    decoded
}

/// Publishes until the server acknowledges it (a retry carries the same message id, so the
/// server stores it once).
async fn publish(bus: &Bus, wire: &carrier::messages::EncodedEvent) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match bus.publish(wire).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("publishing for a minute"),
        }
    }
}

/// Per key: how the versions applied compare with `1..=last`.
fn count_versions(applied: &[u64], last: u64) -> Count {
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    for version in applied {
        *seen.entry(*version).or_default() += 1;
    }
    let mut count = Count::default();
    for version in 1..=last {
        match seen.get(&version).copied().unwrap_or(0) {
            0 => count.lost += 1,
            n => {
                count.ok += 1;
                count.doubled += n - 1;
            }
        }
    }
    count.doubled += seen.iter().filter(|(v, _)| **v == 0 || **v > last).map(|(_, n)| n).sum::<u64>();
    count.reordered = applied.windows(2).filter(|w| w[1] < w[0]).count() as u64;
    count
}

/// Reads the stream through `last` and counts every event id the producer sent.
async fn count_stream(bus: &Bus, last: u64, sent: &[Sent], duplicated: &[bool]) -> anyhow::Result<Count> {
    let mut copies: BTreeMap<EventId, u64> = BTreeMap::new();
    let mut reader = bus.replay("CHAOS", "chaos.>", 1, 500).await?;
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while read < last {
        if Instant::now() > deadline {
            bail!("read {read} of {last} stream messages within 60 s");
        }
        for delivery in reader.next_batch(Duration::from_secs(1)).await? {
            read = read.max(delivery.stream_seq);
            let decoded = Decoded::<ChaosEvent>::decode(&delivery.subject, |h| delivery.header(h), &delivery.payload)
                .with_context(|| format!("stream message {} does not decode", delivery.stream_seq))?;
            *copies.entry(decoded.envelope.event_id).or_default() += 1;
        }
    }
    let mut count = Count::default();
    for (event, again) in sent.iter().zip(duplicated) {
        let expected = if *again { 2 } else { 1 };
        match copies.remove(&event.id).unwrap_or(0) {
            0 => count.lost += 1,
            n => {
                count.ok += 1;
                count.doubled += n.saturating_sub(expected);
            }
        }
    }
    // Anything on the stream the producer never sent.
    count.doubled += copies.values().sum::<u64>();
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_counted_as_ok_lost_doubled_and_reordered() {
        assert_eq!(count_versions(&[1, 2, 3], 3), Count { ok: 3, ..Count::default() });
        assert_eq!(count_versions(&[1, 3], 3), Count { ok: 2, lost: 1, ..Count::default() });
        assert_eq!(count_versions(&[1, 2, 2, 3], 3), Count { ok: 3, doubled: 1, ..Count::default() });
        assert_eq!(count_versions(&[2, 1, 3], 3), Count { ok: 3, reordered: 1, ..Count::default() });
        assert_eq!(count_versions(&[1, 2, 3, 4], 3), Count { ok: 3, doubled: 1, ..Count::default() });
    }

    #[test]
    fn a_seed_draws_the_same_numbers_everywhere() {
        let mut a = Rng(7);
        let drawn: Vec<u64> = (0..3).map(|_| a.below(1000)).collect();
        let mut b = Rng(7);
        assert_eq!(drawn, (0..3).map(|_| b.below(1000)).collect::<Vec<_>>());
        assert_ne!(Rng(7).next(), Rng(8).next());
    }
}
