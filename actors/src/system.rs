//! The whole system: a root supervisor with one supervisor per bounded context under it.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};

use carrier_messages::customers::CustomersEvent;
use carrier_messages::stores::StoresEvent;
use carrier_storage::{CustomersDb, StorageError, StoresCacheFile, StoresDb};

use crate::baskets::{self, BasketsHandle};
use crate::bus::{Bus, BusError};
use crate::cache::{stores_cache_context, CacheSettings, InboxRetention};
use crate::customers::{self, CustomersHandle};
use crate::depot::{self, DepotHandle};
use crate::faults::Faults;
use crate::stores::{self, StoresHandle};
use crate::supervisor::{ChildSpec, RestartPolicy, SupervisionTree, Supervisor, SupervisorArgs, SupervisorMsg};

/// The root of the supervision tree.
pub const ROOT: &str = "carrier";

/// A bounded context Carrier can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ContextName {
    /// The owner of stores and products.
    Stores,
    /// The owner of customers.
    Customers,
    /// Keeps caches of stores and products.
    Baskets,
    /// Keeps caches of stores (with locations) and products for shopping lists.
    Depot,
}

impl ContextName {
    /// Every context, in start order (owners first).
    pub const ALL: [ContextName; 4] =
        [ContextName::Stores, ContextName::Customers, ContextName::Baskets, ContextName::Depot];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            ContextName::Stores => stores::CONTEXT,
            ContextName::Customers => customers::CONTEXT,
            ContextName::Baskets => baskets::CONTEXT,
            ContextName::Depot => depot::CONTEXT,
        }
    }

    /// Its database file's name.
    pub fn db_file(self) -> String {
        format!("{}.redb", self.as_str())
    }
}

impl FromStr for ContextName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ContextName::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = ContextName::ALL.iter().map(|c| c.as_str()).collect();
            format!("unknown context {s:?} (known: {})", known.join(", "))
        })
    }
}

/// How to start the system.
#[derive(Clone)]
pub struct SystemConfig {
    /// NATS server URL.
    pub nats_url: String,
    /// Where each context keeps its redb file.
    pub data_dir: PathBuf,
    /// Which contexts to run.
    pub contexts: Vec<ContextName>,
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
}

impl SystemConfig {
    /// Every context, with defaults.
    pub fn new(nats_url: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        SystemConfig {
            nats_url: nats_url.into(),
            data_dir: data_dir.into(),
            contexts: ContextName::ALL.to_vec(),
            batch_max: 512,
            ack_wait: Duration::from_secs(30),
            inbox_retention: InboxRetention {
                horizon: Duration::from_secs(7 * 24 * 3600),
                every: Duration::from_secs(60),
            },
            fallback: crate::fallback::FallbackConfig::default(),
            gap_grace: Duration::from_secs(1),
            poison_threshold: crate::consumer::SOLO_FAILURES_TO_DEAD_LETTER,
            faults: Arc::new(Faults::default()),
        }
    }
}

/// Why the system did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// NATS was unreachable or refused a stream.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A database could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An actor failed to start.
    #[error("actors failed to start: {0}")]
    Actors(String),
}

/// A running Carrier: the supervision tree and handles to each context.
pub struct CarrierSystem {
    /// The NATS connection the contexts share.
    pub bus: Bus,
    /// Every actor's state.
    pub tree: SupervisionTree,
    /// The stores context, if running.
    pub stores: Option<StoresHandle>,
    /// The customers context, if running.
    pub customers: Option<CustomersHandle>,
    /// The baskets context, if running.
    pub baskets: Option<BasketsHandle>,
    /// The depot context, if running.
    pub depot: Option<DepotHandle>,
    /// The failure-injection counters the actors read.
    pub faults: Arc<Faults>,
    root: ActorRef<SupervisorMsg>,
    root_task: tokio::task::JoinHandle<()>,
}

impl CarrierSystem {
    /// Connects, creates streams, opens databases and starts every configured context.
    pub async fn start(config: SystemConfig) -> Result<CarrierSystem, StartError> {
        let bus = Bus::connect(&config.nats_url, "carrier", Duration::from_secs(5)).await?;
        bus.ensure_event_stream::<StoresEvent>().await?;
        bus.ensure_event_stream::<CustomersEvent>().await?;
        let tree = SupervisionTree::default();
        let mut children = Vec::new();
        let mut stores_handle = None;
        let mut customers_handle = None;
        let mut baskets_handle = None;
        let mut depot_handle = None;
        let settings = CacheSettings {
            batch_max: config.batch_max,
            ack_wait: config.ack_wait,
            inbox_retention: config.inbox_retention,
            fallback: config.fallback,
            gap_grace: config.gap_grace,
            poison_threshold: config.poison_threshold,
        };
        let mut contexts = config.contexts.clone();
        contexts.sort();
        contexts.dedup();
        for context in contexts {
            let path = format!("{ROOT}/{}", context.as_str());
            let db_path = config.data_dir.join(context.db_file());
            let args = match context {
                ContextName::Stores => {
                    let db = Arc::new(StoresDb::open(&db_path)?);
                    let (args, handle) =
                        stores::supervisor_args(bus.clone(), db, config.faults.clone(), tree.clone(), path);
                    stores_handle = Some(handle);
                    args
                }
                ContextName::Customers => {
                    let db = Arc::new(CustomersDb::open(&db_path)?);
                    let (args, handle) =
                        customers::supervisor_args(bus.clone(), db, config.faults.clone(), tree.clone(), path);
                    customers_handle = Some(handle);
                    args
                }
                ContextName::Baskets => {
                    let (args, handle) =
                        cache_context(baskets::CONTEXT, &bus, &db_path, settings, &config, &tree, path).await?;
                    baskets_handle = Some(handle);
                    args
                }
                ContextName::Depot => {
                    let (args, handle) =
                        cache_context(depot::CONTEXT, &bus, &db_path, settings, &config, &tree, path).await?;
                    depot_handle = Some(handle);
                    args
                }
            };
            children.push(context_supervisor(context.as_str(), args));
        }
        let root_args =
            SupervisorArgs { path: ROOT.to_string(), children, policy: RestartPolicy::system(), tree: tree.clone() };
        let (root, root_task) = Actor::spawn(None, Supervisor, root_args)
            .await
            .map_err(|e| StartError::Actors(root_cause(&e.to_string())))?;
        Ok(CarrierSystem {
            bus,
            tree,
            stores: stores_handle,
            customers: customers_handle,
            baskets: baskets_handle,
            depot: depot_handle,
            faults: config.faults,
            root,
            root_task,
        })
    }

    /// Stops every actor, consumers after their in-flight batch and the relay after a flush,
    /// and waits for them.
    pub async fn shutdown(self) {
        self.root.stop(Some("shutdown".into()));
        let _ = self.root_task.await;
        // Publishes and acks are buffered by the client; make sure they leave the process.
        let _ = self.bus.flush().await;
    }
}

/// A context's health, as an operator would want it summed up.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Health {
    /// Every actor running, storage committing.
    Healthy,
    /// Working on it: an actor is restarting, or commits are failing and being retried.
    Degraded(String),
    /// Given up on after too many failures; other contexts keep running.
    Failed(String),
}

impl CarrierSystem {
    /// Each running context's health, by name.
    pub fn health(&self) -> std::collections::BTreeMap<&'static str, Health> {
        use crate::supervisor::NodeState;
        let tree = self.tree.snapshot();
        let mut out = std::collections::BTreeMap::new();
        let contexts = [
            (stores::CONTEXT, self.stores.is_some()),
            (customers::CONTEXT, self.customers.is_some()),
            (baskets::CONTEXT, self.baskets.is_some()),
            (depot::CONTEXT, self.depot.is_some()),
        ];
        for (name, _) in contexts.into_iter().filter(|(_, running)| *running) {
            let prefix = format!("{ROOT}/{name}");
            let nodes: Vec<_> = tree.iter().filter(|(path, _)| path.starts_with(&prefix)).collect();
            let failed = nodes.iter().find(|(_, n)| n.state == NodeState::Failed);
            let restarting = nodes.iter().find(|(_, n)| matches!(n.state, NodeState::Restarting | NodeState::Starting));
            let consumer = match name {
                baskets::CONTEXT => self.baskets.as_ref().map(|h| h.stores_consumer.clone()),
                depot::CONTEXT => self.depot.as_ref().map(|h| h.stores_consumer.clone()),
                _ => None,
            };
            let failing_commits =
                consumer.map(|c| c.failing_commits.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0);
            let health = if let Some((path, node)) = failed {
                Health::Failed(format!("{path}: {}", node.last_failure.clone().unwrap_or_default()))
            } else if let Some((path, node)) = restarting {
                Health::Degraded(format!("{path} restarting after: {}", node.last_failure.clone().unwrap_or_default()))
            } else if failing_commits > 0 {
                Health::Degraded(format!("{failing_commits} commits failed in a row; nothing acknowledged, retrying"))
            } else {
                Health::Healthy
            };
            out.insert(name, health);
        }
        out
    }

    /// Kills every actor at once, with no flush and no final ack, as a crash would; waits until
    /// they are gone, so that the databases can be opened again.
    pub async fn kill(self) {
        self.root.kill();
        let _ = self.root_task.await;
        // A dead process's connection closes, and the server forgets its pull requests.
        self.bus.close().await;
        // Killed actors drop their state on their own tasks; wait until no handle is left.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (stores, customers, baskets, depot) = (self.stores, self.customers, self.baskets, self.depot);
        loop {
            let free = stores.as_ref().is_none_or(|h| Arc::strong_count(&h.db) == 1)
                && customers.as_ref().is_none_or(|h| Arc::strong_count(&h.db) == 1)
                && baskets.as_ref().is_none_or(|h| Arc::strong_count(&h.db) == 1)
                && depot.as_ref().is_none_or(|h| Arc::strong_count(&h.db) == 1);
            if free || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Opens a consuming context's cache file and dead-letter stream and builds its supervisor.
async fn cache_context<K: carrier_storage::CacheKind>(
    context: &'static str,
    bus: &Bus,
    db_path: &std::path::Path,
    settings: CacheSettings,
    config: &SystemConfig,
    tree: &SupervisionTree,
    path: String,
) -> Result<(SupervisorArgs, crate::cache::CacheHandle<StoresCacheFile<K>>), StartError> {
    bus.ensure_dead_letter_stream(context).await?;
    let db = Arc::new(StoresCacheFile::<K>::open(db_path)?);
    Ok(stores_cache_context(context, bus.clone(), db, settings, config.faults.clone(), tree.clone(), path))
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
