//! Why a system did not start: its own module, so that the modules that start contexts
//! (`context`, `instance`, `standby`) share it without importing each other.

use carrier_storage::StorageError;

use crate::bus::BusError;

/// Why the system did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// NATS was unreachable or refused a stream.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A database could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An event bus of handlers did not start.
    #[error("event bus {bus}: {reason}")]
    EventBus {
        /// The bus.
        bus: String,
        /// Why.
        reason: String,
    },
    /// An actor failed to start.
    #[error("actors failed to start: {0}")]
    Actors(String),
    /// Another instance runs the context (see `instance`).
    #[error(
        "{context} already runs in another Carrier instance ({holder}); two instances of a context would \
         split its durable consumers and each cache would miss events. Stop that instance first (the lease \
         of one that died expires {lease_seconds} s after its last renewal)"
    )]
    AlreadyRunning {
        /// The context.
        context: String,
        /// Who holds it.
        holder: String,
        /// How long a lease outlives its holder's last renewal.
        lease_seconds: u64,
    },
}
