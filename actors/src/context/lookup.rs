//! Cached entities by id, filled from their owner on a miss.

use carrier_messages::DomainEvent;
use carrier_storage::{Adopted, Adopts, ContextKind, FileWriter, Rows, StorageError};

use super::*;

impl<K: ContextKind> ContextHandle<K> {
    /// An entity of `E`'s owner as this context keeps it, in `rows` (one of the tables its
    /// [`Adopts::TABLES`] names for `aggregate`): from the file, or else from the owner's
    /// entity endpoint, adopted with `K`'s [`Adopts`] on the writer (never over a newer version)
    /// and read back. `None` when the owner does not know it, or deleted it (a tombstone: the
    /// cache forgets it). The owner is asked with the fallback's timeout, circuit breaker and
    /// negative cache (`crate::fallback`). Usable from commands, queries and prefetches; the
    /// context must cache `E` ([`caches`](crate::context::ContextDecl::caches)).
    pub async fn lookup<E, T>(&self, aggregate: &'static str, rows: Rows<T>, id: &str) -> Result<Option<T>, LookupError>
    where
        E: DomainEvent,
        K: Adopts<E>,
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        if let Some(row) = self.db.row(&rows, id)? {
            self.lookups.hit();
            return Ok(Some(row));
        }
        self.lookups.miss();
        let fallback = self
            .entity_fallbacks
            .iter()
            .find(|f| f.owner() == E::CONTEXT)
            .ok_or(LookupError::NotCached { context: K::NAME, owner: E::CONTEXT })?;
        let Some(entity) = fallback.entity::<K::State>(aggregate, id).await? else { return Ok(None) };
        let key = id.to_string();
        self.write(move |db| adopt_entity::<K, E>(db, aggregate, &key, entity)).await??;
        Ok(self.db.row(&rows, id)?)
    }
}

/// Writes an entity as its owner reported it, or forgets it for a tombstone (never over a newer
/// version: see [`FileWriter::adopt`]).
pub(crate) fn adopt_entity<K: Adopts<E>, E: DomainEvent>(
    db: &FileWriter<K>,
    aggregate: &'static str,
    id: &str,
    entity: carrier_messages::Entity<K::State>,
) -> Result<Adopted, StorageError> {
    db.adopt::<E>(aggregate, id, entity.version, |tables| match entity.state {
        Some(state) => K::adopt(tables, aggregate, id, state),
        None => K::forget(tables, aggregate, id),
    })
}
