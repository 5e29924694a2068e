//! The ordering bounded context: orders, created from checked-out baskets, readied by completed
//! shopping lists, completed by paid invoices, canceled by declined payments or on request.
//!
//! Actors, under the `carrier/ordering` supervisor (rest-for-one): `cache` (the only writer of
//! `ordering.redb`), `baskets-consumer`, `depot-consumer` and `payments-consumer` (durables
//! `ordering-baskets`, `ordering-depot`, `ordering-payments`), `outbox-relay` (to `ORDERING`)
//! and `commands` (on `cmd.ordering`).

use std::sync::Arc;

use carrier_messages::baskets::BasketsEvent;
use carrier_messages::depot::DepotEvent;
use carrier_messages::ordering::{OrderingCommand, OrderingEvent};
use carrier_messages::payments::PaymentsEvent;
use carrier_storage::ordering::Ordering;
use carrier_storage::{CommandError, OrderingDb, StorageError};

use crate::bus::Bus;
use crate::cache::{CacheHandle, CacheSettings, ContextBuilder};
use crate::faults::Faults;
use crate::owner::Decide;
use crate::supervisor::{SupervisionTree, SupervisorArgs};

/// The context's name.
pub const CONTEXT: &str = "ordering";

/// What the rest of the process may use of a running ordering context.
pub type OrderingHandle = CacheHandle<Ordering>;

/// Builds the context's supervisor arguments.
pub(crate) fn supervisor_args(
    bus: Bus,
    db: Arc<OrderingDb>,
    settings: CacheSettings,
    faults: Arc<Faults>,
    tree: SupervisionTree,
    path: String,
) -> (SupervisorArgs, OrderingHandle) {
    let mut builder = ContextBuilder::new(bus.clone(), db, settings, faults);
    builder.consume::<BasketsEvent>(None).consume::<DepotEvent>(None).consume::<PaymentsEvent>(None);
    let handle = builder.handle();
    let decide: Decide<OrderingCommand, OrderingEvent> = Arc::new(move |command, causality| {
        let handle = handle.clone();
        Box::pin(async move {
            let result = handle.write(move |db| db.execute_ordering(&command, &causality)).await;
            result.map_err(|e| CommandError::Storage(StorageError::NotReady(e.to_string())))?
        })
    });
    builder.serve(crate::serve::commands(CONTEXT, bus, decide));
    builder.build(tree, path)
}
