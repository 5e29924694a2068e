//! What a consumer counts, and a position its stream no longer holds.

use std::sync::atomic::{AtomicU64, Ordering};

use carrier_storage::BatchOutcome;

use super::*;

/// Counters a consumer keeps; shared with whoever reports on it.
#[derive(Default, Debug)]
pub struct ConsumerStats {
    /// Messages delivered to it.
    pub delivered: AtomicU64,
    /// Events whose effect was applied (parked ones once their gap closed).
    pub applied: AtomicU64,
    /// Events skipped because their id was in the inbox.
    pub duplicates: AtomicU64,
    /// Events skipped because their entity was already newer.
    pub stale: AtomicU64,
    /// Events parked behind a missing version.
    pub parked: AtomicU64,
    /// Messages sent to the dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Committed batches.
    pub batches: AtomicU64,
    /// Commits that failed and were retried.
    pub commit_failures: AtomicU64,
    /// Tries of a batch held back because a reaction in it would emit while the context is
    /// fenced or stands by (it waits for the holder's effect to be followed, or for the lease).
    pub held_for_holder: AtomicU64,
    /// Failed commits since the last one that succeeded (0 when storage is healthy).
    pub failing_commits: AtomicU64,
    /// The last stream sequence acknowledged.
    pub acked_stream_seq: AtomicU64,
    /// Woken (every waiter) each time `acked_stream_seq` moves, so that a reader can wait for
    /// a position without polling: create the `notified()` future, enable it, then read.
    pub acked: tokio::sync::Notify,
    /// How often the stream no longer held this consumer's position when it was (re)made.
    pub positions_lost: AtomicU64,
    /// The last time it did: the first sequence asked for and the first the stream retained.
    pub position_lost: std::sync::Mutex<Option<PositionLost>>,
}

/// The stream had dropped events (by its limits or a purge) before a consumer read them:
/// JetStream then starts it at its first retained sequence without a word, so Carrier compares
/// the two itself whenever it makes a consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PositionLost {
    /// The first sequence the consumer was asked to start at (its checkpoint + 1).
    pub requested: u64,
    /// The first sequence the stream still held.
    pub first_retained: u64,
    /// When it was found, Unix ms.
    pub at_unix_ms: u64,
}

impl ConsumerStats {
    pub(crate) fn record(&self, outcome: &BatchOutcome) {
        use carrier_storage::Disposition as D;
        let mut counts = [0u64; 4];
        for d in &outcome.dispositions {
            let slot = match d {
                // Its effect is in the file, followed from the context's own stream.
                D::Applied | D::Followed => 0,
                D::Duplicate => 1,
                D::Stale { .. } => 2,
                D::Parked { .. } => 3,
            };
            counts[slot] += 1;
        }
        self.applied.fetch_add(counts[0] + outcome.unparked, Ordering::Relaxed);
        self.duplicates.fetch_add(counts[1], Ordering::Relaxed);
        self.stale.fetch_add(counts[2], Ordering::Relaxed);
        self.parked.fetch_add(counts[3], Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records, logs and reports a consumer made where its stream no longer holds its position.
pub(crate) fn noticed_position<E: 'static>(
    durable: &str,
    consumer: &DurableConsumer,
    stats: &ConsumerStats,
    control: &crate::offsets::ConsumerControl,
    writer: &dyn WriterPort<E>,
) {
    let Some((requested, first_retained)) = consumer.trimmed() else { return };
    let at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let lost = PositionLost { requested, first_retained, at_unix_ms };
    stats.positions_lost.fetch_add(1, Ordering::Relaxed);
    *stats.position_lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(lost);
    match writer.resyncs() {
        true => {
            tracing::warn!(consumer = %durable, requested, first_retained,
                "the stream no longer holds this consumer's position: a full sync from the owner follows");
            // Nothing is applied past the hole until the sync has filled it.
            control.set_position_lost(true);
            writer.position_lost(lost);
        }
        false => tracing::error!(consumer = %durable, requested, first_retained,
            "the stream no longer holds this consumer's position: events {requested}..{} were dropped before this \
             cache applied them; rebuild it or declare it resyncs from its owner", first_retained - 1),
    }
}
