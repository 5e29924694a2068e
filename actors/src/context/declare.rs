//! A bounded context, declared once: [`BoundedContext`].
//!
//! A declaration says what a context is: its name, the streams it reads (one per typed
//! [`consume`](ContextDecl::consume) call, so there is no second list to keep in step), the
//! stream it publishes, its commands and queries, and which owners' entities it caches. The
//! running system is a list of declarations; everything else is derived from them: start order,
//! supervision, health, the dashboard, `/metrics`, `carrier inspect`, `carrier dlq`,
//! `carrier rebuild`, the AsyncAPI document and the durable names. Nothing matches on a context's
//! name.
//!
//! ```no_run
//! # use carrier_actors::BoundedContext;
//! # fn contexts(inventory: BoundedContext, storefront: BoundedContext) -> Vec<BoundedContext> {
//! vec![inventory, storefront]
//! # }
//! ```
//!
//! Every context is one stack: its redb file ([`ContextFile`]), written only by its writer actor,
//! a handle ([`ContextHandle`]) for the rest of the process, and an outbox relay when it
//! publishes. An **owner** decides commands ([`Decides`]) and reacts to nothing; a **cache** or
//! **read model** reacts to other contexts' events ([`Reacts`]); a context may do both (ordering
//! reacts to baskets and decides `cancel_order`). Whatever it decides or emits while reacting
//! goes to its outbox in the same transaction.

use std::any::Any;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use carrier_messages::asyncapi::{EndpointDoc, JsonSchema, StreamDoc};
use carrier_messages::Causality;
use carrier_messages::{entity_subject, query_subject, snapshot_subject, Entity, EntityQuery, SnapshotEntity};
use carrier_messages::{DomainEvent, Found, QueryReply};
use carrier_storage::{
    Adopts, CommandError, ContextFile, ContextKind, Decided, Decides, FileWriter, Follows, Reacts, Resyncs,
    StorageError,
};

use crate::bus::Bus;
use crate::commands::Decide;
use crate::consumer::ConsumerStats;
use crate::context::{prefetch_of, CacheSettings, ContextBuilder, ContextHandle, PrefetchFn, Prefetches};
use crate::faults::Faults;
use crate::observe::ObservedContext;
use crate::supervisor::{SupervisionTree, SupervisorArgs};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub use crate::start_error::StartError;

/// A stream a context reads: whose it is, its name and the subjects it captures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceStream {
    /// The context that publishes it, e.g. `stores`.
    pub context: &'static str,
    /// The JetStream stream, e.g. `STORES`.
    pub stream: &'static str,
    /// Its subjects, e.g. `stores.>`.
    pub subjects: &'static str,
}

impl SourceStream {
    /// The stream of `E`'s context.
    pub fn of<E: DomainEvent>() -> SourceStream {
        SourceStream { context: E::CONTEXT, stream: E::STREAM, subjects: E::STREAM_SUBJECTS }
    }
}

/// What the system hands a context when it starts it.
pub(crate) struct StartEnv {
    pub bus: Bus,
    pub data_dir: PathBuf,
    pub settings: CacheSettings,
    pub faults: Arc<Faults>,
    pub tree: SupervisionTree,
    /// The context supervisor's path, `carrier/<name>`.
    pub path: String,
    /// This instance's suffix for a read model's own durables.
    pub instance_suffix: String,
    /// Set while this instance may not hold the context's lease.
    pub fence: Arc<crate::fence::Fence>,
    /// Set when another instance holds the lease of a context that may stand by.
    pub standby: Option<crate::standby::Standby>,
    /// Background tasks of the context, stopped at shutdown.
    pub tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// A context the system started: its supervisor's arguments and what the system keeps of it.
pub(crate) struct Started {
    pub args: SupervisorArgs,
    /// Its [`ContextHandle`], found again by type.
    pub handle: Arc<dyn Any + Send + Sync>,
    pub observed: ObservedContext,
    pub consumers: Vec<(&'static str, Arc<ConsumerStats>)>,
    /// How many handles to its file are alive (a killed system waits until none is).
    pub file_refs: Box<dyn Fn() -> usize + Send + Sync>,
}

pub(crate) type StartFn = Arc<dyn Fn(StartEnv) -> BoxFuture<Result<Started, StartError>> + Send + Sync>;

/// One bounded context, declared once. Build it with [`BoundedContext::of`]; hand a list of them to [`SystemConfig`](crate::SystemConfig)
/// (or to the CLI, which does that for you).
#[derive(Clone)]
pub struct BoundedContext {
    name: &'static str,
    read_model: bool,
    /// Runs on one instance at a time (holding a lease); false for read models and
    /// event-sourced contexts, which every instance may run.
    leased: bool,
    /// Keeps no redb file (an event-sourced context's state is its stream).
    fileless: bool,
    /// A second instance stands by instead of refusing to start.
    stands_by: bool,
    /// Its file's name when it is not `<name>.redb` (an event bus's is `<name>.bus.redb`).
    file_name: Option<String>,
    reads: Vec<SourceStream>,
    publishes: Option<StreamDoc>,
    /// Its events without their type, for a generic producer (`carrier publish`).
    events: Option<carrier_messages::EventCatalog>,
    endpoints: Vec<EndpointDoc>,
    start: StartFn,
}

impl std::fmt::Debug for BoundedContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedContext")
            .field("name", &self.name)
            .field("reads", &self.reads)
            .field("publishes", &self.publishes.map(|s| s.stream))
            .field("read_model", &self.read_model)
            .finish()
    }
}

impl BoundedContext {
    /// The context whose file is of kind `K` (`K::NAME` is its name): add what it
    /// [`decides`](ContextDecl::decides), what it [`consume`](ContextDecl::consume)s, its
    /// queries, then [`build`](ContextDecl::build) it. An owner is a context that decides
    /// commands and reacts to nothing; a cache or read model reacts to other contexts' events.
    pub fn of<K: ContextKind>() -> ContextDecl<K> {
        ContextDecl {
            read_model: false,
            decides: false,
            reads: Vec::new(),
            endpoints: Vec::new(),
            fallbacks: Vec::new(),
            steps: Vec::new(),
            servers: Vec::new(),
            follower: None,
        }
    }

    /// The event-sourced context of aggregate `A`: its commands (`A::Command` on
    /// `cmd.<context>`) are decided on aggregates loaded from `A::Event`'s stream and appended
    /// with optimistic concurrency (see `crate::event_store`). It keeps no file and takes no
    /// lease: every instance may run it. Its read side is any context that
    /// [`consume`](ContextDecl::consume)s its events (a [`read_model`](ContextDecl::read_model)).
    pub fn aggregate<A: crate::event_store::Aggregate>() -> AggregateDecl<A> {
        AggregateDecl { settings: crate::event_store::EventStoreSettings::default(), marker: std::marker::PhantomData }
    }

    /// An event bus's declaration (see [`crate::handlers`]).
    pub(crate) fn of_handlers(name: &'static str, reads: Vec<SourceStream>, start: StartFn) -> BoundedContext {
        BoundedContext {
            name,
            read_model: false,
            // It takes its lease itself (`bus.<name>`), standing by while another instance has it.
            leased: false,
            fileless: false,
            stands_by: false,
            file_name: Some(format!("{name}.bus.redb")),
            reads,
            publishes: None,
            events: None,
            endpoints: Vec::new(),
            start,
        }
    }

    /// Its name, e.g. `baskets`: in paths, durable names, subjects and its file's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The streams it reads, each through a durable consumer of its own.
    pub fn reads(&self) -> &[SourceStream] {
        &self.reads
    }

    /// The stream it publishes, when it publishes.
    pub fn publishes(&self) -> Option<&StreamDoc> {
        self.publishes.as_ref()
    }

    /// Its events by name, when it publishes: how a generic producer writes one from JSON.
    pub fn events(&self) -> Option<&carrier_messages::EventCatalog> {
        self.events.as_ref()
    }

    /// Its commands and queries, for the AsyncAPI document.
    pub fn endpoints(&self) -> &[EndpointDoc] {
        &self.endpoints
    }

    /// Its redb file's name, `<name>.redb` (an event bus's: `<name>.bus.redb`).
    pub fn db_file(&self) -> String {
        self.file_name.clone().unwrap_or_else(|| format!("{}.redb", self.name))
    }

    /// Whether it was declared a [read model](ContextDecl::read_model): it runs on every
    /// instance, each with consumers of its own, and takes no lease.
    pub fn is_read_model(&self) -> bool {
        self.read_model
    }

    /// Whether it runs on one instance at a time, holding a lease: every context but read
    /// models and event-sourced ones (see [`BoundedContext::aggregate`]).
    pub fn takes_lease(&self) -> bool {
        self.leased
    }

    /// Whether a second instance stands by (following the context's own stream) instead of
    /// refusing to start (see [`ContextDecl::follows_itself`]).
    pub fn stands_by(&self) -> bool {
        self.stands_by
    }

    /// Whether it keeps a redb file of its own (an event-sourced context keeps none: its state
    /// is its stream).
    pub fn has_file(&self) -> bool {
        !self.fileless
    }

    /// Whether it reads any stream (and so has a dead-letter stream).
    pub fn consumes(&self) -> bool {
        !self.reads.is_empty()
    }

    pub(crate) fn start(&self, env: StartEnv) -> BoxFuture<Result<Started, StartError>> {
        (self.start)(env)
    }
}

/// A name given that no declared context has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown context {name:?} (known: {known})")]
pub struct UnknownContext {
    /// The name asked for.
    pub name: String,
    /// The declared names, comma separated.
    pub known: String,
}

/// What a list of declarations (a system) answers.
impl BoundedContext {
    /// Every (reader, source) pair of `contexts`: who reads whose stream.
    pub fn subscriptions(contexts: &[BoundedContext]) -> Vec<(&'static str, &'static str)> {
        contexts.iter().flat_map(|c| c.reads.iter().map(move |s| (c.name, s.context))).collect()
    }

    /// The AsyncAPI document of `contexts`: every stream they publish or read, every command and
    /// query, and who reads what.
    pub fn asyncapi(title: &str, version: &str, contexts: &[BoundedContext]) -> serde_json::Value {
        let mut streams: Vec<StreamDoc> = contexts.iter().filter_map(|c| c.publishes).collect();
        streams.sort_by_key(|s| s.stream);
        streams.dedup_by_key(|s| s.stream);
        let endpoints: Vec<EndpointDoc> = contexts.iter().flat_map(|c| c.endpoints.iter().copied()).collect();
        let read_models: Vec<&str> = contexts.iter().filter(|c| c.read_model).map(|c| c.name).collect();
        let subscriptions = Self::subscriptions(contexts);
        carrier_messages::asyncapi::document(title, version, &streams, &endpoints, &subscriptions, &read_models)
    }

    /// The declarations named in `names`, in the order `all` declares them (which is their start
    /// order), each once.
    pub fn select<S: AsRef<str>>(all: &[BoundedContext], names: &[S]) -> Result<Vec<BoundedContext>, UnknownContext> {
        for name in names {
            Self::find(all, name.as_ref())?;
        }
        Ok(all.iter().filter(|c| names.iter().any(|n| n.as_ref() == c.name)).cloned().collect())
    }

    /// The declaration named `name`.
    pub fn find<'a>(all: &'a [BoundedContext], name: &str) -> Result<&'a BoundedContext, UnknownContext> {
        all.iter().find(|c| c.name == name).ok_or_else(|| UnknownContext {
            name: name.to_string(),
            known: all.iter().map(|c| c.name).collect::<Vec<_>>().join(", "),
        })
    }
}

type Step<K> = Box<dyn Fn(&mut ContextBuilder<K>) + Send + Sync>;

/// The declaration of a context under construction; see [`BoundedContext::of`].
pub struct ContextDecl<K: ContextKind> {
    read_model: bool,
    decides: bool,
    reads: Vec<SourceStream>,
    endpoints: Vec<EndpointDoc>,
    /// Fallbacks, set up before any consumer so that every consumer's prefetch can use them.
    fallbacks: Vec<Step<K>>,
    /// Consumers, in declaration order.
    steps: Vec<Step<K>>,
    /// Commands and queries, started after everything else and given the finished handle.
    servers: Vec<Step<K>>,
    /// How an instance standing by follows the context's own stream (see
    /// [`follows_itself`](Self::follows_itself)).
    follower: Option<FollowFn<K>>,
}

type FollowFn<K> = fn(ContextHandle<K>, Bus, crate::standby::Standby) -> BoxFuture<()>;

impl<K: ContextKind> ContextDecl<K> {
    /// Reads `E`'s stream through the durable `<context>-<source>` and applies each batch with
    /// `K`'s reaction to `E`, in one transaction per batch.
    pub fn consume<E: DomainEvent>(self) -> Self
    where
        K: Reacts<E>,
    {
        self.consume_inner::<E>(None)
    }

    /// Like [`consume`](Self::consume), but first looks up, off the write path, what the
    /// batch's reactions will read from the caches ([`Prefetches`]), so a miss asks the owner
    /// before the writer runs, never inside its transaction.
    pub fn consume_prefetching<E: DomainEvent>(self) -> Self
    where
        K: Reacts<E> + Prefetches<E>,
    {
        self.consume_inner::<E>(Some(prefetch_of::<K, E>))
    }

    fn consume_inner<E: DomainEvent>(mut self, prefetch: Option<PrefetchFn<K, E>>) -> Self
    where
        K: Reacts<E>,
    {
        self.reads.push(SourceStream::of::<E>());
        self.steps.push(Box::new(move |b| {
            b.consume::<E>(prefetch.clone());
        }));
        self
    }

    /// Like [`consume`](Self::consume), for a projection whose `tables` (`Rows` tables, about
    /// the aggregate kinds `aggregates`) are filled from `E`'s stream alone: then `carrier
    /// rebuild` (and the dashboard's rebuild) can rebuild them blue/green, replaying the stream
    /// into a fresh file while the live tables serve, then swapping them in.
    pub fn projects<E: DomainEvent>(
        mut self,
        tables: &'static [&'static str],
        aggregates: &'static [&'static str],
    ) -> Self
    where
        K: Reacts<E>,
    {
        self.steps.push(Box::new(move |b| {
            b.rebuild_source::<E>(tables, aggregates);
        }));
        self.consume::<E>()
    }

    /// Like [`consume`](Self::consume), for a cache of `E`'s owner's entities: a version gap that
    /// stays open is repaired by asking the owner for the entity's state (its
    /// [`entities`](Self::entities) endpoint) and adopting it with `K`'s [`Adopts`], never over a
    /// newer version; with the fallback's timeout, circuit breaker and negative cache. A miss is
    /// filled the same way by [`ContextHandle::lookup`] (from commands, queries and prefetches),
    /// an entity the owner deleted is forgotten, and `carrier rebuild` replays the stream into
    /// fresh copies of the tables [`Adopts::TABLES`] names and swaps them in.
    pub fn caches<E: DomainEvent>(mut self) -> Self
    where
        K: Adopts<E>,
    {
        self.fallbacks.push(Box::new(|b| {
            b.entity_fallback::<E>();
        }));
        self.consume::<E>()
    }

    /// Answers the owner's entity endpoint, `query.<context>.entity`: the current state of one
    /// entity (`{"aggregate": ..., "id": ...}`), which every cache of this context's entities
    /// falls back on. `answer` reads the file and returns the entity with its version
    /// ([`Entity::of`](carrier_messages::Entity::of)), or `None`.
    pub fn entities(
        mut self,
        answer: impl Fn(&ContextFile<K>, &str, &str) -> Result<Option<Entity<serde_json::Value>>, StorageError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.endpoints.push(EndpointDoc::entity::<EntityQuery, Found<Entity<serde_json::Value>>>(K::NAME));
        let answer =
            Arc::new(move |db: &ContextFile<K>, q: EntityQuery| Found::answer(answer(db, &q.aggregate, &q.id)));
        self.serve_queries("entities", entity_subject(K::NAME), answer);
        self
    }

    /// Answers the owner's snapshot endpoint, `query.<context>.snapshot`: its entities of one
    /// kind in pages by id, which every cache that [`resyncs`](Self::resyncs) from this context
    /// walks for a full sync. `answer(db, aggregate, after, limit)` reads up to `limit` entities
    /// of kind `aggregate` with ids after `after` (from the first when `None`), in id order, each
    /// with its version and state, and how many there are in all; `limit` is 1 to
    /// [`MAX_SNAPSHOT_PAGE`](carrier_messages::MAX_SNAPSHOT_PAGE).
    pub fn snapshots(
        mut self,
        answer: impl Fn(
                &ContextFile<K>,
                &str,
                Option<&str>,
                usize,
            ) -> Result<(Vec<SnapshotEntity<serde_json::Value>>, u64), StorageError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        use carrier_messages::{SnapshotPage, SnapshotQuery, MAX_SNAPSHOT_PAGE};
        self.endpoints.push(EndpointDoc::snapshot::<SnapshotQuery, SnapshotPage<serde_json::Value>>(K::NAME));
        let answer = Arc::new(move |db: &ContextFile<K>, q: SnapshotQuery| -> SnapshotPage<serde_json::Value> {
            if q.limit == 0 || q.limit > MAX_SNAPSHOT_PAGE {
                let problem = format!("limit must be 1 to {MAX_SNAPSHOT_PAGE}, got {}", q.limit);
                return QueryReply::failed("bad_request", problem);
            }
            match answer(db, &q.aggregate, q.after.as_deref(), q.limit) {
                Ok((entities, total)) => {
                    let next = (entities.len() == q.limit).then(|| entities.last().map(|e| e.id.clone())).flatten();
                    SnapshotPage { ok: true, entities, total, next, error: None }
                }
                Err(e) => QueryReply::failed("unavailable", e.to_string()),
            }
        });
        self.serve_queries("snapshots", snapshot_subject(K::NAME), answer);
        self
    }

    /// Replaces its cache of `E`'s owner's entities wholesale with the owner's snapshot
    /// (`query.<owner>.snapshot`, see [`snapshots`](Self::snapshots)) when the stream no longer
    /// holds its consumer's position, and whenever [`ContextHandle::resync`] is called (a store
    /// node's first start, a forced sync): a full sync, in one transaction, with nothing lost or
    /// applied twice between the snapshot and the stream (see `crate::resync`). Declare it
    /// with [`caches`](Self::caches) for the same `E`.
    pub fn resyncs<E: DomainEvent>(mut self) -> Self
    where
        K: Resyncs<E>,
    {
        // Set up before the consumers, which call on it when their position is lost.
        self.fallbacks.push(Box::new(|b| {
            b.resync_source::<E>();
        }));
        self
    }

    /// Decides commands of type `C` on `cmd.<context>` with `K`'s rules ([`Decides`]), on the
    /// context's writer, each in one transaction with the outbox row of its event.
    pub fn decides<C>(self) -> Self
    where
        C: DeserializeOwned + JsonSchema + Send + Sync + 'static,
        K: Decides<C>,
    {
        self.commands(|handle: ContextHandle<K>, command: C, causality| async move {
            handle.execute_once(command, causality).await.map_err(CommandError::from)
        })
    }

    /// Decides commands of type `C` on `cmd.<context>` with `decide`, for decisions that need
    /// lookups first (off the write path). `decide` is given the context's handle
    /// (cache lookups, then [`ContextHandle::execute`] with a command type the context
    /// [`Decides`], e.g. the command and what was looked up, so the decision shares the writer's
    /// group commit) and returns the event it recorded: a [`Decoded`](carrier_messages::Decoded) event, or the [`Decided`]
    /// that [`ContextHandle::execute_once`] returns, which also says whether it answers an
    /// earlier send of the same idempotency key (`causality.idempotency`, from the request's
    /// `Idempotency-Key` header) and, when the context has a standby, where its event was
    /// published (the reply's `position`). Return that `Decided`: a bare `Decoded` answers
    /// without either.
    pub fn commands<C, F, Fut, R>(mut self, decide: F) -> Self
    where
        C: DeserializeOwned + JsonSchema + Send + Sync + 'static,
        F: Fn(ContextHandle<K>, C, Causality) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, CommandError>> + Send + 'static,
        R: Into<Decided<K::Event>>,
    {
        self.endpoints.push(EndpointDoc::command::<C>(K::NAME));
        self.decides = true;
        let decide = Arc::new(decide);
        self.servers.push(Box::new(move |b| {
            let (handle, decide) = (b.handle(), decide.clone());
            let decide: Decide<C, K::Event> = Arc::new(move |command, causality| {
                let decided = decide(handle.clone(), command, causality);
                Box::pin(async move { decided.await.map(Into::into) }) as BoxFuture<_>
            });
            let spec = crate::serve::commands(K::NAME, b.bus(), decide, b.handle().fence.clone());
            b.serve(spec);
        }));
        self
    }

    /// Answers queries of type `Q` on `query.<context>` from the context's file (read
    /// transactions, so they never wait for the writer).
    pub fn queries<Q, R>(mut self, answer: impl Fn(&ContextFile<K>, Q) -> R + Send + Sync + 'static) -> Self
    where
        Q: DeserializeOwned + JsonSchema + Send + 'static,
        R: QueryReply,
    {
        self.endpoints.push(EndpointDoc::query::<Q, R>(K::NAME));
        let answer = Arc::new(answer);
        self.serve_queries("queries", query_subject(K::NAME), answer);
        self
    }

    /// Answers queries of type `Q` on `query.<context>` with `answer`, given the context's
    /// handle: for answers that look entities up ([`ContextHandle::lookup`], so a cache miss
    /// asks the owner) or wait on something. Declare a context's queries with this or with
    /// [`queries`](Self::queries), not both (they share the subject).
    pub fn queries_with<Q, R, F, Fut>(mut self, answer: F) -> Self
    where
        Q: DeserializeOwned + JsonSchema + Send + 'static,
        R: QueryReply,
        F: Fn(ContextHandle<K>, Q) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        self.endpoints.push(EndpointDoc::query::<Q, R>(K::NAME));
        let answer = Arc::new(answer);
        self.servers.push(Box::new(move |b| {
            let wait = read_your_writes(b.handle());
            let answer = crate::serve::WithHandle { handle: b.handle().clone(), answer: answer.clone() };
            let spec = crate::serve::queries("queries", query_subject(K::NAME), K::NAME, b.bus(), answer, Some(wait));
            b.serve(spec);
        }));
        self
    }

    /// Declares it a **read model**: it only keeps tables of other contexts' events and answers
    /// queries from them, so running it twice has no effect beyond its own file. Then every
    /// instance of Carrier that runs it keeps a complete copy, each reading every stream
    /// through a durable of its own (`<context>-<source>-<instance>`, positioned by that
    /// instance's checkpoint), and queries are answered by whichever instance gets them (they
    /// are served in a queue group). Any other context runs on one instance at a time (a lease).
    ///
    /// # Panics
    ///
    /// [`build`](Self::build) panics when a read model publishes events or decides commands:
    /// those have effects that must happen once, which a read model's instances cannot promise.
    pub fn read_model(mut self) -> Self {
        self.read_model = true;
        self
    }

    /// Lets a second instance of the context **stand by** instead of refusing to start: it
    /// folds the context's own stream into its file with `K`'s [`Follows`], and takes over
    /// when the instance holding the context's lease dies (its lease expires), deciding
    /// commands on the state that was published (see `crate::standby`).
    ///
    /// What it [`consume`](Self::consume)s of other streams, every instance reads through
    /// durables of its own (`<context>-<source>-<instance>`), holding the lease or standing by:
    /// caches stay current on a standby; a reaction that emits waits there until the event it
    /// emitted on the holder is followed (its cause is named by the event: then the reaction
    /// does not run again), or until this instance takes the context over. So every change a
    /// reaction makes to the context's own rows must be an event of its own: `Follows` is how
    /// the standby learns it (an effect kept only in a row would be lost at a takeover).
    pub fn follows_itself(mut self) -> Self
    where
        K: Follows,
    {
        self.follower = Some(|handle, bus, standby| Box::pin(crate::standby::run::<K>(handle, bus, standby)));
        self
    }

    /// Serves `subject` with `answer` on a read transaction of the context's file, as the child
    /// `child` (queries, the entity endpoint, the snapshot endpoint).
    fn serve_queries<Q, R>(
        &mut self,
        child: &'static str,
        subject: String,
        answer: Arc<impl Fn(&ContextFile<K>, Q) -> R + Send + Sync + 'static>,
    ) where
        Q: DeserializeOwned + Send + 'static,
        R: QueryReply,
    {
        self.servers.push(Box::new(move |b| {
            let wait = read_your_writes(b.handle());
            let answer = crate::serve::FromFile { db: b.handle().db.clone(), answer: answer.clone() };
            let spec = crate::serve::queries(child, subject.clone(), K::NAME, b.bus(), answer, Some(wait));
            b.serve(spec);
        }));
    }

    /// The declaration.
    pub fn build(self) -> BoundedContext {
        let ContextDecl { read_model, decides, reads, endpoints, mut fallbacks, steps, servers, follower } = self;
        let publishes = (!K::Event::EVENT_TYPES.is_empty()).then(StreamDoc::of::<K::Event>);
        let events = publishes.is_some().then(carrier_messages::EventCatalog::of::<K::Event>);
        assert!(
            !read_model || (publishes.is_none() && !decides),
            "{}: a read model neither publishes events nor decides commands (its instances would each do it)",
            K::NAME
        );
        fallbacks.extend(steps);
        fallbacks.extend(servers);
        let steps = Arc::new(fallbacks);
        let start: StartFn = Arc::new(move |env: StartEnv| {
            let steps = steps.clone();
            Box::pin(async move {
                env.bus.ensure_dead_letter_stream(K::NAME).await?;
                let path = env.data_dir.join(format!("{}.redb", K::NAME));
                let standby = env.standby.clone().filter(|_| follower.is_some());
                if let Some(standby) = &standby {
                    // Fenced before anything starts: its commands must never join the queue group.
                    env.fence.stand_by(format!("standing by: another instance holds its lease ({})", standby.holder));
                    crate::standby::start_afresh::<K>(&env.bus, &path, env.settings.cache_bytes).await?;
                }
                let db = FileWriter::<K>::open_with_cache(path, env.settings.cache_bytes)?;
                let mut builder = ContextBuilder::new(env.bus.clone(), db, env.settings, env.faults);
                if read_model {
                    builder.per_instance(env.instance_suffix.clone());
                }
                if follower.is_some() {
                    builder.following_itself(env.instance_suffix.clone());
                }
                builder.fenced_by(env.fence.clone());
                if follower.is_some() {
                    builder.relay_held_by_fence();
                }
                for step in steps.iter() {
                    step(&mut builder);
                }
                let (args, handle) = builder.build(env.tree, env.path);
                if follower.is_some() {
                    // Until the first answer says nobody stands by, one may: answer commands
                    // only once published.
                    handle.answers_when_published.store(true, std::sync::atomic::Ordering::Relaxed);
                    let watcher = tokio::spawn(crate::standby::watch_standbys(
                        K::NAME,
                        env.bus.clone(),
                        handle.fence.clone(),
                        handle.answers_when_published.clone(),
                    ));
                    env.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(watcher);
                }
                if let (Some(standby), Some(follow)) = (standby, follower) {
                    let task = tokio::spawn(follow(handle.clone(), env.bus.clone(), standby));
                    env.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
                }
                let observed = handle.observed(&env.bus);
                let file = Arc::downgrade(&handle.db);
                Ok(Started {
                    args,
                    consumers: handle.consumers.clone(),
                    observed,
                    handle: Arc::new(handle) as Arc<dyn Any + Send + Sync>,
                    file_refs: Box::new(move || file.strong_count()),
                })
            })
        });
        BoundedContext {
            name: K::NAME,
            read_model,
            stands_by: follower.is_some(),
            file_name: None,
            leased: !read_model,
            fileless: false,
            reads,
            publishes,
            events,
            endpoints,
            start,
        }
    }
}

/// The declaration of an event-sourced context under construction; see
/// [`BoundedContext::aggregate`].
pub struct AggregateDecl<A> {
    settings: crate::event_store::EventStoreSettings,
    marker: std::marker::PhantomData<fn() -> A>,
}

impl<A: crate::event_store::Aggregate> AggregateDecl<A> {
    /// Writes a snapshot each time an aggregate's version passes a multiple of `n` (0: never;
    /// the default is 100).
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.settings.snapshot_every = n;
        self
    }

    /// Decides a command again up to `n` times when other writers append first (default 5).
    pub fn conflict_retries(mut self, n: u32) -> Self {
        self.settings.conflict_retries = n;
        self
    }

    /// The declaration. Its handle (`CarrierSystem::handle`) is the
    /// [`EventStore<A>`](crate::event_store::EventStore).
    pub fn build(self) -> BoundedContext {
        use crate::event_store::EventStore;
        let name = <A::Event as DomainEvent>::CONTEXT;
        let settings = self.settings;
        let start: StartFn = Arc::new(move |env: StartEnv| {
            Box::pin(async move {
                let store = EventStore::<A>::open(env.bus.clone(), settings).await?;
                let decide_store = store.clone();
                let decide: Decide<A::Command, A::Event> = Arc::new(move |command, causality| {
                    let store = decide_store.clone();
                    Box::pin(async move { store.execute(command, causality).await }) as BoxFuture<_>
                });
                let commands = crate::serve::commands(name, env.bus.clone(), decide, env.fence.clone());
                let args = SupervisorArgs {
                    path: env.path.clone(),
                    children: vec![commands],
                    policy: crate::supervisor::RestartPolicy::context(),
                    tree: env.tree.clone(),
                };
                let observed = ObservedContext {
                    name,
                    fence: env.fence.clone(),
                    file: None,
                    consumers: Vec::new(),
                    lookups: None,
                    fallbacks: Vec::new(),
                    stream: Some(<A::Event as DomainEvent>::STREAM),
                    rebuild: None,
                    resync: None,
                    dead_letters: false,
                    panels: Vec::new(),
                };
                Ok(Started {
                    args,
                    handle: Arc::new(store) as Arc<dyn Any + Send + Sync>,
                    observed,
                    consumers: Vec::new(),
                    file_refs: Box::new(|| 0),
                })
            })
        });
        BoundedContext {
            name,
            read_model: false,
            leased: false,
            fileless: true,
            stands_by: false,
            file_name: None,
            reads: Vec::new(),
            publishes: Some(StreamDoc::of::<A::Event>()),
            events: Some(carrier_messages::EventCatalog::of::<A::Event>()),
            endpoints: vec![EndpointDoc::command::<A::Command>(name)],
            start,
        }
    }
}

/// A query may ask to read its writes (a command's position): it waits, at most
/// `READ_YOUR_WRITES_WAIT_MS`, for the context's consumer of that stream to apply it.
fn read_your_writes<K: ContextKind>(handle: ContextHandle<K>) -> crate::serve::WaitFn {
    Arc::new(move |position| {
        let handle = handle.clone();
        let wait = std::time::Duration::from_millis(carrier_messages::READ_YOUR_WRITES_WAIT_MS);
        Box::pin(async move { handle.wait_for_position(&position, wait).await })
    })
}
