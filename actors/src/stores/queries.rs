//! Stores queries over NATS request/reply on `query.stores`: the owner's current state, which
//! other contexts' caches fall back on when they miss or find a gap.

use std::sync::Arc;

use carrier_messages::request::{decode_request, encode_body, CommandFailure};
use carrier_messages::stores::{ProductSnapshot, StoreSnapshot, StoresQuery, StoresQueryReply};
use carrier_messages::ContentType;
use carrier_storage::{StorageError, StoresDb};

use crate::bus::IncomingRequest;
use crate::responder::Answer;

/// Answers queries from the owner's database. It only reads, so it never waits on the owner.
pub struct StoresQueries {
    /// The owner's database.
    pub db: Arc<StoresDb>,
}

impl Answer for StoresQueries {
    async fn answer(&self, request: &IncomingRequest, content_type: ContentType) -> Vec<u8> {
        let reply = match decode_request::<StoresQuery>(content_type, &request.payload) {
            Err(reason) => failed("bad_request", format!("not a stores query: {reason}")),
            Ok(query) => {
                let db = self.db.clone();
                match tokio::task::spawn_blocking(move || lookup(&db, query)).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(e)) => failed("unavailable", e.to_string()),
                    Err(e) => failed("unavailable", e.to_string()),
                }
            }
        };
        encode_body(content_type, &reply)
    }
}

fn lookup(db: &StoresDb, query: StoresQuery) -> Result<StoresQueryReply, StorageError> {
    let mut reply = StoresQueryReply { ok: true, store: None, product: None, error: None };
    match query {
        StoresQuery::GetStore { id } => {
            reply.store = db.store(&id)?.map(|s| StoreSnapshot {
                id,
                name: s.name,
                location: s.location,
                participating: s.participating,
                version: s.version,
            });
        }
        StoresQuery::GetProduct { id } => {
            reply.product = db.product(&id)?.map(|p| ProductSnapshot {
                id,
                store_id: p.store_id,
                name: p.name,
                description: p.description,
                sku: p.sku,
                price: p.price,
                removed: p.removed,
                version: p.version,
            });
        }
    }
    Ok(reply)
}

fn failed(code: &str, message: String) -> StoresQueryReply {
    StoresQueryReply {
        ok: false,
        store: None,
        product: None,
        error: Some(CommandFailure { code: code.to_string(), message }),
    }
}
