//! The AsyncAPI document `carrier asyncapi` generates: valid AsyncAPI 3.0, complete, and every
//! reference in it resolves.

use std::process::Command;

use carrier_messages::DomainEvent;
use carrier_tests::carrier_bin;
use serde_json::Value;

/// The AsyncAPI 3.0.0 JSON Schema, vendored from the npm package @asyncapi/specs 6.11.1
/// (Apache-2.0), `schemas/3.0.0-without-$id.json`.
const ASYNCAPI_3_SCHEMA: &str = include_str!("../schemas/asyncapi-3.0.0.json");

fn document() -> Value {
    let out = Command::new(carrier_bin()).arg("asyncapi").output().expect("carrier asyncapi runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the document is JSON")
}

#[test]
fn the_asyncapi_document_validates_against_the_asyncapi_3_schema() {
    let doc = document();
    let schema: Value = serde_json::from_str(ASYNCAPI_3_SCHEMA).expect("the vendored schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the AsyncAPI schema compiles");
    let errors: Vec<String> =
        validator.iter_errors(&doc).map(|e| format!("{} at {}", e, e.instance_path())).take(20).collect();
    assert!(errors.is_empty(), "the document is not valid AsyncAPI 3.0:\n{}", errors.join("\n"));

    // A document with a mistake is refused: the check can fail.
    let mut broken = doc.clone();
    broken["channels"]["stores.store.created"]["address"] = Value::from(42);
    assert!(!validator.is_valid(&broken));
}

#[test]
fn every_event_command_and_query_of_the_messages_crate_is_in_the_document() {
    use carrier_mall::{baskets, customers, depot, notifications, ordering, payments, stores};
    let doc = document();
    let messages = doc["components"]["messages"].as_object().expect("messages");
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let all_events = [
        stores::StoresEvent::EVENT_TYPES,
        customers::CustomersEvent::EVENT_TYPES,
        baskets::BasketsEvent::EVENT_TYPES,
        ordering::OrderingEvent::EVENT_TYPES,
        depot::DepotEvent::EVENT_TYPES,
        payments::PaymentsEvent::EVENT_TYPES,
        notifications::NotificationsEvent::EVENT_TYPES,
    ];
    let mut count = 0;
    for event_type in all_events.iter().flat_map(|types| types.iter()) {
        let message = messages.get(*event_type).unwrap_or_else(|| panic!("{event_type} is missing"));
        let name = event_type.split('.').nth(1).expect("context.Name");
        let data = &message["payload"]["properties"]["data"]["$ref"];
        assert_eq!(*data, Value::from(format!("#/components/schemas/{name}")), "{event_type}");
        assert_eq!(message["payload"]["properties"]["type"]["const"], Value::from(*event_type));
        assert!(schemas.contains_key(name), "no payload schema for {event_type}");
        count += 1;
    }
    assert_eq!(count, 29, "every event type of the seven publishing contexts");
    for (subject, schema) in [
        ("cmd.stores", "StoresCommand"),
        ("cmd.customers", "CustomersCommand"),
        ("cmd.baskets", "BasketsCommand"),
        ("cmd.ordering", "OrderingCommand"),
        ("cmd.depot", "DepotCommand"),
        ("query.stores", "StoresQuery"),
        ("query.customers", "CustomersQuery"),
        ("query.search", "SearchQuery"),
    ] {
        assert_eq!(doc["channels"][subject]["address"], Value::from(subject));
        assert!(schemas.contains_key(schema), "no schema {schema}");
        assert!(
            doc["operations"]
                .as_object()
                .expect("ops")
                .values()
                .any(|op| op["reply"].is_object()
                    && op["channel"]["$ref"] == Value::from(format!("#/channels/{subject}")))
        );
    }
    for reply in ["CommandReply", "StoresQueryReply", "CustomersQueryReply", "SearchReply", "OrderView", "OrderFilter"]
    {
        assert!(schemas.contains_key(reply), "no schema {reply}");
    }
    // A payload schema says what a producer must send.
    let store_created = &schemas["StoreCreated"];
    let required: Vec<&str> =
        store_created["required"].as_array().expect("required").iter().filter_map(Value::as_str).collect();
    assert!(required.contains(&"id") && required.contains(&"name"), "{store_created:#}");
    // Who reads what, from the actors' own table.
    assert!(doc["operations"].get("search.receive.ordering.OrderCreated").is_some());
    assert!(doc["channels"].get("dlq.payments").is_some());
}

#[test]
fn every_reference_in_the_document_resolves() {
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let doc = document();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 100);
    for r in all {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("external reference {r}"));
        // JSON Pointer: `/` inside a key is `~1`.
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.json"))
        .expect("docs/asyncapi.json");
    let committed: Value = serde_json::from_str(&committed).expect("JSON");
    assert!(
        committed == document(),
        "docs/asyncapi.json is stale: run `cargo run --bin carrier -- asyncapi -o docs/asyncapi.json`"
    );
}

#[test]
fn the_payload_schemas_refuse_what_carrier_refuses() {
    use carrier_mall::stores::ProductAdded;
    use carrier_messages::Validate as _;
    let doc = document();
    let schema = doc["components"]["schemas"]["ProductAdded"].clone();
    let validator = jsonschema::validator_for(&schema).expect("the payload schema compiles");
    let good = ProductAdded {
        id: "p-1".into(),
        store_id: "s-1".into(),
        name: "Kettle".into(),
        description: String::new(),
        sku: "K".into(),
        price: 0,
    };
    let cases: Vec<(&str, ProductAdded)> = vec![
        ("an id over 128 bytes", ProductAdded { id: "x".repeat(129), ..good.clone() }),
        ("a blank name", ProductAdded { name: "   ".into(), ..good.clone() }),
        ("a sku over 64 bytes", ProductAdded { sku: "k".repeat(65), ..good.clone() }),
        ("a negative price", ProductAdded { price: -1, ..good.clone() }),
    ];
    assert!(good.validate().is_ok() && validator.is_valid(&serde_json::to_value(&good).expect("json")));
    for (what, bad) in cases {
        assert!(bad.validate().is_err(), "Carrier refuses {what}");
        assert!(!validator.is_valid(&serde_json::to_value(&bad).expect("json")), "the schema refuses {what}");
    }
}
