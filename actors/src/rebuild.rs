//! Rebuilding a running context's caches from the owners' streams (`carrier rebuild`).
//!
//! The streams are replayed into a fresh file beside the live one by an ephemeral consumer,
//! while the live file, its consumers and its servers go on as before. Then the live batches are
//! held, the replay catches up, and the context's writer swaps the cache tables in a range of ids
//! at a time (each range one short transaction, so commands wait for one range at most), each
//! only once the fresh file has applied at least as far as the live one in every stream (if not,
//! the replay catches up and the swap goes on where it was). An id's row and version always move
//! together. See [`carrier_storage::rebuild`] for why only caches are rebuilt.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use carrier_messages::DomainEvent;
use carrier_storage::CacheSet;
use carrier_storage::Inbound;
use carrier_storage::{ContextDb, FileWriter, Reacts, StorageError};

use crate::bus::Bus;

/// How many times the swap is retried after catching up with live consumers that moved on.
pub(crate) const SWAP_ATTEMPTS: usize = 20;

/// One stream being replayed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceProgress {
    /// The stream.
    pub stream: String,
    /// The durable consumer whose position the rebuilt cache takes over.
    pub consumer: String,
    /// The last stream sequence applied to the fresh file.
    pub applied_through: u64,
    /// The stream's last sequence when the replay started (or the live position to catch up to).
    pub target: u64,
}

/// A table's rows before and after the swap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableChange {
    /// The table.
    pub table: String,
    /// Rows before.
    pub before: u64,
    /// Rows after.
    pub after: u64,
}

/// Where a rebuild is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RebuildProgress {
    /// The context.
    pub context: String,
    /// `replaying`, `swapping`, `done` or `failed`.
    pub state: String,
    /// Each stream replayed.
    pub sources: Vec<SourceProgress>,
    /// Events applied to the fresh file.
    pub events: u64,
    /// Events to replay in all (grows if the replay has to catch up).
    pub total: u64,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// How long it took, once finished.
    pub seconds: Option<f64>,
    /// The tables swapped, once done.
    pub tables: Vec<TableChange>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Why a rebuild failed. The live caches are untouched by a failed rebuild: the swap is the
/// only write to them, and it is one transaction.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The context keeps no caches of other contexts' data.
    #[error("{context} keeps no caches of other contexts' data")]
    NoCaches {
        /// The context.
        context: &'static str,
    },
    /// The fresh file could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Create {
        /// The fresh file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: StorageError,
    },
    /// Reading the streams failed.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// Writing the fresh file, or the swap, failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The context's writer is not running.
    #[error("the context's writer is not running")]
    WriterGone,
    /// A blocking task failed.
    #[error("a storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The thread decoding and applying replayed batches stopped.
    #[error("the rebuild's replay thread stopped")]
    ThreadGone,
    /// The live consumers kept applying events past the fresh file.
    #[error("the live consumers kept moving; no swap after {attempts} attempts")]
    KeptMoving {
        /// Swaps tried.
        attempts: usize,
    },
}

/// Shared progress of one rebuild.
pub type Progress = Arc<Mutex<RebuildProgress>>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Replays one owner's stream into a fresh file of kind `K`, from the fresh file's checkpoint up
/// to `through` (the stream's end when `None`).
pub(crate) type ReplaySource<K> = Arc<
    dyn Fn(Bus, Arc<FileWriter<K>>, Progress, usize, Option<u64>) -> BoxFuture<Result<(), RebuildError>> + Send + Sync,
>;

/// A cache of a context and how to refill it.
pub(crate) struct CacheSource<K> {
    pub set: CacheSet,
    pub replay: ReplaySource<K>,
}

impl<K> Clone for CacheSource<K> {
    fn clone(&self) -> Self {
        CacheSource { set: self.set.clone(), replay: self.replay.clone() }
    }
}

/// The replay of `E`'s stream for a context of kind `K`.
pub(crate) fn replay_source<K: Reacts<E>, E: DomainEvent>() -> ReplaySource<K> {
    Arc::new(|bus, fresh, progress, index, through| Box::pin(replay::<K, E>(bus, fresh, progress, index, through)))
}

async fn replay<K: Reacts<E>, E: DomainEvent>(
    bus: Bus,
    fresh: Arc<FileWriter<K>>,
    progress: Progress,
    index: usize,
    through: Option<u64>,
) -> Result<(), RebuildError> {
    let consumer = lock(&progress).sources[index].consumer.clone();
    let checkpoint = {
        let (fresh, consumer) = (fresh.clone(), consumer.clone());
        tokio::task::spawn_blocking(move || fresh.checkpoint(&consumer)).await?
    }?;
    let target = match through {
        Some(target) => target,
        None => bus.last_sequence(E::STREAM).await?,
    };
    {
        let mut p = lock(&progress);
        p.total += target.saturating_sub(checkpoint);
        p.sources[index].stream = E::STREAM.to_string();
        p.sources[index].target = target;
        p.sources[index].applied_through = checkpoint;
    }
    if checkpoint >= target {
        return Ok(());
    }
    let mut stream = bus.replay(E::STREAM, E::STREAM_SUBJECTS, checkpoint + 1, REPLAY_BATCH).await?;
    // One batch commits on a blocking thread while the next is pulled and decoded.
    let mut applying: Option<Applying> = None;
    loop {
        let deliveries = stream.next_batch(Duration::from_secs(1)).await?;
        let Some(last) = deliveries.last().map(|d| d.stream_seq) else {
            if let Some(previous) = applying.take() {
                if previous.finish(&progress, index).await? >= target {
                    return Ok(());
                }
            }
            // Nothing more is coming: the target was deleted from the stream, say.
            let (pending, _, _) = stream.lag().await?;
            if pending == 0 {
                return Ok(());
            }
            continue;
        };
        let wanted: Vec<_> = deliveries.into_iter().filter(|d| d.stream_seq <= target).collect();
        let applied_through = wanted.last().map(|d| d.stream_seq).unwrap_or(last.min(target));
        let count = wanted.len() as u64;
        if let Some(previous) = applying.take() {
            previous.finish(&progress, index).await?;
        }
        let (file, name) = (fresh.clone(), consumer.clone());
        let task = in_background(move || {
            let batch: Vec<Inbound<E>> = crate::consumer::decode_replayed(&wanted);
            file.apply(&name, &batch, applied_through).map(|_| ())
        });
        let current = Applying { task, applied_through, count };
        if applied_through >= target {
            current.finish(&progress, index).await?;
            return Ok(());
        }
        applying = Some(current);
    }
}

/// Events replayed per transaction of the fresh file.
const REPLAY_BATCH: usize = 2048;

/// A replayed batch being committed.
struct Applying {
    task: tokio::sync::oneshot::Receiver<Result<(), StorageError>>,
    applied_through: u64,
    count: u64,
}

impl Applying {
    /// Waits for the commit and counts it: how far the fresh file has applied.
    async fn finish(self, progress: &Progress, index: usize) -> Result<u64, RebuildError> {
        self.task.await.map_err(|_| RebuildError::ThreadGone)??;
        let mut p = lock(progress);
        p.events += self.count;
        p.sources[index].applied_through = self.applied_through;
        Ok(self.applied_through)
    }
}

/// Runs `work` (decoding and applying one replayed batch) on a thread of its own at the lowest
/// CPU priority, so that on a machine with few cores the replay takes what the live path
/// (consumers, commands, reads of the same context) leaves, instead of its share: on 2 cores,
/// `carrier bench --scale` measured the 99th percentile of commands during rebuilds at 47 ms
/// before and 30 ms after. A rebuild on an idle machine is as fast as before.
fn in_background<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> tokio::sync::oneshot::Receiver<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("carrier-rebuild".into()).spawn(move || {
        lower_this_threads_priority();
        let _ = done.send(work());
    });
    // If no thread could be started, the dropped sender reports it as `ThreadGone`.
    drop(spawned);
    result
}

/// Nice 19 for the calling thread only (on Linux, a thread's nice value is its own).
#[allow(unsafe_code)]
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take and return plain integers; they change only the
        // scheduling priority of the calling thread. A failure leaves the priority as it was.
        unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        }
    }
}

/// `baskets.redb` → `baskets.rebuild.redb`.
pub(crate) fn fresh_path(live: &std::path::Path) -> std::path::PathBuf {
    let stem = live.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "context".into());
    live.with_file_name(format!("{stem}.rebuild.redb"))
}

pub(crate) fn lock(progress: &Progress) -> std::sync::MutexGuard<'_, RebuildProgress> {
    progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
