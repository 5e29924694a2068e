//! The baskets cache actor: the only writer of `baskets.redb`.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use carrier_messages::stores::StoresEvent;
use carrier_messages::DomainEvent;
use carrier_storage::{BasketsDb, StorageError};

use crate::consumer::{ApplyBatch, ApplyFailed};
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
    type State = BasketsCacheArgs;
    type Arguments = BasketsCacheArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: BasketsCacheArgs,
    ) -> Result<BasketsCacheArgs, ActorProcessingErr> {
        myself.send_interval(args.inbox_retention.every, || BasketsCacheMsg::PruneInbox);
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: BasketsCacheMsg,
        state: &mut BasketsCacheArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BasketsCacheMsg::ApplyStores(ApplyBatch { consumer, batch, reply }) => {
                if Faults::take(&state.faults.cache_panics) {
                    panic!("injected panic in the baskets cache");
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
        }
        Ok(())
    }
}

fn injected_storage_failure() -> StorageError {
    StorageError::io("commit", std::io::Error::other("injected storage failure"))
}
