//! The customers bounded context: the owner of customers.
//!
//! Under the `carrier/customers` supervisor: the [`owner`](crate::owner) actors (owner, outbox
//! relay to the `CUSTOMERS` stream, command server on `cmd.customers`) and `queries`
//! ([`CustomersQueries`]), which answers `query.customers`: the fallback of the customers caches.

mod queries;

pub use queries::CustomersQueries;

use std::sync::Arc;

use carrier_storage::customers::Customers;
use carrier_storage::CustomersDb;

use crate::bus::Bus;
use crate::faults::Faults;
use crate::owner::{owner_context, OwnerHandle};
use crate::supervisor::{SupervisionTree, SupervisorArgs};

/// The context's name.
pub const CONTEXT: &str = "customers";

/// What the rest of the process may use of a running customers context.
pub type CustomersHandle = OwnerHandle<Customers>;

/// Builds the context's supervisor arguments.
pub(crate) fn supervisor_args(
    bus: Bus,
    db: Arc<CustomersDb>,
    faults: Arc<Faults>,
    tree: SupervisionTree,
    path: String,
) -> (SupervisorArgs, CustomersHandle) {
    let (query_bus, query_db) = (bus.clone(), db.clone());
    let queries = crate::serve::queries(CONTEXT, query_bus, move || CustomersQueries { db: query_db.clone() });
    owner_context(CONTEXT, bus, db, faults, tree, path, vec![queries])
}
