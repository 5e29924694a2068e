//! The batch that killed the writer, remembered across restarts: [`PoisonGuard`].

/// By default, how often one event, applied on its own, may kill the cache actor before it is
/// dead-lettered as `apply_failed`.
pub const SOLO_FAILURES_TO_DEAD_LETTER: u32 = 2;

/// Remembers, across restarts of a consumer, the batch that was in the cache actor's hands when
/// it died, so that one poison event (one that trips a bug) cannot crash-loop the context.
///
/// After such a crash the consumer applies that stretch of the stream one event at a time; an
/// event that kills the cache on its own [`SOLO_FAILURES_TO_DEAD_LETTER`] times goes to the
/// dead-letter stream and the events behind it flow on.
#[derive(Default, Debug)]
pub struct PoisonGuard {
    inner: std::sync::Mutex<GuardInner>,
}

#[derive(Default, Debug)]
pub(crate) struct GuardInner {
    in_flight: Option<(u64, u64)>,
    strikes: Vec<((u64, u64), u32)>,
}

impl PoisonGuard {
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut GuardInner) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut inner)
    }

    /// A new incarnation starts: whatever was in flight killed the last one.
    pub(crate) fn on_start(&self) {
        self.with(|g| {
            if let Some(range) = g.in_flight.take() {
                match g.strikes.iter_mut().find(|(r, _)| *r == range) {
                    Some((_, n)) => *n += 1,
                    None => g.strikes.push((range, 1)),
                }
            }
        });
    }

    pub(crate) fn begin(&self, range: (u64, u64)) {
        self.with(|g| g.in_flight = Some(range));
    }

    pub(crate) fn end(&self) {
        self.with(|g| g.in_flight = None);
    }

    /// Whether a batch over these stream sequences overlaps one that killed the cache.
    pub(crate) fn suspect(&self, first: u64, last: u64) -> bool {
        self.with(|g| g.strikes.iter().any(|((a, b), _)| *a <= last && first <= *b))
    }

    /// How often the event at `seq`, alone, killed the cache.
    pub(crate) fn solo_failures(&self, seq: u64) -> u32 {
        self.with(|g| g.strikes.iter().find(|(r, _)| *r == (seq, seq)).map(|(_, n)| *n).unwrap_or(0))
    }

    /// Everything through `seq` is settled.
    pub(crate) fn forget_through(&self, seq: u64) {
        self.with(|g| g.strikes.retain(|((_, last), _)| *last > seq));
    }
}
