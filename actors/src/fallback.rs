//! The anti-corruption fallback (seed 001): when a cache misses, or finds a gap in an entity's
//! versions, it asks the owning context for the entity's current state over request/reply.
//!
//! The owner may be down; the fallback must then cost one fast failure, not a hang. So every
//! call has a timeout; consecutive failures open a circuit breaker that fails calls at once
//! until a trial call succeeds; and "not found" answers are remembered briefly (a negative
//! cache), so a stream of lookups for an id that does not exist does not hammer the owner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carrier_messages::header;
use carrier_messages::CommandFailure;
use carrier_messages::ContentType;
use carrier_messages::Found;
use carrier_messages::{decode_request, encode_reply, entity_subject, Entity, EntityQuery};
use serde::{de::DeserializeOwned, Serialize};

use crate::bus::Bus;

/// How the fallback behaves.
#[derive(Clone, Copy, Debug)]
pub struct FallbackConfig {
    /// How long one call may take.
    pub timeout: Duration,
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long an open breaker fails calls at once before letting a trial call through.
    pub open_for: Duration,
    /// How long a "not found" answer is remembered.
    pub negative_ttl: Duration,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            timeout: Duration::from_millis(500),
            failures_to_open: 3,
            open_for: Duration::from_secs(2),
            negative_ttl: Duration::from_secs(5),
        }
    }
}

/// Why the owner could not be asked; both are worth retrying later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FallbackError {
    /// Recent calls failed; this one was not even tried.
    #[error("the {owner} fallback's circuit breaker is open")]
    BreakerOpen {
        /// The owning context.
        owner: &'static str,
    },
    /// The call failed or timed out.
    #[error("the {owner} context did not answer: {reason}")]
    Unavailable {
        /// The owning context.
        owner: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// The breaker's state, for health reports and the dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail at once.
    Open,
    /// One trial call is allowed.
    HalfOpen,
}

/// Counters of a fallback.
#[derive(Default, Debug)]
pub struct FallbackStats {
    /// Calls answered.
    pub ok: AtomicU64,
    /// Calls that failed or timed out.
    pub failed: AtomicU64,
    /// Calls refused by the open breaker.
    pub rejected: AtomicU64,
    /// Lookups answered "not found" from the negative cache.
    pub negative_hits: AtomicU64,
}

#[derive(Debug)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_running: bool },
}

/// Asks one owning context for the current state of its entities, on its entity endpoint
/// (`query.<owner>.entity`).
pub struct Fallback {
    owner: &'static str,
    bus: Bus,
    config: FallbackConfig,
    breaker: Mutex<Breaker>,
    not_found: Mutex<HashMap<(&'static str, String), Instant>>,
    /// Its counters.
    pub stats: Arc<FallbackStats>,
}

/// An owner's answer to a query: whether it answered, why not, and whether it found anything.
trait OwnerReply: DeserializeOwned {
    fn refusal(&self) -> Option<Option<&CommandFailure>>;
    fn found(&self) -> bool;
}

impl<T: DeserializeOwned> OwnerReply for Found<T> {
    fn refusal(&self) -> Option<Option<&CommandFailure>> {
        (!self.ok).then_some(self.error.as_ref())
    }
    fn found(&self) -> bool {
        self.found.is_some()
    }
}

impl Fallback {
    /// A fallback to `owner`'s entity endpoint over `bus`.
    pub fn new(owner: &'static str, bus: Bus, config: FallbackConfig) -> Self {
        Fallback {
            owner,
            bus,
            config,
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            not_found: Mutex::new(HashMap::new()),
            stats: Arc::new(FallbackStats::default()),
        }
    }

    /// The owning context it asks.
    pub fn owner(&self) -> &'static str {
        self.owner
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        match self.breaker.lock().map(|b| match *b {
            Breaker::Closed { .. } => BreakerState::Closed,
            Breaker::Open { until } if Instant::now() < until => BreakerState::Open,
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => BreakerState::HalfOpen,
        }) {
            Ok(state) => state,
            Err(_) => BreakerState::Open,
        }
    }

    /// An entity's current state from the owner's entity endpoint ([`entity_subject`]), `None`
    /// when the owner does not know it (remembered for a while, see
    /// `FallbackConfig::negative_ttl`). A tombstone (the owner deleted it) has no state and is
    /// remembered the same way.
    pub async fn entity<S: DeserializeOwned + Send + 'static>(
        &self,
        aggregate: &'static str,
        id: &str,
    ) -> Result<Option<Entity<S>>, FallbackError> {
        let query = EntityQuery { aggregate: aggregate.to_string(), id: id.to_string() };
        let reply: Option<Found<Entity<S>>> = self.ask_on(&entity_subject(self.owner), aggregate, id, query).await?;
        let entity = reply.and_then(|r| r.found);
        if entity.as_ref().is_some_and(|e| e.state.is_none()) {
            self.remember_missing((aggregate, id.to_string()));
        }
        Ok(entity)
    }

    async fn ask_on<Q: Serialize, R: OwnerReply>(
        &self,
        subject: &str,
        kind: &'static str,
        id: &str,
        query: Q,
    ) -> Result<Option<R>, FallbackError> {
        let owner = self.owner;
        let key = (kind, id.to_string());
        if self.remembered_missing(&key) {
            self.stats.negative_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        if let Err(refused) = self.admit() {
            if let Some(metrics) = crate::metrics::get() {
                let labels = crate::metrics::FallbackLabels { owner, outcome: "rejected" };
                metrics.fallback_seconds.get_or_create(&labels).observe(0.0);
            }
            return Err(refused);
        }
        let started = Instant::now();
        let headers = vec![(header::CONTENT_TYPE.to_string(), ContentType::Cbor.as_str().to_string())];
        let body = encode_reply(ContentType::Cbor, &query);
        let answer = self.bus.request(subject, &headers, body, self.config.timeout).await;
        let reply = answer
            .map_err(|e| e.to_string())
            .and_then(|bytes| decode_request::<R>(ContentType::Cbor, &bytes).map_err(|e| e.to_string()))
            .and_then(|reply| match reply.refusal() {
                None => Ok(reply),
                Some(Some(e)) => Err(format!("{}: {}", e.code, e.message)),
                Some(None) => Err("refused without a reason".to_string()),
            });
        if let Some(metrics) = crate::metrics::get() {
            let outcome = if reply.is_ok() { "ok" } else { "failed" };
            let labels = crate::metrics::FallbackLabels { owner, outcome };
            metrics.fallback_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        }
        match reply {
            Ok(reply) => {
                self.record(true);
                if !reply.found() {
                    self.remember_missing(key);
                }
                Ok(Some(reply))
            }
            Err(reason) => {
                self.record(false);
                Err(FallbackError::Unavailable { owner, reason })
            }
        }
    }

    /// Remembers that the owner has no such entity, for [`FallbackConfig::negative_ttl`].
    fn remember_missing(&self, key: (&'static str, String)) {
        if let Ok(mut missing) = self.not_found.lock() {
            missing.retain(|_, until| *until > Instant::now());
            missing.insert(key, Instant::now() + self.config.negative_ttl);
        }
    }

    fn remembered_missing(&self, key: &(&'static str, String)) -> bool {
        self.not_found.lock().map(|m| m.get(key).is_some_and(|until| *until > Instant::now())).unwrap_or(false)
    }

    /// Lets a call through, or refuses it while the breaker is open.
    fn admit(&self) -> Result<(), FallbackError> {
        let mut breaker = self.breaker.lock().map_err(|_| FallbackError::BreakerOpen { owner: self.owner })?;
        match *breaker {
            Breaker::Closed { .. } => Ok(()),
            Breaker::Open { until } if Instant::now() < until => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err(FallbackError::BreakerOpen { owner: self.owner })
            }
            Breaker::Open { .. } | Breaker::HalfOpen { trial_running: false } => {
                *breaker = Breaker::HalfOpen { trial_running: true };
                Ok(())
            }
            Breaker::HalfOpen { trial_running: true } => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err(FallbackError::BreakerOpen { owner: self.owner })
            }
        }
    }

    fn record(&self, success: bool) {
        let counter = if success { &self.stats.ok } else { &self.stats.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut breaker) = self.breaker.lock() {
            *breaker = match (&*breaker, success) {
                (_, true) => Breaker::Closed { failures: 0 },
                (Breaker::Closed { failures }, false) if failures + 1 < self.config.failures_to_open => {
                    Breaker::Closed { failures: failures + 1 }
                }
                (_, false) => {
                    tracing::warn!(
                        owner = self.owner,
                        open_for_ms = self.config.open_for.as_millis() as u64,
                        "fallback breaker open"
                    );
                    Breaker::Open { until: Instant::now() + self.config.open_for }
                }
            };
        }
    }
}
