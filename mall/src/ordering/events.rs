//! The ordering context: orders, created from checked-out baskets and moved along by the depot
//! (shopping list completed: readied) and payments (invoice paid: completed).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::baskets::events::{check_items, BasketItem};
use carrier_messages::{check, ValidationError};

/// An order was created from a checked-out basket (same id as the basket).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreated {
    /// Order id.
    pub id: String,
    /// Who ordered.
    pub customer_id: String,
    /// The payment the customer chose.
    pub payment_id: String,
    /// What was ordered, with names and prices from the basket.
    pub items: Vec<BasketItem>,
    /// Sum of the lines, in minor units.
    pub total: i64,
}

/// Every item of the order was collected: the order can be picked up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderReadied {
    /// Order id.
    pub id: String,
    /// Who ordered.
    pub customer_id: String,
    /// The payment the customer chose.
    pub payment_id: String,
    /// What to invoice, in minor units.
    pub total: i64,
}

/// The order will not be fulfilled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCanceled {
    /// Order id.
    pub id: String,
    /// Who ordered.
    pub customer_id: String,
    /// Why, for people.
    pub reason: String,
}

/// The order's invoice was paid: nothing more happens to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCompleted {
    /// Order id.
    pub id: String,
    /// Who ordered.
    pub customer_id: String,
    /// The paid invoice.
    pub invoice_id: String,
}

impl carrier_messages::Validate for OrderCreated {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("customer_id", &self.customer_id)?;
        check::id("payment_id", &self.payment_id)?;
        check::non_negative("total", self.total)?;
        check_items(&self.items)
    }
}

impl carrier_messages::Validate for OrderReadied {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("customer_id", &self.customer_id)?;
        check::id("payment_id", &self.payment_id)?;
        check::non_negative("total", self.total)
    }
}

impl carrier_messages::Validate for OrderCanceled {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("customer_id", &self.customer_id)?;
        check::free_text("reason", &self.reason)
    }
}

impl carrier_messages::Validate for OrderCompleted {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("customer_id", &self.customer_id)?;
        check::id("invoice_id", &self.invoice_id)
    }
}

carrier_messages::domain_events! {
    /// Every event the ordering context publishes.
    enum OrderingEvent, context "ordering", stream "ORDERING", subjects "ordering.>";
    OrderCreated => "order", "ordering.order.created";
    OrderReadied => "order", "ordering.order.readied";
    OrderCanceled => "order", "ordering.order.canceled";
    OrderCompleted => "order", "ordering.order.completed";
}

/// A request to the ordering context, sent to `cmd.ordering`. Orders are created by checkout,
/// readied by the depot and completed by payments; people may only cancel one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum OrderingCommand {
    /// Cancel an order that is not completed yet.
    CancelOrder {
        /// Order id.
        id: String,
        /// Why, for people.
        #[serde(default)]
        reason: String,
    },
}

impl OrderingCommand {
    /// The command's name as the flow log shows it.
    pub fn name(&self) -> &'static str {
        match self {
            OrderingCommand::CancelOrder { .. } => "CancelOrder",
        }
    }
}

/// Where an order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Created, being collected.
    Pending,
    /// Collected, waiting for payment.
    Ready,
    /// Paid; final.
    Completed,
    /// Canceled; final.
    Canceled,
}

impl OrderStatus {
    /// The status as the wire and the search read model spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Ready => "ready",
            OrderStatus::Completed => "completed",
            OrderStatus::Canceled => "canceled",
        }
    }

    /// Parses [`OrderStatus::as_str`]'s spelling.
    pub fn parse(value: &str) -> Option<Self> {
        [OrderStatus::Pending, OrderStatus::Ready, OrderStatus::Completed, OrderStatus::Canceled]
            .into_iter()
            .find(|s| s.as_str() == value)
    }
}
