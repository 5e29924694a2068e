//! The wire contract as an AsyncAPI 3.0 document, generated from the message types themselves
//! (`carrier asyncapi` prints it): every stream and subject, every event with its headers and
//! payload schema, every command and query with its reply, and the dead-letter streams.
//!
//! Payload schemas come from `schemars` derives on the same types the code encodes and decodes,
//! so the document cannot drift from the code; a test validates it against the AsyncAPI 3.0
//! schema.

use schemars::generate::SchemaSettings;
pub use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::envelope::header;

/// One event type, as the document shows it.
pub struct EventEntry {
    /// `stores.StoreCreated`.
    pub event_type: &'static str,
    /// `StoreCreated`.
    pub name: &'static str,
    /// The subject it is published on.
    pub subject: &'static str,
    /// The entity it is about.
    pub aggregate: &'static str,
    /// The schema version this build writes (older ones are upgraded when read).
    pub schema_version: u32,
    /// Its payload's schema (a reference into `components/schemas`).
    pub payload: Schema,
}

/// A context's stream, as the document shows it: the stream, its subjects and its events.
#[derive(Clone, Copy)]
pub struct StreamDoc {
    /// The owning context.
    pub context: &'static str,
    /// The JetStream stream.
    pub stream: &'static str,
    /// The subjects it captures.
    pub subjects: &'static str,
    /// Its events, with their payload schemas.
    pub catalog: fn(&mut SchemaGenerator) -> Vec<EventEntry>,
}

impl StreamDoc {
    /// The stream of `E`'s context.
    pub fn of<E: crate::DomainEvent>() -> StreamDoc {
        StreamDoc { context: E::CONTEXT, stream: E::STREAM, subjects: E::STREAM_SUBJECTS, catalog: E::catalog }
    }
}

/// A context's request/reply endpoint, as the document shows it.
#[derive(Clone, Copy)]
pub struct EndpointDoc {
    /// The context that answers.
    pub context: &'static str,
    /// `cmd` (on `cmd.<context>`), `query` (on `query.<context>`), `entity` (on
    /// `query.<context>.entity`) or `snapshot` (on `query.<context>.snapshot`).
    pub kind: &'static str,
    request: fn(&mut SchemaGenerator) -> Schema,
    request_name: fn() -> String,
    reply: fn(&mut SchemaGenerator) -> Schema,
    reply_name: fn() -> String,
}

impl EndpointDoc {
    /// Commands of type `C` on `cmd.<context>`, answered with a [`CommandReply`](crate::request::CommandReply).
    pub fn command<C: JsonSchema>(context: &'static str) -> EndpointDoc {
        EndpointDoc::new::<C, crate::request::CommandReply>(context, "cmd")
    }

    /// The owner's entity endpoint, `query.<context>.entity` (see
    /// [`EntityQuery`](crate::request::EntityQuery)).
    pub fn entity<Q: JsonSchema, R: JsonSchema>(context: &'static str) -> EndpointDoc {
        EndpointDoc::new::<Q, R>(context, "entity")
    }

    /// The owner's snapshot endpoint, `query.<context>.snapshot` (see
    /// [`SnapshotQuery`](crate::request::SnapshotQuery)).
    pub fn snapshot<Q: JsonSchema, R: JsonSchema>(context: &'static str) -> EndpointDoc {
        EndpointDoc::new::<Q, R>(context, "snapshot")
    }

    /// Queries of type `Q` on `query.<context>`, answered with an `R`.
    pub fn query<Q: JsonSchema, R: JsonSchema>(context: &'static str) -> EndpointDoc {
        EndpointDoc::new::<Q, R>(context, "query")
    }

    fn new<Req: JsonSchema, Rep: JsonSchema>(context: &'static str, kind: &'static str) -> EndpointDoc {
        EndpointDoc {
            context,
            kind,
            request: |g| g.subschema_for::<Req>(),
            request_name: || Req::schema_name().to_string(),
            reply: |g| g.subschema_for::<Rep>(),
            reply_name: || Rep::schema_name().to_string(),
        }
    }
}

/// Request/reply endpoints of a context: (subject kind, request schema, reply schema, reply name).
struct Endpoint {
    context: &'static str,
    kind: &'static str,
    request: Schema,
    request_name: String,
    reply: Schema,
    reply_name: String,
}

/// One stream with its events.
struct Stream {
    context: &'static str,
    stream: &'static str,
    subjects: &'static str,
    events: Vec<EventEntry>,
}

/// The document of `streams` and `endpoints`. `readers` says which context reads which context's
/// stream (consumer, source), as the actors wire them.
///
/// A context in `read_models` runs on every instance, each with durables of its own.
pub fn document(
    title: &str,
    version: &str,
    streams: &[StreamDoc],
    endpoints: &[EndpointDoc],
    readers: &[(&str, &str)],
    read_models: &[&str],
) -> Value {
    let mut settings = SchemaSettings::draft07();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();

    let streams: Vec<Stream> = streams
        .iter()
        .map(|s| Stream {
            context: s.context,
            stream: s.stream,
            subjects: s.subjects,
            events: (s.catalog)(&mut generator),
        })
        .collect();
    let endpoints: Vec<Endpoint> = endpoints
        .iter()
        .map(|e| Endpoint {
            context: e.context,
            kind: e.kind,
            request: (e.request)(&mut generator),
            request_name: (e.request_name)(),
            reply: (e.reply)(&mut generator),
            reply_name: (e.reply_name)(),
        })
        .collect();

    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();

    for s in &streams {
        for e in &s.events {
            // A per-aggregate subject (`users.user.*`) is one channel with the aggregate id as a
            // parameter, shared by every event of that aggregate (an event store's layout).
            let per_aggregate = e.subject.strip_suffix('*');
            // (The channel's key is a URI fragment in references, where braces are not allowed.)
            let (channel_id, address) = match per_aggregate {
                Some(prefix) => (format!("{prefix}aggregate"), format!("{prefix}{{id}}")),
                None => (e.subject.to_string(), e.subject.to_string()),
            };
            let readers_of: Vec<&str> = readers.iter().filter(|(_, src)| *src == s.context).map(|(c, _)| *c).collect();
            let channel = channels.entry(channel_id.clone()).or_insert_with(|| {
                let mut channel = json!({
                    "address": address,
                    "title": if per_aggregate.is_some() { format!("{} events, one subject per {}", s.context, e.aggregate) } else { e.event_type.to_string() },
                    "description": format!(
                        "{} events about a {}, in JetStream stream {} ({}). Read by: {}.{}",
                        s.context,
                        e.aggregate,
                        s.stream,
                        s.subjects,
                        if readers_of.is_empty() { "no context yet".to_string() } else { readers_of.join(", ") },
                        if per_aggregate.is_some() {
                            " Event-sourced: the subject's messages are the aggregate's whole history, appended with Nats-Expected-Last-Subject-Sequence; a message holds one event, or a CBOR array of one command's events (consecutive versions, applied in order)."
                        } else {
                            ""
                        }
                    ),
                    "messages": {},
                });
                if per_aggregate.is_some() {
                    channel["parameters"] = json!({ "id": { "description": format!("The {}'s id (letters, digits, '-', '_', ':', '=').", e.aggregate) } });
                }
                channel
            });
            channel["messages"][e.name] = json!({ "$ref": format!("#/components/messages/{}", e.event_type) });
            messages.insert(
                e.event_type.to_string(),
                json!({
                    "name": e.event_type,
                    "title": e.name,
                    "summary": format!("The {} context's {} event (schema version {}).", s.context, e.name, e.schema_version),
                    "contentType": crate::structured::CLOUDEVENTS_CBOR,
                    "description": "What Carrier writes: the whole event, a CloudEvent, as one CBOR map in the body; only Nats-Msg-Id in a header. Carrier also reads the same attributes as CloudEvents binary mode (ce-* headers) or structured JSON (Content-Type: application/cloudevents+json), and its older header framing (Carrier-* headers, the payload alone in the body): see docs/wire-contract.md.",
                    "headers": { "$ref": "#/components/schemas/EventHeaders" },
                    "payload": structured_event(e.event_type, json!(e.payload)),
                    "correlationId": { "$ref": "#/components/correlationIds/Correlation" },
                }),
            );
            let op = |action: &str| {
                json!({
                    "action": action,
                    "channel": { "$ref": format!("#/channels/{channel_id}") },
                    "messages": [{ "$ref": format!("#/channels/{channel_id}/messages/{}", e.name) }],
                })
            };
            let mut publish = op("send");
            publish["summary"] = json!(match per_aggregate {
                Some(_) => format!("The {} context appends {} through its event store.", s.context, e.event_type),
                None => format!("The {} context publishes {} through its outbox.", s.context, e.event_type),
            });
            operations.insert(format!("{}.publish.{}", s.context, e.name), publish);
            for reader in readers_of {
                let mut receive = op("receive");
                receive["summary"] = json!(if read_models.contains(&reader) {
                    format!(
                        "{reader} (a read model: every instance runs it) applies {} from each instance's own durable consumer {reader}-{}-<instance>.",
                        e.event_type, s.context
                    )
                } else {
                    format!("{reader} applies {} from its durable consumer {reader}-{}.", e.event_type, s.context)
                });
                operations.insert(format!("{reader}.receive.{}", e.event_type), receive);
            }
        }
    }

    for ep in &endpoints {
        let address = match ep.kind {
            "entity" => crate::request::entity_subject(ep.context),
            "snapshot" => crate::request::snapshot_subject(ep.context),
            kind => format!("{kind}.{}", ep.context),
        };
        let reply_channel = format!("{address}.reply");
        let request_message = format!("{address}.request");
        let reply_message = format!("{address}.{}", ep.reply_name);
        let what = if ep.kind == "cmd" { "Commands" } else { "Queries" };
        channels.insert(
            address.clone(),
            json!({
                "address": address,
                "title": format!("{what} to {}", ep.context),
                "description": format!("NATS request/reply: send a {} (JSON or CBOR, per Content-Type) and get one reply on the request's inbox.", ep.request_name),
                "messages": { "request": { "$ref": format!("#/components/messages/{request_message}") } },
            }),
        );
        channels.insert(
            reply_channel.clone(),
            json!({
                "address": null,
                "title": format!("Replies from {address}"),
                "description": "The requester's NATS inbox (the request's reply subject).",
                "messages": { "reply": { "$ref": format!("#/components/messages/{reply_message}") } },
            }),
        );
        messages.insert(
            request_message.clone(),
            json!({
                "name": ep.request_name,
                "contentType": "application/json",
                "headers": { "$ref": "#/components/schemas/RequestHeaders" },
                "payload": ep.request,
            }),
        );
        messages.insert(
            reply_message.clone(),
            json!({ "name": ep.reply_name, "contentType": "application/json", "payload": ep.reply }),
        );
        operations.insert(
            format!("{}.handle.{}", ep.context, ep.kind),
            json!({
                "action": "receive",
                "summary": format!("The {} context answers {} on {address}.", ep.context, what.to_lowercase()),
                "channel": { "$ref": format!("#/channels/{address}") },
                "messages": [{ "$ref": format!("#/channels/{address}/messages/request") }],
                "reply": {
                    "channel": { "$ref": format!("#/channels/{reply_channel}") },
                    "messages": [{ "$ref": format!("#/channels/{reply_channel}/messages/reply") }],
                },
            }),
        );
    }

    let mut consuming: Vec<&str> = readers.iter().map(|(c, _)| *c).collect();
    consuming.sort();
    consuming.dedup();
    for context in consuming {
        let id = format!("dlq.{context}");
        channels.insert(
            id.clone(),
            json!({
                "address": format!("dlq.{context}.{{originalSubject}}"),
                "title": format!("Dead letters of {context}"),
                "description": format!("JetStream stream DLQ_{}: events {context} could not apply, with the original headers and body and why.", context.to_ascii_uppercase()),
                "parameters": { "originalSubject": { "description": "The subject the event was published on." } },
                "messages": { "deadLetter": { "$ref": "#/components/messages/DeadLetter" } },
            }),
        );
        operations.insert(
            format!("{context}.deadLetter"),
            json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{id}") },
                "messages": [{ "$ref": format!("#/channels/{id}/messages/deadLetter") }],
            }),
        );
    }
    messages.insert(
        "DeadLetter".into(),
        json!({
            "name": "DeadLetter",
            "summary": "The original message, untouched, plus Carrier-Dlq-* headers.",
            "headers": { "$ref": "#/components/schemas/DeadLetterHeaders" },
            "payload": { "description": "The original body, byte for byte." },
        }),
    );

    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.insert("EventHeaders".into(), event_headers());
    schemas.insert("RequestHeaders".into(), request_headers());
    schemas.insert("DeadLetterHeaders".into(), dead_letter_headers());

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Event-carried state transfer between bounded contexts on NATS JetStream. Owners publish domain events through an outbox; other contexts keep caches and read models of them through durable consumers, apply each event once, and dead-letter what they cannot apply. See docs/wire-contract.md.",
            "license": { "name": "Apache-2.0" },
        },
        "defaultContentType": crate::structured::CLOUDEVENTS_CBOR,
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "A NATS server with JetStream (carrier demo starts one on a free port).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "correlationIds": {
                "Correlation": {
                    "description": "Shared by everything one request set off.",
                    "location": "$message.payload#/correlationid",
                }
            },
        },
    })
}

fn string(description: &str) -> Value {
    json!({ "type": "string", "description": description })
}

fn event_headers() -> Value {
    json!({
        "type": "object",
        "description": "Carrier writes only Nats-Msg-Id; the envelope is in the body. Optional: Content-Type application/cloudevents+cbor (the default).",
        "properties": {
            (header::NATS_MSG_ID): { "type": "string", "minLength": 1, "description": "The event id: JetStream drops a re-publish within its duplicate window. Recommended, not required." },
            (header::CONTENT_TYPE): { "type": "string", "enum": [crate::structured::CLOUDEVENTS_CBOR], "description": "application/cloudevents+cbor when present." },
        },
    })
}

/// The structured body of one event type: CloudEvents attributes with Carrier's limits, and the
/// payload under `data`.
fn structured_event(event_type: &str, payload: Value) -> Value {
    use crate::structured::attribute as a;
    let id = |description: &str| json!({ "type": "string", "minLength": 1, "maxLength": crate::envelope::MAX_ID_LEN, "description": description });
    json!({
        "type": "object",
        "required": [a::ID, a::TYPE, a::AGGREGATEVERSION, a::DATA],
        "properties": {
            (a::SPECVERSION): { "type": "string", "const": "1.0" },
            (a::ID): id("The event id: a UUID (Carrier writes v7), or any string unique within source (mapped to a name-based UUID)."),
            (a::TYPE): { "type": "string", "const": event_type },
            (a::SOURCE): string("Who produced it; Carrier writes /carrier/<context>."),
            (a::SUBJECT): id("The aggregate id; equals data.id. The payload's id when absent."),
            (a::TIME): { "type": "string", "format": "date-time", "description": "RFC 3339; when the owner decided the event. Receipt time when absent." },
            (a::DATACONTENTTYPE): { "type": "string", "enum": ["application/cbor", "application/json"], "description": "The payload's encoding; CBOR when absent (data then embedded)." },
            (a::AGGREGATEVERSION): { "type": "integer", "minimum": 1, "description": "The entity's version after this event; consumers apply versions in order." },
            (a::SCHEMAVERSION): { "type": "integer", "const": crate::envelope::SCHEMA_VERSION, "description": "The payload's schema version; 1 when absent." },
            (a::CORRELATIONID): id("Shared by everything one request set off; the event id when absent."),
            (a::CAUSATIONID): id("The command or event that caused this one."),
            (a::TRACEPARENT): { "type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$", "description": "W3C trace context of the span that produced the event; ignored when malformed." },
            (a::DATA): payload,
        },
    })
}

fn request_headers() -> Value {
    json!({
        "type": "object",
        "properties": {
            (header::CONTENT_TYPE): { "type": "string", "enum": ["application/json", "application/cbor"], "description": "The request's encoding; the reply uses the same. JSON when absent." },
            (header::CORRELATION_ID): string("Carried into the recorded event."),
            (header::CAUSATION_ID): string("Carried into the recorded event."),
            (crate::trace::TRACEPARENT): string("W3C trace context: the command's span continues this trace."),
        },
    })
}

fn dead_letter_headers() -> Value {
    json!({
        "type": "object",
        "required": ["Carrier-Dlq-Reason", "Carrier-Dlq-Original-Subject"],
        "properties": {
            "Carrier-Dlq-Reason": json!({
                "type": "string",
                "enum": [
                    "missing_header", "bad_header", "undecodable_envelope", "missing_attribute", "bad_attribute",
                    "unknown_event_type", "unsupported_schema_version",
                    "body_too_large", "undecodable_body", "subject_mismatch", "aggregate_mismatch",
                    "invalid_payload", "apply_failed", "rejected"
                ],
                "description": "Why the event was dead-lettered.",
            }),
            "Carrier-Dlq-Error": string("The error in words."),
            "Carrier-Dlq-Original-Subject": string("Where the event was published."),
            "Carrier-Dlq-Original-Sequence": string("Its sequence in the original stream."),
            "Carrier-Dlq-Delivery-Count": string("How often it had been delivered."),
            "Carrier-Dlq-Context": string("The consuming context that gave up on it."),
        },
    })
}
