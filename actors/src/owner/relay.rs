//! The outbox relay actor: publishes an owning context's outbox to JetStream, in order.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;

use carrier_messages::DomainEvent;
use carrier_storage::{OwnerFile, OwnerKind};

use crate::bus::Bus;
use crate::faults::Faults;
use crate::flow;
use crate::owner::actor::OwnerMsg;

/// Rows published per round.
const ROUND: usize = 256;
/// How long the relay sleeps when the outbox is empty and nobody wakes it.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Publishes outbox rows with `Nats-Msg-Id` = event id, waits for each PublishAck, then has the
/// owner delete the acknowledged rows. A crash in between republishes those rows; JetStream's
/// duplicate window and every consumer's inbox make that harmless.
pub struct OutboxRelay<K>(std::marker::PhantomData<fn() -> K>);

impl<K> Default for OutboxRelay<K> {
    fn default() -> Self {
        OutboxRelay(std::marker::PhantomData)
    }
}

/// The relay's only message.
pub enum RelayMsg {
    /// Publish what is pending, then wait for more.
    Drain,
}

/// What [`OutboxRelay`] is started with.
pub struct RelayArgs<K: OwnerKind> {
    /// The connection.
    pub bus: Bus,
    /// The outbox, read here and written by the owner.
    pub db: Arc<OwnerFile<K>>,
    /// The owner, which deletes published rows.
    pub owner: ActorRef<OwnerMsg<K>>,
    /// Signalled by the owner after each commit.
    pub wakeup: Arc<Notify>,
    /// Injected failures.
    pub faults: Arc<Faults>,
}

/// The relay's state.
pub struct RelayState<K: OwnerKind> {
    args: RelayArgs<K>,
    failures: u32,
}

impl<K: OwnerKind> Actor for OutboxRelay<K> {
    type Msg = RelayMsg;
    type State = RelayState<K>;
    type Arguments = RelayArgs<K>;

    async fn pre_start(
        &self,
        myself: ActorRef<RelayMsg>,
        args: RelayArgs<K>,
    ) -> Result<RelayState<K>, ActorProcessingErr> {
        myself.send_message(RelayMsg::Drain)?;
        Ok(RelayState { args, failures: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<RelayMsg>,
        _msg: RelayMsg,
        state: &mut RelayState<K>,
    ) -> Result<(), ActorProcessingErr> {
        let published = publish_round(&state.args).await?;
        match published {
            Round::Empty => {
                // Woken by the owner's commit, or by the periodic check that covers a lost wakeup.
                let _ = tokio::time::timeout(IDLE_CHECK, state.args.wakeup.notified()).await;
                myself.send_message(RelayMsg::Drain)?;
            }
            Round::All => {
                state.failures = 0;
                myself.send_message(RelayMsg::Drain)?;
            }
            Round::Partial(error) => {
                state.failures += 1;
                let delay = Duration::from_millis(100u64.saturating_mul(1 << state.failures.min(6)))
                    .min(Duration::from_secs(5));
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "outbox publish failed; will retry");
                myself.send_after(delay, || RelayMsg::Drain);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RelayMsg>,
        state: &mut RelayState<K>,
    ) -> Result<(), ActorProcessingErr> {
        // Flush what the owner committed before shutdown, within a bounded time.
        let flush = async { while let Ok(Round::All) = publish_round(&state.args).await {} };
        if tokio::time::timeout(Duration::from_secs(5), flush).await.is_err() {
            tracing::warn!("outbox not fully flushed at shutdown; the rest goes out at the next start");
        }
        Ok(())
    }
}

enum Round {
    Empty,
    All,
    Partial(String),
}

async fn publish_round<K: OwnerKind>(args: &RelayArgs<K>) -> Result<Round, ActorProcessingErr> {
    let db = args.db.clone();
    let rows = tokio::task::spawn_blocking(move || db.outbox_pending(ROUND)).await??;
    if rows.is_empty() {
        return Ok(Round::Empty);
    }
    let labels: Option<Vec<String>> = flow::enabled().then(|| {
        rows.iter()
            .map(|(_, e)| format!("{}.IntegrationEvents.On({})", flow::capitalize(K::Event::CONTEXT), event_type_of(e)))
            .collect()
    });
    for label in labels.iter().flatten() {
        flow::enter(label);
    }
    let events: Vec<_> = rows.iter().map(|(_, e)| e.clone()).collect();
    let results = args.bus.publish_all(&events).await;

    // Only the acknowledged prefix may leave the outbox: a row after a failed one is published
    // again next round (a duplicate JetStream drops). Publishes are pipelined, so rows after a
    // failed one may already be stored and the retried row lands after them: the stream is in
    // outbox order except around a failure, and consumers restore each entity's order by version
    // (an early event is parked until the one before it arrives).
    let mut acked = Vec::with_capacity(rows.len());
    let mut failure = None;
    for ((key, _), result) in rows.iter().zip(results) {
        match result {
            Ok(_) => acked.push(*key),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    if !acked.is_empty() && Faults::take(&args.faults.relay_abort_after_publish) {
        tracing::error!("injected: aborting the process between publish and mark");
        std::process::abort();
    }
    if !acked.is_empty() && Faults::take(&args.faults.relay_crash_after_publish) {
        return Err("injected crash between publish and mark".into());
    }
    if !acked.is_empty() {
        let count = acked.len();
        ractor::call!(args.owner, |reply| OwnerMsg::MarkPublished { keys: acked, reply })??;
        for label in labels.iter().flatten().take(count) {
            flow::leave(label, None);
        }
    }
    Ok(match failure {
        Some(e) => Round::Partial(e),
        None => Round::All,
    })
}

fn event_type_of(event: &carrier_messages::EncodedEvent) -> &str {
    event
        .headers
        .iter()
        .find(|(k, _)| k == carrier_messages::envelope::header::EVENT_TYPE)
        .map(|(_, v)| v.as_str())
        .unwrap_or("?")
}
