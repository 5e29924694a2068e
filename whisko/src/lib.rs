//! Seed 004's Whisko: users and payments, event-sourced on JetStream, queried from projections,
//! built on Carrier's public API as a user would build it.
//!
//! - Write side: [`users::User`] and [`billing::Payment`] are [`Aggregate`]s; their contexts
//!   (`users`, `billing`) are declared with [`BoundedContext::aggregate`] and keep no state of
//!   their own: each command loads its aggregate from the stream (or a snapshot), decides, and
//!   appends with the expected last sequence of the aggregate's subject. Any number of
//!   instances may handle commands at once.
//! - Read side: [`views`] are two Carrier read models (`user_views`, `payment_views`) fed by
//!   durable consumers, each batch committed with its inbox records and checkpoint.
//! - Async handlers: [`mail`] subscribes a welcome and a receipt handler to the
//!   [`EventBus`].
//! - [`http`] is the HTTP API (`carrier whisko`); [`verify`] checks that every projection equals
//!   a fold of the streams (the demo's verdict and the tests' oracle).
//!
//! [`Aggregate`]: carrier_actors::Aggregate

pub mod billing;
pub mod cli;
pub mod events;
pub mod http;
pub mod mail;
pub mod users;
pub mod verify;
pub mod views;

use std::time::Duration;

use carrier_actors::EventStore;
use carrier_actors::{BoundedContext, CarrierSystem, StartError, SystemConfig};
use carrier_actors::{EventBus, EventBusError};

use crate::billing::Payment;
use crate::users::User;
use crate::views::{PaymentViewsHandle, UserViewsHandle};

/// The event bus's name: its durables (`whisko-welcome`), file (`whisko.bus.redb`), lease and
/// dead-letter stream (`DLQ_WHISKO`).
pub const BUS: &str = "whisko";

/// How often a snapshot of an aggregate is written: every this many events.
pub const SNAPSHOT_EVERY: u64 = 100;

/// Whisko's contexts: `users` and `billing` (event-sourced), `user_views` and `payment_views`
/// (their projections), and the event bus `whisko` with the mail handlers.
pub fn contexts() -> Vec<BoundedContext> {
    vec![
        BoundedContext::aggregate::<User>().snapshot_every(SNAPSHOT_EVERY).build(),
        BoundedContext::aggregate::<Payment>().snapshot_every(SNAPSHOT_EVERY).build(),
        views::user_views(),
        views::payment_views(),
        mail::context(),
    ]
}

/// Why Whisko did not start.
#[derive(Debug, thiserror::Error)]
pub enum WhiskoError {
    /// The contexts did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The event bus did not start.
    #[error(transparent)]
    Bus(#[from] EventBusError),
    /// A context's handle was missing (it was not in the configuration).
    #[error("{0} is not running")]
    Missing(&'static str),
}

/// Whisko running in this process: its contexts, their handles and the event bus.
pub struct Whisko {
    /// The contexts.
    pub system: CarrierSystem,
    /// The users' event store (the `users` context's handle).
    pub users: EventStore<User>,
    /// The payments' event store (the `billing` context's handle).
    pub billing: EventStore<Payment>,
    /// The users read model.
    pub user_views: UserViewsHandle,
    /// The payments read model.
    pub payment_views: PaymentViewsHandle,
    /// The event bus with the mail handlers.
    pub bus: EventBus,
}

impl Whisko {
    /// Starts `config`, whose contexts should be [`contexts`] (the event bus `whisko` among them,
    /// its file in the data directory); the system's observers show the bus and the event stores.
    pub async fn start(config: SystemConfig) -> Result<Whisko, WhiskoError> {
        let system = CarrierSystem::start(config).await?;
        let users = system.handle::<EventStore<User>>().ok_or(WhiskoError::Missing("users"))?;
        let billing = system.handle::<EventStore<Payment>>().ok_or(WhiskoError::Missing("billing"))?;
        let user_views = system.handle::<UserViewsHandle>().ok_or(WhiskoError::Missing("user_views"))?;
        let payment_views = system.handle::<PaymentViewsHandle>().ok_or(WhiskoError::Missing("payment_views"))?;
        let bus = system.handle::<EventBus>().ok_or(WhiskoError::Missing(BUS))?;
        let whisko = Whisko { system, users, billing, user_views, payment_views, bus };
        whisko.show();
        Ok(whisko)
    }

    /// Adds to what every observer of the system shows (the dashboard, `carrier status`) an
    /// "Event stores" panel (commits, conflicts, loads, snapshots); the bus, a declared context,
    /// shows its own panel and dead letters.
    fn show(&self) {
        let observer = self.system.observer();
        let (u, b) = (self.users.stats(), self.billing.stats());
        observer.add_panel(
            "Event stores",
            std::sync::Arc::new(move || {
                use std::sync::atomic::Ordering::Relaxed;
                [("users", &u), ("billing", &b)]
                    .into_iter()
                    .map(|(name, s)| {
                        (
                            name.to_string(),
                            format!(
                                "committed {}, conflicts {} (refused {}), loads {} replaying {} events, snapshots {} written, {} ignored",
                                s.committed.load(Relaxed),
                                s.conflicts.load(Relaxed),
                                s.conflicts_refused.load(Relaxed),
                                s.loads.load(Relaxed),
                                s.replayed.load(Relaxed),
                                s.snapshots_written.load(Relaxed),
                                s.snapshots_ignored.load(Relaxed)
                            ),
                        )
                    })
                    .collect()
            }),
        );
    }

    /// Stops the bus (handlers in flight finish, bounded) and then the contexts.
    pub async fn shutdown(self) {
        self.system.shutdown().await;
    }

    /// Waits until both read models and the bus's handlers have caught up with both streams, at
    /// most `timeout`; `false` if they did not.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let streams = [("USERS", true), ("BILLING", false)];
        for (stream, users) in streams {
            let Ok(last) = self.system.bus.last_sequence(stream).await else { return false };
            let position = carrier_actors::Position { stream: stream.to_string(), seq: last };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let waited = if users {
                self.user_views.wait_for_position(&position, left).await
            } else {
                self.payment_views.wait_for_position(&position, left).await
            };
            if waited.is_err() {
                return false;
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.bus.wait(left).await.is_ok()
    }
}
