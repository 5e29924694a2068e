//! A context's side of a full sync from an owner's snapshot (see `crate::resync` for the steps
//! and the status).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use carrier_messages::DomainEvent;
use carrier_storage::ContextKind;

use crate::bus::Bus;
use crate::resync::{ResyncError, ResyncState, ResyncStatus};
use carrier_messages::{SnapshotQuery, MAX_SNAPSHOT_PAGE};

use super::*;

// ---- Full sync from an owner's snapshot (see `crate::resync` for the steps and the status) ----

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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

/// The source for `E`'s owner: its aggregates' snapshots, into the consumer `durable`'s file.
pub(crate) fn owner_snapshot_source<K, E>(
    bus: Bus,
    durable: String,
    aggregates: Vec<&'static str>,
    faults: Arc<crate::faults::Faults>,
) -> ResyncSource<K>
where
    K: carrier_storage::Resyncs<E>,
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
            let _resuming = crate::resync::Resume(controls.clone());
            for control in &controls {
                control.set_resyncing(true);
            }
            for control in &controls {
                control.wait_released(Duration::from_secs(5)).await;
            }
            let held = handle.hold_batches().await.map_err(|e| ResyncError::Unavailable(e.to_string()))?;
            // Without the stream's position (JetStream out of reach: a fallback sync) the
            // snapshot is merged where newer, and the checkpoint stays.
            let through = match bus.last_sequence(E::STREAM).await {
                Ok(seq) => Some(seq),
                Err(error) => {
                    tracing::warn!(context = K::NAME, %error, "the stream cannot be read: merging the owner's snapshot where it is newer");
                    None
                }
            };
            // Every kind read first, then written in one transaction: a page that fails leaves
            // the cache as it was.
            let mut snapshot = Vec::with_capacity(aggregates.len());
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
                    let page = crate::resync::ask_page(&bus, owner, &query).await?;
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
                snapshot.push((aggregate, entities));
            }
            let written = handle
                .write(move |w| w.resync::<E>(&durable, through, snapshot))
                .await
                .map_err(|e| ResyncError::Unavailable(e.to_string()))??;
            drop(held);
            if let Some(through) = through {
                state.update(|s| s.last_through = through);
                // The hole a lost position left is filled: its consumers may go on, from `through`.
                for probe in handle.probes.iter().filter(|p| p.source == owner) {
                    probe.stats.acked_stream_seq.store(through, std::sync::atomic::Ordering::Relaxed);
                    probe.stats.acked.notify_waiters();
                    probe.control.set_position_lost(false);
                }
            }
            Ok(written)
        }) as BoxFuture<_>
    };
    ResyncSource { run: Arc::new(run) }
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
        let started = std::time::Instant::now();
        state.update(|s| {
            s.in_progress = true;
            s.done = 0;
            s.total = 0;
            s.last_reason = Some(reason.to_string());
            s.last_started_unix_ms = Some(crate::resync::unix_ms(std::time::SystemTime::now()));
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
            s.last_finished_unix_ms = Some(crate::resync::unix_ms(std::time::SystemTime::now()));
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
