//! Failures injected on purpose, for crash tests and drills. Every counter starts at zero,
//! which injects nothing; each injected failure decrements its counter.

use std::sync::atomic::{AtomicU32, Ordering};

/// Counters of failures still to inject.
#[derive(Debug, Default)]
pub struct Faults {
    /// The outbox relay fails after JetStream acknowledged a publish and before the row is
    /// deleted, as a process crash at that moment would.
    pub relay_crash_after_publish: AtomicU32,
    /// A consumer fails after its batch committed and before it acknowledged it, as a process
    /// crash would.
    pub consumer_crash_after_commit: AtomicU32,
    /// A consumer does not send its next acks, as if they were lost on the way; the server
    /// redelivers those messages after the ack wait.
    pub consumer_lost_acks: AtomicU32,
    /// A cache actor reports its next commits as failed (storage unavailable) without writing.
    pub cache_commit_failures: AtomicU32,
    /// A cache actor panics while applying its next batches.
    pub cache_panics: AtomicU32,
}

impl Faults {
    /// Takes one injection from `counter` if any is left.
    pub fn take(counter: &AtomicU32) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}
