//! A batch on its way to the writer and back: [`ApplyBatch`], the [`WriterPort`] it goes
//! through, the wait for the commit, and the spans and counters of a committed batch.

use std::sync::atomic::Ordering;

use ractor::{ActorProcessingErr, RpcReplyPort};

use carrier_messages::DomainEvent;
use carrier_storage::{BatchOutcome, Inbound, StorageError};

use crate::bus::Delivery;

use super::*;

/// A batch for a cache actor to apply in one transaction. The reply comes after the commit.
pub struct ApplyBatch<E> {
    /// The durable consumer it came from (its checkpoint key).
    pub consumer: String,
    /// The events, in delivery order.
    pub batch: Vec<Inbound<E>>,
    /// The last stream sequence the consumer settled, dead letters included: the checkpoint
    /// moves at least this far.
    pub through: u64,
    /// An operator's seek or skip: the batch is empty and the checkpoint becomes exactly
    /// `through`, even backwards.
    pub reposition: bool,
    /// The outcome, or the batch back with the error so that it can be retried.
    pub reply: RpcReplyPort<Result<BatchOutcome, ApplyFailed<E>>>,
}

/// A consumer's way to its context: the writer that applies its batches, the checkpoint it
/// starts from, and what the context does when the stream lost its position. Implemented by
/// the context (`crate::context::ContextPort`); a trait, so that the consumer names no context
/// kind and a reader can go from here to the writer in one step.
pub(crate) trait WriterPort<E>: Send + Sync + 'static {
    /// Hands a batch to the writer (after whatever must be looked up first); `false` when the
    /// writer is not running. The reply comes on the batch's port after the commit.
    fn apply(&self, batch: ApplyBatch<E>) -> bool;

    /// The last stream sequence the file committed for `durable` (0 when none).
    fn checkpoint(&self, durable: &str) -> Result<u64, StorageError>;

    /// Whether the context fills a lost position itself, from its owner's snapshot (see
    /// [`position_lost`](Self::position_lost)); otherwise the loss is only reported.
    fn resyncs(&self) -> bool {
        false
    }

    /// The stream no longer holds the consumer's position: start filling the hole (called
    /// only when [`resyncs`](Self::resyncs)).
    fn position_lost(&self, _lost: PositionLost) {}
}

/// A batch whose transaction did not commit.
pub struct ApplyFailed<E> {
    /// Why.
    pub error: StorageError,
    /// The batch, untouched, for the retry.
    pub batch: Vec<Inbound<E>>,
}

/// Hands a batch to the cache actor and waits for its commit. `Err` when the actor died with it
/// (the guard then remembers the batch); `Ok(Err)` when the commit failed (storage).
pub(crate) async fn apply<E: DomainEvent>(
    state: &mut ConsumerState<E>,
    batch: Vec<Inbound<E>>,
    through: u64,
) -> Result<Result<(), ApplyFailed<E>>, ActorProcessingErr> {
    let first = batch.first().map(|i| i.stream_seq).unwrap_or(0);
    let last = batch.last().map(|i| i.stream_seq).unwrap_or(0);
    let event_types: Option<Vec<&'static str>> =
        crate::metrics::get().map(|_| batch.iter().map(|i| i.decoded.event.event_type()).collect());
    let traced: Option<(std::time::SystemTime, Vec<TracedEvent>)> = crate::telemetry::enabled().then(|| {
        let events = batch.iter().map(|i| (i.decoded.envelope.clone(), i.stream_seq, i.decoded.event.subject()));
        (std::time::SystemTime::now(), events.collect())
    });
    let (tx, rx) = ractor::concurrency::oneshot();
    let message =
        ApplyBatch { consumer: state.spec.durable.clone(), batch, through, reposition: false, reply: tx.into() };
    state.guard.begin((first, last));
    if !state.writer.apply(message) {
        state.guard.end();
        return Err("the cache actor is not running".into());
    }
    match rx.await {
        Ok(Ok(outcome)) => {
            state.guard.end();
            state.stats.record(&outcome);
            if let (Some(metrics), Some(types)) = (crate::metrics::get(), &event_types) {
                metrics.record_batch(state.context, types, &outcome);
            }
            if let Some((start, envelopes)) = traced {
                record_spans(state.context, &state.spec.durable, start, envelopes, &outcome);
            }
            state.stats.failing_commits.store(0, Ordering::Relaxed);
            Ok(Ok(()))
        }
        Ok(Err(failed)) => {
            state.guard.end();
            Ok(Err(failed))
        }
        // The actor died holding the batch: leave it marked in flight for the next incarnation.
        Err(_) => Err("the cache actor stopped before answering".into()),
    }
}

/// An applied event's envelope, stream sequence and subject, for its span.
pub(crate) type TracedEvent = (carrier_messages::Envelope, u64, &'static str);

/// One consumer span per event of a committed batch: a child of the span that produced the event,
/// with the id the event's reactions already name as their parent.
pub(crate) fn record_spans(
    context: &'static str,
    durable: &str,
    start: std::time::SystemTime,
    envelopes: Vec<TracedEvent>,
    outcome: &carrier_storage::BatchOutcome,
) {
    use crate::telemetry::Attribute;
    let end = std::time::SystemTime::now();
    for ((envelope, stream_seq, subject), disposition) in envelopes.into_iter().zip(&outcome.dispositions) {
        let parent = envelope.trace();
        let span = parent.consumer_span(&envelope.event_id.to_string(), context);
        let mut attributes = crate::telemetry::event_attributes(context, &envelope);
        attributes.push(Attribute::new("messaging.operation.type", "process"));
        attributes.push(Attribute::new("messaging.operation.name", "apply"));
        attributes.push(Attribute::new("messaging.destination.name", subject));
        attributes.push(Attribute::new("messaging.consumer.group.name", durable.to_string()));
        attributes.push(Attribute::new("messaging.message.stream_seq", stream_seq as i64));
        attributes.push(crate::telemetry::Attribute::new("carrier.disposition", disposition.as_str()));
        crate::telemetry::record(crate::telemetry::SpanRecord {
            name: format!("{context} apply {}", envelope.event_type),
            kind: crate::telemetry::Kind::Consumer,
            span,
            parent: Some(parent),
            start,
            end,
            attributes,
            error: None,
        });
    }
}

/// Applies a batch that overlaps one that killed the cache, one event per transaction, and
/// dead-letters an event that killed it on its own too often.
pub(crate) async fn apply_one_by_one<E: DomainEvent>(
    state: &mut ConsumerState<E>,
    deliveries: &[Delivery],
    poison: &mut Vec<usize>,
    batch: Vec<Inbound<E>>,
) -> Result<Option<Vec<Inbound<E>>>, ActorProcessingErr> {
    tracing::warn!(consumer = state.spec.durable, events = batch.len(), "applying one event at a time after a crash");
    let mut events = batch.into_iter();
    while let Some(inbound) = events.next() {
        let seq = inbound.stream_seq;
        let Some(index) = deliveries.iter().position(|d| d.stream_seq == seq) else { continue };
        let failures = state.guard.solo_failures(seq);
        if failures >= state.poison_threshold {
            let error = format!("the cache actor failed {failures} times applying this event on its own");
            tracing::error!(consumer = state.spec.durable, stream.seq = seq, %error, "dead-lettering a poison event");
            state.bus.dead_letter(state.context, &deliveries[index], "apply_failed", &error).await?;
            state.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            if let Some(metrics) = crate::metrics::get() {
                metrics.record_dead_letter(state.context, inbound.decoded.event.event_type());
            }
            poison.push(index);
            continue;
        }
        let event_type = inbound.decoded.event.event_type();
        if let Err(ApplyFailed { error, batch }) = apply(state, vec![inbound], 0).await? {
            if let StorageError::NotYetFollowed { .. } = &error {
                // Held for the holder's effect (a standby): this event and the rest wait.
                return Ok(Some(batch.into_iter().chain(events).collect()));
            }
            if let StorageError::Rejected { reason, .. } = &error {
                state.bus.dead_letter(state.context, &deliveries[index], "rejected", reason).await?;
                state.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                if let Some(metrics) = crate::metrics::get() {
                    metrics.record_dead_letter(state.context, event_type);
                }
                poison.push(index);
                continue;
            }
            // Storage, not the event: start again from the checkpoint once it recovers.
            return Err(format!("commit failed while isolating a poison event: {error}").into());
        }
    }
    Ok(None)
}
