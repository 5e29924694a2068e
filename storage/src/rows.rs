//! Tables of `id → CBOR` rows: [`Rows`] for a context's own tables, and whole-table reads.

use std::marker::PhantomData;

use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{de::DeserializeOwned, Serialize};

use crate::engine;
use crate::error::{decode_row, encode_row, RedbResultExt};
use crate::StorageError;

/// A table of rows of type `T` by string id, stored as CBOR: what most of a context's own
/// tables are. Declare one as a constant and open it in a transaction:
///
/// ```
/// use carrier_storage::Rows;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Listing { name: String }
/// const LISTINGS: Rows<Listing> = Rows::new("listings");
/// ```
pub struct Rows<T> {
    name: &'static str,
    row: PhantomData<fn() -> T>,
}

impl<T> Clone for Rows<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Rows<T> {}

impl<T: Serialize + DeserializeOwned> Rows<T> {
    /// The table `name`.
    pub const fn new(name: &'static str) -> Self {
        Rows { name, row: PhantomData }
    }

    pub(crate) fn definition(&self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name)
    }

    /// Creates the table (for a context's `create_tables`, so that `carrier inspect` lists it
    /// before its first row; a table is also created by its first write).
    pub fn create(&self, txn: &WriteTransaction) -> Result<(), StorageError> {
        txn.open_table(self.definition()).during("create table")?;
        Ok(())
    }

    /// Opens the table for writing in `txn`.
    pub fn open<'txn>(&self, txn: &'txn WriteTransaction) -> Result<RowsMut<'txn, T>, StorageError> {
        Ok(RowsMut {
            table: txn.open_table(self.definition()).during("open table")?,
            name: self.name,
            row: PhantomData,
        })
    }

    /// The table's name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The table in a read transaction; `None` before anything was ever written to it.
    pub(crate) fn read<'a>(
        &self,
        txn: &'a ReadTransaction,
    ) -> Result<Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>, StorageError> {
        match txn.open_table(self.definition()) {
            Ok(table) => Ok(Some(table)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e).during("open table"),
        }
    }

    /// One row, read in `txn`.
    pub fn get(&self, txn: &ReadTransaction, id: &str) -> Result<Option<T>, StorageError> {
        let Some(table) = self.read(txn)? else { return Ok(None) };
        let row = table.get(id).during("read row")?;
        row.map(|bytes| decode_row(self.name, bytes.value())).transpose()
    }

    /// How many rows, read in `txn`.
    pub fn len(&self, txn: &ReadTransaction) -> Result<u64, StorageError> {
        use redb::ReadableTableMetadata;
        let Some(table) = self.read(txn)? else { return Ok(0) };
        table.len().during("count rows")
    }

    /// Up to `limit` rows in id order, starting after the id `after` (from the first when
    /// `None`): a page that stays right while rows are added and removed between pages, so a
    /// walk of the whole table by pages misses no row that stayed throughout.
    pub fn page(
        &self,
        txn: &ReadTransaction,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StorageError> {
        use std::ops::Bound;
        let Some(table) = self.read(txn)? else { return Ok(Vec::new()) };
        let start = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for entry in table.range::<&str>((start, Bound::Unbounded)).during("read table")?.take(limit) {
            let (k, v) = entry.during("read table")?;
            out.push((k.value().to_string(), decode_row(self.name, v.value())?));
        }
        Ok(out)
    }

    /// Visits the rows in id order, starting after the id `after` (from the first when `None`),
    /// until `visit` returns `false`: a scan that stops early, decoding one row at a time.
    pub fn scan(
        &self,
        txn: &ReadTransaction,
        after: Option<&str>,
        mut visit: impl FnMut(&str, T) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        use std::ops::Bound;
        let Some(table) = self.read(txn)? else { return Ok(()) };
        let start = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        for entry in table.range::<&str>((start, Bound::Unbounded)).during("read table")? {
            let (k, v) = entry.during("read table")?;
            if !visit(k.value(), decode_row(self.name, v.value())?)? {
                break;
            }
        }
        Ok(())
    }

    /// Up to `limit` rows in id order, skipping the first `offset` (an offset page: the cost of
    /// skipping grows with `offset`; [`page`](Self::page) does not).
    pub fn slice(&self, txn: &ReadTransaction, offset: usize, limit: usize) -> Result<Vec<(String, T)>, StorageError> {
        let Some(table) = self.read(txn)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for entry in table.iter().during("read table")?.skip(offset).take(limit) {
            let (k, v) = entry.during("read table")?;
            out.push((k.value().to_string(), decode_row(self.name, v.value())?));
        }
        Ok(out)
    }

    /// Every row by id, each with the version of its entity of kind `aggregate` (the engine's
    /// `entity_versions`; 0 when it has none), read in `txn`: what a cache of another context's
    /// entities holds, as a test or an oracle compares it with the owner.
    pub fn all_with_versions(
        &self,
        txn: &ReadTransaction,
        aggregate: &str,
    ) -> Result<Vec<(String, T, u64)>, StorageError> {
        let Some(table) = self.read(txn)? else { return Ok(Vec::new()) };
        let versions = txn.open_table(engine::VERSIONS).during("open entity_versions")?;
        let mut out = Vec::new();
        for entry in table.iter().during("read table")? {
            let (k, v) = entry.during("read table")?;
            let id = k.value().to_string();
            let version =
                versions.get((aggregate, id.as_str())).during("read entity_versions")?.map(|g| g.value()).unwrap_or(0);
            out.push((id, decode_row(self.name, v.value())?, version));
        }
        Ok(out)
    }

    /// Every row by id, read in `txn`.
    pub fn all(&self, txn: &ReadTransaction) -> Result<Vec<(String, T)>, StorageError> {
        let Some(table) = self.read(txn)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for entry in table.iter().during("read table")? {
            let (k, v) = entry.during("read table")?;
            out.push((k.value().to_string(), decode_row(self.name, v.value())?));
        }
        Ok(out)
    }
}

/// A [`Rows`] table opened for writing in one transaction.
pub struct RowsMut<'txn, T> {
    table: Table<'txn, &'static str, &'static [u8]>,
    name: &'static str,
    row: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> RowsMut<'_, T> {
    /// One row.
    pub fn get(&self, id: &str) -> Result<Option<T>, StorageError> {
        let row = self.table.get(id).during("read row")?;
        row.map(|bytes| decode_row(self.name, bytes.value())).transpose()
    }

    /// Writes a row.
    pub fn put(&mut self, id: &str, row: &T) -> Result<(), StorageError> {
        let bytes = encode_row(self.name, row)?;
        self.table.insert(id, bytes.as_slice()).during("write row")?;
        Ok(())
    }

    /// Changes a row in place; returns whether it existed (a missing row is left missing).
    pub fn update(&mut self, id: &str, change: impl FnOnce(&mut T)) -> Result<bool, StorageError> {
        let Some(mut row) = self.get(id)? else { return Ok(false) };
        change(&mut row);
        self.put(id, &row)?;
        Ok(true)
    }

    /// Deletes a row.
    pub fn remove(&mut self, id: &str) -> Result<(), StorageError> {
        self.table.remove(id).during("remove row")?;
        Ok(())
    }

    /// Deletes every row (a full sync writes the owner's snapshot into an empty table).
    pub fn clear(&mut self) -> Result<(), StorageError> {
        self.table.retain(|_, _| false).during("clear table")?;
        Ok(())
    }

    /// How many rows.
    pub fn len(&self) -> Result<u64, StorageError> {
        use redb::ReadableTableMetadata;
        self.table.len().during("count rows")
    }
}
