//! The oracle: folds the streams from their first message, exactly as the write side folds an
//! aggregate, and compares every projection and the mail list with the result. The demo exits 0
//! only when this finds nothing; the tests use it after crashes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use carrier_actors::Aggregate;
use carrier_actors::Bus;
use carrier_messages::{Decoded, DomainEvent};

use crate::billing::Payment;
use crate::events::{BillingEvent, PaymentStatus, UsersEvent};
use crate::users::User;
use crate::Whisko;

/// Every aggregate of a stream as a fold of its events: id → (state, version).
pub type Folded<A> = BTreeMap<String, (A, u64)>;

/// Folds `A`'s whole stream. Fails when the stream cannot be read to its end within `timeout`,
/// or an event does not decode, or an aggregate's versions skip.
pub async fn fold<A: Aggregate>(bus: &Bus, timeout: Duration) -> Result<(Folded<A>, Vec<Decoded<A::Event>>), String> {
    let stream = <A::Event as DomainEvent>::STREAM;
    let last = bus.last_sequence(stream).await.map_err(|e| e.to_string())?;
    let mut folded: Folded<A> = BTreeMap::new();
    let mut events = Vec::new();
    if last == 0 {
        return Ok((folded, events));
    }
    let mut reader =
        bus.replay(stream, <A::Event as DomainEvent>::STREAM_SUBJECTS, 1, 1024).await.map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut through = 0;
    while through < last {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{stream}: read through {through} of {last} within {timeout:?}"));
        }
        for delivery in reader.next_batch(Duration::from_millis(500)).await.map_err(|e| e.to_string())? {
            through = delivery.stream_seq;
            let decoded = Decoded::<A::Event>::decode_all(&delivery.subject, |n| delivery.header(n), &delivery.payload)
                .map_err(|e| format!("{stream} sequence {}: {e}", delivery.stream_seq))?;
            for event in decoded {
                let entry = folded.entry(event.envelope.aggregate_id.clone()).or_default();
                let version = event.envelope.aggregate_version;
                if version <= entry.1 {
                    continue;
                }
                if version != entry.1 + 1 {
                    return Err(format!(
                        "{} {}: version {version} follows {}",
                        A::KIND,
                        event.envelope.aggregate_id,
                        entry.1
                    ));
                }
                entry.0.apply(&event.event);
                entry.1 = version;
                events.push(event);
            }
        }
    }
    Ok((folded, events))
}

/// Both streams, folded once.
struct Streams {
    users: Folded<User>,
    user_events: Vec<Decoded<UsersEvent>>,
    payments: Folded<Payment>,
    payment_events: Vec<Decoded<BillingEvent>>,
}

async fn fold_both(bus: &Bus) -> Result<Streams, String> {
    let (users, user_events) = fold::<User>(bus, Duration::from_secs(60)).await?;
    let (payments, payment_events) = fold::<Payment>(bus, Duration::from_secs(60)).await?;
    Ok(Streams { users, user_events, payments, payment_events })
}

/// What differs between the projections (and this instance's mail list) and a fold of the
/// streams; empty when they agree. Call it once everything has settled ([`Whisko::settle`]).
pub async fn check(whisko: &Whisko) -> Result<Vec<String>, String> {
    let mails = whisko.bus.file().read().and_then(|txn| crate::mail::mails(&txn)).map_err(|e| e.to_string())?;
    let streams = fold_both(&whisko.system.bus).await?;
    let mut problems = projection_problems(whisko, &streams)?;
    problems.extend(mail_problems(&streams, &mails));
    Ok(problems)
}

/// What differs between the projections and a fold of the streams.
pub async fn check_projections(whisko: &Whisko) -> Result<Vec<String>, String> {
    projection_problems(whisko, &fold_both(&whisko.system.bus).await?)
}

fn projection_problems(whisko: &Whisko, streams: &Streams) -> Result<Vec<String>, String> {
    let (users, payments) = (&streams.users, &streams.payments);
    let mut problems = Vec::new();

    let live = whisko.user_views.db.read(|txn| crate::views::USERS.all(txn)).map_err(|e| e.to_string())?;
    let gone = whisko.user_views.db.read(|txn| crate::views::DELETED_USERS.all(txn)).map_err(|e| e.to_string())?;
    let mut viewed: HashMap<String, crate::views::UserView> = HashMap::new();
    for (id, view) in live.into_iter().chain(gone) {
        if viewed.insert(id.clone(), view).is_some() {
            problems.push(format!("user {id} is both live and deleted in user_views"));
        }
    }
    for (id, (user, version)) in users {
        match viewed.remove(id) {
            None => problems.push(format!("user {id} (version {version}) is missing from user_views")),
            Some(view) => {
                let same = view.name == user.name
                    && view.email == user.email
                    && view.phone == user.phone
                    && view.address == user.address
                    && view.deleted == user.deleted
                    && view.version == *version;
                if !same {
                    problems.push(format!(
                        "user {id}: the view {view:?} differs from the fold {user:?} at version {version}"
                    ));
                }
            }
        }
    }
    problems.extend(viewed.keys().map(|id| format!("user {id} is in user_views but not in the stream")));

    let mut viewed: HashMap<String, crate::views::PaymentView> = whisko
        .payment_views
        .db
        .read(|txn| crate::views::PAYMENTS.all(txn))
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    for (id, (payment, version)) in payments {
        match viewed.remove(id) {
            None => problems.push(format!("payment {id} (version {version}) is missing from payment_views")),
            Some(view) => {
                let same = view.user_id == payment.user_id
                    && view.order_code == payment.order_code
                    && view.amount == payment.amount
                    && view.items == payment.items
                    && Some(view.status) == payment.status
                    && view.version == *version;
                if !same {
                    problems.push(format!(
                        "payment {id}: the view {view:?} differs from the fold {payment:?} at version {version}"
                    ));
                }
                let by_order = whisko
                    .payment_views
                    .db
                    .read(|txn| crate::views::payment_by_order(txn, payment.order_code))
                    .map_err(|e| e.to_string())?;
                if by_order.map(|p| p.id) != Some(id.clone()) {
                    problems.push(format!("order {} does not lead to payment {id}", payment.order_code));
                }
            }
        }
    }
    problems.extend(viewed.keys().map(|id| format!("payment {id} is in payment_views but not in the stream")));
    Ok(problems)
}

/// What differs between `mails` (every instance's lists together, when several ran the bus in
/// turn) and the mails the streams call for: one welcome per user created, one receipt per
/// payment paid, one notice per refund, each from its own event, none twice.
pub async fn check_mails(bus: &Bus, mails: &[crate::mail::Mail]) -> Result<Vec<String>, String> {
    Ok(mail_problems(&fold_both(bus).await?, mails))
}

fn mail_problems(streams: &Streams, mails: &[crate::mail::Mail]) -> Vec<String> {
    let (user_events, payment_events) = (&streams.user_events, &streams.payment_events);
    let mut problems = Vec::new();
    // The mail list: one welcome per user created, one receipt per payment paid, one refund
    // per refund, each from its own event, none twice.
    let mut expected: HashSet<(String, String)> = HashSet::new();
    for event in user_events {
        if let UsersEvent::UserCreated(_) = event.event {
            expected.insert(("welcome".into(), event.envelope.event_id.to_string()));
        }
    }
    for event in payment_events {
        if let BillingEvent::PaymentStatusChanged(change) = &event.event {
            let kind = match change.to {
                PaymentStatus::Paid => "receipt",
                PaymentStatus::Refunded => "refund",
                _ => continue,
            };
            expected.insert((kind.into(), event.envelope.event_id.to_string()));
        }
    }
    let mut seen = HashSet::new();
    for mail in mails {
        let key = (mail.kind.clone(), mail.event_id.clone());
        if !seen.insert(key.clone()) {
            problems.push(format!("{} for event {} was written twice", mail.kind, mail.event_id));
        } else if !expected.contains(&key) {
            problems.push(format!("{} for event {} has no such event in the streams", mail.kind, mail.event_id));
        }
    }
    for missing in expected.difference(&seen) {
        problems.push(format!("{} for event {} was never written", missing.0, missing.1));
    }
    problems
}
