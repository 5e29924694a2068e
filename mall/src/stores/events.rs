//! The stores context: stores and their products, owned by the stores service.
//!
//! Names follow the MallBots design (seed 001). Prices and deltas are integers in the currency's
//! minor unit (cents), so that a delta applied once is exact.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use carrier_messages::{check, DomainEvent, ValidationError};

/// A store opened in the mall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreCreated {
    /// Store id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
    /// Display name.
    #[schemars(length(min = 1, max = 256), pattern(r"\S"))]
    pub name: String,
    /// Where in the mall it is.
    #[schemars(length(max = 4096))]
    pub location: String,
}

/// A store changed its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreRebranded {
    /// Store id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
    /// The new name.
    #[schemars(length(min = 1, max = 256), pattern(r"\S"))]
    pub name: String,
}

/// A store joined the mall's automated ordering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreParticipationEnabled {
    /// Store id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
}

/// A store left the mall's automated ordering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreParticipationDisabled {
    /// Store id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
}

/// A product was added to a store's catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductAdded {
    /// Product id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
    /// The store that sells it.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub store_id: String,
    /// Display name.
    #[schemars(length(min = 1, max = 256), pattern(r"\S"))]
    pub name: String,
    /// Free text.
    #[schemars(length(max = 4096))]
    pub description: String,
    /// Stock keeping unit.
    #[schemars(length(max = 64))]
    pub sku: String,
    /// Price in minor units (cents).
    #[schemars(range(min = 0))]
    pub price: i64,
}

/// A product changed its name and description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductRebranded {
    /// Product id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
    /// The new name.
    #[schemars(length(min = 1, max = 256), pattern(r"\S"))]
    pub name: String,
    /// The new description.
    #[schemars(length(max = 4096))]
    pub description: String,
}

/// A product's price went up by `delta` minor units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductPriceIncreased {
    /// Product id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
    /// How much the price rose, in minor units; greater than zero.
    #[schemars(range(min = 1))]
    pub delta: i64,
}

/// A product's price went down by `delta` minor units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductPriceDecreased {
    /// Product id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
    /// How much the price fell, in minor units; greater than zero.
    #[schemars(range(min = 1))]
    pub delta: i64,
}

/// A product was taken out of the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductRemoved {
    /// Product id.
    #[schemars(length(min = 1, max = 128), pattern(r"\S"))]
    pub id: String,
}

impl carrier_messages::Validate for StoreCreated {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::name("name", &self.name)?;
        check::free_text("location", &self.location)
    }
}

impl carrier_messages::Validate for StoreRebranded {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::name("name", &self.name)
    }
}

impl carrier_messages::Validate for StoreParticipationEnabled {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)
    }
}

impl carrier_messages::Validate for StoreParticipationDisabled {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)
    }
}

impl carrier_messages::Validate for ProductAdded {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("store_id", &self.store_id)?;
        check::name("name", &self.name)?;
        check::free_text("description", &self.description)?;
        check::text("sku", &self.sku, 0, 64)?;
        check::non_negative("price", self.price)
    }
}

impl carrier_messages::Validate for ProductRebranded {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::name("name", &self.name)?;
        check::free_text("description", &self.description)
    }
}

impl carrier_messages::Validate for ProductPriceIncreased {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::positive("delta", self.delta)
    }
}

impl carrier_messages::Validate for ProductPriceDecreased {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::positive("delta", self.delta)
    }
}

impl carrier_messages::Validate for ProductRemoved {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)
    }
}

carrier_messages::domain_events! {
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
    pub error: Option<carrier_messages::CommandFailure>,
}

impl carrier_messages::QueryReply for StoresQueryReply {
    fn failed(code: &str, message: String) -> Self {
        StoresQueryReply {
            ok: false,
            store: None,
            product: None,
            error: Some(carrier_messages::CommandFailure { code: code.to_string(), message, details: None }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrier_messages::{header, ContentType};
    use carrier_messages::{Causality, Decoded, WireFormat};

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
        let causality = Causality { causation_id: Some("cmd-7".into()), ..Causality::default() };
        let original = Decoded::new(added(), 1, &causality);
        let wire = original.encode().expect("encodes");
        assert_eq!(wire.subject, "stores.product.added");
        // Only what JetStream itself reads goes in a header.
        assert_eq!(wire.headers, vec![(header::NATS_MSG_ID.to_string(), original.envelope.event_id.to_string())]);
        let back = Decoded::<StoresEvent>::decode(&wire.subject, lookup(&wire.headers), &wire.body).expect("decodes");
        // RFC 3339 keeps nanoseconds, so even the timestamp survives the trip exactly.
        assert_eq!(back, original);
    }

    #[test]
    fn every_framing_round_trips_in_both_payload_encodings() {
        for format in
            [WireFormat::Structured, WireFormat::Headers, WireFormat::CloudEventsBinary, WireFormat::CloudEventsJson]
        {
            for content_type in [ContentType::Cbor, ContentType::Json] {
                let causality = Causality { causation_id: Some("cmd-7".into()), ..Causality::default() };
                let mut original = Decoded::new(added(), 3, &causality);
                original.envelope.content_type = content_type;
                let wire = original.encode_as(format).expect("encodes");
                let back = Decoded::<StoresEvent>::decode(&wire.subject, lookup(&wire.headers), &wire.body)
                    .unwrap_or_else(|e| panic!("{format:?} {content_type:?}: {e}"));
                assert_eq!(back, original, "{format:?} {content_type:?}");
            }
        }
    }

    #[test]
    fn the_structured_body_is_a_cloudevent_in_cbor() {
        let original = Decoded::new(added(), 2, &Causality::default());
        let wire = original.encode().expect("encodes");
        let map: std::collections::BTreeMap<String, ciborium::Value> =
            ciborium::from_reader(wire.body.as_slice()).expect("a CBOR map");
        let text = |k: &str| map.get(k).and_then(|v| v.as_text()).map(str::to_string);
        assert_eq!(text("specversion").as_deref(), Some("1.0"));
        assert_eq!(text("id"), Some(original.envelope.event_id.to_string()));
        assert_eq!(text("type").as_deref(), Some("stores.ProductAdded"));
        assert_eq!(text("source").as_deref(), Some("/carrier/stores"));
        assert_eq!(text("subject").as_deref(), Some("p-1"));
        assert_eq!(text("datacontenttype").as_deref(), Some("application/cbor"));
        assert_eq!(map.get("aggregateversion").and_then(|v| v.as_integer()), Some(2.into()));
        let data = map.get("data").and_then(|v| v.as_map()).expect("data is an embedded CBOR map");
        assert!(data.iter().any(|(k, v)| k.as_text() == Some("price") && v.as_integer() == Some(1999.into())));
    }

    #[test]
    fn a_cloudevent_from_an_sdk_decodes_without_carrier_extensions_but_the_version() {
        // What a CloudEvents SDK sends by default: a string id that is no UUID, no subject (the
        // payload's id names the aggregate), JSON data, the version as a string extension.
        let body = br#"{"specversion":"1.0","id":"order-42","source":"https://shop.example/prices","type":"stores.ProductPriceIncreased","aggregateversion":"2","data":{"id":"p-1","delta":150}}"#;
        let headers = vec![(header::CONTENT_TYPE.to_string(), "application/cloudevents+json".to_string())];
        let got =
            Decoded::<StoresEvent>::decode("stores.product.price_increased", lookup(&headers), body).expect("decodes");
        assert_eq!(got.envelope.aggregate_id, "p-1");
        assert_eq!(got.envelope.aggregate_version, 2);
        let again =
            Decoded::<StoresEvent>::decode("stores.product.price_increased", lookup(&headers), body).expect("decodes");
        assert_eq!(got.envelope.event_id, again.envelope.event_id, "the same (source, id) maps to the same event id");
        let binary = vec![
            ("ce-specversion".to_string(), "1.0".to_string()),
            ("ce-id".to_string(), "order-42".to_string()),
            ("ce-source".to_string(), "https://shop.example/prices".to_string()),
            ("ce-type".to_string(), "stores.ProductPriceIncreased".to_string()),
            ("ce-aggregateversion".to_string(), "2".to_string()),
        ];
        let from_headers = Decoded::<StoresEvent>::decode(
            "stores.product.price_increased",
            lookup(&binary),
            br#"{"id":"p-1","delta":150}"#,
        )
        .expect("binary mode decodes, JSON data by default");
        assert_eq!(from_headers.event, got.event);
        assert_eq!(from_headers.envelope.event_id, got.envelope.event_id);
    }

    #[test]
    fn a_broken_structured_event_names_the_attribute() {
        let good = Decoded::new(added(), 1, &Causality::default()).encode().expect("encodes");
        let decode = |body: &[u8]| {
            Decoded::<StoresEvent>::decode(&good.subject, lookup(&good.headers), body).map(|_| ()).unwrap_err()
        };
        let map: Vec<(ciborium::Value, ciborium::Value)> =
            ciborium::from_reader::<ciborium::Value, _>(good.body.as_slice()).expect("map").into_map().expect("map");
        let edit = |key: &str, value: Option<ciborium::Value>| {
            let mut m = map.clone();
            m.retain(|(k, _)| k.as_text() != Some(key));
            if let Some(v) = value {
                m.push((key.into(), v));
            }
            let mut out = Vec::new();
            ciborium::into_writer(&ciborium::Value::Map(m), &mut out).expect("writes");
            out
        };
        assert_eq!(decode(&edit("type", None)).to_string(), "missing attribute type");
        assert_eq!(decode(&edit("aggregateversion", None)).to_string(), "missing attribute aggregateversion");
        assert_eq!(decode(&edit("data", None)).to_string(), "missing attribute data");
        let zero = decode(&edit("aggregateversion", Some(0.into())));
        assert_eq!((zero.code(), zero.to_string().contains("aggregateversion")), ("bad_attribute", true));
        assert_eq!(decode(&edit("aggregateversion", Some("x".into()))).code(), "bad_attribute");
        assert_eq!(decode(&edit("time", Some("yesterday".into()))).code(), "bad_attribute");
        assert_eq!(decode(&edit("specversion", Some("0.3".into()))).code(), "bad_attribute");
        assert_eq!(decode(&edit("subject", Some("p-2".into()))).code(), "aggregate_mismatch");
        assert_eq!(decode(&edit("type", Some("stores.StoreExploded".into()))).code(), "unknown_event_type");
        assert_eq!(decode(&edit("datacontenttype", Some("text/plain".into()))).code(), "bad_attribute");
        // Unknown attributes, however nested, are stepped over.
        let extra =
            ciborium::Value::Array(vec![ciborium::Value::Map(vec![(1.into(), 2.5.into())]), ciborium::Value::Null]);
        assert!(
            Decoded::<StoresEvent>::decode(&good.subject, lookup(&good.headers), &edit("x-extra", Some(extra))).is_ok()
        );
        assert_eq!(decode(&good.body[..good.body.len() - 3]).code(), "bad_attribute");
        assert_eq!(decode(b"\xff\xff").code(), "undecodable_envelope");
        assert_eq!(decode(b"\x83\x01\x02\x03").code(), "undecodable_envelope");
        assert_eq!(decode(&[0x81u8; 10_000]).code(), "undecodable_envelope");
        let mut trailing = good.body.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing).code(), "undecodable_envelope");
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
        // The header framing, as producers written against Carrier before 0.2 still send it.
        let good = Decoded::new(added(), 1, &Causality::default()).encode_as(WireFormat::Headers).expect("encodes");
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
        let huge = vec![0u8; carrier_messages::MAX_BODY_BYTES + 1];
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
