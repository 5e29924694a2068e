//! Whisko's events: what the `users` and `billing` contexts store in their streams, one subject
//! per aggregate (`users.user.<id>`, `billing.payment.<id>`). Whisko's payments live in a
//! context named `billing` because the mall, in the same binary, has a `payments` context of
//! its own (its invoices). They are the source of truth;
//! every read model is a fold of them.

use carrier_messages::{check, domain_events, Validate, ValidationError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest e-mail address: 254 bytes (RFC 5321's path limit).
pub const MAX_EMAIL: usize = 254;
/// Longest phone number, in bytes.
pub const MAX_PHONE: usize = 32;
/// Most items in one payment.
pub const MAX_ITEMS: usize = 100;

/// Checks an e-mail address's shape: one `@`, something before it, a dot in the domain.
pub fn check_email(field: &'static str, value: &str) -> Result<(), ValidationError> {
    check::text(field, value, 3, MAX_EMAIL)?;
    let bad = |problem: &str| Err(ValidationError { field, problem: problem.to_string() });
    match value.split_once('@') {
        None => bad("must be an e-mail address (no '@')"),
        Some((local, domain)) => {
            if local.is_empty() || domain.contains('@') || value.chars().any(char::is_whitespace) {
                return bad("must be an e-mail address (one '@', no spaces)");
            }
            if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
                return bad("must be an e-mail address (the domain needs a dot)");
            }
            Ok(())
        }
    }
}

/// Checks a phone number: empty, or digits with an optional leading `+` and spaces, dashes,
/// dots or parentheses, at least 6 digits.
pub fn check_phone(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > MAX_PHONE {
        return Err(ValidationError { field, problem: format!("must be at most {MAX_PHONE} bytes") });
    }
    let body = value.strip_prefix('+').unwrap_or(value);
    let digits = body.chars().filter(char::is_ascii_digit).count();
    if body.chars().any(|c| !(c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))) || digits < 6 {
        return Err(ValidationError {
            field,
            problem: "must be a phone number: digits (at least 6), an optional leading '+', spaces or dashes".into(),
        });
    }
    Ok(())
}

/// A user registered. Schema version 2: version 1 called `name` `full_name` (read through
/// [`upcast_user_created`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserCreated {
    /// The user id.
    pub id: String,
    /// Their name.
    pub name: String,
    /// Their e-mail address.
    pub email: String,
    /// Their phone number (may be empty).
    pub phone: String,
    /// Their address (may be empty).
    pub address: String,
}

/// A user's profile changed: name and address, as they are now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserProfileUpdated {
    /// The user id.
    pub id: String,
    /// Their name now.
    pub name: String,
    /// Their address now.
    pub address: String,
}

/// A user's contact details changed: e-mail and phone, as they are now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserContactUpdated {
    /// The user id.
    pub id: String,
    /// Their e-mail address now.
    pub email: String,
    /// Their phone number now.
    pub phone: String,
}

/// A user was deleted (soft: their history stays, further commands are refused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserDeleted {
    /// The user id.
    pub id: String,
}

impl Validate for UserCreated {
    fn validate(&self) -> Result<(), ValidationError> {
        check::name("name", &self.name)?;
        check_email("email", &self.email)?;
        check_phone("phone", &self.phone)?;
        check::text("address", &self.address, 0, check::MAX_TEXT)
    }
}

impl Validate for UserProfileUpdated {
    fn validate(&self) -> Result<(), ValidationError> {
        check::name("name", &self.name)?;
        check::text("address", &self.address, 0, check::MAX_TEXT)
    }
}

impl Validate for UserContactUpdated {
    fn validate(&self) -> Result<(), ValidationError> {
        check_email("email", &self.email)?;
        check_phone("phone", &self.phone)
    }
}

impl Validate for UserDeleted {}

/// Reads a `UserCreated` stored at schema version 1, whose `name` was `full_name`.
pub fn upcast_user_created(from: u32, mut value: serde_json::Value) -> Result<serde_json::Value, String> {
    if from == 1 {
        let object = value.as_object_mut().ok_or("not a map")?;
        let name = object.remove("full_name").ok_or("version 1 has no full_name")?;
        object.insert("name".into(), name);
    }
    Ok(value)
}

domain_events! {
    /// What the `users` context stores, on the stream `USERS`, one subject per user.
    enum UsersEvent, context "users", stream "USERS", subjects "users.>";
    UserCreated => "user", "users.user.*", version 2, upcast upcast_user_created;
    UserProfileUpdated => "user", "users.user.*";
    UserContactUpdated => "user", "users.user.*";
    UserDeleted => "user", "users.user.*";
}

/// A line of a payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentItem {
    /// What was bought.
    pub name: String,
    /// How many (at least 1).
    pub quantity: i64,
    /// The price of one, in minor units (cents, dong).
    pub price: i64,
}

/// The status of a payment. Legal moves: `pending` → `paid`, `failed` or `canceled`;
/// `failed` → `pending` (a retry); `paid` → `refunded`. `canceled` and `refunded` are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Waiting for the money.
    Pending,
    /// Paid.
    Paid,
    /// The attempt failed (may be retried).
    Failed,
    /// Given up before it was paid.
    Canceled,
    /// Paid, then given back.
    Refunded,
}

impl PaymentStatus {
    /// Every status, in its spelling.
    pub const ALL: [PaymentStatus; 5] = [
        PaymentStatus::Pending,
        PaymentStatus::Paid,
        PaymentStatus::Failed,
        PaymentStatus::Canceled,
        PaymentStatus::Refunded,
    ];

    /// Its spelling: `pending`, `paid`, `failed`, `canceled`, `refunded`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Paid => "paid",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Canceled => "canceled",
            PaymentStatus::Refunded => "refunded",
        }
    }

    /// Parses a spelling.
    pub fn parse(value: &str) -> Option<PaymentStatus> {
        PaymentStatus::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// Where a payment in this status may go.
    pub fn next(self) -> &'static [PaymentStatus] {
        match self {
            PaymentStatus::Pending => &[PaymentStatus::Paid, PaymentStatus::Failed, PaymentStatus::Canceled],
            PaymentStatus::Failed => &[PaymentStatus::Pending],
            PaymentStatus::Paid => &[PaymentStatus::Refunded],
            PaymentStatus::Canceled | PaymentStatus::Refunded => &[],
        }
    }
}

/// A payment was created for an order, pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentCreated {
    /// The payment id.
    pub id: String,
    /// Who pays.
    pub user_id: String,
    /// The order it pays for (one payment per order code).
    pub order_code: i64,
    /// The amount, in minor units.
    pub amount: i64,
    /// What it pays for.
    pub items: Vec<PaymentItem>,
}

/// A pending (or failed) payment's amount and items changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentUpdated {
    /// The payment id.
    pub id: String,
    /// The amount now.
    pub amount: i64,
    /// The items now.
    pub items: Vec<PaymentItem>,
}

/// A payment's status moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentStatusChanged {
    /// The payment id.
    pub id: String,
    /// The status before.
    pub from: PaymentStatus,
    /// The status now.
    pub to: PaymentStatus,
}

/// Checks an amount and the items it pays for (their total must be the amount).
pub fn check_amount(amount: i64, items: &[PaymentItem]) -> Result<(), ValidationError> {
    check::positive("amount", amount)?;
    if items.len() > MAX_ITEMS {
        return Err(ValidationError { field: "items", problem: format!("at most {MAX_ITEMS} items") });
    }
    let mut total: i64 = 0;
    for item in items {
        check::name("items.name", &item.name)?;
        check::positive("items.quantity", item.quantity)?;
        check::non_negative("items.price", item.price)?;
        total = item
            .quantity
            .checked_mul(item.price)
            .and_then(|line| total.checked_add(line))
            .ok_or(ValidationError { field: "items", problem: "the total is too large".into() })?;
    }
    if !items.is_empty() && total != amount {
        return Err(ValidationError { field: "amount", problem: format!("must equal the items' total, {total}") });
    }
    Ok(())
}

impl Validate for PaymentCreated {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("user_id", &self.user_id)?;
        check::positive("order_code", self.order_code)?;
        check_amount(self.amount, &self.items)
    }
}

impl Validate for PaymentUpdated {
    fn validate(&self) -> Result<(), ValidationError> {
        check_amount(self.amount, &self.items)
    }
}

impl Validate for PaymentStatusChanged {}

domain_events! {
    /// What the `billing` context stores, on the stream `BILLING`, one subject per payment.
    enum BillingEvent, context "billing", stream "BILLING", subjects "billing.>";
    PaymentCreated => "payment", "billing.payment.*";
    PaymentUpdated => "payment", "billing.payment.*";
    PaymentStatusChanged => "payment", "billing.payment.*";
}
