//! The stores bounded context: the owner of stores and products.
//!
//! Actors, under the `carrier/stores` supervisor (rest-for-one):
//! - `owner` ([`StoresOwner`]): decides commands; the only writer of `stores.redb`;
//! - `outbox-relay` ([`OutboxRelay`]): publishes the outbox to the `STORES` stream;
//! - `commands` ([`StoresCommands`] in a [`Responder`]): answers commands sent to `cmd.stores`;
//! - `queries` ([`StoresQueries`] in a [`Responder`]): answers `query.stores` from the database,
//!   the fallback other contexts' caches use.

mod commands;
mod owner;
mod queries;
mod relay;

pub use commands::StoresCommands;
pub use owner::{StoresOwner, StoresOwnerArgs, StoresOwnerMsg};
pub use queries::StoresQueries;
pub use relay::{OutboxRelay, RelayArgs, RelayMsg};

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::Notify;

use carrier_messages::codec::Causality;
use carrier_messages::stores::{StoresCommand, StoresEvent};
use carrier_messages::Decoded;
use carrier_storage::{CommandError, StoresDb};

use carrier_messages::request::{command_subject, query_subject};

use crate::bus::Bus;
use crate::faults::Faults;
use crate::responder::{Responder, ResponderArgs};
use crate::supervisor::{ActorSlot, ChildSpec, RestartPolicy, SupervisionTree, SupervisorArgs};

/// The context's name.
pub const CONTEXT: &str = "stores";

/// Why a command sent through a [`StoresHandle`] got no answer from the context.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The command was refused or failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The owner actor is down (restarting, or the context failed).
    #[error("the stores owner is not running")]
    Unavailable,
    /// The owner stopped while the command was in flight: it may or may not have been recorded.
    #[error("the stores owner stopped while handling the command")]
    Interrupted,
}

/// What the rest of the process may use of a running stores context.
#[derive(Clone)]
pub struct StoresHandle {
    /// Its database, for reading.
    pub db: Arc<StoresDb>,
    owner: ActorSlot<StoresOwnerMsg>,
}

impl StoresHandle {
    /// Sends a command to the owner and waits for the recorded event.
    pub async fn execute(
        &self,
        command: StoresCommand,
        causality: Causality,
    ) -> Result<Decoded<StoresEvent>, ExecuteError> {
        let owner = self.owner.wait(Duration::from_secs(5)).await.ok_or(ExecuteError::Unavailable)?;
        let reply = ractor::call!(owner, |reply| StoresOwnerMsg::Execute { command, causality, reply })
            .map_err(|_| ExecuteError::Interrupted)?;
        Ok(reply?)
    }
}

/// Builds the context's supervisor arguments.
pub(crate) fn supervisor_args(
    bus: Bus,
    db: Arc<StoresDb>,
    faults: Arc<Faults>,
    tree: SupervisionTree,
    path: String,
) -> (SupervisorArgs, StoresHandle) {
    let slot: ActorSlot<StoresOwnerMsg> = ActorSlot::default();
    let handle = StoresHandle { db: db.clone(), owner: slot.clone() };
    let wakeup = Arc::new(Notify::new());

    let owner_db = db.clone();
    let query_db = db.clone();
    let owner_wakeup = wakeup.clone();
    let owner = ChildSpec::new("owner", move |supervisor, _siblings| {
        let args = StoresOwnerArgs { db: owner_db.clone(), relay_wakeup: owner_wakeup.clone() };
        let slot = slot.clone();
        async move {
            let (actor, _) = Actor::spawn_linked(None, StoresOwner, args, supervisor).await?;
            slot.set(actor.clone());
            Ok(actor.get_cell())
        }
    });

    let command_bus = bus.clone();
    let relay = ChildSpec::new("outbox-relay", move |supervisor, siblings| {
        let (bus, db, wakeup, faults) = (bus.clone(), db.clone(), wakeup.clone(), faults.clone());
        async move {
            let owner: ActorRef<StoresOwnerMsg> =
                siblings.get("owner").cloned().ok_or("the owner is not running")?.into();
            let args = RelayArgs { bus, db, owner, wakeup, faults };
            let (actor, _) = Actor::spawn_linked(None, OutboxRelay, args, supervisor).await?;
            Ok(actor.get_cell())
        }
    });

    let query_bus = command_bus.clone();
    let commands = ChildSpec::new("commands", move |supervisor, siblings| {
        let bus = command_bus.clone();
        async move {
            let owner: ActorRef<StoresOwnerMsg> =
                siblings.get("owner").cloned().ok_or("the owner is not running")?.into();
            let args = ResponderArgs {
                bus,
                subject: command_subject(CONTEXT),
                queue_group: CONTEXT.to_string(),
                handler: StoresCommands { owner },
            };
            let (actor, _) =
                Actor::spawn_linked(None, Responder::<StoresCommands>::default(), args, supervisor).await?;
            Ok(actor.get_cell())
        }
    });

    let queries = ChildSpec::new("queries", move |supervisor, _siblings| {
        let args = ResponderArgs {
            bus: query_bus.clone(),
            subject: query_subject(CONTEXT),
            queue_group: CONTEXT.to_string(),
            handler: StoresQueries { db: query_db.clone() },
        };
        async move {
            let (actor, _) = Actor::spawn_linked(None, Responder::<StoresQueries>::default(), args, supervisor).await?;
            Ok(actor.get_cell())
        }
    });

    let children = vec![owner, relay, commands, queries];
    let args = SupervisorArgs { path, children, policy: RestartPolicy::context(), tree };
    (args, handle)
}
