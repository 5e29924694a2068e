//! Customers queries over NATS request/reply on `query.customers`, and the entity endpoint
//! `query.customers.entity`: the owner's current state, which the customers caches of other
//! contexts fall back on.

use carrier_messages::Entity;
use carrier_messages::QueryReply;
use carrier_storage::StorageError;

use super::{CustomerSnapshot, CustomersDb, CustomersFile, CustomersQuery, CustomersQueryReply};

/// Answers one query from the owner's file.
pub fn answer(db: &CustomersDb, query: CustomersQuery) -> CustomersQueryReply {
    let CustomersQuery::GetCustomer { id } = query;
    match customer(db, &id) {
        Ok(customer) => CustomersQueryReply { ok: true, customer, error: None },
        Err(e) => CustomersQueryReply::failed("unavailable", e.to_string()),
    }
}

/// Answers the entity endpoint: a customer at their version.
pub fn entity(db: &CustomersDb, aggregate: &str, id: &str) -> Result<Option<Entity<serde_json::Value>>, StorageError> {
    match aggregate {
        "customer" => Ok(customer(db, id)?.map(|c| Entity::of(c.version, &c))),
        _ => Ok(None),
    }
}

fn customer(db: &CustomersDb, id: &str) -> Result<Option<CustomerSnapshot>, StorageError> {
    Ok(db.customer(id)?.map(|c| CustomerSnapshot {
        id: id.to_string(),
        name: c.name,
        sms_number: c.sms_number,
        enabled: c.enabled,
        version: c.version,
    }))
}
