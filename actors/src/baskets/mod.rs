//! The baskets bounded context: local caches of stores and products, fed by the stores stream.
//!
//! Actors, under the `carrier/baskets` supervisor (rest-for-one):
//! - `cache` ([`BasketsCache`]): the only writer of `baskets.redb`;
//! - `stores-consumer` ([`EventConsumer`]): the durable consumer `baskets-stores` on `STORES`.

mod cache;

pub use cache::{BasketsCache, BasketsCacheArgs, BasketsCacheMsg, InboxRetention, OwnerState};

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};

use carrier_messages::stores::StoresEvent;
use carrier_messages::DomainEvent;
use carrier_storage::BasketsDb;

use crate::bus::{Bus, DurableSpec};
use crate::consumer::{batch_target, CheckpointReader, ConsumerArgs, ConsumerStats, EventConsumer, PoisonGuard};
use crate::fallback::{FallbackConfig, FallbackError, StoresFallback};
use crate::faults::Faults;
use crate::supervisor::{ActorSlot, ChildSpec, RestartPolicy, SupervisionTree, SupervisorArgs};
use carrier_storage::baskets::{CachedProduct, CachedStore};

/// The context's name, as used in durable names, paths and dead-letter streams.
pub const CONTEXT: &str = "baskets";

/// The durable consumer's name: unique per consuming context and source stream, so that two
/// contexts never share (and split) one consumer's messages.
pub fn stores_durable_name() -> String {
    format!("{CONTEXT}-{}", StoresEvent::CONTEXT)
}

/// How the baskets context runs.
#[derive(Clone, Copy, Debug)]
pub struct BasketsSettings {
    /// The most events applied per transaction.
    pub batch_max: usize,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// How long applied event ids stay in the inbox.
    pub inbox_retention: InboxRetention,
    /// How the stores fallback behaves.
    pub fallback: FallbackConfig,
    /// How long a version gap may stay open before the owner is asked.
    pub gap_grace: Duration,
}

/// Why a lookup found no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The cache missed and the owner could not be asked.
    #[error(transparent)]
    Fallback(#[from] FallbackError),
    /// The cache could not be read or written.
    #[error(transparent)]
    Storage(#[from] carrier_storage::StorageError),
    /// The cache actor is not running.
    #[error("the baskets cache is not running")]
    Unavailable,
}

/// What the rest of the process may use of a running baskets context.
#[derive(Clone)]
pub struct BasketsHandle {
    /// Its database, for reading.
    pub db: Arc<BasketsDb>,
    /// Its stores consumer's counters.
    pub stores_consumer: Arc<ConsumerStats>,
    /// The fallback to the stores context, with its counters and breaker.
    pub fallback: Arc<StoresFallback>,
    cache: ActorSlot<BasketsCacheMsg>,
}

impl BasketsHandle {
    /// A store's name as baskets needs it: from the cache, or else from the owner (then cached).
    pub async fn store(&self, id: &str) -> Result<Option<CachedStore>, LookupError> {
        if let Some(store) = self.db.store(id)? {
            return Ok(Some(store));
        }
        let Some(snapshot) = self.fallback.store(id).await? else { return Ok(None) };
        self.adopt(OwnerState::Store(snapshot.clone())).await?;
        Ok(Some(CachedStore { name: snapshot.name }))
    }

    /// A product as baskets needs it: from the cache, or else from the owner (then cached).
    pub async fn product(&self, id: &str) -> Result<Option<CachedProduct>, LookupError> {
        if let Some(product) = self.db.product(id)? {
            return Ok(Some(product));
        }
        let Some(snapshot) = self.fallback.product(id).await? else { return Ok(None) };
        self.adopt(OwnerState::Product(snapshot.clone())).await?;
        if snapshot.removed {
            return Ok(None);
        }
        Ok(Some(CachedProduct { store_id: snapshot.store_id, name: snapshot.name, price: snapshot.price }))
    }

    /// Has the cache actor (the only writer) record the owner's answer.
    async fn adopt(&self, state: OwnerState) -> Result<(), LookupError> {
        let cache = self.cache.wait(Duration::from_secs(2)).await.ok_or(LookupError::Unavailable)?;
        let result = ractor::call!(cache, |reply| BasketsCacheMsg::Adopt { state, reply: Some(reply) })
            .map_err(|_| LookupError::Unavailable)?;
        result?;
        Ok(())
    }
}

/// Builds the context's supervisor arguments.
pub(crate) fn supervisor_args(
    bus: Bus,
    db: Arc<BasketsDb>,
    settings: BasketsSettings,
    faults: Arc<Faults>,
    tree: SupervisionTree,
    path: String,
) -> (SupervisorArgs, BasketsHandle) {
    let BasketsSettings { batch_max, ack_wait, inbox_retention, fallback, gap_grace } = settings;
    let stats = Arc::new(ConsumerStats::default());
    let guard = Arc::new(PoisonGuard::default());
    let fallback = Arc::new(StoresFallback::new(bus.clone(), fallback));
    let slot: ActorSlot<BasketsCacheMsg> = ActorSlot::default();
    let handle = BasketsHandle {
        db: db.clone(),
        stores_consumer: stats.clone(),
        fallback: fallback.clone(),
        cache: slot.clone(),
    };

    let cache_faults = faults.clone();
    let consumer_db = db.clone();
    let cache = ChildSpec::new("cache", move |supervisor, _siblings| {
        let args = BasketsCacheArgs {
            db: db.clone(),
            faults: cache_faults.clone(),
            inbox_retention,
            fallback: fallback.clone(),
            gap_grace,
        };
        let slot = slot.clone();
        async move {
            let (actor, _) = Actor::spawn_linked(None, BasketsCache, args, supervisor).await?;
            slot.set(actor.clone());
            Ok(actor.get_cell())
        }
    });

    let consumer = ChildSpec::new("stores-consumer", move |supervisor, siblings| {
        let bus = bus.clone();
        let stats = stats.clone();
        let faults = faults.clone();
        let guard = guard.clone();
        let db = consumer_db.clone();
        async move {
            let cache: ActorRef<BasketsCacheMsg> =
                siblings.get("cache").cloned().ok_or("the cache is not running")?.into();
            let spec = DurableSpec {
                stream: StoresEvent::STREAM.to_string(),
                durable: stores_durable_name(),
                description: "baskets: stores and products caches".to_string(),
                filter_subject: StoresEvent::STREAM_SUBJECTS.to_string(),
                ack_wait,
                max_ack_pending: 20_000,
                batch_max,
                linger: Duration::from_millis(2),
            };
            let checkpoint: CheckpointReader = Arc::new(move |durable: &str| db.checkpoint(durable));
            let args = ConsumerArgs {
                bus,
                context: CONTEXT,
                spec,
                target: batch_target(cache),
                stats,
                faults,
                checkpoint,
                guard,
            };
            let (actor, _) =
                Actor::spawn_linked(None, EventConsumer::<StoresEvent>::default(), args, supervisor).await?;
            Ok(actor.get_cell())
        }
    });

    let args = SupervisorArgs { path, children: vec![cache, consumer], policy: RestartPolicy::context(), tree };
    (args, handle)
}
