//! The envelope: the metadata of an event, and the framings it travels in.
//!
//! Carrier writes its own framing, [`structured`](crate::structured): the whole event in one CBOR
//! map in the body, with only `Nats-Msg-Id` (which JetStream de-duplicates on) in the headers.
//! It reads that and every framing the wire contract has accepted, chosen by [`Envelope::read`]:
//! Carrier's headers (`Carrier-Event-Type` and friends, the framing of Carrier before 0.2),
//! CloudEvents binary mode (`ce-` headers) and CloudEvents structured JSON.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::DecodeError;

/// Header names of the header framing. They are part of the stable wire contract: never rename
/// one. Carrier no longer writes them (except `Nats-Msg-Id`) but reads them for good.
pub mod header {
    /// JetStream's own de-duplication id; Carrier sets it to the event id.
    pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
    /// The event id, a UUID (v7 when Carrier makes it).
    pub const EVENT_ID: &str = "Carrier-Event-Id";
    /// The event type, e.g. `stores.StoreCreated`.
    pub const EVENT_TYPE: &str = "Carrier-Event-Type";
    /// The payload's schema version for that event type; `1` today.
    pub const SCHEMA_VERSION: &str = "Carrier-Schema-Version";
    /// The id of the entity (aggregate) the event is about.
    pub const AGGREGATE_ID: &str = "Carrier-Aggregate-Id";
    /// The entity's version after this event: 1 for the event that creates it, then 2, 3, ...
    pub const AGGREGATE_VERSION: &str = "Carrier-Aggregate-Version";
    /// When the owner decided the event, RFC 3339.
    pub const OCCURRED_AT: &str = "Carrier-Occurred-At";
    /// The id shared by everything one request set off.
    pub const CORRELATION_ID: &str = "Carrier-Correlation-Id";
    /// The id of the command or event that directly caused this one.
    pub const CAUSATION_ID: &str = "Carrier-Causation-Id";
    /// `application/cbor` or `application/json`.
    pub const CONTENT_TYPE: &str = "Content-Type";
}

/// The longest id (aggregate, correlation, causation) Carrier accepts, in bytes.
pub const MAX_ID_LEN: usize = 128;

pub use crate::limits::SCHEMA_VERSION;

/// An event's unique id. Carrier makes UUIDv7s (time-ordered); it accepts any UUID from others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }

    /// The 16 bytes under which the inbox records the id.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The id from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        EventId(Uuid::from_bytes(bytes))
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(EventId)
    }
}

/// How the body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentType {
    /// `application/cbor`: what Carrier writes.
    Cbor,
    /// `application/json`: accepted so that any producer, or the `nats` CLI, can publish.
    Json,
}

impl ContentType {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Cbor => "application/cbor",
            ContentType::Json => "application/json",
        }
    }

    /// Parses a `Content-Type` value; parameters such as `; charset=utf-8` are ignored.
    pub fn parse(value: &str) -> Option<ContentType> {
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/cbor") {
            Some(ContentType::Cbor)
        } else if essence.eq_ignore_ascii_case("application/json") {
            Some(ContentType::Json)
        } else {
            None
        }
    }
}

/// Everything about an event except its payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per event; also the JetStream `Nats-Msg-Id`.
    pub event_id: EventId,
    /// E.g. `stores.StoreCreated`.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The entity the event is about.
    pub aggregate_id: String,
    /// The entity's version after this event (1 for its first event).
    pub aggregate_version: u64,
    /// When the owner decided the event, as Unix nanoseconds.
    pub occurred_at_unix_nanos: i128,
    /// Shared by everything one request set off.
    pub correlation_id: String,
    /// What directly caused this event, if known.
    pub causation_id: Option<String>,
    /// How the body is encoded.
    pub content_type: ContentType,
    /// W3C trace context: the span that produced the event (header `traceparent`). A malformed
    /// value is ignored, as the W3C recommendation asks, not refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<crate::trace::TraceContext>,
}

impl Envelope {
    /// The headers of the header framing, in a stable order (what Carrier wrote before the
    /// structured framing; kept so that tools and tests can still speak it).
    pub fn to_headers(&self) -> Vec<(&'static str, String)> {
        let id = self.event_id.to_string();
        let mut headers = vec![
            (header::NATS_MSG_ID, id.clone()),
            (header::EVENT_ID, id),
            (header::EVENT_TYPE, self.event_type.clone()),
            (header::SCHEMA_VERSION, self.schema_version.to_string()),
            (header::AGGREGATE_ID, self.aggregate_id.clone()),
            (header::AGGREGATE_VERSION, self.aggregate_version.to_string()),
            (header::OCCURRED_AT, self.occurred_at_rfc3339()),
            (header::CORRELATION_ID, self.correlation_id.clone()),
            (header::CONTENT_TYPE, self.content_type.as_str().to_string()),
        ];
        if let Some(causation) = &self.causation_id {
            headers.push((header::CAUSATION_ID, causation.clone()));
        }
        if let Some(trace) = &self.traceparent {
            headers.push((crate::trace::TRACEPARENT, trace.to_string()));
        }
        headers
    }

    /// The span that produced the event: its `traceparent`, or, for an event a producer sent
    /// without one, a trace named after the event id (so its consumers' spans still join up).
    pub fn trace(&self) -> crate::trace::TraceContext {
        self.traceparent.unwrap_or_else(|| crate::trace::TraceContext::for_untraced(self.event_id.as_bytes()))
    }

    /// `occurred_at` as RFC 3339 (UTC).
    pub fn occurred_at_rfc3339(&self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(self.occurred_at_unix_nanos)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
    }

    /// Reads an envelope from Carrier's headers, given a lookup by header name.
    ///
    /// Only the event type, the aggregate id and version, and the event id are required. The
    /// event id may come from `Carrier-Event-Id` or, failing that, `Nats-Msg-Id`; the content
    /// type defaults to CBOR; a missing correlation id becomes the event id.
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Envelope, DecodeError> {
        let id_text = get(header::EVENT_ID)
            .or_else(|| get(header::NATS_MSG_ID))
            .ok_or(DecodeError::MissingHeader(header::EVENT_ID))?;
        let event_id = EventId::from_str(id_text.trim()).map_err(|_| DecodeError::BadHeader {
            header: header::EVENT_ID,
            reason: format!("not a UUID: {:?}", clip(id_text)),
        })?;
        if let Some(msg_id) = get(header::NATS_MSG_ID) {
            if get(header::EVENT_ID).is_some() && msg_id.trim() != id_text.trim() {
                return Err(DecodeError::BadHeader {
                    header: header::NATS_MSG_ID,
                    reason: "differs from Carrier-Event-Id".to_string(),
                });
            }
        }
        let event_type = required(&get, header::EVENT_TYPE)?.trim().to_string();
        let schema_version = match get(header::SCHEMA_VERSION) {
            None => SCHEMA_VERSION,
            Some(v) => v.trim().parse::<u32>().map_err(|_| DecodeError::BadHeader {
                header: header::SCHEMA_VERSION,
                reason: format!("not a whole number: {:?}", clip(v)),
            })?,
        };
        let aggregate_id =
            id_header(&get, header::AGGREGATE_ID)?.ok_or(DecodeError::MissingHeader(header::AGGREGATE_ID))?;
        let version_text = required(&get, header::AGGREGATE_VERSION)?;
        let aggregate_version =
            version_text.trim().parse::<u64>().ok().filter(|v| *v >= 1).ok_or_else(|| DecodeError::BadHeader {
                header: header::AGGREGATE_VERSION,
                reason: format!("not a whole number from 1 up: {:?}", clip(version_text)),
            })?;
        let occurred_at_unix_nanos = match get(header::OCCURRED_AT) {
            None => OffsetDateTime::now_utc().unix_timestamp_nanos(),
            Some(text) => OffsetDateTime::parse(text.trim(), &Rfc3339)
                .map_err(|e| DecodeError::BadHeader {
                    header: header::OCCURRED_AT,
                    reason: format!("not RFC 3339 ({e}): {:?}", clip(text)),
                })?
                .unix_timestamp_nanos(),
        };
        let correlation_id = id_header(&get, header::CORRELATION_ID)?.unwrap_or_else(|| event_id.to_string());
        let causation_id = id_header(&get, header::CAUSATION_ID)?;
        let content_type = match get(header::CONTENT_TYPE) {
            None => ContentType::Cbor,
            Some(v) => ContentType::parse(v).ok_or_else(|| DecodeError::BadHeader {
                header: header::CONTENT_TYPE,
                reason: format!("expected application/cbor or application/json, got {:?}", clip(v)),
            })?,
        };
        Ok(Envelope {
            event_id,
            event_type,
            schema_version,
            aggregate_id,
            aggregate_version,
            occurred_at_unix_nanos,
            correlation_id,
            causation_id,
            content_type,
            traceparent: get(crate::trace::TRACEPARENT).and_then(|v| v.parse().ok()),
        })
    }
}

fn required<'a>(get: &impl Fn(&str) -> Option<&'a str>, name: &'static str) -> Result<&'a str, DecodeError> {
    match get(name) {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(DecodeError::MissingHeader(name)),
    }
}

fn id_header<'a>(get: &impl Fn(&str) -> Option<&'a str>, name: &'static str) -> Result<Option<String>, DecodeError> {
    match get(name) {
        None => Ok(None),
        Some(v) => {
            let v = v.trim();
            if v.is_empty() || v.len() > MAX_ID_LEN {
                Err(DecodeError::BadHeader {
                    header: name,
                    reason: format!("must be 1 to {MAX_ID_LEN} bytes, got {}", v.len()),
                })
            } else {
                Ok(Some(v.to_string()))
            }
        }
    }
}

/// Shortens untrusted text before it goes into an error message.
#[doc(hidden)]
pub fn clip(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
