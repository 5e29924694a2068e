//! Reading whole rows of `id → CBOR` tables.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;

use crate::engine;
use crate::error::{decode_row, RedbResultExt};
use crate::StorageError;

/// One row by id.
pub(crate) fn get_row<T: DeserializeOwned>(
    db: &Database,
    def: TableDefinition<&str, &[u8]>,
    name: &'static str,
    id: &str,
) -> Result<Option<T>, StorageError> {
    let txn = db.begin_read().during("begin_read")?;
    let table = txn.open_table(def).during("open table")?;
    let row = table.get(id).during("read row")?;
    row.map(|bytes| decode_row(name, bytes.value())).transpose()
}

/// Every row, by id.
pub(crate) fn all_rows<T: DeserializeOwned>(
    db: &Database,
    def: TableDefinition<&str, &[u8]>,
    name: &'static str,
) -> Result<Vec<(String, T)>, StorageError> {
    let txn = db.begin_read().during("begin_read")?;
    let table = txn.open_table(def).during("open table")?;
    let mut out = Vec::new();
    for entry in table.iter().during("read table")? {
        let (k, v) = entry.during("read table")?;
        out.push((k.value().to_string(), decode_row(name, v.value())?));
    }
    Ok(out)
}

/// Every row, by id, with the entity's version from the engine's table, read in one snapshot.
pub(crate) fn all_rows_with_version<T: DeserializeOwned>(
    db: &Database,
    def: TableDefinition<&str, &[u8]>,
    name: &'static str,
    aggregate: &str,
) -> Result<Vec<(String, T, u64)>, StorageError> {
    let txn = db.begin_read().during("begin_read")?;
    let table = txn.open_table(def).during("open table")?;
    let versions = txn.open_table(engine::VERSIONS).during("open entity_versions")?;
    let mut out = Vec::new();
    for entry in table.iter().during("read table")? {
        let (k, v) = entry.during("read table")?;
        let id = k.value().to_string();
        let version =
            versions.get((aggregate, id.as_str())).during("read entity_versions")?.map(|g| g.value()).unwrap_or(0);
        out.push((id, decode_row(name, v.value())?, version));
    }
    Ok(out)
}
