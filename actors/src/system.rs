//! The whole system: a root supervisor with one supervisor per declared bounded context under it.
//!
//! What runs is a list of [`BoundedContext`] declarations; the system starts each in the order
//! given, under `carrier/<name>`, and derives health, consumers and what operators see from them.

use std::any::Any;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};

use crate::bus::Bus;
use crate::consumer::ConsumerStats;
use crate::context::{BoundedContext, StartEnv};
use crate::context::{CacheSettings, InboxRetention};
use crate::faults::Faults;
use crate::nats_options::NatsOptions;
use crate::observe::ObservedContext;
use crate::supervisor::{ChildSpec, RestartPolicy, SupervisionTree, Supervisor, SupervisorArgs, SupervisorMsg};

pub use crate::context::StartError;
pub use crate::observe::Health;
pub use crate::supervisor::ROOT;

/// How to start the system.
#[derive(Clone)]
pub struct SystemConfig {
    /// The NATS server and the credentials and TLS settings to reach it with.
    pub nats: NatsOptions,
    /// Where each context keeps its redb file.
    pub data_dir: PathBuf,
    /// The contexts to run, in start order (a name given twice runs once).
    pub contexts: Vec<BoundedContext>,
    /// The most events applied per transaction.
    pub batch_max: usize,
    /// How long JetStream waits for a consumer's ack before redelivering.
    pub ack_wait: Duration,
    /// How long caches keep applied event ids (entity versions guard idempotence after that).
    pub inbox_retention: InboxRetention,
    /// How caches ask owners for what they lack.
    pub fallback: crate::fallback::FallbackConfig,
    /// How long a version gap may stay open (an out-of-order event may still arrive) before the
    /// owner is asked for the entity's state.
    pub gap_grace: Duration,
    /// How often one event, applied on its own, may make a cache fail before it is dead-lettered.
    pub poison_threshold: u32,
    /// Failures to inject.
    pub faults: Arc<Faults>,
    /// Memory redb may use to cache each file's pages
    /// ([`carrier_storage::DEFAULT_CACHE_BYTES`] unless set).
    pub cache_bytes: usize,
    /// Copies JetStream keeps of each stream and bucket Carrier creates: 1 on a single server,
    /// 3 on a cluster (so a node may die without losing or stopping anything).
    /// `None` (the default) creates them with one and leaves existing ones as they are.
    pub stream_replicas: Option<usize>,
    /// How long a read model instance's own durables may go unpulled (the instance stopped or
    /// paused) before the server deletes them; the instance's checkpoint positions new ones when
    /// it returns. Three days unless set.
    pub read_model_idle: Duration,
    /// How long `start` waits for a NATS server that is not there yet (refused, no answer)
    /// before it fails: a process started beside its server, or while it restarts, comes up
    /// with it. Zero (the default) fails at once; refused credentials always do.
    pub connect_wait: Duration,
}

impl SystemConfig {
    /// `contexts`, with defaults for everything else.
    pub fn new(nats: impl Into<NatsOptions>, data_dir: impl Into<PathBuf>, contexts: Vec<BoundedContext>) -> Self {
        SystemConfig {
            nats: nats.into(),
            data_dir: data_dir.into(),
            contexts,
            batch_max: 512,
            ack_wait: Duration::from_secs(30),
            inbox_retention: InboxRetention {
                horizon: Duration::from_secs(7 * 24 * 3600),
                every: Duration::from_secs(60),
                idempotency_keys: carrier_storage::IDEMPOTENCY_RETENTION,
            },
            fallback: crate::fallback::FallbackConfig::default(),
            gap_grace: Duration::from_secs(1),
            poison_threshold: crate::consumer::SOLO_FAILURES_TO_DEAD_LETTER,
            faults: Arc::new(Faults::default()),
            cache_bytes: carrier_storage::DEFAULT_CACHE_BYTES,
            stream_replicas: None,
            read_model_idle: Duration::from_secs(3 * 24 * 3600),
            connect_wait: Duration::ZERO,
        }
    }
}

/// A running Carrier: the supervision tree and handles to each context.
pub struct CarrierSystem {
    /// The NATS connection the contexts share.
    pub bus: Bus,
    /// Every actor's state.
    pub tree: SupervisionTree,
    /// The failure-injection counters the actors read.
    pub faults: Arc<Faults>,
    contexts: Vec<RunningContext>,
    root: ActorRef<SupervisorMsg>,
    root_task: tokio::task::JoinHandle<()>,
    /// This instance's leases of its contexts (see [`crate::instance`]), with those taken over
    /// later by contexts standing by.
    leases: Arc<Mutex<Vec<crate::instance::Leases>>>,
    /// The followers of contexts standing by (see [`crate::standby`]).
    standby_tasks: StandbyTasks,
    instance: Arc<crate::observe::InstanceReport>,
    /// What the application adds to every observer of this system (panels, dead-letter
    /// streams): shared, so that whatever `observer()` it was added through, every observer shows it.
    extras: crate::observe::ObserverExtras,
}

/// What the system keeps of one started context.
struct RunningContext {
    declaration: BoundedContext,
    handle: Arc<dyn Any + Send + Sync>,
    observed: ObservedContext,
    consumers: Vec<(&'static str, Arc<ConsumerStats>)>,
    file_refs: Box<dyn Fn() -> usize + Send + Sync>,
}

impl CarrierSystem {
    /// Connects, creates streams, opens databases and starts every configured context.
    pub async fn start(config: SystemConfig) -> Result<CarrierSystem, StartError> {
        let mut bus =
            Bus::connect_waiting(config.nats.clone(), "carrier", Duration::from_secs(5), config.connect_wait).await?;
        if let Some(replicas) = config.stream_replicas {
            bus = bus.with_stream_replicas(replicas);
        }
        let mut declarations: Vec<BoundedContext> = Vec::new();
        for context in &config.contexts {
            if !declarations.iter().any(|d| d.name() == context.name()) {
                declarations.push(context.clone());
            }
        }
        // Every stream a context publishes or reads, so a consumer can start before its owner.
        let mut streams: Vec<(&str, &str)> = Vec::new();
        for d in &declarations {
            streams.extend(d.publishes().map(|s| (s.stream, s.subjects)));
            streams.extend(d.reads().iter().map(|s| (s.stream, s.subjects)));
        }
        streams.sort();
        streams.dedup();
        for (stream, subjects) in streams {
            bus.ensure_stream(stream, subjects).await?;
        }
        // A read model runs on every instance; anything else on one at a time.
        // A context that may stand by (it follows its own stream) does so when another instance
        // holds its lease; for any other, that refuses the start.
        let fences: Vec<(&str, Arc<crate::fence::Fence>, bool)> = declarations
            .iter()
            .filter(|d| d.takes_lease())
            .map(|d| (d.name(), Arc::default(), d.stands_by()))
            .collect();
        let firm: Vec<(&str, Arc<crate::fence::Fence>)> =
            fences.iter().filter(|f| !f.2).map(|(n, f, _)| (*n, f.clone())).collect();
        let leases = Arc::new(Mutex::new(vec![crate::instance::acquire(&bus, &config.data_dir, &firm).await?]));
        let mut standing_by: Vec<(String, String)> = Vec::new();
        for (name, fence, _) in fences.iter().filter(|f| f.2) {
            match crate::instance::acquire(&bus, &config.data_dir, &[(name, fence.clone())]).await {
                Ok(lease) => leases.lock().unwrap_or_else(|e| e.into_inner()).push(lease),
                Err(StartError::AlreadyRunning { holder, .. }) => standing_by.push((name.to_string(), holder)),
                Err(e) => {
                    release(&leases).await;
                    return Err(e);
                }
            }
        }
        let fences: Vec<(String, Arc<crate::fence::Fence>)> =
            fences.into_iter().map(|(name, fence, _)| (name.to_string(), fence)).collect();
        let standby = StandbyPlan { standing_by, leases: leases.clone(), tasks: StandbyTasks::default() };
        match Self::start_contexts(config, bus, declarations, fences, standby).await {
            Ok(system) => Ok(system),
            Err(e) => {
                release(&leases).await;
                Err(e)
            }
        }
    }

    async fn start_contexts(
        config: SystemConfig,
        bus: Bus,
        declarations: Vec<BoundedContext>,
        fences: Vec<(String, Arc<crate::fence::Fence>)>,
        standby: StandbyPlan,
    ) -> Result<CarrierSystem, StartError> {
        let tree = SupervisionTree::default();
        let settings = CacheSettings {
            batch_max: config.batch_max,
            ack_wait: config.ack_wait,
            inbox_retention: config.inbox_retention,
            fallback: config.fallback,
            gap_grace: config.gap_grace,
            poison_threshold: config.poison_threshold,
            cache_bytes: config.cache_bytes,
            read_model_idle: config.read_model_idle,
        };
        let instance = crate::instance::instance_id(&config.data_dir)?;
        let instance_suffix = crate::instance::durable_suffix(&instance);
        let mut children = Vec::new();
        let mut contexts = Vec::new();
        for declaration in declarations {
            let fence =
                fences.iter().find(|(n, _)| n == declaration.name()).map(|(_, f)| f.clone()).unwrap_or_default();
            let standing_by = standby.standing_by.iter().find(|(n, _)| n == declaration.name());
            let env = StartEnv {
                standby: standing_by.map(|(_, holder)| crate::standby::Standby {
                    data_dir: config.data_dir.clone(),
                    holder: holder.clone(),
                    leases: standby.leases.clone(),
                }),
                tasks: standby.tasks.0.clone(),
                fence,
                instance_suffix: instance_suffix.clone(),
                bus: bus.clone(),
                data_dir: config.data_dir.clone(),
                settings,
                faults: config.faults.clone(),
                tree: tree.clone(),
                path: format!("{ROOT}/{}", declaration.name()),
            };
            let started = declaration.start(env).await?;
            children.push(context_supervisor(declaration.name(), started.args));
            contexts.push(RunningContext {
                declaration,
                handle: started.handle,
                observed: started.observed,
                consumers: started.consumers,
                file_refs: started.file_refs,
            });
        }
        let root_args =
            SupervisorArgs { path: ROOT.to_string(), children, policy: RestartPolicy::system(), tree: tree.clone() };
        let (root, root_task) = Actor::spawn(None, Supervisor, root_args)
            .await
            .map_err(|e| StartError::Actors(root_cause(&e.to_string())))?;
        let names = |everywhere: bool| {
            contexts
                .iter()
                .filter(|c| c.declaration.takes_lease() != everywhere)
                .map(|c| c.declaration.name().to_string())
                .collect()
        };
        let instance = Arc::new(crate::observe::InstanceReport {
            id: instance.clone(),
            durable_suffix: instance_suffix,
            leases: names(false),
            read_models: names(true),
            all_leases: Vec::new(),
            standing_by: Vec::new(),
        });
        Ok(CarrierSystem {
            bus,
            tree,
            faults: config.faults,
            contexts,
            root,
            root_task,
            leases: standby.leases,
            standby_tasks: standby.tasks,
            instance,
            extras: Default::default(),
        })
    }

    /// The handle of the running context whose handle has type `H`: the
    /// [`ContextHandle`](crate::context::ContextHandle) of its kind, e.g. `ContextHandle<Stores>`.
    pub fn handle<H: Clone + 'static>(&self) -> Option<H> {
        self.contexts.iter().find_map(|c| c.handle.downcast_ref::<H>().cloned())
    }

    /// The declarations of the running contexts, in start order.
    pub fn contexts(&self) -> Vec<BoundedContext> {
        self.contexts.iter().map(|c| c.declaration.clone()).collect()
    }

    /// Stops every actor, consumers after their in-flight batch and the relay after a flush,
    /// and waits for them.
    pub async fn shutdown(self) {
        self.standby_tasks.abort();
        self.root.stop(Some("shutdown".into()));
        let _ = self.root_task.await;
        release(&self.leases).await;
        // Publishes and acks are buffered by the client; make sure they leave the process, but
        // not for ever: with the server gone a flush waits for a reconnect that may never come.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.bus.flush()).await;
        // Closed, so that a local server stopped next is not a "disconnected" warning.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.bus.close()).await;
    }
}

impl CarrierSystem {
    /// Each running context's health, by name.
    pub fn health(&self) -> std::collections::BTreeMap<&'static str, Health> {
        let tree = self.tree.snapshot();
        self.contexts
            .iter()
            .map(|c| {
                let name = c.declaration.name();
                let failing_commits = c
                    .consumers
                    .iter()
                    .map(|(_, s)| s.failing_commits.load(std::sync::atomic::Ordering::Relaxed))
                    .max()
                    .unwrap_or(0);
                let health = crate::observe::context_health(&tree, name, failing_commits);
                (name, crate::observe::fenced_health(health, &c.observed.fence))
            })
            .collect()
    }

    /// What operators see of this system: for the dashboard, `/metrics` and `carrier status`.
    pub fn observer(&self) -> crate::observe::Observer {
        let contexts = self.contexts.iter().map(|c| c.observed.clone()).collect();
        crate::observe::Observer::new(
            self.bus.clone(),
            self.tree.clone(),
            contexts,
            self.instance.clone(),
            self.extras.clone(),
        )
    }

    /// Kills every actor at once, with no flush and no final ack, as a crash would; waits until
    /// they are gone, so that the databases can be opened again.
    pub async fn kill(self) {
        self.root.kill();
        let _ = self.root_task.await;
        // A dead process's connection closes, and the server forgets its pull requests.
        self.bus.close().await;
        // Killed actors drop their state on their own tasks; wait until no handle is left.
        let files: Vec<_> = self.contexts.into_iter().map(|c| c.file_refs).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while files.iter().any(|refs| refs() > 0) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The consumers of a running context, by source stream's context.
    pub fn consumers_of(&self, context: &str) -> Vec<(&'static str, Arc<ConsumerStats>)> {
        self.contexts.iter().find(|c| c.declaration.name() == context).map(|c| c.consumers.clone()).unwrap_or_default()
    }
}

/// A context's supervisor as a child of the root. Its arguments are rebuilt from a template
/// on each restart, since the supervisor consumes them.
fn context_supervisor(name: &str, args: SupervisorArgs) -> ChildSpec {
    let SupervisorArgs { path, children, policy, tree } = args;
    ChildSpec::new(name, move |root, _siblings| {
        let args = SupervisorArgs {
            path: path.clone(),
            children: children.clone(),
            policy: policy.clone(),
            tree: tree.clone(),
        };
        async move {
            let (actor, _) = Actor::spawn_linked(None, Supervisor, args, root).await?;
            Ok(actor.get_cell())
        }
    })
}

/// ractor wraps start-up failures in layers of "Actor failed to start"; keep the reason.
fn root_cause(text: &str) -> String {
    text.rsplit("Actor panicked during pre_start: ").next().unwrap_or(text).to_string()
}

/// Which contexts stand by (with who holds each lease), and where their followers and the
/// leases they take over are kept.
struct StandbyPlan {
    standing_by: Vec<(String, String)>,
    leases: Arc<Mutex<Vec<crate::instance::Leases>>>,
    tasks: StandbyTasks,
}

/// The followers of contexts standing by: stopped at shutdown, or when the system is dropped.
#[derive(Default)]
struct StandbyTasks(Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>);

impl StandbyTasks {
    fn abort(&self) {
        for task in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
    }
}

impl Drop for StandbyTasks {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Gives every lease in `leases` up.
async fn release(leases: &Mutex<Vec<crate::instance::Leases>>) {
    let held: Vec<crate::instance::Leases> = std::mem::take(&mut *leases.lock().unwrap_or_else(|e| e.into_inner()));
    for lease in held {
        lease.release().await;
    }
}
