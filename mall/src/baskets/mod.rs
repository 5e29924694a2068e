//! The baskets bounded context: baskets, and local caches of stores and products (name, price)
//! fed by the stores stream, so that adding an item never asks the stores service on its hot
//! path (only a cache miss does, through the fallback).
//!
//! Actors, under the `carrier/baskets` supervisor (rest-for-one): `cache` (the only writer of
//! `baskets.redb`), `stores-consumer` (the durable `baskets-stores` on `STORES`), `outbox-relay`
//! (to `BASKETS`) and `commands` (on `cmd.baskets`).

use carrier_messages::baskets::{BasketItem, BasketsCommand, BasketsEvent};
use carrier_messages::stores::StoresEvent;
use carrier_storage::baskets::Baskets;
use carrier_storage::{CommandError, PricedBasketCommand};

use carrier_actors::cache::{ContextHandle, LookupError};
use carrier_actors::context::BoundedContext;

/// The context's name, as used in durable names, paths and dead-letter streams.
pub const CONTEXT: &str = "baskets";

/// What the rest of the process may use of a running baskets context.
pub type BasketsHandle = ContextHandle<Baskets>;

/// The durable consumer's name on the stores stream.
pub fn stores_durable_name() -> String {
    carrier_actors::cache::stores_durable_name(CONTEXT)
}

/// The context's declaration.
pub fn context() -> BoundedContext {
    BoundedContext::of::<Baskets>()
        .stores_fallback()
        .consume::<StoresEvent>()
        .commands(|handle: BasketsHandle, command: BasketsCommand, causality| async move {
            execute(&handle, command, causality).await
        })
        .build()
}

/// Carries out a basket command: an item's names and price come from the caches (or, on a miss,
/// the stores context) before the writer decides, so no lookup runs inside its transaction.
pub async fn execute(
    handle: &BasketsHandle,
    command: BasketsCommand,
    causality: carrier_messages::codec::Causality,
) -> Result<carrier_messages::Decoded<BasketsEvent>, CommandError> {
    let item = match &command {
        BasketsCommand::AddItem { product_id, quantity, .. } => lookup_item(handle, product_id, *quantity).await?,
        _ => None,
    };
    handle.execute(PricedBasketCommand { command, item }, causality).await.map_err(CommandError::from)
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
