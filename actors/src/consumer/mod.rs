//! The consumer actor: pulls a durable JetStream consumer in batches and hands each batch to the
//! cache actor that owns the tables, acknowledging only after that actor's commit.
//!
//! Per batch:
//! 1. decode every delivery; a message that can never decode is copied to the context's
//!    dead-letter stream (and that copy confirmed) and left out of the batch;
//! 2. send the decoded events to the cache actor and wait for its commit;
//! 3. terminate the dead-lettered deliveries, then ack the last good one, which under
//!    `AckPolicy::All` acknowledges the whole batch with one message.
//!
//! A failed commit is retried in place with backoff, before anything newer is taken, so events
//! are never applied out of delivery order and nothing is acknowledged that is not committed.

mod decode;
mod poison;
mod port;
mod reposition;
mod stats;

pub(crate) use decode::*;
pub use poison::*;
pub use port::*;
use reposition::*;
pub use stats::*;

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use carrier_messages::DomainEvent;
use carrier_storage::{Inbound, StorageError};

use crate::bus::{Bus, Delivery, DurableConsumer, DurableSpec};
use crate::faults::Faults;

/// How long one poll waits for the first message before checking its mailbox again.
pub(crate) const POLL_WAIT: Duration = Duration::from_millis(250);

/// How soon a durable that could not be made (the server recovering its streams) is tried again.
pub(crate) const DURABLE_RETRY: Duration = Duration::from_secs(1);

/// How often a standby tries again a batch whose reaction waits for the holder's effect.
pub(crate) const FOLLOW_RETRY: Duration = Duration::from_millis(250);

/// Counts one try of a batch held for the holder's effect, and tells the server now and then
/// (three times per ack wait) that its messages are still being worked on, not at every try.
pub(crate) async fn hold<E: DomainEvent>(state: &mut ConsumerState<E>, deliveries: &[Delivery]) {
    let every = (state.spec.ack_wait.as_millis() / 3 / FOLLOW_RETRY.as_millis()).max(1) as u32;
    if state.held % every == 0 {
        for d in deliveries {
            let _ = d.in_progress().await;
        }
    }
    state.held = state.held.wrapping_add(1);
    state.stats.held_for_holder.fetch_add(1, Ordering::Relaxed);
}

/// How often an idle consumer asks the server whether it holds messages it can never clear.
pub(crate) const STUCK_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Fails the consumer (its supervisor restarts it, and the restart recreates the durable from
/// the committed checkpoint, see [`crate::bus::Bus::durable`]) when the server counts messages
/// as pending although its own ack floor is past everything it delivered. nats-server 2.9.10
/// was seen in that state after being SIGKILLed mid-stream: 128 messages pending below the ack
/// floor, redelivered every ack wait as duplicates and never cleared, since the server ignores
/// acks below its floor. Nothing is lost by recreating: the checkpoint is committed, and the
/// inbox drops what is delivered again.
pub(crate) async fn check_not_stuck<E: DomainEvent>(state: &ConsumerState<E>) -> Result<(), ActorProcessingErr> {
    let Ok(info) = state.bus.consumer_info(E::STREAM, &state.spec.durable).await else { return Ok(()) };
    if info.ack_pending > 0 && info.ack_floor_stream_seq >= info.delivered_stream_seq {
        let reason = format!(
            "the server holds {} messages pending below its own ack floor ({}), redelivering them for ever; \
             recreating the durable from the committed checkpoint",
            info.ack_pending, info.ack_floor_stream_seq
        );
        tracing::warn!(durable = %state.spec.durable, "{reason}");
        return Err(reason.into());
    }
    Ok(())
}

/// What a consumer is started with.
pub struct ConsumerArgs<E> {
    /// The connection.
    pub bus: Bus,
    /// The consuming context, e.g. `baskets` (names its dead-letter stream).
    pub context: &'static str,
    /// The durable consumer.
    pub spec: DurableSpec,
    /// The context's writer, which applies batches.
    pub writer: Arc<dyn WriterPort<E>>,
    /// Where it counts.
    pub stats: Arc<ConsumerStats>,
    /// Injected failures.
    pub faults: Arc<Faults>,
    /// Outlives restarts: which batch killed the cache.
    pub guard: Arc<PoisonGuard>,
    /// How often one event alone may kill the cache before it is dead-lettered.
    pub poison_threshold: u32,
    /// Outlives restarts: an operator's pause and pending seek or skip.
    pub control: Arc<crate::offsets::ConsumerControl>,
}

/// The consumer actor's only message: take the next batch.
pub enum ConsumerMsg {
    /// Pull, apply and ack one batch, then poll again.
    Poll,
}

/// Consumes events of type `E` for one context.
pub struct EventConsumer<E>(PhantomData<fn() -> E>);

impl<E> Default for EventConsumer<E> {
    fn default() -> Self {
        EventConsumer(PhantomData)
    }
}

/// A decoded batch in hand: just pulled, or kept for another try (its commit failed, or it
/// waits for the holder's effect).
pub(crate) struct Pending<E> {
    deliveries: Vec<Delivery>,
    poison: Vec<usize>,
    batch: Vec<Inbound<E>>,
}

/// The consumer's state.
pub struct ConsumerState<E> {
    bus: Bus,
    context: &'static str,
    spec: DurableSpec,
    /// The pull subscription; `None` while paused.
    consumer: Option<DurableConsumer>,
    control: Arc<crate::offsets::ConsumerControl>,
    writer: Arc<dyn WriterPort<E>>,
    stats: Arc<ConsumerStats>,
    faults: Arc<Faults>,
    guard: Arc<PoisonGuard>,
    poison_threshold: u32,
    pending: Option<Pending<E>>,
    failures: u32,
    /// Tries of the held batch so far (a standby waiting for the holder's effect).
    held: u32,
    /// When the server's view of this consumer was last checked for stuck messages.
    checked: std::time::Instant,
}

impl<E: DomainEvent> Actor for EventConsumer<E> {
    type Msg = ConsumerMsg;
    type State = ConsumerState<E>;
    type Arguments = ConsumerArgs<E>;

    async fn pre_start(
        &self,
        myself: ActorRef<ConsumerMsg>,
        args: ConsumerArgs<E>,
    ) -> Result<ConsumerState<E>, ActorProcessingErr> {
        if Faults::take(&args.faults.consumer_start_failures) {
            return Err("injected: the consumer could not start".into());
        }
        args.guard.on_start();
        args.control.set_released(args.control.holds_back());
        let consumer = if args.control.holds_back() {
            None
        } else {
            let checkpoint = read_checkpoint(&args.writer, &args.spec.durable).await?;
            // Where it stands from the start, before its first ack.
            args.stats.acked_stream_seq.fetch_max(checkpoint, Ordering::Relaxed);
            match args.bus.durable(&args.spec, checkpoint).await {
                Ok(consumer) => {
                    noticed_position(&args.spec.durable, &consumer, &args.stats, &args.control, &*args.writer);
                    Some(consumer)
                }
                // A server that has just restarted may still be recovering its streams (2.14
                // answers "timed out" for a while): the polls try again, rather than fail the
                // whole start.
                Err(error) => {
                    tracing::warn!(consumer = %args.spec.durable, %error, "the durable is not there yet; trying again");
                    None
                }
            }
        };
        myself.send_message(ConsumerMsg::Poll)?;
        Ok(ConsumerState {
            bus: args.bus,
            context: args.context,
            spec: args.spec,
            consumer,
            control: args.control,
            writer: args.writer,
            stats: args.stats,
            faults: args.faults,
            guard: args.guard,
            poison_threshold: args.poison_threshold.max(1),
            pending: None,
            failures: 0,
            held: 0,
            checked: std::time::Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ConsumerMsg>,
        _msg: ConsumerMsg,
        state: &mut ConsumerState<E>,
    ) -> Result<(), ActorProcessingErr> {
        // A batch held for the holder's effect (a standby) gives way to an operator's pause, seek
        // or skip: nothing of it was kept, and the consumer starts again from its checkpoint
        // (released, or recreated there), so no later ack can cover it.
        if state.held > 0 && state.pending.is_some() && (state.control.holds_back() || state.control.has_request()) {
            state.pending = None;
            state.held = 0;
        }
        // A batch in hand (its commit failed, or it waits for the holder's effect) goes first;
        // else, between batches, an operator's request, a pause, or the next pull.
        let pending = match state.pending.take() {
            Some(pending) => pending,
            None => match between_batches(&myself, state).await? {
                Some(pending) => pending,
                None => return Ok(()),
            },
        };
        apply_and_ack(&myself, state, pending).await
    }
}

/// Between batches, and only then: carries out an operator's seek or skip, lets go of the pull
/// subscription while held back (paused, fenced, a full sync) and takes it again from the
/// checkpoint afterwards, or pulls and decodes the next batch. `None` when there is no batch to
/// apply now (the next poll is scheduled).
async fn between_batches<E: DomainEvent>(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState<E>,
) -> Result<Option<Pending<E>>, ActorProcessingErr> {
    // Between batches, and only then, an operator's request or pause takes effect.
    if let Some((change, reply)) = state.control.take() {
        let result = match state.control.fence_reason() {
            Some(reason) => Err(crate::offsets::RepositionError::Fenced(reason)),
            None => reposition(state, change).await,
        };
        if let Err(error) = &result {
            tracing::warn!(consumer = %state.spec.durable, %error, "seek or skip refused or failed");
        }
        let _ = reply.send(result);
        myself.send_message(ConsumerMsg::Poll)?;
        return Ok(None);
    }
    let paused = state.control.holds_back();
    if paused && state.consumer.is_some() {
        // Let go of the pull subscription: nothing delivered, pending or redelivered.
        state.consumer = None;
        state.control.set_released(true);
        tracing::warn!(consumer = %state.spec.durable, "held back (paused by an operator, its context fenced, or a full sync)");
    } else if !paused && state.consumer.is_none() {
        let checkpoint = read_checkpoint(&state.writer, &state.spec.durable).await?;
        let consumer = match state.bus.durable(&state.spec, checkpoint).await {
            Ok(consumer) => consumer,
            Err(error) => {
                // Tried again each second; the lag shows on the dashboard meanwhile.
                tracing::debug!(consumer = %state.spec.durable, %error, "the durable is not there yet");
                myself.send_after(DURABLE_RETRY, || ConsumerMsg::Poll);
                return Ok(None);
            }
        };
        noticed_position(&state.spec.durable, &consumer, &state.stats, &state.control, &*state.writer);
        state.consumer = Some(consumer);
        // A full sync may have moved the checkpoint while it was held back.
        state.stats.acked_stream_seq.fetch_max(checkpoint, Ordering::Relaxed);
        state.control.set_released(false);
        tracing::warn!(consumer = %state.spec.durable, from = checkpoint + 1, "resumed");
    }
    let Some(consumer) = state.consumer.as_mut() else {
        myself.send_after(POLL_WAIT, || ConsumerMsg::Poll);
        return Ok(None);
    };
    let deliveries = consumer.next_batch(POLL_WAIT).await?;
    if deliveries.is_empty() {
        if state.checked.elapsed() >= STUCK_CHECK_EVERY {
            state.checked = std::time::Instant::now();
            check_not_stuck::<E>(state).await?;
        }
        myself.send_message(ConsumerMsg::Poll)?;
        return Ok(None);
    }
    state.stats.delivered.fetch_add(deliveries.len() as u64, Ordering::Relaxed);
    let (poison, batch) = decode_batch(state, &deliveries).await?;
    Ok(Some(Pending { deliveries, poison, batch }))
}

/// Applies a decoded batch on the writer and, once it is committed, settles its deliveries: the
/// dead-lettered ones terminated, the rest acknowledged with one ack. A refused event is
/// dead-lettered and the rest applied again; a batch held for the holder's effect, or whose
/// commit failed, is kept for the next poll (nothing acknowledged).
async fn apply_and_ack<E: DomainEvent>(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState<E>,
    Pending { deliveries, mut poison, batch }: Pending<E>,
) -> Result<(), ActorProcessingErr> {
    // The checkpoint covers the whole batch, dead letters included, so a restart redoes none.
    let through = deliveries.last().map(|d| d.stream_seq).unwrap_or(0);
    let range = (batch.first().map(|i| i.stream_seq), batch.last().map(|i| i.stream_seq));
    let suspect = matches!(range, (Some(first), Some(last)) if state.guard.suspect(first, last));
    if suspect {
        if let Some(rest) = apply_one_by_one(state, &deliveries, &mut poison, batch).await? {
            hold(state, &deliveries).await;
            state.pending = Some(Pending { deliveries, poison, batch: rest });
            myself.send_after(FOLLOW_RETRY, || ConsumerMsg::Poll);
            return Ok(());
        }
        if !poison.is_empty() {
            if let Err(ApplyFailed { error, .. }) = apply(state, Vec::new(), through).await? {
                return Err(format!("commit failed while recording dead letters: {error}").into());
            }
        }
    } else if !batch.is_empty() || !poison.is_empty() {
        match apply(state, batch, through).await? {
            Ok(()) => {}
            Err(ApplyFailed { error: StorageError::Rejected { stream_seq, reason }, batch })
                if deliveries.iter().any(|d| d.stream_seq == stream_seq) =>
            {
                // The reaction refused this event for good: dead-letter it, then apply the
                // rest of the batch (the checkpoint still covers it, so it is never redone).
                let index = deliveries.iter().position(|d| d.stream_seq == stream_seq).unwrap_or(0);
                tracing::warn!(consumer = state.spec.durable, stream.seq = stream_seq, %reason, "a reaction refused an event; dead-lettering it");
                state.bus.dead_letter(state.context, &deliveries[index], "rejected", &reason).await?;
                state.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                if let Some(metrics) = crate::metrics::get() {
                    if let Some(refused) = batch.iter().find(|i| i.stream_seq == stream_seq) {
                        metrics.record_dead_letter(state.context, refused.decoded.event.event_type());
                    }
                }
                poison.push(index);
                let batch = batch.into_iter().filter(|i| i.stream_seq != stream_seq).collect();
                state.pending = Some(Pending { deliveries, poison, batch });
                myself.send_message(ConsumerMsg::Poll)?;
                return Ok(());
            }
            Err(ApplyFailed { error: StorageError::NotYetFollowed { stream_seq }, batch }) => {
                // A standby's reaction that would emit: the holder may have emitted it. Try
                // again once the follower has caught up (or this instance holds the context);
                // not a failure.
                tracing::debug!(
                    consumer = state.spec.durable,
                    stream.seq = stream_seq,
                    "waiting for the holder's effect to be followed"
                );
                hold(state, &deliveries).await;
                state.pending = Some(Pending { deliveries, poison, batch });
                myself.send_after(FOLLOW_RETRY, || ConsumerMsg::Poll);
                return Ok(());
            }
            Err(ApplyFailed { error, batch }) => {
                state.failures += 1;
                state.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                state.stats.failing_commits.fetch_add(1, Ordering::Relaxed);
                let delay =
                    Duration::from_millis(50u64.saturating_mul(1 << state.failures.min(7))).min(Duration::from_secs(5));
                tracing::warn!(consumer = state.spec.durable, %error, retry_in_ms = delay.as_millis() as u64, "commit failed; nothing acked; retrying the same batch");
                // Keep the server from redelivering the batch while we retry it ourselves.
                for d in &deliveries {
                    let _ = d.in_progress().await;
                }
                state.pending = Some(Pending { deliveries, poison, batch });
                myself.send_after(delay, || ConsumerMsg::Poll);
                return Ok(());
            }
        }
    }
    state.failures = 0;
    state.held = 0;
    if Faults::take(&state.faults.consumer_crash_after_commit) {
        return Err("injected crash after commit, before ack".into());
    }

    // Only now, with the batch committed, may anything be acknowledged: under AckPolicy::All a
    // Term or Ack covers every earlier delivery too.
    for index in &poison {
        deliveries[*index].term().await?;
    }
    let last_good = (0..deliveries.len()).rev().find(|i| !poison.contains(i));
    if let Some(index) = last_good {
        if Faults::take(&state.faults.consumer_lost_acks) {
            tracing::warn!(consumer = state.spec.durable, "injected: ack lost");
        } else {
            deliveries[index].ack().await?;
        }
    }
    if let Some(last) = deliveries.last() {
        state.stats.acked_stream_seq.store(last.stream_seq, Ordering::Relaxed);
        state.stats.acked.notify_waiters();
        state.guard.forget_through(last.stream_seq);
    }
    myself.send_message(ConsumerMsg::Poll)?;
    Ok(())
}
