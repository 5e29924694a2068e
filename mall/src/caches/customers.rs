//! Caches of the customers context's data in a consuming context's file (payments,
//! notifications, search): seed 001's `customers_cache`, id → CBOR row.
//!
//! Like the stores caches, what a row holds and what each event does to it is the context's
//! [`CustomersCache`]; `customers_cache!` makes it a cache of the customers context's entities
//! (reacting to their events, adopting the owner's answers).

use serde::{de::DeserializeOwned, Serialize};

use carrier_storage::ReactError;
use carrier_storage::{ContextFile, ContextKind, Rows, RowsMut, StorageError, WriteTransaction};

use crate::customers::events::{CustomerSnapshot, CustomersEvent};

/// The customers cache table's name.
pub const CUSTOMERS_CACHE: &str = "customers_cache";

/// What one consuming context keeps of customers, and what each event does to it.
/// `customers_cache!(Kind)` implements the rest (`Reacts` and `Adopts` of customers events).
pub trait CustomersCache: ContextKind + carrier_storage::Adopts<CustomersEvent> {
    /// A cached customer.
    type Customer: Serialize + DeserializeOwned + Clone + Send + 'static;
    /// Applies one event (called only for the customer's next version).
    fn apply(tables: &mut CustomersCacheTable<'_, Self>, event: &CustomersEvent) -> Result<(), StorageError>;
    /// The row from the owner's snapshot.
    fn customer_row(snapshot: &CustomerSnapshot) -> Self::Customer;

    /// The customers cache table.
    fn customers_table() -> Rows<Self::Customer> {
        Rows::new(CUSTOMERS_CACHE)
    }
}

/// The customers cache table opened for one transaction.
pub struct CustomersCacheTable<'txn, K: CustomersCache> {
    customers: RowsMut<'txn, K::Customer>,
}

impl<'txn, K: CustomersCache> CustomersCacheTable<'txn, K> {
    /// Opens it in `txn`.
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self, StorageError> {
        Ok(CustomersCacheTable { customers: K::customers_table().open(txn)? })
    }

    /// Creates it (for a kind's [`ContextKind::create_tables`]).
    pub fn create(txn: &WriteTransaction) -> Result<(), StorageError> {
        K::customers_table().create(txn)
    }

    /// Writes a row (seed 001's `CustomerCacheRepository.Add`).
    pub fn put(&mut self, id: &str, row: &K::Customer) -> Result<(), StorageError> {
        self.customers.put(id, row)
    }

    /// Changes a cached customer (e.g. `UpdateSmsNumber`); one the cache never saw is left alone.
    pub fn update(&mut self, id: &str, change: impl FnOnce(&mut K::Customer)) -> Result<(), StorageError> {
        if !self.customers.update(id, change)? {
            tracing::warn!(customer.id = id, "customer missing from the cache; change skipped");
        }
        Ok(())
    }

    /// Deletes a row (its owner answered the customer deleted).
    pub fn remove(&mut self, id: &str) -> Result<(), StorageError> {
        self.customers.remove(id)
    }

    /// A cached customer a reaction needs; `NotReady` when missing, so that the batch is
    /// retried once the consumer's prefetch or the customers stream fills it.
    pub fn required(&self, id: &str) -> Result<K::Customer, ReactError> {
        self.customers.get(id)?.ok_or_else(|| ReactError::not_ready(format!("customer {id:?} is not cached")))
    }
}

/// Makes a [`CustomersCache`] kind a cache of the customers context's entities: it reacts to
/// customers events (never emitting) and adopts the customers context's answers, so that it is
/// declared `.caches::<CustomersEvent>()`.
macro_rules! customers_cache {
    ($kind:ty) => {
        impl carrier_storage::Reacts<$crate::customers::events::CustomersEvent> for $kind {
            /// A cache: it never emits.
            fn may_emit(_event: &$crate::customers::events::CustomersEvent) -> bool {
                false
            }

            type Tables<'txn> = $crate::caches::customers::CustomersCacheTable<'txn, $kind>;

            fn open<'txn>(
                txn: &'txn carrier_storage::WriteTransaction,
            ) -> Result<Self::Tables<'txn>, carrier_storage::StorageError> {
                $crate::caches::customers::CustomersCacheTable::open(txn)
            }

            fn react(
                tables: &mut Self::Tables<'_>,
                _emit: &mut carrier_storage::Emitter<'_, <$kind as carrier_storage::ContextKind>::Event>,
                _envelope: &carrier_messages::Envelope,
                event: &$crate::customers::events::CustomersEvent,
            ) -> Result<(), carrier_storage::ReactError> {
                Ok(<$kind as $crate::caches::customers::CustomersCache>::apply(tables, event)?)
            }
        }

        impl carrier_storage::Adopts<$crate::customers::events::CustomersEvent> for $kind {
            type State = $crate::customers::events::CustomerSnapshot;

            const TABLES: &'static [(&'static str, &'static str)] =
                &[("customer", $crate::caches::customers::CUSTOMERS_CACHE)];

            fn adopt(
                tables: &mut Self::Tables<'_>,
                _aggregate: &str,
                id: &str,
                state: $crate::customers::events::CustomerSnapshot,
            ) -> Result<(), carrier_storage::StorageError> {
                let row = <$kind as $crate::caches::customers::CustomersCache>::customer_row(&state);
                tables.put(id, &row)
            }

            fn forget(
                tables: &mut Self::Tables<'_>,
                _aggregate: &str,
                id: &str,
            ) -> Result<(), carrier_storage::StorageError> {
                tables.remove(id)
            }
        }
    };
}
pub(crate) use customers_cache;

/// What a context's file answers of its customers cache.
pub trait CustomersCacheFile {
    /// A cached customer.
    type Customer;
    /// One cached customer.
    fn customer(&self, id: &str) -> Result<Option<Self::Customer>, StorageError>;
    /// Every cached customer with their version, by id.
    fn customers(&self) -> Result<Vec<(String, Self::Customer, u64)>, StorageError>;
}

impl<K: CustomersCache> CustomersCacheFile for ContextFile<K> {
    type Customer = K::Customer;

    fn customer(&self, id: &str) -> Result<Option<K::Customer>, StorageError> {
        self.row(&K::customers_table(), id)
    }

    fn customers(&self) -> Result<Vec<(String, K::Customer, u64)>, StorageError> {
        self.read(|txn| K::customers_table().all_with_versions(txn, "customer"))
    }
}
