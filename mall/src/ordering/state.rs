//! The ordering context's file: orders, moved along by other contexts' events.
//!
//! A checked-out basket creates the order; the depot's completed shopping list readies it; a
//! paid invoice completes it; a declined payment (or a person) cancels it. Each step is a
//! reaction that records the order's next event in the outbox in the same transaction.

use serde::{Deserialize, Serialize};

use carrier_messages::Causality;
use carrier_messages::Envelope;
use carrier_storage::ReactError;
use carrier_storage::{
    CommandError, ContextFile, ContextKind, Decides, Emitter, Follows, Reacts, Rows, RowsMut, StorageError,
    WriteTransaction,
};

use super::events::*;
use crate::baskets::events::{BasketItem, BasketsEvent};
use crate::depot::events::DepotEvent;
use crate::payments::events::PaymentsEvent;

const ORDERS: Rows<OrderRow> = Rows::new("orders");

/// An order as ordering owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRow {
    /// Who ordered.
    pub customer_id: String,
    /// The payment chosen.
    pub payment_id: String,
    /// The lines.
    pub items: Vec<BasketItem>,
    /// Sum of the lines.
    pub total: i64,
    /// Where it stands.
    pub status: OrderStatus,
    /// The version of its last event.
    pub version: u64,
}

/// `ordering.redb`: orders, the outbox and the engine's tables.
pub type OrderingDb = ContextFile<Ordering>;

/// The ordering context.
pub struct Ordering;

impl ContextKind for Ordering {
    const NAME: &'static str = "ordering";
    type Event = OrderingEvent;

    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
        ORDERS.create(txn)?;
        Ok(())
    }
}

type Orders<'txn> = RowsMut<'txn, OrderRow>;

/// Moves an existing order to `status` and returns it at its new version, or `None` when the
/// order is unknown or its status does not allow the step (a late or repeated event).
fn advance(
    table: &mut Orders<'_>,
    id: &str,
    from: &[OrderStatus],
    to: OrderStatus,
) -> Result<Option<OrderRow>, StorageError> {
    let Some(mut row) = table.get(id)? else {
        tracing::warn!(order.id = id, "event about an order ordering does not know; ignored");
        return Ok(None);
    };
    if !from.contains(&row.status) {
        tracing::info!(order.id = id, status = row.status.as_str(), to = to.as_str(), "order step ignored");
        return Ok(None);
    }
    row.status = to;
    row.version += 1;
    table.put(id, &row)?;
    Ok(Some(row))
}

fn cancel(
    table: &mut Orders<'_>,
    emit: &mut Emitter<'_, OrderingEvent>,
    id: &str,
    reason: &str,
    cause: Result<&Envelope, &Causality>,
) -> Result<bool, StorageError> {
    let Some(row) = advance(table, id, &[OrderStatus::Pending, OrderStatus::Ready], OrderStatus::Canceled)? else {
        return Ok(false);
    };
    let event = OrderingEvent::OrderCanceled(OrderCanceled {
        id: id.to_string(),
        customer_id: row.customer_id.clone(),
        reason: reason.to_string(),
    });
    match cause {
        Ok(envelope) => emit.emit(event, row.version, envelope)?,
        Err(causality) => emit.record(event, row.version, causality)?,
    }
    Ok(true)
}

impl Reacts<BasketsEvent> for Ordering {
    fn may_emit(event: &BasketsEvent) -> bool {
        matches!(event, BasketsEvent::BasketCheckedOut(_))
    }

    type Tables<'txn> = Orders<'txn>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<Orders<'txn>, StorageError> {
        ORDERS.open(txn)
    }

    fn react(
        orders: &mut Orders<'_>,
        emit: &mut Emitter<'_, OrderingEvent>,
        envelope: &Envelope,
        event: &BasketsEvent,
    ) -> Result<(), ReactError> {
        let BasketsEvent::BasketCheckedOut(basket) = event else { return Ok(()) };
        if orders.get(&basket.id)?.is_some() {
            return Ok(());
        }
        let total = basket.items.iter().map(BasketItem::line_total).fold(0i64, i64::saturating_add);
        let row = OrderRow {
            customer_id: basket.customer_id.clone(),
            payment_id: basket.payment_id.clone(),
            items: basket.items.clone(),
            total,
            status: OrderStatus::Pending,
            version: 1,
        };
        orders.put(&basket.id, &row)?;
        let created = OrderCreated {
            id: basket.id.clone(),
            customer_id: row.customer_id,
            payment_id: row.payment_id,
            items: row.items,
            total,
        };
        Ok(emit.emit(OrderingEvent::OrderCreated(created), 1, envelope)?)
    }
}

impl Reacts<DepotEvent> for Ordering {
    fn may_emit(event: &DepotEvent) -> bool {
        matches!(event, DepotEvent::ShoppingListCompleted(_))
    }

    type Tables<'txn> = Orders<'txn>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<Orders<'txn>, StorageError> {
        ORDERS.open(txn)
    }

    fn react(
        orders: &mut Orders<'_>,
        emit: &mut Emitter<'_, OrderingEvent>,
        envelope: &Envelope,
        event: &DepotEvent,
    ) -> Result<(), ReactError> {
        let DepotEvent::ShoppingListCompleted(list) = event else { return Ok(()) };
        let Some(row) = advance(orders, &list.order_id, &[OrderStatus::Pending], OrderStatus::Ready)? else {
            return Ok(());
        };
        let readied = OrderReadied {
            id: list.order_id.clone(),
            customer_id: row.customer_id,
            payment_id: row.payment_id,
            total: row.total,
        };
        Ok(emit.emit(OrderingEvent::OrderReadied(readied), row.version, envelope)?)
    }
}

impl Reacts<PaymentsEvent> for Ordering {
    fn may_emit(event: &PaymentsEvent) -> bool {
        !matches!(event, PaymentsEvent::PaymentAuthorized(_))
    }

    type Tables<'txn> = Orders<'txn>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<Orders<'txn>, StorageError> {
        ORDERS.open(txn)
    }

    fn react(
        orders: &mut Orders<'_>,
        emit: &mut Emitter<'_, OrderingEvent>,
        envelope: &Envelope,
        event: &PaymentsEvent,
    ) -> Result<(), ReactError> {
        match event {
            PaymentsEvent::InvoicePaid(paid) => {
                let Some(row) = advance(orders, &paid.order_id, &[OrderStatus::Ready], OrderStatus::Completed)? else {
                    return Ok(());
                };
                let completed = OrderCompleted {
                    id: paid.order_id.clone(),
                    customer_id: row.customer_id,
                    invoice_id: paid.id.clone(),
                };
                Ok(emit.emit(OrderingEvent::OrderCompleted(completed), row.version, envelope)?)
            }
            // An authorized invoice waits for the order to be readied: no step for ordering.
            PaymentsEvent::PaymentAuthorized(_) => Ok(()),
            PaymentsEvent::PaymentDeclined(declined) => {
                let reason = format!("payment declined: {}", declined.reason);
                Ok(cancel(orders, emit, &declined.order_id, &reason, Ok(envelope))?).map(|_| ())
            }
        }
    }
}

impl Follows for Ordering {
    /// Every change to an order is one of its events: created with all it holds, then a status.
    fn follow(txn: &WriteTransaction, envelope: &Envelope, event: &OrderingEvent) -> Result<(), StorageError> {
        let mut orders = ORDERS.open(txn)?;
        let id = envelope.aggregate_id.as_str();
        let current = orders.get(id)?;
        if current.as_ref().is_some_and(|r| r.version >= envelope.aggregate_version) {
            return Ok(());
        }
        let row = match (current, event) {
            (_, OrderingEvent::OrderCreated(e)) => OrderRow {
                customer_id: e.customer_id.clone(),
                payment_id: e.payment_id.clone(),
                items: e.items.clone(),
                total: e.total,
                status: OrderStatus::Pending,
                version: envelope.aggregate_version,
            },
            (Some(row), event) => {
                let status = match event {
                    OrderingEvent::OrderReadied(_) => OrderStatus::Ready,
                    OrderingEvent::OrderCompleted(_) => OrderStatus::Completed,
                    OrderingEvent::OrderCanceled(_) => OrderStatus::Canceled,
                    OrderingEvent::OrderCreated(_) => row.status,
                };
                OrderRow { status, version: envelope.aggregate_version, ..row }
            }
            (None, _) => {
                tracing::warn!(order.id = id, "followed an order's step without its creation; ignored");
                return Ok(());
            }
        };
        orders.put(id, &row)
    }
}

impl Decides<OrderingCommand> for Ordering {
    fn decide(
        txn: &WriteTransaction,
        emit: &mut Emitter<'_, OrderingEvent>,
        command: &OrderingCommand,
        causality: &Causality,
    ) -> Result<(), CommandError> {
        let mut orders = ORDERS.open(txn)?;
        match command {
            OrderingCommand::CancelOrder { id, reason } => {
                let row = orders.get(id)?.ok_or_else(|| CommandError::NotFound { kind: "order", id: id.clone() })?;
                let reason = if reason.trim().is_empty() { "canceled by request" } else { reason.as_str() };
                if !cancel(&mut orders, emit, id, reason, Err(causality))? {
                    return Err(CommandError::Rejected(format!(
                        "order {id:?} is {} and can no longer be canceled",
                        row.status.as_str()
                    )));
                }
                Ok(())
            }
        }
    }
}

/// What the ordering context's file answers of its orders.
pub trait OrderingFile {
    /// One order.
    fn order(&self, id: &str) -> Result<Option<OrderRow>, StorageError>;
    /// Every order, by id.
    fn orders(&self) -> Result<Vec<(String, OrderRow)>, StorageError>;
}

impl OrderingFile for ContextFile<Ordering> {
    fn order(&self, id: &str) -> Result<Option<OrderRow>, StorageError> {
        self.read(|txn| ORDERS.get(txn, id))
    }

    fn orders(&self) -> Result<Vec<(String, OrderRow)>, StorageError> {
        self.read(|txn| ORDERS.all(txn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baskets::events::{BasketCheckedOut, BasketStarted};
    use carrier_messages::Decoded;
    use carrier_storage::{Disposition, Inbound};

    fn db() -> (tempfile::TempDir, carrier_storage::FileWriter<Ordering>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = carrier_storage::FileWriter::<Ordering>::open(dir.path().join("ordering.redb")).expect("open");
        (dir, db)
    }

    fn checkout(id: &str, seq: u64) -> Inbound<BasketsEvent> {
        let item = BasketItem {
            store_id: "s".into(),
            store_name: "Shop".into(),
            product_id: "p".into(),
            product_name: "Tea".into(),
            price: 300,
            quantity: 2,
        };
        let event = BasketsEvent::BasketCheckedOut(BasketCheckedOut {
            id: id.into(),
            customer_id: "c".into(),
            payment_id: "pay".into(),
            items: vec![item],
        });
        Inbound { stream_seq: seq, decoded: Decoded::new(event, 2, &Causality::default()) }
    }

    #[test]
    fn a_standby_holds_a_reaction_that_emits_until_it_followed_the_holders_and_never_reacts_twice() {
        let (_h, holder) = db();
        let (_s, standby) = db();
        let x = checkout("b1", 2);
        let started = BasketsEvent::BasketStarted(BasketStarted { id: "b1".into(), customer_id: "c".into() });
        let start = Inbound { stream_seq: 1, decoded: Decoded::new(started, 1, &Causality::default()) };
        holder.apply("ordering-baskets", &[start.clone(), x.clone()], 0).expect("the holder reacts");
        assert_eq!(holder.outbox_len().expect("outbox"), 1);

        // Standing by: the start applies (nothing emitted), the checkout waits and keeps nothing.
        standby.apply_followed("ordering-baskets", &[start.clone()], 0, true).expect("nothing to hold");
        match standby.apply_followed("ordering-baskets", &[x.clone()], 0, true) {
            Err(StorageError::NotYetFollowed { stream_seq }) => assert_eq!(stream_seq, 2),
            other => panic!("expected the checkout held, got {other:?}"),
        }
        assert_eq!(
            (
                standby.outbox_len().expect("outbox"),
                carrier_storage::ContextDb::checkpoint(&*standby.file(), "ordering-baskets").expect("c")
            ),
            (0, 1)
        );

        // The holder's OrderCreated is followed: the checkout then moves its basket's version on
        // without creating the order a second time.
        let published = crate::outbox_as_delivered(&holder);
        standby.follow("ordering-self", &published, 0).expect("followed");
        assert_eq!(standby.file().orders().expect("orders"), holder.file().orders().expect("orders"));
        let out = standby.apply_followed("ordering-baskets", &[x.clone()], 0, true).expect("followed cause");
        assert_eq!(out.dispositions, vec![Disposition::Followed]);
        assert_eq!(standby.outbox_len().expect("outbox"), 0, "nothing emitted twice");
        // Delivered again: a duplicate.
        let again = standby.apply_followed("ordering-baskets", &[x], 0, false).expect("again");
        assert_eq!(again.dispositions, vec![Disposition::Duplicate]);

        // Holding the context now, it reacts to what the holder never did.
        let y = checkout("b2", 3);
        let y = Inbound { decoded: Decoded::new(y.decoded.event, 1, &Causality::default()), ..y };
        let out = standby.apply_followed("ordering-baskets", &[y], 0, false).expect("reacts");
        assert_eq!(out.dispositions, vec![Disposition::Applied]);
        assert_eq!(standby.outbox_len().expect("outbox"), 1);
        let order = standby.file().order("b2").expect("read").expect("created");
        assert_eq!((order.status, order.total, order.version), (OrderStatus::Pending, 600, 1));
    }

    #[test]
    fn a_standby_holds_an_event_that_may_emit_even_when_its_rows_say_nothing_to_do() {
        // The holder readied and completed an order; the standby has not followed any of it.
        // Its rows say "no such order": reacting here would ignore the payment for good.
        let (_s, standby) = db();
        let paid = PaymentsEvent::InvoicePaid(crate::payments::events::InvoicePaid {
            id: "o1".into(),
            order_id: "o1".into(),
            customer_id: "c".into(),
            payment_id: "pay".into(),
            amount: 300,
        });
        let paid = Inbound { stream_seq: 7, decoded: Decoded::new(paid, 2, &Causality::default()) };
        // Version 1, the authorization, asks nothing of ordering: applied while standing by.
        let authorized = PaymentsEvent::PaymentAuthorized(crate::payments::events::PaymentAuthorized {
            id: "o1".into(),
            order_id: "o1".into(),
            customer_id: "c".into(),
            payment_id: "pay".into(),
            amount: 300,
        });
        let authorized = Inbound { stream_seq: 6, decoded: Decoded::new(authorized, 1, &Causality::default()) };
        let out = standby.apply_followed("ordering-payments", &[authorized], 0, true).expect("nothing to hold");
        assert_eq!(out.dispositions, vec![Disposition::Applied]);
        match standby.apply_followed("ordering-payments", &[paid.clone()], 0, true) {
            Err(StorageError::NotYetFollowed { stream_seq }) => assert_eq!(stream_seq, 7),
            other => panic!("expected the payment held, got {other:?}"),
        }
        // Holding the context, the same event is applied (here: an order it does not know).
        let out = standby.apply_followed("ordering-payments", &[paid], 0, false).expect("applied");
        assert_eq!(out.dispositions, vec![Disposition::Applied]);
    }

    #[test]
    fn a_parked_event_whose_effect_is_followed_does_not_react_when_it_is_unparked() {
        use crate::depot::events::{ShoppingListCompleted, ShoppingListCreated};
        let (_h, holder) = db();
        let (_s, standby) = db();
        // The holder has the order and readies it when the list is completed.
        let x = checkout("o1", 2);
        let x = Inbound { decoded: Decoded::new(x.decoded.event, 1, &Causality::default()), ..x };
        holder.apply("ordering-baskets", &[x], 0).expect("created");
        let created = DepotEvent::ShoppingListCreated(ShoppingListCreated {
            id: "o1".into(),
            order_id: "o1".into(),
            stops: Vec::new(),
        });
        let created = Inbound { stream_seq: 1, decoded: Decoded::new(created, 1, &Causality::default()) };
        let completed =
            DepotEvent::ShoppingListCompleted(ShoppingListCompleted { id: "o1".into(), order_id: "o1".into() });
        let completed = Inbound { stream_seq: 2, decoded: Decoded::new(completed, 2, &Causality::default()) };
        holder.apply("ordering-depot", &[created.clone(), completed.clone()], 0).expect("readied");
        assert_eq!(holder.file().order("o1").expect("read").expect("o1").status, OrderStatus::Ready);

        // The standby gets the completion first (parked: its list's version 1 is missing), then
        // follows the holder's events, whose OrderReadied names the completion as its cause.
        let out = standby.apply_followed("ordering-depot", &[completed], 0, true).expect("parked");
        assert_eq!(out.dispositions, vec![Disposition::Parked { expected: 1 }]);
        standby.follow("ordering-self", &crate::outbox_as_delivered(&holder), 0).expect("followed");
        // Version 1 arrives: the completion is unparked and followed, not reacted to again.
        let out = standby.apply_followed("ordering-depot", &[created], 0, true).expect("unparked");
        assert_eq!((out.dispositions, out.unparked), (vec![Disposition::Applied], 1));
        assert_eq!(standby.outbox_len().expect("outbox"), 0, "nothing emitted twice");
        assert_eq!(standby.file().orders().expect("orders"), holder.file().orders().expect("orders"));
    }
}
