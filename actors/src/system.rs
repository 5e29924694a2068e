//! The whole system: a root supervisor with one supervisor per bounded context under it.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};

use carrier_messages::baskets::BasketsEvent;
use carrier_messages::customers::CustomersEvent;
use carrier_messages::depot::DepotEvent;
use carrier_messages::ordering::OrderingEvent;
use carrier_messages::payments::PaymentsEvent;
use carrier_messages::stores::StoresEvent;
use carrier_storage::{ContextFile, ContextKind, CustomersDb, StorageError, StoresDb};

use crate::baskets::{self, BasketsHandle};
use crate::bus::{Bus, BusError};
use crate::cache::{CacheHandle, CacheSettings, InboxRetention};
use crate::customers::{self, CustomersHandle};
use crate::depot::{self, DepotHandle};
use crate::faults::Faults;
use crate::notifications::{self, NotificationsHandle};
use crate::ordering::{self, OrderingHandle};
use crate::payments::{self, PaymentsHandle};
use crate::search::{self, SearchHandle};
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
    /// Baskets, with caches of stores and products.
    Baskets,
    /// Orders, moved along by the other contexts' events.
    Ordering,
    /// Shopping lists, with caches of stores (with locations) and products.
    Depot,
    /// Authorizes and invoices orders, with a cache of customers.
    Payments,
    /// Texts customers about their orders, with a cache of customers.
    Notifications,
    /// The orders read model, with caches of customers, stores and products.
    Search,
}

impl ContextName {
    /// Every context, in start order (owners first).
    pub const ALL: [ContextName; 8] = [
        ContextName::Stores,
        ContextName::Customers,
        ContextName::Baskets,
        ContextName::Ordering,
        ContextName::Depot,
        ContextName::Payments,
        ContextName::Notifications,
        ContextName::Search,
    ];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            ContextName::Stores => stores::CONTEXT,
            ContextName::Customers => customers::CONTEXT,
            ContextName::Baskets => baskets::CONTEXT,
            ContextName::Ordering => ordering::CONTEXT,
            ContextName::Depot => depot::CONTEXT,
            ContextName::Payments => payments::CONTEXT,
            ContextName::Notifications => notifications::CONTEXT,
            ContextName::Search => search::CONTEXT,
        }
    }

    /// The contexts whose streams it reads, each through its own durable consumer.
    pub fn sources(self) -> &'static [&'static str] {
        match self {
            ContextName::Stores | ContextName::Customers => &[],
            ContextName::Baskets => &["stores"],
            ContextName::Ordering => &["baskets", "depot", "payments"],
            ContextName::Depot => &["stores", "ordering"],
            ContextName::Payments => &["customers", "ordering"],
            ContextName::Notifications => &["customers", "ordering"],
            ContextName::Search => &["stores", "customers", "ordering"],
        }
    }

    /// Every (reader, source) pair: who reads whose stream.
    pub fn subscriptions() -> Vec<(&'static str, &'static str)> {
        ContextName::ALL.into_iter().flat_map(|c| c.sources().iter().map(move |s| (c.as_str(), *s))).collect()
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
    /// The ordering context, if running.
    pub ordering: Option<OrderingHandle>,
    /// The payments context, if running.
    pub payments: Option<PaymentsHandle>,
    /// The notifications context, if running.
    pub notifications: Option<NotificationsHandle>,
    /// The search context, if running.
    pub search: Option<SearchHandle>,
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
        bus.ensure_event_stream::<BasketsEvent>().await?;
        bus.ensure_event_stream::<OrderingEvent>().await?;
        bus.ensure_event_stream::<DepotEvent>().await?;
        bus.ensure_event_stream::<PaymentsEvent>().await?;
        let tree = SupervisionTree::default();
        let mut children = Vec::new();
        let mut stores_handle = None;
        let mut customers_handle = None;
        let mut baskets_handle = None;
        let mut depot_handle = None;
        let mut ordering_handle = None;
        let mut payments_handle = None;
        let mut notifications_handle = None;
        let mut search_handle = None;
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
        let faults = || config.faults.clone();
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
                    let db = open_context(&bus, &db_path).await?;
                    let (args, handle) =
                        baskets::supervisor_args(bus.clone(), db, settings, faults(), tree.clone(), path);
                    baskets_handle = Some(handle);
                    args
                }
                ContextName::Ordering => {
                    let db = open_context(&bus, &db_path).await?;
                    let (args, handle) =
                        ordering::supervisor_args(bus.clone(), db, settings, faults(), tree.clone(), path);
                    ordering_handle = Some(handle);
                    args
                }
                ContextName::Depot => {
                    let db = open_context(&bus, &db_path).await?;
                    let (args, handle) =
                        depot::supervisor_args(bus.clone(), db, settings, faults(), tree.clone(), path);
                    depot_handle = Some(handle);
                    args
                }
                ContextName::Payments => {
                    let db = open_context(&bus, &db_path).await?;
                    let (args, handle) =
                        payments::supervisor_args(bus.clone(), db, settings, faults(), tree.clone(), path);
                    payments_handle = Some(handle);
                    args
                }
                ContextName::Notifications => {
                    let db = open_context(&bus, &db_path).await?;
                    let (args, handle) =
                        notifications::supervisor_args(bus.clone(), db, settings, faults(), tree.clone(), path);
                    notifications_handle = Some(handle);
                    args
                }
                ContextName::Search => {
                    let db = open_context(&bus, &db_path).await?;
                    let (args, handle) =
                        search::supervisor_args(bus.clone(), db, settings, faults(), tree.clone(), path);
                    search_handle = Some(handle);
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
            ordering: ordering_handle,
            payments: payments_handle,
            notifications: notifications_handle,
            search: search_handle,
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
        let tree = self.tree.snapshot();
        ContextName::ALL
            .into_iter()
            .map(ContextName::as_str)
            .filter(|name| self.is_running(name))
            .map(|name| {
                let failing_commits = self
                    .consumers_of(name)
                    .iter()
                    .map(|(_, c)| c.failing_commits.load(std::sync::atomic::Ordering::Relaxed))
                    .max()
                    .unwrap_or(0);
                (name, crate::observe::context_health(&tree, name, failing_commits))
            })
            .collect()
    }

    fn is_running(&self, name: &str) -> bool {
        match name {
            stores::CONTEXT => self.stores.is_some(),
            customers::CONTEXT => self.customers.is_some(),
            baskets::CONTEXT => self.baskets.is_some(),
            ordering::CONTEXT => self.ordering.is_some(),
            depot::CONTEXT => self.depot.is_some(),
            payments::CONTEXT => self.payments.is_some(),
            notifications::CONTEXT => self.notifications.is_some(),
            search::CONTEXT => self.search.is_some(),
            _ => false,
        }
    }

    /// What operators see of this system: for the dashboard, `/metrics` and `carrier status`.
    pub fn observer(&self) -> crate::observe::Observer {
        use crate::observe::ObservedContext;
        fn owner<K: carrier_storage::OwnerKind>(
            name: &'static str,
            h: &Option<crate::owner::OwnerHandle<K>>,
        ) -> Option<ObservedContext> {
            h.as_ref().map(|h| ObservedContext {
                name,
                file: h.db.clone(),
                consumers: Vec::new(),
                lookups: None,
                fallbacks: Vec::new(),
                publishes: true,
                rebuild: None,
            })
        }
        let bus = &self.bus;
        fn consuming<K: ContextKind>(h: &Option<CacheHandle<K>>, bus: &Bus) -> Option<ObservedContext> {
            use carrier_messages::DomainEvent;
            let rebuild: Option<crate::observe::RebuildFn> = h.as_ref().filter(|h| h.has_caches()).map(|h| {
                let (h, bus) = (h.clone(), bus.clone());
                let f: crate::observe::RebuildFn = Arc::new(move |progress| {
                    let (h, bus) = (h.clone(), bus.clone());
                    Box::pin(async move { h.rebuild_caches(&bus, progress).await })
                });
                f
            });
            h.as_ref().map(|h| ObservedContext {
                name: K::NAME,
                file: h.db.clone(),
                consumers: h.probes.clone(),
                lookups: Some(h.lookups.clone()),
                fallbacks: h.stores_fallback.iter().chain(h.customers_fallback.iter()).cloned().collect(),
                publishes: !<K::Event as DomainEvent>::EVENT_TYPES.is_empty(),
                rebuild,
            })
        }
        let contexts = [
            owner(stores::CONTEXT, &self.stores),
            owner(customers::CONTEXT, &self.customers),
            consuming(&self.baskets, bus),
            consuming(&self.ordering, bus),
            consuming(&self.depot, bus),
            consuming(&self.payments, bus),
            consuming(&self.notifications, bus),
            consuming(&self.search, bus),
        ];
        crate::observe::Observer::new(self.bus.clone(), self.tree.clone(), contexts.into_iter().flatten().collect())
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
        let (stores, customers) = (self.stores, self.customers);
        let (baskets, depot, ordering) = (self.baskets, self.depot, self.ordering);
        let (payments, notifications, search) = (self.payments, self.notifications, self.search);
        fn free<K: 'static>(handle: &Option<CacheHandle<K>>) -> bool {
            handle.as_ref().is_none_or(|h| Arc::strong_count(&h.db) == 1)
        }
        loop {
            let free = stores.as_ref().is_none_or(|h| Arc::strong_count(&h.db) == 1)
                && customers.as_ref().is_none_or(|h| Arc::strong_count(&h.db) == 1)
                && free(&baskets)
                && free(&depot)
                && free(&ordering)
                && free(&payments)
                && free(&notifications)
                && free(&search);
            if free || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Opens a consuming context's file and makes sure its dead-letter stream exists.
async fn open_context<K: ContextKind>(bus: &Bus, db_path: &std::path::Path) -> Result<Arc<ContextFile<K>>, StartError> {
    bus.ensure_dead_letter_stream(K::NAME).await?;
    Ok(Arc::new(ContextFile::<K>::open(db_path)?))
}

impl CarrierSystem {
    /// The consumers of a running consuming context, by source stream's context.
    pub fn consumers_of(&self, context: &str) -> Vec<(&'static str, Arc<crate::consumer::ConsumerStats>)> {
        fn of<K: 'static>(h: &Option<CacheHandle<K>>) -> Vec<(&'static str, Arc<crate::consumer::ConsumerStats>)> {
            h.as_ref().map(|h| h.consumers.clone()).unwrap_or_default()
        }
        match context {
            baskets::CONTEXT => of(&self.baskets),
            ordering::CONTEXT => of(&self.ordering),
            depot::CONTEXT => of(&self.depot),
            payments::CONTEXT => of(&self.payments),
            notifications::CONTEXT => of(&self.notifications),
            search::CONTEXT => of(&self.search),
            _ => Vec::new(),
        }
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
