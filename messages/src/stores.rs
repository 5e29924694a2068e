//! The stores context: stores and their products, owned by the stores service.
//!
//! Names follow the MallBots design (seed 001). Prices and deltas are integers in the currency's
//! minor unit (cents), so that a delta applied once is exact.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codec::{check, DomainEvent, ValidationError};

/// A store opened in the mall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreCreated {
    /// Store id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Where in the mall it is.
    pub location: String,
}

/// A store changed its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreRebranded {
    /// Store id.
    pub id: String,
    /// The new name.
    pub name: String,
}

/// A store joined the mall's automated ordering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreParticipationEnabled {
    /// Store id.
    pub id: String,
}

/// A store left the mall's automated ordering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreParticipationDisabled {
    /// Store id.
    pub id: String,
}

/// A product was added to a store's catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductAdded {
    /// Product id.
    pub id: String,
    /// The store that sells it.
    pub store_id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Price in minor units (cents).
    pub price: i64,
}

/// A product changed its name and description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductRebranded {
    /// Product id.
    pub id: String,
    /// The new name.
    pub name: String,
    /// The new description.
    pub description: String,
}

/// A product's price went up by `delta` minor units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductPriceIncreased {
    /// Product id.
    pub id: String,
    /// How much the price rose, in minor units; greater than zero.
    pub delta: i64,
}

/// A product's price went down by `delta` minor units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductPriceDecreased {
    /// Product id.
    pub id: String,
    /// How much the price fell, in minor units; greater than zero.
    pub delta: i64,
}

/// A product was taken out of the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductRemoved {
    /// Product id.
    pub id: String,
}

impl crate::codec::Validate for StoreCreated {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::name("name", &self.name)?;
        check::free_text("location", &self.location)
    }
}

impl crate::codec::Validate for StoreRebranded {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::name("name", &self.name)
    }
}

impl crate::codec::Validate for StoreParticipationEnabled {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)
    }
}

impl crate::codec::Validate for StoreParticipationDisabled {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)
    }
}

impl crate::codec::Validate for ProductAdded {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("store_id", &self.store_id)?;
        check::name("name", &self.name)?;
        check::free_text("description", &self.description)?;
        check::text("sku", &self.sku, 0, 64)?;
        check::non_negative("price", self.price)
    }
}

impl crate::codec::Validate for ProductRebranded {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::name("name", &self.name)?;
        check::free_text("description", &self.description)
    }
}

impl crate::codec::Validate for ProductPriceIncreased {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::positive("delta", self.delta)
    }
}

impl crate::codec::Validate for ProductPriceDecreased {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::positive("delta", self.delta)
    }
}

impl crate::codec::Validate for ProductRemoved {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)
    }
}

crate::domain_events! {
    /// Every event the stores context publishes.
    enum StoresEvent, context "stores", stream "STORES", subjects "stores.>";
    StoreCreated => "store", "stores.store.created";
    StoreRebranded => "store", "stores.store.rebranded";
    StoreParticipationEnabled => "store", "stores.store.participation_enabled";
    StoreParticipationDisabled => "store", "stores.store.participation_disabled";
    ProductAdded => "product", "stores.product.added";
    ProductRebranded => "product", "stores.product.rebranded";
    ProductPriceIncreased => "product", "stores.product.price_increased";
    ProductPriceDecreased => "product", "stores.product.price_decreased";
    ProductRemoved => "product", "stores.product.removed";
}

impl StoresEvent {
    /// The short name used in flow logs, e.g. `StoreCreated`.
    pub fn short_name(&self) -> &'static str {
        let full = self.event_type();
        full.strip_prefix("stores.").unwrap_or(full)
    }
}

/// A request to change the stores context's state. Each accepted command records one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum StoresCommand {
    /// Open a store.
    CreateStore {
        /// Store id, chosen by the caller so that retries are safe.
        id: String,
        /// Display name.
        name: String,
        /// Where in the mall.
        location: String,
    },
    /// Rename a store.
    RebrandStore {
        /// Store id.
        id: String,
        /// New name.
        name: String,
    },
    /// Let a store take part in automated ordering.
    EnableParticipation {
        /// Store id.
        id: String,
    },
    /// Take a store out of automated ordering.
    DisableParticipation {
        /// Store id.
        id: String,
    },
    /// Add a product to a store.
    AddProduct {
        /// Product id, chosen by the caller.
        id: String,
        /// The store.
        store_id: String,
        /// Display name.
        name: String,
        /// Free text.
        description: String,
        /// Stock keeping unit.
        sku: String,
        /// Price in minor units.
        price: i64,
    },
    /// Rename a product.
    RebrandProduct {
        /// Product id.
        id: String,
        /// New name.
        name: String,
        /// New description.
        description: String,
    },
    /// Raise a product's price.
    IncreaseProductPrice {
        /// Product id.
        id: String,
        /// Minor units, greater than zero.
        delta: i64,
    },
    /// Lower a product's price.
    DecreaseProductPrice {
        /// Product id.
        id: String,
        /// Minor units, greater than zero.
        delta: i64,
    },
    /// Take a product out of the catalogue.
    RemoveProduct {
        /// Product id.
        id: String,
    },
}

impl StoresCommand {
    /// The command's name as the flow log shows it, e.g. `CreateStore`.
    pub fn name(&self) -> &'static str {
        match self {
            StoresCommand::CreateStore { .. } => "CreateStore",
            StoresCommand::RebrandStore { .. } => "RebrandStore",
            StoresCommand::EnableParticipation { .. } => "EnableParticipation",
            StoresCommand::DisableParticipation { .. } => "DisableParticipation",
            StoresCommand::AddProduct { .. } => "AddProduct",
            StoresCommand::RebrandProduct { .. } => "RebrandProduct",
            StoresCommand::IncreaseProductPrice { .. } => "IncreaseProductPrice",
            StoresCommand::DecreaseProductPrice { .. } => "DecreaseProductPrice",
            StoresCommand::RemoveProduct { .. } => "RemoveProduct",
        }
    }
}

/// A question to the stores context, sent to `query.stores`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum StoresQuery {
    /// One store's current state.
    GetStore {
        /// Store id.
        id: String,
    },
    /// One product's current state (removed ones included, flagged).
    GetProduct {
        /// Product id.
        id: String,
    },
}

/// A store as its owner knows it now, with the version of its last event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreSnapshot {
    /// Store id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Where in the mall.
    pub location: String,
    /// Whether it takes part in automated ordering.
    pub participating: bool,
    /// The version of its last event.
    pub version: u64,
}

/// A product as its owner knows it now, with the version of its last event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductSnapshot {
    /// Product id.
    pub id: String,
    /// The store that sells it.
    pub store_id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Price in minor units.
    pub price: i64,
    /// Taken out of the catalogue.
    pub removed: bool,
    /// The version of its last event.
    pub version: u64,
}

/// The answer to a [`StoresQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoresQueryReply {
    /// Whether the query was answered (a missing entity is `ok` with nothing found).
    pub ok: bool,
    /// The store, for `get_store` when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreSnapshot>,
    /// The product, for `get_product` when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<ProductSnapshot>,
    /// Why not, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::request::CommandFailure>,
}

impl crate::request::QueryReply for StoresQueryReply {
    fn failed(code: &str, message: String) -> Self {
        StoresQueryReply {
            ok: false,
            store: None,
            product: None,
            error: Some(crate::request::CommandFailure { code: code.to_string(), message }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Causality, Decoded};
    use crate::envelope::{header, ContentType};

    fn lookup<'h>(headers: &'h [(String, String)]) -> impl Fn(&str) -> Option<&'h str> + 'h {
        move |name| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn added() -> StoresEvent {
        StoresEvent::ProductAdded(ProductAdded {
            id: "p-1".into(),
            store_id: "s-1".into(),
            name: "Kettle".into(),
            description: "Boils".into(),
            sku: "K1".into(),
            price: 1999,
        })
    }

    #[test]
    fn cbor_round_trip_keeps_envelope_and_payload() {
        let original = Decoded::new(added(), 1, &Causality::default());
        let wire = original.encode().expect("encodes");
        assert_eq!(wire.subject, "stores.product.added");
        let back = Decoded::<StoresEvent>::decode(&wire.subject, lookup(&wire.headers), &wire.body).expect("decodes");
        assert_eq!(back.event, original.event);
        assert_eq!(back.envelope.event_id, original.envelope.event_id);
        assert_eq!(back.envelope.aggregate_version, 1);
        // RFC 3339 keeps nanoseconds, so the timestamp survives the trip exactly.
        assert_eq!(back.envelope.occurred_at_unix_nanos, original.envelope.occurred_at_unix_nanos);
    }

    #[test]
    fn json_body_from_a_foreign_producer_decodes() {
        let headers = vec![
            (header::NATS_MSG_ID.to_string(), "0190a0b0-0000-7000-8000-000000000001".to_string()),
            (header::EVENT_TYPE.to_string(), "stores.ProductPriceIncreased".to_string()),
            (header::AGGREGATE_ID.to_string(), "p-1".to_string()),
            (header::AGGREGATE_VERSION.to_string(), "2".to_string()),
            (header::CONTENT_TYPE.to_string(), "application/json; charset=utf-8".to_string()),
        ];
        let body = br#"{"id":"p-1","delta":150,"extra":"ignored"}"#;
        let got =
            Decoded::<StoresEvent>::decode("stores.product.price_increased", lookup(&headers), body).expect("decodes");
        assert_eq!(
            got.event,
            StoresEvent::ProductPriceIncreased(ProductPriceIncreased { id: "p-1".into(), delta: 150 })
        );
        assert_eq!(got.envelope.content_type, ContentType::Json);
        assert_eq!(got.envelope.correlation_id, "0190a0b0-0000-7000-8000-000000000001");
    }

    #[test]
    fn every_broken_message_gets_a_specific_reason() {
        let good = Decoded::new(added(), 1, &Causality::default()).encode().expect("encodes");
        let with = |name: &str, value: Option<&str>| {
            let mut h: Vec<(String, String)> = good.headers.iter().filter(|(k, _)| k != name).cloned().collect();
            if let Some(v) = value {
                h.push((name.to_string(), v.to_string()));
            }
            h
        };
        let decode = |subject: &str, h: &[(String, String)], body: &[u8]| {
            Decoded::<StoresEvent>::decode(subject, lookup(h), body).map(|_| ()).unwrap_err().code()
        };

        let no_type = with(header::EVENT_TYPE, None);
        assert_eq!(decode(&good.subject, &no_type, &good.body), "missing_header");
        let unknown = with(header::EVENT_TYPE, Some("stores.StoreExploded"));
        assert_eq!(decode(&good.subject, &unknown, &good.body), "unknown_event_type");
        let future = with(header::SCHEMA_VERSION, Some("9"));
        assert_eq!(decode(&good.subject, &future, &good.body), "unsupported_schema_version");
        let zero = with(header::AGGREGATE_VERSION, Some("0"));
        assert_eq!(decode(&good.subject, &zero, &good.body), "bad_header");
        assert_eq!(decode(&good.subject, &good.headers, &good.body[..good.body.len() / 2]), "undecodable_body");
        assert_eq!(decode(&good.subject, &good.headers, b"\xff\xff\xff"), "undecodable_body");
        assert_eq!(decode("stores.store.created", &good.headers, &good.body), "subject_mismatch");
        let other = with(header::AGGREGATE_ID, Some("p-2"));
        assert_eq!(decode(&good.subject, &other, &good.body), "aggregate_mismatch");
        let huge = vec![0u8; crate::codec::MAX_BODY_BYTES + 1];
        assert_eq!(decode(&good.subject, &good.headers, &huge), "body_too_large");
        // 10k nested CBOR arrays: refused by the nesting limit, not by a stack overflow.
        let nested = vec![0x81u8; 10_000];
        assert_eq!(decode(&good.subject, &good.headers, &nested), "undecodable_body");
    }

    #[test]
    fn validation_rejects_a_negative_price_and_a_zero_delta() {
        let mut bad = added();
        if let StoresEvent::ProductAdded(p) = &mut bad {
            p.price = -1;
        }
        assert_eq!(bad.validate().unwrap_err().field, "price");
        let zero = StoresEvent::ProductPriceDecreased(ProductPriceDecreased { id: "p".into(), delta: 0 });
        assert_eq!(zero.validate().unwrap_err().field, "delta");
    }

    #[test]
    fn the_cbor_example_in_the_wire_contract_is_exact() {
        let event = StoresEvent::StoreParticipationEnabled(StoreParticipationEnabled { id: "s-1".into() });
        let body = event.encode_payload(ContentType::Cbor).expect("encodes");
        assert_eq!(body, [0xa1, 0x62, 0x69, 0x64, 0x63, 0x73, 0x2d, 0x31], "docs/wire-contract.md shows these bytes");
    }

    #[test]
    fn every_event_type_is_listed_once_with_a_distinct_subject() {
        assert_eq!(StoresEvent::EVENT_TYPES.len(), 9);
        let mut types = StoresEvent::EVENT_TYPES.to_vec();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), 9);
    }
}
