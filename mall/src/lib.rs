//! The MallBots mall (seed 001) as a user of Carrier: its eight bounded contexts declared on
//! Carrier's public API, in start order (owners first). `carrier` runs [`contexts`]; a user's
//! binary runs its own list the same way.
//!
//! - [`stores`], [`customers`]: the owners, with their queries (the caches' fallbacks).
//! - [`baskets`], [`ordering`], [`depot`], [`payments`], [`notifications`], [`search`]: the
//!   contexts that cache and react, each a declaration of a few builder calls.
//! - [`lookups`]: the caches' lookups of stores, products and customers ([`StoresLookups`],
//!   [`CustomerLookups`]), on Carrier's one lookup with the owner's entity endpoint behind it.
//! - [`cli`]: its subcommands (`demo`, `bench`), composed into the `carrier` binary.
//! - [`verify`]: compares caches with their owner (the demo's verdict, the tests' oracle);
//!   [`workload`]: synthetic events with a known end state (the bench and the crash tests).

pub mod baskets;
pub mod caches;
pub mod cli;
pub mod customers;
pub mod depot;
pub mod lookups;
pub mod notifications;
pub mod ordering;
pub mod payments;
pub mod search;
pub mod stores;
pub mod verify;
pub mod workload;

pub use lookups::{CustomerLookups, StoresLookups};

/// What reads the mall's files and caches: every context's file trait and the caches' lookups,
/// so that `use carrier_mall::prelude::*;` gives `db.basket(id)`, `handle.store(id)` and the rest.
pub mod prelude {
    pub use crate::baskets::BasketsFile;
    pub use crate::caches::{CustomersCacheFile, StoresCacheFile};
    pub use crate::customers::CustomersFile;
    pub use crate::depot::DepotFile;
    pub use crate::lookups::{CustomerLookups, StoresLookups};
    pub use crate::notifications::NotificationsFile;
    pub use crate::ordering::OrderingFile;
    pub use crate::payments::PaymentsFile;
    pub use crate::search::SearchFile;
    pub use crate::stores::StoresFile;
}

use crate::caches::CustomersCache;
use crate::ordering::events::OrderingEvent;

use carrier_actors::BoundedContext;
use carrier_actors::ContextHandle;

/// Every context of the mall, owners first.
pub fn contexts() -> Vec<BoundedContext> {
    vec![
        crate::stores::context(),
        crate::customers::context(),
        crate::baskets::context(),
        crate::ordering::context(),
        crate::depot::context(),
        crate::payments::context(),
        crate::notifications::context(),
        crate::search::context(),
    ]
}

/// Looks up the customers of new orders, so that a customer registered a moment ago (whose event
/// has not arrived yet) is asked of the customers context instead of failing the batch: the
/// prefetch of payments, notifications and search.
pub(crate) async fn prefetch_customers<K: CustomersCache>(handle: &ContextHandle<K>, events: &[OrderingEvent]) {
    let mut customers: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            OrderingEvent::OrderCreated(o) => Some(o.customer_id.as_str()),
            OrderingEvent::OrderReadied(o) => Some(o.customer_id.as_str()),
            OrderingEvent::OrderCanceled(o) => Some(o.customer_id.as_str()),
            OrderingEvent::OrderCompleted(_) => None,
        })
        .collect();
    customers.sort();
    customers.dedup();
    for id in customers {
        if let Err(error) = handle.customer(id).await {
            tracing::warn!(customer.id = %id, %error, "customer lookup failed; the batch will wait");
        }
    }
}

/// Payments, notifications and search look up a new order's customer first.
macro_rules! prefetches_customers {
    ($($kind:ty),*) => {$(
        impl carrier_actors::Prefetches<OrderingEvent> for $kind {
            async fn prefetch(handle: &ContextHandle<Self>, events: &[OrderingEvent]) {
                prefetch_customers(handle, events).await
            }
        }
    )*};
}
prefetches_customers!(crate::payments::Payments, crate::notifications::Notifications, crate::search::Search);

/// The outbox's rows read back as their consumers get them, at stream sequences 1, 2, ...: what
/// a test feeds a follower or a cache.
#[cfg(test)]
pub(crate) fn outbox_as_delivered<K: carrier_storage::ContextKind>(
    file: &carrier_storage::FileWriter<K>,
) -> Vec<carrier_storage::Inbound<K::Event>> {
    file.outbox_pending(usize::MAX)
        .expect("outbox")
        .into_iter()
        .enumerate()
        .map(|(i, (_, e))| carrier_storage::Inbound {
            stream_seq: i as u64 + 1,
            decoded: carrier_messages::Decoded::decode(
                &e.subject,
                |h| e.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(h)).map(|(_, v)| v.as_str()),
                &e.body,
            )
            .expect("decodes"),
        })
        .collect()
}
