//! The owner actor: decides an owning context's commands and is the only writer of its file.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::Notify;

use carrier_messages::codec::Causality;
use carrier_messages::{Decoded, DomainEvent};
use carrier_storage::{CommandError, OwnerFile, OwnerKind, StorageError};

use crate::flow;

/// Decides commands; writes each resulting event to the state and the outbox in one
/// transaction, then wakes the relay.
pub struct Owner<K>(std::marker::PhantomData<fn() -> K>);

impl<K> Default for Owner<K> {
    fn default() -> Self {
        Owner(std::marker::PhantomData)
    }
}

/// Messages of [`Owner`].
pub enum OwnerMsg<K: OwnerKind> {
    /// Carry out a command.
    Execute {
        /// The command.
        command: K::Command,
        /// Correlation and causation ids for the event.
        causality: Causality,
        /// The recorded event, or why not.
        reply: RpcReplyPort<Result<Decoded<K::Event>, CommandError>>,
    },
    /// Delete outbox rows JetStream has acknowledged (sent by the relay).
    MarkPublished {
        /// Outbox keys.
        keys: Vec<u64>,
        /// Done, or why not.
        reply: RpcReplyPort<Result<(), StorageError>>,
    },
}

/// What [`Owner`] is started with.
pub struct OwnerArgs<K> {
    /// The database it alone writes.
    pub db: Arc<OwnerFile<K>>,
    /// Wakes the relay after a commit.
    pub relay_wakeup: Arc<Notify>,
}

impl<K: OwnerKind> Actor for Owner<K> {
    type Msg = OwnerMsg<K>;
    type State = OwnerArgs<K>;
    type Arguments = OwnerArgs<K>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: OwnerArgs<K>,
    ) -> Result<OwnerArgs<K>, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: OwnerMsg<K>,
        state: &mut OwnerArgs<K>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            OwnerMsg::Execute { command, causality, reply } => {
                let label = format!("{}.{}", flow::capitalize(K::Event::CONTEXT), K::command_name(&command));
                flow::enter(&label);
                let db = state.db.clone();
                let result = tokio::task::spawn_blocking(move || db.execute(&command, &causality)).await?;
                match &result {
                    Ok(_) => {
                        state.relay_wakeup.notify_one();
                        flow::leave(&label, None);
                    }
                    Err(e) => flow::leave(&label, Some(&e.to_string())),
                }
                let _ = reply.send(result);
            }
            OwnerMsg::MarkPublished { keys, reply } => {
                let db = state.db.clone();
                let result = tokio::task::spawn_blocking(move || db.outbox_remove(&keys)).await?;
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}
