//! Why a message is not a valid event, or an event could not be encoded. Every decode failure
//! is permanent: the message goes to the dead-letter stream with [`DecodeError::code`].

use crate::limits::MAX_BODY_BYTES;

/// A field that breaks the contract's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` {problem}")]
pub struct ValidationError {
    /// The payload field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// Why an event could not be encoded (only a bug can cause this: all payloads are plain data).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {event_type}: {reason}")]
pub struct EncodeError {
    /// The event type.
    pub event_type: &'static str,
    /// The encoder's message.
    pub reason: String,
}

/// Why a received message is not a valid event. Every case is permanent: retrying the same bytes
/// cannot succeed, so the message goes to the dead-letter stream with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A required header is absent or empty.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is present but unusable.
    #[error("bad header {header}: {reason}")]
    BadHeader {
        /// The header name.
        header: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A required event attribute (structured or CloudEvents framing) is absent or empty.
    #[error("missing attribute {0}")]
    MissingAttribute(&'static str),
    /// An event attribute is present but unusable.
    #[error("bad attribute {attribute}: {reason}")]
    BadAttribute {
        /// The attribute name (CloudEvents naming, e.g. `aggregateversion`).
        attribute: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The body is not a structured event at all.
    #[error("not a {format} event: {reason}")]
    Envelope {
        /// The framing tried, e.g. `application/cloudevents+cbor`.
        format: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// The event type is not one this context knows.
    #[error("unknown event type {0:?}")]
    UnknownEventType(String),
    /// The event type is known but not at this schema version.
    #[error("{event_type} at schema version {version} is not one this build reads (it is newer, or the event table declares no upcaster for it)")]
    UnsupportedSchemaVersion {
        /// The event type.
        event_type: String,
        /// The version the message claims.
        version: u32,
    },
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("body of {len} bytes is over the {MAX_BODY_BYTES}-byte limit")]
    BodyTooLarge {
        /// The body's length.
        len: usize,
    },
    /// The body does not decode as the event type's payload.
    #[error("{content_type} body is not a valid {event_type} payload: {reason}")]
    Body {
        /// The event type.
        event_type: String,
        /// `application/cbor` or `application/json`.
        content_type: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The subject is not the one the event type is published on.
    #[error("event type {event_type} belongs on subject {expected}, not {subject}")]
    SubjectMismatch {
        /// The event type.
        event_type: String,
        /// The subject it came on.
        subject: String,
        /// The subject it belongs on (with the aggregate id in place of `*` for a per-aggregate
        /// subject).
        expected: String,
    },
    /// An event stored under an older schema version could not be upgraded to the current one.
    #[error("{event_type} at schema version {from} could not be upgraded to {to}: {reason}")]
    Upcast {
        /// The event type.
        event_type: String,
        /// The version it was stored at.
        from: u32,
        /// The version this build reads.
        to: u32,
        /// What the upcaster said.
        reason: String,
    },
    /// The envelope's aggregate id (header `Carrier-Aggregate-Id` or attribute `subject`) and
    /// the payload's `id` differ.
    #[error("aggregate id {header:?} (Carrier-Aggregate-Id or subject) differs from payload id {payload:?}")]
    AggregateMismatch {
        /// The envelope's value.
        header: String,
        /// The payload's `id`.
        payload: String,
    },
    /// The payload decoded but breaks a field limit.
    #[error("invalid payload: {0}")]
    Invalid(#[from] ValidationError),
}

impl DecodeError {
    /// A short, stable code for the dead-letter headers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::MissingHeader(_) => "missing_header",
            DecodeError::BadHeader { .. } => "bad_header",
            DecodeError::MissingAttribute(_) => "missing_attribute",
            DecodeError::BadAttribute { .. } => "bad_attribute",
            DecodeError::Envelope { .. } => "undecodable_envelope",
            DecodeError::UnknownEventType(_) => "unknown_event_type",
            DecodeError::UnsupportedSchemaVersion { .. } => "unsupported_schema_version",
            DecodeError::BodyTooLarge { .. } => "body_too_large",
            DecodeError::Body { .. } => "undecodable_body",
            DecodeError::SubjectMismatch { .. } => "subject_mismatch",
            DecodeError::Upcast { .. } => "upcast_failed",
            DecodeError::AggregateMismatch { .. } => "aggregate_mismatch",
            DecodeError::Invalid(_) => "invalid_payload",
        }
    }
}
