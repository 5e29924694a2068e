//! The depot context: shopping lists that send the mall's bots from store to store to collect an
//! order.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use carrier_messages::{check, ValidationError};

/// What to pick up at one store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StopItem {
    /// Product id.
    pub product_id: String,
    /// Product name, from the depot's products cache.
    pub product_name: String,
    /// How many.
    pub quantity: i64,
}

/// One store on a shopping list, with everything to pick up there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Stop {
    /// Store id.
    pub store_id: String,
    /// Store name, from the depot's stores cache.
    pub store_name: String,
    /// Where in the mall, from the depot's stores cache.
    pub store_location: String,
    /// What to pick up.
    pub items: Vec<StopItem>,
}

/// A shopping list was made for an order (same id as the order), grouped by store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShoppingListCreated {
    /// Shopping list id.
    pub id: String,
    /// The order it collects.
    pub order_id: String,
    /// One stop per store, in store id order.
    pub stops: Vec<Stop>,
}

/// Everything on the list was collected: ordering readies the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShoppingListCompleted {
    /// Shopping list id.
    pub id: String,
    /// The order it collected.
    pub order_id: String,
}

/// The order was canceled before the list was completed: the bots stand down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShoppingListCanceled {
    /// Shopping list id.
    pub id: String,
    /// The canceled order.
    pub order_id: String,
}

impl carrier_messages::Validate for ShoppingListCreated {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("order_id", &self.order_id)?;
        if self.stops.is_empty() {
            return Err(ValidationError { field: "stops", problem: "must not be empty".to_string() });
        }
        for stop in &self.stops {
            check::id("store_id", &stop.store_id)?;
            check::name("store_name", &stop.store_name)?;
            check::free_text("store_location", &stop.store_location)?;
            for item in &stop.items {
                check::id("product_id", &item.product_id)?;
                check::name("product_name", &item.product_name)?;
                check::positive("quantity", item.quantity)?;
            }
        }
        Ok(())
    }
}

impl carrier_messages::Validate for ShoppingListCompleted {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("order_id", &self.order_id)
    }
}

impl carrier_messages::Validate for ShoppingListCanceled {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("order_id", &self.order_id)
    }
}

carrier_messages::domain_events! {
    /// Every event the depot context publishes.
    enum DepotEvent, context "depot", stream "DEPOT", subjects "depot.>";
    ShoppingListCreated => "shopping_list", "depot.shopping_list.created";
    ShoppingListCompleted => "shopping_list", "depot.shopping_list.completed";
    ShoppingListCanceled => "shopping_list", "depot.shopping_list.canceled";
}

/// A request to the depot, sent to `cmd.depot` (by the bots).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum DepotCommand {
    /// Every stop of the list was visited and everything collected.
    CompleteShoppingList {
        /// Shopping list id.
        id: String,
    },
}

impl DepotCommand {
    /// The command's name as the flow log shows it.
    pub fn name(&self) -> &'static str {
        match self {
            DepotCommand::CompleteShoppingList { .. } => "CompleteShoppingList",
        }
    }
}
