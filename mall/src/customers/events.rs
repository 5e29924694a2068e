//! The customers context: people who shop at the mall, owned by the customers service.
//!
//! Names follow the MallBots design: payments authorizes only enabled customers; notifications
//! texts the current SMS number.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use carrier_messages::{check, ValidationError};

/// A customer registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerRegistered {
    /// Customer id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
    /// Display name.
    #[schemars(length(min = 1, max = 256), pattern(r"\S"))]
    pub name: String,
    /// The number notifications go to.
    #[schemars(length(min = 3, max = 20), pattern(r"^\+?[0-9]+$"))]
    pub sms_number: String,
}

/// A customer's SMS number changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerSmsChanged {
    /// Customer id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
    /// The new number.
    #[schemars(length(min = 3, max = 20), pattern(r"^\+?[0-9]+$"))]
    pub sms_number: String,
}

/// A customer may place orders again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerEnabled {
    /// Customer id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
}

/// A customer may no longer place orders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerDisabled {
    /// Customer id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
}

/// SMS numbers: digits with an optional leading `+`, 3 to 20 characters.
fn check_sms(value: &str) -> Result<(), ValidationError> {
    let digits = value.strip_prefix('+').unwrap_or(value);
    if !(3..=20).contains(&value.len()) || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValidationError {
            field: "sms_number",
            problem: format!("must be 3 to 20 characters of digits with an optional leading +, got {value:?}"),
        });
    }
    Ok(())
}

impl carrier_messages::Validate for CustomerRegistered {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::name("name", &self.name)?;
        check_sms(&self.sms_number)
    }
}

impl carrier_messages::Validate for CustomerSmsChanged {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check_sms(&self.sms_number)
    }
}

impl carrier_messages::Validate for CustomerEnabled {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)
    }
}

impl carrier_messages::Validate for CustomerDisabled {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)
    }
}

carrier_messages::domain_events! {
    /// Every event the customers context publishes.
    enum CustomersEvent, context "customers", stream "CUSTOMERS", subjects "customers.>";
    CustomerRegistered => "customer", "customers.customer.registered";
    CustomerSmsChanged => "customer", "customers.customer.sms_changed";
    CustomerEnabled => "customer", "customers.customer.enabled";
    CustomerDisabled => "customer", "customers.customer.disabled";
}

/// A request to change the customers context's state. Each accepted command records one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum CustomersCommand {
    /// Register a customer (enabled from the start).
    RegisterCustomer {
        /// Customer id, chosen by the caller so that retries are safe.
        id: String,
        /// Display name.
        name: String,
        /// The number notifications go to.
        sms_number: String,
    },
    /// Change where notifications go.
    ChangeSmsNumber {
        /// Customer id.
        id: String,
        /// The new number.
        sms_number: String,
    },
    /// Let a disabled customer order again.
    EnableCustomer {
        /// Customer id.
        id: String,
    },
    /// Stop a customer from ordering.
    DisableCustomer {
        /// Customer id.
        id: String,
    },
}

impl CustomersCommand {
    /// The command's name as the flow log shows it, e.g. `RegisterCustomer`.
    pub fn name(&self) -> &'static str {
        match self {
            CustomersCommand::RegisterCustomer { .. } => "RegisterCustomer",
            CustomersCommand::ChangeSmsNumber { .. } => "ChangeSmsNumber",
            CustomersCommand::EnableCustomer { .. } => "EnableCustomer",
            CustomersCommand::DisableCustomer { .. } => "DisableCustomer",
        }
    }
}

/// A question to the customers context, sent to `query.customers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum CustomersQuery {
    /// One customer's current state.
    GetCustomer {
        /// Customer id.
        id: String,
    },
}

/// A customer as its owner knows it now, with the version of its last event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerSnapshot {
    /// Customer id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Where notifications go.
    pub sms_number: String,
    /// Whether they may order.
    pub enabled: bool,
    /// The version of their last event.
    pub version: u64,
}

/// The answer to a [`CustomersQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomersQueryReply {
    /// Whether the query was answered (a missing customer is `ok` with nothing found).
    pub ok: bool,
    /// The customer, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<CustomerSnapshot>,
    /// Why not, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<carrier_messages::CommandFailure>,
}

impl carrier_messages::QueryReply for CustomersQueryReply {
    fn failed(code: &str, message: String) -> Self {
        CustomersQueryReply {
            ok: false,
            customer: None,
            error: Some(carrier_messages::CommandFailure { code: code.to_string(), message, details: None }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrier_messages::{Causality, Decoded, DomainEvent};

    #[test]
    fn a_customer_event_round_trips_and_a_bad_number_is_refused() {
        let event = CustomersEvent::CustomerRegistered(CustomerRegistered {
            id: "c-1".into(),
            name: "Ada".into(),
            sms_number: "+4412345".into(),
        });
        let wire = Decoded::new(event.clone(), 1, &Causality::default()).encode().expect("encodes");
        assert_eq!(wire.subject, "customers.customer.registered");
        let back = Decoded::<CustomersEvent>::decode(
            &wire.subject,
            |name| wire.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()),
            &wire.body,
        )
        .expect("decodes");
        assert_eq!(back.event, event);
        let bad =
            CustomersEvent::CustomerSmsChanged(CustomerSmsChanged { id: "c-1".into(), sms_number: "call me".into() });
        assert_eq!(bad.validate().unwrap_err().field, "sms_number");
        assert_eq!(CustomersEvent::EVENT_TYPES.len(), 4);
    }
}
