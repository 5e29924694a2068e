//! The writer: the one actor that writes a context's redb file. Batches from the consumers,
//! commands in group commits, owners' answers, inbox pruning and gap repair all run on its turn.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;

use carrier_messages::DomainEvent;
use carrier_storage::{ContextDb, ContextKind, Disposition, FileWriter, Reacts, StorageError};

use crate::consumer::{ApplyBatch, ApplyFailed};
use crate::fallback::FallbackError;
use crate::faults::Faults;
use crate::flow;

use super::*;

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
pub(crate) struct ApplyJob<E> {
    pub(crate) batch: ApplyBatch<E>,
    pub(crate) context: &'static str,
    /// For a context that follows its own stream: applied with [`FileWriter::apply_followed`],
    /// effects held while this fence is up (the instance stands by, or is fenced).
    pub(crate) follows: Option<Arc<crate::fence::Fence>>,
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
pub(crate) const PRUNE_BATCH: usize = 10_000;

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
pub(crate) async fn apply<K: ContextKind>(
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
pub(crate) async fn handle_other<K: ContextKind>(
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

/// While alive, the writer keeps delivered batches waiting; dropping it releases them, even when
/// the rebuild that held them failed or was cancelled.
pub(crate) struct HeldBatches<K: ContextKind>(pub(crate) ActorRef<WriterMsg<K>>);

impl<K: ContextKind> Drop for HeldBatches<K> {
    fn drop(&mut self) {
        let _ = self.0.send_message(WriterMsg::ReleaseBatches);
    }
}
