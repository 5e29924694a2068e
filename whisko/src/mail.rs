//! What Whisko sends through the event bus: a welcome e-mail when a user registers and a receipt
//! when a payment is paid (or refunded). Each handler appends to a list in the bus's file, in
//! the transaction that records the event as handled, so every message is written exactly once
//! whatever crashes when (an outbox for a mail relay to send from).

use carrier_actors::BoundedContext;
use carrier_actors::HandlerError;
use carrier_messages::Decoded;
use carrier_storage::{ReadTransaction, Rows, StorageError, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::events::{BillingEvent, PaymentStatus, UsersEvent};

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mail {
    /// `welcome`, `receipt` or `refund`.
    pub kind: String,
    /// The user (or payment) it is about.
    pub about: String,
    /// The event that caused it.
    pub event_id: String,
    /// The text.
    pub text: String,
}

/// The messages, in the order they were written (keys are zero-padded positions).
pub const MAILS: Rows<Mail> = Rows::new("mails");

/// Appends `mail` at the end of the list: not idempotent on its own (a second run would append
/// a second copy), which is the point: the bus runs it once.
fn append(txn: &WriteTransaction, mail: Mail) -> Result<(), HandlerError> {
    let mut mails = MAILS.open(txn)?;
    let next = mails.len()? + 1;
    mails.put(&format!("{next:012}"), &mail)?;
    Ok(())
}

/// The event bus `whisko` with the welcome and receipt handlers (subscriptions `welcome` and
/// `receipts`), declared like a context: `run` runs it on the instance holding its lease.
pub fn context() -> BoundedContext {
    BoundedContext::handlers(crate::BUS)
        .handle::<UsersEvent>("welcome", welcome)
        .handle::<BillingEvent>("receipts", receipt)
        .build()
}

/// A welcome mail for a registered user.
fn welcome(event: &Decoded<UsersEvent>, txn: &WriteTransaction) -> Result<(), HandlerError> {
    {
        if let UsersEvent::UserCreated(user) = &event.event {
            append(
                txn,
                Mail {
                    kind: "welcome".into(),
                    about: user.id.clone(),
                    event_id: event.envelope.event_id.to_string(),
                    text: format!("Welcome to Whisko, {} <{}>!", user.name, user.email),
                },
            )?;
        }
        Ok(())
    }
}

/// A receipt (or a refund notice) for a payment paid (or refunded).
fn receipt(event: &Decoded<BillingEvent>, txn: &WriteTransaction) -> Result<(), HandlerError> {
    {
        if let BillingEvent::PaymentStatusChanged(change) = &event.event {
            let kind = match change.to {
                PaymentStatus::Paid => "receipt",
                PaymentStatus::Refunded => "refund",
                _ => return Ok(()),
            };
            append(
                txn,
                Mail {
                    kind: kind.into(),
                    about: change.id.clone(),
                    event_id: event.envelope.event_id.to_string(),
                    text: format!("Payment {} is {}.", change.id, change.to.as_str()),
                },
            )?;
        }
        Ok(())
    }
}

/// Every message written so far, oldest first.
pub fn mails(txn: &ReadTransaction) -> Result<Vec<Mail>, StorageError> {
    Ok(MAILS.all(txn)?.into_iter().map(|(_, m)| m).collect())
}
