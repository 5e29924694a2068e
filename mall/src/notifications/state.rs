//! The notifications context's file: a cache of customers (name and SMS number, seed 001's
//! `Add` and `UpdateSmsNumber`) and the `sent` table, one row per order event notified.
//!
//! The sink writes the row in the transaction that records the order event as applied, so a
//! redelivered event finds its id in the inbox and is not notified twice.

use serde::{Deserialize, Serialize};

use carrier_messages::Envelope;
use carrier_storage::ReactError;
use carrier_storage::{
    ContextFile, ContextKind, Emitter, Follows, Reacts, Rows, RowsMut, StorageError, WriteTransaction,
};

use super::events::{NotificationsEvent, TextSent};
use crate::caches::customers::{customers_cache, CustomersCache, CustomersCacheTable};
use crate::customers::events::{CustomerSnapshot, CustomersEvent};
use crate::ordering::events::OrderingEvent;

const SENT: Rows<SentRow> = Rows::new("sent");

/// A customer as notifications knows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationsCustomer {
    /// Display name.
    pub name: String,
    /// Where texts go.
    pub sms_number: String,
}

/// One notification sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRow {
    /// The order.
    pub order_id: String,
    /// `order_created`, `order_readied` or `order_canceled`.
    pub kind: String,
    /// The customer.
    pub customer_id: String,
    /// The number it went to.
    pub sms_number: String,
    /// What it said.
    pub text: String,
}

/// `notifications.redb`: the customers cache, `sent`, and the engine's tables.
pub type NotificationsDb = ContextFile<Notifications>;

/// The notifications context.
pub struct Notifications;

impl ContextKind for Notifications {
    const NAME: &'static str = "notifications";
    type Event = NotificationsEvent;

    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
        CustomersCacheTable::<Notifications>::create(txn)?;
        SENT.create(txn)?;
        Ok(())
    }
}

customers_cache!(Notifications);

impl CustomersCache for Notifications {
    type Customer = NotificationsCustomer;

    fn apply(t: &mut CustomersCacheTable<'_, Self>, event: &CustomersEvent) -> Result<(), StorageError> {
        match event {
            CustomersEvent::CustomerRegistered(e) => {
                t.put(&e.id, &NotificationsCustomer { name: e.name.clone(), sms_number: e.sms_number.clone() })
            }
            CustomersEvent::CustomerSmsChanged(e) => t.update(&e.id, |c| c.sms_number = e.sms_number.clone()),
            CustomersEvent::CustomerEnabled(_) | CustomersEvent::CustomerDisabled(_) => Ok(()),
        }
    }

    fn customer_row(snapshot: &CustomerSnapshot) -> NotificationsCustomer {
        NotificationsCustomer { name: snapshot.name.clone(), sms_number: snapshot.sms_number.clone() }
    }
}

/// Notifications' tables while it reacts to orders.
pub struct NotificationsOrderTables<'txn> {
    customers: CustomersCacheTable<'txn, Notifications>,
    sent: RowsMut<'txn, SentRow>,
}

impl Reacts<OrderingEvent> for Notifications {
    fn may_emit(event: &OrderingEvent) -> bool {
        !matches!(event, OrderingEvent::OrderCompleted(_))
    }

    type Tables<'txn> = NotificationsOrderTables<'txn>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<NotificationsOrderTables<'txn>, StorageError> {
        Ok(NotificationsOrderTables { customers: CustomersCacheTable::open(txn)?, sent: SENT.open(txn)? })
    }

    fn react(
        t: &mut NotificationsOrderTables<'_>,
        emit: &mut Emitter<'_, NotificationsEvent>,
        envelope: &Envelope,
        event: &OrderingEvent,
    ) -> Result<(), ReactError> {
        let (order_id, customer_id, kind, what) = match event {
            OrderingEvent::OrderCreated(e) => (&e.id, &e.customer_id, "order_created", "was received".to_string()),
            OrderingEvent::OrderReadied(e) => {
                (&e.id, &e.customer_id, "order_readied", "is ready for pickup".to_string())
            }
            OrderingEvent::OrderCanceled(e) => {
                (&e.id, &e.customer_id, "order_canceled", format!("was canceled ({})", e.reason))
            }
            OrderingEvent::OrderCompleted(_) => return Ok(()),
        };
        let customer: NotificationsCustomer = t.customers.required(customer_id)?;
        let row = SentRow {
            order_id: order_id.clone(),
            kind: kind.to_string(),
            customer_id: customer_id.clone(),
            sms_number: customer.sms_number.clone(),
            text: format!("Hi {}, your order {order_id} {what}.", customer.name),
        };
        // Keyed by the order event's id: one row per order event, whatever the redeliveries.
        let key = envelope.event_id.to_string();
        if t.sent.get(key.as_str())?.is_some() {
            return Ok(());
        }
        t.sent.put(key.as_str(), &row)?;
        tracing::info!(order.id = %order_id, to = %row.sms_number, kind = kind, text = %row.text, "SMS sent");
        // The text is also an event of its own (`notifications.text.sent`), published once by its
        // id: what a gateway takes, and how an instance standing by learns it was sent.
        let sent = TextSent {
            id: key,
            order_id: row.order_id,
            kind: row.kind,
            customer_id: row.customer_id,
            sms_number: row.sms_number,
            text: row.text,
        };
        Ok(emit.emit(NotificationsEvent::TextSent(sent), 1, envelope)?)
    }
}

impl Follows for Notifications {
    /// A text sent by the holder is a row of `sent`, under the same key.
    fn follow(txn: &WriteTransaction, _envelope: &Envelope, event: &NotificationsEvent) -> Result<(), StorageError> {
        let NotificationsEvent::TextSent(e) = event;
        let mut sent = SENT.open(txn)?;
        if sent.get(e.id.as_str())?.is_some() {
            return Ok(());
        }
        let row = SentRow {
            order_id: e.order_id.clone(),
            kind: e.kind.clone(),
            customer_id: e.customer_id.clone(),
            sms_number: e.sms_number.clone(),
            text: e.text.clone(),
        };
        sent.put(e.id.as_str(), &row)?;
        Ok(())
    }
}

/// What the notifications context's file answers of the texts it sent.
pub trait NotificationsFile {
    /// Every notification sent, by order event id.
    fn sent(&self) -> Result<Vec<(String, SentRow)>, StorageError>;
}

impl NotificationsFile for ContextFile<Notifications> {
    fn sent(&self) -> Result<Vec<(String, SentRow)>, StorageError> {
        self.read(|txn| SENT.all(txn))
    }
}
