//! Stores queries over NATS request/reply on `query.stores`: the owner's current state, which
//! the stores caches of other contexts fall back on.

use carrier_messages::stores::{ProductSnapshot, StoreSnapshot, StoresQuery, StoresQueryReply};
use carrier_messages::QueryReply;
use carrier_storage::{StorageError, StoresDb};

/// Answers one query from the owner's file (read transactions: never waits for the owner).
pub fn answer(db: &StoresDb, query: StoresQuery) -> StoresQueryReply {
    lookup(db, query).unwrap_or_else(|e| StoresQueryReply::failed("unavailable", e.to_string()))
}

fn lookup(db: &StoresDb, query: StoresQuery) -> Result<StoresQueryReply, StorageError> {
    let mut reply = StoresQueryReply { ok: true, store: None, product: None, error: None };
    match query {
        StoresQuery::GetStore { id } => {
            reply.store = db.store(&id)?.map(|s| StoreSnapshot {
                id,
                name: s.name,
                location: s.location,
                participating: s.participating,
                version: s.version,
            });
        }
        StoresQuery::GetProduct { id } => {
            reply.product = db.product(&id)?.map(|p| ProductSnapshot {
                id,
                store_id: p.store_id,
                name: p.name,
                description: p.description,
                sku: p.sku,
                price: p.price,
                removed: p.removed,
                version: p.version,
            });
        }
    }
    Ok(reply)
}
