//! The mall's caches of its owners' entities: [`stores`] (`stores_cache`, `products_cache`) and
//! [`customers`] (`customers_cache`). Each context that keeps one says what a row holds and what
//! each event does to it; the tables, the reactions' rules and adopting the owners' answers are
//! shared here, on Carrier's one way to cache another context's entities (`Adopts`, `.caches`).

pub mod customers;
pub mod stores;

pub use customers::{CustomersCache, CustomersCacheFile, CustomersCacheTable};
pub use stores::{StoresCache, StoresCacheFile, StoresCacheTables};
