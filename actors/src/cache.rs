//! The cache actor of a context that keeps stores data (baskets, depot): the only writer of that
//! context's redb file. The context-specific part is its database's projection
//! ([`StoresCacheDb`]); batching, pruning, gap repair and adopting the owner's answers are the same
//! for every such context.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use carrier_messages::stores::{ProductSnapshot, StoreSnapshot, StoresEvent};
use carrier_messages::DomainEvent;
use carrier_storage::{Adopted, StorageError, StoresCacheDb};

use crate::consumer::{ApplyBatch, ApplyFailed};
use crate::fallback::StoresFallback;
use crate::faults::Faults;
use crate::flow;

/// Owns a context's redb file and applies store and product events to it, a batch per commit.
///
/// Every write goes through this actor's mailbox, so redb's single writer is never contended and
/// batches apply in delivery order.
pub struct StoresCache<D>(std::marker::PhantomData<fn() -> D>);

impl<D> Default for StoresCache<D> {
    fn default() -> Self {
        StoresCache(std::marker::PhantomData)
    }
}

/// Messages of [`StoresCache`].
pub enum CacheMsg {
    /// Apply a batch of stores events; the reply comes after the commit.
    ApplyStores(ApplyBatch<StoresEvent>),
    /// Delete inbox records older than the retention horizon.
    PruneInbox,
    /// Write an entity's state as its owner reported it (never over a newer version).
    Adopt {
        /// The owner's answer.
        state: OwnerState,
        /// Told the outcome, if anyone waits for it.
        reply: Option<RpcReplyPort<Result<Adopted, StorageError>>>,
    },
    /// Ask the owner for entities whose parked events still wait for a missing version.
    RepairGaps {
        /// Consecutive failed attempts so far (for backoff).
        attempt: u32,
    },
}

/// An entity's state from its owner.
#[derive(Clone, Debug)]
pub enum OwnerState {
    /// A store.
    Store(StoreSnapshot),
    /// A product.
    Product(ProductSnapshot),
}

impl From<ApplyBatch<StoresEvent>> for CacheMsg {
    fn from(batch: ApplyBatch<StoresEvent>) -> Self {
        CacheMsg::ApplyStores(batch)
    }
}

/// What [`StoresCache`] is started with.
pub struct CacheArgs<D> {
    /// The consuming context, for logs.
    pub context: &'static str,
    /// The database it alone writes.
    pub db: Arc<D>,
    /// Injected failures.
    pub faults: Arc<Faults>,
    /// How long applied event ids stay in the inbox, and how often older ones are deleted.
    pub inbox_retention: InboxRetention,
    /// Asks the stores context for what the cache lacks.
    pub fallback: Arc<StoresFallback>,
    /// How long a gap may stay open (an out-of-order event may still arrive) before the owner is
    /// asked for the entity's state.
    pub gap_grace: Duration,
}

/// The cache's state.
pub struct CacheState<D> {
    args: CacheArgs<D>,
    repair_scheduled: bool,
}

/// How long the inbox keeps applied event ids.
#[derive(Clone, Copy, Debug)]
pub struct InboxRetention {
    /// Records older than this are deleted.
    pub horizon: Duration,
    /// How often the cache looks for them.
    pub every: Duration,
}

/// Records deleted per pruning transaction, so one prune never holds the writer for long.
const PRUNE_BATCH: usize = 10_000;

impl<D: StoresCacheDb> Actor for StoresCache<D> {
    type Msg = CacheMsg;
    type State = CacheState<D>;
    type Arguments = CacheArgs<D>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CacheArgs<D>,
    ) -> Result<CacheState<D>, ActorProcessingErr> {
        myself.send_interval(args.inbox_retention.every, || CacheMsg::PruneInbox);
        // Gaps left open by an earlier incarnation are repaired too.
        myself.send_after(args.gap_grace, || CacheMsg::RepairGaps { attempt: 0 });
        Ok(CacheState { args, repair_scheduled: true })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: CacheMsg,
        cache: &mut CacheState<D>,
    ) -> Result<(), ActorProcessingErr> {
        let state = &cache.args;
        match msg {
            CacheMsg::ApplyStores(ApplyBatch { consumer, batch, through, reply }) => {
                if Faults::take(&state.faults.cache_panics) {
                    panic!("injected panic in the {} cache", state.context);
                }
                let poison = state.faults.cache_panic_on_id.lock().ok().and_then(|id| id.clone());
                if let Some(id) = poison {
                    if batch.iter().any(|i| i.decoded.envelope.aggregate_id == id) {
                        panic!("injected panic on an event about {id}");
                    }
                }
                let context = state.context;
                let labels: Option<Vec<String>> = flow::enabled().then(|| {
                    batch
                        .iter()
                        .map(|i| flow::handler(context, i.decoded.event.aggregate_type(), i.decoded.event.event_type()))
                        .collect()
                });
                for label in labels.iter().flatten() {
                    flow::enter(label);
                }
                let result = if Faults::take(&state.faults.cache_commit_failures) {
                    Err((injected_storage_failure(), batch))
                } else {
                    let db = state.db.clone();
                    tokio::task::spawn_blocking(move || {
                        match db.apply_stores_events_through(&consumer, &batch, through) {
                            Ok(outcome) => Ok(outcome),
                            Err(e) => Err((e, batch)),
                        }
                    })
                    .await?
                };
                match result {
                    Ok(outcome) => {
                        let parked = outcome
                            .dispositions
                            .iter()
                            .any(|d| matches!(d, carrier_storage::Disposition::Parked { .. }));
                        if parked && !cache.repair_scheduled {
                            cache.repair_scheduled = true;
                            myself.send_after(state.gap_grace, || CacheMsg::RepairGaps { attempt: 0 });
                        }
                        for (label, d) in labels.iter().flatten().zip(&outcome.dispositions) {
                            let note = (*d != carrier_storage::Disposition::Applied).then(|| d.as_str());
                            flow::leave(label, note);
                        }
                        let _ = reply.send(Ok(outcome));
                    }
                    Err((error, batch)) => {
                        let _ = reply.send(Err(ApplyFailed { error, batch }));
                    }
                }
            }
            CacheMsg::PruneInbox => {
                let (db, horizon) = (state.db.clone(), state.inbox_retention.horizon);
                match tokio::task::spawn_blocking(move || db.prune_inbox(horizon, PRUNE_BATCH)).await? {
                    Ok(0) => {}
                    Ok(removed) => {
                        tracing::debug!(removed, "pruned the inbox");
                        // A full batch means more is due: continue right away, between batches.
                        if removed as usize >= PRUNE_BATCH {
                            myself.send_message(CacheMsg::PruneInbox)?;
                        }
                    }
                    // Pruning is housekeeping: a failure is retried at the next tick.
                    Err(error) => tracing::warn!(%error, "inbox pruning failed"),
                }
            }
            CacheMsg::Adopt { state: owner_state, reply } => {
                let db = state.db.clone();
                let result = tokio::task::spawn_blocking(move || match &owner_state {
                    OwnerState::Store(s) => db.adopt_store(s),
                    OwnerState::Product(p) => db.adopt_product(p),
                })
                .await?;
                if let Err(error) = &result {
                    tracing::warn!(%error, "could not write the owner's state");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            CacheMsg::RepairGaps { attempt } => {
                cache.repair_scheduled = false;
                let db = state.db.clone();
                let gaps = tokio::task::spawn_blocking(move || db.gaps()).await??;
                if gaps.is_empty() {
                    return Ok(());
                }
                cache.repair_scheduled = true;
                // The owner is asked off the write path: the answers come back as Adopt messages.
                let (fallback, myself) = (state.fallback.clone(), myself.clone());
                let grace = state.gap_grace;
                tokio::spawn(async move {
                    let mut failed = false;
                    for (aggregate, id, current, waiting) in gaps {
                        tracing::info!(aggregate = %aggregate, id = %id, current, waiting, "version gap; asking the owner");
                        let answer = match aggregate.as_str() {
                            "store" => fallback.store(&id).await.map(|s| s.map(OwnerState::Store)),
                            _ => fallback.product(&id).await.map(|p| p.map(OwnerState::Product)),
                        };
                        match answer {
                            Ok(Some(owner_state)) => {
                                let _ = myself.send_message(CacheMsg::Adopt { state: owner_state, reply: None });
                            }
                            Ok(None) => {
                                tracing::warn!(aggregate = %aggregate, id = %id, "the owner does not know an entity with parked events");
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
                    myself.send_after(delay, move || CacheMsg::RepairGaps { attempt: next });
                });
            }
        }
        Ok(())
    }
}

fn injected_storage_failure() -> StorageError {
    StorageError::io("commit", std::io::Error::other("injected storage failure"))
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
}

/// How a context that caches stores data runs.
#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    /// The most events applied per transaction.
    pub batch_max: usize,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// How long applied event ids stay in the inbox.
    pub inbox_retention: InboxRetention,
    /// How the stores fallback behaves.
    pub fallback: crate::fallback::FallbackConfig,
    /// How long a version gap may stay open before the owner is asked.
    pub gap_grace: Duration,
    /// How often one event alone may kill the cache before it is dead-lettered.
    pub poison_threshold: u32,
}

/// What the rest of the process may use of a running context that caches stores data.
pub struct CacheHandle<D> {
    /// Its database, for reading.
    pub db: Arc<D>,
    /// Its stores consumer's counters.
    pub stores_consumer: Arc<crate::consumer::ConsumerStats>,
    /// The fallback to the stores context, with its counters and breaker.
    pub fallback: Arc<StoresFallback>,
    cache: crate::supervisor::ActorSlot<CacheMsg>,
}

impl<D> Clone for CacheHandle<D> {
    fn clone(&self) -> Self {
        CacheHandle {
            db: self.db.clone(),
            stores_consumer: self.stores_consumer.clone(),
            fallback: self.fallback.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<D: StoresCacheDb> CacheHandle<D> {
    /// A store as this context keeps it: from the cache, or else from the owner (then cached).
    pub async fn store(&self, id: &str) -> Result<Option<D::Store>, LookupError> {
        if let Some(store) = self.db.cached_store(id)? {
            return Ok(Some(store));
        }
        let Some(snapshot) = self.fallback.store(id).await? else { return Ok(None) };
        let row = D::store_row(&snapshot);
        self.adopt(OwnerState::Store(snapshot)).await?;
        Ok(Some(row))
    }

    /// A product as this context keeps it: from the cache, or else from the owner (then cached).
    pub async fn product(&self, id: &str) -> Result<Option<D::Product>, LookupError> {
        if let Some(product) = self.db.cached_product(id)? {
            return Ok(Some(product));
        }
        let Some(snapshot) = self.fallback.product(id).await? else { return Ok(None) };
        let row = D::product_row(&snapshot);
        self.adopt(OwnerState::Product(snapshot)).await?;
        Ok(row)
    }

    /// Has the cache actor (the only writer) record the owner's answer.
    async fn adopt(&self, state: OwnerState) -> Result<(), LookupError> {
        let cache = self.cache.wait(Duration::from_secs(2)).await.ok_or(LookupError::Unavailable)?;
        let result = ractor::call!(cache, |reply| CacheMsg::Adopt { state, reply: Some(reply) })
            .map_err(|_| LookupError::Unavailable)?;
        result?;
        Ok(())
    }
}

/// Builds the supervisor of a context that caches stores data: its `cache` actor and its
/// `stores-consumer` on the durable `<context>-stores`.
pub(crate) fn stores_cache_context<D: StoresCacheDb>(
    context: &'static str,
    bus: crate::bus::Bus,
    db: Arc<D>,
    settings: CacheSettings,
    faults: Arc<Faults>,
    tree: crate::supervisor::SupervisionTree,
    path: String,
) -> (crate::supervisor::SupervisorArgs, CacheHandle<D>) {
    use crate::consumer::{batch_target, CheckpointReader, ConsumerArgs, ConsumerStats, EventConsumer, PoisonGuard};
    use crate::supervisor::{ActorSlot, ChildSpec, RestartPolicy, SupervisorArgs};
    use carrier_messages::DomainEvent;

    let CacheSettings { batch_max, ack_wait, inbox_retention, fallback, gap_grace, poison_threshold } = settings;
    let stats = Arc::new(ConsumerStats::default());
    let guard = Arc::new(PoisonGuard::default());
    let fallback = Arc::new(StoresFallback::new(bus.clone(), fallback));
    let slot: ActorSlot<CacheMsg> = ActorSlot::default();
    let handle =
        CacheHandle { db: db.clone(), stores_consumer: stats.clone(), fallback: fallback.clone(), cache: slot.clone() };

    let cache_faults = faults.clone();
    let consumer_db = db.clone();
    let cache = ChildSpec::new("cache", move |supervisor, _siblings| {
        let args = CacheArgs {
            context,
            db: db.clone(),
            faults: cache_faults.clone(),
            inbox_retention,
            fallback: fallback.clone(),
            gap_grace,
        };
        let slot = slot.clone();
        async move {
            let (actor, _) = Actor::spawn_linked(None, StoresCache::<D>::default(), args, supervisor).await?;
            slot.set(actor.clone());
            Ok(actor.get_cell())
        }
    });

    let consumer = ChildSpec::new("stores-consumer", move |supervisor, siblings| {
        let (bus, stats, faults, guard, db) =
            (bus.clone(), stats.clone(), faults.clone(), guard.clone(), consumer_db.clone());
        async move {
            let cache: ActorRef<CacheMsg> = siblings.get("cache").cloned().ok_or("the cache is not running")?.into();
            let spec = crate::bus::DurableSpec {
                stream: StoresEvent::STREAM.to_string(),
                durable: stores_durable_name(context),
                description: format!("{context}: stores and products caches"),
                filter_subject: StoresEvent::STREAM_SUBJECTS.to_string(),
                ack_wait,
                max_ack_pending: 20_000,
                batch_max,
                linger: Duration::from_millis(2),
            };
            let checkpoint: CheckpointReader = Arc::new(move |durable: &str| db.checkpoint(durable));
            let target = batch_target(cache);
            let args = ConsumerArgs { bus, context, spec, target, stats, faults, checkpoint, guard, poison_threshold };
            let (actor, _) =
                Actor::spawn_linked(None, EventConsumer::<StoresEvent>::default(), args, supervisor).await?;
            Ok(actor.get_cell())
        }
    });

    let args = SupervisorArgs { path, children: vec![cache, consumer], policy: RestartPolicy::context(), tree };
    (args, handle)
}

/// The durable name a context reads the stores stream with: unique per consuming context, so that
/// two contexts never share (and split) one consumer's messages.
pub fn stores_durable_name(context: &str) -> String {
    format!("{context}-{}", <StoresEvent as carrier_messages::DomainEvent>::CONTEXT)
}
