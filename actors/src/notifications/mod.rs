//! The notifications bounded context: texts the customer when an order is created, readied or
//! canceled, once per order event, to the customer's current SMS number (from its customers
//! cache).
//!
//! Actors, under the `carrier/notifications` supervisor (rest-for-one): `cache` (the only writer
//! of `notifications.redb`, whose `sent` table is the default sink), `customers-consumer`
//! (`notifications-customers`) and `ordering-consumer` (`notifications-ordering`).

use std::sync::Arc;

use carrier_messages::customers::CustomersEvent;
use carrier_messages::ordering::OrderingEvent;
use carrier_storage::notifications::Notifications;
use carrier_storage::NotificationsDb;

use crate::bus::Bus;
use crate::cache::{CacheHandle, CacheSettings, ContextBuilder};
use crate::faults::Faults;
use crate::supervisor::{SupervisionTree, SupervisorArgs};

/// The context's name.
pub const CONTEXT: &str = "notifications";

/// What the rest of the process may use of a running notifications context.
pub type NotificationsHandle = CacheHandle<Notifications>;

/// Builds the context's supervisor arguments.
pub(crate) fn supervisor_args(
    bus: Bus,
    db: Arc<NotificationsDb>,
    settings: CacheSettings,
    faults: Arc<Faults>,
    tree: SupervisionTree,
    path: String,
) -> (SupervisorArgs, NotificationsHandle) {
    let mut builder = ContextBuilder::new(bus, db, settings, faults);
    let prefetch = crate::payments::prefetch_customers();
    builder.customers_fallback().consume::<CustomersEvent>(None).consume::<OrderingEvent>(Some(prefetch));
    builder.build(tree, path)
}
