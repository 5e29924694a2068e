//! A store node: one store's local cache of the central inventory (seed 003's "Store API").
//!
//! The cache is a Carrier context like any user's: `store.redb`, written by its one writer,
//! fed by a durable consumer of `CENTRAL` of its own (it is a [read model]: every store node
//! is an instance with its own durable and checkpoint, and takes no lease), through the same
//! inbox, versions and checkpoint as every Carrier cache. A version gap is repaired through the
//! central's entity endpoint; when the stream no longer holds the node's position, or on demand,
//! the cache is replaced by the central's snapshot in one transaction (a full sync,
//! [`carrier_actors::resync`]).
//!
//! Reads are served from the cache whether the central is up or not. Writes are proxied to the
//! central over NATS (`cmd.central`) with the store's prefix on their idempotency keys, and
//! answered once this node's cache holds the version they made (read your writes).
//! [`SyncMonitor`] keeps what the seed's sync status shows: the lag behind the stream, event-sync
//! failures and fallback mode. [`http`] is the node's HTTP API.
//!
//! [read model]: carrier_actors::ContextDecl::read_model

pub mod http;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use carrier_actors::Bus;
use carrier_actors::{BoundedContext, ContextHandle};
use carrier_messages::NoEvents;
use carrier_messages::{DomainEvent, Envelope, Found};
use carrier_storage::ReactError;
use carrier_storage::{Adopts, ContextKind, Emitter, Reacts, Resyncs, Rows, RowsMut, StorageError, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::central::{CentralEvent, ProductView};

/// The context's name: `store.redb`, durables `store-central-<instance>`.
pub const CONTEXT: &str = "store";

/// A product as a store node keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedProduct {
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub price: i64,
    /// Units in stock.
    pub available: i64,
    /// The version of the last event applied.
    pub version: u64,
    /// When it last changed at the central, RFC 3339.
    pub last_updated: String,
}

impl CachedProduct {
    fn of(name: &str, price: i64, available: i64, version: u64, last_updated: &str) -> Self {
        CachedProduct { name: name.to_string(), price, available, version, last_updated: last_updated.to_string() }
    }

    /// As the central's views show it.
    pub fn view(&self, id: &str) -> ProductView {
        ProductView {
            product_id: id.to_string(),
            name: self.name.clone(),
            price: self.price,
            available: self.available,
            version: self.version,
            last_updated: self.last_updated.clone(),
        }
    }
}

/// The cached products, by id.
pub const PRODUCTS: Rows<CachedProduct> = Rows::new("products");

/// A store node's file.
pub struct StoreCache;

impl ContextKind for StoreCache {
    const NAME: &'static str = CONTEXT;
    type Event = NoEvents;

    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
        PRODUCTS.create(txn)
    }
}

impl Reacts<CentralEvent> for StoreCache {
    type Tables<'txn> = RowsMut<'txn, CachedProduct>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<RowsMut<'txn, CachedProduct>, StorageError> {
        PRODUCTS.open(txn)
    }

    fn react(
        products: &mut RowsMut<'_, CachedProduct>,
        _emit: &mut Emitter<'_, NoEvents>,
        envelope: &Envelope,
        event: &CentralEvent,
    ) -> Result<(), ReactError> {
        let version = envelope.aggregate_version;
        // Every event but a deletion carries the product's whole state: write it.
        let (id, product) = match event {
            CentralEvent::ProductDeleted(e) => return Ok(products.remove(&e.id)?),
            CentralEvent::ProductCreated(e) => {
                (&e.id, CachedProduct::of(&e.name, e.price, e.available, version, &e.last_updated))
            }
            CentralEvent::ProductModified(e) => {
                (&e.id, CachedProduct::of(&e.name, e.price, e.available, version, &e.last_updated))
            }
            CentralEvent::InventoryUpdated(e) => {
                (&e.id, CachedProduct::of(&e.name, e.price, e.available, version, &e.last_updated))
            }
        };
        Ok(products.put(id, &product)?)
    }
}

impl Adopts<CentralEvent> for StoreCache {
    type State = ProductView;

    const TABLES: &'static [(&'static str, &'static str)] = &[("product", "products")];

    fn adopt(
        products: &mut RowsMut<'_, CachedProduct>,
        _aggregate: &str,
        id: &str,
        state: ProductView,
    ) -> Result<(), StorageError> {
        products.put(
            id,
            &CachedProduct {
                name: state.name,
                price: state.price,
                available: state.available,
                version: state.version,
                last_updated: state.last_updated,
            },
        )
    }

    fn forget(products: &mut RowsMut<'_, CachedProduct>, _aggregate: &str, id: &str) -> Result<(), StorageError> {
        products.remove(id)
    }
}

impl Resyncs<CentralEvent> for StoreCache {
    fn clear(products: &mut RowsMut<'_, CachedProduct>, _aggregate: &str) -> Result<(), StorageError> {
        products.clear()
    }
}

/// The store node's queries, on `query.store` (answered by any store node: each holds a full
/// copy of the central's products).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(tag = "query", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreQuery {
    /// One cached product.
    GetProduct {
        /// Its id.
        product_id: String,
    },
}

/// The store node's declaration: a cache of the central's products with gap repair and full
/// sync, on every node (a read model).
pub fn context() -> BoundedContext {
    BoundedContext::of::<StoreCache>()
        .caches::<CentralEvent>()
        .resyncs::<CentralEvent>()
        .queries(|db, StoreQuery::GetProduct { product_id }| {
            Found::answer(db.read(|txn| Ok(PRODUCTS.get(txn, &product_id)?.map(|p| p.view(&product_id)))))
        })
        .read_model()
        .build()
}

/// The handle a store node's HTTP API reads and syncs through.
pub type StoreHandle = ContextHandle<StoreCache>;

/// Consecutive event-sync failures after which a node is in fallback mode.
pub const FALLBACK_AFTER: u64 = 5;

/// What the seed's sync status shows of event sync: checked every second against the stream.
///
/// On JetStream events are pushed to the node's durable consumer as they are stored, so there
/// is no polling interval; what can fail is reaching JetStream at all. Each second the monitor
/// reads the stream's last sequence (which also gives the lag behind it): a failure counts,
/// a success resets the count. After [`FALLBACK_AFTER`] failures in a row the node is in fallback
/// mode, and tries a full sync from the central every `fallback_sync_every` until event sync
/// works again (the central answers over NATS request/reply even when JetStream does not).
pub struct SyncMonitor {
    /// Consecutive failed checks.
    pub consecutive_failures: AtomicU64,
    /// In fallback mode.
    pub fallback_mode: AtomicBool,
    /// The stream's last sequence at the last good check.
    pub stream_last: AtomicU64,
    /// When the last check succeeded, Unix ms.
    pub last_check_unix_ms: AtomicU64,
    /// The last moment the cache was known to hold everything the stream had (a check that
    /// found no lag, or a full sync's end), Unix ms: what `lastSyncTime` and `Age` tell.
    pub caught_up_unix_ms: AtomicU64,
    /// When the node started, Unix ms.
    pub started_unix_ms: u64,
}

impl SyncMonitor {
    fn new() -> Self {
        SyncMonitor {
            consecutive_failures: AtomicU64::new(0),
            fallback_mode: AtomicBool::new(false),
            stream_last: AtomicU64::new(0),
            last_check_unix_ms: AtomicU64::new(0),
            caught_up_unix_ms: AtomicU64::new(0),
            started_unix_ms: unix_ms(SystemTime::now()),
        }
    }
}

/// A running store node: its cache, its connection and its sync state.
#[derive(Clone)]
pub struct StoreNode {
    /// The store's id (`store-s1`), the prefix of its idempotency keys.
    pub store_id: String,
    /// The cache.
    pub handle: StoreHandle,
    /// The connection (writes are proxied over it).
    pub bus: Bus,
    /// Event-sync health.
    pub monitor: Arc<SyncMonitor>,
}

impl StoreNode {
    /// A node over a running cache context.
    pub fn new(store_id: String, handle: StoreHandle, bus: Bus) -> Self {
        StoreNode { store_id, handle, bus, monitor: Arc::new(SyncMonitor::new()) }
    }

    /// The last stream sequence this node's cache applied (its checkpoint, as acknowledged).
    pub fn position(&self) -> u64 {
        self.handle
            .consumer(<CentralEvent as DomainEvent>::CONTEXT)
            .map(|s| s.acked_stream_seq.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Events stored in the stream that this node has not applied yet (at the last check).
    pub fn lag(&self) -> u64 {
        self.monitor.stream_last.load(Ordering::Relaxed).saturating_sub(self.position())
    }

    /// Starts the monitor; with `first_sync`, a full sync first when the cache has never had one
    /// (a first start: the stream may no longer hold the central's early events).
    pub fn start(&self, fallback_sync_every: Duration, first_sync: bool) -> tokio::task::JoinHandle<()> {
        let node = self.clone();
        tokio::spawn(async move {
            if first_sync && node.handle.db.read(|txn| PRODUCTS.len(txn)).unwrap_or(0) == 0 {
                let _ = node.handle.resync("first start").await;
            }
            let mut last_fallback_sync: Option<std::time::Instant> = None;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                node.check(fallback_sync_every, &mut last_fallback_sync).await;
            }
        })
    }

    async fn check(&self, fallback_sync_every: Duration, last_fallback_sync: &mut Option<std::time::Instant>) {
        let stream = <CentralEvent as DomainEvent>::STREAM;
        let checked =
            tokio::time::timeout(Duration::from_secs(2), self.bus.last_sequence(stream)).await.map_err(|_| ());
        let m = &self.monitor;
        match checked {
            Ok(Ok(last)) => {
                let now = unix_ms(SystemTime::now());
                m.stream_last.store(last, Ordering::Relaxed);
                m.last_check_unix_ms.store(now, Ordering::Relaxed);
                if self.position() >= last {
                    m.caught_up_unix_ms.store(now, Ordering::Relaxed);
                }
                m.consecutive_failures.store(0, Ordering::Relaxed);
                if m.fallback_mode.swap(false, Ordering::Relaxed) {
                    tracing::info!("event sync works again: fallback mode ends");
                }
            }
            _ => {
                let failures = m.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= FALLBACK_AFTER && !m.fallback_mode.swap(true, Ordering::Relaxed) {
                    tracing::warn!(failures, "event sync keeps failing: fallback mode (full syncs from the central)");
                }
                let due = last_fallback_sync.is_none_or(|at| at.elapsed() >= fallback_sync_every);
                if m.fallback_mode.load(Ordering::Relaxed) && due {
                    *last_fallback_sync = Some(std::time::Instant::now());
                    let handle = self.handle.clone();
                    tokio::spawn(async move {
                        let _ = handle.resync("fallback mode").await;
                    });
                }
            }
        }
    }
}

impl StoreNode {
    /// The node's sync state as rows for the dashboard's panel (see
    /// [`carrier_actors::Observer::add_panel`]): read from counters, no I/O.
    pub fn panel_rows(&self) -> Vec<(String, String)> {
        let m = &self.monitor;
        let resync = self.handle.resync_status();
        let sync_state = if resync.in_progress {
            format!("full sync in progress ({} / {})", resync.done, resync.total)
        } else if m.fallback_mode.load(Ordering::Relaxed) {
            "fallback mode".to_string()
        } else {
            "following events".to_string()
        };
        vec![
            ("store".into(), self.store_id.clone()),
            ("sync state".into(), sync_state),
            ("lag (events)".into(), self.lag().to_string()),
            ("applied through".into(), self.position().to_string()),
            ("stream last".into(), m.stream_last.load(Ordering::Relaxed).to_string()),
            ("fallback mode".into(), m.fallback_mode.load(Ordering::Relaxed).to_string()),
            ("consecutive failures".into(), m.consecutive_failures.load(Ordering::Relaxed).to_string()),
            (
                "last caught up".into(),
                rfc3339(m.caught_up_unix_ms.load(Ordering::Relaxed)).unwrap_or_else(|| "never".into()),
            ),
        ]
    }
}

/// Unix ms of `at`.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

/// Unix ms as RFC 3339, or `None` for 0.
pub fn rfc3339(unix_ms: u64) -> Option<String> {
    if unix_ms == 0 {
        return None;
    }
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).ok()?;
    at.format(&time::format_description::well_known::Rfc3339).ok()
}
