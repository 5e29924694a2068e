//! Failures injected on purpose, for crash tests and drills. Every counter starts at zero,
//! which injects nothing; each injected failure decrements its counter.

use std::sync::atomic::{AtomicU32, Ordering};

/// Counters of failures still to inject.
#[derive(Debug, Default)]
pub struct Faults {
    /// The process aborts (no cleanup, as under SIGKILL) after JetStream acknowledged an outbox
    /// publish and before the row is deleted.
    pub relay_abort_after_publish: AtomicU32,
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
    /// A cache actor panics on every batch holding an event about this entity id (a poison
    /// event that trips a bug).
    pub cache_panic_on_id: std::sync::Mutex<Option<String>>,
    /// A consumer fails to start, as with a consumer the server refuses.
    pub consumer_start_failures: AtomicU32,
    /// A full sync waits 200 ms before asking for each of its next pages, as a large snapshot
    /// over a slow link would (so that a drill can stop the process mid-sync).
    pub resync_slow_pages: AtomicU32,
}

/// A `CARRIER_FAULTS` value that does not parse, with what is wrong in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FaultSpecError(String);

impl Faults {
    /// Parses `name=count` pairs separated by commas (the `CARRIER_FAULTS` variable), e.g.
    /// `relay_abort_after_publish=1,cache_commit_failures=3`.
    pub fn from_spec(spec: &str) -> Result<Faults, FaultSpecError> {
        let faults = Faults::default();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, count) =
                pair.split_once('=').ok_or_else(|| FaultSpecError(format!("fault {pair:?} is not name=count")))?;
            let count: u32 =
                count.trim().parse().map_err(|_| FaultSpecError(format!("fault {name}: {count:?} is not a count")))?;
            let counter = match name.trim() {
                "relay_abort_after_publish" => &faults.relay_abort_after_publish,
                "relay_crash_after_publish" => &faults.relay_crash_after_publish,
                "consumer_crash_after_commit" => &faults.consumer_crash_after_commit,
                "consumer_lost_acks" => &faults.consumer_lost_acks,
                "cache_commit_failures" => &faults.cache_commit_failures,
                "cache_panics" => &faults.cache_panics,
                "consumer_start_failures" => &faults.consumer_start_failures,
                "resync_slow_pages" => &faults.resync_slow_pages,
                other => return Err(FaultSpecError(format!("unknown fault {other:?}"))),
            };
            counter.store(count, Ordering::SeqCst);
        }
        Ok(faults)
    }

    /// Takes one injection from `counter` if any is left.
    pub fn take(counter: &AtomicU32) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}
