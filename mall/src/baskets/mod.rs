//! The baskets bounded context: baskets, and local caches of stores and products (name, price)
//! fed by the stores stream, so that adding an item never asks the stores service on its hot
//! path (only a cache miss does, through the fallback).
//!
//! Actors, under the `carrier/baskets` supervisor (rest-for-one): `cache` (the only writer of
//! `baskets.redb`), `stores-consumer` (the durable `baskets-stores-<instance>` on `STORES`: each
//! instance keeps its own caches), `outbox-relay` (to `BASKETS`) and `commands` (on
//! `cmd.baskets`).

pub mod events;
mod state;

pub use events::*;
pub use state::*;

use crate::stores::events::StoresEvent;
use carrier_storage::{CommandError, Decided};

use carrier_actors::BoundedContext;
use carrier_actors::{ContextHandle, LookupError};

use crate::StoresLookups;

/// The context's name, as used in durable names, paths and dead-letter streams.
pub const CONTEXT: &str = "baskets";

/// What the rest of the process may use of a running baskets context.
pub type BasketsHandle = ContextHandle<Baskets>;

/// The durable consumer's name on the stores stream of the instance whose data directory is
/// `data_dir`: every instance keeps its own caches (`baskets-stores-<instance>`).
pub fn stores_durable_name(data_dir: &std::path::Path) -> Result<String, carrier_actors::StartError> {
    let instance = carrier_actors::instance_id(data_dir)?;
    let source = <StoresEvent as carrier_messages::DomainEvent>::CONTEXT;
    Ok(carrier_actors::instance_durable_name(CONTEXT, source, &carrier_actors::durable_suffix(&instance)))
}

/// The context's declaration. A second instance stands by, following `BASKETS` into its own
/// rows and keeping its own caches of `STORES`, and takes over when the first dies.
pub fn context() -> BoundedContext {
    BoundedContext::of::<Baskets>()
        .caches::<StoresEvent>()
        .commands(|handle: BasketsHandle, command: BasketsCommand, causality| async move {
            execute(&handle, command, causality).await
        })
        .follows_itself()
        .build()
}

/// Carries out a basket command: an item's names and price come from the caches (or, on a miss,
/// the stores context) before the writer decides, so no lookup runs inside its transaction. The
/// answer says whether it replays an earlier send of the same idempotency key, and where its
/// event was published when it waited for that (another instance stands by).
pub async fn execute(
    handle: &BasketsHandle,
    command: BasketsCommand,
    causality: carrier_messages::Causality,
) -> Result<Decided<BasketsEvent>, CommandError> {
    let item = match &command {
        BasketsCommand::AddItem { product_id, quantity, .. } => lookup_item(handle, product_id, *quantity).await?,
        _ => None,
    };
    handle.execute_once(PricedBasketCommand { command, item }, causality).await.map_err(CommandError::from)
}

async fn lookup_item(
    handle: &BasketsHandle,
    product_id: &str,
    quantity: i64,
) -> Result<Option<BasketItem>, CommandError> {
    let Some(product) = handle.product(product_id).await.map_err(unavailable)? else { return Ok(None) };
    let store = handle
        .store(&product.store_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| CommandError::NotFound { kind: "store", id: product.store_id.clone() })?;
    Ok(Some(BasketItem {
        store_id: product.store_id,
        store_name: store.name,
        product_id: product_id.to_string(),
        product_name: product.name,
        price: product.price,
        quantity,
    }))
}

fn unavailable(error: LookupError) -> CommandError {
    CommandError::unavailable(error)
}
