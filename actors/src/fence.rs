//! A context's lease as others see it ([`Holder`], in [`LEASE_BUCKET`]) and its fence: while the
//! lease may be another instance's, the context holds its effects back (see
//! [`crate::instance`], which claims, renews, sets and lifts).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The KV bucket of leases: a key per context, its value the [`Holder`].
pub const LEASE_BUCKET: &str = "carrier_instances";
/// How long a lease lives after its holder last renewed it. Long enough that the holder rides
/// out a JetStream leader election of the bucket's stream without fencing itself: after a node
/// of a cluster dies, its streams elect a new leader in 4 to 9 s (raft's election timeout), and
/// the client may have to reconnect first. It was 15 s, with the fence at 10 s: losing the
/// node that led the bucket fenced every context for a moment, and refused their commands.
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Who holds a context's lease: what the refused instance prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The instance's id (its data directory's `instance.id`).
    pub instance: String,
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Its data directory.
    pub data_dir: String,
    /// When it took the lease (RFC 3339).
    pub since: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on {}, data directory {}, since {}", self.pid, self.host, self.data_dir, self.since)
    }
}

/// A context whose lease may be someone else's stops its effects: its consumers hold back and
/// its commands are refused (`unavailable`), until the lease is this instance's again. Set when
/// the lease was found in another instance's hands, or could not be renewed for
/// [`FENCE_AFTER`](crate::instance::FENCE_AFTER) (before it can expire, at [`LEASE_TTL`](crate::instance::LEASE_TTL), and be claimed by another).
///
/// An instance standing by for a context (see [`crate::standby`]) is fenced too, on a reason of
/// its own that lease renewals never lift: only taking over does, once it has caught up.
#[derive(Debug, Default)]
pub struct Fence {
    fenced: AtomicBool,
    reason: Mutex<Option<String>>,
    standing_by: AtomicBool,
    standby_reason: Mutex<Option<String>>,
}

impl Fence {
    /// Whether the context must hold its effects back.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire) || self.standing_by.load(Ordering::Acquire)
    }

    /// Why, while fenced.
    pub fn reason(&self) -> Option<String> {
        let lease = self.reason.lock().ok().and_then(|r| r.clone());
        lease.or_else(|| self.standby_reason.lock().ok().and_then(|r| r.clone()))
    }

    /// Whether this instance stands by for the context (another holds its lease).
    pub fn is_standing_by(&self) -> bool {
        self.standing_by.load(Ordering::Acquire)
    }

    /// Whether the lease itself fenced it (not standing by): what renewals set and lift.
    pub(crate) fn lease_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    pub(crate) fn stand_by(&self, reason: String) {
        if let Ok(mut r) = self.standby_reason.lock() {
            *r = Some(reason);
        }
        self.standing_by.store(true, Ordering::Release);
    }

    pub(crate) fn take_over(&self) {
        self.standing_by.store(false, Ordering::Release);
        if let Ok(mut r) = self.standby_reason.lock() {
            *r = None;
        }
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
