//! The baskets context: shopping baskets, owned by the baskets service.
//!
//! A basket's items carry the store and product names and the price the baskets context's own
//! caches held when the item was added, so that checkout never asks the stores service.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use carrier_messages::{check, ValidationError};

/// One line of a basket: a product, its store, its price when added, and how many.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BasketItem {
    /// The store that sells the product.
    pub store_id: String,
    /// The store's name when the item was added.
    pub store_name: String,
    /// Product id.
    pub product_id: String,
    /// The product's name when the item was added.
    pub product_name: String,
    /// Unit price in minor units when the item was added.
    pub price: i64,
    /// How many; greater than zero.
    pub quantity: i64,
}

impl BasketItem {
    /// `price × quantity`, saturating.
    pub fn line_total(&self) -> i64 {
        self.price.saturating_mul(self.quantity)
    }

    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        check::id("store_id", &self.store_id)?;
        check::name("store_name", &self.store_name)?;
        check::id("product_id", &self.product_id)?;
        check::name("product_name", &self.product_name)?;
        check::non_negative("price", self.price)?;
        check::positive("quantity", self.quantity)
    }
}

/// A customer started a basket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BasketStarted {
    /// Basket id.
    pub id: String,
    /// Whose basket.
    pub customer_id: String,
}

/// Items went into a basket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BasketItemAdded {
    /// Basket id.
    pub id: String,
    /// What was added (quantity: how many were added).
    pub item: BasketItem,
}

/// Some of a basket's line was taken out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BasketItemRemoved {
    /// Basket id.
    pub id: String,
    /// Product id.
    pub product_id: String,
    /// How many were taken out (not the whole line unless it was that many).
    pub quantity: i64,
}

/// A basket was abandoned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BasketCanceled {
    /// Basket id.
    pub id: String,
}

/// A basket was checked out: ordering turns it into an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BasketCheckedOut {
    /// Basket id.
    pub id: String,
    /// Whose basket.
    pub customer_id: String,
    /// The payment the customer chose.
    pub payment_id: String,
    /// Every line, with names and prices from the baskets caches.
    pub items: Vec<BasketItem>,
}

impl carrier_messages::Validate for BasketStarted {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("customer_id", &self.customer_id)
    }
}

impl carrier_messages::Validate for BasketItemAdded {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        self.item.validate()
    }
}

impl carrier_messages::Validate for BasketItemRemoved {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("product_id", &self.product_id)?;
        check::positive("quantity", self.quantity)
    }
}

impl carrier_messages::Validate for BasketCanceled {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)
    }
}

impl carrier_messages::Validate for BasketCheckedOut {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("customer_id", &self.customer_id)?;
        check::id("payment_id", &self.payment_id)?;
        check_items(&self.items)
    }
}

/// The most lines a basket, an order or a shopping list may have.
pub const MAX_ITEMS: usize = 1000;

pub(crate) fn check_items(items: &[BasketItem]) -> Result<(), ValidationError> {
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(ValidationError {
            field: "items",
            problem: format!("must hold 1 to {MAX_ITEMS} lines, got {}", items.len()),
        });
    }
    items.iter().try_for_each(BasketItem::validate)
}

carrier_messages::domain_events! {
    /// Every event the baskets context publishes.
    enum BasketsEvent, context "baskets", stream "BASKETS", subjects "baskets.>";
    BasketStarted => "basket", "baskets.basket.started";
    BasketItemAdded => "basket", "baskets.basket.item_added";
    BasketItemRemoved => "basket", "baskets.basket.item_removed";
    BasketCanceled => "basket", "baskets.basket.canceled";
    BasketCheckedOut => "basket", "baskets.basket.checked_out";
}

/// A request to change a basket, sent to `cmd.baskets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum BasketsCommand {
    /// Open a basket for a customer.
    StartBasket {
        /// Basket id, chosen by the caller.
        id: String,
        /// Whose basket.
        customer_id: String,
    },
    /// Put `quantity` of a product in the basket (name and price come from the baskets caches).
    AddItem {
        /// Basket id.
        id: String,
        /// Product id.
        product_id: String,
        /// How many, greater than zero.
        quantity: i64,
    },
    /// Take `quantity` of a product out of the basket.
    RemoveItem {
        /// Basket id.
        id: String,
        /// Product id.
        product_id: String,
        /// How many, greater than zero and at most what the basket holds.
        quantity: i64,
    },
    /// Abandon the basket.
    CancelBasket {
        /// Basket id.
        id: String,
    },
    /// Check the basket out: ordering creates the order.
    CheckoutBasket {
        /// Basket id.
        id: String,
        /// The payment the customer chose.
        payment_id: String,
    },
}

impl BasketsCommand {
    /// The command's name as the flow log shows it, e.g. `AddItem`.
    pub fn name(&self) -> &'static str {
        match self {
            BasketsCommand::StartBasket { .. } => "StartBasket",
            BasketsCommand::AddItem { .. } => "AddItem",
            BasketsCommand::RemoveItem { .. } => "RemoveItem",
            BasketsCommand::CancelBasket { .. } => "CancelBasket",
            BasketsCommand::CheckoutBasket { .. } => "CheckoutBasket",
        }
    }

    /// The basket it is about.
    pub fn basket_id(&self) -> &str {
        match self {
            BasketsCommand::StartBasket { id, .. }
            | BasketsCommand::AddItem { id, .. }
            | BasketsCommand::RemoveItem { id, .. }
            | BasketsCommand::CancelBasket { id }
            | BasketsCommand::CheckoutBasket { id, .. } => id,
        }
    }
}
