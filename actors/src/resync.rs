//! A cache's full sync from its owner's snapshot: the fallback for when events cannot carry it.
//!
//! A context that caches an owner's entities (`.caches::<E>()`) and declares
//! [`resyncs`](crate::context::ContextDecl::resyncs) can replace them wholesale with the owner's
//! current state, read page by page from the owner's snapshot endpoint (`query.<owner>.snapshot`,
//! declared on the owner with [`snapshots`](crate::context::ContextDecl::snapshots)). It does so
//! on demand ([`ContextHandle::resync`]) and by itself whenever its consumer finds that the
//! stream no longer holds its position (the events it has not applied were dropped by the
//! stream's limits), which JetStream does not report.
//!
//! How nothing is lost or applied twice between the snapshot and the stream:
//! 1. the writer holds delivered batches (so no event is applied while the snapshot is read);
//! 2. the stream's last sequence, `through`, is read: every event up to it was committed by the
//!    owner before it was published, so the snapshot, read after, reflects it;
//! 3. the snapshot's pages are read (reads of the cache go on being served from the old rows);
//! 4. one redb transaction replaces the rows, their versions and parked events, and moves the
//!    checkpoint to `through`;
//! 5. the held batches are applied: an event the snapshot already reflects is stale by its
//!    version, any other is the next version; everything after `through` is delivered.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use carrier_messages::{snapshot_subject, SnapshotPage, SnapshotQuery};
use carrier_storage::StorageError;

use crate::bus::{Bus, BusError};

/// Why a full sync did not complete (the cache kept its old rows).
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// Another full sync of the context is running.
    #[error("a full sync is already in progress")]
    InProgress,
    /// The context declares no owner to resync from.
    #[error("{context} declares no owner snapshot to resync from")]
    NotDeclared {
        /// The context.
        context: &'static str,
    },
    /// The owner did not answer, or answered with an error or an unreadable page.
    #[error("the owner {owner} did not give its snapshot: {reason}")]
    Owner {
        /// The owner.
        owner: &'static str,
        /// Why.
        reason: String,
    },
    /// The stream could not be read.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The cache could not be written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The context's writer is not running.
    #[error("the context's writer is not running: {0}")]
    Unavailable(String),
}

/// What operators and the store nodes' sync status see of a context's full syncs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ResyncStatus {
    /// A full sync is running.
    pub in_progress: bool,
    /// Entities read from the owner so far in the running (or last) sync.
    pub done: u64,
    /// Entities the owner has in all, as its first page said.
    pub total: u64,
    /// Full syncs completed.
    pub completed: u64,
    /// Full syncs that failed.
    pub failed: u64,
    /// Why the last one started (`first start`, `forced`, `position lost`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
    /// When the last one started, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_started_unix_ms: Option<u64>,
    /// When the last one ended, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_finished_unix_ms: Option<u64>,
    /// Whether the last one succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<bool>,
    /// How long the last one took, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_duration_ms: Option<u64>,
    /// Why the last one failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The stream sequence the last successful one is as of.
    pub last_through: u64,
    /// Entities the last successful one wrote.
    pub last_count: u64,
}

/// A context's full-sync state: its status, and one sync at a time.
#[derive(Default)]
pub struct ResyncState {
    status: std::sync::Mutex<ResyncStatus>,
    pub(crate) running: tokio::sync::Mutex<()>,
}

impl ResyncState {
    /// The status now.
    pub fn status(&self) -> ResyncStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut ResyncStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// How long the owner may take to answer one snapshot page.
pub(crate) const PAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Lets the consumers go on when the sync ends, whichever way it ends.
pub(crate) struct Resume(pub(crate) Vec<Arc<crate::offsets::ConsumerControl>>);

impl Drop for Resume {
    fn drop(&mut self) {
        for control in &self.0 {
            control.set_resyncing(false);
        }
    }
}

pub(crate) async fn ask_page(
    bus: &Bus,
    owner: &'static str,
    query: &SnapshotQuery,
) -> Result<SnapshotPage<serde_json::Value>, ResyncError> {
    let failed = |reason: String| ResyncError::Owner { owner, reason };
    let body = serde_json::to_vec(query).map_err(|e| failed(e.to_string()))?;
    let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    let reply =
        bus.request(&snapshot_subject(owner), &headers, body, PAGE_TIMEOUT).await.map_err(|e| failed(e.to_string()))?;
    let page: SnapshotPage<serde_json::Value> =
        serde_json::from_slice(&reply).map_err(|e| failed(format!("an unreadable page: {e}")))?;
    if !page.ok {
        let reason = page.error.map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_else(|| "refused".into());
        return Err(failed(reason));
    }
    Ok(page)
}

pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}
