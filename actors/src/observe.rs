//! What operators see: the supervision tree, every durable consumer, every cache, the outboxes,
//! the dead letters and health, as serializable reports for the dashboard, its JSON API and
//! `carrier status`.
//!
//! Everything here reads: shared counters, the supervision tree, read transactions on the files
//! (which never wait for a writer in redb) and the server's consumer info. Nothing takes a lock
//! the write path takes, so watching the system does not slow it down. The sampler ([`Observer::start_sampler`]) takes one
//! [`Snapshot`] a second, which every client then shares.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use carrier_storage::ContextDb;

use crate::bus::{dead_letter_header, Bus};
use crate::consumer::ConsumerStats;
use crate::fallback::{BreakerState, Fallback};
use crate::supervisor::{NodeState, NodeStatus, SupervisionTree};

/// A context's health, as an operator would want it summed up.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Health {
    /// Every actor running, storage committing.
    Healthy,
    /// Working on it: an actor is restarting, or commits are failing and being retried.
    Degraded(String),
    /// Given up on after too many failures; other contexts keep running.
    Failed(String),
}

/// How many one-second rate samples a consumer keeps for its sparkline.
pub const RATE_HISTORY: usize = 60;

/// A consumer as the dashboard knows it: where it reads and its counters.
#[derive(Clone, Debug)]
pub struct ConsumerProbe {
    /// The stream's owning context (`stores`, `ordering`, ...).
    pub source: &'static str,
    /// The stream.
    pub stream: &'static str,
    /// Its durable name.
    pub durable: String,
    /// The subjects it asks for.
    pub filter_subject: &'static str,
    /// Its counters.
    pub stats: Arc<ConsumerStats>,
    /// Its operator controls (pause, seek, skip).
    pub control: Arc<crate::offsets::ConsumerControl>,
}

/// Cache lookups from the serving side (commands, queries, prefetch).
#[derive(Debug, Default)]
pub struct LookupStats {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl LookupStats {
    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }
}

/// One running context, as the observer sees it.
#[derive(Clone)]
pub(crate) struct ObservedContext {
    pub name: &'static str,
    /// Set while its lease may be another instance's.
    pub fence: Arc<crate::fence::Fence>,
    /// Its file; `None` for an event-sourced context, which keeps none.
    pub file: Option<Arc<dyn ContextDb>>,
    pub consumers: Vec<ConsumerProbe>,
    pub lookups: Option<Arc<LookupStats>>,
    pub fallbacks: Vec<Arc<Fallback>>,
    /// The stream it publishes to (through its outbox relay), when it publishes.
    pub stream: Option<&'static str>,
    /// Rebuilds its caches from the streams, when it has any.
    pub rebuild: Option<RebuildFn>,
    /// Its full syncs from owners' snapshots, when it resyncs.
    pub resync: Option<Arc<crate::resync::ResyncState>>,
    /// Whether it has a dead-letter stream (`DLQ_<NAME>`) to show.
    pub dead_letters: bool,
    /// Panels of its own (an event bus's subscriptions), shown beside the application's.
    pub panels: Vec<(String, PanelFn)>,
}

/// Starts a rebuild of one context's caches, reporting into the progress given.
pub(crate) type RebuildFn = Arc<
    dyn Fn(
            crate::rebuild::Progress,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), crate::rebuild::RebuildError>> + Send>>
        + Send
        + Sync,
>;

/// Why an operator's action (restart, replay, rebuild) was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No running context has that name.
    #[error("{0:?} is not running here")]
    NotRunning(String),
    /// The context reads no stream, so it has no dead letters.
    #[error("{0:?} is not a running consuming context")]
    NotConsuming(String),
    /// The context keeps no caches to rebuild.
    #[error("{context} keeps no caches of other contexts' data (contexts with caches: {with})")]
    NoCaches {
        /// The context.
        context: String,
        /// The running contexts that have caches, comma separated.
        with: String,
    },
    /// A rebuild of the context is running already.
    #[error("a rebuild of {context} is already {state}")]
    AlreadyRebuilding {
        /// The context.
        context: String,
        /// `replaying` or `swapping`.
        state: String,
    },
    /// The context reads no stream of that source.
    #[error("{context} reads no stream of {owner:?} (it reads: {sources})")]
    NoSuchSource {
        /// The context.
        context: String,
        /// The source (owning context) asked for.
        owner: String,
        /// The sources it reads, comma separated.
        sources: String,
    },
    /// A seek or skip was refused or failed.
    #[error(transparent)]
    Reposition(#[from] crate::offsets::RepositionError),
    /// The actor could not be restarted.
    #[error(transparent)]
    Restart(#[from] crate::supervisor::RestartError),
    /// NATS refused.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

impl ActionError {
    /// Whether the action conflicts with one already running (HTTP 409), rather than being
    /// wrong in itself.
    pub fn is_conflict(&self) -> bool {
        match self {
            ActionError::AlreadyRebuilding { .. } => true,
            ActionError::Reposition(e) => e.is_conflict(),
            _ => false,
        }
    }

    /// Whether no such thing runs here (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ActionError::NotRunning(_) | ActionError::NotConsuming(_) | ActionError::NoSuchSource { .. })
    }

    /// Whether the request itself was wrong (HTTP 400).
    pub fn is_bad_request(&self) -> bool {
        matches!(self, ActionError::Reposition(e) if e.is_bad_request())
    }
}

/// One supervised actor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorReport {
    /// Its path: `carrier/baskets/cache`.
    pub path: String,
    /// The last part of the path.
    pub name: String,
    /// Its supervisor's path (none for the root).
    pub parent: Option<String>,
    /// 0 for the root.
    pub depth: usize,
    /// `starting`, `running`, `restarting`, `stopped` or `failed`.
    pub state: NodeState,
    /// How often it was restarted.
    pub restarts: u32,
    /// Why it last exited.
    pub last_failure: Option<String>,
    /// When it last exited (RFC 3339).
    pub last_failure_at: Option<String>,
    /// Seconds since it last started, while it runs.
    pub uptime_seconds: Option<u64>,
}

/// The counters a consumer keeps in the process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsumerCounters {
    /// Messages delivered to it.
    pub delivered: u64,
    /// Events applied.
    pub applied: u64,
    /// Events skipped: already in the inbox.
    pub duplicates: u64,
    /// Events skipped: the entity was already newer.
    pub stale: u64,
    /// Events parked behind a missing version.
    pub parked: u64,
    /// Messages sent to the dead-letter stream.
    pub dead_lettered: u64,
    /// Committed batches.
    pub batches: u64,
    /// Commits that failed and were retried.
    pub commit_failures: u64,
    /// Tries of a batch held back because a reaction in it would emit while its context is
    /// fenced or stands by (see [`crate::standby`]).
    #[serde(default)]
    pub held_for_holder: u64,
}

/// One durable consumer: the server's view and the process's counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumerReport {
    /// The consuming context.
    pub context: String,
    /// The stream's owning context.
    pub source: String,
    /// The stream.
    pub stream: String,
    /// The durable name.
    pub durable: String,
    /// The subjects it takes (from the server when it answered).
    pub filter_subjects: Vec<String>,
    /// The last stream sequence delivered.
    pub delivered_stream_seq: u64,
    /// Every stream sequence up to this one is acknowledged.
    pub ack_floor_stream_seq: u64,
    /// Messages not yet delivered: the lag.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// Redelivered, not yet acknowledged.
    pub redelivered: u64,
    /// Why the server's view is missing, when it is.
    pub server_error: Option<String>,
    /// Paused by an operator (`carrier consumer pause`): nothing is pulled until resumed.
    #[serde(default)]
    pub paused: bool,
    /// It holds no pull subscription now (paused, or its context fenced), so nothing is
    /// delivered to it.
    #[serde(default)]
    pub held_back: bool,
    /// The process's counters.
    pub counters: ConsumerCounters,
    /// Messages per second over the last second.
    pub rate_per_second: f64,
    /// The last `RATE_HISTORY` one-second rates, oldest first.
    pub rate_history: Vec<f64>,
}

/// A table and its rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    /// The table's name.
    pub table: String,
    /// Its rows.
    pub rows: u64,
}

/// A consumer's last committed stream sequence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedThrough {
    /// The durable name.
    pub consumer: String,
    /// The last stream sequence committed.
    pub stream_seq: u64,
}

/// A fallback to an owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackReport {
    /// The owner it asks.
    pub owner: String,
    /// Calls answered.
    pub ok: u64,
    /// Calls failed or timed out.
    pub failed: u64,
    /// Calls refused by the open breaker.
    pub rejected: u64,
    /// Answered "not found" from memory.
    pub negative_hits: u64,
    /// `closed`, `open` or `half_open`.
    pub breaker: BreakerState,
}

/// A context's file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheReport {
    /// The context.
    pub context: String,
    /// Every table with its rows.
    pub tables: Vec<TableRows>,
    /// Applied event ids remembered.
    pub inbox: u64,
    /// Events parked behind a missing version.
    pub parked: u64,
    /// Entities with a recorded version.
    pub entities: u64,
    /// Each consumer's last committed stream sequence.
    pub applied_through: Vec<AppliedThrough>,
    /// Lookups answered from the file.
    pub hits: u64,
    /// Lookups the file could not answer.
    pub misses: u64,
    /// Its fallbacks to owners.
    pub fallbacks: Vec<FallbackReport>,
    /// Why the file could not be read, when it could not.
    pub error: Option<String>,
}

/// A publishing context's outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxReport {
    /// The context.
    pub context: String,
    /// Events recorded and not yet acknowledged by JetStream.
    pub backlog: u64,
    /// Why the outbox could not be read, when it could not.
    pub error: Option<String>,
}

/// One dead letter, summed up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterLine {
    /// Its sequence in the dead-letter stream (what `carrier dlq show` takes).
    pub seq: u64,
    /// When it was dead-lettered (RFC 3339).
    pub at: String,
    /// The reason code (`undecodable`, `apply_failed`, ...).
    pub reason: String,
    /// The error in words.
    pub error: String,
    /// The subject it was published on.
    pub subject: String,
    /// Its event type, when its headers say.
    pub event_type: Option<String>,
}

/// A consuming context's dead letters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterReport {
    /// The context.
    pub context: String,
    /// How many are stored.
    pub count: u64,
    /// The latest, newest first.
    pub latest: Vec<DeadLetterLine>,
    /// Why the stream could not be read, when it could not.
    pub error: Option<String>,
}

/// Health overall and per context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// `healthy`, `degraded` or `failed`: the worst of the contexts (and `degraded` while NATS is
    /// unreachable).
    pub status: String,
    /// Whether the connection to NATS is up.
    pub nats_connected: bool,
    /// Each context's health.
    pub contexts: BTreeMap<String, Health>,
}

impl HealthReport {
    /// Every actor running and NATS connected: the process may take traffic.
    pub fn ready(&self) -> bool {
        self.status == "healthy"
    }

    /// Nothing has been given up on.
    pub fn live(&self) -> bool {
        self.status != "failed"
    }
}

/// Everything at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken (RFC 3339).
    pub taken_at: String,
    /// Carrier's version.
    pub version: String,
    /// Health.
    pub health: HealthReport,
    /// Every supervised actor, parents before children.
    pub tree: Vec<ActorReport>,
    /// Every durable consumer.
    pub consumers: Vec<ConsumerReport>,
    /// Every context's file.
    pub caches: Vec<CacheReport>,
    /// Every publishing context's outbox.
    pub outbox: Vec<OutboxReport>,
    /// Every consuming context's dead letters.
    pub dead_letters: Vec<DeadLetterReport>,
    /// Cache rebuilds started since the dashboard started, running or finished.
    #[serde(default)]
    pub rebuilds: Vec<crate::rebuild::RebuildProgress>,
    /// Who publishes and who reads each stream: the graph the dashboard draws (its edges' rates
    /// and lag are the `consumers` of the same durable).
    #[serde(default)]
    pub topology: Vec<StreamNode>,
    /// This instance, and what it holds.
    #[serde(default)]
    pub instance: InstanceReport,
    /// Every context that resyncs from its owners: its full syncs and the positions its
    /// consumers found no longer in their streams.
    #[serde(default)]
    pub full_syncs: Vec<FullSyncReport>,
    /// What the application running Carrier adds (a store node's sync state, say), each a
    /// titled list of settings and values.
    #[serde(default)]
    pub panels: Vec<PanelReport>,
}

/// A context's full syncs (see [`crate::resync`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullSyncReport {
    /// The context.
    pub context: String,
    /// Whether one runs, its progress, how the last one ended.
    pub status: FullSyncStatus,
    /// How often its consumers found the stream no longer holding their position.
    pub positions_lost: u64,
}

/// [`crate::resync::ResyncStatus`], as reports carry it.
pub type FullSyncStatus = crate::resync::ResyncStatus;

/// A panel the application adds to the dashboard: a title and rows of (name, value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanelReport {
    /// Its title.
    pub title: String,
    /// Its rows.
    pub rows: Vec<(String, String)>,
}

/// Reads a panel's rows when a snapshot is taken.
pub type PanelFn = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

/// Who holds one context's lease, as the lease bucket says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReport {
    /// The context.
    pub context: String,
    /// Its holder.
    pub holder: crate::fence::Holder,
    /// Whether the holder is this instance.
    pub mine: bool,
}

/// One running instance of Carrier and what it holds (see [`crate::instance`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// Its id (from `instance.id` in its data directory).
    pub id: String,
    /// The suffix of its read models' own durables.
    pub durable_suffix: String,
    /// The contexts whose lease it holds: it alone runs them.
    pub leases: Vec<String>,
    /// The read models it runs, as every instance may.
    pub read_models: Vec<String>,
    /// Every lease in the bucket, this instance's and the others': who runs what.
    #[serde(default)]
    pub all_leases: Vec<LeaseReport>,
    /// The contexts it stands by for, following their streams, while another instance holds
    /// their leases (see [`crate::standby`]).
    #[serde(default)]
    pub standing_by: Vec<String>,
}

/// One stream in the topology: its publisher and its readers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamNode {
    /// The JetStream stream.
    pub stream: String,
    /// The context that publishes it, when it runs here.
    pub publisher: Option<String>,
    /// Each reading context with its durable consumer.
    pub readers: Vec<StreamReader>,
}

/// A context reading a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReader {
    /// The reading context.
    pub context: String,
    /// Its durable consumer of the stream.
    pub durable: String,
}

/// Reads the running system for operators. Cheap to clone.
#[derive(Clone)]
pub struct Observer {
    bus: Bus,
    tree: SupervisionTree,
    contexts: Arc<Vec<ObservedContext>>,
    extras: ObserverExtras,
    rates: Arc<Mutex<BTreeMap<String, Rates>>>,
    rebuilds: Arc<Mutex<BTreeMap<String, crate::rebuild::Progress>>>,
    instance: Arc<InstanceReport>,
}

#[derive(Default)]
struct Rates {
    last: Option<(Instant, u64)>,
    history: VecDeque<f64>,
}

/// What an application adds to what its system's observers show: panels and dead-letter streams
/// beside the contexts'. One per system, shared by every observer made of it.
#[derive(Clone, Default)]
pub(crate) struct ObserverExtras {
    panels: Arc<Mutex<Vec<(String, PanelFn)>>>,
    /// Dead-letter streams to show beside the contexts' (an event bus's, by its name).
    dead_letter_sources: Arc<Mutex<Vec<String>>>,
}

/// How many dead letters per context a snapshot shows.
const LATEST_DEAD_LETTERS: usize = 5;

impl Observer {
    pub(crate) fn new(
        bus: Bus,
        tree: SupervisionTree,
        contexts: Vec<ObservedContext>,
        instance: Arc<InstanceReport>,
        extras: ObserverExtras,
    ) -> Observer {
        Observer {
            bus,
            tree,
            contexts: Arc::new(contexts),
            extras,
            rates: Arc::default(),
            rebuilds: Arc::default(),
            instance,
        }
    }

    /// Adds a panel to what this system's observers report (the dashboard shows it as a table): the
    /// application's own state beside Carrier's, read by `rows` at every snapshot (so keep it
    /// cheap: counters and flags, no I/O).
    pub fn add_panel(&self, title: impl Into<String>, rows: PanelFn) {
        if let Ok(mut panels) = self.extras.panels.lock() {
            panels.push((title.into(), rows));
        }
    }

    /// Shows the dead letters of `name` (an event bus's, `DLQ_<NAME>`) beside the contexts'.
    pub fn watch_dead_letters(&self, name: impl Into<String>) {
        if let Ok(mut sources) = self.extras.dead_letter_sources.lock() {
            sources.push(name.into());
        }
    }

    /// The application's panels, read now.
    pub fn panels(&self) -> Vec<PanelReport> {
        let mut panels: Vec<(String, PanelFn)> = self.contexts.iter().flat_map(|c| c.panels.iter().cloned()).collect();
        panels.extend(self.extras.panels.lock().map(|p| p.clone()).unwrap_or_default());
        panels.into_iter().map(|(title, rows)| PanelReport { title, rows: rows() }).collect()
    }

    /// Every context that resyncs from its owners: its full syncs' status.
    pub fn full_syncs(&self) -> Vec<FullSyncReport> {
        self.contexts
            .iter()
            .filter_map(|c| {
                let state = c.resync.as_ref()?;
                let positions_lost = c.consumers.iter().map(|p| p.stats.positions_lost.load(Ordering::Relaxed)).sum();
                Some(FullSyncReport { context: c.name.to_string(), status: state.status(), positions_lost })
            })
            .collect()
    }

    /// This instance and what it holds.
    pub fn instance(&self) -> InstanceReport {
        let mut report = self.instance.as_ref().clone();
        report.standing_by =
            self.contexts.iter().filter(|c| c.fence.is_standing_by()).map(|c| c.name.to_string()).collect();
        report.leases.retain(|name| !report.standing_by.contains(name));
        report
    }

    /// Every supervised actor, parents before children.
    pub fn tree(&self) -> Vec<ActorReport> {
        let now = SystemTime::now();
        self.tree.snapshot().into_iter().map(|(path, node)| actor_report(path, node, now)).collect()
    }

    /// Every durable consumer, with the server's view of it.
    pub async fn consumers(&self) -> Vec<ConsumerReport> {
        let probes: Vec<(&'static str, &ConsumerProbe)> =
            self.contexts.iter().flat_map(|c| c.consumers.iter().map(move |p| (c.name, p))).collect();
        let infos = futures::future::join_all(probes.iter().map(|(_, p)| self.bus.consumer_info(p.stream, &p.durable)));
        let infos = infos.await;
        let rates = self.rates.lock().ok();
        probes
            .iter()
            .zip(infos)
            .map(|((context, probe), info)| {
                let s = &probe.stats;
                let counters = ConsumerCounters {
                    delivered: s.delivered.load(Ordering::Relaxed),
                    applied: s.applied.load(Ordering::Relaxed),
                    duplicates: s.duplicates.load(Ordering::Relaxed),
                    stale: s.stale.load(Ordering::Relaxed),
                    parked: s.parked.load(Ordering::Relaxed),
                    dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
                    batches: s.batches.load(Ordering::Relaxed),
                    commit_failures: s.commit_failures.load(Ordering::Relaxed),
                    held_for_holder: s.held_for_holder.load(Ordering::Relaxed),
                };
                let history: Vec<f64> = rates
                    .as_ref()
                    .and_then(|r| r.get(&probe.durable))
                    .map(|r| r.history.iter().copied().collect())
                    .unwrap_or_default();
                let mut report = ConsumerReport {
                    context: context.to_string(),
                    source: probe.source.to_string(),
                    stream: probe.stream.to_string(),
                    durable: probe.durable.clone(),
                    filter_subjects: vec![probe.filter_subject.to_string()],
                    delivered_stream_seq: 0,
                    ack_floor_stream_seq: s.acked_stream_seq.load(Ordering::Relaxed),
                    pending: 0,
                    ack_pending: 0,
                    redelivered: 0,
                    server_error: None,
                    paused: probe.control.is_paused(),
                    held_back: probe.control.is_released(),
                    counters,
                    rate_per_second: history.last().copied().unwrap_or(0.0),
                    rate_history: history,
                };
                match info {
                    Ok(info) => {
                        if !info.filter_subjects.is_empty() {
                            report.filter_subjects = info.filter_subjects;
                        }
                        report.delivered_stream_seq = info.delivered_stream_seq;
                        report.ack_floor_stream_seq = info.ack_floor_stream_seq;
                        report.pending = info.pending;
                        report.ack_pending = info.ack_pending;
                        report.redelivered = info.redelivered;
                    }
                    Err(e) => report.server_error = Some(e.to_string()),
                }
                report
            })
            .collect()
    }

    /// Every context's file: rows per table, engine tables, lookups and fallbacks.
    pub fn caches(&self) -> Vec<CacheReport> {
        self.contexts
            .iter()
            .filter_map(|c| Some((c, c.file.as_ref()?)))
            .map(|(c, file)| {
                let mut report = CacheReport {
                    context: c.name.to_string(),
                    tables: Vec::new(),
                    inbox: 0,
                    parked: 0,
                    entities: 0,
                    applied_through: Vec::new(),
                    hits: c.lookups.as_ref().map(|l| l.hits.load(Ordering::Relaxed)).unwrap_or(0),
                    misses: c.lookups.as_ref().map(|l| l.misses.load(Ordering::Relaxed)).unwrap_or(0),
                    fallbacks: c.fallbacks.iter().map(|f| fallback_report(f)).collect(),
                    error: None,
                };
                match file.table_sizes() {
                    Ok(sizes) => {
                        report.tables = sizes.into_iter().map(|(table, rows)| TableRows { table, rows }).collect()
                    }
                    Err(e) => report.error = Some(e.to_string()),
                }
                match file.engine_stats() {
                    Ok(stats) => {
                        report.inbox = stats.inbox;
                        report.parked = stats.parked;
                        report.entities = stats.entities;
                        report.applied_through = stats
                            .checkpoints
                            .into_iter()
                            .map(|(consumer, stream_seq)| AppliedThrough { consumer, stream_seq })
                            .collect();
                    }
                    Err(e) => report.error = Some(e.to_string()),
                }
                report
            })
            .collect()
    }

    /// Every publishing context's outbox backlog.
    pub fn outbox(&self) -> Vec<OutboxReport> {
        self.contexts
            .iter()
            .filter(|c| c.stream.is_some())
            .filter_map(|c| Some((c, c.file.as_ref()?)))
            .map(|(c, file)| match file.outbox_len() {
                Ok(backlog) => OutboxReport { context: c.name.to_string(), backlog, error: None },
                Err(e) => OutboxReport { context: c.name.to_string(), backlog: 0, error: Some(e.to_string()) },
            })
            .collect()
    }

    /// Every consuming context's dead letters: how many, and the latest.
    pub async fn dead_letters(&self) -> Vec<DeadLetterReport> {
        let mut consuming: Vec<String> =
            self.contexts.iter().filter(|c| c.dead_letters).map(|c| c.name.to_string()).collect();
        consuming.extend(self.extras.dead_letter_sources.lock().map(|s| s.clone()).unwrap_or_default());
        let tails = futures::future::join_all(
            consuming.iter().map(|context| self.bus.dead_letter_tail(context, LATEST_DEAD_LETTERS)),
        )
        .await;
        consuming
            .into_iter()
            .zip(tails)
            .map(|(context, tail)| match tail {
                Ok((count, letters)) => DeadLetterReport {
                    context: context.to_string(),
                    count,
                    latest: letters
                        .iter()
                        .map(|l| DeadLetterLine {
                            seq: l.seq,
                            at: rfc3339_nanos(l.stored_at_unix_nanos),
                            reason: l.header(dead_letter_header::REASON).unwrap_or("?").to_string(),
                            error: l.header(dead_letter_header::ERROR).unwrap_or("").to_string(),
                            subject: l.header(dead_letter_header::ORIGINAL_SUBJECT).unwrap_or("?").to_string(),
                            event_type: l.envelope().map(|e| e.event_type),
                        })
                        .collect(),
                    error: None,
                },
                Err(e) => DeadLetterReport {
                    context: context.to_string(),
                    count: 0,
                    latest: Vec::new(),
                    error: Some(e.to_string()),
                },
            })
            .collect()
    }

    /// Health overall and per context.
    pub fn health(&self) -> HealthReport {
        let tree = self.tree.snapshot();
        let contexts: BTreeMap<String, Health> = self
            .contexts
            .iter()
            .map(|c| {
                let failing_commits =
                    c.consumers.iter().map(|p| p.stats.failing_commits.load(Ordering::Relaxed)).max().unwrap_or(0);
                (c.name.to_string(), fenced_health(context_health(&tree, c.name, failing_commits), &c.fence))
            })
            .collect();
        let nats_connected = self.bus.connected();
        let status = if contexts.values().any(|h| matches!(h, Health::Failed(_))) {
            "failed"
        } else if !nats_connected || contexts.values().any(|h| matches!(h, Health::Degraded(_))) {
            "degraded"
        } else {
            "healthy"
        };
        HealthReport { status: status.to_string(), nats_connected, contexts }
    }

    /// Everything at once.
    pub async fn snapshot(&self) -> Snapshot {
        let files = {
            let this = self.clone();
            tokio::task::spawn_blocking(move || (this.caches(), this.outbox()))
        };
        let (consumers, dead_letters) = tokio::join!(self.consumers(), self.dead_letters());
        let (caches, outbox) = files.await.unwrap_or_default();
        Snapshot {
            taken_at: rfc3339(SystemTime::now()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            health: self.health(),
            tree: self.tree(),
            consumers,
            caches,
            outbox,
            dead_letters,
            rebuilds: self.rebuilds(),
            topology: self.topology(),
            instance: InstanceReport { all_leases: self.all_leases().await, ..self.instance() },
            full_syncs: self.full_syncs(),
            panels: self.panels(),
        }
    }

    /// Every lease the bucket holds (empty when it cannot be read within a second).
    pub async fn all_leases(&self) -> Vec<LeaseReport> {
        let read = async {
            let bucket = self.bus.existing_lease_bucket(crate::fence::LEASE_BUCKET).await?;
            bucket.entries().await.ok()
        };
        let entries = tokio::time::timeout(Duration::from_secs(1), read).await.ok().flatten().unwrap_or_default();
        entries
            .into_iter()
            .filter_map(|(context, value)| {
                let holder: crate::fence::Holder = serde_json::from_slice(&value).ok()?;
                let mine = holder.instance == self.instance.id;
                Some(LeaseReport { context, holder, mine })
            })
            .collect()
    }

    /// Starts rebuilding `context`'s caches from the streams in the background (see
    /// `crate::rebuild`); refuses while one is running for it.
    pub fn start_rebuild(&self, context: &str) -> Result<crate::rebuild::RebuildProgress, ActionError> {
        let observed = self
            .contexts
            .iter()
            .find(|c| c.name == context)
            .ok_or_else(|| ActionError::NotRunning(context.to_string()))?;
        let rebuild = observed.rebuild.clone().ok_or_else(|| {
            let with: Vec<&str> = self.contexts.iter().filter(|c| c.rebuild.is_some()).map(|c| c.name).collect();
            ActionError::NoCaches { context: context.to_string(), with: with.join(", ") }
        })?;
        let mut rebuilds = self.rebuilds.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(running) = rebuilds.get(context) {
            let state = running.lock().map(|p| p.state.clone()).unwrap_or_default();
            if state == "replaying" || state == "swapping" {
                return Err(ActionError::AlreadyRebuilding { context: context.to_string(), state });
            }
        }
        let progress: crate::rebuild::Progress = Arc::new(Mutex::new(crate::rebuild::RebuildProgress {
            context: context.to_string(),
            state: "replaying".into(),
            started_at: rfc3339(SystemTime::now()),
            ..Default::default()
        }));
        rebuilds.insert(context.to_string(), progress.clone());
        let snapshot = progress.lock().map(|p| p.clone()).unwrap_or_default();
        let name = context.to_string();
        tokio::spawn(async move {
            if let Err(error) = rebuild(progress).await {
                tracing::error!(context = %name, %error, "cache rebuild failed");
            }
        });
        Ok(snapshot)
    }

    /// Who publishes and who reads each stream of the running contexts, by stream name.
    pub fn topology(&self) -> Vec<StreamNode> {
        let mut nodes: BTreeMap<&str, StreamNode> = BTreeMap::new();
        let node = |stream: &str| StreamNode { stream: stream.to_string(), publisher: None, readers: Vec::new() };
        for c in self.contexts.iter() {
            if let Some(stream) = c.stream {
                nodes.entry(stream).or_insert_with(|| node(stream)).publisher = Some(c.name.to_string());
            }
            for probe in &c.consumers {
                let entry = nodes.entry(probe.stream).or_insert_with(|| node(probe.stream));
                entry.readers.push(StreamReader { context: c.name.to_string(), durable: probe.durable.clone() });
            }
        }
        nodes.into_values().collect()
    }

    /// Every rebuild started here, by context.
    pub fn rebuilds(&self) -> Vec<crate::rebuild::RebuildProgress> {
        self.rebuilds
            .lock()
            .map(|r| r.values().filter_map(|p| p.lock().ok().map(|p| p.clone())).collect())
            .unwrap_or_default()
    }

    /// Records each consumer's rate since the last call (call it once a second).
    pub fn sample_rates(&self) {
        let now = Instant::now();
        let Ok(mut rates) = self.rates.lock() else { return };
        for probe in self.contexts.iter().flat_map(|c| c.consumers.iter()) {
            let delivered = probe.stats.delivered.load(Ordering::Relaxed);
            let entry = rates.entry(probe.durable.clone()).or_default();
            if let Some((at, before)) = entry.last {
                let seconds = now.duration_since(at).as_secs_f64().max(0.001);
                entry.history.push_back(delivered.saturating_sub(before) as f64 / seconds);
                while entry.history.len() > RATE_HISTORY {
                    entry.history.pop_front();
                }
            }
            entry.last = Some((now, delivered));
        }
    }

    /// Sets the gauges that `/metrics` cannot read on the hot path, from a snapshot.
    pub fn export_gauges(&self, snapshot: &Snapshot) {
        let Some(metrics) = crate::metrics::get() else { return };
        for c in &snapshot.consumers {
            let Some(probe) = self.probe(&c.durable) else { continue };
            let labels = crate::metrics::ConsumerLabels {
                context: probe.0,
                stream: probe.1.stream,
                durable: probe.1.durable.clone(),
            };
            metrics.consumer_pending.get_or_create(&labels).set(c.pending as i64);
            metrics.consumer_ack_pending.get_or_create(&labels).set(c.ack_pending as i64);
        }
        for context in self.contexts.iter() {
            if let Some(o) = snapshot.outbox.iter().find(|o| o.context == context.name) {
                let labels = crate::metrics::ContextLabels { context: context.name };
                metrics.outbox_backlog.get_or_create(&labels).set(o.backlog as i64);
            }
            for fallback in &context.fallbacks {
                let labels = crate::metrics::BreakerLabels { context: context.name, owner: fallback.owner() };
                let value = match fallback.breaker_state() {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open => 2,
                };
                metrics.breaker_state.get_or_create(&labels).set(value);
            }
        }
    }

    fn probe(&self, durable: &str) -> Option<(&'static str, &ConsumerProbe)> {
        self.contexts.iter().find_map(|c| c.consumers.iter().find(|p| p.durable == durable).map(|p| (c.name, p)))
    }

    /// The consumer `context` reads `source` with, or why there is none.
    fn consumer_probe(&self, context: &str, source: &str) -> Result<&ConsumerProbe, ActionError> {
        let observed = self
            .contexts
            .iter()
            .find(|c| c.name == context && !c.consumers.is_empty())
            .ok_or_else(|| ActionError::NotConsuming(context.to_string()))?;
        observed.consumers.iter().find(|p| p.source == source).ok_or_else(|| ActionError::NoSuchSource {
            context: context.to_string(),
            owner: source.to_string(),
            sources: observed.consumers.iter().map(|p| p.source).collect::<Vec<_>>().join(", "),
        })
    }

    /// Pauses (`true`) or resumes the consumer `context` reads `source` with (see
    /// `crate::offsets`); returns whether it was paused before. A pause returns once the
    /// consumer has let go of its subscription (it finishes the batch in hand first), so nothing
    /// published after it is applied until the resume.
    pub async fn pause(&self, context: &str, source: &str, paused: bool) -> Result<bool, ActionError> {
        const LET_GO_WITHIN: Duration = Duration::from_secs(30);
        let control = &self.consumer_probe(context, source)?.control;
        let was = control.set_paused(paused);
        if paused && !control.wait_released(LET_GO_WITHIN).await {
            // Paused all the same: it lets go when it next gets its turn.
            return Err(crate::offsets::RepositionError::NotReleased(LET_GO_WITHIN.as_secs()).into());
        }
        Ok(was)
    }

    /// Seeks or skips the consumer `context` reads `source` with and waits (at most 30 s) for
    /// the consumer to have done it. Refused while the context's caches are being rebuilt.
    pub async fn reposition(
        &self,
        context: &str,
        source: &str,
        change: crate::offsets::Reposition,
    ) -> Result<crate::offsets::Repositioned, ActionError> {
        const TAKE_WITHIN: Duration = Duration::from_secs(30);
        let probe = self.consumer_probe(context, source)?;
        if let Some(reason) = probe.control.fence_reason() {
            return Err(crate::offsets::RepositionError::Fenced(reason).into());
        }
        if let Some(state) = self.rebuild_state(context) {
            return Err(ActionError::AlreadyRebuilding { context: context.to_string(), state });
        }
        let answer = probe.control.request(change)?;
        match tokio::time::timeout(TAKE_WITHIN, answer).await {
            Ok(Ok(result)) => Ok(result?),
            Ok(Err(_)) | Err(_) => {
                probe.control.withdraw();
                Err(crate::offsets::RepositionError::NotTaken(TAKE_WITHIN.as_secs()).into())
            }
        }
    }

    /// `replaying` or `swapping` while a rebuild of `context` runs.
    fn rebuild_state(&self, context: &str) -> Option<String> {
        let rebuilds = self.rebuilds.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = rebuilds.get(context)?.lock().map(|p| p.state.clone()).unwrap_or_default();
        (state == "replaying" || state == "swapping").then_some(state)
    }

    /// Ends the actor at `path` so that its supervisor restarts it (see
    /// `SupervisionTree::restart`).
    pub fn restart(&self, path: &str, kill: bool) -> Result<(), ActionError> {
        Ok(self.tree.restart(path, kill)?)
    }

    /// Publishes every dead letter of `context` again and deletes it. Returns how many.
    pub async fn replay_dead_letters(&self, context: &str) -> Result<u64, ActionError> {
        if !self.contexts.iter().any(|c| c.name == context && !c.consumers.is_empty()) {
            return Err(ActionError::NotConsuming(context.to_string()));
        }
        let mut replayed = 0;
        loop {
            let letters = self.bus.dead_letters(context, 1, 100).await?;
            if letters.is_empty() {
                return Ok(replayed);
            }
            for letter in letters {
                self.bus.replay_dead_letter(context, letter.seq).await?;
                replayed += 1;
            }
        }
    }

    /// Starts a task that takes a snapshot every `period`, records rates, exports gauges, and
    /// hands the snapshot to every watcher. It ends when every receiver is gone.
    pub async fn start_sampler(&self, period: Duration) -> tokio::sync::watch::Receiver<Arc<Snapshot>> {
        self.sample_rates();
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(self.snapshot().await));
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                this.sample_rates();
                let snapshot = this.snapshot().await;
                this.export_gauges(&snapshot);
                if tx.send(Arc::new(snapshot)).is_err() {
                    return;
                }
            }
        });
        rx
    }
}

/// A context's health from the tree and its consumers' failing commits.
/// A fenced context is degraded (unless worse), naming why.
pub(crate) fn fenced_health(health: Health, fence: &crate::fence::Fence) -> Health {
    match (health, fence.reason().filter(|_| fence.is_fenced())) {
        (Health::Healthy | Health::Degraded(_), Some(reason)) => {
            Health::Degraded(format!("fenced (consumers held back, commands refused): {reason}"))
        }
        (health, _) => health,
    }
}

pub(crate) fn context_health(tree: &BTreeMap<String, NodeStatus>, name: &str, failing_commits: u64) -> Health {
    let prefix = format!("{}/{name}", crate::supervisor::ROOT);
    let nodes: Vec<_> =
        tree.iter().filter(|(path, _)| *path == &prefix || path.starts_with(&format!("{prefix}/"))).collect();
    let failed = nodes.iter().find(|(_, n)| n.state == NodeState::Failed);
    let restarting = nodes.iter().find(|(_, n)| matches!(n.state, NodeState::Restarting | NodeState::Starting));
    if let Some((path, node)) = failed {
        Health::Failed(format!("{path}: {}", node.last_failure.clone().unwrap_or_default()))
    } else if let Some((path, node)) = restarting {
        Health::Degraded(format!("{path} restarting after: {}", node.last_failure.clone().unwrap_or_default()))
    } else if failing_commits > 0 {
        Health::Degraded(format!("{failing_commits} commits failed in a row; nothing acknowledged, retrying"))
    } else {
        Health::Healthy
    }
}

fn actor_report(path: String, node: NodeStatus, now: SystemTime) -> ActorReport {
    let parts: Vec<&str> = path.split('/').collect();
    let name = parts.last().copied().unwrap_or("").to_string();
    let parent = (parts.len() > 1).then(|| parts[..parts.len() - 1].join("/"));
    let uptime_seconds = match (node.state, node.started_at) {
        (NodeState::Running, Some(at)) => now.duration_since(at).ok().map(|d| d.as_secs()),
        _ => None,
    };
    ActorReport {
        depth: parts.len() - 1,
        name,
        parent,
        path,
        state: node.state,
        restarts: node.restarts,
        last_failure: node.last_failure,
        last_failure_at: node.last_failure_at.map(rfc3339),
        uptime_seconds,
    }
}

fn fallback_report(f: &Fallback) -> FallbackReport {
    FallbackReport {
        owner: f.owner().to_string(),
        ok: f.stats.ok.load(Ordering::Relaxed),
        failed: f.stats.failed.load(Ordering::Relaxed),
        rejected: f.stats.rejected.load(Ordering::Relaxed),
        negative_hits: f.stats.negative_hits.load(Ordering::Relaxed),
        breaker: f.breaker_state(),
    }
}

fn rfc3339(at: SystemTime) -> String {
    let nanos = at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
    rfc3339_nanos(nanos)
}

fn rfc3339_nanos(nanos: i128) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
