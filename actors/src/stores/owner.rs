//! The stores owner actor: decides commands and is the only writer of `stores.redb`.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::Notify;

use carrier_messages::codec::Causality;
use carrier_messages::stores::{StoresCommand, StoresEvent};
use carrier_messages::Decoded;
use carrier_storage::{CommandError, StorageError, StoresDb};

use crate::flow;

/// Decides stores commands; writes each resulting event to the state and the outbox in one
/// transaction, then wakes the relay.
pub struct StoresOwner;

/// Messages of [`StoresOwner`].
pub enum StoresOwnerMsg {
    /// Carry out a command.
    Execute {
        /// The command.
        command: StoresCommand,
        /// Correlation and causation ids for the event.
        causality: Causality,
        /// The recorded event, or why not.
        reply: RpcReplyPort<Result<Decoded<StoresEvent>, CommandError>>,
    },
    /// Delete outbox rows JetStream has acknowledged (sent by the relay).
    MarkPublished {
        /// Outbox keys.
        keys: Vec<u64>,
        /// Done, or why not.
        reply: RpcReplyPort<Result<(), StorageError>>,
    },
}

/// What [`StoresOwner`] is started with.
pub struct StoresOwnerArgs {
    /// The database it alone writes.
    pub db: Arc<StoresDb>,
    /// Wakes the relay after a commit.
    pub relay_wakeup: Arc<Notify>,
}

impl Actor for StoresOwner {
    type Msg = StoresOwnerMsg;
    type State = StoresOwnerArgs;
    type Arguments = StoresOwnerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: StoresOwnerArgs,
    ) -> Result<StoresOwnerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: StoresOwnerMsg,
        state: &mut StoresOwnerArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StoresOwnerMsg::Execute { command, causality, reply } => {
                let label = format!("Stores.{}", command.name());
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
            StoresOwnerMsg::MarkPublished { keys, reply } => {
                let db = state.db.clone();
                let result = tokio::task::spawn_blocking(move || db.outbox_remove(&keys)).await?;
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}
