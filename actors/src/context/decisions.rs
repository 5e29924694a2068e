//! Commands waiting for the writer's next group commit.

use std::sync::Arc;
use std::time::Duration;

use carrier_storage::{CommandError, ContextKind, Decided, Decision, IdempotencyKey};

/// Commands waiting for the writer's next group commit, each with where its answer goes.
///
/// Callers push here and wake the writer only when the queue was empty; the writer takes the
/// whole queue on its turn and decides it in one transaction ([`FileWriter::decide_all`]). While
/// that commit is on disk the next commands gather, so the group grows with the load: one fsync
/// per group, not per command, and no waiting at all when commands come one at a time.
pub struct DecisionQueue<K: ContextKind> {
    queued: std::sync::Mutex<Vec<QueuedDecision<K>>>,
    /// Numbers queued decisions, so that a caller can withdraw its own.
    next_id: std::sync::atomic::AtomicU64,
    /// Idempotency keys of queued decisions and of those being decided, until answered.
    in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// A queued command: its decision, its idempotency key (held in flight until it is answered or
/// dropped) and where its answer goes.
pub(crate) struct QueuedDecision<K: ContextKind> {
    pub(crate) id: u64,
    pub(crate) decision: Decision<K>,
    pub(crate) key: Option<(IdempotencyKey, KeyInFlight)>,
    pub(crate) reply: tokio::sync::oneshot::Sender<Result<Decided<<K as ContextKind>::Event>, CommandError>>,
}

/// Holds an idempotency key in flight; lets it go when dropped (answered, or its writer gone).
pub(crate) struct KeyInFlight {
    key: String,
    in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Drop for KeyInFlight {
    fn drop(&mut self) {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// How long a queued command waits for its writer to take it before it is withdrawn and
/// answered unavailable (its writer was given up, or keeps failing to start).
pub(crate) const DECIDE_WAIT: Duration = Duration::from_secs(30);

/// Most commands decided in one transaction (the rest go in the next).
pub(crate) const DECISIONS_PER_COMMIT: usize = 1024;

impl<K: ContextKind> Default for DecisionQueue<K> {
    fn default() -> Self {
        DecisionQueue {
            queued: std::sync::Mutex::new(Vec::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
            in_flight: Arc::default(),
        }
    }
}

impl<K: ContextKind> DecisionQueue<K> {
    /// Holds `key` in flight, or refuses it when a command with it is queued or being decided
    /// (`idempotency_key_in_flight`: its answer is not known yet, so neither replaying it nor
    /// deciding again would be right; the client retries later and gets the first's answer).
    pub(crate) fn hold(&self, key: &IdempotencyKey) -> Result<KeyInFlight, CommandError> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if !in_flight.insert(key.key().to_string()) {
            return Err(CommandError::refused(
                "idempotency_key_in_flight",
                format!("a command with idempotency key {:?} is being decided; retry shortly", key.key()),
            ));
        }
        Ok(KeyInFlight { key: key.key().to_string(), in_flight: self.in_flight.clone() })
    }

    /// A number for a decision about to be queued.
    pub(crate) fn id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes decision `id` back if the writer has not taken it yet: then it is certain it will
    /// never be decided. `true` when it was still queued.
    pub(crate) fn withdraw(&self, id: u64) -> bool {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        let before = queued.len();
        queued.retain(|d| d.id != id);
        queued.len() != before
    }

    /// Queues a decision; `true` when the queue was empty (the caller must wake the writer).
    pub(crate) fn push(&self, decision: QueuedDecision<K>) -> bool {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        queued.push(decision);
        queued.len() == 1
    }

    /// Takes up to [`DECISIONS_PER_COMMIT`] queued decisions, oldest first; `true` when more remain.
    pub(crate) fn take(&self) -> (Vec<QueuedDecision<K>>, bool) {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        if queued.len() <= DECISIONS_PER_COMMIT {
            (std::mem::take(&mut *queued), false)
        } else {
            let rest = queued.split_off(DECISIONS_PER_COMMIT);
            (std::mem::replace(&mut *queued, rest), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A neutral context for the queue's tests: it publishes nothing and keeps no tables.
    struct Neutral;

    impl ContextKind for Neutral {
        const NAME: &'static str = "neutral";
        type Event = carrier_messages::NoEvents;
    }

    /// A key is held while its command is queued or decided: a second send with it is refused
    /// as in flight, and the key is let go when its first command is answered or dropped.
    #[test]
    fn a_key_is_in_flight_until_its_command_is_answered_or_dropped() {
        let queue = DecisionQueue::<Neutral>::default();
        let key = IdempotencyKey::new("order-1", b"{}".to_vec()).expect("key");
        let held = queue.hold(&key).expect("the first send holds it");
        let refused = queue.hold(&key).map(|_| ()).expect_err("a second send while the first is in flight");
        assert!(matches!(refused, CommandError::Refused { code: "idempotency_key_in_flight", .. }), "{refused:?}");
        let other = IdempotencyKey::new("order-2", b"{}".to_vec()).expect("key");
        let _other = queue.hold(&other).expect("another key is free");
        drop(held);
        assert!(queue.hold(&key).is_ok(), "let go once the first was answered");
    }

    /// A queued decision can be withdrawn until the writer takes it, and only then.
    #[test]
    fn a_queued_decision_is_withdrawn_only_while_still_queued() {
        let queue = DecisionQueue::<Neutral>::default();
        let decision = |id| {
            let (reply, _rx) = tokio::sync::oneshot::channel();
            let decide: Decision<Neutral> = Box::new(|_, _| Ok(()));
            QueuedDecision { id, decision: decide, key: None, reply }
        };
        let (first, second) = (queue.id(), queue.id());
        assert!(queue.push(decision(first)), "the first wakes the writer");
        assert!(!queue.push(decision(second)));
        assert!(queue.withdraw(first));
        assert!(!queue.withdraw(first), "gone already");
        let (taken, more) = queue.take();
        assert_eq!((taken.len(), more), (1, false));
        assert!(!queue.withdraw(second), "taken by the writer: it will be decided");
    }
}
