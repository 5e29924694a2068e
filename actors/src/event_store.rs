//! Event sourcing on JetStream: an aggregate's events are the source of truth, stored in its
//! context's stream on a subject of its own, and its state is a fold of them.
//!
//! Layout: one stream per context (`USERS`, subjects `users.>`), one subject per aggregate
//! instance, `<context>.<kind>.<id>` (`users.user.0193…`); the event type is in the event.
//! A command's events are appended as **one** message (a commit, see
//! [`Decoded::encode_commit`]) with `Nats-Expected-Last-Subject-Sequence` set to the last sequence
//! the decision saw on that subject. JetStream checks it under the stream's lock, so of two
//! writers that decided on the same version exactly one is stored; the other gets error 10071,
//! reloads and decides again, a bounded number of times, then answers `conflict`. One message per
//! command means a crash cannot store half a command's events, on every server version Carrier
//! supports (2.9 has no atomic batch publish).
//!
//! Loading replays the aggregate's subject; a snapshot every N events (a key-value bucket shared
//! by every instance, `carrier_snapshots_<context>`) lets a load start late in a long history. A
//! snapshot that no longer decodes (its aggregate's type changed) is ignored and the events are
//! replayed. Each instance keeps recently used aggregates in memory, which is only a cache: the
//! expected-sequence check makes a stale one lose and reload, so any number of instances may
//! handle commands at once and none keeps state that matters.
//!
//! Events stored under an older schema version are upgraded as they are read by the event
//! table's upcaster (`version N, upcast f` in [`domain_events!`](carrier_messages::domain_events)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use carrier_messages::asyncapi::JsonSchema;
use carrier_messages::{check, Causality};
use carrier_messages::{Decoded, DomainEvent};
use carrier_storage::{CommandError, Decided};

use crate::bus::{AppendError, Bus, BusError, SnapshotBucket};

/// An aggregate whose state is the fold of its events: it decides commands against its state
/// and applies the events it decided (and, when loaded, every event of its history).
///
/// ```
/// # use carrier_actors::Aggregate;
/// # use carrier_storage::CommandError;
/// # use carrier_messages::{domain_events, Validate};
/// # use serde::{Deserialize, Serialize};
/// # use schemars::JsonSchema;
/// #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
/// pub struct Opened { pub id: String }
/// impl Validate for Opened {}
/// domain_events! {
///     /// The counters context's events.
///     enum CounterEvent, context "counters", stream "COUNTERS", subjects "counters.>";
///     Opened => "counter", "counters.counter.*";
/// }
/// #[derive(Deserialize, JsonSchema)]
/// pub struct Open { pub id: String }
///
/// #[derive(Clone, Default, Serialize, Deserialize)]
/// pub struct Counter { opened: bool }
///
/// impl Aggregate for Counter {
///     type Event = CounterEvent;
///     type Command = Open;
///     const KIND: &'static str = "counter";
///     fn aggregate_id(command: &Open) -> &str { &command.id }
///     fn decide(&self, command: &Open) -> Result<Vec<CounterEvent>, CommandError> {
///         if self.opened {
///             return Err(CommandError::AlreadyExists { kind: "counter", id: command.id.clone() });
///         }
///         Ok(vec![CounterEvent::Opened(Opened { id: command.id.clone() })])
///     }
///     fn apply(&mut self, event: &CounterEvent) {
///         match event { CounterEvent::Opened(_) => self.opened = true }
///     }
/// }
/// ```
pub trait Aggregate: Default + Clone + Send + Sync + Serialize + DeserializeOwned + 'static {
    /// Its context's events. Those about this aggregate are declared on the subject
    /// `<context>.<KIND>.*` (per aggregate: the `*` is its id).
    type Event: DomainEvent;
    /// The commands it decides (one type, usually an enum tagged `command`).
    type Command: DeserializeOwned + JsonSchema + Send + Sync + 'static;
    /// The kind of entity, e.g. `user`: the subject's second token.
    const KIND: &'static str;
    /// The version of the state's own shape: a snapshot written under another one is ignored
    /// (and the events replayed). Raise it when the struct changes incompatibly.
    const SNAPSHOT_VERSION: u32 = 1;

    /// The aggregate a command is for.
    fn aggregate_id(command: &Self::Command) -> &str;
    /// The events the command results in, against the current state, or why it is refused. Must
    /// not look anything up: it runs again when another writer got there first.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, CommandError>;
    /// The state after `event`. Must not fail: the event happened.
    fn apply(&mut self, event: &Self::Event);
}

/// How an event store works; every instance of a context should agree.
#[derive(Clone, Copy, Debug)]
pub struct EventStoreSettings {
    /// Write a snapshot each time an aggregate's version passes a multiple of this (0: never).
    pub snapshot_every: u64,
    /// How often a command that lost a race is decided again before it is answered `conflict`.
    pub conflict_retries: u32,
    /// How many aggregates an instance keeps in memory.
    pub cached_aggregates: usize,
}

impl Default for EventStoreSettings {
    fn default() -> Self {
        EventStoreSettings { snapshot_every: 100, conflict_retries: 5, cached_aggregates: 10_000 }
    }
}

/// An aggregate as loaded: its state, its version (how many events it has) and the stream
/// sequence of its last message (what the next append expects).
#[derive(Clone, Debug, Default)]
pub struct Loaded<A> {
    /// The fold of its events.
    pub state: A,
    /// Its version: the number of its events (0: it has none).
    pub version: u64,
    /// The stream sequence of its last message (0: none).
    pub last_seq: u64,
    /// How many events were replayed to load it (after the snapshot, when one was used).
    pub replayed: u64,
    /// Whether a snapshot was the starting point.
    pub from_snapshot: bool,
    /// The idempotency keys of its last commits: (key, fingerprint hash, sequence).
    keys: std::collections::VecDeque<(String, u64, u64)>,
}

/// How many of an aggregate's last commits are searched for a resent idempotency key.
pub const KEYS_PER_AGGREGATE: usize = 64;

/// The header a commit keeps its command's idempotency key in.
pub const IDEMPOTENCY_KEY_STORED: &str = "Carrier-Idempotency-Key";
/// The header a commit keeps a hash of its command's parameters in (a resend must match it).
pub const IDEMPOTENCY_FINGERPRINT_STORED: &str = "Carrier-Idempotency-Fingerprint";

/// FNV-1a: a stable 64-bit hash of a command's canonical parameters.
fn fingerprint_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

impl<A> Loaded<A> {
    fn remember(&mut self, key: String, fingerprint: u64, seq: u64) {
        if self.keys.len() >= KEYS_PER_AGGREGATE {
            self.keys.pop_front();
        }
        self.keys.push_back((key, fingerprint, seq));
    }

    fn find_key(&self, key: &str) -> Option<(u64, u64)> {
        self.keys.iter().rev().find(|(k, _, _)| k == key).map(|(_, f, s)| (*f, *s))
    }
}

/// Where a command's events were stored: `STREAM:seq`, the token read models accept as
/// `min_position` for read-your-writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The stream.
    pub stream: String,
    /// The sequence.
    pub seq: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.stream, self.seq)
    }
}

impl std::str::FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (stream, seq) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not a position (STREAM:sequence)"))?;
        let seq = seq.parse::<u64>().map_err(|_| format!("{s:?} is not a position: {seq:?} is not a sequence"))?;
        if stream.is_empty()
            || stream.len() > 64
            || !stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!("{s:?} is not a position: {stream:?} is not a stream name"));
        }
        Ok(Position { stream: stream.to_string(), seq })
    }
}

/// Why a read did not wait its way to a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionWait {
    /// The context does not read that stream.
    #[error("{context} does not read the stream {stream}")]
    NotRead {
        /// The context.
        context: &'static str,
        /// The position's stream.
        stream: String,
    },
    /// It had not applied that far within the wait.
    #[error("applied through {applied}, not yet {wanted}, after waiting {waited:?}")]
    Behind {
        /// How far it had applied.
        applied: u64,
        /// The position's sequence.
        wanted: u64,
        /// How long it waited.
        waited: Duration,
    },
}

impl PositionWait {
    /// `not_read` or `behind`: what a query reply's error code says.
    pub fn code(&self) -> &'static str {
        match self {
            PositionWait::NotRead { .. } => "bad_position",
            PositionWait::Behind { .. } => "behind",
        }
    }
}

/// Why an aggregate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A stored event does not decode (and no upcaster reads it).
    #[error("{subject} at sequence {seq}: {reason}")]
    Undecodable {
        /// The aggregate's subject.
        subject: String,
        /// The message.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The history skips a version: it was written by something other than an event store.
    #[error("{subject}: version {found} follows version {version}")]
    Gap {
        /// The aggregate's subject.
        subject: String,
        /// The version reached.
        version: u64,
        /// The version found next.
        found: u64,
    },
}

/// Counters of an event store, for the dashboard and the bench.
#[derive(Debug, Default)]
pub struct EventStoreStats {
    /// Commands whose events were stored.
    pub committed: AtomicU64,
    /// Appends refused because another writer appended first (each then decided again).
    pub conflicts: AtomicU64,
    /// Commands answered `conflict` after every retry lost.
    pub conflicts_refused: AtomicU64,
    /// Aggregates loaded from the stream.
    pub loads: AtomicU64,
    /// Events replayed by those loads.
    pub replayed: AtomicU64,
    /// Snapshots written.
    pub snapshots_written: AtomicU64,
    /// Snapshots found but ignored (they no longer decode).
    pub snapshots_ignored: AtomicU64,
}

/// A snapshot as stored in the bucket.
#[derive(Serialize, Deserialize)]
struct SnapshotRow {
    /// [`Aggregate::SNAPSHOT_VERSION`] when written.
    schema: u32,
    version: u64,
    seq: u64,
    #[serde(with = "carrier_messages::cbor::bytes")]
    state: Vec<u8>,
    /// The idempotency keys of the aggregate's last commits.
    #[serde(default)]
    keys: Vec<(String, u64, u64)>,
}

type Slot<A> = Arc<tokio::sync::Mutex<Option<Loaded<A>>>>;

/// The write side of an event-sourced context: decides commands on aggregates loaded from the
/// stream and appends their events with optimistic concurrency. Cheap to clone.
pub struct EventStore<A: Aggregate> {
    inner: Arc<Inner<A>>,
}

impl<A: Aggregate> Clone for EventStore<A> {
    fn clone(&self) -> Self {
        EventStore { inner: self.inner.clone() }
    }
}

struct Inner<A: Aggregate> {
    bus: Bus,
    settings: EventStoreSettings,
    snapshots: Option<SnapshotBucket>,
    /// One lock per aggregate, so that this instance's commands on one aggregate take turns
    /// (they would only conflict with each other) while different aggregates go in parallel.
    slots: std::sync::Mutex<HashMap<String, Slot<A>>>,
    stats: Arc<EventStoreStats>,
}

/// The snapshot bucket of a context.
pub fn snapshot_bucket_name(context: &str) -> String {
    format!("carrier_snapshots_{}", context.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
}

impl<A: Aggregate> EventStore<A> {
    /// Opens the store on `bus`: makes the context's stream and (when snapshots are on) its
    /// snapshot bucket if they are missing.
    pub async fn open(bus: Bus, settings: EventStoreSettings) -> Result<Self, BusError> {
        bus.ensure_event_stream::<A::Event>().await?;
        let snapshots = match settings.snapshot_every {
            0 => None,
            _ => Some(bus.snapshot_bucket(&snapshot_bucket_name(<A::Event as DomainEvent>::CONTEXT)).await?),
        };
        let inner = Inner { bus, settings, snapshots, slots: Default::default(), stats: Default::default() };
        Ok(EventStore { inner: Arc::new(inner) })
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<EventStoreStats> {
        self.inner.stats.clone()
    }

    /// The subject of aggregate `id`: `<context>.<kind>.<id>`.
    pub fn subject(id: &str) -> String {
        format!("{}.{}.{id}", <A::Event as DomainEvent>::CONTEXT, A::KIND)
    }

    /// The context.
    pub fn context() -> &'static str {
        <A::Event as DomainEvent>::CONTEXT
    }

    /// The stream.
    pub fn stream() -> &'static str {
        <A::Event as DomainEvent>::STREAM
    }

    /// Decides `command` on its aggregate and appends the events, deciding again (up to
    /// `conflict_retries` times) when another writer appended first. Answers the last event
    /// with the position of the message that holds the command's events.
    ///
    /// With an idempotency key (`causality.idempotency`) the key and a hash of the command's
    /// parameters are stored in the commit's headers: a resend finds them among the aggregate's
    /// last `KEYS_PER_AGGREGATE` commits when it is loaded and is answered with what the first
    /// send stored (`replayed`), on any instance, after any crash; the same key with other
    /// parameters is refused (`idempotency_key_reused`). The key is also the message's
    /// `Nats-Msg-Id`, so two sends racing each other store one message.
    pub async fn execute(&self, command: A::Command, causality: Causality) -> Result<Decided<A::Event>, CommandError> {
        let id = A::aggregate_id(&command).to_string();
        check::subject_token("id", &id)?;
        let slot = self.slot(&id);
        let mut held = slot.lock().await;
        let stats = &self.inner.stats;
        let attempts = self.inner.settings.conflict_retries + 1;
        for attempt in 1..=attempts {
            let loaded = match held.take() {
                Some(loaded) => loaded,
                None => self.load(&id).await.map_err(|e| CommandError::Unavailable(e.to_string().into()))?,
            };
            // A resend of a command this aggregate stored: answer with what it stored.
            if let Some(key) = &causality.idempotency {
                if let Some((fingerprint, seq)) = loaded.find_key(key.key()) {
                    *held = Some(loaded);
                    if fingerprint != fingerprint_hash(key.fingerprint()) {
                        return Err(CommandError::Refused {
                            code: "idempotency_key_reused",
                            message: format!("idempotency key {:?} was used for another command", key.key()),
                            details: serde_json::Value::Null,
                        });
                    }
                    let stored = self.read_commit(&Self::subject(&id), seq).await?;
                    let event = stored.into_iter().last().ok_or_else(|| {
                        CommandError::Unavailable(format!("{}:{seq} holds no event", Self::stream()).into())
                    })?;
                    let position = Position { stream: Self::stream().to_string(), seq };
                    record(Self::context(), "replayed");
                    return Ok(Decided { event, replayed: true, position: Some(position.to_string()) });
                }
            }
            let events = match loaded.state.decide(&command) {
                Ok(events) => events,
                Err(refused) => {
                    *held = Some(loaded);
                    return Err(refused);
                }
            };
            if events.is_empty() {
                *held = Some(loaded);
                return Err(CommandError::Refused {
                    code: "no_change",
                    message: format!("{} {id:?}: the command changes nothing", A::KIND),
                    details: serde_json::Value::Null,
                });
            }
            let subject = Self::subject(&id);
            let mut decided = match Self::wrap(&id, &subject, loaded.version, events, &causality) {
                Ok(decided) => decided,
                Err(refused) => {
                    *held = Some(loaded);
                    return Err(refused);
                }
            };
            let mut commit =
                Decoded::encode_commit(&decided).map_err(|e| CommandError::Unavailable(e.to_string().into()))?;
            if let Some(key) = &causality.idempotency {
                // Kept with the commit (found again when the aggregate is loaded), and its
                // message id, so that a resend racing the first within JetStream's duplicate
                // window is dropped by the server itself.
                let msg_id = carrier_messages::header::NATS_MSG_ID;
                commit.headers.retain(|(name, _)| !name.eq_ignore_ascii_case(msg_id));
                commit.headers.push((msg_id.to_string(), format!("{}:{id}:{}", A::KIND, key.key())));
                commit.headers.push((IDEMPOTENCY_KEY_STORED.to_string(), key.key().to_string()));
                commit.headers.push((
                    IDEMPOTENCY_FINGERPRINT_STORED.to_string(),
                    format!("{:016x}", fingerprint_hash(key.fingerprint())),
                ));
            }
            match self.inner.bus.append(&commit, loaded.last_seq).await {
                Ok(receipt) if receipt.duplicate => {
                    // A resend of a command this key already stored: answer with what it stored.
                    let position = Position { stream: Self::stream().to_string(), seq: receipt.stream_seq };
                    let stored = self.read_commit(&subject, receipt.stream_seq).await?;
                    let event = stored.into_iter().last().ok_or_else(|| {
                        CommandError::Unavailable(format!("{position} holds no event of {}", A::KIND).into())
                    })?;
                    record(Self::context(), "replayed");
                    return Ok(Decided { event, replayed: true, position: Some(position.to_string()) });
                }
                Ok(receipt) => {
                    stats.committed.fetch_add(1, Ordering::Relaxed);
                    record(Self::context(), "committed");
                    let mut state = loaded.state;
                    for event in &decided {
                        state.apply(&event.event);
                    }
                    let version = loaded.version + decided.len() as u64;
                    let mut keys = loaded.keys;
                    if let Some(key) = &causality.idempotency {
                        if keys.len() >= KEYS_PER_AGGREGATE {
                            keys.pop_front();
                        }
                        keys.push_back((
                            key.key().to_string(),
                            fingerprint_hash(key.fingerprint()),
                            receipt.stream_seq,
                        ));
                    }
                    let loaded = Loaded {
                        state,
                        version,
                        last_seq: receipt.stream_seq,
                        replayed: 0,
                        from_snapshot: false,
                        keys,
                    };
                    let every = self.inner.settings.snapshot_every;
                    if every > 0 && version / every > (version - decided.len() as u64) / every {
                        self.write_snapshot(&id, &loaded);
                    }
                    *held = Some(loaded);
                    let position = Position { stream: Self::stream().to_string(), seq: receipt.stream_seq };
                    let event =
                        decided.pop().ok_or_else(|| CommandError::Unavailable("a commit without events".into()))?;
                    return Ok(Decided { event, replayed: false, position: Some(position.to_string()) });
                }
                Err(AppendError::Conflict { .. }) => {
                    stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    record(Self::context(), "conflict_retried");
                    tracing::debug!(aggregate = A::KIND, %id, attempt, "another writer appended first; deciding again");
                    // Losers that reload at once tend to meet again, and an instance with a queue
                    // of commands for the aggregate wins again and again against one that
                    // reloads between them: back off exponentially, jittered (2, 4, ... 128 ms,
                    // each from half to one and a half times that), so the other drains its queue.
                    if attempt > 1 {
                        let base = 1u64 << attempt.min(7);
                        tokio::time::sleep(Duration::from_millis(base / 2 + rand_jitter() % base)).await;
                    }
                }
                Err(AppendError::Bus(e)) => {
                    // The outcome is unknown (a timeout may hide a stored message): forget the
                    // state, so the next command reloads; the caller may resend (with the same
                    // idempotency key, nothing is stored twice).
                    return Err(CommandError::Unavailable(e.to_string().into()));
                }
            }
        }
        stats.conflicts_refused.fetch_add(1, Ordering::Relaxed);
        record(Self::context(), "conflict");
        Err(CommandError::Refused {
            code: "conflict",
            message: format!("{} {id:?} kept changing: {attempts} attempts lost to other writers", A::KIND),
            details: serde_json::json!({ "attempts": attempts }),
        })
    }

    /// Checks the events a decision returned and wraps them at the versions after `version`.
    fn wrap(
        id: &str,
        subject: &str,
        version: u64,
        events: Vec<A::Event>,
        causality: &Causality,
    ) -> Result<Vec<Decoded<A::Event>>, CommandError> {
        let mut decided = Vec::with_capacity(events.len());
        for (n, event) in events.into_iter().enumerate() {
            event.validate()?;
            if event.aggregate_id() != id || event.publish_subject() != subject {
                return Err(CommandError::Unavailable(
                    format!(
                        "{} decided an event for {} on {}; its events must be about {id:?} on {subject} \
                         (declare them on \"{}.{}.*\")",
                        A::KIND,
                        event.aggregate_id(),
                        event.publish_subject(),
                        <A::Event as DomainEvent>::CONTEXT,
                        A::KIND
                    )
                    .into(),
                ));
            }
            decided.push(Decoded::new(event, version + 1 + n as u64, causality));
        }
        Ok(decided)
    }

    /// The events of the message at `seq` (an aggregate's commit).
    async fn read_commit(&self, subject: &str, seq: u64) -> Result<Vec<Decoded<A::Event>>, CommandError> {
        let unavailable = |reason: String| CommandError::Unavailable(reason.into());
        let message = self
            .inner
            .bus
            .message_at(Self::stream(), seq)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| unavailable(format!("{} no longer holds sequence {seq}", Self::stream())))?;
        Decoded::decode_all(subject, |name| message.header(name), &message.payload)
            .map_err(|e| unavailable(e.to_string()))
    }

    /// Loads aggregate `id`: its snapshot (when there is a usable one), then the events after it.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, LoadError> {
        self.load_with(id, true).await
    }

    /// Loads aggregate `id`, from its snapshot when `use_snapshot` and there is one, else from
    /// its first event (the bench compares the two).
    pub async fn load_with(&self, id: &str, use_snapshot: bool) -> Result<Loaded<A>, LoadError> {
        let started = std::time::Instant::now();
        let loaded = self.load_inner(id, use_snapshot).await?;
        if let Some(metrics) = crate::metrics::get() {
            let labels = crate::metrics::ContextLabels { context: Self::context() };
            metrics.event_store_load_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
            metrics.event_store_replayed.get_or_create(&labels).inc_by(loaded.replayed);
        }
        Ok(loaded)
    }

    async fn load_inner(&self, id: &str, use_snapshot: bool) -> Result<Loaded<A>, LoadError> {
        let stats = &self.inner.stats;
        stats.loads.fetch_add(1, Ordering::Relaxed);
        let subject = Self::subject(id);
        let last = self.inner.bus.last_on_subject(Self::stream(), &subject).await?;
        let mut loaded = Loaded::<A>::default();
        if use_snapshot && last > 0 {
            if let Some(snapshot) = self.read_snapshot(id).await {
                // A snapshot past the stream's end belongs to a stream that was reset.
                if snapshot.last_seq <= last {
                    loaded = snapshot;
                }
            }
        }
        if loaded.last_seq >= last {
            return Ok(loaded);
        }
        let bus = &self.inner.bus;
        let mut failed: Option<LoadError> = None;
        bus.read_subject(Self::stream(), &subject, loaded.last_seq + 1, last, |message| {
            if failed.is_some() {
                return;
            }
            let events =
                match Decoded::<A::Event>::decode_all(&message.subject, |n| message.header(n), &message.payload) {
                    Ok(events) => events,
                    Err(e) => {
                        failed = Some(LoadError::Undecodable {
                            subject: subject.clone(),
                            seq: message.stream_seq,
                            reason: e.to_string(),
                        });
                        return;
                    }
                };
            if let Some(key) = message.header(IDEMPOTENCY_KEY_STORED) {
                let fingerprint = message
                    .header(IDEMPOTENCY_FINGERPRINT_STORED)
                    .and_then(|f| u64::from_str_radix(f, 16).ok())
                    .unwrap_or(0);
                loaded.remember(key.to_string(), fingerprint, message.stream_seq);
            }
            for event in events {
                let version = event.envelope.aggregate_version;
                if version <= loaded.version {
                    continue; // a duplicate written by something other than an event store
                }
                if version != loaded.version + 1 {
                    failed = Some(LoadError::Gap { subject: subject.clone(), version: loaded.version, found: version });
                    return;
                }
                loaded.state.apply(&event.event);
                loaded.version = version;
                loaded.replayed += 1;
            }
            loaded.last_seq = message.stream_seq;
        })
        .await?;
        if let Some(e) = failed {
            return Err(e);
        }
        stats.replayed.fetch_add(loaded.replayed, Ordering::Relaxed);
        Ok(loaded)
    }

    async fn read_snapshot(&self, id: &str) -> Option<Loaded<A>> {
        let bucket = self.inner.snapshots.as_ref()?;
        let key = snapshot_key::<A>(id);
        let bytes = match bucket.get(&key).await {
            Ok(found) => found?,
            Err(error) => {
                tracing::warn!(aggregate = A::KIND, %id, %error, "cannot read the snapshot; replaying every event");
                return None;
            }
        };
        let decoded =
            carrier_messages::cbor::from_slice::<SnapshotRow>(&bytes).map_err(|e| e.to_string()).and_then(|row| {
                if row.schema != A::SNAPSHOT_VERSION {
                    return Err(format!(
                        "written for snapshot version {}, this build has {}",
                        row.schema,
                        A::SNAPSHOT_VERSION
                    ));
                }
                let state = carrier_messages::cbor::from_slice::<A>(&row.state).map_err(|e| e.to_string())?;
                Ok(Loaded {
                    state,
                    version: row.version,
                    last_seq: row.seq,
                    replayed: 0,
                    from_snapshot: true,
                    keys: row.keys.into_iter().collect(),
                })
            });
        match decoded {
            Ok(loaded) => Some(loaded),
            Err(reason) => {
                self.inner.stats.snapshots_ignored.fetch_add(1, Ordering::Relaxed);
                tracing::info!(aggregate = A::KIND, %id, %reason, "ignoring a snapshot that no longer decodes; replaying every event");
                None
            }
        }
    }

    /// Writes a snapshot in the background (a lost one only makes the next load longer).
    fn write_snapshot(&self, id: &str, loaded: &Loaded<A>) {
        let Some(bucket) = self.inner.snapshots.clone() else { return };
        let (version, seq) = (loaded.version, loaded.last_seq);
        let state = match carrier_messages::cbor::to_vec(&loaded.state) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(aggregate = A::KIND, %id, %error, "cannot encode a snapshot");
                return;
            }
        };
        let keys = loaded.keys.iter().cloned().collect();
        let row = SnapshotRow { schema: A::SNAPSHOT_VERSION, version, seq, state, keys };
        let Ok(bytes) = carrier_messages::cbor::to_vec(&row) else { return };
        let (key, stats, id) = (snapshot_key::<A>(id), self.inner.stats.clone(), id.to_string());
        tokio::spawn(async move {
            match bucket.put(&key, bytes).await {
                Ok(()) => {
                    stats.snapshots_written.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => tracing::warn!(aggregate = A::KIND, %id, %error, "cannot write a snapshot"),
            }
        });
    }

    /// Writes aggregate `id`'s snapshot now, at its current state (tools and tests).
    pub async fn snapshot_now(&self, id: &str) -> Result<(), LoadError> {
        let loaded = self.load(id).await?;
        let Some(bucket) = self.inner.snapshots.clone() else { return Ok(()) };
        let state = carrier_messages::cbor::to_vec(&loaded.state).map_err(|e| LoadError::Undecodable {
            subject: Self::subject(id),
            seq: loaded.last_seq,
            reason: e.to_string(),
        })?;
        let keys = loaded.keys.iter().cloned().collect();
        let row =
            SnapshotRow { schema: A::SNAPSHOT_VERSION, version: loaded.version, seq: loaded.last_seq, state, keys };
        let bytes = carrier_messages::cbor::to_vec(&row).unwrap_or_default();
        bucket.put(&snapshot_key::<A>(id), bytes).await?;
        self.inner.stats.snapshots_written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes raw bytes as aggregate `id`'s snapshot (tests: a snapshot that no longer decodes).
    #[doc(hidden)]
    pub async fn put_raw_snapshot(&self, id: &str, bytes: Vec<u8>) -> Result<(), BusError> {
        match &self.inner.snapshots {
            Some(bucket) => bucket.put(&snapshot_key::<A>(id), bytes).await,
            None => Ok(()),
        }
    }

    /// Forgets every aggregate this instance holds in memory (the next command reloads).
    pub fn forget_all(&self) {
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn slot(&self, id: &str) -> Slot<A> {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(id) {
            return slot.clone();
        }
        if slots.len() >= self.inner.settings.cached_aggregates.max(1) {
            // Make room: drop the aggregates no command is using (they reload when needed).
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        let slot: Slot<A> = Arc::default();
        slots.insert(id.to_string(), slot.clone());
        slot
    }
}

/// Counts a command's outcome when metrics are on.
fn record(context: &'static str, outcome: &'static str) {
    if let Some(metrics) = crate::metrics::get() {
        metrics.record_command(context, outcome);
    }
}

fn snapshot_key<A: Aggregate>(id: &str) -> String {
    format!("{}.{id}", A::KIND)
}

/// A few bits of noise for spreading retries (no need for a random number generator).
fn rand_jitter() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) >> 10)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::Position;

    #[test]
    fn positions_read_back_and_bad_ones_name_the_problem() {
        let p: Position = "USERS:42".parse().unwrap();
        assert_eq!(p, Position { stream: "USERS".into(), seq: 42 });
        assert_eq!(p.to_string(), "USERS:42");
        assert!("USERS".parse::<Position>().unwrap_err().contains("STREAM:sequence"));
        assert!("USERS:x".parse::<Position>().unwrap_err().contains("not a sequence"));
        assert!(":4".parse::<Position>().unwrap_err().contains("stream name"));
    }
}
