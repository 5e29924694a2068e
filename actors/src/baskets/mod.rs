//! The baskets bounded context: local caches of stores and products, fed by the stores stream.
//!
//! Actors, under the `carrier/baskets` supervisor (rest-for-one):
//! - `cache` ([`BasketsCache`]): the only writer of `baskets.redb`;
//! - `stores-consumer` ([`EventConsumer`]): the durable consumer `baskets-stores` on `STORES`.

mod cache;

pub use cache::{BasketsCache, BasketsCacheArgs, BasketsCacheMsg, InboxRetention};

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};

use carrier_messages::stores::StoresEvent;
use carrier_messages::DomainEvent;
use carrier_storage::BasketsDb;

use crate::bus::{Bus, DurableSpec};
use crate::consumer::{batch_target, CheckpointReader, ConsumerArgs, ConsumerStats, EventConsumer};
use crate::faults::Faults;
use crate::supervisor::{ChildSpec, RestartPolicy, SupervisionTree, SupervisorArgs};

/// The context's name, as used in durable names, paths and dead-letter streams.
pub const CONTEXT: &str = "baskets";

/// The durable consumer's name: unique per consuming context and source stream, so that two
/// contexts never share (and split) one consumer's messages.
pub fn stores_durable_name() -> String {
    format!("{CONTEXT}-{}", StoresEvent::CONTEXT)
}

/// What the rest of the process may use of a running baskets context.
#[derive(Clone)]
pub struct BasketsHandle {
    /// Its database, for reading.
    pub db: Arc<BasketsDb>,
    /// Its stores consumer's counters.
    pub stores_consumer: Arc<ConsumerStats>,
}

/// Builds the context's supervisor arguments.
pub(crate) fn supervisor_args(
    bus: Bus,
    db: Arc<BasketsDb>,
    batch_max: usize,
    ack_wait: Duration,
    inbox_retention: InboxRetention,
    faults: Arc<Faults>,
    tree: SupervisionTree,
    path: String,
) -> (SupervisorArgs, BasketsHandle) {
    let stats = Arc::new(ConsumerStats::default());
    let handle = BasketsHandle { db: db.clone(), stores_consumer: stats.clone() };

    let cache_faults = faults.clone();
    let consumer_db = db.clone();
    let cache = ChildSpec::new("cache", move |supervisor, _siblings| {
        let args = BasketsCacheArgs { db: db.clone(), faults: cache_faults.clone(), inbox_retention };
        async move {
            let (actor, _) = Actor::spawn_linked(None, BasketsCache, args, supervisor).await?;
            Ok(actor.get_cell())
        }
    });

    let consumer = ChildSpec::new("stores-consumer", move |supervisor, siblings| {
        let bus = bus.clone();
        let stats = stats.clone();
        let faults = faults.clone();
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
            let args =
                ConsumerArgs { bus, context: CONTEXT, spec, target: batch_target(cache), stats, faults, checkpoint };
            let (actor, _) =
                Actor::spawn_linked(None, EventConsumer::<StoresEvent>::default(), args, supervisor).await?;
            Ok(actor.get_cell())
        }
    });

    let args = SupervisorArgs { path, children: vec![cache, consumer], policy: RestartPolicy::context(), tree };
    (args, handle)
}
