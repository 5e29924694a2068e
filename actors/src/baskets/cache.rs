//! The baskets cache actor: the only writer of `baskets.redb`.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use carrier_messages::stores::{ProductSnapshot, StoreSnapshot, StoresEvent};
use carrier_messages::DomainEvent;
use carrier_storage::{Adopted, BasketsDb, StorageError};

use crate::consumer::{ApplyBatch, ApplyFailed};
use crate::fallback::StoresFallback;
use crate::faults::Faults;
use crate::flow;

/// Owns `baskets.redb` and applies store and product events to it, a batch per commit.
///
/// Every write goes through this actor's mailbox, so redb's single writer is never contended and
/// batches apply in delivery order.
pub struct BasketsCache;

/// Messages of [`BasketsCache`].
pub enum BasketsCacheMsg {
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

impl From<ApplyBatch<StoresEvent>> for BasketsCacheMsg {
    fn from(batch: ApplyBatch<StoresEvent>) -> Self {
        BasketsCacheMsg::ApplyStores(batch)
    }
}

/// What [`BasketsCache`] is started with.
pub struct BasketsCacheArgs {
    /// The database it alone writes.
    pub db: Arc<BasketsDb>,
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
pub struct BasketsCacheState {
    args: BasketsCacheArgs,
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

impl Actor for BasketsCache {
    type Msg = BasketsCacheMsg;
    type State = BasketsCacheState;
    type Arguments = BasketsCacheArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: BasketsCacheArgs,
    ) -> Result<BasketsCacheState, ActorProcessingErr> {
        myself.send_interval(args.inbox_retention.every, || BasketsCacheMsg::PruneInbox);
        // Gaps left open by an earlier incarnation are repaired too.
        myself.send_after(args.gap_grace, || BasketsCacheMsg::RepairGaps { attempt: 0 });
        Ok(BasketsCacheState { args, repair_scheduled: true })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: BasketsCacheMsg,
        cache: &mut BasketsCacheState,
    ) -> Result<(), ActorProcessingErr> {
        let state = &cache.args;
        match msg {
            BasketsCacheMsg::ApplyStores(ApplyBatch { consumer, batch, reply }) => {
                if Faults::take(&state.faults.cache_panics) {
                    panic!("injected panic in the baskets cache");
                }
                let poison = state.faults.cache_panic_on_id.lock().ok().and_then(|id| id.clone());
                if let Some(id) = poison {
                    if batch.iter().any(|i| i.decoded.envelope.aggregate_id == id) {
                        panic!("injected panic on an event about {id}");
                    }
                }
                let labels: Option<Vec<String>> = flow::enabled().then(|| {
                    batch
                        .iter()
                        .map(|i| {
                            flow::handler("baskets", i.decoded.event.aggregate_type(), i.decoded.event.event_type())
                        })
                        .collect()
                });
                for label in labels.iter().flatten() {
                    flow::enter(label);
                }
                let result = if Faults::take(&state.faults.cache_commit_failures) {
                    Err((injected_storage_failure(), batch))
                } else {
                    let db = state.db.clone();
                    tokio::task::spawn_blocking(move || match db.apply_stores_events(&consumer, &batch) {
                        Ok(outcome) => Ok(outcome),
                        Err(e) => Err((e, batch)),
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
                            myself.send_after(state.gap_grace, || BasketsCacheMsg::RepairGaps { attempt: 0 });
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
            BasketsCacheMsg::PruneInbox => {
                let (db, horizon) = (state.db.clone(), state.inbox_retention.horizon);
                match tokio::task::spawn_blocking(move || db.prune_inbox(horizon, PRUNE_BATCH)).await? {
                    Ok(0) => {}
                    Ok(removed) => tracing::debug!(removed, "pruned the inbox"),
                    // Pruning is housekeeping: a failure is retried at the next tick.
                    Err(error) => tracing::warn!(%error, "inbox pruning failed"),
                }
            }
            BasketsCacheMsg::Adopt { state: owner_state, reply } => {
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
            BasketsCacheMsg::RepairGaps { attempt } => {
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
                                let _ = myself.send_message(BasketsCacheMsg::Adopt { state: owner_state, reply: None });
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
                    myself.send_after(delay, move || BasketsCacheMsg::RepairGaps { attempt: next });
                });
            }
        }
        Ok(())
    }
}

fn injected_storage_failure() -> StorageError {
    StorageError::io("commit", std::io::Error::other("injected storage failure"))
}
