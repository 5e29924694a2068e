//! Owning contexts (stores, and next customers): the actors every owner has.
//!
//! Under the context's supervisor (rest-for-one):
//! - `owner` ([`Owner`]): decides commands; the only writer of the context's file;
//! - `outbox-relay` ([`OutboxRelay`]): publishes the outbox to the context's stream, in order;
//! - `commands` ([`Commands`] in a [`Responder`](crate::responder::Responder)): answers commands
//!   sent to `cmd.<context>` by any NATS client;
//! - whatever else the context adds (the stores context adds its queries).

mod actor;
mod commands;
mod relay;

pub use actor::{Owner, OwnerArgs, OwnerMsg};
pub use commands::{Commands, ContextCommands, Decide};
pub use relay::{MarkPublished, OutboxRelay, ReadOutbox, RelayArgs, RelayMsg};

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::Notify;

use carrier_messages::codec::Causality;
use carrier_messages::request::command_subject;
use carrier_messages::Decoded;
use carrier_storage::{CommandError, OwnerFile, OwnerKind};

use crate::bus::Bus;
use crate::faults::Faults;
use crate::responder::{Responder, ResponderArgs};
use crate::supervisor::{ActorSlot, ChildSpec, RestartPolicy, SupervisionTree, SupervisorArgs};

/// Why a command sent through an [`OwnerHandle`] got no answer from the context.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The command was refused or failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The owner actor is down (restarting, or the context failed).
    #[error("the owner is not running")]
    Unavailable,
    /// The owner stopped while the command was in flight: it may or may not have been recorded.
    #[error("the owner stopped while handling the command")]
    Interrupted,
}

/// What the rest of the process may use of a running owning context.
pub struct OwnerHandle<K: OwnerKind> {
    /// Its database, for reading.
    pub db: Arc<OwnerFile<K>>,
    owner: ActorSlot<OwnerMsg<K>>,
}

impl<K: OwnerKind> Clone for OwnerHandle<K> {
    fn clone(&self) -> Self {
        OwnerHandle { db: self.db.clone(), owner: self.owner.clone() }
    }
}

impl<K: OwnerKind> OwnerHandle<K> {
    /// Sends a command to the owner and waits for the recorded event.
    pub async fn execute(&self, command: K::Command, causality: Causality) -> Result<Decoded<K::Event>, ExecuteError> {
        let owner = self.owner.wait(Duration::from_secs(5)).await.ok_or(ExecuteError::Unavailable)?;
        let reply = ractor::call!(owner, |reply| OwnerMsg::Execute { command, causality, reply })
            .map_err(|_| ExecuteError::Interrupted)?;
        Ok(reply?)
    }
}

/// Builds an owning context's supervisor: owner, outbox relay, command server, then `extra`.
pub(crate) fn owner_context<K: OwnerKind>(
    context: &'static str,
    bus: Bus,
    db: Arc<OwnerFile<K>>,
    faults: Arc<Faults>,
    tree: SupervisionTree,
    path: String,
    extra: Vec<ChildSpec>,
) -> (SupervisorArgs, OwnerHandle<K>) {
    let slot: ActorSlot<OwnerMsg<K>> = ActorSlot::default();
    let handle = OwnerHandle { db: db.clone(), owner: slot.clone() };
    let wakeup = Arc::new(Notify::new());

    let (owner_db, owner_wakeup) = (db.clone(), wakeup.clone());
    let owner = ChildSpec::new("owner", move |supervisor, _siblings| {
        let args = OwnerArgs { db: owner_db.clone(), relay_wakeup: owner_wakeup.clone() };
        let slot = slot.clone();
        async move {
            let (actor, _) = Actor::spawn_linked(None, Owner::<K>::default(), args, supervisor).await?;
            slot.set(actor.clone());
            Ok(actor.get_cell())
        }
    });

    let command_bus = bus.clone();
    let relay = ChildSpec::new("outbox-relay", move |supervisor, siblings| {
        let (bus, db, wakeup, faults) = (bus.clone(), db.clone(), wakeup.clone(), faults.clone());
        async move {
            let owner: ActorRef<OwnerMsg<K>> = siblings.get("owner").cloned().ok_or("the owner is not running")?.into();
            let pending: relay::ReadOutbox = Arc::new(move |limit| db.outbox_pending(limit));
            let mark: relay::MarkPublished = Arc::new(move |keys| {
                let owner = owner.clone();
                Box::pin(async move {
                    let result = ractor::call!(owner, |reply| OwnerMsg::MarkPublished { keys, reply });
                    match result {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                })
            });
            let args = RelayArgs { bus, context, pending, mark, wakeup, faults };
            let (actor, _) = Actor::spawn_linked(None, OutboxRelay, args, supervisor).await?;
            Ok(actor.get_cell())
        }
    });

    let commands = ChildSpec::new("commands", move |supervisor, siblings| {
        let bus = command_bus.clone();
        async move {
            let owner: ActorRef<OwnerMsg<K>> = siblings.get("owner").cloned().ok_or("the owner is not running")?.into();
            let args = ResponderArgs {
                bus,
                subject: command_subject(context),
                queue_group: context.to_string(),
                handler: Commands::<K> { owner },
            };
            let (actor, _) = Actor::spawn_linked(None, Responder::<Commands<K>>::default(), args, supervisor).await?;
            Ok(actor.get_cell())
        }
    });

    let mut children = vec![owner, relay, commands];
    children.extend(extra);
    let args = SupervisorArgs { path, children, policy: RestartPolicy::context(), tree };
    (args, handle)
}
