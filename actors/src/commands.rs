//! Commands over NATS request/reply on `cmd.<context>`: decoded, checked, decided on the
//! context's writer, and answered with a [`CommandReply`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use carrier_messages::header;
use carrier_messages::Causality;
use carrier_messages::TraceContext;
use carrier_messages::{decode_request, encode_reply, CommandReply, RecordedEvent};
use carrier_messages::{ContentType, DomainEvent};
use carrier_messages::{IdempotencyKey, IDEMPOTENCY_KEY_HEADER};
use carrier_storage::{CommandError, Decided};

use crate::bus::IncomingRequest;
use crate::responder::Answer;

/// Decides a command of type `C`, returning the event it recorded (or, for a command sent again
/// with the same idempotency key, the one its first send recorded).
pub type Decide<C, E> =
    Arc<dyn Fn(C, Causality) -> Pin<Box<dyn Future<Output = Result<Decided<E>, CommandError>> + Send>> + Send + Sync>;

/// Answers a context's commands with a [`Decide`].
pub struct ContextCommands<C, E> {
    /// What carries a command out.
    pub decide: Decide<C, E>,
}

impl<C, E> Answer for ContextCommands<C, E>
where
    C: DeserializeOwned + Send + Sync + 'static,
    E: DomainEvent + Send + Sync + 'static,
{
    async fn answer(&self, request: &IncomingRequest, content_type: ContentType) -> Vec<u8> {
        let started = std::time::SystemTime::now();
        let reply = match decode_command::<C>(request, content_type) {
            Err(refusal) => refusal,
            Ok((command, causality)) => {
                let span = CommandSpan::new(request, &causality, started);
                let reply = command_reply((self.decide)(command, causality).await);
                span.end(&reply);
                reply
            }
        };
        encode_reply(content_type, &reply)
    }
}

/// The command in a request and the causality its headers carry, or the refusal to send back.
fn decode_command<C: DeserializeOwned>(
    request: &IncomingRequest,
    content_type: ContentType,
) -> Result<(C, Causality), CommandReply> {
    let command: C = decode_request(content_type, &request.payload)
        .map_err(|reason| CommandReply::failed("bad_request", format!("not a command of this context: {reason}")))?;
    // These ids go into the recorded event's headers, which every consumer checks: refuse a bad
    // one here rather than record an event that every consumer would dead-letter.
    let mut ids = [None, None];
    for (slot, name) in ids.iter_mut().zip([header::CORRELATION_ID, header::CAUSATION_ID]) {
        if let Some(value) = request.header(name) {
            let value = value.trim();
            if value.is_empty() || value.len() > carrier_messages::MAX_ID_LEN {
                let limit = carrier_messages::MAX_ID_LEN;
                return Err(CommandReply::failed("bad_request", format!("header {name} must be 1 to {limit} bytes")));
            }
            *slot = Some(value.to_string());
        }
    }
    let [correlation_id, causation_id] = ids;
    // Two sends are the same command when their bodies say the same, whatever the order of
    // their fields or their encoding.
    let idempotency = match request.header(IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(key) => {
            let fingerprint = carrier_messages::canonical_body(content_type, &request.payload);
            Some(IdempotencyKey::new(key, fingerprint).map_err(|e| {
                CommandReply::failed("bad_request", format!("header {IDEMPOTENCY_KEY_HEADER}: {}", e.problem))
            })?)
        }
    };
    // The command's span continues the caller's trace when it sent one (a malformed traceparent
    // is ignored, as W3C asks); the recorded event names this span as its producer.
    let caller = request.header(carrier_messages::TRACEPARENT).and_then(|v| v.parse::<TraceContext>().ok());
    let trace = Some(caller.map(|c| c.child()).unwrap_or_else(TraceContext::new_root));
    Ok((command, Causality { correlation_id, causation_id, trace, idempotency }))
}

/// A command's span: from its arrival to its reply.
struct CommandSpan {
    subject: String,
    span: TraceContext,
    parent: Option<TraceContext>,
    correlation_id: Option<String>,
    started: std::time::SystemTime,
}

impl CommandSpan {
    fn new(request: &IncomingRequest, causality: &Causality, started: std::time::SystemTime) -> Self {
        let parent = request.header(carrier_messages::TRACEPARENT).and_then(|v| v.parse().ok());
        CommandSpan {
            subject: request.subject.clone(),
            span: causality.trace.unwrap_or_else(TraceContext::new_root),
            parent,
            correlation_id: causality.correlation_id.clone(),
            started,
        }
    }

    fn end(self, reply: &CommandReply) {
        tracing::debug!(
            subject = %self.subject,
            trace_id = %self.span.trace_id_hex(),
            span_id = %self.span.span_id_hex(),
            correlation_id = self.correlation_id.as_deref().unwrap_or(""),
            ok = reply.ok,
            "command handled"
        );
        if !crate::telemetry::enabled() {
            return;
        }
        use crate::telemetry::Attribute;
        let mut attributes = vec![
            Attribute::new("messaging.system", "nats"),
            Attribute::new("messaging.destination.name", self.subject.clone()),
            Attribute::new("messaging.operation.type", "process"),
            Attribute::new("messaging.operation.name", "command"),
        ];
        if let Some(correlation) = self.correlation_id {
            attributes.push(Attribute::new("carrier.correlation_id", correlation));
        }
        if let Some(event) = &reply.event {
            attributes.push(Attribute::new("carrier.event_id", event.event_id.clone()));
            attributes.push(Attribute::new("carrier.event_type", event.event_type.clone()));
            // What the command caused: the event's consumers name this as their causation id.
            attributes.push(Attribute::new("carrier.aggregate_id", event.aggregate_id.clone()));
        }
        crate::telemetry::record(crate::telemetry::SpanRecord {
            name: format!("command {}", self.subject),
            kind: crate::telemetry::Kind::Server,
            span: self.span,
            parent: self.parent,
            start: self.started,
            end: std::time::SystemTime::now(),
            attributes,
            error: reply.error.as_ref().map(|e| format!("{}: {}", e.code, e.message)),
        });
    }
}

/// The reply a command's outcome gets on the wire (`cmd.<context>`): also what an HTTP front of
/// a context (the central inventory's, say) maps to its own shapes, so both say the same.
pub fn command_reply<E: DomainEvent>(result: Result<Decided<E>, CommandError>) -> CommandReply {
    match result {
        Ok(Decided { event: decoded, replayed, position }) => CommandReply {
            position,
            ok: true,
            event: Some(RecordedEvent {
                event_id: decoded.envelope.event_id.to_string(),
                event_type: decoded.envelope.event_type.clone(),
                aggregate_id: decoded.envelope.aggregate_id.clone(),
                aggregate_version: decoded.envelope.aggregate_version,
                data: decoded
                    .event
                    .encode_payload(ContentType::Json)
                    .ok()
                    .and_then(|json| serde_json::from_slice(&json).ok()),
            }),
            error: None,
            replayed,
        },
        Err(error) => {
            let mut reply = CommandReply::failed(error.code(), error.to_string());
            if let Some(failure) = reply.error.as_mut() {
                failure.details = match &error {
                    CommandError::Refused { details, .. } => (!details.is_null()).then(|| details.clone()),
                    // The field a client must correct.
                    CommandError::Invalid(e) => Some(serde_json::json!({ "field": e.field })),
                    _ => None,
                };
            }
            reply
        }
    }
}
