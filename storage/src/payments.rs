//! The payments context's file: invoices, and a cache of customers (only enabled customers may
//! pay).

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use carrier_messages::customers::{CustomerSnapshot, CustomersEvent};
use carrier_messages::ordering::OrderingEvent;
use carrier_messages::payments::*;
use carrier_messages::Envelope;

use crate::context::{ContextFile, ContextKind, Emitter, Follows, Reacts};
use crate::customer_cache::{
    create_customers_cache_table, required_customer, CustomerCacheKind, CustomerTables, CUSTOMERS_CACHE,
};
use crate::error::{decode_row, encode_row, RedbResultExt};
use crate::rows::all_rows;
use crate::StorageError;

const INVOICES: TableDefinition<&str, &[u8]> = TableDefinition::new("invoices");

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
        create_customers_cache_table(txn)?;
        txn.open_table(INVOICES).during("create invoices")?;
        Ok(())
    }
}

impl CustomerCacheKind for Payments {
    type Customer = PaymentsCustomer;

    fn apply(t: &mut CustomerTables<'_, Self>, event: &CustomersEvent) -> Result<(), StorageError> {
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
    customers: Table<'txn, &'static str, &'static [u8]>,
    invoices: Table<'txn, &'static str, &'static [u8]>,
}

impl Reacts<OrderingEvent> for Payments {
    fn may_emit(event: &OrderingEvent) -> bool {
        matches!(event, OrderingEvent::OrderCreated(_) | OrderingEvent::OrderReadied(_))
    }

    type Tables<'txn> = PaymentsOrderTables<'txn>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<PaymentsOrderTables<'txn>, StorageError> {
        Ok(PaymentsOrderTables {
            customers: txn.open_table(CUSTOMERS_CACHE).during("open customers_cache")?,
            invoices: txn.open_table(INVOICES).during("open invoices")?,
        })
    }

    fn react(
        t: &mut PaymentsOrderTables<'_>,
        emit: &mut Emitter<'_, PaymentsEvent>,
        envelope: &Envelope,
        event: &OrderingEvent,
    ) -> Result<(), StorageError> {
        match event {
            // AuthorizePayment: only an enabled customer may pay.
            OrderingEvent::OrderCreated(order) => {
                if get_invoice(&t.invoices, &order.id)?.is_some() {
                    return Ok(());
                }
                let customer: PaymentsCustomer = required_customer(&t.customers, &order.customer_id)?;
                let status = if customer.enabled { InvoiceStatus::Authorized } else { InvoiceStatus::Declined };
                let row = InvoiceRow {
                    customer_id: order.customer_id.clone(),
                    payment_id: order.payment_id.clone(),
                    amount: order.total,
                    status,
                    version: 1,
                };
                put_invoice(&mut t.invoices, &order.id, &row)?;
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
                emit.emit(event, 1, envelope)
            }
            // CreateInvoice and PayInvoice: the readied order is charged.
            OrderingEvent::OrderReadied(order) => {
                let Some(mut row) = get_invoice(&t.invoices, &order.id)? else {
                    return Err(StorageError::NotReady(format!("order {:?} was never authorized", order.id)));
                };
                if row.status != InvoiceStatus::Authorized {
                    return Ok(());
                }
                row.status = InvoiceStatus::Paid;
                row.amount = order.total;
                row.version += 1;
                put_invoice(&mut t.invoices, &order.id, &row)?;
                let paid = InvoicePaid {
                    id: order.id.clone(),
                    order_id: order.id.clone(),
                    customer_id: row.customer_id.clone(),
                    payment_id: row.payment_id.clone(),
                    amount: row.amount,
                };
                emit.emit(PaymentsEvent::InvoicePaid(paid), row.version, envelope)
            }
            OrderingEvent::OrderCanceled(_) | OrderingEvent::OrderCompleted(_) => Ok(()),
        }
    }
}

fn get_invoice(table: &Table<'_, &'static str, &'static [u8]>, id: &str) -> Result<Option<InvoiceRow>, StorageError> {
    let row = table.get(id).during("read invoices")?;
    row.map(|g| decode_row("invoices", g.value())).transpose()
}

fn put_invoice(
    table: &mut Table<'_, &'static str, &'static [u8]>,
    id: &str,
    row: &InvoiceRow,
) -> Result<(), StorageError> {
    let bytes = encode_row("invoices", row)?;
    table.insert(id, bytes.as_slice()).during("write invoices")?;
    Ok(())
}

impl Follows for Payments {
    /// Every change to an invoice is one of its events: authorized or declined with what it
    /// holds, then paid.
    fn follow(txn: &WriteTransaction, envelope: &Envelope, event: &PaymentsEvent) -> Result<(), StorageError> {
        let mut invoices = txn.open_table(INVOICES).during("open invoices")?;
        let id = envelope.aggregate_id.as_str();
        let current = get_invoice(&invoices, id)?;
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
        put_invoice(&mut invoices, id, &row)
    }
}

impl ContextFile<Payments> {
    /// Every invoice, by id.
    pub fn invoices(&self) -> Result<Vec<(String, InvoiceRow)>, StorageError> {
        all_rows(&self.db, INVOICES, "invoices")
    }
}
