//! Assembles a context's supervisor: the writer, one consumer per stream it reads, the outbox
//! relay, then its servers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::Notify;

use carrier_messages::DomainEvent;
use carrier_storage::{Adopted, Adopts, ContextKind, FileWriter, Reacts, StorageError};

use crate::consumer::ConsumerStats;
use crate::fallback::Fallback;
use crate::faults::Faults;
use crate::supervisor::{ActorSlot, ChildSpec, RestartPolicy, SupervisionTree, SupervisorArgs};

use super::*;

/// The kinds of entity `E`'s events are about, each once.
pub(crate) fn aggregates_of<E: DomainEvent>() -> Vec<&'static str> {
    let mut aggregates: Vec<&'static str> =
        E::catalog(&mut carrier_messages::asyncapi::SchemaGenerator::default()).iter().map(|e| e.aggregate).collect();
    aggregates.sort();
    aggregates.dedup();
    aggregates
}

/// How a consuming context runs.
#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    /// The most events applied per transaction.
    pub batch_max: usize,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// How long applied event ids stay in the inbox.
    pub inbox_retention: InboxRetention,
    /// How the fallbacks behave.
    pub fallback: crate::fallback::FallbackConfig,
    /// How long a version gap may stay open before the owner is asked.
    pub gap_grace: Duration,
    /// How often one event alone may kill the cache before it is dead-lettered.
    pub poison_threshold: u32,
    /// How long a read model instance's own durable may go without a pull before the server
    /// deletes it.
    pub read_model_idle: Duration,
    /// redb's page cache per file, in bytes.
    pub cache_bytes: usize,
}

/// Lookups a context makes before a batch of `E` is applied: what its reactions will read from
/// the caches, so that a miss is filled through the owner's fallback off the write path, never
/// inside the writer's transaction. Declared with
/// [`consume_prefetching`](crate::ContextDecl::consume_prefetching). A lookup that fails is not
/// an error here: the reaction then finds the row missing and the batch is retried.
pub trait Prefetches<E: DomainEvent>: ContextKind {
    /// Looks up what the reactions to `events` will read (e.g. with
    /// [`ContextHandle::lookup`]).
    fn prefetch(handle: &ContextHandle<Self>, events: &[E]) -> impl Future<Output = ()> + Send;
}

/// A kind's prefetch of `E`, as the consumer's port runs it.
pub(crate) type PrefetchFn<K, E> = fn(ContextHandle<K>, Vec<E>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// [`Prefetches::prefetch`], owning its arguments, as a [`PrefetchFn`].
pub(crate) fn prefetch_of<K: Prefetches<E>, E: DomainEvent>(
    handle: ContextHandle<K>,
    events: Vec<E>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move { K::prefetch(&handle, &events).await })
}

/// Assembles a consuming context's supervisor: `cache` (the writer) first, then a consumer per
/// stream, the outbox relay when the context publishes, then its servers.
pub(crate) struct ContextBuilder<K: ContextKind> {
    context: &'static str,
    bus: crate::bus::Bus,
    settings: CacheSettings,
    faults: Arc<Faults>,
    handle: ContextHandle<K>,
    resolvers: Vec<(&'static str, GapResolver<K>)>,
    consumers: Vec<ChildSpec>,
    servers: Vec<ChildSpec>,
    wakeup: Arc<Notify>,
    /// The file's one writer, which only the writer actor gets.
    file: Arc<FileWriter<K>>,
    /// For a read model, which runs on every instance: the instance's suffix of its durables.
    instance: Option<String>,
    /// Whether its relay publishes nothing while the context is fenced (see
    /// [`ContextBuilder::relay_held_by_fence`]).
    relay_held: bool,
    /// Whether it follows its own stream (see [`ContextBuilder::following_itself`]).
    follows_itself: bool,
}

impl<K: ContextKind> ContextBuilder<K> {
    pub(crate) fn new(bus: crate::bus::Bus, file: FileWriter<K>, settings: CacheSettings, faults: Arc<Faults>) -> Self {
        let file = Arc::new(file);
        let handle = ContextHandle {
            db: file.file(),
            consumers: Vec::new(),
            entity_fallbacks: Vec::new(),
            probes: Vec::new(),
            lookups: Arc::default(),
            cache_sources: Vec::new(),
            writer: ActorSlot::default(),
            decisions: Arc::default(),
            fence: Arc::default(),
            resync_sources: Vec::new(),
            resync: Arc::default(),
            published: Arc::default(),
            answers_when_published: Arc::default(),
        };
        ContextBuilder {
            context: K::NAME,
            bus,
            settings,
            faults,
            handle,
            resolvers: Vec::new(),
            consumers: Vec::new(),
            servers: Vec::new(),
            wakeup: Arc::new(Notify::new()),
            file,
            instance: None,
            relay_held: false,
            follows_itself: false,
        }
    }

    /// Its outbox relay publishes nothing while the context is fenced: a context with a standby
    /// may have been taken over meanwhile, and what a deposed holder decided must not follow
    /// the new holder's events onto the stream (it is dead-lettered, `deposed`, when the
    /// instance next starts standing by).
    pub(crate) fn relay_held_by_fence(&mut self) -> &mut Self {
        self.relay_held = true;
        self
    }

    /// For a context that follows its own stream (and so may stand by): every instance reads
    /// the streams it consumes through durables of its own, and its consumers go on while the
    /// context is fenced, applying with [`FileWriter::apply_followed`]: what emits nothing
    /// (caches) applies, so a standby's caches stay current; a reaction that would emit waits
    /// until its effect was followed from the context's own stream (then it does not run again)
    /// or this instance holds the context.
    pub(crate) fn following_itself(&mut self, suffix: String) -> &mut Self {
        self.follows_itself = true;
        self.per_instance(suffix)
    }

    /// Gives every consumer of this context a durable of this instance's own (a read model runs
    /// on every instance, and instances sharing a durable would split its stream).
    pub(crate) fn per_instance(&mut self, suffix: String) -> &mut Self {
        self.instance = Some(suffix);
        self
    }

    /// The fence this instance's lease of the context sets (see [`crate::fence::Fence`]).
    pub(crate) fn fenced_by(&mut self, fence: Arc<crate::fence::Fence>) -> &mut Self {
        self.handle.fence = fence;
        self
    }

    /// The durable this context reads `source`'s stream with.
    fn durable(&self, source: &str) -> String {
        match &self.instance {
            Some(suffix) => instance_durable_name(self.context, source, suffix),
            None => durable_name(self.context, source),
        }
    }

    /// The handle as built so far (lookups work once the writer runs).
    pub(crate) fn handle(&self) -> ContextHandle<K> {
        self.handle.clone()
    }

    /// The connection.
    pub(crate) fn bus(&self) -> crate::bus::Bus {
        self.bus.clone()
    }

    /// Makes `tables` (filled from `E`'s stream alone) rebuildable: `carrier rebuild` replays
    /// the stream into a fresh file and swaps them in (see [`crate::rebuild`]).
    pub(crate) fn rebuild_source<E: DomainEvent>(
        &mut self,
        tables: &'static [&'static str],
        aggregates: &'static [&'static str],
    ) where
        K: Reacts<E>,
    {
        self.handle.cache_sources.push(crate::rebuild::CacheSource {
            set: carrier_storage::CacheSet {
                tables: tables.to_vec(),
                aggregates: aggregates.to_vec(),
                consumer: self.durable(E::CONTEXT),
            },
            replay: crate::rebuild::replay_source::<K, E>(),
        });
    }

    /// Adds a consumer of `E`'s stream on the durable `<context>-<source>`.
    pub(crate) fn consume<E: DomainEvent>(&mut self, prefetch: Option<PrefetchFn<K, E>>) -> &mut Self
    where
        K: Reacts<E>,
    {
        use crate::consumer::{ConsumerArgs, EventConsumer, PoisonGuard};
        let source = E::CONTEXT;
        let context = self.context;
        let stats = Arc::new(ConsumerStats::default());
        let control = Arc::new(match self.follows_itself {
            false => crate::offsets::ConsumerControl::fenced_by(self.handle.fence.clone()),
            true => crate::offsets::ConsumerControl::default(),
        });
        let follows = self.follows_itself.then(|| self.handle.fence.clone());
        self.handle.consumers.push((source, stats.clone()));
        let durable = self.durable(source);
        // A read model moving to durables of its own keeps its place: its checkpoint was kept
        // under the shared name before.
        let shared = (self.instance.is_some()).then(|| durable_name(context, source));
        self.handle.probes.push(crate::observe::ConsumerProbe {
            source,
            stream: E::STREAM,
            durable: durable.clone(),
            filter_subject: E::STREAM_SUBJECTS,
            stats: stats.clone(),
            control: control.clone(),
        });
        let guard = Arc::new(PoisonGuard::default());
        let (bus, faults, settings) = (self.bus.clone(), self.faults.clone(), self.settings);
        let handle = self.handle.clone();
        let spec = ChildSpec::new(&format!("{source}-consumer"), move |supervisor, siblings| {
            let (durable, shared, follows) = (durable.clone(), shared.clone(), follows.clone());
            let per_instance = shared.is_some();
            let (bus, stats, faults, guard, handle, prefetch, control) = (
                bus.clone(),
                stats.clone(),
                faults.clone(),
                guard.clone(),
                handle.clone(),
                prefetch.clone(),
                control.clone(),
            );
            async move {
                let writer: ActorRef<WriterMsg<K>> =
                    siblings.get("cache").cloned().ok_or("the cache is not running")?.into();
                let spec = crate::bus::DurableSpec {
                    stream: E::STREAM.to_string(),
                    durable,
                    description: format!("{context}: reads {source} events"),
                    filter_subject: E::STREAM_SUBJECTS.to_string(),
                    ack_wait: settings.ack_wait,
                    max_ack_pending: 20_000,
                    batch_max: settings.batch_max,
                    // No lingering: while one batch commits the next gathers, so batches grow
                    // with the load on their own; a linger only adds latency (measured: p50
                    // 5-8 ms with 2 ms, 3.4 ms without, at 5,000 events/s; the same throughput).
                    linger: Duration::ZERO,
                    inactive_threshold: per_instance.then_some(settings.read_model_idle),
                };
                let port = ContextPort { writer, follows, prefetch, handle, shared };
                let args = ConsumerArgs {
                    bus,
                    context,
                    spec,
                    writer: Arc::new(port),
                    stats,
                    faults,
                    guard,
                    poison_threshold: settings.poison_threshold,
                    control,
                };
                let (actor, _) = Actor::spawn_linked(None, EventConsumer::<E>::default(), args, supervisor).await?;
                Ok(actor.get_cell())
            }
        });
        self.consumers.push(spec);
        self
    }

    /// Resyncs the entities of `E`'s owner from its snapshot endpoint (see [`crate::resync`]).
    pub(crate) fn resync_source<E: DomainEvent>(&mut self) -> &mut Self
    where
        K: carrier_storage::Resyncs<E>,
    {
        let aggregates = aggregates_of::<E>();
        let source =
            owner_snapshot_source::<K, E>(self.bus.clone(), self.durable(E::CONTEXT), aggregates, self.faults.clone());
        self.handle.resync_sources.push(source);
        self
    }

    /// Repairs version gaps of the entities of `E`'s owner through the owner's entity endpoint
    /// (`query.<owner>.entity`), adopting what the owner reports with `K`'s [`Adopts`].
    pub(crate) fn entity_fallback<E: DomainEvent>(&mut self) -> &mut Self
    where
        K: Adopts<E>,
    {
        let fallback = Arc::new(Fallback::new(E::CONTEXT, self.bus.clone(), self.settings.fallback));
        self.handle.entity_fallbacks.push(fallback.clone());
        let tables = <K as Adopts<E>>::TABLES;
        if !tables.is_empty() {
            // Its tables are filled from the owner's stream alone: `carrier rebuild` can replay it.
            self.handle.cache_sources.push(crate::rebuild::CacheSource {
                set: carrier_storage::CacheSet {
                    tables: tables.iter().map(|(_, table)| *table).collect(),
                    aggregates: tables.iter().map(|(aggregate, _)| *aggregate).collect(),
                    consumer: self.durable(E::CONTEXT),
                },
                replay: crate::rebuild::replay_source::<K, E>(),
            });
        }
        for aggregate in aggregates_of::<E>() {
            let fallback = fallback.clone();
            let resolver: GapResolver<K> = Arc::new(move |_aggregate: String, id: String| {
                let fallback = fallback.clone();
                Box::pin(async move {
                    let entity = fallback.entity::<K::State>(aggregate, &id).await?;
                    Ok(entity.map(|entity| {
                        Box::new(move |db: &FileWriter<K>| log_adopt(adopt_entity::<K, E>(db, aggregate, &id, entity)))
                            as RunJob<K>
                    }))
                })
            });
            self.resolvers.push((aggregate, resolver));
        }
        self
    }

    /// Adds a server (commands or queries) started after everything else.
    pub(crate) fn serve(&mut self, spec: ChildSpec) -> &mut Self {
        self.servers.push(spec);
        self
    }

    /// The supervisor's arguments and the handle.
    pub(crate) fn build(self, tree: SupervisionTree, path: String) -> (SupervisorArgs, ContextHandle<K>) {
        let ContextBuilder {
            context,
            bus,
            settings,
            faults,
            handle,
            resolvers,
            consumers,
            servers,
            wakeup,
            file,
            relay_held,
            ..
        } = self;
        let resolvers = Arc::new(resolvers);
        let resolver: GapResolver<K> = Arc::new(move |aggregate: String, id: String| {
            let found = resolvers.iter().find(|(kind, _)| *kind == aggregate).map(|(_, r)| r.clone());
            Box::pin(async move {
                match found {
                    Some(resolve) => resolve(aggregate, id).await,
                    None => Ok(None),
                }
            })
        });
        let slot = handle.writer.clone();
        let decisions = handle.decisions.clone();
        let (db, writer_faults, writer_wakeup) = (file, faults.clone(), wakeup.clone());
        // The writer of a context that reads no stream is its owner; otherwise it is its cache.
        let writer_name: &'static str = if consumers.is_empty() { "owner" } else { "cache" };
        let writer = ChildSpec::new(writer_name, move |supervisor, _siblings| {
            let args = WriterArgs {
                context,
                db: db.clone(),
                faults: writer_faults.clone(),
                inbox_retention: settings.inbox_retention,
                resolver: resolver.clone(),
                gap_grace: settings.gap_grace,
                relay_wakeup: writer_wakeup.clone(),
                decisions: decisions.clone(),
            };
            let slot = slot.clone();
            async move {
                let (actor, _) = Actor::spawn_linked(None, ContextWriter::<K>::default(), args, supervisor).await?;
                slot.set(actor.clone());
                Ok(actor.get_cell())
            }
        });
        let mut children = vec![writer];
        children.extend(consumers);
        if !K::Event::EVENT_TYPES.is_empty() {
            let db = handle.db.clone();
            let published = handle.published.clone();
            let held_by = relay_held.then(|| handle.fence.clone());
            let relay = ChildSpec::new("outbox-relay", move |supervisor, siblings| {
                let (bus, db, wakeup, faults) = (bus.clone(), db.clone(), wakeup.clone(), faults.clone());
                let (published, held_by) = (published.clone(), held_by.clone());
                async move {
                    use crate::relay::{MarkError, MarkPublished, OutboxRelay, ReadOutbox, RelayArgs};
                    let writer: ActorRef<WriterMsg<K>> =
                        siblings.get(writer_name).cloned().ok_or("the writer is not running")?.into();
                    let pending: ReadOutbox = Arc::new(move |limit| db.outbox_pending(limit));
                    let mark: MarkPublished = Arc::new(move |keys| {
                        let writer = writer.clone();
                        Box::pin(async move {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            writer
                                .send_message(WriterMsg::Run(Box::new(move |db| {
                                    let _ = tx.send(db.outbox_remove(&keys));
                                })))
                                .map_err(|_| MarkError::WriterGone)?;
                            Ok(rx.await.map_err(|_| MarkError::WriterGone)??)
                        })
                    });
                    let args = RelayArgs { bus, context, pending, mark, wakeup, faults, published, held_by };
                    let (actor, _) = Actor::spawn_linked(None, OutboxRelay, args, supervisor).await?;
                    Ok(actor.get_cell())
                }
            });
            children.push(relay);
        }
        children.extend(servers);
        (SupervisorArgs { path, children, policy: RestartPolicy::context(), tree }, handle)
    }
}

pub(crate) fn log_adopt(result: Result<Adopted, StorageError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "could not write the owner's state");
    }
}

/// The durable name `context` reads `source`'s stream with: unique per consuming context, so that
/// two contexts never share (and split) one consumer's messages.
pub fn durable_name(context: &str, source: &str) -> String {
    format!("{context}-{source}")
}

/// The durable name an instance of a read model (which runs on every instance) reads `source`'s
/// stream with: `<context>-<source>-<suffix>`, the suffix taken from the instance id.
pub fn instance_durable_name(context: &str, source: &str, suffix: &str) -> String {
    format!("{context}-{source}-{suffix}")
}
