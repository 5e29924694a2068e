//! A context's events without their Rust type: what a generic producer needs to write one from
//! JSON (`carrier publish` knows every declared context's events through this).

use crate::codec::{
    Causality, DecodeError, Decoded, DomainEvent, EncodeError, EncodedEvent, ValidationError, WireFormat,
};
use crate::envelope::{ContentType, Envelope, EventId};

/// One event given as JSON, to be written as a producer would.
#[derive(Clone, Debug)]
pub struct JsonEvent<'a> {
    /// Its type, e.g. `stores.StoreCreated`.
    pub event_type: &'a str,
    /// The payload as JSON (the variant's fields).
    pub payload: &'a [u8],
    /// The entity's version after this event (1 for the event that creates it).
    pub aggregate_version: u64,
    /// An event id to reuse (to re-publish an event); a new UUIDv7 otherwise.
    pub event_id: Option<EventId>,
    /// Correlation and trace to carry.
    pub causality: Causality,
    /// The payload's encoding on the wire.
    pub content_type: ContentType,
    /// The framing.
    pub format: WireFormat,
}

/// Why a [`JsonEvent`] could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// No event of the catalogue has that type.
    #[error("unknown event type {event_type:?}; known: {known}")]
    UnknownType {
        /// The type asked for.
        event_type: String,
        /// The types there are, comma separated.
        known: String,
    },
    /// The payload does not fit the event type.
    #[error("the payload does not fit the event type: {0}")]
    Payload(DecodeError),
    /// The payload breaks a field's limit.
    #[error("the payload breaks the contract: {0}")]
    Invalid(ValidationError),
    /// It could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// A context's events, by name: its stream and event types, and how to write one from JSON.
#[derive(Clone, Copy)]
pub struct EventCatalog {
    /// The publishing context, e.g. `stores`.
    pub context: &'static str,
    /// Its stream, e.g. `STORES`.
    pub stream: &'static str,
    /// The stream's subjects, e.g. `stores.>`.
    pub subjects: &'static str,
    /// Every event type, e.g. `stores.StoreCreated`.
    pub event_types: &'static [&'static str],
    write: fn(&JsonEvent<'_>) -> Result<(Envelope, EncodedEvent), CatalogError>,
}

impl std::fmt::Debug for EventCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventCatalog").field("context", &self.context).field("stream", &self.stream).finish()
    }
}

impl EventCatalog {
    /// The catalogue of `E`.
    pub fn of<E: DomainEvent>() -> EventCatalog {
        EventCatalog {
            context: E::CONTEXT,
            stream: E::STREAM,
            subjects: E::STREAM_SUBJECTS,
            event_types: E::EVENT_TYPES,
            write: write::<E>,
        }
    }

    /// Whether it has the event type.
    pub fn has(&self, event_type: &str) -> bool {
        self.event_types.contains(&event_type)
    }

    /// Writes `event`: decoded from JSON as its current schema, checked against its limits, and
    /// encoded in the framing asked for. Returns the envelope and the message to publish.
    pub fn write(&self, event: &JsonEvent<'_>) -> Result<(Envelope, EncodedEvent), CatalogError> {
        (self.write)(event)
    }
}

fn write<E: DomainEvent>(given: &JsonEvent<'_>) -> Result<(Envelope, EncodedEvent), CatalogError> {
    if !E::EVENT_TYPES.contains(&given.event_type) {
        return Err(CatalogError::UnknownType {
            event_type: given.event_type.to_string(),
            known: E::EVENT_TYPES.join(", "),
        });
    }
    // The payload is written in this build's schema of its type.
    let schema_version = E::catalog(&mut crate::asyncapi::SchemaGenerator::default())
        .iter()
        .find(|e| e.event_type == given.event_type)
        .map_or(1, |e| e.schema_version);
    let event = E::decode_payload(given.event_type, schema_version, ContentType::Json, given.payload)
        .map_err(CatalogError::Payload)?;
    event.validate().map_err(CatalogError::Invalid)?;
    let mut decoded = Decoded::new(event, given.aggregate_version, &given.causality);
    if let Some(id) = given.event_id {
        decoded.envelope.event_id = id;
        if given.causality.correlation_id.is_none() {
            decoded.envelope.correlation_id = id.to_string();
        }
    }
    decoded.envelope.content_type = given.content_type;
    let wire = decoded.encode_as(given.format)?;
    Ok((decoded.envelope, wire))
}

impl EventCatalog {
    /// The catalogue of `catalogs` that has `event_type`, or why none (naming every type they
    /// know).
    pub fn find<'a>(catalogs: &'a [EventCatalog], event_type: &str) -> Result<&'a EventCatalog, CatalogError> {
        catalogs.iter().find(|c| c.has(event_type)).ok_or_else(|| CatalogError::UnknownType {
            event_type: event_type.to_string(),
            known: catalogs.iter().flat_map(|c| c.event_types.iter().copied()).collect::<Vec<_>>().join(", "),
        })
    }
}
