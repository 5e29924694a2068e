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

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use carrier_messages::{Decoded, DomainEvent};
use carrier_storage::{BatchOutcome, Inbound, StorageError};

use crate::bus::{Bus, Delivery, DurableConsumer, DurableSpec};
use crate::faults::Faults;

/// How long one poll waits for the first message before checking its mailbox again.
const POLL_WAIT: Duration = Duration::from_millis(250);
/// How soon a durable that could not be made (the server recovering its streams) is tried again.
const DURABLE_RETRY: Duration = Duration::from_secs(1);
/// How often a standby tries again a batch whose reaction waits for the holder's effect.
const FOLLOW_RETRY: Duration = Duration::from_millis(250);

/// Counts one try of a batch held for the holder's effect, and tells the server now and then
/// (three times per ack wait) that its messages are still being worked on, not at every try.
async fn hold<E: DomainEvent>(state: &mut ConsumerState<E>, deliveries: &[Delivery]) {
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
const STUCK_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Fails the consumer (its supervisor restarts it, and the restart recreates the durable from
/// the committed checkpoint, see [`crate::bus::Bus::durable`]) when the server counts messages
/// as pending although its own ack floor is past everything it delivered. nats-server 2.9.10
/// was seen in that state after being SIGKILLed mid-stream: 128 messages pending below the ack
/// floor, redelivered every ack wait as duplicates and never cleared, since the server ignores
/// acks below its floor. Nothing is lost by recreating: the checkpoint is committed, and the
/// inbox drops what is delivered again.
async fn check_not_stuck<E: DomainEvent>(state: &ConsumerState<E>) -> Result<(), ActorProcessingErr> {
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
struct GuardInner {
    in_flight: Option<(u64, u64)>,
    strikes: Vec<((u64, u64), u32)>,
}

impl PoisonGuard {
    fn with<T>(&self, f: impl FnOnce(&mut GuardInner) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut inner)
    }

    /// A new incarnation starts: whatever was in flight killed the last one.
    fn on_start(&self) {
        self.with(|g| {
            if let Some(range) = g.in_flight.take() {
                match g.strikes.iter_mut().find(|(r, _)| *r == range) {
                    Some((_, n)) => *n += 1,
                    None => g.strikes.push((range, 1)),
                }
            }
        });
    }

    fn begin(&self, range: (u64, u64)) {
        self.with(|g| g.in_flight = Some(range));
    }

    fn end(&self) {
        self.with(|g| g.in_flight = None);
    }

    /// Whether a batch over these stream sequences overlaps one that killed the cache.
    fn suspect(&self, first: u64, last: u64) -> bool {
        self.with(|g| g.strikes.iter().any(|((a, b), _)| *a <= last && first <= *b))
    }

    /// How often the event at `seq`, alone, killed the cache.
    fn solo_failures(&self, seq: u64) -> u32 {
        self.with(|g| g.strikes.iter().find(|(r, _)| *r == (seq, seq)).map(|(_, n)| *n).unwrap_or(0))
    }

    /// Everything through `seq` is settled.
    fn forget_through(&self, seq: u64) {
        self.with(|g| g.strikes.retain(|((_, last), _)| *last > seq));
    }
}

/// A batch whose transaction did not commit.
pub struct ApplyFailed<E> {
    /// Why.
    pub error: StorageError,
    /// The batch, untouched, for the retry.
    pub batch: Vec<Inbound<E>>,
}

/// Counters a consumer keeps; shared with whoever reports on it.
#[derive(Default, Debug)]
pub struct ConsumerStats {
    /// Messages delivered to it.
    pub delivered: AtomicU64,
    /// Events whose effect was applied (parked ones once their gap closed).
    pub applied: AtomicU64,
    /// Events skipped because their id was in the inbox.
    pub duplicates: AtomicU64,
    /// Events skipped because their entity was already newer.
    pub stale: AtomicU64,
    /// Events parked behind a missing version.
    pub parked: AtomicU64,
    /// Messages sent to the dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Committed batches.
    pub batches: AtomicU64,
    /// Commits that failed and were retried.
    pub commit_failures: AtomicU64,
    /// Tries of a batch held back because a reaction in it would emit while the context is
    /// fenced or stands by (it waits for the holder's effect to be followed, or for the lease).
    pub held_for_holder: AtomicU64,
    /// Failed commits since the last one that succeeded (0 when storage is healthy).
    pub failing_commits: AtomicU64,
    /// The last stream sequence acknowledged.
    pub acked_stream_seq: AtomicU64,
    /// Woken (every waiter) each time `acked_stream_seq` moves, so that a reader can wait for
    /// a position without polling: create the `notified()` future, enable it, then read.
    pub acked: tokio::sync::Notify,
    /// How often the stream no longer held this consumer's position when it was (re)made.
    pub positions_lost: AtomicU64,
    /// The last time it did: the first sequence asked for and the first the stream retained.
    pub position_lost: std::sync::Mutex<Option<PositionLost>>,
}

/// The stream had dropped events (by its limits or a purge) before a consumer read them:
/// JetStream then starts it at its first retained sequence without a word, so Carrier compares
/// the two itself whenever it makes a consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PositionLost {
    /// The first sequence the consumer was asked to start at (its checkpoint + 1).
    pub requested: u64,
    /// The first sequence the stream still held.
    pub first_retained: u64,
    /// When it was found, Unix ms.
    pub at_unix_ms: u64,
}

impl ConsumerStats {
    fn record(&self, outcome: &BatchOutcome) {
        use carrier_storage::Disposition as D;
        let mut counts = [0u64; 4];
        for d in &outcome.dispositions {
            let slot = match d {
                // Its effect is in the file, followed from the context's own stream.
                D::Applied | D::Followed => 0,
                D::Duplicate => 1,
                D::Stale { .. } => 2,
                D::Parked { .. } => 3,
            };
            counts[slot] += 1;
        }
        self.applied.fetch_add(counts[0] + outcome.unparked, Ordering::Relaxed);
        self.duplicates.fetch_add(counts[1], Ordering::Relaxed);
        self.stale.fetch_add(counts[2], Ordering::Relaxed);
        self.parked.fetch_add(counts[3], Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }
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

/// A batch waiting for a retried commit.
struct Retry<E> {
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
    retry: Option<Retry<E>>,
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
            retry: None,
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
        if state.held > 0 && state.retry.is_some() && (state.control.holds_back() || state.control.has_request()) {
            state.retry = None;
            state.held = 0;
        }
        let Retry { deliveries, mut poison, batch } = match state.retry.take() {
            Some(retry) => retry,
            None => {
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
                    return Ok(());
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
                            return Ok(());
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
                    return Ok(());
                };
                let deliveries = consumer.next_batch(POLL_WAIT).await?;
                if deliveries.is_empty() {
                    if state.checked.elapsed() >= STUCK_CHECK_EVERY {
                        state.checked = std::time::Instant::now();
                        check_not_stuck::<E>(state).await?;
                    }
                    myself.send_message(ConsumerMsg::Poll)?;
                    return Ok(());
                }
                state.stats.delivered.fetch_add(deliveries.len() as u64, Ordering::Relaxed);
                decode_batch(state, &deliveries).await.map(|(poison, batch)| Retry { deliveries, poison, batch })?
            }
        };

        // The checkpoint covers the whole batch, dead letters included, so a restart redoes none.
        let through = deliveries.last().map(|d| d.stream_seq).unwrap_or(0);
        let range = (batch.first().map(|i| i.stream_seq), batch.last().map(|i| i.stream_seq));
        let suspect = matches!(range, (Some(first), Some(last)) if state.guard.suspect(first, last));
        if suspect {
            if let Some(rest) = apply_one_by_one(state, &deliveries, &mut poison, batch).await? {
                hold(state, &deliveries).await;
                state.retry = Some(Retry { deliveries, poison, batch: rest });
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
                    state.retry = Some(Retry { deliveries, poison, batch });
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
                    state.retry = Some(Retry { deliveries, poison, batch });
                    myself.send_after(FOLLOW_RETRY, || ConsumerMsg::Poll);
                    return Ok(());
                }
                Err(ApplyFailed { error, batch }) => {
                    state.failures += 1;
                    state.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                    state.stats.failing_commits.fetch_add(1, Ordering::Relaxed);
                    let delay = Duration::from_millis(50u64.saturating_mul(1 << state.failures.min(7)))
                        .min(Duration::from_secs(5));
                    tracing::warn!(consumer = state.spec.durable, %error, retry_in_ms = delay.as_millis() as u64, "commit failed; nothing acked; retrying the same batch");
                    // Keep the server from redelivering the batch while we retry it ourselves.
                    for d in &deliveries {
                        let _ = d.in_progress().await;
                    }
                    state.retry = Some(Retry { deliveries, poison, batch });
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
}

/// Records, logs and reports a consumer made where its stream no longer holds its position.
fn noticed_position<E: 'static>(
    durable: &str,
    consumer: &DurableConsumer,
    stats: &ConsumerStats,
    control: &crate::offsets::ConsumerControl,
    writer: &dyn WriterPort<E>,
) {
    let Some((requested, first_retained)) = consumer.trimmed() else { return };
    let at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let lost = PositionLost { requested, first_retained, at_unix_ms };
    stats.positions_lost.fetch_add(1, Ordering::Relaxed);
    *stats.position_lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(lost);
    match writer.resyncs() {
        true => {
            tracing::warn!(consumer = %durable, requested, first_retained,
                "the stream no longer holds this consumer's position: a full sync from the owner follows");
            // Nothing is applied past the hole until the sync has filled it.
            control.set_position_lost(true);
            writer.position_lost(lost);
        }
        false => tracing::error!(consumer = %durable, requested, first_retained,
            "the stream no longer holds this consumer's position: events {requested}..{} were dropped before this \
             cache applied them; rebuild it or declare it resyncs from its owner", first_retained - 1),
    }
}

async fn read_checkpoint<E: 'static>(
    writer: &Arc<dyn WriterPort<E>>,
    durable: &str,
) -> Result<u64, ActorProcessingErr> {
    let (writer, durable) = (writer.clone(), durable.to_string());
    Ok(tokio::task::spawn_blocking(move || writer.checkpoint(&durable)).await??)
}

/// Carries out a seek or skip (see [`crate::offsets`]): works out the new position, has the
/// cache actor set the checkpoint to it, and recreates the durable there.
async fn reposition<E: DomainEvent>(
    state: &mut ConsumerState<E>,
    change: crate::offsets::Reposition,
) -> Result<crate::offsets::Repositioned, crate::offsets::RepositionError> {
    use crate::offsets::{Reposition, RepositionError, SeekTo, SkippedEvent};
    let storage = |e: ActorProcessingErr| RepositionError::Storage(e.to_string());
    let durable = state.spec.durable.clone();
    let checkpoint = read_checkpoint(&state.writer, &durable).await.map_err(storage)?;
    let (first_retained, last_seq) = state.bus.stream_bounds(&state.spec.stream).await?;
    let mut skipped = Vec::new();
    let new_checkpoint = match change {
        Reposition::Seek(SeekTo::Sequence(0)) => return Err(RepositionError::ZeroSequence),
        Reposition::Seek(SeekTo::Sequence(seq)) if seq > last_seq + 1 => {
            return Err(RepositionError::BeyondEnd {
                stream: state.spec.stream.clone(),
                requested: seq,
                last: last_seq,
            })
        }
        Reposition::Seek(SeekTo::Sequence(seq)) => seq - 1,
        Reposition::Seek(SeekTo::Time(at)) => {
            match state.bus.first_sequence_at(&state.spec.stream, &state.spec.filter_subject, at).await? {
                Some(seq) => seq - 1,
                None => last_seq,
            }
        }
        Reposition::Skip { count } if count == 0 || count > crate::offsets::MAX_SKIP => {
            return Err(RepositionError::Count(count))
        }
        Reposition::Skip { count } => {
            let mut reader = state
                .bus
                .replay(&state.spec.stream, &state.spec.filter_subject, checkpoint + 1, count as usize)
                .await?;
            let mut through = checkpoint;
            while skipped.len() < count as usize && through < last_seq {
                let batch = reader.next_batch(Duration::from_secs(2)).await?;
                if batch.is_empty() {
                    break;
                }
                for delivery in batch.iter().take(count as usize - skipped.len()) {
                    state
                        .bus
                        .dead_letter(
                            state.context,
                            delivery,
                            "skipped",
                            "skipped by an operator (carrier consumer skip)",
                        )
                        .await?;
                    state.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    skipped.push(SkippedEvent { stream_seq: delivery.stream_seq, subject: delivery.subject.clone() });
                    through = delivery.stream_seq;
                }
            }
            if skipped.is_empty() {
                return Err(RepositionError::NothingToSkip { durable, next: checkpoint + 1 });
            }
            through
        }
    };
    // The checkpoint first: a crash after it recreates the durable from it on restart.
    let (tx, rx) = ractor::concurrency::oneshot();
    let message = ApplyBatch {
        consumer: durable.clone(),
        batch: Vec::new(),
        through: new_checkpoint,
        reposition: true,
        reply: tx.into(),
    };
    if !state.writer.apply(message) {
        return Err(RepositionError::Storage("the cache actor is not running".into()));
    }
    match rx.await {
        Ok(Ok(_)) => {}
        Ok(Err(ApplyFailed { error, .. })) => return Err(RepositionError::Storage(error.to_string())),
        Err(_) => return Err(RepositionError::Storage("the cache actor stopped before answering".into())),
    }
    state.consumer = None;
    state.bus.delete_consumer(&state.spec.stream, &durable).await?;
    if !state.control.holds_back() {
        state.consumer = Some(state.bus.durable(&state.spec, new_checkpoint).await?);
    }
    state.stats.acked_stream_seq.store(new_checkpoint, Ordering::Relaxed);
    state.stats.acked.notify_waiters();
    tracing::warn!(
        consumer = %durable,
        from = checkpoint + 1,
        to = new_checkpoint + 1,
        skipped = skipped.len(),
        "position moved by an operator"
    );
    Ok(crate::offsets::Repositioned {
        durable,
        from: checkpoint + 1,
        to: new_checkpoint + 1,
        first_retained,
        last_seq,
        skipped,
    })
}

/// Hands a batch to the cache actor and waits for its commit. `Err` when the actor died with it
/// (the guard then remembers the batch); `Ok(Err)` when the commit failed (storage).
async fn apply<E: DomainEvent>(
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
type TracedEvent = (carrier_messages::Envelope, u64, &'static str);

/// One consumer span per event of a committed batch: a child of the span that produced the event,
/// with the id the event's reactions already name as their parent.
fn record_spans(
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
async fn apply_one_by_one<E: DomainEvent>(
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

/// Decodes a batch; copies what cannot decode to the dead-letter stream. Returns the positions of
/// those poison deliveries and the decoded events.
async fn decode_batch<E: DomainEvent>(
    state: &ConsumerState<E>,
    deliveries: &[Delivery],
) -> Result<(Vec<usize>, Vec<Inbound<E>>), ActorProcessingErr> {
    let mut poison = Vec::new();
    let mut batch = Vec::with_capacity(deliveries.len());
    for (index, d) in deliveries.iter().enumerate() {
        // A message holds one event, or one command's several (an event store's commit): they
        // share its stream sequence and are applied in order, in the batch's transaction.
        match Decoded::<E>::decode_all(&d.subject, |name| d.header(name), &d.payload) {
            Ok(events) => batch.extend(events.into_iter().map(|decoded| Inbound { stream_seq: d.stream_seq, decoded })),
            Err(error) => {
                tracing::warn!(
                    context = state.context,
                    stream.seq = d.stream_seq,
                    subject = %d.subject,
                    reason = error.code(),
                    %error,
                    "dead-lettering an event that cannot be applied"
                );
                state.bus.dead_letter(state.context, d, error.code(), &error.to_string()).await?;
                state.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                if let Some(metrics) = crate::metrics::get() {
                    metrics.record_dead_letter(state.context, "undecodable");
                }
                poison.push(index);
            }
        }
    }
    Ok((poison, batch))
}
