//! Stores queries over NATS request/reply on `query.stores`, and the entity endpoint
//! `query.stores.entity`: the owner's current state, which the stores caches of other contexts
//! fall back on.

use carrier_messages::Entity;
use carrier_messages::QueryReply;
use carrier_storage::StorageError;

use super::{ProductSnapshot, StoreSnapshot, StoresDb, StoresFile, StoresQuery, StoresQueryReply};

/// Answers one query from the owner's file (read transactions: never waits for the owner).
pub fn answer(db: &StoresDb, query: StoresQuery) -> StoresQueryReply {
    lookup(db, query).unwrap_or_else(|e| StoresQueryReply::failed("unavailable", e.to_string()))
}

/// Answers the entity endpoint: a store or a product at its version; a removed product is a
/// tombstone (its removal's version, no state), so that every cache forgets it.
pub fn entity(db: &StoresDb, aggregate: &str, id: &str) -> Result<Option<Entity<serde_json::Value>>, StorageError> {
    Ok(match aggregate {
        "store" => store(db, id)?.map(|s| Entity::of(s.version, &s)),
        "product" => product(db, id)?.map(|p| match p.removed {
            true => Entity::deleted(p.version),
            false => Entity::of(p.version, &p),
        }),
        _ => None,
    })
}

fn store(db: &StoresDb, id: &str) -> Result<Option<StoreSnapshot>, StorageError> {
    Ok(db.store(id)?.map(|s| StoreSnapshot {
        id: id.to_string(),
        name: s.name,
        location: s.location,
        participating: s.participating,
        version: s.version,
    }))
}

fn product(db: &StoresDb, id: &str) -> Result<Option<ProductSnapshot>, StorageError> {
    Ok(db.product(id)?.map(|p| ProductSnapshot {
        id: id.to_string(),
        store_id: p.store_id,
        name: p.name,
        description: p.description,
        sku: p.sku,
        price: p.price,
        removed: p.removed,
        version: p.version,
    }))
}

fn lookup(db: &StoresDb, query: StoresQuery) -> Result<StoresQueryReply, StorageError> {
    let mut reply = StoresQueryReply { ok: true, store: None, product: None, error: None };
    match query {
        StoresQuery::GetStore { id } => reply.store = store(db, &id)?,
        StoresQuery::GetProduct { id } => reply.product = product(db, &id)?,
    }
    Ok(reply)
}
