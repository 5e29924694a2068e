//! The payments context's file: invoices, and a cache of customers (only enabled customers may
//! pay).

use serde::{Deserialize, Serialize};

use carrier_messages::Envelope;
use carrier_storage::ReactError;
use carrier_storage::{
    ContextFile, ContextKind, Emitter, Follows, Reacts, Rows, RowsMut, StorageError, WriteTransaction,
};

use super::events::*;
use crate::caches::customers::{customers_cache, CustomersCache, CustomersCacheTable};
use crate::customers::events::{CustomerSnapshot, CustomersEvent};
use crate::ordering::events::OrderingEvent;

const INVOICES: Rows<InvoiceRow> = Rows::new("invoices");

/// A customer as payments knows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentsCustomer {
    /// Whether they may pay.
    pub enabled: bool,
}

/// Where an invoice stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// The order's payment was authorized; waiting for the order to be readied.
    Authorized,
    /// The customer may not pay.
    Declined,
    /// Paid.
    Paid,
}

/// An order's invoice (same id as the order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceRow {
    /// Who pays.
    pub customer_id: String,
    /// The payment chosen.
    pub payment_id: String,
    /// Amount in minor units.
    pub amount: i64,
    /// Where it stands.
    pub status: InvoiceStatus,
    /// The version of its last event (0 while only authorized).
    pub version: u64,
}

/// `payments.redb`: invoices, the customers cache, the outbox and the engine's tables.
pub type PaymentsDb = ContextFile<Payments>;

/// The payments context.
pub struct Payments;

impl ContextKind for Payments {
    const NAME: &'static str = "payments";
    type Event = PaymentsEvent;

    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
        CustomersCacheTable::<Payments>::create(txn)?;
        INVOICES.create(txn)?;
        Ok(())
    }
}

customers_cache!(Payments);

impl CustomersCache for Payments {
    type Customer = PaymentsCustomer;

    fn apply(t: &mut CustomersCacheTable<'_, Self>, event: &CustomersEvent) -> Result<(), StorageError> {
        match event {
            CustomersEvent::CustomerRegistered(e) => t.put(&e.id, &PaymentsCustomer { enabled: true }),
            CustomersEvent::CustomerEnabled(e) => t.update(&e.id, |c| c.enabled = true),
            CustomersEvent::CustomerDisabled(e) => t.update(&e.id, |c| c.enabled = false),
            CustomersEvent::CustomerSmsChanged(_) => Ok(()),
        }
    }

    fn customer_row(snapshot: &CustomerSnapshot) -> PaymentsCustomer {
        PaymentsCustomer { enabled: snapshot.enabled }
    }
}

/// Payments' tables while it reacts to orders.
pub struct PaymentsOrderTables<'txn> {
    customers: CustomersCacheTable<'txn, Payments>,
    invoices: RowsMut<'txn, InvoiceRow>,
}

impl Reacts<OrderingEvent> for Payments {
    fn may_emit(event: &OrderingEvent) -> bool {
        matches!(event, OrderingEvent::OrderCreated(_) | OrderingEvent::OrderReadied(_))
    }

    type Tables<'txn> = PaymentsOrderTables<'txn>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<PaymentsOrderTables<'txn>, StorageError> {
        Ok(PaymentsOrderTables { customers: CustomersCacheTable::open(txn)?, invoices: INVOICES.open(txn)? })
    }

    fn react(
        t: &mut PaymentsOrderTables<'_>,
        emit: &mut Emitter<'_, PaymentsEvent>,
        envelope: &Envelope,
        event: &OrderingEvent,
    ) -> Result<(), ReactError> {
        match event {
            // AuthorizePayment: only an enabled customer may pay.
            OrderingEvent::OrderCreated(order) => {
                if t.invoices.get(&order.id)?.is_some() {
                    return Ok(());
                }
                let customer: PaymentsCustomer = t.customers.required(&order.customer_id)?;
                let status = if customer.enabled { InvoiceStatus::Authorized } else { InvoiceStatus::Declined };
                let row = InvoiceRow {
                    customer_id: order.customer_id.clone(),
                    payment_id: order.payment_id.clone(),
                    amount: order.total,
                    status,
                    version: 1,
                };
                t.invoices.put(&order.id, &row)?;
                // Either way an event says what was decided: an instance standing by learns the
                // invoice from it (see `Follows`).
                let event = match status {
                    InvoiceStatus::Authorized => PaymentsEvent::PaymentAuthorized(PaymentAuthorized {
                        id: order.id.clone(),
                        order_id: order.id.clone(),
                        customer_id: order.customer_id.clone(),
                        payment_id: order.payment_id.clone(),
                        amount: order.total,
                    }),
                    _ => PaymentsEvent::PaymentDeclined(PaymentDeclined {
                        id: order.id.clone(),
                        order_id: order.id.clone(),
                        customer_id: order.customer_id.clone(),
                        reason: "customer is disabled".to_string(),
                        payment_id: order.payment_id.clone(),
                        amount: order.total,
                    }),
                };
                Ok(emit.emit(event, 1, envelope)?)
            }
            // CreateInvoice and PayInvoice: the readied order is charged.
            OrderingEvent::OrderReadied(order) => {
                let Some(mut row) = t.invoices.get(&order.id)? else {
                    return Err(ReactError::not_ready(format!("order {:?} was never authorized", order.id)));
                };
                if row.status != InvoiceStatus::Authorized {
                    return Ok(());
                }
                row.status = InvoiceStatus::Paid;
                row.amount = order.total;
                row.version += 1;
                t.invoices.put(&order.id, &row)?;
                let paid = InvoicePaid {
                    id: order.id.clone(),
                    order_id: order.id.clone(),
                    customer_id: row.customer_id.clone(),
                    payment_id: row.payment_id.clone(),
                    amount: row.amount,
                };
                Ok(emit.emit(PaymentsEvent::InvoicePaid(paid), row.version, envelope)?)
            }
            OrderingEvent::OrderCanceled(_) | OrderingEvent::OrderCompleted(_) => Ok(()),
        }
    }
}

impl Follows for Payments {
    /// Every change to an invoice is one of its events: authorized or declined with what it
    /// holds, then paid.
    fn follow(txn: &WriteTransaction, envelope: &Envelope, event: &PaymentsEvent) -> Result<(), StorageError> {
        let mut invoices = INVOICES.open(txn)?;
        let id = envelope.aggregate_id.as_str();
        let current = invoices.get(id)?;
        if current.as_ref().is_some_and(|r| r.version >= envelope.aggregate_version) {
            return Ok(());
        }
        let version = envelope.aggregate_version;
        let row = match event {
            PaymentsEvent::PaymentAuthorized(e) => InvoiceRow {
                customer_id: e.customer_id.clone(),
                payment_id: e.payment_id.clone(),
                amount: e.amount,
                status: InvoiceStatus::Authorized,
                version,
            },
            PaymentsEvent::PaymentDeclined(e) => InvoiceRow {
                customer_id: e.customer_id.clone(),
                payment_id: e.payment_id.clone(),
                amount: e.amount,
                status: InvoiceStatus::Declined,
                version,
            },
            PaymentsEvent::InvoicePaid(e) => InvoiceRow {
                customer_id: e.customer_id.clone(),
                payment_id: e.payment_id.clone(),
                amount: e.amount,
                status: InvoiceStatus::Paid,
                version,
            },
        };
        invoices.put(id, &row)
    }
}

/// What the payments context's file answers of its invoices.
pub trait PaymentsFile {
    /// Every invoice, by id.
    fn invoices(&self) -> Result<Vec<(String, InvoiceRow)>, StorageError>;
}

impl PaymentsFile for ContextFile<Payments> {
    fn invoices(&self) -> Result<Vec<(String, InvoiceRow)>, StorageError> {
        self.read(|txn| INVOICES.all(txn))
    }
}
