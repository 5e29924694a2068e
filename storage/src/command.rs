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
    /// The command breaks a rule that clients tell apart by its code (`version_conflict`,
    /// `insufficient_stock`, `idempotency_key_reused`, ...), with details they may act on (the
    /// entity's current version, say).
    #[error("{message}")]
    Refused {
        /// What clients match on, in snake_case.
        code: &'static str,
        /// A sentence for people.
        message: String,
        /// Facts the client may act on, as JSON (`null` when none).
        details: serde_json::Value,
    },
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
    /// A [`Refused`](CommandError::Refused) error with no details.
    pub fn refused(code: &'static str, message: impl Into<String>) -> Self {
        CommandError::Refused { code, message: message.into(), details: serde_json::Value::Null }
    }

    /// The code a reply names this error by: `not_found`, `already_exists`, `rejected`,
    /// `invalid`, `unavailable` (the only one worth retrying unchanged), or a
    /// [`Refused`](CommandError::Refused) error's own code.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::NotFound { .. } => "not_found",
            CommandError::AlreadyExists { .. } => "already_exists",
            CommandError::Rejected(_) => "rejected",
            CommandError::Refused { code, .. } => code,
            CommandError::Invalid(_) => "invalid",
            CommandError::Storage(_) | CommandError::Unavailable(_) => "unavailable",
        }
    }

    /// An [`Unavailable`](CommandError::Unavailable) error caused by `error`.
    pub fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        CommandError::Unavailable(Box::new(error))
    }
}
