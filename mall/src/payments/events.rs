//! The payments context: authorizes an order's payment (only enabled customers may pay) and
//! invoices it once it is readied.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use carrier_messages::{check, ValidationError};

/// The order's customer may pay (enabled): its invoice waits, authorized, for the order to be
/// readied. Ordering takes no step on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentAuthorized {
    /// Invoice id (the order's id).
    pub id: String,
    /// The order.
    pub order_id: String,
    /// Who will pay.
    pub customer_id: String,
    /// The payment the customer chose.
    pub payment_id: String,
    /// The order's total in minor units.
    pub amount: i64,
}

/// The order's customer may not pay (unknown or disabled): ordering cancels the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentDeclined {
    /// Invoice id (the order's id).
    pub id: String,
    /// The order.
    pub order_id: String,
    /// Who tried to pay.
    pub customer_id: String,
    /// Why, for people.
    pub reason: String,
    /// The payment the customer chose (absent from events of Carrier before 2026-12-07).
    #[serde(default)]
    pub payment_id: String,
    /// The order's total in minor units (0 in events of Carrier before 2026-12-07).
    #[serde(default)]
    pub amount: i64,
}

/// The readied order's invoice was paid: ordering completes the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InvoicePaid {
    /// Invoice id (the order's id).
    pub id: String,
    /// The order.
    pub order_id: String,
    /// Who paid.
    pub customer_id: String,
    /// The payment used.
    pub payment_id: String,
    /// Amount in minor units.
    pub amount: i64,
}

/// The fields an authorized and a paid invoice share.
fn check_invoice(
    id: &str,
    order_id: &str,
    customer_id: &str,
    payment_id: &str,
    amount: i64,
) -> Result<(), ValidationError> {
    check::id("id", id)?;
    check::id("order_id", order_id)?;
    check::id("customer_id", customer_id)?;
    check::id("payment_id", payment_id)?;
    check::non_negative("amount", amount)
}

impl carrier_messages::Validate for PaymentAuthorized {
    fn validate(&self) -> Result<(), ValidationError> {
        check_invoice(&self.id, &self.order_id, &self.customer_id, &self.payment_id, self.amount)
    }
}

impl carrier_messages::Validate for PaymentDeclined {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("order_id", &self.order_id)?;
        check::id("customer_id", &self.customer_id)?;
        check::free_text("reason", &self.reason)
    }
}

impl carrier_messages::Validate for InvoicePaid {
    fn validate(&self) -> Result<(), ValidationError> {
        check_invoice(&self.id, &self.order_id, &self.customer_id, &self.payment_id, self.amount)
    }
}

carrier_messages::domain_events! {
    /// Every event the payments context publishes.
    enum PaymentsEvent, context "payments", stream "PAYMENTS", subjects "payments.>";
    PaymentAuthorized => "invoice", "payments.invoice.authorized";
    PaymentDeclined => "invoice", "payments.invoice.declined";
    InvoicePaid => "invoice", "payments.invoice.paid";
}
