//! A consuming context's actors: the `cache` writer that alone writes the context's redb file,
//! one consumer per stream it reads, its outbox relay, and its command and query servers.
//!
//! What differs between contexts (baskets, depot, ordering, payments, notifications, search) is
//! the file's [`ContextKind`] and which streams it [`Reacts`] to. Batching, pruning, gap repair,
//! adopting the owners' answers and publishing the outbox are the same for every context.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;

use carrier_messages::Causality;
use carrier_messages::{Decoded, DomainEvent};
use carrier_storage::Inbound;
use carrier_storage::{
    Adopted, Adopts, CommandError, ContextDb, ContextFile, ContextKind, Decided, Decides, Decision, Disposition,
    FileWriter, IdempotencyKey, Reacts, Rows, StorageError,
};

use crate::bus::Bus;
use crate::consumer::{ApplyBatch, ApplyFailed, BatchTarget, ConsumerStats};
use crate::fallback::{Fallback, FallbackError};
use crate::faults::Faults;
use crate::flow;
use crate::rebuild::{fresh_path, lock, Progress, RebuildError, SourceProgress, TableChange, SWAP_ATTEMPTS};
use crate::resync::{ResyncError, ResyncState, ResyncStatus};
use crate::supervisor::{ActorSlot, ChildSpec, RestartPolicy, SupervisionTree, SupervisorArgs};
use carrier_messages::{SnapshotQuery, MAX_SNAPSHOT_PAGE};
use carrier_storage::{CacheSet, SwapCursor, SwapStep, SWAP_ROWS};

/// A write to the context's file that the writer runs on its turn.
pub trait WriteJob<K>: Send + 'static {
    /// Whether the job carries an event about `aggregate_id` (for failure drills).
    fn touches(&self, aggregate_id: &str) -> bool;
    /// Runs the job; returns whether an event was parked behind a missing version.
    fn run(self: Box<Self>, db: &FileWriter<K>) -> bool;
    /// Reports a failure without running (for failure drills).
    fn fail(self: Box<Self>, error: StorageError);
}

/// A delivered batch of `E` events and the flow-log labels it shows.
struct ApplyJob<E> {
    batch: ApplyBatch<E>,
    context: &'static str,
    /// For a context that follows its own stream: applied with [`FileWriter::apply_followed`],
    /// effects held while this fence is up (the instance stands by, or is fenced).
    follows: Option<Arc<crate::fence::Fence>>,
}

impl<K: Reacts<E>, E: DomainEvent> WriteJob<K> for ApplyJob<E> {
    fn touches(&self, aggregate_id: &str) -> bool {
        self.batch.batch.iter().any(|i| i.decoded.envelope.aggregate_id == aggregate_id)
    }

    fn run(self: Box<Self>, db: &FileWriter<K>) -> bool {
        let ApplyBatch { consumer, batch, through, reposition, reply } = self.batch;
        if reposition {
            let outcome = db.set_checkpoint(&consumer, through).map(|()| carrier_storage::BatchOutcome::default());
            let _ = reply.send(outcome.map_err(|error| ApplyFailed { error, batch }));
            return false;
        }
        let (context, follows) = (self.context, self.follows);
        let labels: Option<Vec<String>> = flow::enabled().then(|| {
            batch
                .iter()
                .map(|i| flow::handler(context, i.decoded.event.aggregate_type(), i.decoded.event.event_type()))
                .collect()
        });
        for label in labels.iter().flatten() {
            flow::enter(label);
        }
        let started = std::time::Instant::now();
        let applied = match &follows {
            Some(fence) => db.apply_followed(&consumer, &batch, through, fence.is_fenced()),
            None => db.apply(&consumer, &batch, through),
        };
        match applied {
            Ok(outcome) => {
                if let Some(metrics) = crate::metrics::get() {
                    metrics.record_commit(context, batch.len(), started.elapsed());
                }
                for (label, d) in labels.iter().flatten().zip(&outcome.dispositions) {
                    let note = (*d != Disposition::Applied).then(|| d.as_str());
                    flow::leave(label, note);
                }
                let parked = outcome.dispositions.iter().any(|d| matches!(d, Disposition::Parked { .. }));
                let _ = reply.send(Ok(outcome));
                parked
            }
            Err(error) => {
                for label in labels.iter().flatten() {
                    flow::leave(label, Some(&error.to_string()));
                }
                let _ = reply.send(Err(ApplyFailed { error, batch }));
                false
            }
        }
    }

    fn fail(self: Box<Self>, error: StorageError) {
        let ApplyBatch { batch, reply, .. } = self.batch;
        let _ = reply.send(Err(ApplyFailed { error, batch }));
    }
}

/// A one-off write (a command, an owner's answer), which replies on its own.
pub type RunJob<K> = Box<dyn FnOnce(&FileWriter<K>) + Send + 'static>;

/// Commands waiting for the writer's next group commit, each with where its answer goes.
///
/// Callers push here and wake the writer only when the queue was empty; the writer takes the
/// whole queue on its turn and decides it in one transaction ([`FileWriter::decide_all`]). While
/// that commit is on disk the next commands gather, so the group grows with the load: one fsync
/// per group, not per command, and no waiting at all when commands come one at a time.
pub struct DecisionQueue<K: ContextKind> {
    queued: std::sync::Mutex<Vec<QueuedDecision<K>>>,
    /// Numbers queued decisions, so that a caller can withdraw its own.
    next_id: std::sync::atomic::AtomicU64,
    /// Idempotency keys of queued decisions and of those being decided, until answered.
    in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// A queued command: its decision, its idempotency key (held in flight until it is answered or
/// dropped) and where its answer goes.
struct QueuedDecision<K: ContextKind> {
    id: u64,
    decision: Decision<K>,
    key: Option<(IdempotencyKey, KeyInFlight)>,
    reply: tokio::sync::oneshot::Sender<Result<Decided<<K as ContextKind>::Event>, CommandError>>,
}

/// Holds an idempotency key in flight; lets it go when dropped (answered, or its writer gone).
struct KeyInFlight {
    key: String,
    in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Drop for KeyInFlight {
    fn drop(&mut self) {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// How long a queued command waits for its writer to take it before it is withdrawn and
/// answered unavailable (its writer was given up, or keeps failing to start).
const DECIDE_WAIT: Duration = Duration::from_secs(30);

/// Most commands decided in one transaction (the rest go in the next).
const DECISIONS_PER_COMMIT: usize = 1024;

impl<K: ContextKind> Default for DecisionQueue<K> {
    fn default() -> Self {
        DecisionQueue {
            queued: std::sync::Mutex::new(Vec::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
            in_flight: Arc::default(),
        }
    }
}

impl<K: ContextKind> DecisionQueue<K> {
    /// Holds `key` in flight, or refuses it when a command with it is queued or being decided
    /// (`idempotency_key_in_flight`: its answer is not known yet, so neither replaying it nor
    /// deciding again would be right; the client retries later and gets the first's answer).
    fn hold(&self, key: &IdempotencyKey) -> Result<KeyInFlight, CommandError> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if !in_flight.insert(key.key().to_string()) {
            return Err(CommandError::refused(
                "idempotency_key_in_flight",
                format!("a command with idempotency key {:?} is being decided; retry shortly", key.key()),
            ));
        }
        Ok(KeyInFlight { key: key.key().to_string(), in_flight: self.in_flight.clone() })
    }

    /// A number for a decision about to be queued.
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes decision `id` back if the writer has not taken it yet: then it is certain it will
    /// never be decided. `true` when it was still queued.
    fn withdraw(&self, id: u64) -> bool {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        let before = queued.len();
        queued.retain(|d| d.id != id);
        queued.len() != before
    }

    /// Queues a decision; `true` when the queue was empty (the caller must wake the writer).
    fn push(&self, decision: QueuedDecision<K>) -> bool {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        queued.push(decision);
        queued.len() == 1
    }

    /// Takes up to [`DECISIONS_PER_COMMIT`] queued decisions, oldest first; `true` when more remain.
    fn take(&self) -> (Vec<QueuedDecision<K>>, bool) {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        if queued.len() <= DECISIONS_PER_COMMIT {
            (std::mem::take(&mut *queued), false)
        } else {
            let rest = queued.split_off(DECISIONS_PER_COMMIT);
            (std::mem::replace(&mut *queued, rest), true)
        }
    }
}

/// Messages of [`ContextWriter`].
pub enum WriterMsg<K> {
    /// Decide the queued commands ([`DecisionQueue`]) in one transaction.
    Decide,
    /// Apply a delivered batch; the reply comes after the commit.
    Apply(Box<dyn WriteJob<K>>),
    /// Run a one-off write.
    Run(RunJob<K>),
    /// Delete inbox records older than the retention horizon.
    PruneInbox,
    /// Ask the owners for entities whose parked events still wait for a missing version.
    RepairGaps {
        /// Consecutive failed attempts so far (for backoff).
        attempt: u32,
    },
    /// Keep delivered batches waiting (unapplied, so unacknowledged) until
    /// [`WriterMsg::ReleaseBatches`]: a rebuild's last catch-up and swap see the live position
    /// standing still. Commands, reads and the owners' answers go on.
    HoldBatches,
    /// Apply the held batches, in the order they came, and stop holding.
    ReleaseBatches,
}

/// The kinds of entity `E`'s events are about, each once.
fn aggregates_of<E: DomainEvent>() -> Vec<&'static str> {
    let mut aggregates: Vec<&'static str> =
        E::catalog(&mut carrier_messages::asyncapi::SchemaGenerator::default()).iter().map(|e| e.aggregate).collect();
    aggregates.sort();
    aggregates.dedup();
    aggregates
}

/// Finds an entity's state at its owner and returns the write that adopts it; `Ok(None)` when no
/// owner can be asked about that kind of entity or the owner does not know it.
pub type GapResolver<K> = Arc<
    dyn Fn(String, String) -> Pin<Box<dyn Future<Output = Result<Option<RunJob<K>>, FallbackError>> + Send>>
        + Send
        + Sync,
>;

/// Owns a context's redb file: every write goes through this actor's mailbox, so redb's single
/// writer is never contended and each stream's batches apply in delivery order.
pub struct ContextWriter<K>(std::marker::PhantomData<fn() -> K>);

impl<K> Default for ContextWriter<K> {
    fn default() -> Self {
        ContextWriter(std::marker::PhantomData)
    }
}

/// What [`ContextWriter`] is started with.
pub struct WriterArgs<K: ContextKind> {
    /// The context, for logs.
    pub context: &'static str,
    /// The file it alone writes.
    pub db: Arc<FileWriter<K>>,
    /// Injected failures.
    pub faults: Arc<Faults>,
    /// How long applied event ids stay in the inbox, and how often older ones are deleted.
    pub inbox_retention: InboxRetention,
    /// Asks owners for what a gap lacks.
    pub resolver: GapResolver<K>,
    /// How long a gap may stay open (an out-of-order event may still arrive) before the owner is
    /// asked for the entity's state.
    pub gap_grace: Duration,
    /// Wakes the outbox relay after a commit.
    pub relay_wakeup: Arc<Notify>,
    /// Commands waiting for a group commit.
    pub decisions: Arc<DecisionQueue<K>>,
}

/// The writer's state.
pub struct WriterState<K: ContextKind> {
    args: WriterArgs<K>,
    repair_scheduled: bool,
    /// Batches kept waiting while a rebuild swaps caches in.
    held: Option<Vec<Box<dyn WriteJob<K>>>>,
    /// How many holders (a rebuild, a full sync) hold batches now: released when the last one
    /// lets go, not the first.
    holders: u32,
}

/// How long the inbox keeps applied event ids.
#[derive(Clone, Copy, Debug)]
pub struct InboxRetention {
    /// Records older than this are deleted.
    pub horizon: Duration,
    /// How often the cache looks for them (and for expired idempotency keys).
    pub every: Duration,
    /// How long commands' idempotency keys are kept (24 h by default): a command sent again
    /// with a key after this is decided again.
    pub idempotency_keys: Duration,
}

/// Records deleted per pruning transaction, so one prune never holds the writer for long.
const PRUNE_BATCH: usize = 10_000;

impl<K: ContextKind> Actor for ContextWriter<K> {
    type Msg = WriterMsg<K>;
    type State = WriterState<K>;
    type Arguments = WriterArgs<K>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WriterArgs<K>,
    ) -> Result<WriterState<K>, ActorProcessingErr> {
        myself.send_interval(args.inbox_retention.every, || WriterMsg::PruneInbox);
        // Gaps left open by an earlier incarnation are repaired too.
        myself.send_after(args.gap_grace, || WriterMsg::RepairGaps { attempt: 0 });
        // Whatever an earlier incarnation left in the outbox goes out now, and commands queued
        // while it was down (their wakeup died with it) are decided.
        args.relay_wakeup.notify_one();
        myself.send_message(WriterMsg::Decide)?;
        Ok(WriterState { args, repair_scheduled: true, held: None, holders: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: WriterMsg<K>,
        writer: &mut WriterState<K>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::Apply(job) => match writer.held.as_mut() {
                Some(held) => held.push(job),
                None => apply(&myself, writer, job).await?,
            },
            WriterMsg::HoldBatches => {
                writer.held.get_or_insert_with(Vec::new);
                writer.holders += 1;
            }
            WriterMsg::ReleaseBatches => {
                writer.holders = writer.holders.saturating_sub(1);
                if writer.holders > 0 {
                    return Ok(());
                }
                for job in writer.held.take().unwrap_or_default() {
                    apply(&myself, writer, job).await?;
                }
            }
            msg => handle_other(&myself, writer, msg).await?,
        }
        Ok(())
    }
}

/// Applies one delivered batch on a blocking thread, then wakes the relay and schedules gap
/// repair when the batch parked an event.
async fn apply<K: ContextKind>(
    myself: &ActorRef<WriterMsg<K>>,
    writer: &mut WriterState<K>,
    job: Box<dyn WriteJob<K>>,
) -> Result<(), ActorProcessingErr> {
    let state = &writer.args;
    if Faults::take(&state.faults.cache_panics) {
        panic!("injected panic in the {} cache", state.context);
    }
    let poison = state.faults.cache_panic_on_id.lock().ok().and_then(|id| id.clone());
    if let Some(id) = poison {
        if job.touches(&id) {
            panic!("injected panic on an event about {id}");
        }
    }
    if Faults::take(&state.faults.cache_commit_failures) {
        job.fail(StorageError::io("commit", std::io::Error::other("injected storage failure")));
        return Ok(());
    }
    let db = state.db.clone();
    let parked = tokio::task::spawn_blocking(move || job.run(&db)).await?;
    state.relay_wakeup.notify_one();
    if parked && !writer.repair_scheduled {
        writer.repair_scheduled = true;
        myself.send_after(state.gap_grace, || WriterMsg::RepairGaps { attempt: 0 });
    }
    Ok(())
}

/// Everything but batches: one-off writes, pruning and gap repair.
async fn handle_other<K: ContextKind>(
    myself: &ActorRef<WriterMsg<K>>,
    writer: &mut WriterState<K>,
    msg: WriterMsg<K>,
) -> Result<(), ActorProcessingErr> {
    let state = &writer.args;
    match msg {
        WriterMsg::Apply(_) | WriterMsg::HoldBatches | WriterMsg::ReleaseBatches => {}
        WriterMsg::Decide => {
            let (group, more) = state.decisions.take();
            if more {
                myself.send_message(WriterMsg::Decide)?;
            }
            if group.is_empty() {
                return Ok(());
            }
            let db = state.db.clone();
            tokio::task::spawn_blocking(move || {
                let mut decisions = Vec::with_capacity(group.len());
                let mut keys = Vec::with_capacity(group.len());
                let mut answers = Vec::with_capacity(group.len());
                for QueuedDecision { decision, key, reply, .. } in group {
                    decisions.push(decision);
                    let (key, held) = key.unzip();
                    keys.push(key);
                    answers.push((reply, held));
                }
                let results = db.decide_all_keyed(&mut decisions, &keys);
                // Each key is let go before its answer is sent: the commit is done (a resend finds
                // the key stored, or decides anew after a refusal, which keeps no key), and a caller
                // that resends as soon as it has the answer must not find the key still in flight.
                for ((reply, held), result) in answers.into_iter().zip(results) {
                    drop(held);
                    let _ = reply.send(result);
                }
            })
            .await?;
            state.relay_wakeup.notify_one();
        }
        WriterMsg::Run(job) => {
            let db = state.db.clone();
            tokio::task::spawn_blocking(move || job(&db)).await?;
            state.relay_wakeup.notify_one();
        }
        WriterMsg::PruneInbox => {
            let (db, retention) = (state.db.clone(), state.inbox_retention);
            let pruned = tokio::task::spawn_blocking(move || {
                let keys = db.prune_idempotency(retention.idempotency_keys, PRUNE_BATCH)?;
                Ok::<_, StorageError>(keys + db.prune_inbox(retention.horizon, PRUNE_BATCH)?)
            });
            match pruned.await? {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::debug!(removed, "pruned the inbox and idempotency keys");
                    // A full batch means more is due: continue right away, between batches.
                    if removed as usize >= PRUNE_BATCH {
                        myself.send_message(WriterMsg::PruneInbox)?;
                    }
                }
                // Pruning is housekeeping: a failure is retried at the next tick.
                Err(error) => tracing::warn!(%error, "inbox pruning failed"),
            }
        }
        WriterMsg::RepairGaps { attempt } => {
            writer.repair_scheduled = false;
            let db = state.db.clone();
            let gaps = tokio::task::spawn_blocking(move || db.gaps()).await??;
            if gaps.is_empty() {
                return Ok(());
            }
            writer.repair_scheduled = true;
            // The owner is asked off the write path: the answers come back as Run messages.
            let (resolver, myself) = (state.resolver.clone(), myself.clone());
            let grace = state.gap_grace;
            tokio::spawn(async move {
                let mut failed = false;
                for (aggregate, id, current, waiting) in gaps {
                    tracing::info!(aggregate = %aggregate, id = %id, current, waiting, "version gap; asking the owner");
                    match resolver(aggregate.clone(), id.clone()).await {
                        Ok(Some(adopt)) => {
                            let _ = myself.send_message(WriterMsg::Run(adopt));
                        }
                        Ok(None) => {
                            tracing::warn!(aggregate = %aggregate, id = %id, "no owner knows an entity with parked events; waiting for the missing event");
                            failed = true;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "gap repair must wait for the owner");
                            failed = true;
                        }
                    }
                }
                let next = if failed { attempt + 1 } else { 0 };
                let delay = grace.saturating_mul(1 << next.min(5)).min(Duration::from_secs(30));
                // Check again: either the repair went through or it is retried with backoff.
                myself.send_after(delay, move || WriterMsg::RepairGaps { attempt: next });
            });
        }
    }
    Ok(())
}

/// Rebuilding a context's caches (see `crate::rebuild`).
impl<K: ContextKind> ContextHandle<K> {
    /// Whether this context has caches to rebuild.
    pub fn has_caches(&self) -> bool {
        !self.cache_sources.is_empty()
    }

    /// Rebuilds every cache of the context from the owners' streams into a fresh file beside the
    /// live one, then swaps them in on the writer. `progress` is updated as it goes.
    pub async fn rebuild_caches(&self, bus: &Bus, progress: Progress) -> Result<(), RebuildError> {
        let started = std::time::Instant::now();
        let result = self.rebuild_inner(bus, &progress).await;
        let mut p = lock(&progress);
        p.seconds = Some(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => p.state = "done".into(),
            Err(e) => {
                p.state = "failed".into();
                p.error = Some(e.to_string());
            }
        }
        result
    }

    async fn rebuild_inner(&self, bus: &Bus, progress: &Progress) -> Result<(), RebuildError> {
        if self.cache_sources.is_empty() {
            return Err(RebuildError::NoCaches { context: K::NAME });
        }
        {
            let mut p = lock(progress);
            p.context = K::NAME.to_string();
            p.state = "replaying".into();
            p.sources = self
                .cache_sources
                .iter()
                .map(|s| SourceProgress {
                    stream: String::new(),
                    consumer: s.set.consumer.clone(),
                    ..Default::default()
                })
                .collect();
        }
        let path = fresh_path(self.db.path());
        let _ = std::fs::remove_file(&path);
        let fresh = {
            // A quarter of the live file's page cache: the replay writes mostly new pages, and
            // both files' caches count towards the process's memory while it runs.
            let (path, cache_bytes) = (path.clone(), (self.db.cache_bytes() / 4).max(4 << 20));
            tokio::task::spawn_blocking(move || FileWriter::<K>::open_scratch(&path, cache_bytes)).await?
        }
        .map_err(|source| RebuildError::Create { path: path.clone(), source })?;
        let fresh = Arc::new(fresh);
        // The replay's batches on a connection of their own, not in front of commands.
        let replay_bus = bus.another_connection("rebuild").await?;
        let outcome = self.replay_and_swap(&replay_bus, progress, &fresh).await;
        // Closing the scratch file flushes and syncs it (hundreds of MB after a large replay):
        // off the runtime's threads, where it would hold up every task scheduled behind it.
        tokio::task::spawn_blocking(move || {
            drop(fresh);
            let _ = std::fs::remove_file(&path);
        })
        .await?;
        outcome
    }

    async fn replay_and_swap(
        &self,
        bus: &Bus,
        progress: &Progress,
        fresh: &Arc<FileWriter<K>>,
    ) -> Result<(), RebuildError> {
        // The bulk of the replay runs while the live caches keep applying events.
        for (index, source) in self.cache_sources.iter().enumerate() {
            (source.replay)(bus.clone(), fresh.clone(), progress.clone(), index, None).await?;
        }
        // Then the live batches wait (unacknowledged) while the fresh file catches up with the
        // few events they applied meanwhile, so the swap cannot find the live caches ahead.
        let _held = self.hold_batches().await.map_err(|_| RebuildError::WriterGone)?;
        for (index, source) in self.cache_sources.iter().enumerate() {
            (source.replay)(bus.clone(), fresh.clone(), progress.clone(), index, None).await?;
        }
        // The swap goes a range of ids at a time, each its own short transaction on the writer,
        // so that commands queued meanwhile wait for one range, never for the whole table.
        let sets: Vec<CacheSet> = self.cache_sources.iter().map(|s| s.set.clone()).collect();
        let mut cursor = SwapCursor::default();
        let mut behind_count = 0;
        lock(progress).state = "swapping".into();
        loop {
            let (file, swap_sets) = (fresh.clone(), sets.clone());
            let (step, moved) = self
                .write(move |db| {
                    let step = db.swap_caches_step(&file, &swap_sets, &mut cursor, SWAP_ROWS);
                    (step, cursor)
                })
                .await
                .map_err(|_| RebuildError::WriterGone)?;
            cursor = moved;
            match step? {
                Ok(SwapStep::More(_)) => {}
                Ok(SwapStep::Done(tables)) => {
                    lock(progress).tables = tables
                        .into_iter()
                        .map(|t| TableChange { table: t.table.to_string(), before: t.before, after: t.after })
                        .collect();
                    tracing::info!(context = K::NAME, "caches rebuilt from the streams and swapped in");
                    return Ok(());
                }
                Err(behind) => {
                    // Only a batch already being applied when the hold began can get here: catch
                    // up past it, to the stream's end, and go on where the swap was.
                    behind_count += 1;
                    if behind_count > SWAP_ATTEMPTS {
                        break;
                    }
                    tracing::debug!(?behind, "rebuilt caches behind the live ones; catching up");
                    lock(progress).state = "replaying".into();
                    let index = sets.iter().position(|s| s.consumer == behind.consumer).unwrap_or(0);
                    let source = &self.cache_sources[index];
                    (source.replay)(bus.clone(), fresh.clone(), progress.clone(), index, None).await?;
                    lock(progress).state = "swapping".into();
                }
            }
        }
        Err(RebuildError::KeptMoving { attempts: SWAP_ATTEMPTS })
    }
}

/// While alive, the writer keeps delivered batches waiting; dropping it releases them, even when
/// the rebuild that held them failed or was cancelled.
pub(crate) struct HeldBatches<K: ContextKind>(ActorRef<WriterMsg<K>>);

impl<K: ContextKind> Drop for HeldBatches<K> {
    fn drop(&mut self) {
        let _ = self.0.send_message(WriterMsg::ReleaseBatches);
    }
}

/// Why a lookup found no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The cache missed and the owner could not be asked.
    #[error(transparent)]
    Fallback(#[from] crate::fallback::FallbackError),
    /// The cache could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The cache actor is not running.
    #[error("the cache is not running")]
    Unavailable,
    /// The context keeps no cache of that owner's entities (it is not declared with
    /// [`caches`](crate::context::ContextDecl::caches)).
    #[error("{context} caches no entities of {owner}: declare it with .caches::<E>()")]
    NotCached {
        /// The context looked up in.
        context: &'static str,
        /// The owner asked for.
        owner: &'static str,
    },
}

/// How a consuming context runs.
#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    /// The most events applied per transaction.
    pub batch_max: usize,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// How long applied event ids stay in the inbox.
    pub inbox_retention: InboxRetention,
    /// How the fallbacks behave.
    pub fallback: crate::fallback::FallbackConfig,
    /// How long a version gap may stay open before the owner is asked.
    pub gap_grace: Duration,
    /// How often one event alone may kill the cache before it is dead-lettered.
    pub poison_threshold: u32,
    /// How long a read model instance's own durable may go without a pull before the server
    /// deletes it.
    pub read_model_idle: Duration,
    /// redb's page cache per file, in bytes.
    pub cache_bytes: usize,
}

/// How long a command of a context with a standby waits for its event to be published before
/// it is answered `unavailable` (see [`ContextHandle::decide_once`]).
pub const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// A command decided and committed whose event was not published in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "{context} decided the command (event {event_id}) but could not publish it within {PUBLISH_WAIT:?}; it is \
     published when NATS answers unless another instance takes the context over first: resend it with the same \
     Idempotency-Key to learn which"
)]
pub struct NotYetPublished {
    /// The context.
    pub context: &'static str,
    /// The decided event's id.
    pub event_id: String,
}

/// Why a command sent through a [`ContextHandle`] got no answer from the context.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The command was refused or failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The writer is down (restarting, or the context failed), or stopped while the command
    /// was in flight (it may or may not have been recorded; commands carry their ids so that a
    /// retry is safe).
    #[error(transparent)]
    Unavailable(#[from] LookupError),
}

impl From<ExecuteError> for CommandError {
    fn from(error: ExecuteError) -> CommandError {
        match error {
            ExecuteError::Command(e) => e,
            ExecuteError::Unavailable(e) => CommandError::unavailable(e),
        }
    }
}

/// A lookup that failed inside a command: the command cannot be decided now (`unavailable`),
/// so that a command written with `handle.lookup(..).await?` answers the caller to retry.
impl From<LookupError> for CommandError {
    fn from(error: LookupError) -> CommandError {
        CommandError::unavailable(error)
    }
}

/// What the rest of the process may use of a running context: reads of its file, lookups, and
/// writes that run on its one writer.
pub struct ContextHandle<K: ContextKind> {
    /// Its file, for reading.
    pub db: Arc<ContextFile<K>>,
    /// Each consumer's counters, by the stream's owning context (`stores`, `ordering`, ...).
    pub consumers: Vec<(&'static str, Arc<ConsumerStats>)>,
    /// Fallbacks to owners' entity endpoints, one per owner whose entities it caches.
    pub entity_fallbacks: Vec<Arc<Fallback>>,
    /// Each consumer: stream, durable and counters, for the dashboard.
    pub(crate) probes: Vec<crate::observe::ConsumerProbe>,
    /// Cache lookups answered from the file, and those that were not.
    pub(crate) lookups: Arc<crate::observe::LookupStats>,
    /// Its caches of owners' data and how to refill them from the streams.
    pub(crate) cache_sources: Vec<crate::rebuild::CacheSource<K>>,
    writer: ActorSlot<WriterMsg<K>>,
    decisions: Arc<DecisionQueue<K>>,
    /// Set while this instance may not hold the context's lease: commands are refused.
    pub(crate) fence: Arc<crate::fence::Fence>,
    /// The owners it resyncs from (see [`crate::resync`]).
    pub(crate) resync_sources: Vec<ResyncSource<K>>,
    /// Its full syncs' status.
    pub(crate) resync: Arc<crate::resync::ResyncState>,
    /// What its outbox relay published lately.
    pub(crate) published: Arc<crate::relay::Published>,
    /// Whether a command is answered only once its event is published: set while another
    /// instance stands by for the context, whose state after a takeover is what was published.
    pub(crate) answers_when_published: Arc<std::sync::atomic::AtomicBool>,
}

impl<K: ContextKind> Clone for ContextHandle<K> {
    fn clone(&self) -> Self {
        ContextHandle {
            db: self.db.clone(),
            consumers: self.consumers.clone(),
            entity_fallbacks: self.entity_fallbacks.clone(),
            probes: self.probes.clone(),
            lookups: self.lookups.clone(),
            cache_sources: self.cache_sources.clone(),
            writer: self.writer.clone(),
            decisions: self.decisions.clone(),
            fence: self.fence.clone(),
            resync_sources: self.resync_sources.clone(),
            resync: self.resync.clone(),
            published: self.published.clone(),
            answers_when_published: self.answers_when_published.clone(),
        }
    }
}

impl<K: ContextKind> ContextHandle<K> {
    /// How far it has applied `stream`: the last sequence committed and acknowledged (`None`
    /// when it does not read that stream).
    pub fn applied(&self, stream: &str) -> Option<u64> {
        self.probes
            .iter()
            .find(|p| p.stream == stream)
            .map(|p| p.stats.acked_stream_seq.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Waits until it has applied `position`'s stream through its sequence, at most `timeout`:
    /// read your writes, with a command's [`Position`](crate::Position).
    pub async fn wait_for_position(
        &self,
        position: &crate::Position,
        timeout: std::time::Duration,
    ) -> Result<(), crate::PositionWait> {
        let Some(probe) = self.probes.iter().find(|p| p.stream == position.stream) else {
            return Err(crate::PositionWait::NotRead { context: K::NAME, stream: position.stream.clone() });
        };
        let stats = &probe.stats;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = stats.acked.notified();
            let applied = stats.acked_stream_seq.load(std::sync::atomic::Ordering::Relaxed);
            if applied >= position.seq {
                return Ok(());
            }
            // A full sync or an operator's seek moves the position without a batch: look again
            // at least every 50 ms.
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(crate::PositionWait::Behind { applied, wanted: position.seq, waited: timeout });
            }
            let _ = tokio::time::timeout((deadline - now).min(std::time::Duration::from_millis(50)), notified).await;
        }
    }

    /// The fallback to `owner`'s entity endpoint, when it caches that owner's entities.
    pub fn fallback(&self, owner: &str) -> Option<&Arc<Fallback>> {
        self.entity_fallbacks.iter().find(|f| f.owner() == owner)
    }

    /// The counters of the consumer of `source`'s stream.
    pub fn consumer(&self, source: &str) -> Option<Arc<ConsumerStats>> {
        self.consumers.iter().find(|(s, _)| *s == source).map(|(_, c)| c.clone())
    }

    /// Decides `command` with the context's rules ([`Decides`]) on its writer, in one
    /// transaction with the outbox row of the event it records. When `causality` carries an
    /// idempotency key, a command sent before with that key is answered with what it recorded
    /// (see [`execute_once`](Self::execute_once) to tell the two apart).
    pub async fn execute<C: Send + 'static>(
        &self,
        command: C,
        causality: Causality,
    ) -> Result<Decoded<K::Event>, ExecuteError>
    where
        K: Decides<C>,
    {
        Ok(self.execute_once(command, causality).await?.event)
    }

    /// Like [`execute`](Self::execute), saying whether the answer is a replay of an earlier send
    /// with the same idempotency key ([`Decided::replayed`]).
    pub async fn execute_once<C: Send + 'static>(
        &self,
        command: C,
        causality: Causality,
    ) -> Result<Decided<K::Event>, ExecuteError>
    where
        K: Decides<C>,
    {
        let label = format!("{}.{}", flow::capitalize(K::NAME), K::command_name(&command));
        flow::enter(&label);
        let key = causality.idempotency.clone();
        let result = self.decide_once(key, move |txn, emit| K::decide(txn, emit, &command, &causality)).await;
        match &result {
            Ok(Ok(_)) => flow::leave(&label, None),
            Ok(Err(e)) => flow::leave(&label, Some(&e.to_string())),
            Err(e) => flow::leave(&label, Some(&e.to_string())),
        }
        Ok(result??)
    }

    /// Decides a command on the writer: `decision` reads and writes the context's tables in the
    /// transaction and records exactly one event. Commands that arrive together share one
    /// transaction and one commit (group commit, see `DecisionQueue`), so `decision` may run
    /// more than once and must decide the same way on the same state; nothing of a refused
    /// command is kept. Returns the event once it is committed with its outbox row.
    pub async fn decide(
        &self,
        decision: impl FnMut(
                &carrier_storage::WriteTransaction,
                &mut carrier_storage::Emitter<'_, K::Event>,
            ) -> Result<(), CommandError>
            + Send
            + 'static,
    ) -> Result<Result<Decoded<K::Event>, CommandError>, LookupError> {
        Ok(self.decide_once(None, decision).await?.map(|d| d.event))
    }

    /// Like [`decide`](Self::decide), with an idempotency key: a key seen before is answered with
    /// the event its first command recorded, without running `decision`; a key whose command is
    /// still queued or being decided is refused (`idempotency_key_in_flight`).
    ///
    /// While another instance stands by for the context
    /// ([`follows_itself`](crate::context::ContextDecl::follows_itself)), a command is answered
    /// only once the outbox relay has published its event (the answer's `position` says where):
    /// after a takeover the context's state is what was published, so an answer given before
    /// would promise what a takeover can lose. Alone, an instance answers at the commit and
    /// keeps deciding while NATS is away (the events wait in the outbox). Not published within `PUBLISH_WAIT`
    /// (NATS unreachable), the command is answered `unavailable`: it was decided here and will be
    /// published when NATS answers, unless this instance loses the lease first; a resend with
    /// the same idempotency key tells which.
    pub async fn decide_once(
        &self,
        key: Option<IdempotencyKey>,
        decision: impl FnMut(
                &carrier_storage::WriteTransaction,
                &mut carrier_storage::Emitter<'_, K::Event>,
            ) -> Result<(), CommandError>
            + Send
            + 'static,
    ) -> Result<Result<Decided<K::Event>, CommandError>, LookupError> {
        let decided = self.decide_committed(key, Box::new(decision)).await;
        if !self.answers_when_published.load(std::sync::atomic::Ordering::Relaxed) {
            return decided;
        }
        let Ok(Ok(mut decided)) = decided else { return decided };
        if decided.replayed {
            return Ok(Ok(decided));
        }
        let id = decided.event.envelope.event_id.0.as_u128();
        match self.published.wait(id, PUBLISH_WAIT).await {
            Some(seq) => {
                decided.position = Some(format!("{}:{seq}", <K::Event as carrier_messages::DomainEvent>::STREAM));
                Ok(Ok(decided))
            }
            None => Ok(Err(CommandError::unavailable(NotYetPublished {
                context: K::NAME,
                event_id: decided.event.envelope.event_id.to_string(),
            }))),
        }
    }

    /// Decides on the writer and returns once the decision is committed.
    async fn decide_committed(
        &self,
        key: Option<IdempotencyKey>,
        decision: carrier_storage::Decision<K>,
    ) -> Result<Result<Decided<K::Event>, CommandError>, LookupError> {
        if self.fence.is_fenced() {
            let reason = self.fence.reason().unwrap_or_default();
            return Ok(Err(CommandError::unavailable(crate::fence::Fenced { context: K::NAME.to_string(), reason })));
        }
        let key = match key {
            None => None,
            Some(key) => match self.decisions.hold(&key) {
                Ok(held) => Some((key, held)),
                Err(refused) => return Ok(Err(refused)),
            },
        };
        let writer = self.writer.wait(Duration::from_secs(5)).await.ok_or(LookupError::Unavailable)?;
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let id = self.decisions.id();
        if self.decisions.push(QueuedDecision { id, decision, key, reply: tx })
            && writer.send_message(WriterMsg::Decide).is_err()
        {
            // The writer is gone: take the command back, so that "unavailable" means it was not
            // decided (a restarted writer would otherwise decide it after the caller gave up).
            if self.decisions.withdraw(id) {
                return Err(LookupError::Unavailable);
            }
        }
        tokio::select! {
            reply = &mut rx => reply.map_err(|_| LookupError::Unavailable),
            () = tokio::time::sleep(DECIDE_WAIT) => {
                // Still queued after this long: its writer is not coming back for it.
                if self.decisions.withdraw(id) {
                    return Err(LookupError::Unavailable);
                }
                rx.await.map_err(|_| LookupError::Unavailable)
            }
        }
    }

    /// Runs `job` on the writer (the file's only writer) and returns what it returned.
    pub async fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&FileWriter<K>) -> T + Send + 'static,
    ) -> Result<T, LookupError> {
        let writer = self.writer.wait(Duration::from_secs(5)).await.ok_or(LookupError::Unavailable)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        writer
            .send_message(WriterMsg::Run(Box::new(move |db| {
                let _ = tx.send(job(db));
            })))
            .map_err(|_| LookupError::Unavailable)?;
        rx.await.map_err(|_| LookupError::Unavailable)
    }

    /// Keeps delivered batches waiting until the returned guard drops (see
    /// [`WriterMsg::HoldBatches`]).
    pub(crate) async fn hold_batches(&self) -> Result<HeldBatches<K>, LookupError> {
        let writer = self.writer.wait(Duration::from_secs(5)).await.ok_or(LookupError::Unavailable)?;
        writer.send_message(WriterMsg::HoldBatches).map_err(|_| LookupError::Unavailable)?;
        Ok(HeldBatches(writer))
    }

    /// What operators see of this context.
    pub(crate) fn observed(&self, bus: &crate::bus::Bus) -> crate::observe::ObservedContext {
        let rebuild: Option<crate::observe::RebuildFn> = self.has_caches().then(|| {
            let (h, bus) = (self.clone(), bus.clone());
            let f: crate::observe::RebuildFn = Arc::new(move |progress| {
                let (h, bus) = (h.clone(), bus.clone());
                Box::pin(async move { h.rebuild_caches(&bus, progress).await })
            });
            f
        });
        crate::observe::ObservedContext {
            name: K::NAME,
            fence: self.fence.clone(),
            file: Some(self.db.clone()),
            consumers: self.probes.clone(),
            lookups: Some(self.lookups.clone()),
            fallbacks: self.entity_fallbacks.clone(),
            stream: (!<K::Event as DomainEvent>::EVENT_TYPES.is_empty()).then_some(K::Event::STREAM),
            rebuild,
            resync: (!self.resync_sources.is_empty()).then(|| self.resync.clone()),
            dead_letters: !self.probes.is_empty(),
            panels: Vec::new(),
        }
    }
}

impl<K: ContextKind> ContextHandle<K> {
    /// An entity of `E`'s owner as this context keeps it, in `rows` (one of the tables its
    /// [`Adopts::TABLES`] names for `aggregate`): from the file, or else from the owner's
    /// entity endpoint, adopted with `K`'s [`Adopts`] on the writer (never over a newer version)
    /// and read back. `None` when the owner does not know it, or deleted it (a tombstone: the
    /// cache forgets it). The owner is asked with the fallback's timeout, circuit breaker and
    /// negative cache (`crate::fallback`). Usable from commands, queries and prefetches; the
    /// context must cache `E` ([`caches`](crate::context::ContextDecl::caches)).
    pub async fn lookup<E, T>(&self, aggregate: &'static str, rows: Rows<T>, id: &str) -> Result<Option<T>, LookupError>
    where
        E: DomainEvent,
        K: Adopts<E>,
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        if let Some(row) = self.db.row(&rows, id)? {
            self.lookups.hit();
            return Ok(Some(row));
        }
        self.lookups.miss();
        let fallback = self
            .entity_fallbacks
            .iter()
            .find(|f| f.owner() == E::CONTEXT)
            .ok_or(LookupError::NotCached { context: K::NAME, owner: E::CONTEXT })?;
        let Some(entity) = fallback.entity::<K::State>(aggregate, id).await? else { return Ok(None) };
        let key = id.to_string();
        self.write(move |db| adopt_entity::<K, E>(db, aggregate, &key, entity)).await??;
        Ok(self.db.row(&rows, id)?)
    }
}

/// Writes an entity as its owner reported it, or forgets it for a tombstone (never over a newer
/// version: see [`FileWriter::adopt`]).
fn adopt_entity<K: Adopts<E>, E: DomainEvent>(
    db: &FileWriter<K>,
    aggregate: &'static str,
    id: &str,
    entity: carrier_messages::Entity<K::State>,
) -> Result<Adopted, StorageError> {
    db.adopt::<E>(aggregate, id, entity.version, |tables| match entity.state {
        Some(state) => K::adopt(tables, aggregate, id, state),
        None => K::forget(tables, aggregate, id),
    })
}

/// Looks up, before a batch is applied, what its reactions will read from the caches, so that a
/// miss is filled through the fallback off the write path. A lookup that fails is not an error
/// here: the reaction then finds the row missing and the batch is retried.
pub type Prefetch<K, E> =
    Arc<dyn Fn(ContextHandle<K>, Vec<E>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Assembles a consuming context's supervisor: `cache` (the writer) first, then a consumer per
/// stream, the outbox relay when the context publishes, then its servers.
pub(crate) struct ContextBuilder<K: ContextKind> {
    context: &'static str,
    bus: crate::bus::Bus,
    settings: CacheSettings,
    faults: Arc<Faults>,
    handle: ContextHandle<K>,
    resolvers: Vec<(&'static str, GapResolver<K>)>,
    consumers: Vec<ChildSpec>,
    servers: Vec<ChildSpec>,
    wakeup: Arc<Notify>,
    /// The file's one writer, which only the writer actor gets.
    file: Arc<FileWriter<K>>,
    /// For a read model, which runs on every instance: the instance's suffix of its durables.
    instance: Option<String>,
    /// Whether its relay publishes nothing while the context is fenced (see
    /// [`ContextBuilder::relay_held_by_fence`]).
    relay_held: bool,
    /// Whether it follows its own stream (see [`ContextBuilder::following_itself`]).
    follows_itself: bool,
}

impl<K: ContextKind> ContextBuilder<K> {
    pub(crate) fn new(bus: crate::bus::Bus, file: FileWriter<K>, settings: CacheSettings, faults: Arc<Faults>) -> Self {
        let file = Arc::new(file);
        let handle = ContextHandle {
            db: file.file(),
            consumers: Vec::new(),
            entity_fallbacks: Vec::new(),
            probes: Vec::new(),
            lookups: Arc::default(),
            cache_sources: Vec::new(),
            writer: ActorSlot::default(),
            decisions: Arc::default(),
            fence: Arc::default(),
            resync_sources: Vec::new(),
            resync: Arc::default(),
            published: Arc::default(),
            answers_when_published: Arc::default(),
        };
        ContextBuilder {
            context: K::NAME,
            bus,
            settings,
            faults,
            handle,
            resolvers: Vec::new(),
            consumers: Vec::new(),
            servers: Vec::new(),
            wakeup: Arc::new(Notify::new()),
            file,
            instance: None,
            relay_held: false,
            follows_itself: false,
        }
    }

    /// Its outbox relay publishes nothing while the context is fenced: a context with a standby
    /// may have been taken over meanwhile, and what a deposed holder decided must not follow
    /// the new holder's events onto the stream (it is dead-lettered, `deposed`, when the
    /// instance next starts standing by).
    pub(crate) fn relay_held_by_fence(&mut self) -> &mut Self {
        self.relay_held = true;
        self
    }

    /// For a context that follows its own stream (and so may stand by): every instance reads
    /// the streams it consumes through durables of its own, and its consumers go on while the
    /// context is fenced, applying with [`FileWriter::apply_followed`]: what emits nothing
    /// (caches) applies, so a standby's caches stay current; a reaction that would emit waits
    /// until its effect was followed from the context's own stream (then it does not run again)
    /// or this instance holds the context.
    pub(crate) fn following_itself(&mut self, suffix: String) -> &mut Self {
        self.follows_itself = true;
        self.per_instance(suffix)
    }

    /// Gives every consumer of this context a durable of this instance's own (a read model runs
    /// on every instance, and instances sharing a durable would split its stream).
    pub(crate) fn per_instance(&mut self, suffix: String) -> &mut Self {
        self.instance = Some(suffix);
        self
    }

    /// The fence this instance's lease of the context sets (see [`crate::fence::Fence`]).
    pub(crate) fn fenced_by(&mut self, fence: Arc<crate::fence::Fence>) -> &mut Self {
        self.handle.fence = fence;
        self
    }

    /// The durable this context reads `source`'s stream with.
    fn durable(&self, source: &str) -> String {
        match &self.instance {
            Some(suffix) => instance_durable_name(self.context, source, suffix),
            None => durable_name(self.context, source),
        }
    }

    /// The handle as built so far (lookups work once the writer runs).
    pub(crate) fn handle(&self) -> ContextHandle<K> {
        self.handle.clone()
    }

    /// The connection.
    pub(crate) fn bus(&self) -> crate::bus::Bus {
        self.bus.clone()
    }

    /// Makes `tables` (filled from `E`'s stream alone) rebuildable: `carrier rebuild` replays
    /// the stream into a fresh file and swaps them in (see [`crate::rebuild`]).
    pub(crate) fn rebuild_source<E: DomainEvent>(
        &mut self,
        tables: &'static [&'static str],
        aggregates: &'static [&'static str],
    ) where
        K: Reacts<E>,
    {
        self.handle.cache_sources.push(crate::rebuild::CacheSource {
            set: carrier_storage::CacheSet {
                tables: tables.to_vec(),
                aggregates: aggregates.to_vec(),
                consumer: self.durable(E::CONTEXT),
            },
            replay: crate::rebuild::replay_source::<K, E>(),
        });
    }

    /// Adds a consumer of `E`'s stream on the durable `<context>-<source>`.
    pub(crate) fn consume<E: DomainEvent>(&mut self, prefetch: Option<Prefetch<K, E>>) -> &mut Self
    where
        K: Reacts<E>,
    {
        use crate::consumer::{CheckpointReader, ConsumerArgs, EventConsumer, PoisonGuard};
        let source = E::CONTEXT;
        let context = self.context;
        let stats = Arc::new(ConsumerStats::default());
        let control = Arc::new(match self.follows_itself {
            false => crate::offsets::ConsumerControl::fenced_by(self.handle.fence.clone()),
            true => crate::offsets::ConsumerControl::default(),
        });
        let follows = self.follows_itself.then(|| self.handle.fence.clone());
        self.handle.consumers.push((source, stats.clone()));
        let durable = self.durable(source);
        // A read model moving to durables of its own keeps its place: its checkpoint was kept
        // under the shared name before.
        let shared = (self.instance.is_some()).then(|| durable_name(context, source));
        self.handle.probes.push(crate::observe::ConsumerProbe {
            source,
            stream: E::STREAM,
            durable: durable.clone(),
            filter_subject: E::STREAM_SUBJECTS,
            stats: stats.clone(),
            control: control.clone(),
        });
        let guard = Arc::new(PoisonGuard::default());
        let (bus, faults, settings) = (self.bus.clone(), self.faults.clone(), self.settings);
        let handle = self.handle.clone();
        let spec = ChildSpec::new(&format!("{source}-consumer"), move |supervisor, siblings| {
            let (durable, shared, follows) = (durable.clone(), shared.clone(), follows.clone());
            let per_instance = shared.is_some();
            let (bus, stats, faults, guard, handle, prefetch, control) = (
                bus.clone(),
                stats.clone(),
                faults.clone(),
                guard.clone(),
                handle.clone(),
                prefetch.clone(),
                control.clone(),
            );
            async move {
                let writer: ActorRef<WriterMsg<K>> =
                    siblings.get("cache").cloned().ok_or("the cache is not running")?.into();
                let spec = crate::bus::DurableSpec {
                    stream: E::STREAM.to_string(),
                    durable,
                    description: format!("{context}: reads {source} events"),
                    filter_subject: E::STREAM_SUBJECTS.to_string(),
                    ack_wait: settings.ack_wait,
                    max_ack_pending: 20_000,
                    batch_max: settings.batch_max,
                    // No lingering: while one batch commits the next gathers, so batches grow
                    // with the load on their own; a linger only adds latency (measured: p50
                    // 5-8 ms with 2 ms, 3.4 ms without, at 5,000 events/s; the same throughput).
                    linger: Duration::ZERO,
                    inactive_threshold: per_instance.then_some(settings.read_model_idle),
                };
                let db = handle.db.clone();
                let checkpoint: CheckpointReader =
                    Arc::new(move |durable: &str| match db.checkpoint_entry(durable)? {
                        None => shared.as_deref().map_or(Ok(0), |name| db.checkpoint(name)),
                        Some(seq) => Ok(seq),
                    });
                // A context that resyncs from its owners does so when the stream no longer holds
                // its position, retrying until one sync succeeds; another only reports it.
                let on_position_lost = (!handle.resync_sources.is_empty()).then(|| {
                    let handle = handle.clone();
                    Arc::new(move |lost: crate::consumer::PositionLost| {
                        let handle = handle.clone();
                        tokio::spawn(async move {
                            let reason = format!(
                                "position lost: asked for {} but {source} retains from {}",
                                lost.requested, lost.first_retained
                            );
                            // Until a sync succeeds (which lets the consumer go on): one that
                            // runs already may succeed for it, else this one tries again.
                            let lost = |handle: &ContextHandle<K>| {
                                handle.probes.iter().any(|p| p.source == source && p.control.position_lost())
                            };
                            let mut wait = Duration::from_secs(1);
                            while lost(&handle) {
                                match handle.resync(&reason).await {
                                    Ok(_) => break,
                                    Err(crate::resync::ResyncError::InProgress) => {
                                        tokio::time::sleep(Duration::from_millis(200)).await
                                    }
                                    Err(_) => {
                                        tokio::time::sleep(wait).await;
                                        wait = (wait * 2).min(Duration::from_secs(30));
                                    }
                                }
                            }
                        });
                    }) as crate::consumer::PositionLostHook
                });
                let target = apply_target::<K, E>(writer, context, follows, prefetch, handle);
                let args = ConsumerArgs {
                    on_position_lost,
                    bus,
                    context,
                    spec,
                    target,
                    stats,
                    faults,
                    checkpoint,
                    guard,
                    poison_threshold: settings.poison_threshold,
                    control,
                };
                let (actor, _) = Actor::spawn_linked(None, EventConsumer::<E>::default(), args, supervisor).await?;
                Ok(actor.get_cell())
            }
        });
        self.consumers.push(spec);
        self
    }

    /// Resyncs the entities of `E`'s owner from its snapshot endpoint (see [`crate::resync`]).
    pub(crate) fn resync_source<E: DomainEvent>(&mut self) -> &mut Self
    where
        K: carrier_storage::Resyncs<E>,
    {
        let aggregates = aggregates_of::<E>();
        let source =
            owner_snapshot_source::<K, E>(self.bus.clone(), self.durable(E::CONTEXT), aggregates, self.faults.clone());
        self.handle.resync_sources.push(source);
        self
    }

    /// Repairs version gaps of the entities of `E`'s owner through the owner's entity endpoint
    /// (`query.<owner>.entity`), adopting what the owner reports with `K`'s [`Adopts`].
    pub(crate) fn entity_fallback<E: DomainEvent>(&mut self) -> &mut Self
    where
        K: Adopts<E>,
    {
        let fallback = Arc::new(Fallback::new(E::CONTEXT, self.bus.clone(), self.settings.fallback));
        self.handle.entity_fallbacks.push(fallback.clone());
        let tables = <K as Adopts<E>>::TABLES;
        if !tables.is_empty() {
            // Its tables are filled from the owner's stream alone: `carrier rebuild` can replay it.
            self.handle.cache_sources.push(crate::rebuild::CacheSource {
                set: carrier_storage::CacheSet {
                    tables: tables.iter().map(|(_, table)| *table).collect(),
                    aggregates: tables.iter().map(|(aggregate, _)| *aggregate).collect(),
                    consumer: self.durable(E::CONTEXT),
                },
                replay: crate::rebuild::replay_source::<K, E>(),
            });
        }
        for aggregate in aggregates_of::<E>() {
            let fallback = fallback.clone();
            let resolver: GapResolver<K> = Arc::new(move |_aggregate: String, id: String| {
                let fallback = fallback.clone();
                Box::pin(async move {
                    let entity = fallback.entity::<K::State>(aggregate, &id).await?;
                    Ok(entity.map(|entity| {
                        Box::new(move |db: &FileWriter<K>| log_adopt(adopt_entity::<K, E>(db, aggregate, &id, entity)))
                            as RunJob<K>
                    }))
                })
            });
            self.resolvers.push((aggregate, resolver));
        }
        self
    }

    /// Adds a server (commands or queries) started after everything else.
    pub(crate) fn serve(&mut self, spec: ChildSpec) -> &mut Self {
        self.servers.push(spec);
        self
    }

    /// The supervisor's arguments and the handle.
    pub(crate) fn build(self, tree: SupervisionTree, path: String) -> (SupervisorArgs, ContextHandle<K>) {
        let ContextBuilder {
            context,
            bus,
            settings,
            faults,
            handle,
            resolvers,
            consumers,
            servers,
            wakeup,
            file,
            relay_held,
            ..
        } = self;
        let resolvers = Arc::new(resolvers);
        let resolver: GapResolver<K> = Arc::new(move |aggregate: String, id: String| {
            let found = resolvers.iter().find(|(kind, _)| *kind == aggregate).map(|(_, r)| r.clone());
            Box::pin(async move {
                match found {
                    Some(resolve) => resolve(aggregate, id).await,
                    None => Ok(None),
                }
            })
        });
        let slot = handle.writer.clone();
        let decisions = handle.decisions.clone();
        let (db, writer_faults, writer_wakeup) = (file, faults.clone(), wakeup.clone());
        // The writer of a context that reads no stream is its owner; otherwise it is its cache.
        let writer_name: &'static str = if consumers.is_empty() { "owner" } else { "cache" };
        let writer = ChildSpec::new(writer_name, move |supervisor, _siblings| {
            let args = WriterArgs {
                context,
                db: db.clone(),
                faults: writer_faults.clone(),
                inbox_retention: settings.inbox_retention,
                resolver: resolver.clone(),
                gap_grace: settings.gap_grace,
                relay_wakeup: writer_wakeup.clone(),
                decisions: decisions.clone(),
            };
            let slot = slot.clone();
            async move {
                let (actor, _) = Actor::spawn_linked(None, ContextWriter::<K>::default(), args, supervisor).await?;
                slot.set(actor.clone());
                Ok(actor.get_cell())
            }
        });
        let mut children = vec![writer];
        children.extend(consumers);
        if !K::Event::EVENT_TYPES.is_empty() {
            let db = handle.db.clone();
            let published = handle.published.clone();
            let held_by = relay_held.then(|| handle.fence.clone());
            let relay = ChildSpec::new("outbox-relay", move |supervisor, siblings| {
                let (bus, db, wakeup, faults) = (bus.clone(), db.clone(), wakeup.clone(), faults.clone());
                let (published, held_by) = (published.clone(), held_by.clone());
                async move {
                    use crate::relay::{MarkError, MarkPublished, OutboxRelay, ReadOutbox, RelayArgs};
                    let writer: ActorRef<WriterMsg<K>> =
                        siblings.get(writer_name).cloned().ok_or("the writer is not running")?.into();
                    let pending: ReadOutbox = Arc::new(move |limit| db.outbox_pending(limit));
                    let mark: MarkPublished = Arc::new(move |keys| {
                        let writer = writer.clone();
                        Box::pin(async move {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            writer
                                .send_message(WriterMsg::Run(Box::new(move |db| {
                                    let _ = tx.send(db.outbox_remove(&keys));
                                })))
                                .map_err(|_| MarkError::WriterGone)?;
                            Ok(rx.await.map_err(|_| MarkError::WriterGone)??)
                        })
                    });
                    let args = RelayArgs { bus, context, pending, mark, wakeup, faults, published, held_by };
                    let (actor, _) = Actor::spawn_linked(None, OutboxRelay, args, supervisor).await?;
                    Ok(actor.get_cell())
                }
            });
            children.push(relay);
        }
        children.extend(servers);
        (SupervisorArgs { path, children, policy: RestartPolicy::context(), tree }, handle)
    }
}

fn log_adopt(result: Result<Adopted, StorageError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "could not write the owner's state");
    }
}

/// Hands batches to the writer, after `prefetch` has filled what their reactions will read.
fn apply_target<K: Reacts<E>, E: DomainEvent>(
    writer: ActorRef<WriterMsg<K>>,
    context: &'static str,
    follows: Option<Arc<crate::fence::Fence>>,
    prefetch: Option<Prefetch<K, E>>,
    handle: ContextHandle<K>,
) -> BatchTarget<E> {
    Arc::new(move |batch: ApplyBatch<E>| {
        let job = ApplyJob { batch, context, follows: follows.clone() };
        match &prefetch {
            None => writer.send_message(WriterMsg::Apply(Box::new(job))).is_ok(),
            Some(prefetch) => {
                let events: Vec<E> = job.batch.batch.iter().map(|i: &Inbound<E>| i.decoded.event.clone()).collect();
                let (writer, lookups) = (writer.clone(), prefetch(handle.clone(), events));
                // If the writer dies meanwhile, the reply port drops and the consumer sees it.
                tokio::spawn(async move {
                    lookups.await;
                    let _ = writer.send_message(WriterMsg::Apply(Box::new(job)));
                });
                true
            }
        }
    })
}

/// The durable name `context` reads `source`'s stream with: unique per consuming context, so that
/// two contexts never share (and split) one consumer's messages.
pub fn durable_name(context: &str, source: &str) -> String {
    format!("{context}-{source}")
}

/// The durable name an instance of a read model (which runs on every instance) reads `source`'s
/// stream with: `<context>-<source>-<suffix>`, the suffix taken from the instance id.
pub fn instance_durable_name(context: &str, source: &str, suffix: &str) -> String {
    format!("{context}-{source}-{suffix}")
}

// ---- Full sync from an owner's snapshot (see `crate::resync` for the steps and the status) ----

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One owner a context resyncs from: what a full sync runs for it.
pub(crate) struct ResyncSource<K: ContextKind> {
    /// Reads the owner's snapshot and replaces the cached entities; returns how many it wrote.
    pub run: Arc<dyn Fn(ContextHandle<K>, Arc<ResyncState>) -> BoxFuture<Result<u64, ResyncError>> + Send + Sync>,
}

impl<K: ContextKind> Clone for ResyncSource<K> {
    fn clone(&self) -> Self {
        ResyncSource { run: self.run.clone() }
    }
}

/// The source for `E`'s owner: its aggregates' snapshots, into the consumer `durable`'s file.
pub(crate) fn owner_snapshot_source<K, E>(
    bus: Bus,
    durable: String,
    aggregates: Vec<&'static str>,
    faults: Arc<crate::faults::Faults>,
) -> ResyncSource<K>
where
    K: carrier_storage::Resyncs<E>,
    E: DomainEvent,
{
    let run = move |handle: ContextHandle<K>, state: Arc<ResyncState>| {
        let (bus, durable, aggregates, faults) = (bus.clone(), durable.clone(), aggregates.clone(), faults.clone());
        Box::pin(async move {
            let owner = E::CONTEXT;
            // The consumers of the owner's stream let go of their subscriptions, so that they
            // start again from the checkpoint the sync leaves (not replaying, stale, what the
            // snapshot already holds); the writer holds whatever batch was already on its way.
            let controls: Vec<Arc<crate::offsets::ConsumerControl>> =
                handle.probes.iter().filter(|p| p.source == owner).map(|p| p.control.clone()).collect();
            let _resuming = crate::resync::Resume(controls.clone());
            for control in &controls {
                control.set_resyncing(true);
            }
            for control in &controls {
                control.wait_released(Duration::from_secs(5)).await;
            }
            let held = handle.hold_batches().await.map_err(|e| ResyncError::Unavailable(e.to_string()))?;
            // Without the stream's position (JetStream out of reach: a fallback sync) the
            // snapshot is merged where newer, and the checkpoint stays.
            let through = match bus.last_sequence(E::STREAM).await {
                Ok(seq) => Some(seq),
                Err(error) => {
                    tracing::warn!(context = K::NAME, %error, "the stream cannot be read: merging the owner's snapshot where it is newer");
                    None
                }
            };
            // Every kind read first, then written in one transaction: a page that fails leaves
            // the cache as it was.
            let mut snapshot = Vec::with_capacity(aggregates.len());
            for aggregate in aggregates {
                let mut entities: Vec<(String, u64, Option<K::State>)> = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let query = SnapshotQuery {
                        aggregate: aggregate.to_string(),
                        after: after.take(),
                        limit: MAX_SNAPSHOT_PAGE,
                    };
                    if crate::faults::Faults::take(&faults.resync_slow_pages) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let page = crate::resync::ask_page(&bus, owner, &query).await?;
                    for entity in page.entities {
                        let state = entity.state.map(serde_json::from_value::<K::State>).transpose().map_err(|e| {
                            ResyncError::Owner { owner, reason: format!("{aggregate} {:?}: {e}", entity.id) }
                        })?;
                        entities.push((entity.id, entity.version, state));
                    }
                    let done = entities.len() as u64;
                    state.update(|s| {
                        s.done = done;
                        s.total = page.total.max(done);
                    });
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                snapshot.push((aggregate, entities));
            }
            let written = handle
                .write(move |w| w.resync::<E>(&durable, through, snapshot))
                .await
                .map_err(|e| ResyncError::Unavailable(e.to_string()))??;
            drop(held);
            if let Some(through) = through {
                state.update(|s| s.last_through = through);
                // The hole a lost position left is filled: its consumers may go on, from `through`.
                for probe in handle.probes.iter().filter(|p| p.source == owner) {
                    probe.stats.acked_stream_seq.store(through, std::sync::atomic::Ordering::Relaxed);
                    probe.stats.acked.notify_waiters();
                    probe.control.set_position_lost(false);
                }
            }
            Ok(written)
        }) as BoxFuture<_>
    };
    ResyncSource { run: Arc::new(run) }
}

impl<K: ContextKind> ContextHandle<K> {
    /// Replaces the cached entities of every owner this context [resyncs](crate::context::ContextDecl::resyncs)
    /// from with the owner's snapshot (see the module's steps); `reason` is kept in the status.
    /// Returns how many entities were written. One sync runs at a time: another while it runs is
    /// refused ([`ResyncError::InProgress`]). On failure the cache keeps its old rows, its
    /// consumers go on, and the status says why.
    pub async fn resync(&self, reason: &str) -> Result<u64, ResyncError> {
        if self.resync_sources.is_empty() {
            return Err(ResyncError::NotDeclared { context: K::NAME });
        }
        let state = self.resync.clone();
        let Ok(_running) = state.running.try_lock() else { return Err(ResyncError::InProgress) };
        let started = std::time::Instant::now();
        state.update(|s| {
            s.in_progress = true;
            s.done = 0;
            s.total = 0;
            s.last_reason = Some(reason.to_string());
            s.last_started_unix_ms = Some(crate::resync::unix_ms(std::time::SystemTime::now()));
        });
        tracing::info!(context = K::NAME, reason, "full sync from the owner's snapshot");
        let mut result = Ok(0);
        for source in &self.resync_sources {
            match (source.run)(self.clone(), state.clone()).await {
                Ok(n) => result = result.map(|total| total + n),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let elapsed = started.elapsed();
        state.update(|s| {
            s.in_progress = false;
            s.last_finished_unix_ms = Some(crate::resync::unix_ms(std::time::SystemTime::now()));
            s.last_duration_ms = Some(elapsed.as_millis() as u64);
            s.last_success = Some(result.is_ok());
            match &result {
                Ok(n) => {
                    s.completed += 1;
                    s.last_count = *n;
                    s.last_error = None;
                }
                Err(e) => {
                    s.failed += 1;
                    s.last_error = Some(e.to_string());
                }
            }
        });
        match &result {
            Ok(n) => tracing::info!(
                context = K::NAME,
                entities = n,
                duration_ms = elapsed.as_millis() as u64,
                "full sync done"
            ),
            Err(error) => tracing::warn!(context = K::NAME, %error, "full sync failed; the cache keeps its rows"),
        }
        result
    }

    /// The state of its full syncs.
    pub fn resync_status(&self) -> ResyncStatus {
        self.resync.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A neutral context for the queue's tests: it publishes nothing and keeps no tables.
    struct Neutral;

    impl ContextKind for Neutral {
        const NAME: &'static str = "neutral";
        type Event = carrier_messages::NoEvents;
    }

    /// A key is held while its command is queued or decided: a second send with it is refused
    /// as in flight, and the key is let go when its first command is answered or dropped.
    #[test]
    fn a_key_is_in_flight_until_its_command_is_answered_or_dropped() {
        let queue = DecisionQueue::<Neutral>::default();
        let key = IdempotencyKey::new("order-1", b"{}".to_vec()).expect("key");
        let held = queue.hold(&key).expect("the first send holds it");
        let refused = queue.hold(&key).map(|_| ()).expect_err("a second send while the first is in flight");
        assert!(matches!(refused, CommandError::Refused { code: "idempotency_key_in_flight", .. }), "{refused:?}");
        let other = IdempotencyKey::new("order-2", b"{}".to_vec()).expect("key");
        let _other = queue.hold(&other).expect("another key is free");
        drop(held);
        assert!(queue.hold(&key).is_ok(), "let go once the first was answered");
    }

    /// A queued decision can be withdrawn until the writer takes it, and only then.
    #[test]
    fn a_queued_decision_is_withdrawn_only_while_still_queued() {
        let queue = DecisionQueue::<Neutral>::default();
        let decision = |id| {
            let (reply, _rx) = tokio::sync::oneshot::channel();
            let decide: Decision<Neutral> = Box::new(|_, _| Ok(()));
            QueuedDecision { id, decision: decide, key: None, reply }
        };
        let (first, second) = (queue.id(), queue.id());
        assert!(queue.push(decision(first)), "the first wakes the writer");
        assert!(!queue.push(decision(second)));
        assert!(queue.withdraw(first));
        assert!(!queue.withdraw(first), "gone already");
        let (taken, more) = queue.take();
        assert_eq!((taken.len(), more), (1, false));
        assert!(!queue.withdraw(second), "taken by the writer: it will be decided");
    }
}
