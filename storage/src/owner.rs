//! An owning context's file: its state and its outbox, changed together by commands.
//!
//! What differs between owners (stores, customers) is an [`OwnerKind`]: the state tables, and how
//! a command is decided against them and folded into them. Recording the event in the outbox in
//! the same transaction, and reading and deleting outbox rows for the relay, are the same for all.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use redb::{Database, WriteTransaction};
use serde::{de::DeserializeOwned, Serialize};

use carrier_messages::codec::Causality;
use carrier_messages::{Decoded, DomainEvent, EncodedEvent, ValidationError};

use crate::error::RedbResultExt;
use crate::outbox::{self, OUTBOX};
use crate::StorageError;

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The entity does not exist (or was removed).
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// `store`, `product`, `customer`, ...
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// An entity with that id exists already.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// `store`, `product`, `customer`, ...
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The command breaks a business rule.
    #[error("rejected: {0}")]
    Rejected(String),
    /// A field breaks the contract's limits.
    #[error("invalid: {0}")]
    Invalid(#[from] ValidationError),
    /// Storage failed; the command may be retried.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// An owning context's state and rules.
pub trait OwnerKind: Sized + Send + Sync + 'static {
    /// The commands it decides.
    type Command: Clone + Send + Sync + Serialize + DeserializeOwned + 'static;
    /// The events it records.
    type Event: DomainEvent;

    /// The command's name for logs, e.g. `CreateStore`.
    fn command_name(command: &Self::Command) -> &'static str;

    /// Creates its state tables.
    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError>;

    /// Decides `command` against the state in `txn`, validates the event, folds it into the
    /// state, and returns it with the entity's new version.
    fn decide(txn: &WriteTransaction, command: &Self::Command) -> Result<(Self::Event, u64), CommandError>;
}

/// An owning context's redb file.
pub struct OwnerFile<K> {
    pub(crate) db: Database,
    path: PathBuf,
    kind: PhantomData<fn() -> K>,
}

impl<K: OwnerKind> OwnerFile<K> {
    /// Opens or creates the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = crate::engine::open_database(&path, |txn| {
            K::create_tables(txn)?;
            txn.open_table(OUTBOX).during("create outbox")?;
            txn.open_table(outbox::OUTBOX_NEXT).during("create outbox_next")?;
            Ok(())
        })?;
        Ok(OwnerFile { db, path, kind: PhantomData })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decides `command`, folds the event into the state and appends it to the outbox, all in
    /// one transaction. Returns the recorded event.
    pub fn execute(&self, command: &K::Command, causality: &Causality) -> Result<Decoded<K::Event>, CommandError> {
        let txn = self.db.begin_write().during("begin_write")?;
        let recorded = K::decide(&txn, command).and_then(|(event, version)| {
            let decoded = Decoded::new(event, version, causality);
            let encoded =
                decoded.encode().map_err(|e| StorageError::Corrupt { table: "outbox", reason: e.to_string() })?;
            outbox::append(&txn, &encoded)?;
            Ok(decoded)
        });
        match recorded {
            Ok(decoded) => {
                txn.commit().during("commit")?;
                Ok(decoded)
            }
            Err(e) => {
                txn.abort().during("abort")?;
                Err(e)
            }
        }
    }

    /// Runs `read` on a read snapshot (queries; never waits for the writer).
    pub fn read<T>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().during("begin_read")?;
        read(&txn)
    }

    /// The oldest `limit` unpublished events.
    pub fn outbox_pending(&self, limit: usize) -> Result<Vec<(u64, EncodedEvent)>, StorageError> {
        outbox::pending(&self.db, limit)
    }

    /// Deletes published outbox rows.
    pub fn outbox_remove(&self, keys: &[u64]) -> Result<(), StorageError> {
        outbox::remove(&self.db, keys)
    }

    /// Unpublished events.
    pub fn outbox_len(&self) -> Result<u64, StorageError> {
        outbox::len(&self.db)
    }

    /// Every table with its row count.
    pub fn table_sizes(&self) -> Result<Vec<(String, u64)>, StorageError> {
        crate::engine::table_sizes(&self.db)
    }
}
