use std::path::PathBuf;

/// A storage failure. Every variant is worth retrying later except [`StorageError::Corrupt`],
/// which means a row this crate wrote no longer decodes (a bug, or a damaged file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database file could not be opened or created.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::DatabaseError,
    },
    /// A redb operation failed (I/O error, disk full, ...).
    #[error("redb {operation} failed: {source}")]
    Redb {
        /// What was being done, e.g. `commit`.
        operation: &'static str,
        /// What redb said.
        #[source]
        source: redb::Error,
    },
    /// A reaction said the event needs something not here yet ([`ReactError::NotReady`]): the
    /// batch is retried, nothing is acknowledged.
    #[error("not ready: {0}")]
    NotReady(String),
    /// A reaction rejected the event for good ([`ReactError::Reject`]): the consumer
    /// dead-letters it with this reason and applies the rest of its batch without it.
    #[error("event at stream sequence {stream_seq} rejected: {reason}")]
    Rejected {
        /// The refused event's stream sequence.
        stream_seq: u64,
        /// Why, for the dead letter.
        reason: String,
    },
    /// An instance standing by (or fenced) met an event whose reaction would emit, and whose
    /// effect it has not followed from its own stream yet: the holder may have emitted it. The
    /// batch is kept back and tried again once the follower has caught up, or this instance
    /// holds the context.
    #[error("event at stream sequence {stream_seq} waits: its reaction emits, and this instance does not hold the context (it follows what the holder emits)")]
    NotYetFollowed {
        /// The event's stream sequence.
        stream_seq: u64,
    },
    /// A stored row does not decode.
    #[error("corrupt row in table {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The decoder's message.
        reason: String,
    },
}

impl StorageError {
    /// Names the event a [`Rejected`](StorageError::Rejected) verdict is about.
    pub(crate) fn at(self, seq: u64) -> Self {
        match self {
            StorageError::Rejected { reason, .. } => StorageError::Rejected { stream_seq: seq, reason },
            other => other,
        }
    }

    /// An I/O failure during `operation` (also how failure drills simulate a failing disk).
    pub fn io(operation: &'static str, error: std::io::Error) -> Self {
        StorageError::Redb { operation, source: redb::Error::Io(error) }
    }
}

/// Attaches the operation's name to any redb error, making it a [`StorageError`]: for a
/// context's own table code (`txn.open_table(T).during("open t")?`).
pub trait RedbResultExt<T> {
    /// The result, with a redb error named after `operation`.
    fn during(self, operation: &'static str) -> Result<T, StorageError>;
}

impl<T, E: Into<redb::Error>> RedbResultExt<T> for Result<T, E> {
    fn during(self, operation: &'static str) -> Result<T, StorageError> {
        self.map_err(|e| StorageError::Redb { operation, source: e.into() })
    }
}

/// Encodes a row.
pub(crate) fn encode_row<T: serde::Serialize>(table: &'static str, row: &T) -> Result<Vec<u8>, StorageError> {
    carrier_messages::cbor::to_vec(row).map_err(|e| StorageError::Corrupt { table, reason: e.to_string() })
}

/// Decodes a row.
pub(crate) fn decode_row<T: serde::de::DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StorageError> {
    carrier_messages::cbor::from_slice(bytes).map_err(|e| StorageError::Corrupt { table, reason: e.to_string() })
}

/// What a reaction ([`Reacts::react`](crate::Reacts::react)) says when it does not apply an event.
///
/// A reaction's storage calls return [`StorageError`], which `?` turns into
/// [`ReactError::Storage`]; the other two are the reaction's own verdicts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReactError {
    /// The event can never be applied (it names something that does not exist, breaks the
    /// owner's contract, ...): it is dead-lettered with this reason, nothing the reaction wrote
    /// for it is kept, and the rest of its batch applies without it.
    #[error("rejected: {0}")]
    Reject(String),
    /// Something the event needs is not here yet (an entity not cached, an earlier event of
    /// another stream): nothing is kept or acknowledged, and the batch is tried again later.
    #[error("not ready: {0}")]
    NotReady(String),
    /// Reading or writing the context's file failed: the batch is tried again.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ReactError {
    /// Rejects the event for good, with the reason its dead letter carries.
    pub fn reject(reason: impl Into<String>) -> Self {
        ReactError::Reject(reason.into())
    }

    /// Retries the event later: `what` is missing for now.
    pub fn not_ready(what: impl Into<String>) -> Self {
        ReactError::NotReady(what.into())
    }
}

impl From<ReactError> for StorageError {
    fn from(error: ReactError) -> Self {
        match error {
            ReactError::Reject(reason) => StorageError::Rejected { stream_seq: 0, reason },
            ReactError::NotReady(what) => StorageError::NotReady(what),
            ReactError::Storage(error) => error,
        }
    }
}
