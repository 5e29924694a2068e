//! The `billing` context's write side: the [`Payment`] aggregate, whose state is the fold of its
//! events on `billing.payment.<id>`.
//!
//! One payment per order: a payment's id is derived from its order code
//! ([`payment_id`]), so a second payment for the same order is refused by the event store's
//! expected-sequence check itself (`already_exists`), with no index to keep consistent.

use carrier_actors::Aggregate;
use carrier_storage::CommandError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::events::{BillingEvent, PaymentCreated, PaymentItem, PaymentStatus, PaymentStatusChanged, PaymentUpdated};

/// The `billing` context's commands, on `cmd.billing` (JSON or CBOR, tagged by `command`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum BillingCommand {
    /// Creates the payment of an order, pending. Its id is [`payment_id`] of the order code.
    CreatePayment {
        /// The payment id: [`payment_id`]`(order_code)`.
        id: String,
        /// Who pays.
        user_id: String,
        /// The order (a positive integer).
        order_code: i64,
        /// The amount, in minor units.
        amount: i64,
        /// What it pays for (their total must be the amount).
        #[serde(default)]
        items: Vec<PaymentItem>,
    },
    /// Changes a pending or failed payment's amount and items.
    UpdatePayment {
        /// The payment.
        id: String,
        /// The amount.
        amount: i64,
        /// The items.
        #[serde(default)]
        items: Vec<PaymentItem>,
    },
    /// Moves a payment's status (see [`PaymentStatus::next`] for the legal moves).
    ChangeStatus {
        /// The payment.
        id: String,
        /// The status to move to.
        status: PaymentStatus,
    },
}

/// The id of the payment of order `order_code`: a UUID (version 5) of it, the same everywhere.
pub fn payment_id(order_code: i64) -> String {
    const WHISKO_ORDERS: uuid::Uuid = uuid::Uuid::from_u128(0x5f0c_77a1_3e1b_4f6e_9d5c_2b8e_4a11_c0de);
    uuid::Uuid::new_v5(&WHISKO_ORDERS, order_code.to_string().as_bytes()).to_string()
}

/// A payment, as its events made it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Whether it was created.
    pub exists: bool,
    /// Who pays.
    pub user_id: String,
    /// The order.
    pub order_code: i64,
    /// The amount.
    pub amount: i64,
    /// The items.
    pub items: Vec<PaymentItem>,
    /// Its status (`None` before it exists).
    pub status: Option<PaymentStatus>,
}

impl Aggregate for Payment {
    type Event = BillingEvent;
    type Command = BillingCommand;
    const KIND: &'static str = "payment";

    fn aggregate_id(command: &BillingCommand) -> &str {
        match command {
            BillingCommand::CreatePayment { id, .. }
            | BillingCommand::UpdatePayment { id, .. }
            | BillingCommand::ChangeStatus { id, .. } => id,
        }
    }

    fn decide(&self, command: &BillingCommand) -> Result<Vec<BillingEvent>, CommandError> {
        let id = Payment::aggregate_id(command).to_string();
        match command {
            BillingCommand::CreatePayment { user_id, order_code, amount, items, .. } => {
                if self.exists {
                    return Err(CommandError::Refused {
                        code: "order_already_paid_for",
                        message: format!("order {order_code} has a payment already ({id})"),
                        details: serde_json::json!({ "id": id, "orderCode": order_code }),
                    });
                }
                if id != payment_id(*order_code) {
                    return Err(CommandError::Refused {
                        code: "wrong_payment_id",
                        message: format!("the payment of order {order_code} has the id {}", payment_id(*order_code)),
                        details: serde_json::json!({ "id": payment_id(*order_code) }),
                    });
                }
                Ok(vec![BillingEvent::PaymentCreated(PaymentCreated {
                    id,
                    user_id: user_id.clone(),
                    order_code: *order_code,
                    amount: *amount,
                    items: items.clone(),
                })])
            }
            _ if !self.exists => Err(CommandError::NotFound { kind: "payment", id }),
            BillingCommand::UpdatePayment { amount, items, .. } => {
                let status = self.status.unwrap_or(PaymentStatus::Pending);
                if !matches!(status, PaymentStatus::Pending | PaymentStatus::Failed) {
                    return Err(CommandError::Refused {
                        code: "payment_not_editable",
                        message: format!(
                            "a {} payment cannot change; only pending or failed ones can",
                            status.as_str()
                        ),
                        details: serde_json::json!({ "status": status.as_str() }),
                    });
                }
                Ok(vec![BillingEvent::PaymentUpdated(PaymentUpdated { id, amount: *amount, items: items.clone() })])
            }
            BillingCommand::ChangeStatus { status: to, .. } => {
                let from = self.status.unwrap_or(PaymentStatus::Pending);
                if !from.next().contains(to) {
                    let allowed: Vec<&str> = from.next().iter().map(|s| s.as_str()).collect();
                    return Err(CommandError::Refused {
                        code: "illegal_transition",
                        message: format!(
                            "a {} payment cannot become {}; it may become: {}",
                            from.as_str(),
                            to.as_str(),
                            if allowed.is_empty() { "nothing (it is final)".to_string() } else { allowed.join(", ") }
                        ),
                        details: serde_json::json!({ "from": from.as_str(), "to": to.as_str(), "allowed": allowed }),
                    });
                }
                Ok(vec![BillingEvent::PaymentStatusChanged(PaymentStatusChanged { id, from, to: *to })])
            }
        }
    }

    fn apply(&mut self, event: &BillingEvent) {
        match event {
            BillingEvent::PaymentCreated(e) => {
                *self = Payment {
                    exists: true,
                    user_id: e.user_id.clone(),
                    order_code: e.order_code,
                    amount: e.amount,
                    items: e.items.clone(),
                    status: Some(PaymentStatus::Pending),
                }
            }
            BillingEvent::PaymentUpdated(e) => {
                self.amount = e.amount;
                self.items = e.items.clone();
            }
            BillingEvent::PaymentStatusChanged(e) => self.status = Some(e.to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(payment: &mut Payment, command: BillingCommand) -> Result<(), CommandError> {
        for event in payment.decide(&command)? {
            payment.apply(&event);
        }
        Ok(())
    }

    #[test]
    fn statuses_move_only_along_the_legal_transitions() {
        let id = payment_id(7);
        let mut p = Payment::default();
        let create = BillingCommand::CreatePayment {
            id: id.clone(),
            user_id: "u".into(),
            order_code: 7,
            amount: 5,
            items: vec![],
        };
        run(&mut p, create.clone()).unwrap();
        assert!(matches!(run(&mut p, create), Err(CommandError::Refused { code: "order_already_paid_for", .. })));
        let to = |status| BillingCommand::ChangeStatus { id: id.clone(), status };
        run(&mut p, to(PaymentStatus::Failed)).unwrap();
        assert!(matches!(
            run(&mut p, to(PaymentStatus::Paid)),
            Err(CommandError::Refused { code: "illegal_transition", .. })
        ));
        run(&mut p, to(PaymentStatus::Pending)).unwrap();
        run(&mut p, to(PaymentStatus::Paid)).unwrap();
        let edit = BillingCommand::UpdatePayment { id: id.clone(), amount: 9, items: vec![] };
        assert!(matches!(run(&mut p, edit), Err(CommandError::Refused { code: "payment_not_editable", .. })));
        run(&mut p, to(PaymentStatus::Refunded)).unwrap();
        assert!(matches!(
            run(&mut p, to(PaymentStatus::Pending)),
            Err(CommandError::Refused { code: "illegal_transition", .. })
        ));
        assert_eq!(p.status, Some(PaymentStatus::Refunded));
    }

    #[test]
    fn a_payment_id_is_its_order_codes_and_nothing_else() {
        assert_eq!(payment_id(42), payment_id(42));
        assert_ne!(payment_id(42), payment_id(43));
        let mut p = Payment::default();
        let wrong = BillingCommand::CreatePayment {
            id: payment_id(1),
            user_id: "u".into(),
            order_code: 2,
            amount: 5,
            items: vec![],
        };
        assert!(matches!(run(&mut p, wrong), Err(CommandError::Refused { code: "wrong_payment_id", .. })));
    }
}
