//! What the rest of the process may use of a running context: [`ContextHandle`].

use std::sync::Arc;
use std::time::Duration;

use carrier_messages::Causality;
use carrier_messages::{Decoded, DomainEvent};
use carrier_storage::{
    CommandError, ContextFile, ContextKind, Decided, Decides, FileWriter, IdempotencyKey, StorageError,
};

use crate::consumer::ConsumerStats;
use crate::fallback::Fallback;
use crate::flow;
use crate::supervisor::ActorSlot;

use super::*;

/// Why a lookup found no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The cache missed and the owner could not be asked.
    #[error(transparent)]
    Fallback(#[from] crate::fallback::FallbackError),
    /// The cache could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The cache actor is not running.
    #[error("the cache is not running")]
    Unavailable,
    /// The context keeps no cache of that owner's entities (it is not declared with
    /// [`caches`](crate::context::ContextDecl::caches)).
    #[error("{context} caches no entities of {owner}: declare it with .caches::<E>()")]
    NotCached {
        /// The context looked up in.
        context: &'static str,
        /// The owner asked for.
        owner: &'static str,
    },
}

/// How long a command of a context with a standby waits for its event to be published before
/// it is answered `unavailable` (see [`ContextHandle::decide_once`]).
pub const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// A command decided and committed whose event was not published in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "{context} decided the command (event {event_id}) but could not publish it within {PUBLISH_WAIT:?}; it is \
     published when NATS answers unless another instance takes the context over first: resend it with the same \
     Idempotency-Key to learn which"
)]

pub struct NotYetPublished {
    /// The context.
    pub context: &'static str,
    /// The decided event's id.
    pub event_id: String,
}

/// Why a command sent through a [`ContextHandle`] got no answer from the context.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The command was refused or failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The writer is down (restarting, or the context failed), or stopped while the command
    /// was in flight (it may or may not have been recorded; commands carry their ids so that a
    /// retry is safe).
    #[error(transparent)]
    Unavailable(#[from] LookupError),
}

impl From<ExecuteError> for CommandError {
    fn from(error: ExecuteError) -> CommandError {
        match error {
            ExecuteError::Command(e) => e,
            ExecuteError::Unavailable(e) => CommandError::unavailable(e),
        }
    }
}

/// A lookup that failed inside a command: the command cannot be decided now (`unavailable`),
/// so that a command written with `handle.lookup(..).await?` answers the caller to retry.
impl From<LookupError> for CommandError {
    fn from(error: LookupError) -> CommandError {
        CommandError::unavailable(error)
    }
}

/// What the rest of the process may use of a running context: reads of its file, lookups, and
/// writes that run on its one writer.
pub struct ContextHandle<K: ContextKind> {
    /// Its file, for reading.
    pub db: Arc<ContextFile<K>>,
    /// Each consumer's counters, by the stream's owning context (`stores`, `ordering`, ...).
    pub consumers: Vec<(&'static str, Arc<ConsumerStats>)>,
    /// Fallbacks to owners' entity endpoints, one per owner whose entities it caches.
    pub entity_fallbacks: Vec<Arc<Fallback>>,
    /// Each consumer: stream, durable and counters, for the dashboard.
    pub(crate) probes: Vec<crate::observe::ConsumerProbe>,
    /// Cache lookups answered from the file, and those that were not.
    pub(crate) lookups: Arc<crate::observe::LookupStats>,
    /// Its caches of owners' data and how to refill them from the streams.
    pub(crate) cache_sources: Vec<crate::rebuild::CacheSource<K>>,
    pub(crate) writer: ActorSlot<WriterMsg<K>>,
    pub(crate) decisions: Arc<DecisionQueue<K>>,
    /// Set while this instance may not hold the context's lease: commands are refused.
    pub(crate) fence: Arc<crate::fence::Fence>,
    /// The owners it resyncs from (see [`crate::resync`]).
    pub(crate) resync_sources: Vec<ResyncSource<K>>,
    /// Its full syncs' status.
    pub(crate) resync: Arc<crate::resync::ResyncState>,
    /// What its outbox relay published lately.
    pub(crate) published: Arc<crate::relay::Published>,
    /// Whether a command is answered only once its event is published: set while another
    /// instance stands by for the context, whose state after a takeover is what was published.
    pub(crate) answers_when_published: Arc<std::sync::atomic::AtomicBool>,
}

impl<K: ContextKind> Clone for ContextHandle<K> {
    fn clone(&self) -> Self {
        ContextHandle {
            db: self.db.clone(),
            consumers: self.consumers.clone(),
            entity_fallbacks: self.entity_fallbacks.clone(),
            probes: self.probes.clone(),
            lookups: self.lookups.clone(),
            cache_sources: self.cache_sources.clone(),
            writer: self.writer.clone(),
            decisions: self.decisions.clone(),
            fence: self.fence.clone(),
            resync_sources: self.resync_sources.clone(),
            resync: self.resync.clone(),
            published: self.published.clone(),
            answers_when_published: self.answers_when_published.clone(),
        }
    }
}

impl<K: ContextKind> ContextHandle<K> {
    /// How far it has applied `stream`: the last sequence committed and acknowledged (`None`
    /// when it does not read that stream).
    pub fn applied(&self, stream: &str) -> Option<u64> {
        self.probes
            .iter()
            .find(|p| p.stream == stream)
            .map(|p| p.stats.acked_stream_seq.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Waits until it has applied `position`'s stream through its sequence, at most `timeout`:
    /// read your writes, with a command's [`Position`](crate::Position).
    pub async fn wait_for_position(
        &self,
        position: &crate::Position,
        timeout: std::time::Duration,
    ) -> Result<(), crate::PositionWait> {
        let Some(probe) = self.probes.iter().find(|p| p.stream == position.stream) else {
            return Err(crate::PositionWait::NotRead { context: K::NAME, stream: position.stream.clone() });
        };
        let stats = &probe.stats;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = stats.acked.notified();
            let applied = stats.acked_stream_seq.load(std::sync::atomic::Ordering::Relaxed);
            if applied >= position.seq {
                return Ok(());
            }
            // A full sync or an operator's seek moves the position without a batch: look again
            // at least every 50 ms.
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(crate::PositionWait::Behind { applied, wanted: position.seq, waited: timeout });
            }
            let _ = tokio::time::timeout((deadline - now).min(std::time::Duration::from_millis(50)), notified).await;
        }
    }

    /// The fallback to `owner`'s entity endpoint, when it caches that owner's entities.
    pub fn fallback(&self, owner: &str) -> Option<&Arc<Fallback>> {
        self.entity_fallbacks.iter().find(|f| f.owner() == owner)
    }

    /// The counters of the consumer of `source`'s stream.
    pub fn consumer(&self, source: &str) -> Option<Arc<ConsumerStats>> {
        self.consumers.iter().find(|(s, _)| *s == source).map(|(_, c)| c.clone())
    }

    /// Decides `command` with the context's rules ([`Decides`]) on its writer, in one
    /// transaction with the outbox row of the event it records. When `causality` carries an
    /// idempotency key, a command sent before with that key is answered with what it recorded
    /// (see [`execute_once`](Self::execute_once) to tell the two apart).
    pub async fn execute<C: Send + 'static>(
        &self,
        command: C,
        causality: Causality,
    ) -> Result<Decoded<K::Event>, ExecuteError>
    where
        K: Decides<C>,
    {
        Ok(self.execute_once(command, causality).await?.event)
    }

    /// Like [`execute`](Self::execute), saying whether the answer is a replay of an earlier send
    /// with the same idempotency key ([`Decided::replayed`]).
    pub async fn execute_once<C: Send + 'static>(
        &self,
        command: C,
        causality: Causality,
    ) -> Result<Decided<K::Event>, ExecuteError>
    where
        K: Decides<C>,
    {
        let label = format!("{}.{}", flow::capitalize(K::NAME), K::command_name(&command));
        flow::enter(&label);
        let key = causality.idempotency.clone();
        let result = self.decide_once(key, move |txn, emit| K::decide(txn, emit, &command, &causality)).await;
        match &result {
            Ok(Ok(_)) => flow::leave(&label, None),
            Ok(Err(e)) => flow::leave(&label, Some(&e.to_string())),
            Err(e) => flow::leave(&label, Some(&e.to_string())),
        }
        Ok(result??)
    }

    /// Decides a command on the writer: `decision` reads and writes the context's tables in the
    /// transaction and records exactly one event. Commands that arrive together share one
    /// transaction and one commit (group commit, see `DecisionQueue`), so `decision` may run
    /// more than once and must decide the same way on the same state; nothing of a refused
    /// command is kept. Returns the event once it is committed with its outbox row.
    pub async fn decide(
        &self,
        decision: impl FnMut(
                &carrier_storage::WriteTransaction,
                &mut carrier_storage::Emitter<'_, K::Event>,
            ) -> Result<(), CommandError>
            + Send
            + 'static,
    ) -> Result<Result<Decoded<K::Event>, CommandError>, LookupError> {
        Ok(self.decide_once(None, decision).await?.map(|d| d.event))
    }

    /// Like [`decide`](Self::decide), with an idempotency key: a key seen before is answered with
    /// the event its first command recorded, without running `decision`; a key whose command is
    /// still queued or being decided is refused (`idempotency_key_in_flight`).
    ///
    /// While another instance stands by for the context
    /// ([`follows_itself`](crate::context::ContextDecl::follows_itself)), a command is answered
    /// only once the outbox relay has published its event (the answer's `position` says where):
    /// after a takeover the context's state is what was published, so an answer given before
    /// would promise what a takeover can lose. Alone, an instance answers at the commit and
    /// keeps deciding while NATS is away (the events wait in the outbox). Not published within `PUBLISH_WAIT`
    /// (NATS unreachable), the command is answered `unavailable`: it was decided here and will be
    /// published when NATS answers, unless this instance loses the lease first; a resend with
    /// the same idempotency key tells which.
    pub async fn decide_once(
        &self,
        key: Option<IdempotencyKey>,
        decision: impl FnMut(
                &carrier_storage::WriteTransaction,
                &mut carrier_storage::Emitter<'_, K::Event>,
            ) -> Result<(), CommandError>
            + Send
            + 'static,
    ) -> Result<Result<Decided<K::Event>, CommandError>, LookupError> {
        let decided = self.decide_committed(key, Box::new(decision)).await;
        if !self.answers_when_published.load(std::sync::atomic::Ordering::Relaxed) {
            return decided;
        }
        let Ok(Ok(mut decided)) = decided else { return decided };
        if decided.replayed {
            return Ok(Ok(decided));
        }
        let id = decided.event.envelope.event_id.0.as_u128();
        match self.published.wait(id, PUBLISH_WAIT).await {
            Some(seq) => {
                decided.position = Some(format!("{}:{seq}", <K::Event as carrier_messages::DomainEvent>::STREAM));
                Ok(Ok(decided))
            }
            None => Ok(Err(CommandError::unavailable(NotYetPublished {
                context: K::NAME,
                event_id: decided.event.envelope.event_id.to_string(),
            }))),
        }
    }

    /// Decides on the writer and returns once the decision is committed.
    async fn decide_committed(
        &self,
        key: Option<IdempotencyKey>,
        decision: carrier_storage::Decision<K>,
    ) -> Result<Result<Decided<K::Event>, CommandError>, LookupError> {
        if self.fence.is_fenced() {
            let reason = self.fence.reason().unwrap_or_default();
            return Ok(Err(CommandError::unavailable(crate::fence::Fenced { context: K::NAME.to_string(), reason })));
        }
        let key = match key {
            None => None,
            Some(key) => match self.decisions.hold(&key) {
                Ok(held) => Some((key, held)),
                Err(refused) => return Ok(Err(refused)),
            },
        };
        let writer = self.writer.wait(Duration::from_secs(5)).await.ok_or(LookupError::Unavailable)?;
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let id = self.decisions.id();
        if self.decisions.push(QueuedDecision { id, decision, key, reply: tx })
            && writer.send_message(WriterMsg::Decide).is_err()
        {
            // The writer is gone: take the command back, so that "unavailable" means it was not
            // decided (a restarted writer would otherwise decide it after the caller gave up).
            if self.decisions.withdraw(id) {
                return Err(LookupError::Unavailable);
            }
        }
        tokio::select! {
            reply = &mut rx => reply.map_err(|_| LookupError::Unavailable),
            () = tokio::time::sleep(DECIDE_WAIT) => {
                // Still queued after this long: its writer is not coming back for it.
                if self.decisions.withdraw(id) {
                    return Err(LookupError::Unavailable);
                }
                rx.await.map_err(|_| LookupError::Unavailable)
            }
        }
    }

    /// Runs `job` on the writer (the file's only writer) and returns what it returned.
    pub async fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&FileWriter<K>) -> T + Send + 'static,
    ) -> Result<T, LookupError> {
        let writer = self.writer.wait(Duration::from_secs(5)).await.ok_or(LookupError::Unavailable)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        writer
            .send_message(WriterMsg::Run(Box::new(move |db| {
                let _ = tx.send(job(db));
            })))
            .map_err(|_| LookupError::Unavailable)?;
        rx.await.map_err(|_| LookupError::Unavailable)
    }

    /// Keeps delivered batches waiting until the returned guard drops (see
    /// [`WriterMsg::HoldBatches`]).
    pub(crate) async fn hold_batches(&self) -> Result<HeldBatches<K>, LookupError> {
        let writer = self.writer.wait(Duration::from_secs(5)).await.ok_or(LookupError::Unavailable)?;
        writer.send_message(WriterMsg::HoldBatches).map_err(|_| LookupError::Unavailable)?;
        Ok(HeldBatches(writer))
    }

    /// What operators see of this context.
    pub(crate) fn observed(&self, bus: &crate::bus::Bus) -> crate::observe::ObservedContext {
        let rebuild: Option<crate::observe::RebuildFn> = self.has_caches().then(|| {
            let (h, bus) = (self.clone(), bus.clone());
            let f: crate::observe::RebuildFn = Arc::new(move |progress| {
                let (h, bus) = (h.clone(), bus.clone());
                Box::pin(async move { h.rebuild_caches(&bus, progress).await })
            });
            f
        });
        crate::observe::ObservedContext {
            name: K::NAME,
            fence: self.fence.clone(),
            file: Some(self.db.clone()),
            consumers: self.probes.clone(),
            lookups: Some(self.lookups.clone()),
            fallbacks: self.entity_fallbacks.clone(),
            stream: (!<K::Event as DomainEvent>::EVENT_TYPES.is_empty()).then_some(K::Event::STREAM),
            rebuild,
            resync: (!self.resync_sources.is_empty()).then(|| self.resync.clone()),
            dead_letters: !self.probes.is_empty(),
            panels: Vec::new(),
        }
    }
}
