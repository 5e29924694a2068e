//! Operator control of a consumer's position: pause, resume, seek and skip.
//!
//! A consumer's position is its checkpoint in the context's redb file (the durable on the server
//! is recreated from it, see [`crate::bus::Bus::durable`]), so moving it is a write, and only
//! the cache actor writes the file. An operator's request therefore goes to the consumer actor
//! through its [`ConsumerControl`], which outlives the actor's restarts; the actor takes it
//! between batches (never with a batch in hand), has the cache actor set the checkpoint in one
//! transaction, and recreates the durable at the new position. A crash between the two leaves
//! the checkpoint moved and the durable behind it: the restart sees the durable's ack floor
//! differ from the checkpoint and recreates it, so the move is never half done.
//!
//! - **pause** stops pulling and lets go of the durable's pull subscription, so nothing is
//!   delivered, left pending or redelivered meanwhile; **resume** recreates it from the
//!   checkpoint. A pause lasts until resumed or until the process ends (it is not stored).
//! - **seek** moves the position to a stream sequence or to the first event at or after a time.
//!   Backwards is safe: what is delivered again is dropped by the inbox or as stale. Forwards
//!   passes over events without applying them, and says how far it moved.
//! - **skip** passes over the next `count` events this consumer would get, recording each in the
//!   context's dead-letter stream with reason `skipped`, from where `carrier dlq replay` can
//!   bring them back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

/// The most events one skip passes over.
pub const MAX_SKIP: u32 = 1000;

/// Where a seek goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeekTo {
    /// This stream sequence is the next one delivered.
    Sequence(u64),
    /// The first event stored at or after this time is the next one delivered (the end of the
    /// stream when there is none).
    Time(SystemTime),
}

/// A change of position an operator asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reposition {
    /// Move the position.
    Seek(SeekTo),
    /// Pass over the next `count` events, dead-lettering each as `skipped`.
    Skip {
        /// How many (1 to [`MAX_SKIP`]).
        count: u32,
    },
}

/// One event a skip passed over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedEvent {
    /// Its stream sequence.
    pub stream_seq: u64,
    /// Its subject.
    pub subject: String,
}

/// What a seek or skip did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Repositioned {
    /// The durable.
    pub durable: String,
    /// The stream sequence that would have come next before.
    pub from: u64,
    /// The stream sequence that comes next now.
    pub to: u64,
    /// The stream's first retained sequence: a position below it starts there.
    pub first_retained: u64,
    /// The stream's last sequence.
    pub last_seq: u64,
    /// What a skip dead-lettered (empty for a seek).
    pub skipped: Vec<SkippedEvent>,
}

/// Why a seek or skip was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RepositionError {
    /// Sequences start at 1.
    #[error("sequence 0: stream sequences start at 1")]
    ZeroSequence,
    /// Past the end of the stream.
    #[error("sequence {requested} is beyond the end of {stream} (last sequence {last}); the furthest seek is {next}", next = last + 1)]
    BeyondEnd {
        /// The stream.
        stream: String,
        /// Asked for.
        requested: u64,
        /// The stream's last sequence.
        last: u64,
    },
    /// Nothing after the position to skip.
    #[error("nothing to skip: {durable} has read everything in its stream (next sequence {next})")]
    NothingToSkip {
        /// The durable.
        durable: String,
        /// The position.
        next: u64,
    },
    /// Outside 1..=MAX_SKIP.
    #[error("count {0}: skip passes over 1 to {MAX_SKIP} events at a time")]
    Count(u32),
    /// The context is fenced on this instance: another may hold its lease and read the durable.
    #[error("the context is fenced on this instance ({0}); seek or skip where it runs")]
    Fenced(String),
    /// Another request for this consumer has not been taken yet.
    #[error("another seek or skip of this consumer is still pending")]
    Busy,
    /// The consumer did not answer in time (it is restarting, or a batch is being retried).
    #[error(
        "the consumer did not answer within {0} s (is it restarting or retrying a commit?); a request it had not \
         taken yet was withdrawn, one it had taken may still complete: check its position before trying again"
    )]
    NotTaken(u64),
    /// A pause is set, but the consumer has not let go of its subscription yet.
    #[error("paused, but the consumer has not let go within {0} s (it finishes the batch in hand first); it will")]
    NotReleased(u64),
    /// The checkpoint could not be written or read.
    #[error("the checkpoint: {0}")]
    Storage(String),
    /// NATS refused.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

impl RepositionError {
    /// Whether the request was wrong in itself (HTTP 400), rather than refused for now (409) or
    /// failed (500).
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            RepositionError::ZeroSequence
                | RepositionError::BeyondEnd { .. }
                | RepositionError::NothingToSkip { .. }
                | RepositionError::Count(_)
        )
    }

    /// Whether it may work if tried again later (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            RepositionError::Busy
                | RepositionError::NotTaken(_)
                | RepositionError::NotReleased(_)
                | RepositionError::Fenced(_)
        )
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<Repositioned, RepositionError>>;

/// One consumer's operator controls, shared by the observer (which asks) and every incarnation
/// of the consumer actor (which does).
#[derive(Default, Debug)]
pub struct ConsumerControl {
    paused: AtomicBool,
    /// Held back while its context replaces its cache from the owner's snapshot.
    resyncing: AtomicBool,
    /// Held back from the moment its stream was found not to hold its position until a full sync
    /// succeeds: nothing is applied past the hole, so the checkpoint stays below it and a crash
    /// in between finds the hole again at the next start.
    position_lost: AtomicBool,
    /// The context's fence: while set, the consumer holds back as if paused.
    fence: Option<Arc<crate::fence::Fence>>,
    /// Set by the actor once it holds no pull subscription (paused and let go).
    released: AtomicBool,
    /// Woken when the consumer lets go.
    let_go: tokio::sync::Notify,
    pending: Mutex<Option<(Reposition, Reply)>>,
}

impl ConsumerControl {
    /// Controls that also hold back while `fence` is set (the context lost its lease).
    pub(crate) fn fenced_by(fence: Arc<crate::fence::Fence>) -> ConsumerControl {
        ConsumerControl { fence: Some(fence), ..ConsumerControl::default() }
    }

    /// Whether an operator paused it.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Why its context is fenced, while it is.
    pub fn fence_reason(&self) -> Option<String> {
        self.fence.as_ref().filter(|f| f.is_fenced()).map(|f| f.reason().unwrap_or_default())
    }

    /// Whether it must pull nothing now: paused, its context fenced, a full sync running, or its
    /// position lost and not yet resynced.
    pub fn holds_back(&self) -> bool {
        self.is_paused()
            || self.fence.as_ref().is_some_and(|f| f.is_fenced())
            || self.resyncing.load(Ordering::Acquire)
            || self.position_lost.load(Ordering::Acquire)
    }

    /// Holds it back (`true`) while a full sync runs, or lets it go on.
    pub(crate) fn set_resyncing(&self, on: bool) {
        self.resyncing.store(on, Ordering::Release);
    }

    /// Whether its stream was found not to hold its position and no full sync has filled the
    /// hole yet.
    pub fn position_lost(&self) -> bool {
        self.position_lost.load(Ordering::Acquire)
    }

    /// Holds it back (`true`) from a lost position until a full sync succeeded.
    pub(crate) fn set_position_lost(&self, on: bool) {
        self.position_lost.store(on, Ordering::Release);
    }

    /// Pauses (`true`) or resumes; returns whether it was paused before. The consumer lets go
    /// of its subscription at its next turn: [`ConsumerControl::is_released`] says when.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.paused.swap(paused, Ordering::AcqRel)
    }

    /// Whether the consumer holds no pull subscription (it is paused and has let go).
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Waits until the consumer holds no subscription, at most `limit`; whether it let go.
    pub async fn wait_released(&self, limit: std::time::Duration) -> bool {
        let waited = tokio::time::timeout(limit, async {
            loop {
                let notified = self.let_go.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.is_released() {
                    return;
                }
                notified.await;
            }
        });
        waited.await.is_ok()
    }

    pub(crate) fn set_released(&self, released: bool) {
        self.released.store(released, Ordering::Release);
        if released {
            self.let_go.notify_waiters();
        }
    }

    /// Leaves a request for the consumer; its answer comes on the returned channel.
    pub(crate) fn request(
        &self,
        change: Reposition,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Repositioned, RepositionError>>, RepositionError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.as_ref().is_some_and(|(_, reply)| !reply.is_closed()) {
            return Err(RepositionError::Busy);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        *pending = Some((change, tx));
        Ok(rx)
    }

    /// Withdraws a request nobody took (the asker gave up waiting).
    pub(crate) fn withdraw(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.as_ref().is_some_and(|(_, reply)| reply.is_closed()) {
            *pending = None;
        }
    }

    /// The request waiting for the consumer, if its asker still waits.
    /// Whether an operator's seek or skip waits for the consumer.
    pub(crate) fn has_request(&self) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.as_ref().is_some_and(|(_, reply)| !reply.is_closed())
    }

    pub(crate) fn take(&self) -> Option<(Reposition, Reply)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.take().filter(|(_, reply)| !reply.is_closed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_at_a_time_and_an_abandoned_one_makes_room() {
        let control = ConsumerControl::default();
        let first = control.request(Reposition::Skip { count: 1 }).expect("first");
        assert!(matches!(control.request(Reposition::Skip { count: 2 }), Err(RepositionError::Busy)));
        drop(first);
        control.withdraw();
        let _second = control.request(Reposition::Skip { count: 3 }).expect("room again");
        assert_eq!(control.take().map(|(r, _)| r), Some(Reposition::Skip { count: 3 }));
        assert!(control.take().is_none());
    }

    #[test]
    fn pause_is_a_flag_that_says_what_it_was() {
        let control = ConsumerControl::default();
        assert!(!control.set_paused(true));
        assert!(control.is_paused());
        assert!(control.set_paused(false));
        assert!(!control.is_paused());
    }
}
