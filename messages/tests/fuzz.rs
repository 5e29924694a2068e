//! Property tests: the decoder never panics on hostile input, and valid events survive the trip.
//! The events are a neutral catalogue of the test's own, declared as any user declares theirs.

use carrier_messages::header;
use carrier_messages::{check, domain_events, ContentType, DomainEvent, Validate, ValidationError};
use carrier_messages::{Causality, Decoded};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
struct ShelfOpened {
    id: String,
    name: String,
    location: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
struct ShelfClosed {
    id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
struct ItemListed {
    id: String,
    shelf_id: String,
    name: String,
    description: String,
    sku: String,
    price: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
struct ItemRepriced {
    id: String,
    delta: i64,
}

impl Validate for ShelfOpened {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::name("name", &self.name)?;
        check::free_text("location", &self.location)
    }
}

impl Validate for ShelfClosed {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)
    }
}

impl Validate for ItemListed {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)?;
        check::id("shelf_id", &self.shelf_id)?;
        check::name("name", &self.name)?;
        check::free_text("description", &self.description)?;
        check::text("sku", &self.sku, 0, 64)?;
        check::non_negative("price", self.price)
    }
}

impl Validate for ItemRepriced {
    fn validate(&self) -> Result<(), ValidationError> {
        check::id("id", &self.id)
    }
}

domain_events! {
    /// A neutral catalogue's events.
    enum CatalogEvent, context "catalog", stream "CATALOG", subjects "catalog.>";
    ShelfOpened => "shelf", "catalog.shelf.opened";
    ShelfClosed => "shelf", "catalog.shelf.closed";
    ItemListed => "item", "catalog.item.listed";
    ItemRepriced => "item", "catalog.item.repriced";
}

fn id() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,20}"
}

fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z][ -~]{0,30}"
}

fn event() -> impl Strategy<Value = CatalogEvent> {
    prop_oneof![
        (id(), name(), text()).prop_map(|(id, name, location)| CatalogEvent::ShelfOpened(ShelfOpened {
            id,
            name,
            location
        })),
        id().prop_map(|id| CatalogEvent::ShelfClosed(ShelfClosed { id })),
        (id(), id(), name(), text(), "[A-Z0-9]{0,10}", 0i64..i64::MAX).prop_map(
            |(id, shelf_id, name, description, sku, price)| {
                CatalogEvent::ItemListed(ItemListed { id, shelf_id, name, description, sku, price })
            }
        ),
        (id(), i64::MIN..i64::MAX).prop_map(|(id, delta)| CatalogEvent::ItemRepriced(ItemRepriced { id, delta })),
    ]
}

fn lookup<'h>(headers: &'h [(String, String)]) -> impl Fn(&str) -> Option<&'h str> + 'h {
    move |name| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_events_round_trip_in_both_encodings(event in event(), version in 1u64..1_000_000, json in any::<bool>()) {
        let mut original = Decoded::new(event, version, &Causality::default());
        if json {
            original.envelope.content_type = ContentType::Json;
        }
        let wire = original.encode().expect("encodes");
        let back = Decoded::<CatalogEvent>::decode(&wire.subject, lookup(&wire.headers), &wire.body).expect("decodes");
        prop_assert_eq!(back, original);
    }

    #[test]
    fn mutated_bodies_never_panic(
        event in event(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        json in any::<bool>(),
    ) {
        let mut original = Decoded::new(event, 1, &Causality::default());
        if json {
            original.envelope.content_type = ContentType::Json;
        }
        let wire = original.encode().expect("encodes");
        let mut body = wire.body.clone();
        for (at, value) in flips {
            let i = at.index(body.len().max(1));
            if let Some(b) = body.get_mut(i) {
                *b = value;
            }
        }
        body.truncate(cut.index(body.len() + 1));
        // Either it still decodes into a valid event, or it is refused with a reason.
        if let Ok(decoded) = Decoded::<CatalogEvent>::decode(&wire.subject, lookup(&wire.headers), &body) {
            prop_assert!(decoded.event.validate().is_ok());
        }
    }

    #[test]
    fn arbitrary_headers_and_bodies_never_panic(
        event_type in prop_oneof![prop::sample::select(CatalogEvent::EVENT_TYPES.to_vec()).prop_map(String::from), "[ -~]{0,30}"],
        version in "[ -~]{0,8}",
        schema in "[0-9]{0,3}",
        content_type in prop_oneof![Just("application/cbor".to_string()), Just("application/json".to_string()), "[ -~]{0,20}"],
        body in prop::collection::vec(any::<u8>(), 0..256),
        subject in prop_oneof![Just("catalog.shelf.opened".to_string()), "[a-z.]{0,30}"],
    ) {
        let headers = vec![
            (header::EVENT_ID.to_string(), "0190a0b0-0000-7000-8000-000000000001".to_string()),
            (header::EVENT_TYPE.to_string(), event_type),
            (header::AGGREGATE_ID.to_string(), "x".to_string()),
            (header::AGGREGATE_VERSION.to_string(), version),
            (header::SCHEMA_VERSION.to_string(), schema),
            (header::CONTENT_TYPE.to_string(), content_type),
        ];
        let _ = Decoded::<CatalogEvent>::decode(&subject, lookup(&headers), &body);
    }
}
