//! The port a consumer hands its batches through: [`ContextPort`], the context's side of
//! [`WriterPort`]. One step from the consumer to the writer's mailbox, with the lookups a
//! batch's reactions need made first (a prefetch), the checkpoint the consumer starts from, and
//! a full sync when the stream lost the consumer's position.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;

use carrier_messages::DomainEvent;
use carrier_storage::{ContextDb, ContextKind, Inbound, Reacts, StorageError};

use super::*;
use crate::consumer::{ApplyBatch, PositionLost, WriterPort};

/// A context's writer as one consumer of `E`'s stream sees it.
pub(crate) struct ContextPort<K: ContextKind, E> {
    /// The writer's mailbox.
    pub(crate) writer: ActorRef<WriterMsg<K>>,
    /// For a context that follows its own stream: effects are held while this fence is up.
    pub(crate) follows: Option<Arc<crate::fence::Fence>>,
    /// Looks up what the batch's reactions will read, before the writer runs.
    pub(crate) prefetch: Option<PrefetchFn<K, E>>,
    /// The running context (its file for the checkpoint, its lookups, its full sync).
    pub(crate) handle: ContextHandle<K>,
    /// The durable name the checkpoint was kept under before a read model moved to durables of
    /// its own: read when the instance's own name has none yet.
    pub(crate) shared: Option<String>,
}

impl<K: Reacts<E>, E: DomainEvent> WriterPort<E> for ContextPort<K, E> {
    fn apply(&self, batch: ApplyBatch<E>) -> bool {
        let job = ApplyJob { batch, context: K::NAME, follows: self.follows.clone() };
        let Some(prefetch) = &self.prefetch else {
            return self.writer.send_message(WriterMsg::Apply(Box::new(job))).is_ok();
        };
        let events: Vec<E> = job.batch.batch.iter().map(|i: &Inbound<E>| i.decoded.event.clone()).collect();
        let (writer, lookups) = (self.writer.clone(), prefetch(self.handle.clone(), events));
        // If the writer dies meanwhile, the reply port drops and the consumer sees it.
        tokio::spawn(async move {
            lookups.await;
            let _ = writer.send_message(WriterMsg::Apply(Box::new(job)));
        });
        true
    }

    fn checkpoint(&self, durable: &str) -> Result<u64, StorageError> {
        let db = &self.handle.db;
        match db.checkpoint_entry(durable)? {
            None => self.shared.as_deref().map_or(Ok(0), |name| db.checkpoint(name)),
            Some(seq) => Ok(seq),
        }
    }

    fn resyncs(&self) -> bool {
        !self.handle.resync_sources.is_empty()
    }

    /// Resyncs from the owners, retrying until one sync succeeds (which lets the consumer go on):
    /// one that runs already may succeed for it, else this one tries again.
    fn position_lost(&self, lost: PositionLost) {
        let handle = self.handle.clone();
        let source = E::CONTEXT;
        tokio::spawn(async move {
            let reason = format!(
                "position lost: asked for {} but {source} retains from {}",
                lost.requested, lost.first_retained
            );
            let still_lost = |handle: &ContextHandle<K>| {
                handle.probes.iter().any(|p| p.source == source && p.control.position_lost())
            };
            let mut wait = Duration::from_secs(1);
            while still_lost(&handle) {
                match handle.resync(&reason).await {
                    Ok(_) => break,
                    Err(crate::resync::ResyncError::InProgress) => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(_) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
    }
}
