//! The notifications context: one text to the customer per order created, readied or canceled,
//! published as an event so that an SMS gateway (or anyone) can take the texts from the stream,
//! each exactly once by its event id.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use carrier_messages::{check, ValidationError};

/// A text was sent to a customer about an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TextSent {
    /// The text's id: the id of the ordering event it is about (one text per event).
    pub id: String,
    /// The order.
    pub order_id: String,
    /// What happened to the order: `order_created`, `order_readied` or `order_canceled`.
    pub kind: String,
    /// The customer.
    pub customer_id: String,
    /// Where it went: the customer's SMS number when the text was sent.
    pub sms_number: String,
    /// The text.
    pub text: String,
}

impl carrier_messages::Validate for TextSent {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("order_id", &self.order_id)?;
        check::id("kind", &self.kind)?;
        check::id("customer_id", &self.customer_id)?;
        check::id("sms_number", &self.sms_number)?;
        check::text("text", &self.text, 1, check::MAX_TEXT)
    }
}

carrier_messages::domain_events! {
    /// Every event the notifications context publishes.
    enum NotificationsEvent, context "notifications", stream "NOTIFICATIONS", subjects "notifications.>";
    TextSent => "text", "notifications.text.sent";
}
