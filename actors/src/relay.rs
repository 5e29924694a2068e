//! The outbox relay actor: publishes a context's outbox to JetStream, in order.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;

use carrier_messages::EncodedEvent;
use carrier_storage::StorageError;

use crate::bus::Bus;
use crate::faults::Faults;
use crate::flow;

/// Rows published per round.
const ROUND: usize = 2048;
/// How long the relay sleeps when the outbox is empty and nobody wakes it.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Publishes outbox rows with `Nats-Msg-Id` = event id, waits for each PublishAck, then has the
/// file's writer delete the acknowledged rows. A crash in between republishes those rows;
/// JetStream's duplicate window and every consumer's inbox make that harmless.
#[derive(Default)]
pub(crate) struct OutboxRelay;

/// Reads the oldest `limit` outbox rows.
pub(crate) type ReadOutbox = Arc<dyn Fn(usize) -> Result<Vec<(u64, EncodedEvent)>, StorageError> + Send + Sync>;
/// Has the file's only writer delete published rows.
pub(crate) type MarkPublished = Arc<dyn Fn(Vec<u64>) -> BoxFuture<'static, Result<(), MarkError>> + Send + Sync>;

/// Why published rows could not be deleted yet (they are published again later, harmlessly).
#[derive(Debug, thiserror::Error)]
pub(crate) enum MarkError {
    /// The writer is down (restarting with its context).
    #[error("the file's writer is not running")]
    WriterGone,
    /// The delete did not commit.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The events the relay published lately, by id, with their stream sequences: what a command
/// of a context with a standby waits for before it is answered (see
/// [`ContextHandle::decide_once`](crate::context::ContextHandle::decide_once)).
#[derive(Default)]
pub(crate) struct Published {
    recent: std::sync::Mutex<(std::collections::HashMap<u128, u64>, std::collections::VecDeque<u128>)>,
    notify: Notify,
}

/// How many published ids are remembered (a waiter looks right after its commit).
const PUBLISHED_KEPT: usize = 65_536;

impl Published {
    fn mark(&self, published: impl Iterator<Item = (u128, u64)>) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let (by_id, order) = &mut *recent;
            for (id, seq) in published {
                if by_id.insert(id, seq).is_none() {
                    order.push_back(id);
                }
            }
            while order.len() > PUBLISHED_KEPT {
                if let Some(old) = order.pop_front() {
                    by_id.remove(&old);
                }
            }
        }
        self.notify.notify_waiters();
    }

    fn sequence(&self, id: u128) -> Option<u64> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).0.get(&id).copied()
    }

    /// The stream sequence of event `id` once the relay has published it, or `None` after
    /// `limit`.
    pub(crate) async fn wait(&self, id: u128, limit: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(seq) = self.sequence(id) {
                return Some(seq);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.sequence(id);
            }
        }
    }
}

/// How often a relay held back by its context's fence looks again.
const HELD_CHECK: Duration = Duration::from_millis(250);

/// The relay's only message.
pub(crate) enum RelayMsg {
    /// Publish what is pending, then wait for more.
    Drain,
}

/// What [`OutboxRelay`] is started with.
pub(crate) struct RelayArgs {
    /// The connection.
    pub bus: Bus,
    /// The publishing context, for the flow log.
    pub context: &'static str,
    /// Reads the outbox (written by the context's writer).
    pub pending: ReadOutbox,
    /// Deletes published rows through the writer.
    pub mark: MarkPublished,
    /// Told of every event published.
    pub published: Arc<Published>,
    /// While this fence is set, nothing is published.
    pub held_by: Option<Arc<crate::fence::Fence>>,
    /// Signalled by the writer after each commit.
    pub wakeup: Arc<Notify>,
    /// Injected failures.
    pub faults: Arc<Faults>,
}

/// The relay's state.
pub(crate) struct RelayState {
    args: RelayArgs,
    failures: u32,
}

impl Actor for OutboxRelay {
    type Msg = RelayMsg;
    type State = RelayState;
    type Arguments = RelayArgs;

    async fn pre_start(&self, myself: ActorRef<RelayMsg>, args: RelayArgs) -> Result<RelayState, ActorProcessingErr> {
        myself.send_message(RelayMsg::Drain)?;
        Ok(RelayState { args, failures: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<RelayMsg>,
        _msg: RelayMsg,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        if state.args.held_by.as_ref().is_some_and(|fence| fence.is_fenced()) {
            myself.send_after(HELD_CHECK, || RelayMsg::Drain);
            return Ok(());
        }
        let published = publish_round(&state.args).await?;
        match published {
            Round::Empty => {
                // Woken by the owner's commit, or by the periodic check that covers a lost wakeup.
                // Waited for off the actor's loop, so that a stop is taken at once (it used to wait
                // for this sleep: every `carrier run` took a second to stop after SIGTERM).
                let wakeup = state.args.wakeup.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(IDLE_CHECK, wakeup.notified()).await;
                    let _ = myself.send_message(RelayMsg::Drain);
                });
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

    async fn post_stop(&self, _myself: ActorRef<RelayMsg>, state: &mut RelayState) -> Result<(), ActorProcessingErr> {
        // Flush what the owner committed before shutdown, within a bounded time (unless held).
        if state.args.held_by.as_ref().is_some_and(|fence| fence.is_fenced()) {
            return Ok(());
        }
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

async fn publish_round(args: &RelayArgs) -> Result<Round, ActorProcessingErr> {
    let pending = args.pending.clone();
    let rows = tokio::task::spawn_blocking(move || pending(ROUND)).await??;
    if rows.is_empty() {
        return Ok(Round::Empty);
    }
    let labels: Option<Vec<String>> = flow::enabled().then(|| {
        rows.iter()
            .map(|(_, e)| format!("{}.IntegrationEvents.On({})", flow::capitalize(args.context), event_type_of(e)))
            .collect()
    });
    for label in labels.iter().flatten() {
        flow::enter(label);
    }
    let events: Vec<_> = rows.iter().map(|(_, e)| e.clone()).collect();
    let started = std::time::Instant::now();
    let results = args.bus.publish_all(&events).await;
    let took = started.elapsed();

    // Only the acknowledged prefix may leave the outbox: a row after a failed one is published
    // again next round (a duplicate JetStream drops). Publishes are pipelined, so rows after a
    // failed one may already be stored and the retried row lands after them: the stream is in
    // outbox order except around a failure, and consumers restore each entity's order by version
    // (an early event is parked until the one before it arrives).
    let mut acked = Vec::with_capacity(rows.len());
    let mut sequences = Vec::with_capacity(rows.len());
    let mut failure = None;
    for ((key, event), result) in rows.iter().zip(results) {
        match result {
            Ok(receipt) => {
                acked.push(*key);
                sequences.push((event.event_id.0.as_u128(), receipt.stream_seq));
            }
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    args.published.mark(sequences.into_iter());
    if crate::telemetry::enabled() {
        record_publish_spans(args.context, &rows[..acked.len()], std::time::SystemTime::now());
    }
    if let Some(metrics) = crate::metrics::get().filter(|_| !acked.is_empty()) {
        let labels = crate::metrics::ContextLabels { context: args.context };
        metrics.outbox_published.get_or_create(&labels).inc_by(acked.len() as u64);
        metrics.outbox_publish_seconds.get_or_create(&labels).observe(took.as_secs_f64());
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
        (args.mark)(acked).await?;
        for label in labels.iter().flatten().take(count) {
            flow::leave(label, None);
        }
    }
    Ok(match failure {
        Some(e) => Round::Partial(e),
        None => Round::All,
    })
}

fn event_type_of(event: &carrier_messages::EncodedEvent) -> String {
    event.envelope().map(|e| e.event_type).unwrap_or_else(|_| "?".to_string())
}

/// One producer span per published event, from when the event was recorded in the outbox to
/// JetStream's ack: the outbox's delay, in the trace of the command that caused the event.
fn record_publish_spans(context: &'static str, rows: &[(u64, carrier_messages::EncodedEvent)], acked_at: SystemTime) {
    for (_, event) in rows {
        let Ok(envelope) = event.envelope() else { continue };
        let parent = envelope.trace();
        let recorded_at = SystemTime::UNIX_EPOCH
            + std::time::Duration::from_nanos(u64::try_from(envelope.occurred_at_unix_nanos).unwrap_or(0));
        let mut attributes = crate::telemetry::event_attributes(context, &envelope);
        attributes.push(crate::telemetry::Attribute::new("messaging.destination.name", event.subject.clone()));
        attributes.push(crate::telemetry::Attribute::new("messaging.operation.type", "send"));
        attributes.push(crate::telemetry::Attribute::new("messaging.operation.name", "publish"));
        crate::telemetry::record(crate::telemetry::SpanRecord {
            name: format!("{context} publish {}", envelope.event_type),
            kind: crate::telemetry::Kind::Producer,
            span: parent.publish_span(&envelope.event_id.to_string()),
            parent: Some(parent),
            start: recorded_at.min(acked_at),
            end: acked_at,
            attributes,
            error: None,
        });
    }
}
