//! Traces across contexts: a checkout sent with a W3C `traceparent` yields one trace whose spans
//! link command → consumer → reaction → consumer, read back from an in-memory OpenTelemetry
//! exporter. Its own test binary, because the exporter is installed for the whole process.

#[path = "../mall_env.rs"]
mod mall_env;

use mall_env::MallEnv;
use std::collections::HashMap;
use std::time::Duration;

use carrier_messages::CommandReply;
use carrier_messages::TraceContext;
use carrier_tests::{wait_until, TestEnv};
use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};

async fn command(bus: &carrier_actors::Bus, context: &str, json: &str, traceparent: Option<&str>) -> CommandReply {
    let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    if let Some(tp) = traceparent {
        headers.push(("traceparent".to_string(), tp.to_string()));
    }
    let reply = bus
        .request(&format!("cmd.{context}"), &headers, json.as_bytes().to_vec(), Duration::from_secs(5))
        .await
        .expect("answered");
    let reply: CommandReply = serde_json::from_slice(&reply).expect("a command reply");
    assert!(reply.ok, "{context} refused {json}: {reply:?}");
    reply
}

/// The process's one in-memory exporter, installed by whichever test comes first (the tracer is
/// process-wide); each test reads back only its own trace.
fn exporter() -> InMemorySpanExporter {
    static EXPORTER: std::sync::OnceLock<(InMemorySpanExporter, opentelemetry_sdk::trace::SdkTracerProvider)> =
        std::sync::OnceLock::new();
    EXPORTER
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = carrier_actors::telemetry::install(exporter.clone(), false);
            (exporter, provider)
        })
        .0
        .clone()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_checkout_through_every_context() {
    let exporter = exporter();
    let env = TestEnv::start();
    let system = env.system(&carrier_tests::ALL).await;
    let bus = system.bus.clone();
    for (context, json) in [
        ("stores", r#"{"command":"create_store","id":"s1","name":"Waldorf's Wares","location":"North wing"}"#),
        (
            "stores",
            r#"{"command":"add_product","id":"p1","store_id":"s1","name":"Kettle","description":"","sku":"K1","price":2999}"#,
        ),
        ("customers", r#"{"command":"register_customer","id":"ada","name":"Ada","sms_number":"+15550100"}"#),
        ("baskets", r#"{"command":"start_basket","id":"b1","customer_id":"ada"}"#),
        ("baskets", r#"{"command":"add_item","id":"b1","product_id":"p1","quantity":2}"#),
    ] {
        command(&bus, context, json, None).await;
    }

    // The caller's span, as an upstream service would send it.
    let caller: TraceContext = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().expect("valid");
    let checkout = command(
        &bus,
        "baskets",
        r#"{"command":"checkout_basket","id":"b1","payment_id":"pay-1"}"#,
        Some(&caller.to_string()),
    )
    .await;
    let checked_out_id = checkout.event.expect("an event").event_id;

    let in_trace = || -> Vec<SpanData> {
        exporter
            .get_finished_spans()
            .expect("spans")
            .into_iter()
            .filter(|s| s.span_context.trace_id().to_bytes() == caller.trace_id)
            .collect()
    };
    let wanted = [
        "command cmd.baskets",
        "baskets publish baskets.BasketCheckedOut",
        "ordering apply baskets.BasketCheckedOut",
        "ordering publish ordering.OrderCreated",
        "depot apply ordering.OrderCreated",
        "search apply ordering.OrderCreated",
        "notifications apply ordering.OrderCreated",
        "ordering apply depot.ShoppingListCreated",
    ];
    wait_until(Duration::from_secs(30), "the checkout's trace reaches every context", || {
        let names: Vec<String> = in_trace().iter().map(|s| s.name.to_string()).collect();
        let done = wanted.iter().all(|w| names.iter().any(|n| n == w));
        async move { done }
    })
    .await;

    let spans = in_trace();
    let by_name: HashMap<String, &SpanData> = spans.iter().map(|s| (s.name.to_string(), s)).collect();
    let span = |name: &str| *by_name.get(name).unwrap_or_else(|| panic!("no span {name:?}"));
    let id = |name: &str| span(name).span_context.span_id();

    // command ← the caller's span (remote).
    let cmd = span("command cmd.baskets");
    assert_eq!(cmd.span_kind, SpanKind::Server);
    assert_eq!(cmd.parent_span_id, SpanId::from_bytes(caller.span_id));
    assert_eq!(attribute(cmd, "carrier.event_id").as_deref(), Some(checked_out_id.as_str()));
    // The outbox publish and ordering's reaction both continue the command's span.
    assert_eq!(span("baskets publish baskets.BasketCheckedOut").parent_span_id, id("command cmd.baskets"));
    assert_eq!(span("baskets publish baskets.BasketCheckedOut").span_kind, SpanKind::Producer);
    let ordering = span("ordering apply baskets.BasketCheckedOut");
    assert_eq!(ordering.span_kind, SpanKind::Consumer);
    assert_eq!(ordering.parent_span_id, id("command cmd.baskets"));
    assert_eq!(attribute(ordering, "carrier.event_id").as_deref(), Some(checked_out_id.as_str()));
    assert_eq!(attribute(ordering, "carrier.disposition").as_deref(), Some("applied"));
    // OpenTelemetry's messaging conventions, on every kind of span.
    assert_eq!(attribute(ordering, "messaging.system").as_deref(), Some("nats"));
    assert_eq!(attribute(ordering, "messaging.operation.type").as_deref(), Some("process"));
    assert_eq!(attribute(ordering, "messaging.message.id").as_deref(), Some(checked_out_id.as_str()));
    let group = attribute(ordering, "messaging.consumer.group.name").unwrap_or_default();
    assert!(group.starts_with("ordering"), "the consumer group is ordering's durable: {group}");
    let destination = attribute(ordering, "messaging.destination.name").unwrap_or_default();
    assert!(destination.starts_with("baskets."), "{destination}");
    let publish = span("baskets publish baskets.BasketCheckedOut");
    assert_eq!(attribute(publish, "messaging.operation.type").as_deref(), Some("send"));
    assert_eq!(attribute(publish, "messaging.system").as_deref(), Some("nats"));
    assert_eq!(attribute(cmd, "messaging.system").as_deref(), Some("nats"));
    assert_eq!(attribute(cmd, "messaging.destination.name").as_deref(), Some("cmd.baskets"));
    // ordering's reaction (OrderCreated) is consumed by depot, search and notifications as
    // children of ordering's consumer span, across three more contexts.
    for consumer in ["depot", "search", "notifications"] {
        let s = span(&format!("{consumer} apply ordering.OrderCreated"));
        assert_eq!(s.parent_span_id, id("ordering apply baskets.BasketCheckedOut"), "{consumer}");
        assert_eq!(
            attribute(s, "carrier.causation_id").as_deref(),
            Some(checked_out_id.as_str()),
            "OrderCreated was caused by the checkout"
        );
    }
    // ... and depot's reaction back in ordering, a child of depot's span.
    assert_eq!(
        span("ordering apply depot.ShoppingListCreated").parent_span_id,
        id("depot apply ordering.OrderCreated")
    );
    // One correlation id runs through the whole trace.
    let correlations: std::collections::BTreeSet<String> =
        spans.iter().filter_map(|s| attribute(s, "carrier.correlation_id")).collect();
    assert_eq!(correlations.len(), 1, "{correlations:?}");

    // On the wire, the checkout's event carries the command span in its traceparent attribute.
    let js = async_nats::jetstream::new(env.plain_client().await);
    let mut stream = js.get_stream("BASKETS").await.expect("stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    let message = stream.get_raw_message(last).await.expect("message");
    let framed =
        carrier_messages::Envelope::read(|name| message.headers.get(name).map(|v| v.as_str()), &message.payload)
            .expect("a Carrier event");
    let on_wire: TraceContext = framed.envelope.traceparent.expect("a traceparent attribute");
    assert_eq!(on_wire.trace_id, caller.trace_id);
    assert_eq!(SpanId::from_bytes(on_wire.span_id), id("command cmd.baskets"));
    system.shutdown().await;
}

/// Seed 004's trace: an HTTP command sent with a `traceparent` becomes the parent of the
/// projection's consumer span and of the event bus handler's span, all in the caller's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_sourced_commands_trace_reaches_its_projection_and_its_bus_handler() {
    let exporter = exporter();
    let env = TestEnv::start();
    let dir = env.data_dir();
    let config = carrier_actors::SystemConfig::new(env.url(), &dir, carrier_whisko::contexts());
    let whisko = carrier_whisko::Whisko::start(config).await.expect("starts");
    let api = carrier_whisko::http::WhiskoApi::of(&whisko);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listens");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, carrier_whisko::http::router(api, Default::default())).await;
    });
    let caller: TraceContext = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().expect("valid");
    let tp = caller.to_string();
    let created = tokio::task::spawn_blocking(move || {
        carrier_tests::http(
            "POST",
            &format!("{base}/users"),
            &[("traceparent", tp.as_str())],
            Some(r#"{"name":"Ana","email":"ana@whisko.example"}"#),
        )
    })
    .await
    .expect("joins");
    assert_eq!(created.status, 201, "{}", created.body);
    let trace_id = caller.trace_id_hex();
    let ours = |spans: &[SpanData]| -> Vec<SpanData> {
        spans.iter().filter(|s| s.span_context.trace_id().to_string() == trace_id).cloned().collect()
    };
    wait_until(Duration::from_secs(20), "the command, projection and handler spans are exported", || {
        let spans = ours(&exporter.get_finished_spans().unwrap_or_default());
        async move {
            ["HTTP command users", "user_views apply users.UserCreated", "whisko-welcome handle users.UserCreated"]
                .iter()
                .all(|name| spans.iter().any(|s| s.name == *name))
        }
    })
    .await;
    let spans = ours(&exporter.get_finished_spans().unwrap());
    let by_name: HashMap<String, SpanData> = spans.iter().map(|s| (s.name.to_string(), s.clone())).collect();
    let command = &by_name["HTTP command users"];
    assert_eq!(command.parent_span_id.to_string(), caller.span_id_hex(), "the command continues the caller");
    assert_eq!(command.span_kind, SpanKind::Server);
    for child in ["user_views apply users.UserCreated", "whisko-welcome handle users.UserCreated"] {
        let span = &by_name[child];
        assert_eq!(span.parent_span_id, command.span_context.span_id(), "{child} is a child of the command");
        assert_eq!(span.span_kind, SpanKind::Consumer);
    }
    assert_eq!(
        attribute(&by_name["whisko-welcome handle users.UserCreated"], "carrier.outcome").as_deref(),
        Some("handled")
    );
    assert!(by_name.values().all(|s| s.parent_span_id != SpanId::INVALID || s.name == "HTTP command users"));
    server.abort();
    whisko.shutdown().await;
}
