//! Customers queries over NATS request/reply on `query.customers`: the owner's current state,
//! which payments', notifications' and search's caches fall back on.

use std::sync::Arc;

use carrier_messages::customers::{CustomerSnapshot, CustomersQuery, CustomersQueryReply};
use carrier_messages::request::{decode_request, encode_body, CommandFailure};
use carrier_messages::ContentType;
use carrier_storage::CustomersDb;

use crate::bus::IncomingRequest;
use crate::responder::Answer;

/// Answers queries from the owner's database. It only reads, so it never waits on the owner.
pub struct CustomersQueries {
    /// The owner's database.
    pub db: Arc<CustomersDb>,
}

impl Answer for CustomersQueries {
    async fn answer(&self, request: &IncomingRequest, content_type: ContentType) -> Vec<u8> {
        let failed = |code: &str, message: String| CustomersQueryReply {
            ok: false,
            customer: None,
            error: Some(CommandFailure { code: code.to_string(), message }),
        };
        let reply = match decode_request::<CustomersQuery>(content_type, &request.payload) {
            Err(reason) => failed("bad_request", format!("not a customers query: {reason}")),
            Ok(CustomersQuery::GetCustomer { id }) => {
                let db = self.db.clone();
                match tokio::task::spawn_blocking(move || db.customer(&id).map(|row| (id, row))).await {
                    Ok(Ok((id, row))) => CustomersQueryReply {
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
                    Ok(Err(e)) => failed("unavailable", e.to_string()),
                    Err(e) => failed("unavailable", e.to_string()),
                }
            }
        };
        encode_body(content_type, &reply)
    }
}
