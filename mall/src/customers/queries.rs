//! Customers queries over NATS request/reply on `query.customers`: the owner's current state,
//! which payments', notifications' and search's caches fall back on.

use carrier_messages::customers::{CustomerSnapshot, CustomersQuery, CustomersQueryReply};
use carrier_messages::QueryReply;
use carrier_storage::CustomersDb;

/// Answers one query from the owner's file (read transactions: never waits for the owner).
pub fn answer(db: &CustomersDb, query: CustomersQuery) -> CustomersQueryReply {
    let CustomersQuery::GetCustomer { id } = query;
    match db.customer(&id) {
        Ok(row) => CustomersQueryReply {
            ok: true,
            customer: row.map(|c| CustomerSnapshot {
                id,
                name: c.name,
                sms_number: c.sms_number,
                enabled: c.enabled,
                version: c.version,
            }),
            error: None,
        },
        Err(e) => CustomersQueryReply::failed("unavailable", e.to_string()),
    }
}
