//! Property tests: the decoder never panics on hostile input, and valid events survive the trip.

use carrier_messages::codec::{Causality, Decoded};
use carrier_messages::envelope::header;
use carrier_messages::stores::*;
use carrier_messages::{ContentType, DomainEvent};
use proptest::prelude::*;

fn id() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,20}"
}

fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z][ -~]{0,30}"
}

fn event() -> impl Strategy<Value = StoresEvent> {
    prop_oneof![
        (id(), name(), text()).prop_map(|(id, name, location)| StoresEvent::StoreCreated(StoreCreated {
            id,
            name,
            location
        })),
        (id(), name()).prop_map(|(id, name)| StoresEvent::StoreRebranded(StoreRebranded { id, name })),
        id().prop_map(|id| StoresEvent::StoreParticipationEnabled(StoreParticipationEnabled { id })),
        id().prop_map(|id| StoresEvent::StoreParticipationDisabled(StoreParticipationDisabled { id })),
        (id(), id(), name(), text(), "[A-Z0-9]{0,10}", 0i64..i64::MAX).prop_map(
            |(id, store_id, name, description, sku, price)| {
                StoresEvent::ProductAdded(ProductAdded { id, store_id, name, description, sku, price })
            }
        ),
        (id(), name(), text()).prop_map(|(id, name, description)| StoresEvent::ProductRebranded(ProductRebranded {
            id,
            name,
            description
        })),
        (id(), 1i64..i64::MAX)
            .prop_map(|(id, delta)| StoresEvent::ProductPriceIncreased(ProductPriceIncreased { id, delta })),
        (id(), 1i64..i64::MAX)
            .prop_map(|(id, delta)| StoresEvent::ProductPriceDecreased(ProductPriceDecreased { id, delta })),
        id().prop_map(|id| StoresEvent::ProductRemoved(ProductRemoved { id })),
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
        let back = Decoded::<StoresEvent>::decode(&wire.subject, lookup(&wire.headers), &wire.body).expect("decodes");
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
        if let Ok(decoded) = Decoded::<StoresEvent>::decode(&wire.subject, lookup(&wire.headers), &body) {
            prop_assert!(decoded.event.validate().is_ok());
        }
    }

    #[test]
    fn arbitrary_headers_and_bodies_never_panic(
        event_type in prop_oneof![prop::sample::select(StoresEvent::EVENT_TYPES.to_vec()).prop_map(String::from), "[ -~]{0,30}"],
        version in "[ -~]{0,8}",
        schema in "[0-9]{0,3}",
        content_type in prop_oneof![Just("application/cbor".to_string()), Just("application/json".to_string()), "[ -~]{0,20}"],
        body in prop::collection::vec(any::<u8>(), 0..256),
        subject in prop_oneof![Just("stores.store.created".to_string()), "[a-z.]{0,30}"],
    ) {
        let headers = vec![
            (header::EVENT_ID.to_string(), "0190a0b0-0000-7000-8000-000000000001".to_string()),
            (header::EVENT_TYPE.to_string(), event_type),
            (header::AGGREGATE_ID.to_string(), "x".to_string()),
            (header::AGGREGATE_VERSION.to_string(), version),
            (header::SCHEMA_VERSION.to_string(), schema),
            (header::CONTENT_TYPE.to_string(), content_type),
        ];
        let _ = Decoded::<StoresEvent>::decode(&subject, lookup(&headers), &body);
    }
}
