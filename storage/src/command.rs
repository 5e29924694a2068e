//! Why a command was not carried out: [`CommandError`], what every context's decisions return.

use carrier_messages::ValidationError;

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
    /// What the decision needs could not be had (the writer is restarting, or an owner asked
    /// for a missing cache row did not answer); the command may be retried.
    #[error("unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl CommandError {
    /// An [`Unavailable`](CommandError::Unavailable) error caused by `error`.
    pub fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        CommandError::Unavailable(Box::new(error))
    }
}
