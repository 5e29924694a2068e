//! Caches of the customers context's data in a consuming context's file (payments,
//! notifications, search): seed 001's `customers_cache`, id → CBOR row.
//!
//! Like the stores caches, what a row holds and what each event does to it is the context's
//! [`CustomerCacheKind`]; the table, the versions and adopting the owner's answers are shared.

use std::marker::PhantomData;

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{de::DeserializeOwned, Serialize};

use carrier_messages::customers::{CustomerSnapshot, CustomersEvent};
use carrier_messages::Envelope;

use crate::context::{Adopts, ContextFile, ContextKind, Emitter, Reacts};
use crate::error::{decode_row, encode_row, RedbResultExt};
use crate::rows::{all_rows_with_version, get_row};
use crate::{Rows, StorageError};

pub(crate) const CUSTOMERS_CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("customers_cache");

/// What one consuming context keeps of customers, and what each event does to it.
pub trait CustomerCacheKind: ContextKind {
    /// A cached customer.
    type Customer: Serialize + DeserializeOwned + Clone + Send + 'static;
    /// Applies one event (called only for the customer's next version).
    fn apply(tables: &mut CustomerTables<'_, Self>, event: &CustomersEvent) -> Result<(), StorageError>;
    /// The row from the owner's snapshot.
    fn customer_row(snapshot: &CustomerSnapshot) -> Self::Customer;
}

/// The customers cache table opened for one transaction.
pub struct CustomerTables<'txn, K> {
    customers: Table<'txn, &'static str, &'static [u8]>,
    kind: PhantomData<K>,
}

impl<K: CustomerCacheKind> CustomerTables<'_, K> {
    /// Writes a row (seed 001's `CustomerCacheRepository.Add`).
    pub fn put(&mut self, id: &str, row: &K::Customer) -> Result<(), StorageError> {
        let bytes = encode_row("customers_cache", row)?;
        self.customers.insert(id, bytes.as_slice()).during("write customers_cache")?;
        Ok(())
    }

    /// Changes a cached customer (e.g. `UpdateSmsNumber`); one the cache never saw is left alone.
    pub fn update(&mut self, id: &str, change: impl FnOnce(&mut K::Customer)) -> Result<(), StorageError> {
        let current = self.customers.get(id).during("read customers_cache")?.map(|g| g.value().to_vec());
        let Some(bytes) = current else {
            tracing::warn!(customer.id = id, "customer missing from the cache; change skipped");
            return Ok(());
        };
        let mut row: K::Customer = decode_row("customers_cache", &bytes)?;
        change(&mut row);
        self.put(id, &row)
    }
}

impl<K: CustomerCacheKind> Reacts<CustomersEvent> for K {
    /// A cache: it never emits.
    fn may_emit(_event: &CustomersEvent) -> bool {
        false
    }

    type Tables<'txn> = CustomerTables<'txn, K>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<CustomerTables<'txn, K>, StorageError> {
        Ok(CustomerTables {
            customers: txn.open_table(CUSTOMERS_CACHE).during("open customers_cache")?,
            kind: PhantomData,
        })
    }

    fn react(
        tables: &mut CustomerTables<'_, K>,
        _emit: &mut Emitter<'_, K::Event>,
        _envelope: &Envelope,
        event: &CustomersEvent,
    ) -> Result<(), StorageError> {
        K::apply(tables, event)
    }
}

/// Creates the table (for a kind's [`ContextKind::create_tables`]).
pub fn create_customers_cache_table(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(CUSTOMERS_CACHE).during("create customers_cache")?;
    Ok(())
}

impl<K: CustomerCacheKind> ContextFile<K> {
    /// One cached customer.
    pub fn customer(&self, id: &str) -> Result<Option<K::Customer>, StorageError> {
        get_row(&self.db, CUSTOMERS_CACHE, "customers_cache", id)
    }

    /// Every cached customer with its version, by id.
    pub fn customers(&self) -> Result<Vec<(String, K::Customer, u64)>, StorageError> {
        all_rows_with_version(&self.db, CUSTOMERS_CACHE, "customers_cache", "customer")
    }
}

impl<K: CustomerCacheKind> Adopts<CustomersEvent> for K {
    type State = CustomerSnapshot;

    const TABLES: &'static [(&'static str, &'static str)] = &[("customer", "customers_cache")];

    fn adopt(
        tables: &mut CustomerTables<'_, K>,
        _aggregate: &str,
        id: &str,
        state: CustomerSnapshot,
    ) -> Result<(), StorageError> {
        tables.put(id, &K::customer_row(&state))
    }

    fn forget(tables: &mut CustomerTables<'_, K>, _aggregate: &str, id: &str) -> Result<(), StorageError> {
        tables.customers.remove(id).during("remove customers_cache")?;
        Ok(())
    }
}

/// The customers cache table of `K`, for lookups (`ContextHandle::lookup`).
pub fn customers_rows<K: CustomerCacheKind>() -> Rows<K::Customer> {
    Rows::new("customers_cache")
}

/// A cached customer a reaction needs, read from the table it opened; `NotReady` when missing,
/// so that the batch is retried once the consumer's prefetch or the customers stream fills it.
pub(crate) fn required_customer<T: DeserializeOwned>(
    table: &Table<'_, &'static str, &'static [u8]>,
    id: &str,
) -> Result<T, StorageError> {
    table
        .get(id)
        .during("read customers_cache")?
        .map(|g| decode_row("customers_cache", g.value()))
        .transpose()?
        .ok_or_else(|| StorageError::NotReady(format!("customer {id:?} is not cached")))
}
