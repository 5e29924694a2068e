//! Encoding events for the wire and decoding what arrives, with errors that say why.

use serde::{de::DeserializeOwned, Serialize};
use time::OffsetDateTime;

use crate::envelope::{clip, ContentType, Envelope, EventId, SCHEMA_VERSION};

/// The largest body Carrier decodes (NATS's own default maximum payload).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The events of one bounded context: one enum per owning context, one variant per event type.
pub trait DomainEvent: Sized + Clone + Send + Sync + Serialize + DeserializeOwned + 'static {
    /// The owning context, e.g. `stores`.
    const CONTEXT: &'static str;
    /// The JetStream stream that holds the context's events, e.g. `STORES`.
    const STREAM: &'static str;
    /// The subjects that stream captures, e.g. `stores.>`.
    const STREAM_SUBJECTS: &'static str;
    /// Every event type of the context, e.g. `stores.StoreCreated`.
    const EVENT_TYPES: &'static [&'static str];

    /// This event's type, e.g. `stores.StoreCreated`.
    fn event_type(&self) -> &'static str;
    /// The subject this event is published on, e.g. `stores.store.created`.
    fn subject(&self) -> &'static str;
    /// The kind of entity the event is about, e.g. `store`.
    fn aggregate_type(&self) -> &'static str;
    /// The entity's id (the payload's `id` field).
    fn aggregate_id(&self) -> &str;
    /// Checks field limits that the types alone do not express.
    fn validate(&self) -> Result<(), ValidationError>;
    /// Encodes the payload alone (the variant's struct, without the enum tag).
    fn encode_payload(&self, content_type: ContentType) -> Result<Vec<u8>, EncodeError>;
    /// Decodes a payload of the given type, schema version and encoding.
    fn decode_payload(
        event_type: &str,
        schema_version: u32,
        content_type: ContentType,
        body: &[u8],
    ) -> Result<Self, DecodeError>;
}

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
    /// The event type is not one this context knows.
    #[error("unknown event type {0:?}")]
    UnknownEventType(String),
    /// The event type is known but not at this schema version.
    #[error("{event_type} has no schema version {version} (supported: {SCHEMA_VERSION})")]
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
        /// The subject it belongs on.
        expected: &'static str,
    },
    /// The aggregate id header and the payload's `id` differ.
    #[error("header Carrier-Aggregate-Id {header:?} differs from payload id {payload:?}")]
    AggregateMismatch {
        /// The header's value.
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
            DecodeError::UnknownEventType(_) => "unknown_event_type",
            DecodeError::UnsupportedSchemaVersion { .. } => "unsupported_schema_version",
            DecodeError::BodyTooLarge { .. } => "body_too_large",
            DecodeError::Body { .. } => "undecodable_body",
            DecodeError::SubjectMismatch { .. } => "subject_mismatch",
            DecodeError::AggregateMismatch { .. } => "aggregate_mismatch",
            DecodeError::Invalid(_) => "invalid_payload",
        }
    }
}

/// A message ready to publish: subject, headers (the envelope) and body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EncodedEvent {
    /// The event id, also in the headers.
    pub event_id: EventId,
    /// The subject to publish on.
    pub subject: String,
    /// Header name and value pairs.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub body: Vec<u8>,
}

/// A received event: its envelope and typed payload.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Decoded<E> {
    /// The headers.
    pub envelope: Envelope,
    /// The payload.
    pub event: E,
}

/// Metadata that the owner of an event supplies when it records it.
#[derive(Clone, Debug, Default)]
pub struct Causality {
    /// Shared by everything one request set off; a new id is made when absent.
    pub correlation_id: Option<String>,
    /// The command or event that caused this one.
    pub causation_id: Option<String>,
    /// The span recording the event: the command's, or the consumer span whose reaction emits
    /// it. A new trace starts when absent.
    pub trace: Option<crate::trace::TraceContext>,
}

impl<E: DomainEvent> Decoded<E> {
    /// Wraps an event decided now at `aggregate_version`, with a fresh id.
    pub fn new(event: E, aggregate_version: u64, causality: &Causality) -> Self {
        let event_id = EventId::new();
        let envelope = Envelope {
            event_id,
            event_type: event.event_type().to_string(),
            schema_version: SCHEMA_VERSION,
            aggregate_id: event.aggregate_id().to_string(),
            aggregate_version,
            occurred_at_unix_nanos: OffsetDateTime::now_utc().unix_timestamp_nanos(),
            correlation_id: causality.correlation_id.clone().unwrap_or_else(|| event_id.to_string()),
            causation_id: causality.causation_id.clone(),
            content_type: ContentType::Cbor,
            traceparent: Some(causality.trace.unwrap_or_else(crate::trace::TraceContext::new_root)),
        };
        Decoded { envelope, event }
    }

    /// Encodes the event for the wire in the envelope's content type.
    pub fn encode(&self) -> Result<EncodedEvent, EncodeError> {
        let body = self.event.encode_payload(self.envelope.content_type)?;
        Ok(EncodedEvent {
            event_id: self.envelope.event_id,
            subject: self.event.subject().to_string(),
            headers: self.envelope.to_headers().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            body,
        })
    }

    /// Decodes a received message. `header` looks a header up by name.
    pub fn decode<'a>(
        subject: &str,
        header: impl Fn(&str) -> Option<&'a str>,
        body: &[u8],
    ) -> Result<Self, DecodeError> {
        let envelope = Envelope::from_headers(header)?;
        if body.len() > MAX_BODY_BYTES {
            return Err(DecodeError::BodyTooLarge { len: body.len() });
        }
        let event = E::decode_payload(&envelope.event_type, envelope.schema_version, envelope.content_type, body)?;
        if event.subject() != subject {
            return Err(DecodeError::SubjectMismatch {
                event_type: envelope.event_type.clone(),
                subject: clip(subject),
                expected: event.subject(),
            });
        }
        if event.aggregate_id() != envelope.aggregate_id {
            return Err(DecodeError::AggregateMismatch {
                header: clip(&envelope.aggregate_id),
                payload: clip(event.aggregate_id()),
            });
        }
        event.validate()?;
        Ok(Decoded { envelope, event })
    }
}

/// Encodes one payload struct.
pub(crate) fn encode_body<T: Serialize>(
    event_type: &'static str,
    value: &T,
    content_type: ContentType,
) -> Result<Vec<u8>, EncodeError> {
    match content_type {
        ContentType::Cbor => crate::cbor::to_vec(value).map_err(|e| EncodeError { event_type, reason: e.to_string() }),
        ContentType::Json => serde_json::to_vec(value).map_err(|e| EncodeError { event_type, reason: e.to_string() }),
    }
}

/// Decodes one payload struct.
pub(crate) fn decode_body<T: DeserializeOwned>(
    event_type: &str,
    content_type: ContentType,
    body: &[u8],
) -> Result<T, DecodeError> {
    let result = match content_type {
        ContentType::Cbor => crate::cbor::from_slice(body).map_err(|e| e.to_string()),
        ContentType::Json => serde_json::from_slice(body).map_err(|e| e.to_string()),
    };
    result.map_err(|reason| DecodeError::Body {
        event_type: event_type.to_string(),
        content_type: content_type.as_str(),
        reason: clip_reason(reason),
    })
}

fn clip_reason(reason: String) -> String {
    if reason.len() > 200 {
        clip(&reason)
    } else {
        reason
    }
}

/// Field checks shared by all payloads.
pub(crate) mod check {
    use super::ValidationError;
    use crate::envelope::MAX_ID_LEN;

    /// Longest name Carrier accepts, in bytes.
    pub const MAX_NAME: usize = 256;
    /// Longest free text (descriptions, locations) Carrier accepts, in bytes.
    pub const MAX_TEXT: usize = 4096;

    pub fn id(field: &'static str, value: &str) -> Result<(), ValidationError> {
        text(field, value, 1, MAX_ID_LEN)
    }

    pub fn name(field: &'static str, value: &str) -> Result<(), ValidationError> {
        text(field, value, 1, MAX_NAME)
    }

    pub fn free_text(field: &'static str, value: &str) -> Result<(), ValidationError> {
        text(field, value, 0, MAX_TEXT)
    }

    pub fn text(field: &'static str, value: &str, min: usize, max: usize) -> Result<(), ValidationError> {
        let len = value.trim().len();
        if len < min || value.len() > max {
            return Err(ValidationError {
                field,
                problem: format!("must be {min} to {max} bytes (not blank), got {}", value.len()),
            });
        }
        Ok(())
    }

    pub fn non_negative(field: &'static str, value: i64) -> Result<(), ValidationError> {
        if value < 0 {
            return Err(ValidationError { field, problem: format!("must not be negative, got {value}") });
        }
        Ok(())
    }

    pub fn positive(field: &'static str, value: i64) -> Result<(), ValidationError> {
        if value <= 0 {
            return Err(ValidationError { field, problem: format!("must be greater than zero, got {value}") });
        }
        Ok(())
    }
}

/// Declares a context's event enum and its [`DomainEvent`] impl from one table, so that the
/// type name, subject and aggregate of each event are written exactly once.
macro_rules! domain_events {
    (
        $(#[$doc:meta])*
        enum $name:ident, context $context:literal, stream $stream:literal, subjects $subjects:literal;
        $($variant:ident => $aggregate:literal, $subject:literal;)*
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $(
                #[allow(missing_docs)]
                $variant($variant),
            )*
        }

        impl $name {
            /// Each event type with its subject, aggregate and payload schema, for the AsyncAPI
            /// document: generated from these types, so it cannot drift from them.
            pub fn catalog(generator: &mut schemars::SchemaGenerator) -> Vec<$crate::asyncapi::EventEntry> {
                vec![$(
                    $crate::asyncapi::EventEntry {
                        event_type: concat!($context, ".", stringify!($variant)),
                        name: stringify!($variant),
                        subject: $subject,
                        aggregate: $aggregate,
                        payload: generator.subschema_for::<$variant>(),
                    },
                )*]
            }
        }

        impl $crate::codec::DomainEvent for $name {
            const CONTEXT: &'static str = $context;
            const STREAM: &'static str = $stream;
            const STREAM_SUBJECTS: &'static str = $subjects;
            const EVENT_TYPES: &'static [&'static str] = &[$(concat!($context, ".", stringify!($variant))),*];

            fn event_type(&self) -> &'static str {
                match self { $(Self::$variant(_) => concat!($context, ".", stringify!($variant)),)* }
            }

            fn subject(&self) -> &'static str {
                match self { $(Self::$variant(_) => $subject,)* }
            }

            fn aggregate_type(&self) -> &'static str {
                match self { $(Self::$variant(_) => $aggregate,)* }
            }

            fn aggregate_id(&self) -> &str {
                match self { $(Self::$variant(e) => &e.id,)* }
            }

            fn validate(&self) -> Result<(), $crate::codec::ValidationError> {
                match self { $(Self::$variant(e) => e.validate(),)* }
            }

            fn encode_payload(&self, content_type: $crate::envelope::ContentType) -> Result<Vec<u8>, $crate::codec::EncodeError> {
                match self { $(Self::$variant(e) => $crate::codec::encode_body(self.event_type(), e, content_type),)* }
            }

            fn decode_payload(event_type: &str, schema_version: u32, content_type: $crate::envelope::ContentType, body: &[u8]) -> Result<Self, $crate::codec::DecodeError> {
                $(
                    if event_type == concat!($context, ".", stringify!($variant)) {
                        if schema_version != $crate::envelope::SCHEMA_VERSION {
                            return Err($crate::codec::DecodeError::UnsupportedSchemaVersion { event_type: event_type.to_string(), version: schema_version });
                        }
                        return $crate::codec::decode_body(event_type, content_type, body).map(Self::$variant);
                    }
                )*
                Err($crate::codec::DecodeError::UnknownEventType($crate::envelope::clip(event_type)))
            }
        }
    };
}

pub(crate) use domain_events;

/// The events of a context that publishes none (notifications, search): no value exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum NoEvents {}

impl DomainEvent for NoEvents {
    const CONTEXT: &'static str = "none";
    const STREAM: &'static str = "NONE";
    const STREAM_SUBJECTS: &'static str = "none.>";
    const EVENT_TYPES: &'static [&'static str] = &[];

    fn event_type(&self) -> &'static str {
        match *self {}
    }
    fn subject(&self) -> &'static str {
        match *self {}
    }
    fn aggregate_type(&self) -> &'static str {
        match *self {}
    }
    fn aggregate_id(&self) -> &str {
        match *self {}
    }
    fn validate(&self) -> Result<(), ValidationError> {
        match *self {}
    }
    fn encode_payload(&self, _content_type: ContentType) -> Result<Vec<u8>, EncodeError> {
        match *self {}
    }
    fn decode_payload(event_type: &str, _: u32, _: ContentType, _: &[u8]) -> Result<Self, DecodeError> {
        Err(DecodeError::UnknownEventType(clip(event_type)))
    }
}
