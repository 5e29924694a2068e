//! Reading any context's file without knowing its context: every table, every row, as JSON.
//!
//! `carrier inspect` uses this, so a context declared by a user's crate is inspected with no code
//! of its own. The file is opened read-only ([`redb::ReadOnlyDatabase`]): it works on a copy the
//! user cannot write, and it can never change a context's data.

use std::path::Path;

use redb::{
    Key, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle, Value,
};
use serde::Serialize;

use crate::error::RedbResultExt;
use crate::StorageError;

/// One table of a file: how many rows it has and the first of them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TableDump {
    /// The table's name.
    pub table: String,
    /// Its key and value types, as redb names them (`&str`, `u64`, `&[u8]`, ...).
    pub types: String,
    /// How many rows it has.
    pub rows: u64,
    /// The first rows by key, at most the limit asked for. Keys and values are shown as JSON;
    /// CBOR bytes (every row Carrier writes) are decoded, other bytes shown as hex.
    pub entries: Vec<(serde_json::Value, serde_json::Value)>,
}

/// Every table of the file at `path` with up to `limit` rows each, sorted by table name.
pub fn dump(path: &Path, limit: usize) -> Result<Vec<TableDump>, StorageError> {
    let db = ReadOnlyDatabase::open(path).map_err(|source| StorageError::Open { path: path.to_path_buf(), source })?;
    let txn = db.begin_read().during("begin_read")?;
    let mut tables = Vec::new();
    let handles: Vec<redb::UntypedTableHandle> = txn.list_tables().during("list tables")?.collect();
    for handle in handles {
        tables.push(dump_table(&txn, handle, limit)?);
    }
    tables.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(tables)
}

/// A key or value shown as JSON.
trait Show: Value {
    fn show(value: Self::SelfType<'_>) -> serde_json::Value;
}

impl Show for &str {
    fn show(value: &str) -> serde_json::Value {
        value.into()
    }
}

impl Show for u64 {
    fn show(value: u64) -> serde_json::Value {
        value.into()
    }
}

impl Show for u128 {
    fn show(value: u128) -> serde_json::Value {
        // Event ids are UUIDs kept as u128.
        uuid::Uuid::from_u128(value).to_string().into()
    }
}

impl Show for () {
    fn show(_: ()) -> serde_json::Value {
        serde_json::Value::Null
    }
}

impl Show for &[u8] {
    fn show(value: &[u8]) -> serde_json::Value {
        carrier_messages::cbor::to_json(value)
            .unwrap_or_else(|_| value.iter().map(|b| format!("{b:02x}")).collect::<String>().into())
    }
}

impl<A: Show, B: Show> Show for (A, B) {
    fn show((a, b): Self::SelfType<'_>) -> serde_json::Value {
        serde_json::Value::Array(vec![A::show(a), B::show(b)])
    }
}

impl<A: Show, B: Show, C: Show> Show for (A, B, C) {
    fn show((a, b, c): Self::SelfType<'_>) -> serde_json::Value {
        serde_json::Value::Array(vec![A::show(a), B::show(b), C::show(c)])
    }
}

/// Opens `name` as a `K → V` table; `None` when it has other types.
fn try_dump<K: Key + Show + 'static, V: Show + 'static>(
    txn: &ReadTransaction,
    name: &str,
    limit: usize,
) -> Result<Option<TableDump>, StorageError> {
    let definition: TableDefinition<K, V> = TableDefinition::new(name);
    let table = match txn.open_table(definition) {
        Ok(table) => table,
        Err(redb::TableError::TableTypeMismatch { .. }) => return Ok(None),
        Err(e) => return Err(e).during("open table"),
    };
    let mut entries = Vec::new();
    for row in table.iter().during("read table")?.take(limit) {
        let (k, v) = row.during("read row")?;
        entries.push((K::show(k.value()), V::show(v.value())));
    }
    Ok(Some(TableDump {
        table: name.to_string(),
        types: format!("{} → {}", K::type_name().name(), V::type_name().name()),
        rows: table.len().during("count rows")?,
        entries,
    }))
}

fn dump_table(
    txn: &ReadTransaction,
    handle: redb::UntypedTableHandle,
    limit: usize,
) -> Result<TableDump, StorageError> {
    let name = handle.name().to_string();
    let name = name.as_str();
    type Dumper = fn(&ReadTransaction, &str, usize) -> Result<Option<TableDump>, StorageError>;
    // The key and value types Carrier's tables use, and those a context's own tables may use.
    const TYPES: &[Dumper] = &[
        try_dump::<&str, &[u8]>,
        try_dump::<&str, u64>,
        try_dump::<&str, &str>,
        try_dump::<&str, ()>,
        try_dump::<u64, &[u8]>,
        try_dump::<u64, u64>,
        try_dump::<u128, u64>,
        try_dump::<(&str, &str), u64>,
        try_dump::<(&str, &str), &[u8]>,
        try_dump::<(&str, &str, u64), &[u8]>,
        try_dump::<(&str, u64), &[u8]>,
        try_dump::<(u64, u128), ()>,
        try_dump::<(u64, &str), ()>,
        try_dump::<(&str, &str), ()>,
        try_dump::<&[u8], &[u8]>,
    ];
    for dumper in TYPES {
        if let Some(dump) = dumper(txn, name, limit)? {
            return Ok(dump);
        }
    }
    // A table of other types: its size is still known.
    let table = txn.open_untyped_table(handle).during("open table")?;
    Ok(TableDump {
        table: name.to_string(),
        types: "other".into(),
        rows: table.len().during("count rows")?,
        entries: vec![],
    })
}

/// Why a file cannot be read as it is: in use, or in need of repair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// Another process (a running carrier) holds it open.
    InUse,
    /// The process that last wrote it stopped without closing it (it was killed): redb repairs
    /// it on the next writable open.
    NeedsRepair,
}

impl FileState {
    /// What `error` (from [`dump`]) says about the file, if it is one of these.
    pub fn of(error: &StorageError) -> Option<FileState> {
        match error {
            StorageError::Open { source: redb::DatabaseError::DatabaseAlreadyOpen, .. } => Some(FileState::InUse),
            StorageError::Open { source: redb::DatabaseError::RepairAborted, .. } => Some(FileState::NeedsRepair),
            _ => None,
        }
    }
}

/// Repairs a file a killed process left (redb's repair, as the next writable open would do
/// it), so that it can be read. Fails with [`FileState::InUse`]'s error when a process holds it.
pub fn repair(path: &Path) -> Result<(), StorageError> {
    let db = redb::Database::create(path).map_err(|source| StorageError::Open { path: path.to_path_buf(), source })?;
    drop(db);
    Ok(())
}
