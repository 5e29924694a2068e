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
//!    checkpoint to at least `through`;
//! 5. the held batches are applied: an event the snapshot already reflects is stale by its
//!    version, any other is the next version; everything after `through` is delivered.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use carrier_messages::request::{snapshot_subject, SnapshotPage, SnapshotQuery, MAX_SNAPSHOT_PAGE};
use carrier_messages::DomainEvent;
use carrier_storage::{ContextKind, Resyncs, StorageError};

use crate::bus::{Bus, BusError};
use crate::cache::{ContextHandle, LookupError};

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

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
    #[error(transparent)]
    Unavailable(#[from] LookupError),
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
    running: tokio::sync::Mutex<()>,
}

impl ResyncState {
    /// The status now.
    pub fn status(&self) -> ResyncStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, change: impl FnOnce(&mut ResyncStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// One owner a context resyncs from: what a full sync runs for it.
pub(crate) struct ResyncSource<K: ContextKind> {
    /// Reads the owner's snapshot and replaces the cached entities; returns how many it wrote.
    pub run: Arc<dyn Fn(ContextHandle<K>, Arc<ResyncState>) -> BoxFuture<Result<u64, ResyncError>> + Send + Sync>,
}

impl<K: ContextKind> Clone for ResyncSource<K> {
    fn clone(&self) -> Self {
        ResyncSource { run: self.run.clone() }
    }
}

/// How long the owner may take to answer one snapshot page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The source for `E`'s owner: its aggregates' snapshots, into the consumer `durable`'s file.
pub(crate) fn source<K, E>(
    bus: Bus,
    durable: String,
    aggregates: Vec<&'static str>,
    faults: Arc<crate::faults::Faults>,
) -> ResyncSource<K>
where
    K: Resyncs<E>,
    E: DomainEvent,
{
    let run = move |handle: ContextHandle<K>, state: Arc<ResyncState>| {
        let (bus, durable, aggregates, faults) = (bus.clone(), durable.clone(), aggregates.clone(), faults.clone());
        Box::pin(async move {
            let owner = E::CONTEXT;
            // The consumers of the owner's stream let go of their subscriptions, so that they
            // start again from the checkpoint the sync leaves (not replaying, stale, what the
            // snapshot already holds); the writer holds whatever batch was already on its way.
            let controls: Vec<Arc<crate::offsets::ConsumerControl>> =
                handle.probes.iter().filter(|p| p.source == owner).map(|p| p.control.clone()).collect();
            let _resuming = Resume(controls.clone());
            for control in &controls {
                control.set_resyncing(true);
            }
            for control in &controls {
                control.wait_released(Duration::from_secs(5)).await;
            }
            let held = handle.hold_batches().await?;
            // Without the stream's position (JetStream out of reach: a fallback sync) the
            // snapshot is merged where newer, and the checkpoint stays.
            let through = match bus.last_sequence(E::STREAM).await {
                Ok(seq) => Some(seq),
                Err(error) => {
                    tracing::warn!(context = K::NAME, %error, "the stream cannot be read: merging the owner's snapshot where it is newer");
                    None
                }
            };
            let mut written = 0;
            for aggregate in aggregates {
                let mut entities: Vec<(String, u64, Option<K::State>)> = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let query = SnapshotQuery {
                        aggregate: aggregate.to_string(),
                        after: after.take(),
                        limit: MAX_SNAPSHOT_PAGE,
                    };
                    if crate::faults::Faults::take(&faults.resync_slow_pages) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let page = ask_page(&bus, owner, &query).await?;
                    for entity in page.entities {
                        let state = entity.state.map(serde_json::from_value::<K::State>).transpose().map_err(|e| {
                            ResyncError::Owner { owner, reason: format!("{aggregate} {:?}: {e}", entity.id) }
                        })?;
                        entities.push((entity.id, entity.version, state));
                    }
                    let done = entities.len() as u64;
                    state.update(|s| {
                        s.done = done;
                        s.total = page.total.max(done);
                    });
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                let durable = durable.clone();
                written += handle.write(move |w| w.resync::<E>(aggregate, &durable, through, entities)).await??;
            }
            drop(held);
            if let Some(through) = through {
                state.update(|s| s.last_through = through);
                // The hole a lost position left is filled: its consumers may go on, from `through`.
                for probe in handle.probes.iter().filter(|p| p.source == owner) {
                    probe.stats.acked_stream_seq.fetch_max(through, std::sync::atomic::Ordering::Relaxed);
                    probe.stats.acked.notify_waiters();
                    probe.control.set_position_lost(false);
                }
            }
            Ok(written)
        }) as BoxFuture<_>
    };
    ResyncSource { run: Arc::new(run) }
}

/// Lets the consumers go on when the sync ends, whichever way it ends.
struct Resume(Vec<Arc<crate::offsets::ConsumerControl>>);

impl Drop for Resume {
    fn drop(&mut self) {
        for control in &self.0 {
            control.set_resyncing(false);
        }
    }
}

async fn ask_page(
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

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

impl<K: ContextKind> ContextHandle<K> {
    /// Replaces the cached entities of every owner this context [resyncs](crate::context::ContextDecl::resyncs)
    /// from with the owner's snapshot (see the module's steps); `reason` is kept in the status.
    /// Returns how many entities were written. One sync runs at a time: another while it runs is
    /// refused ([`ResyncError::InProgress`]). On failure the cache keeps its old rows, its
    /// consumers go on, and the status says why.
    pub async fn resync(&self, reason: &str) -> Result<u64, ResyncError> {
        if self.resync_sources.is_empty() {
            return Err(ResyncError::NotDeclared { context: K::NAME });
        }
        let state = self.resync.clone();
        let Ok(_running) = state.running.try_lock() else { return Err(ResyncError::InProgress) };
        let started = Instant::now();
        state.update(|s| {
            s.in_progress = true;
            s.done = 0;
            s.total = 0;
            s.last_reason = Some(reason.to_string());
            s.last_started_unix_ms = Some(unix_ms(SystemTime::now()));
        });
        tracing::info!(context = K::NAME, reason, "full sync from the owner's snapshot");
        let mut result = Ok(0);
        for source in &self.resync_sources {
            match (source.run)(self.clone(), state.clone()).await {
                Ok(n) => result = result.map(|total| total + n),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let elapsed = started.elapsed();
        state.update(|s| {
            s.in_progress = false;
            s.last_finished_unix_ms = Some(unix_ms(SystemTime::now()));
            s.last_duration_ms = Some(elapsed.as_millis() as u64);
            s.last_success = Some(result.is_ok());
            match &result {
                Ok(n) => {
                    s.completed += 1;
                    s.last_count = *n;
                    s.last_error = None;
                }
                Err(e) => {
                    s.failed += 1;
                    s.last_error = Some(e.to_string());
                }
            }
        });
        match &result {
            Ok(n) => tracing::info!(
                context = K::NAME,
                entities = n,
                duration_ms = elapsed.as_millis() as u64,
                "full sync done"
            ),
            Err(error) => tracing::warn!(context = K::NAME, %error, "full sync failed; the cache keeps its rows"),
        }
        result
    }

    /// The state of its full syncs.
    pub fn resync_status(&self) -> ResyncStatus {
        self.resync.status()
    }
}
