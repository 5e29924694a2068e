//! Prometheus metrics, encoded by `prometheus-client` for `/metrics`.
//!
//! Off until [`enable`] is called: every hook on the hot path starts with [`get`], one atomic
//! load, and does nothing more while metrics are off. When on, a consumer counts its batch's
//! outcomes by event type once per batch (not per event), so a scrape never slows a commit.
//! Gauges that need the server or a file (lag, outbox backlog, breaker state) are set by the
//! dashboard's sampler, off the hot path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use carrier_storage::{BatchOutcome, Disposition};

/// An event's fate in a consuming context.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The consuming context.
    pub context: &'static str,
    /// The event's type (`stores.StoreCreated`), or `undecodable`.
    pub event_type: &'static str,
    /// `consumed`, `applied`, `duplicate`, `stale`, `parked` or `dead_lettered`.
    pub outcome: &'static str,
}

/// One context.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContextLabels {
    /// The context.
    pub context: &'static str,
}

/// One durable consumer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// The consuming context.
    pub context: &'static str,
    /// The stream.
    pub stream: &'static str,
    /// The durable name.
    pub durable: String,
}

/// One fallback: a consuming context asking an owner.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// The owner asked.
    pub owner: &'static str,
    /// `ok`, `failed` or `rejected` (breaker open).
    pub outcome: &'static str,
}

/// A fallback's breaker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerLabels {
    /// The consuming context.
    pub context: &'static str,
    /// The owner asked.
    pub owner: &'static str,
}

/// One supervised actor.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabels {
    /// Its path in the tree (`carrier/baskets/cache`).
    pub actor: String,
}

/// An event-sourced context's commands by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// The context.
    pub context: &'static str,
    /// `committed`, `replayed` (a resend answered from its commit), `conflict_retried` (an
    /// append another writer beat, decided again), `conflict` (answered so after every retry).
    pub outcome: &'static str,
}

/// One subscription of an event bus.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    /// The bus.
    pub bus: String,
    /// The subscription.
    pub subscription: String,
}

/// An event bus's events by subscription and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    /// The bus.
    pub bus: String,
    /// The subscription.
    pub subscription: String,
    /// `handled`, `duplicate` (handled before; nothing ran), `retried` (a failed attempt) or
    /// `dead_lettered`.
    pub outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric Carrier exports.
pub struct Metrics {
    registry: Registry,
    /// `carrier_events_total`.
    pub events: Family<EventLabels, Counter>,
    /// `carrier_batch_events`: events per committed batch.
    pub batch_events: Histograms<ContextLabels>,
    /// `carrier_commit_seconds`: one batch's transaction, reactions included.
    pub commit_seconds: Histograms<ContextLabels>,
    /// `carrier_consumer_pending_messages`: the server's count of messages not yet delivered.
    pub consumer_pending: Family<ConsumerLabels, Gauge>,
    /// `carrier_consumer_ack_pending_messages`: delivered and not yet acknowledged.
    pub consumer_ack_pending: Family<ConsumerLabels, Gauge>,
    /// `carrier_outbox_backlog_events`: recorded and not yet acknowledged by JetStream.
    pub outbox_backlog: Family<ContextLabels, Gauge>,
    /// `carrier_outbox_published_events_total`.
    pub outbox_published: Family<ContextLabels, Counter>,
    /// `carrier_outbox_publish_seconds`: from publishing a batch to JetStream's acks.
    pub outbox_publish_seconds: Histograms<ContextLabels>,
    /// `carrier_fallback_seconds`: one question to an owner.
    pub fallback_seconds: Histograms<FallbackLabels>,
    /// `carrier_fallback_breaker_state`: 0 closed, 1 half open, 2 open.
    pub breaker_state: Family<BreakerLabels, Gauge>,
    /// `carrier_actor_restarts_total`.
    pub actor_restarts: Family<ActorLabels, Counter>,
    /// `carrier_event_store_commands_total`.
    pub event_store_commands: Family<CommandLabels, Counter>,
    /// `carrier_event_store_load_seconds`: loading one aggregate (snapshot and events).
    pub event_store_load_seconds: Histograms<ContextLabels>,
    /// `carrier_event_store_replayed_events_total`: events folded by loads.
    pub event_store_replayed: Family<ContextLabels, Counter>,
    /// `carrier_event_bus_events_total`.
    pub event_bus_events: Family<HandlerLabels, Counter>,
    /// `carrier_event_bus_handled_through_sequence`: the stream sequence through which a
    /// subscription handled everything (the stream's last sequence minus it is its lag).
    pub event_bus_handled_through: Family<SubscriptionLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

fn batch_histogram() -> Histogram {
    // 1 to 2048 events.
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let events = Family::<EventLabels, Counter>::default();
        registry.register("carrier_events", "Events by consuming context, type and outcome", events.clone());
        let batch_events: Histograms<ContextLabels> = Family::new_with_constructor(batch_histogram);
        registry.register("carrier_batch_events", "Events per committed batch", batch_events.clone());
        let commit_seconds: Histograms<ContextLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "carrier_commit",
            "Time to commit one batch, reactions included",
            Unit::Seconds,
            commit_seconds.clone(),
        );
        let consumer_pending = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "carrier_consumer_pending_messages",
            "Messages in the stream not yet delivered to the consumer (lag)",
            consumer_pending.clone(),
        );
        let consumer_ack_pending = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "carrier_consumer_ack_pending_messages",
            "Messages delivered and not yet acknowledged",
            consumer_ack_pending.clone(),
        );
        let outbox_backlog = Family::<ContextLabels, Gauge>::default();
        registry.register(
            "carrier_outbox_backlog_events",
            "Events recorded in the outbox and not yet acknowledged by JetStream",
            outbox_backlog.clone(),
        );
        let outbox_published = Family::<ContextLabels, Counter>::default();
        registry.register(
            "carrier_outbox_published_events",
            "Outbox events acknowledged by JetStream",
            outbox_published.clone(),
        );
        let outbox_publish_seconds: Histograms<ContextLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "carrier_outbox_publish",
            "Time from publishing an outbox batch to JetStream's acks",
            Unit::Seconds,
            outbox_publish_seconds.clone(),
        );
        let fallback_seconds: Histograms<FallbackLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "carrier_fallback",
            "Time to ask an owner for an entity the cache lacks",
            Unit::Seconds,
            fallback_seconds.clone(),
        );
        let breaker_state = Family::<BreakerLabels, Gauge>::default();
        registry.register(
            "carrier_fallback_breaker_state",
            "The fallback's circuit breaker: 0 closed, 1 half open, 2 open",
            breaker_state.clone(),
        );
        let actor_restarts = Family::<ActorLabels, Counter>::default();
        registry.register("carrier_actor_restarts", "Restarts by supervised actor", actor_restarts.clone());
        let event_store_commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "carrier_event_store_commands",
            "An event-sourced context's commands by outcome",
            event_store_commands.clone(),
        );
        let event_store_load_seconds: Histograms<ContextLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "carrier_event_store_load",
            "Time to load one aggregate (its snapshot and the events after it)",
            Unit::Seconds,
            event_store_load_seconds.clone(),
        );
        let event_store_replayed = Family::<ContextLabels, Counter>::default();
        registry.register(
            "carrier_event_store_replayed_events",
            "Events folded by aggregate loads",
            event_store_replayed.clone(),
        );
        let event_bus_events = Family::<HandlerLabels, Counter>::default();
        registry.register(
            "carrier_event_bus_events",
            "An event bus's events by subscription and outcome",
            event_bus_events.clone(),
        );
        let event_bus_handled_through = Family::<SubscriptionLabels, Gauge>::default();
        registry.register(
            "carrier_event_bus_handled_through_sequence",
            "The stream sequence through which a subscription handled everything",
            event_bus_handled_through.clone(),
        );
        Metrics {
            registry,
            event_store_commands,
            event_store_load_seconds,
            event_store_replayed,
            event_bus_events,
            event_bus_handled_through,
            events,
            batch_events,
            commit_seconds,
            consumer_pending,
            consumer_ack_pending,
            outbox_backlog,
            outbox_published,
            outbox_publish_seconds,
            fallback_seconds,
            breaker_state,
            actor_restarts,
        }
    }

    /// Counts a committed batch's outcomes; `event_types` lines up with the batch.
    pub fn record_batch(&self, context: &'static str, event_types: &[&'static str], outcome: &BatchOutcome) {
        let mut counts: Vec<(&'static str, &'static str, u64)> = Vec::new();
        let mut add = |event_type: &'static str, outcome: &'static str| match counts
            .iter_mut()
            .find(|(t, o, _)| *t == event_type && *o == outcome)
        {
            Some(entry) => entry.2 += 1,
            None => counts.push((event_type, outcome, 1)),
        };
        for (event_type, disposition) in event_types.iter().zip(&outcome.dispositions) {
            add(event_type, "consumed");
            add(
                event_type,
                match disposition {
                    Disposition::Applied => "applied",
                    Disposition::Duplicate => "duplicate",
                    Disposition::Stale { .. } => "stale",
                    Disposition::Parked { .. } => "parked",
                    Disposition::Followed => "followed",
                },
            );
        }
        for (event_type, outcome, n) in counts {
            self.events.get_or_create(&EventLabels { context, event_type, outcome }).inc_by(n);
        }
    }

    /// Counts one dead-lettered event.
    pub fn record_dead_letter(&self, context: &'static str, event_type: &'static str) {
        self.events.get_or_create(&EventLabels { context, event_type, outcome: "dead_lettered" }).inc();
    }

    /// Records one commit.
    pub fn record_commit(&self, context: &'static str, events: usize, took: Duration) {
        let labels = ContextLabels { context };
        self.batch_events.get_or_create(&labels).observe(events as f64);
        self.commit_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Counts an event-sourced command's outcome.
    pub fn record_command(&self, context: &'static str, outcome: &'static str) {
        self.event_store_commands.get_or_create(&CommandLabels { context, outcome }).inc();
    }

    /// Counts an event bus event's outcome.
    pub fn record_handler(&self, bus: &str, subscription: &str, outcome: &'static str) {
        let labels = HandlerLabels { bus: bus.to_string(), subscription: subscription.to_string(), outcome };
        self.event_bus_events.get_or_create(&labels).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns metrics on for the process and returns them.
pub fn enable() -> &'static Metrics {
    let metrics = METRICS.get_or_init(Metrics::new);
    ENABLED.store(true, Ordering::Release);
    metrics
}

/// The metrics, when on.
#[inline]
pub fn get() -> Option<&'static Metrics> {
    if ENABLED.load(Ordering::Relaxed) {
        METRICS.get()
    } else {
        None
    }
}

/// Turns metrics off again (for the benchmark's "off" run); counts so far are kept.
pub fn disable() {
    ENABLED.store(false, Ordering::Release);
}
