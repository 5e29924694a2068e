//! The stores bounded context: the owner of stores and products.
//!
//! Under the `carrier/stores` supervisor: the [`owner`](crate::owner) actors (owner, outbox relay,
//! command server on `cmd.stores`) and `queries` ([`StoresQueries`] in a
//! [`Responder`](crate::responder::Responder)), which answers `query.stores` from the database:
//! the fallback other contexts' caches use.

mod queries;

pub use queries::StoresQueries;

use std::sync::Arc;

use ractor::Actor;

use carrier_messages::request::query_subject;
use carrier_storage::stores::Stores;
use carrier_storage::StoresDb;

use crate::bus::Bus;
use crate::faults::Faults;
use crate::owner::{owner_context, OwnerHandle};
use crate::responder::{Responder, ResponderArgs};
use crate::supervisor::{ChildSpec, SupervisionTree, SupervisorArgs};

pub use crate::owner::ExecuteError;

/// The context's name.
pub const CONTEXT: &str = "stores";

/// What the rest of the process may use of a running stores context.
pub type StoresHandle = OwnerHandle<Stores>;

/// Builds the context's supervisor arguments.
pub(crate) fn supervisor_args(
    bus: Bus,
    db: Arc<StoresDb>,
    faults: Arc<Faults>,
    tree: SupervisionTree,
    path: String,
) -> (SupervisorArgs, StoresHandle) {
    let (query_bus, query_db) = (bus.clone(), db.clone());
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
    owner_context(CONTEXT, bus, db, faults, tree, path, vec![queries])
}
