//! The event bus: seed 004's `Publish`, `PublishSync`, `PublishBatch`, `Subscribe`, `Start`,
//! `Stop` and `Wait`, on JetStream, with handlers that run exactly once.
//!
//! A subscription is a durable consumer of one stream (`<bus>-<subscription>`) and a handler
//! typed on the stream's events. Its deliveries go to a bounded pool of workers, each event to
//! the worker its aggregate id hashes to, so one aggregate's events are handled in order and
//! different aggregates in parallel. A handler gets a redb write transaction on the bus's file
//! (`<data dir>/<bus>.bus.redb`): whatever it writes there commits with the record that it
//! handled the event, so a redelivery after a crash finds the record and runs nothing (a
//! handler that appends to a list appends once). Effects outside the file are at least once.
//!
//! A failing handler never fails the publisher: it is retried with exponential backoff, and after
//! `max_attempts` the event goes to the bus's dead-letter stream (`DLQ_<BUS>`, reason
//! `handler_failed`) and the subscription moves on; other subscriptions and aggregates never
//! wait for it. The consumer acknowledges (under `AckPolicy::All`) the highest sequence through
//! which everything was handled, so a crash redelivers only what may not have been.
//!
//! A bus's handlers run on one instance at a time, the one holding its lease (`bus.<name>` in
//! the lease bucket, as a context's): every other instance that starts the bus stands by and
//! takes over when the holder's lease expires (30 s after its last renewal), from the holder's
//! last acknowledgement. What the holder had handled and not yet acknowledged when it died is
//! handled again by the new holder (its records are in the old holder's file): at a takeover,
//! and only then, effects are at least once.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use carrier_messages::{Decoded, DomainEvent};
use carrier_storage::{HandleFailure, Handled, HandlerFile};
use carrier_storage::{StorageError, WriteTransaction};

use crate::bus::{Bus, BusError, Delivery, DurableSpec};
use crate::event_store::Position;

/// How an event bus runs its handlers.
#[derive(Clone, Debug)]
pub struct EventBusSettings {
    /// Its name: durable names (`<name>-<subscription>`), its file and dead-letter stream.
    pub name: String,
    /// Workers per subscription (events of one aggregate always go to the same one).
    pub workers: usize,
    /// Events queued per worker before the subscription stops pulling.
    pub queue: usize,
    /// Attempts of a failing handler before its event is dead-lettered.
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to `backoff_max`.
    pub backoff_min: Duration,
    /// The longest delay between attempts.
    pub backoff_max: Duration,
    /// How long [`EventBus::stop`] waits for handlers in flight.
    pub stop_timeout: Duration,
    /// How long handled records are kept (a redelivery older than this would run again).
    pub retention: Duration,
}

impl EventBusSettings {
    /// The defaults for a bus named `name`: 8 workers, 5 attempts from 100 ms to 5 s apart.
    pub fn named(name: impl Into<String>) -> Self {
        EventBusSettings {
            name: name.into(),
            workers: 8,
            queue: 256,
            max_attempts: 5,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Why a handler did not handle an event; it is retried, then dead-lettered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl HandlerError {
    /// A failure saying `why`.
    pub fn new(why: impl Into<String>) -> Self {
        HandlerError(why.into())
    }
}

impl From<StorageError> for HandlerError {
    fn from(e: StorageError) -> Self {
        HandlerError(e.to_string())
    }
}

/// Why the bus could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EventBusError {
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The bus's file failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A subscription was added after `start`, or twice under one name.
    #[error("{0}")]
    Subscription(String),
    /// The data directory could not be made.
    #[error("event bus file: {0}")]
    Io(String),
    /// An event could not be encoded.
    #[error("cannot encode {0}")]
    Encode(String),
    /// Handlers did not catch up in time.
    #[error("handlers did not catch up within {waited:?}: {behind}")]
    Timeout {
        /// How long it waited.
        waited: Duration,
        /// Which subscriptions were behind, and where they were.
        behind: String,
    },
}

type HandlerFn<E> = Arc<dyn Fn(&Decoded<E>, &WriteTransaction) -> Result<(), HandlerError> + Send + Sync>;
type StartSub = Box<dyn FnOnce(Arc<Shared>) -> Arc<SubState> + Send>;

/// One subscription's progress and counters.
pub struct SubState {
    name: String,
    stream: &'static str,
    progress: Mutex<Progress>,
    moved: Notify,
    /// Events handled now (not duplicates).
    pub handled: AtomicU64,
    /// Redelivered events already handled (nothing ran).
    pub duplicates: AtomicU64,
    /// Failed attempts that were retried.
    pub retries: AtomicU64,
    /// Events dead-lettered.
    pub dead_lettered: AtomicU64,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// When the position was last written to the file (Unix ms).
    position_written_ms: AtomicU64,
}

/// How often a subscription's position is written to the bus's file at most. It only saves
/// redeliveries after acks were lost (the server's ack floor positions a restart otherwise),
/// so a write per handled event would be work on the hot path for nothing.
const POSITION_EVERY: Duration = Duration::from_secs(1);
/// How often a standby tries to take the bus's lease: a takeover comes at most this long after
/// the holder's lease expired (a claim is one KV create, cheap for the server).
const STANDBY_CLAIM_EVERY: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Progress {
    /// Everything through this sequence is handled (or dead-lettered).
    through: u64,
    /// Dispatched, not yet done.
    in_flight: BTreeSet<u64>,
    /// Done, waiting for everything before it to be done, with the delivery to acknowledge.
    done: BTreeMap<u64, Option<Delivery>>,
    /// The highest sequence dispatched.
    dispatched: u64,
}

impl SubState {
    /// The sequence through which everything was handled.
    pub fn handled_through(&self) -> u64 {
        self.progress.lock().map(|p| p.through).unwrap_or(0)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Marks `seq` done; returns the delivery to acknowledge when the low-water mark moved.
    fn finish(&self, seq: u64, delivery: Option<Delivery>) -> Option<(u64, Option<Delivery>)> {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        p.in_flight.remove(&seq);
        p.done.insert(seq, delivery);
        let limit = p.in_flight.first().map(|first| first - 1).unwrap_or(p.dispatched);
        let mut moved = None;
        while let Some(entry) = p.done.first_entry() {
            if *entry.key() > limit {
                break;
            }
            let (s, d) = entry.remove_entry();
            p.through = p.through.max(s);
            moved = Some((s, d));
        }
        drop(p);
        if moved.is_some() {
            self.moved.notify_waiters();
        }
        moved
    }
}

struct Shared {
    bus: Bus,
    file: Arc<HandlerFile>,
    settings: EventBusSettings,
    stopping: AtomicBool,
    data_dir: std::path::PathBuf,
    /// Set while this instance may not hold the bus's lease: subscriptions hold back.
    fence: Arc<crate::fence::Fence>,
    /// `starting`, `active`, or `standby: <holder>`.
    role: Mutex<String>,
}

/// The event bus; see the module. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    shared: Arc<Shared>,
    pending: Arc<Mutex<Vec<(String, (&'static str, &'static str), StartSub)>>>,
    /// Streams known to exist (made if missing on first use).
    ensured: Arc<Mutex<std::collections::HashSet<&'static str>>>,
    subs: Arc<Mutex<Vec<Arc<SubState>>>>,
    /// The bus's lease, once this instance holds it.
    leases: Arc<Mutex<Option<crate::instance::Leases>>>,
    /// The task that waits for the lease and then starts the subscriptions.
    holder: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl EventBus {
    /// Opens the bus `settings.name` on `bus`, with its file in `data_dir`. Subscribe, then
    /// [`start`](Self::start).
    pub async fn open(bus: Bus, data_dir: &Path, settings: EventBusSettings) -> Result<EventBus, EventBusError> {
        std::fs::create_dir_all(data_dir).map_err(|e| EventBusError::Io(format!("{}: {e}", data_dir.display())))?;
        let path = data_dir.join(format!("{}.bus.redb", settings.name));
        let file = tokio::task::spawn_blocking(move || HandlerFile::open(path))
            .await
            .map_err(|e| EventBusError::Io(e.to_string()))??;
        bus.ensure_dead_letter_stream(&settings.name).await?;
        let shared = Arc::new(Shared {
            bus,
            file: Arc::new(file),
            settings,
            stopping: AtomicBool::new(false),
            data_dir: data_dir.to_path_buf(),
            fence: Arc::default(),
            role: Mutex::new("starting".into()),
        });
        Ok(EventBus {
            shared,
            pending: Default::default(),
            subs: Default::default(),
            ensured: Default::default(),
            leases: Default::default(),
            holder: Default::default(),
        })
    }

    /// How many handles to this bus (and so to its file) are alive: a killed system waits until
    /// none is, so that the file can be opened again.
    pub(crate) fn handles(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let shared = Arc::downgrade(&self.shared);
        move || shared.strong_count()
    }

    /// The bus's file, to read what handlers wrote (`Rows::get(&txn, ..)` on [`HandlerFile::read`]).
    pub fn file(&self) -> &HandlerFile {
        &self.shared.file
    }

    /// Subscribes `handler` to every event of `E`'s stream, as subscription `name` (its durable
    /// is `<bus>-<name>`). The handler writes its effects with the transaction it is given; an
    /// `Err` keeps none of them and the event is retried. Call before [`start`](Self::start).
    pub fn subscribe<E: DomainEvent>(
        &self,
        name: &str,
        handler: impl Fn(&Decoded<E>, &WriteTransaction) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> Result<(), EventBusError> {
        let name = name.to_string();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(EventBusError::Subscription(format!(
                "subscription name {name:?} must be letters, digits, '-' or '_'"
            )));
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let taken = pending.iter().any(|(n, _, _)| *n == name)
            || self.subs.lock().map(|s| s.iter().any(|s| s.name == name)).unwrap_or(false);
        if taken {
            return Err(EventBusError::Subscription(format!("{name:?} is subscribed already")));
        }
        if self.shared.stopping.load(Ordering::Relaxed) {
            return Err(EventBusError::Subscription("the bus was stopped".into()));
        }
        let handler: HandlerFn<E> = Arc::new(handler);
        let sub_name = name.clone();
        let start: StartSub = Box::new(move |shared: Arc<Shared>| {
            let state = Arc::new(SubState {
                name: sub_name,
                stream: E::STREAM,
                progress: Mutex::default(),
                moved: Notify::new(),
                handled: AtomicU64::new(0),
                duplicates: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                dead_lettered: AtomicU64::new(0),
                task: Mutex::new(None),
                position_written_ms: AtomicU64::new(0),
            });
            let task = tokio::spawn(run_subscription::<E>(shared, state.clone(), handler));
            *state.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
            state
        });
        pending.push((name, (E::STREAM, E::STREAM_SUBJECTS), start));
        Ok(())
    }

    /// Makes `stream` if it is missing, once per bus.
    async fn ensure(&self, stream: &'static str, subjects: &'static str) -> Result<(), EventBusError> {
        if self.ensured.lock().map(|e| e.contains(stream)).unwrap_or(false) {
            return Ok(());
        }
        self.shared.bus.ensure_stream(stream, subjects).await?;
        self.ensured.lock().unwrap_or_else(|e| e.into_inner()).insert(stream);
        Ok(())
    }

    /// The key of the bus's lease in `LEASE_BUCKET`.
    pub fn lease_key(&self) -> String {
        format!("bus.{}", self.shared.settings.name)
    }

    /// `active` (this instance runs the handlers), `standby: <holder>` (another instance holds
    /// the bus's lease; this one takes over when it expires) or `starting`.
    pub fn role(&self) -> String {
        self.shared.role.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Starts every subscription made so far (and, called again, those made since), making
    /// their streams if they are missing.
    ///
    /// A bus's handlers have effects that must happen once, so they run on one instance at a
    /// time: the one holding the bus's lease (`bus.<name>`, like a context's). Another instance
    /// that starts the same bus stands by (its [`role`](Self::role) says who holds it) and takes
    /// over when the holder's lease expires, resuming where the holder's acknowledgements end.
    /// Returns at once either way.
    pub async fn start(&self) -> Result<(), EventBusError> {
        let pending: Vec<_> = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        // The streams first, so that no borrow of `pending` (whose start functions are `Send` but
        // not `Sync`) is held across an await: `start` is then `Send`, and runs in a context's start.
        let streams: Vec<(&'static str, &'static str)> = pending.iter().map(|(_, stream, _)| *stream).collect();
        for (stream, subjects) in streams {
            self.ensure(stream, subjects).await?;
        }
        let active = self.leases.lock().map(|l| l.is_some()).unwrap_or(false);
        if active {
            self.start_subscriptions(pending);
            return Ok(());
        }
        // The first claim is made here, so that a bus that gets its lease returns with its
        // subscriptions running (publish_sync and wait then mean what they say); a bus in
        // standby keeps trying in the background.
        let mut pending = Some(pending);
        if self.claim(&mut pending).await {
            return Ok(());
        }
        let bus = self.clone();
        let holder = tokio::spawn(async move {
            while !bus.shared.stopping.load(Ordering::Relaxed) {
                tokio::time::sleep(STANDBY_CLAIM_EVERY).await;
                if bus.claim(&mut pending).await {
                    return;
                }
            }
        });
        *self.holder.lock().unwrap_or_else(|e| e.into_inner()) = Some(holder);
        Ok(())
    }

    /// Tries to take the bus's lease; with it, starts `pending` and returns `true`.
    async fn claim(&self, pending: &mut Option<Vec<(String, (&'static str, &'static str), StartSub)>>) -> bool {
        let key = self.lease_key();
        let claim = crate::instance::acquire(
            &self.shared.bus,
            &self.shared.data_dir,
            &[(key.as_str(), self.shared.fence.clone())],
        )
        .await;
        let name = &self.shared.settings.name;
        match claim {
            Ok(leases) => {
                *self.leases.lock().unwrap_or_else(|e| e.into_inner()) = Some(leases);
                *self.shared.role.lock().unwrap_or_else(|e| e.into_inner()) = "active".into();
                tracing::info!(bus = %name, "this instance runs the event bus's handlers");
                self.start_subscriptions(pending.take().unwrap_or_default());
                true
            }
            Err(crate::StartError::AlreadyRunning { holder, .. }) => {
                let role = format!("standby: {holder}");
                let mut current = self.shared.role.lock().unwrap_or_else(|e| e.into_inner());
                if *current != role {
                    tracing::info!(bus = %name, %holder, "another instance runs the event bus's handlers; standing by");
                    *current = role;
                }
                false
            }
            Err(error) => {
                tracing::warn!(bus = %name, %error, "cannot claim the event bus's lease; trying again");
                false
            }
        }
    }

    fn start_subscriptions(&self, pending: Vec<(String, (&'static str, &'static str), StartSub)>) {
        for (_, _, start) in pending {
            let state = start(self.shared.clone());
            self.subs.lock().unwrap_or_else(|e| e.into_inner()).push(state);
        }
    }

    /// Publishes `event` and returns once JetStream stored it (not waiting for any handler).
    pub async fn publish<E: DomainEvent>(&self, event: &Decoded<E>) -> Result<Position, EventBusError> {
        self.ensure(E::STREAM, E::STREAM_SUBJECTS).await?;
        let encoded = event.encode().map_err(|e| EventBusError::Encode(e.to_string()))?;
        let receipt = self.shared.bus.publish(&encoded).await?;
        Ok(Position { stream: E::STREAM.to_string(), seq: receipt.stream_seq })
    }

    /// Publishes `events` pipelined (every publish sent before the first acknowledgement is
    /// awaited); returns their positions, in order, once JetStream stored all of them.
    pub async fn publish_batch<E: DomainEvent>(&self, events: &[Decoded<E>]) -> Result<Vec<Position>, EventBusError> {
        self.ensure(E::STREAM, E::STREAM_SUBJECTS).await?;
        let encoded = events
            .iter()
            .map(|e| e.encode().map_err(|e| EventBusError::Encode(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut positions = Vec::with_capacity(encoded.len());
        for receipt in self.shared.bus.publish_all(&encoded).await {
            positions.push(Position { stream: E::STREAM.to_string(), seq: receipt?.stream_seq });
        }
        Ok(positions)
    }

    /// Publishes `event` and returns once every subscription of this bus on its stream has
    /// handled it (or dead-lettered it), or fails after `timeout` (the event stays published).
    /// On an instance in standby no handler runs here, and it returns once the event is stored.
    pub async fn publish_sync<E: DomainEvent>(
        &self,
        event: &Decoded<E>,
        timeout: Duration,
    ) -> Result<Position, EventBusError> {
        let position = self.publish(event).await?;
        self.wait_for(|s| (s.stream == E::STREAM).then_some(position.seq), timeout).await?;
        Ok(position)
    }

    /// Waits until every subscription has handled everything its stream held when this was
    /// called, or fails after `timeout` (at once on an instance in standby: none runs here).
    pub async fn wait(&self, timeout: Duration) -> Result<(), EventBusError> {
        let subs: Vec<Arc<SubState>> = self.subs.lock().map(|s| s.clone()).unwrap_or_default();
        let mut targets = Vec::new();
        for sub in &subs {
            targets.push((sub.name.clone(), self.shared.bus.last_sequence(sub.stream).await?));
        }
        self.wait_for(|s| targets.iter().find(|(n, _)| *n == s.name).map(|(_, t)| *t), timeout).await
    }

    async fn wait_for(
        &self,
        target: impl Fn(&SubState) -> Option<u64>,
        timeout: Duration,
    ) -> Result<(), EventBusError> {
        let subs: Vec<Arc<SubState>> = self.subs.lock().map(|s| s.clone()).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + timeout;
        for sub in subs {
            let Some(target) = target(&sub) else { continue };
            loop {
                let moved = sub.moved.notified();
                if sub.handled_through() >= target {
                    break;
                }
                if tokio::time::timeout_at(deadline, moved).await.is_err() {
                    return Err(EventBusError::Timeout {
                        waited: timeout,
                        behind: format!("{} at {} of {}", sub.name, sub.handled_through(), target),
                    });
                }
            }
        }
        Ok(())
    }

    /// Stops pulling, lets the handlers finish what they hold (up to the settings'
    /// `stop_timeout`), and acknowledges what was handled. What was not is redelivered the next
    /// time the bus starts. Returns whether everything in flight finished.
    pub async fn stop(&self) -> bool {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(holder) = self.holder.lock().unwrap_or_else(|e| e.into_inner()).take() {
            holder.abort();
        }
        let subs: Vec<Arc<SubState>> = self.subs.lock().map(|s| s.clone()).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + self.shared.settings.stop_timeout;
        let mut drained = true;
        for sub in subs {
            let task = sub.task.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(mut task) = task {
                if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                    task.abort();
                    drained = false;
                }
            }
        }
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(leases) = leases {
            leases.release().await;
        }
        drained
    }

    /// Every subscription's progress and counters.
    pub fn subscriptions(&self) -> Vec<Arc<SubState>> {
        self.subs.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Rows for a dashboard panel ([`Observer::add_panel`](crate::observe::Observer::add_panel)).
    pub fn panel_rows(&self) -> Vec<(String, String)> {
        let role = (format!("{} (lease {})", self.shared.settings.name, self.lease_key()), self.role());
        std::iter::once(role)
            .chain(self.subscriptions().iter().map(|s| {
                (
                    format!("{}-{}", self.shared.settings.name, s.name),
                    format!(
                        "handled {} through {}, duplicates {}, retries {}, dead-lettered {}",
                        s.handled.load(Ordering::Relaxed),
                        s.handled_through(),
                        s.duplicates.load(Ordering::Relaxed),
                        s.retries.load(Ordering::Relaxed),
                        s.dead_lettered.load(Ordering::Relaxed)
                    ),
                )
            }))
            .collect()
    }
}

/// One delivered message, decoded, on its way to a worker.
struct Job<E> {
    delivery: Delivery,
    events: Vec<Decoded<E>>,
}

async fn run_subscription<E: DomainEvent>(shared: Arc<Shared>, state: Arc<SubState>, handler: HandlerFn<E>) {
    let settings = &shared.settings;
    let durable = format!("{}-{}", settings.name, state.name);
    let workers = settings.workers.max(1);
    let mut failures = 0u32;
    while !shared.stopping.load(Ordering::Relaxed) {
        if shared.fence.is_fenced() {
            // Another instance may hold the lease: leave the durable alone (making it here
            // would move it under the holder's feet).
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        if let Err(error) = shared.bus.ensure_event_stream::<E>().await {
            failures += 1;
            tracing::warn!(%durable, %error, "event bus subscription cannot find its stream; retrying");
            tokio::time::sleep(backoff(settings, failures)).await;
            continue;
        }
        let local = {
            let (file, key) = (shared.file.clone(), durable.clone());
            tokio::task::spawn_blocking(move || file.position(&key)).await.ok().and_then(|r| r.ok()).unwrap_or(0)
        };
        // After a takeover the previous holder's acknowledgements say how far it handled (it
        // acknowledged only what it had committed): start there, not from this file's older
        // position, which would handle its events again.
        let acked = shared.bus.consumer_info(E::STREAM, &durable).await.map(|i| i.ack_floor_stream_seq).unwrap_or(0);
        let checkpoint = local.max(acked);
        {
            let mut p = state.progress.lock().unwrap_or_else(|e| e.into_inner());
            *p = Progress { through: p.through.max(checkpoint), dispatched: checkpoint, ..Progress::default() };
        }
        let spec = DurableSpec {
            stream: E::STREAM.to_string(),
            durable: durable.clone(),
            description: format!("carrier event bus {}: subscription {}", settings.name, state.name),
            filter_subject: E::STREAM_SUBJECTS.to_string(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: (workers * settings.queue.max(1) * 2) as i64,
            batch_max: 256,
            linger: Duration::from_millis(1),
            inactive_threshold: None,
        };
        let mut consumer = match shared.bus.durable(&spec, checkpoint).await {
            Ok(consumer) => consumer,
            Err(error) => {
                failures += 1;
                tracing::warn!(%durable, %error, "event bus subscription cannot start; retrying");
                tokio::time::sleep(backoff(settings, failures)).await;
                continue;
            }
        };
        // The workers: one queue each, an aggregate's events always in the same one.
        let mut queues = Vec::with_capacity(workers);
        let mut tasks = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::channel::<Job<E>>(settings.queue.max(1));
            queues.push(tx);
            tasks.push(tokio::spawn(work(shared.clone(), state.clone(), durable.clone(), handler.clone(), rx)));
        }
        let result: Result<(), BusError> = async {
            while !shared.stopping.load(Ordering::Relaxed) {
                if shared.fence.is_fenced() {
                    // The lease may be another instance's now: hold back (what this one pulled
                    // and did not acknowledge is redelivered to whoever holds it).
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let batch = consumer.next_batch(Duration::from_millis(250)).await?;
                failures = 0;
                for delivery in batch {
                    let seq = delivery.stream_seq;
                    // A redelivery of something still in hand (its own settling acknowledges
                    // it), or of something handled whose ack was lost: acknowledge that again, or
                    // the server would redeliver it every ack wait for ever.
                    let handled_before = {
                        let mut p = state.progress.lock().unwrap_or_else(|e| e.into_inner());
                        if p.in_flight.contains(&seq) || p.done.contains_key(&seq) {
                            continue;
                        }
                        let before = seq <= p.through;
                        if !before {
                            p.in_flight.insert(seq);
                            p.dispatched = p.dispatched.max(seq);
                        }
                        before
                    };
                    if handled_before {
                        let _ = delivery.ack().await;
                        continue;
                    }
                    match Decoded::<E>::decode_all(&delivery.subject, |n| delivery.header(n), &delivery.payload) {
                        Ok(events) => {
                            let key = events.first().map(|e| e.envelope.aggregate_id.clone()).unwrap_or_default();
                            let mut hasher = std::collections::hash_map::DefaultHasher::new();
                            key.hash(&mut hasher);
                            let worker = (hasher.finish() % workers as u64) as usize;
                            if queues[worker].send(Job { delivery, events }).await.is_err() {
                                return Err(BusError::Pull { durable: durable.clone(), reason: "a worker stopped".into() });
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%durable, stream.seq = seq, %error, "dead-lettering an event that does not decode");
                            shared.bus.dead_letter(&settings.name, &delivery, error.code(), &error.to_string()).await?;
                            state.dead_lettered.fetch_add(1, Ordering::Relaxed);
                            count(&settings.name, &state.name, "dead_lettered");
                            settle(&shared, &state, &durable, seq, Some(delivery)).await;
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        // Let the workers finish what they hold (stop() bounds this), keep the position they
        // reached, then go again or end.
        drop(queues);
        for task in tasks {
            let _ = task.await;
        }
        write_position(&shared, &durable, state.handled_through()).await;
        if let Err(error) = result {
            failures += 1;
            tracing::warn!(%durable, %error, "event bus subscription failed; starting it again from its position");
            tokio::time::sleep(backoff(settings, failures)).await;
        }
    }
}

/// One span per event a handler saw (when an exporter is installed): a child of the span that
/// produced the event, in its trace, so a command's trace shows its async handlers too.
fn handler_span<E: DomainEvent>(
    bus: &str,
    subscription: &str,
    event: &Decoded<E>,
    start: std::time::SystemTime,
    attempts: u32,
    outcome: &'static str,
    error: Option<String>,
) {
    if !crate::telemetry::enabled() {
        return;
    }
    use crate::telemetry::Attribute;
    let envelope = &event.envelope;
    let parent = envelope.trace();
    let consumer = format!("{bus}-{subscription}");
    let mut attributes = vec![
        Attribute::new("carrier.bus", bus.to_string()),
        Attribute::new("carrier.subscription", subscription.to_string()),
        Attribute::new("carrier.event_id", envelope.event_id.to_string()),
        Attribute::new("carrier.event_type", envelope.event_type.clone()),
        Attribute::new("carrier.aggregate_id", envelope.aggregate_id.clone()),
        Attribute::new("carrier.aggregate_version", envelope.aggregate_version as i64),
        Attribute::new("carrier.correlation_id", envelope.correlation_id.clone()),
        Attribute::new("carrier.attempts", i64::from(attempts)),
        Attribute::new("carrier.outcome", outcome),
    ];
    if let Some(causation) = &envelope.causation_id {
        attributes.push(Attribute::new("carrier.causation_id", causation.clone()));
    }
    crate::telemetry::record(crate::telemetry::SpanRecord {
        name: format!("{consumer} handle {}", envelope.event_type),
        kind: crate::telemetry::Kind::Consumer,
        span: parent.consumer_span(&envelope.event_id.to_string(), &consumer),
        parent: Some(parent),
        start,
        end: std::time::SystemTime::now(),
        attributes,
        error,
    });
}

/// Counts an event's outcome when metrics are on.
fn count(bus: &str, subscription: &str, outcome: &'static str) {
    if let Some(metrics) = crate::metrics::get() {
        metrics.record_handler(bus, subscription, outcome);
    }
}

fn backoff(settings: &EventBusSettings, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    settings.backoff_min.saturating_mul(factor).min(settings.backoff_max)
}

async fn work<E: DomainEvent>(
    shared: Arc<Shared>,
    state: Arc<SubState>,
    durable: String,
    handler: HandlerFn<E>,
    mut jobs: mpsc::Receiver<Job<E>>,
) {
    let settings = &shared.settings;
    while let Some(Job { delivery, events }) = jobs.recv().await {
        let seq = delivery.stream_seq;
        let mut dead = false;
        for event in events {
            let mut attempt = 0u32;
            let started = std::time::SystemTime::now();
            let mut outcome_name = "handled";
            let mut last_error: Option<String> = None;
            loop {
                attempt += 1;
                let (file, handler, sub, job) =
                    (shared.file.clone(), handler.clone(), state.name.clone(), event.clone());
                let outcome = tokio::task::spawn_blocking(move || {
                    file.handle(&sub, &job.envelope.event_id, |txn| handler(&job, txn))
                })
                .await;
                let failure = match outcome {
                    Ok(Ok(Handled::Now)) => {
                        state.handled.fetch_add(1, Ordering::Relaxed);
                        count(&settings.name, &state.name, "handled");
                        break;
                    }
                    Ok(Ok(Handled::Before)) => {
                        state.duplicates.fetch_add(1, Ordering::Relaxed);
                        count(&settings.name, &state.name, "duplicate");
                        outcome_name = "duplicate";
                        break;
                    }
                    Ok(Err(HandleFailure::Handler(e))) => e.to_string(),
                    Ok(Err(HandleFailure::Storage(e))) => e.to_string(),
                    Err(panic) => format!("the handler panicked: {panic}"),
                };
                if attempt >= settings.max_attempts.max(1) {
                    tracing::error!(%durable, stream.seq = seq, event_id = %event.envelope.event_id, attempts = attempt, error = %failure, "dead-lettering an event its handler keeps failing");
                    let mut tries = 0;
                    while let Err(error) =
                        shared.bus.dead_letter(&settings.name, &delivery, "handler_failed", &failure).await
                    {
                        // Neither dead-lettered nor handled: it must not be acknowledged.
                        tries += 1;
                        tracing::warn!(%durable, %error, "cannot dead-letter yet; trying again");
                        if shared.stopping.load(Ordering::Relaxed) {
                            return;
                        }
                        tokio::time::sleep(backoff(settings, tries)).await;
                    }
                    let (file, sub, id) = (shared.file.clone(), state.name.clone(), event.envelope.event_id);
                    let _ = tokio::task::spawn_blocking(move || file.record_dead_letter(&sub, &id)).await;
                    state.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    count(&settings.name, &state.name, "dead_lettered");
                    outcome_name = "dead_lettered";
                    last_error = Some(failure);
                    dead = true;
                    break;
                }
                state.retries.fetch_add(1, Ordering::Relaxed);
                count(&settings.name, &state.name, "retried");
                tracing::warn!(%durable, stream.seq = seq, attempt, error = %failure, "handler failed; retrying");
                let _ = delivery.in_progress().await;
                tokio::time::sleep(backoff(settings, attempt)).await;
            }
            handler_span(&settings.name, &state.name, &event, started, attempt, outcome_name, last_error);
            if dead {
                break;
            }
        }
        settle(&shared, &state, &durable, seq, Some(delivery)).await;
    }
}

/// Marks `seq` done and, when everything through a later point is done, acknowledges that far
/// (one ack covers every earlier message) and keeps it as the subscription's position.
async fn settle(shared: &Arc<Shared>, state: &Arc<SubState>, durable: &str, seq: u64, delivery: Option<Delivery>) {
    let Some((through, delivery)) = state.finish(seq, delivery) else { return };
    if let Some(metrics) = crate::metrics::get() {
        let labels =
            crate::metrics::SubscriptionLabels { bus: shared.settings.name.clone(), subscription: state.name.clone() };
        metrics.event_bus_handled_through.get_or_create(&labels).set(through as i64);
    }
    if let Some(delivery) = delivery {
        if let Err(error) = delivery.ack().await {
            tracing::debug!(%durable, %error, "ack failed; the position is kept and the rest redelivered");
        }
    }
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let last = state.position_written_ms.load(Ordering::Relaxed);
    if now_ms.saturating_sub(last) >= POSITION_EVERY.as_millis() as u64 {
        state.position_written_ms.store(now_ms, Ordering::Relaxed);
        write_position(shared, durable, through).await;
    }
}

/// Keeps `through` as the subscription's position in the bus's file.
async fn write_position(shared: &Arc<Shared>, durable: &str, through: u64) {
    let (file, key) = (shared.file.clone(), durable.to_string());
    let _ = tokio::task::spawn_blocking(move || file.set_position(&key, through)).await;
}
