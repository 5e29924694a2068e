//! A context's fence: while its lease may be another instance's, the context holds its effects
//! back (see [`crate::instance`], which sets and lifts it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// A context whose lease may be someone else's stops its effects: its consumers hold back and
/// its commands are refused (`unavailable`), until the lease is this instance's again. Set when
/// the lease was found in another instance's hands, or could not be renewed for
/// [`FENCE_AFTER`](crate::instance::FENCE_AFTER) (before it can expire, at [`LEASE_TTL`](crate::instance::LEASE_TTL), and be claimed by another).
#[derive(Debug, Default)]
pub struct Fence {
    fenced: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Fence {
    /// Whether the context must hold its effects back.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Why, while fenced.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    pub(crate) fn set(&self, reason: String) {
        if let Ok(mut r) = self.reason.lock() {
            *r = Some(reason);
        }
        self.fenced.store(true, Ordering::Release);
    }

    pub(crate) fn clear(&self) {
        self.fenced.store(false, Ordering::Release);
        if let Ok(mut r) = self.reason.lock() {
            *r = None;
        }
    }
}

/// A command refused because its context is fenced.
#[derive(Debug, thiserror::Error)]
#[error("{context} is fenced on this instance: {reason}")]
pub struct Fenced {
    /// The context.
    pub context: String,
    /// Why.
    pub reason: String,
}
