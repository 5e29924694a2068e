//! Lookups of the mall's caches of stores, products and customers: each is Carrier's one
//! [`ContextHandle::lookup`] on the table the cache keeps, so a miss is filled from the owner's
//! entity endpoint (with the fallback's timeout, breaker and negative cache) and a removed
//! product reads as gone.

use std::future::Future;

use crate::caches::{CustomersCache, StoresCache};
use crate::customers::events::CustomersEvent;
use crate::stores::events::StoresEvent;
use carrier_actors::{ContextHandle, LookupError};

/// A store or product as a context that caches the stores context's data keeps it.
pub trait StoresLookups {
    /// A cached store.
    type Store;
    /// A cached product.
    type Product;
    /// A store: from the cache, or else from the owner (then cached).
    fn store(&self, id: &str) -> impl Future<Output = Result<Option<Self::Store>, LookupError>> + Send;
    /// A product: from the cache, or else from the owner (then cached); `None` once removed.
    fn product(&self, id: &str) -> impl Future<Output = Result<Option<Self::Product>, LookupError>> + Send;
}

impl<K: StoresCache> StoresLookups for ContextHandle<K> {
    type Store = K::Store;
    type Product = K::Product;

    fn store(&self, id: &str) -> impl Future<Output = Result<Option<K::Store>, LookupError>> + Send {
        self.lookup::<StoresEvent, _>("store", K::stores_table(), id)
    }

    fn product(&self, id: &str) -> impl Future<Output = Result<Option<K::Product>, LookupError>> + Send {
        self.lookup::<StoresEvent, _>("product", K::products_table(), id)
    }
}

/// A customer as a context that caches the customers context's data keeps them.
pub trait CustomerLookups {
    /// A cached customer.
    type Customer;
    /// A customer: from the cache, or else from the owner (then cached).
    fn customer(&self, id: &str) -> impl Future<Output = Result<Option<Self::Customer>, LookupError>> + Send;
}

impl<K: CustomersCache> CustomerLookups for ContextHandle<K> {
    type Customer = K::Customer;

    fn customer(&self, id: &str) -> impl Future<Output = Result<Option<K::Customer>, LookupError>> + Send {
        self.lookup::<CustomersEvent, _>("customer", K::customers_table(), id)
    }
}
