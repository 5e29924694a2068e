//! A user's own bounded contexts on Carrier's public API: `inventory` owns products and
//! `storefront` keeps a cache of them, publishing `ProductSoldOut` when stock runs out.
#![allow(missing_docs)]

use carrier::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductAdded {
    pub id: String,
    pub name: String,
    pub price: i64,
    pub quantity: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockAdjusted {
    pub id: String,
    pub delta: i64,
    pub quantity: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductSoldOut {
    pub id: String,
}

impl Validate for ProductAdded {
    fn validate(&self) -> Result<(), ValidationError> {
        check::name("name", &self.name)?;
        check::non_negative("price", self.price)?;
        check::non_negative("quantity", self.quantity)
    }
}

impl Validate for StockAdjusted {
    fn validate(&self) -> Result<(), ValidationError> {
        check::non_negative("quantity", self.quantity)
    }
}

impl Validate for ProductSoldOut {}

domain_events! {
    /// What the inventory publishes.
    enum InventoryEvent, context "inventory", stream "INVENTORY", subjects "inventory.>";
    ProductAdded => "product", "inventory.product.added";
    StockAdjusted => "product", "inventory.product.stock_adjusted";
}

domain_events! {
    /// What the storefront publishes.
    enum StorefrontEvent, context "storefront", stream "STOREFRONT", subjects "storefront.>";
    ProductSoldOut => "listing", "storefront.listing.sold_out";
}

/// The inventory's commands, on `cmd.inventory`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum InventoryCommand {
    AddProduct { id: String, name: String, price: i64, quantity: i64 },
    AdjustStock { id: String, delta: i64 },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Product {
    pub name: String,
    pub price: i64,
    pub quantity: i64,
}

const PRODUCTS: Rows<Product> = Rows::new("products");

/// The inventory: the owner of products. It decides commands and reacts to nothing.
pub struct Inventory;

impl ContextKind for Inventory {
    const NAME: &'static str = "inventory";
    type Event = InventoryEvent;
}

impl Decides<InventoryCommand> for Inventory {
    fn decide(
        txn: &WriteTransaction,
        emit: &mut Emitter<'_, InventoryEvent>,
        command: &InventoryCommand,
        causality: &Causality,
    ) -> Result<(), CommandError> {
        let mut products = PRODUCTS.open(txn)?;
        let (event, product) = match command.clone() {
            InventoryCommand::AddProduct { id, name, price, quantity } => {
                if products.get(&id)?.is_some() {
                    return Err(CommandError::AlreadyExists { kind: "product", id });
                }
                let product = Product { name: name.clone(), price, quantity };
                (InventoryEvent::ProductAdded(ProductAdded { id, name, price, quantity }), product)
            }
            InventoryCommand::AdjustStock { id, delta } => {
                let not_found = || CommandError::NotFound { kind: "product", id: id.clone() };
                let mut product = products.get(&id)?.ok_or_else(not_found)?;
                product.quantity = product.quantity.checked_add(delta).filter(|q| *q >= 0).ok_or_else(|| {
                    CommandError::Rejected(format!("{id:?} has {} in stock, not {}", product.quantity, -delta))
                })?;
                (InventoryEvent::StockAdjusted(StockAdjusted { id, delta, quantity: product.quantity }), product)
            }
        };
        products.put(event.aggregate_id(), &product)?;
        // The library numbers each product's events (1 for ProductAdded, then 2, 3, ...).
        emit.event(event, causality)?;
        Ok(())
    }
}

/// A product as the storefront lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Listing {
    pub name: String,
    pub price: i64,
    pub in_stock: bool,
}

const LISTINGS: Rows<Listing> = Rows::new("listings");

/// The storefront: a cache of the inventory's products.
pub struct Storefront;

impl ContextKind for Storefront {
    const NAME: &'static str = "storefront";
    type Event = StorefrontEvent;
}

impl Reacts<InventoryEvent> for Storefront {
    type Tables<'txn> = RowsMut<'txn, Listing>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<RowsMut<'txn, Listing>, StorageError> {
        LISTINGS.open(txn)
    }

    fn react(
        listings: &mut RowsMut<'_, Listing>,
        emit: &mut Emitter<'_, StorefrontEvent>,
        envelope: &Envelope,
        event: &InventoryEvent,
    ) -> Result<(), ReactError> {
        match event {
            InventoryEvent::ProductAdded(e) => {
                listings.put(&e.id, &Listing { name: e.name.clone(), price: e.price, in_stock: e.quantity > 0 })?;
                Ok(())
            }
            InventoryEvent::StockAdjusted(e) => {
                listings.update(&e.id, |l| l.in_stock = e.quantity > 0)?;
                // Stock that fell to zero: the listing sells out once per time it empties.
                if e.quantity == 0 && e.delta < 0 {
                    let sold_out = StorefrontEvent::ProductSoldOut(ProductSoldOut { id: e.id.clone() });
                    emit.emit(sold_out, envelope.aggregate_version, envelope)?;
                }
                Ok(())
            }
        }
    }
}

/// The storefront's queries, on `query.storefront`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum StorefrontQuery {
    GetListing { id: String },
}

/// Both contexts, in start order.
pub fn contexts() -> Vec<BoundedContext> {
    vec![
        BoundedContext::of::<Inventory>().decides::<InventoryCommand>().build(),
        // Its listings are a function of the inventory's stream alone: `rebuild` can replay them.
        BoundedContext::of::<Storefront>()
            .projects::<InventoryEvent>(&["listings"], &["product"])
            .queries(|db, StorefrontQuery::GetListing { id }| Found::answer(db.read(|txn| LISTINGS.get(txn, &id))))
            .build(),
    ]
}
