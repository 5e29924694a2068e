//! Spans of a command's whole asynchronous flow, exported to OpenTelemetry when an exporter is
//! installed (`carrier run --otlp-endpoint`, or an in-memory exporter in tests).
//!
//! The ids come from Carrier, not from the SDK: each event's `traceparent` names the span that
//! produced it (see `carrier_messages::trace`), and a consumer's span id is derived from the
//! event id and the context. A span is therefore recorded after the fact, with the ids that the
//! events already carry; [`DirectedIds`] hands those ids to the SDK. With no exporter installed
//! every function here returns after one atomic load.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, SdkTracerProvider, SpanExporter, Tracer};
use opentelemetry_sdk::Resource;

use carrier_messages::TraceContext;

pub use opentelemetry::trace::SpanKind as Kind;
pub use opentelemetry::KeyValue as Attribute;

thread_local! {
    /// The ids the next span built on this thread must have.
    static NEXT_IDS: Cell<Option<([u8; 16], [u8; 8])>> = const { Cell::new(None) };
}

/// Gives the SDK the ids Carrier already chose; random ones otherwise.
#[derive(Debug, Default)]
pub struct DirectedIds;

impl IdGenerator for DirectedIds {
    fn new_trace_id(&self) -> TraceId {
        match NEXT_IDS.with(Cell::get) {
            Some((trace, _)) => TraceId::from_bytes(trace),
            None => TraceId::from_bytes(TraceContext::new_root().trace_id),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match NEXT_IDS.with(Cell::get) {
            Some((_, span)) => SpanId::from_bytes(span),
            None => SpanId::from_bytes(TraceContext::new_root().span_id),
        }
    }
}

static TRACER: OnceLock<Tracer> = OnceLock::new();
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Installs `exporter` for the process (once; later calls keep the first) and returns the
/// provider, to flush and shut down at exit. `batch` exports from a background thread; tests
/// use the simple processor, which exports as each span ends.
pub fn install<E: SpanExporter + 'static>(exporter: E, batch: bool) -> SdkTracerProvider {
    let builder = SdkTracerProvider::builder()
        .with_id_generator(DirectedIds)
        .with_resource(Resource::builder().with_service_name("carrier").build());
    let builder = if batch { builder.with_batch_exporter(exporter) } else { builder.with_simple_exporter(exporter) };
    let provider = builder.build();
    let _ = TRACER.set(provider.tracer("carrier"));
    ENABLED.store(true, Ordering::Release);
    provider
}

/// Whether spans are exported.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A finished span, with Carrier's ids.
pub struct SpanRecord {
    /// What it did, e.g. `ordering apply baskets.BasketCheckedOut`.
    pub name: String,
    /// Server (a command), consumer (applying an event) or producer (publishing one).
    pub kind: SpanKind,
    /// Its own trace and span id.
    pub span: TraceContext,
    /// The span it continues, if any.
    pub parent: Option<TraceContext>,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its fields: context, event id, correlation and causation ids, ...
    pub attributes: Vec<KeyValue>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Exports `record` if an exporter is installed.
pub fn record(record: SpanRecord) {
    if !enabled() {
        return;
    }
    let Some(tracer) = TRACER.get() else { return };
    let parent = match record.parent {
        Some(p) => Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(p.trace_id),
            SpanId::from_bytes(p.span_id),
            TraceFlags::new(p.flags),
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    NEXT_IDS.with(|ids| ids.set(Some((record.span.trace_id, record.span.span_id))));
    let mut span = tracer
        .span_builder(record.name)
        .with_kind(record.kind)
        .with_start_time(record.start)
        .with_attributes(record.attributes)
        .start_with_context(tracer, &parent);
    NEXT_IDS.with(|ids| ids.set(None));
    if let Some(error) = record.error {
        span.set_status(Status::error(error));
    }
    span.end_with_timestamp(record.end);
}

/// The attributes every event span carries.
pub(crate) fn event_attributes(context: &'static str, envelope: &carrier_messages::Envelope) -> Vec<KeyValue> {
    let mut attributes = vec![
        // OpenTelemetry's messaging conventions (the system, the message's id); each span adds
        // the operation and the destination.
        KeyValue::new("messaging.system", "nats"),
        KeyValue::new("messaging.message.id", envelope.event_id.to_string()),
        KeyValue::new("messaging.message.conversation_id", envelope.correlation_id.clone()),
        KeyValue::new("carrier.context", context),
        KeyValue::new("carrier.event_id", envelope.event_id.to_string()),
        KeyValue::new("carrier.event_type", envelope.event_type.clone()),
        KeyValue::new("carrier.aggregate_id", envelope.aggregate_id.clone()),
        KeyValue::new("carrier.aggregate_version", envelope.aggregate_version as i64),
        KeyValue::new("carrier.correlation_id", envelope.correlation_id.clone()),
    ];
    if let Some(causation) = &envelope.causation_id {
        attributes.push(KeyValue::new("carrier.causation_id", causation.clone()));
    }
    attributes
}
