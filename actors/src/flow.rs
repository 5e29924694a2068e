//! The asynchronous flow log, in the style of the MallBots logs (seed 001):
//!
//! ```text
//! --> Stores.CreateStore
//! --> Stores.IntegrationEvents.On(stores.StoreCreated)
//! <-- Stores.IntegrationEvents.On(stores.StoreCreated)
//! <-- Stores.CreateStore
//! --> Baskets.Store.On(stores.StoreCreated)
//! <-- Baskets.Store.On(stores.StoreCreated)
//! ```
//!
//! Lines go to the `carrier::flow` tracing target at INFO, so the demo shows them and a
//! benchmark filters them out at the cost of one cached level check per batch.

/// The tracing target of flow lines.
pub const TARGET: &str = "carrier::flow";

/// Whether flow lines are being recorded at all.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// `--> label`.
pub fn enter(label: &str) {
    tracing::info!(target: TARGET, "--> {label}");
}

/// `<-- label` with an optional note, e.g. `duplicate`.
pub fn leave(label: &str, note: Option<&str>) {
    match note {
        Some(note) => tracing::info!(target: TARGET, "<-- {label} ({note})"),
        None => tracing::info!(target: TARGET, "<-- {label}"),
    }
}

/// `Baskets.Store.On(stores.StoreCreated)` from a context, an aggregate and an event type.
pub fn handler(context: &str, aggregate: &str, event_type: &str) -> String {
    format!("{}.{}.On({event_type})", capitalize(context), capitalize(aggregate))
}

/// `stores` → `Stores`.
pub fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
