//! Rebuilding a context's caches from the owners' streams (see `crate::rebuild`).

use std::sync::Arc;

use carrier_storage::{ContextKind, FileWriter};

use crate::bus::Bus;
use crate::rebuild::{fresh_path, lock, Progress, RebuildError, SourceProgress, TableChange, SWAP_ATTEMPTS};
use carrier_storage::{CacheSet, SwapCursor, SwapStep, SWAP_ROWS};

use super::*;

/// Rebuilding a context's caches (see `crate::rebuild`).
impl<K: ContextKind> ContextHandle<K> {
    /// Whether this context has caches to rebuild.
    pub fn has_caches(&self) -> bool {
        !self.cache_sources.is_empty()
    }

    /// Rebuilds every cache of the context from the owners' streams into a fresh file beside the
    /// live one, then swaps them in on the writer. `progress` is updated as it goes.
    pub async fn rebuild_caches(&self, bus: &Bus, progress: Progress) -> Result<(), RebuildError> {
        let started = std::time::Instant::now();
        let result = self.rebuild_inner(bus, &progress).await;
        let mut p = lock(&progress);
        p.seconds = Some(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => p.state = "done".into(),
            Err(e) => {
                p.state = "failed".into();
                p.error = Some(e.to_string());
            }
        }
        result
    }

    async fn rebuild_inner(&self, bus: &Bus, progress: &Progress) -> Result<(), RebuildError> {
        if self.cache_sources.is_empty() {
            return Err(RebuildError::NoCaches { context: K::NAME });
        }
        {
            let mut p = lock(progress);
            p.context = K::NAME.to_string();
            p.state = "replaying".into();
            p.sources = self
                .cache_sources
                .iter()
                .map(|s| SourceProgress {
                    stream: String::new(),
                    consumer: s.set.consumer.clone(),
                    ..Default::default()
                })
                .collect();
        }
        let path = fresh_path(self.db.path());
        let _ = std::fs::remove_file(&path);
        let fresh = {
            // A quarter of the live file's page cache: the replay writes mostly new pages, and
            // both files' caches count towards the process's memory while it runs.
            let (path, cache_bytes) = (path.clone(), (self.db.cache_bytes() / 4).max(4 << 20));
            tokio::task::spawn_blocking(move || FileWriter::<K>::open_scratch(&path, cache_bytes)).await?
        }
        .map_err(|source| RebuildError::Create { path: path.clone(), source })?;
        let fresh = Arc::new(fresh);
        // The replay's batches on a connection of their own, not in front of commands.
        let replay_bus = bus.another_connection("rebuild").await?;
        let outcome = self.replay_and_swap(&replay_bus, progress, &fresh).await;
        // Closing the scratch file flushes and syncs it (hundreds of MB after a large replay):
        // off the runtime's threads, where it would hold up every task scheduled behind it.
        tokio::task::spawn_blocking(move || {
            drop(fresh);
            let _ = std::fs::remove_file(&path);
        })
        .await?;
        outcome
    }

    async fn replay_and_swap(
        &self,
        bus: &Bus,
        progress: &Progress,
        fresh: &Arc<FileWriter<K>>,
    ) -> Result<(), RebuildError> {
        // The bulk of the replay runs while the live caches keep applying events.
        for (index, source) in self.cache_sources.iter().enumerate() {
            (source.replay)(bus.clone(), fresh.clone(), progress.clone(), index, None).await?;
        }
        // Then the live batches wait (unacknowledged) while the fresh file catches up with the
        // few events they applied meanwhile, so the swap cannot find the live caches ahead.
        let _held = self.hold_batches().await.map_err(|_| RebuildError::WriterGone)?;
        for (index, source) in self.cache_sources.iter().enumerate() {
            (source.replay)(bus.clone(), fresh.clone(), progress.clone(), index, None).await?;
        }
        // The swap goes a range of ids at a time, each its own short transaction on the writer,
        // so that commands queued meanwhile wait for one range, never for the whole table.
        let sets: Vec<CacheSet> = self.cache_sources.iter().map(|s| s.set.clone()).collect();
        let mut cursor = SwapCursor::default();
        let mut behind_count = 0;
        lock(progress).state = "swapping".into();
        loop {
            let (file, swap_sets) = (fresh.clone(), sets.clone());
            let (step, moved) = self
                .write(move |db| {
                    let step = db.swap_caches_step(&file, &swap_sets, &mut cursor, SWAP_ROWS);
                    (step, cursor)
                })
                .await
                .map_err(|_| RebuildError::WriterGone)?;
            cursor = moved;
            match step? {
                Ok(SwapStep::More(_)) => {}
                Ok(SwapStep::Done(tables)) => {
                    lock(progress).tables = tables
                        .into_iter()
                        .map(|t| TableChange { table: t.table.to_string(), before: t.before, after: t.after })
                        .collect();
                    tracing::info!(context = K::NAME, "caches rebuilt from the streams and swapped in");
                    return Ok(());
                }
                Err(behind) => {
                    // Only a batch already being applied when the hold began can get here: catch
                    // up past it, to the stream's end, and go on where the swap was.
                    behind_count += 1;
                    if behind_count > SWAP_ATTEMPTS {
                        break;
                    }
                    tracing::debug!(?behind, "rebuilt caches behind the live ones; catching up");
                    lock(progress).state = "replaying".into();
                    let index = sets.iter().position(|s| s.consumer == behind.consumer).unwrap_or(0);
                    let source = &self.cache_sources[index];
                    (source.replay)(bus.clone(), fresh.clone(), progress.clone(), index, None).await?;
                    lock(progress).state = "swapping".into();
                }
            }
        }
        Err(RebuildError::KeptMoving { attempts: SWAP_ATTEMPTS })
    }
}
